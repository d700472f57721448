"""Models: backbones, FPN, the shared dense head and the detector (specs/model.md)."""
from detector.modeling.backbone import TinyResNet, build_backbone, load_backbone_weights
from detector.modeling.detector import Detector, Priors, assign_batch, decode_boxes, loss_sums, predict, reduce_loss_sums
from detector.modeling.fpn import FPN
from detector.modeling.head import DenseHead, HeadOutputs, Scale

__all__ = [
    "DenseHead", "Detector", "FPN", "HeadOutputs", "Priors", "Scale", "TinyResNet", "assign_batch", "build_backbone",
    "decode_boxes", "load_backbone_weights", "loss_sums", "predict", "reduce_loss_sums",
]
