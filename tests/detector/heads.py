"""What the head and objective tests share: a small model of a config and one padded batch of
targets on a 64 x 96 image."""
import torch

from detector.configs import get_config
from detector.data.collate import pad_targets
from detector.modeling import Detector

IMAGE = (64, 96)
#: Narrow FPN and head: fast on a CPU, every code path kept.
SMALL = ["fpn.out_channels=16", "head.width=16", "head.gn_groups=8"]


def small_model(name, *extra, num_classes=3):
    """``Detector`` of config ``name`` with ``SMALL`` and ``extra`` overrides, seeded weights."""
    torch.manual_seed(0)
    return Detector(get_config(name, SMALL + list(extra)), num_classes)


def two_image_targets():
    """Two images: three GTs (one duplicated, one slender) and none."""
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0], [4.0, 6.0, 40.0, 50.0], [50.0, 10.0, 90.0, 18.0]])
    return pad_targets([
        {"boxes": boxes, "labels": torch.tensor([0, 1, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ])
