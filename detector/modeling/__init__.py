"""Models: backbones, FPN, the shared dense head, the assigner table, the training
objective and the detector (specs/model.md)."""
from detector.modeling.assigners import ASSIGNERS, Assigner
from detector.modeling.backbone import TinyResNet, build_backbone, load_backbone_weights
from detector.modeling.detector import Detector, Priors
from detector.modeling.fpn import FPN
from detector.modeling.head import DenseHead, HeadOutputs, Scale
from detector.modeling.objective import DetectionObjective, LossOutput

__all__ = [
    "ASSIGNERS", "Assigner", "DenseHead", "DetectionObjective", "Detector", "FPN", "HeadOutputs", "LossOutput", "Priors",
    "Scale", "TinyResNet", "build_backbone", "load_backbone_weights",
]
