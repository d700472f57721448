"""Batching: pad images to a common size and GTs to a common count (specs/data.md §4)."""
from dataclasses import dataclass
from typing import NamedTuple

import torch

#: Label of a padded GT slot.
PAD_LABEL = -1


@dataclass
class Batch:
    """A padded batch of images.

    Attributes:
        images: (B, 3, H_pad, W_pad) float; image b fills ``[:, :H_b, :W_b]``, zeros elsewhere.
        image_sizes: list of B (H_b, W_b) int pairs before padding.
        targets: list of B target dicts, unchanged.
    """

    images: torch.Tensor
    image_sizes: list
    targets: list

    def to(self, device):
        """A copy with ``images`` and every tensor in ``targets`` on ``device``."""
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in self.targets]
        return Batch(self.images.to(device), list(self.image_sizes), targets)


class PaddedTargets(NamedTuple):
    """GTs and ignore regions of a batch, padded to G_max = the largest G in the batch and
    R_max = the largest number of ignore regions (either may be 0).

    Attributes:
        gt_boxes: (B, G_max, 4) float xyxy; padded slots are 0.
        gt_labels: (B, G_max) int64 in 0..K-1; padded slots are ``PAD_LABEL = -1``.
        gt_valid: (B, G_max) bool; True for real GTs, which come first in each row.
        ignore_boxes: (B, R_max, 4) float xyxy ignore regions (COCO crowd boxes with
            ``data.crowd = "ignore"``, the targets' ``"ignore_boxes"``); padded slots are 0.
        ignore_valid: (B, R_max) bool; True for real regions.
    """

    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    gt_valid: torch.Tensor
    ignore_boxes: torch.Tensor
    ignore_valid: torch.Tensor


def collate(batch, size_divisor=128):
    """Stack ``(image, target)`` pairs into a ``Batch``.

    Args:
        batch: non-empty list of (image (3, H_b, W_b) float tensor, target dict).
        size_divisor: H_pad and W_pad are the largest H_b and W_b rounded up to a multiple of
            this (128 = the coarsest default stride, so every level's feature map tiles
            the padded image exactly); 1 for no rounding.

    Returns:
        ``Batch`` with images (B, 3, H_pad, W_pad), zero-padded at the bottom and right.
    """
    if not batch:
        raise ValueError("batch: expected at least one (image, target) pair")
    if size_divisor < 1:
        raise ValueError(f"size_divisor: expected a positive int, got {size_divisor}")
    images = [image for image, _ in batch]
    sizes = [tuple(int(s) for s in image.shape[-2:]) for image in images]
    pad_h = _round_up(max(h for h, _ in sizes), size_divisor)
    pad_w = _round_up(max(w for _, w in sizes), size_divisor)
    padded = images[0].new_zeros((len(images), images[0].shape[0], pad_h, pad_w))
    for b, (image, (h, w)) in enumerate(zip(images, sizes)):
        padded[b, :, :h, :w] = image
    return Batch(images=padded, image_sizes=sizes, targets=[target for _, target in batch])


def pad_boxes(boxes_list, device=None):
    """Pad a list of B (N_b, 4) box tensors to (B, N_max, 4) zeros plus a (B, N_max) bool mask."""
    num = max((len(boxes) for boxes in boxes_list), default=0)
    dtype = boxes_list[0].dtype if boxes_list else torch.float32
    padded = torch.zeros((len(boxes_list), num, 4), dtype=dtype, device=device)
    valid = torch.zeros((len(boxes_list), num), dtype=torch.bool, device=device)
    for b, boxes in enumerate(boxes_list):
        padded[b, :len(boxes)] = boxes.to(device=device, dtype=dtype)
        valid[b, :len(boxes)] = True
    return padded, valid


def pad_targets(targets, device=None):
    """Pad the ``boxes``/``labels`` (and ``ignore_boxes``, when present) of B target dicts;
    see ``PaddedTargets``. Ignore regions take the dtype of the GT boxes."""
    gt_boxes, gt_valid = pad_boxes([t["boxes"] for t in targets], device)
    gt_labels = torch.full(gt_valid.shape, PAD_LABEL, dtype=torch.int64, device=device)
    for b, target in enumerate(targets):
        if len(target["labels"]) != len(target["boxes"]):
            raise ValueError(f"targets[{b}]: {len(target['labels'])} labels for {len(target['boxes'])} boxes")
        gt_labels[b, :len(target["labels"])] = target["labels"].to(device)
    regions = [torch.as_tensor(t["ignore_boxes"] if t.get("ignore_boxes") is not None else torch.zeros(0, 4)).reshape(-1, 4)
               for t in targets]
    ignore_boxes, ignore_valid = pad_boxes([r.to(gt_boxes.dtype) for r in regions], device)
    return PaddedTargets(gt_boxes, gt_labels, gt_valid, ignore_boxes, ignore_valid)


def _round_up(value, divisor):
    return -(-value // divisor) * divisor
