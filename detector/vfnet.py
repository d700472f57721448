"""VFNet: star-shaped deformable-conv offsets and the IoU targets of its losses (specs/vfnet.md).

Distances are (l, t, r, b) in pixels from a location's point, ``strides`` the stride of the
location's level; offsets are in feature-map cells, in the layout of a 3x3
``deform_conv2d`` (torchvision) / mmcv ``DeformConv2d``: 18 values per location, the
``(dy, dx)`` of kernel tap ``k`` at columns ``2k, 2k + 1``, taps in row-major order
(``k = 3 (ky + 1) + (kx + 1)`` for ``ky, kx`` in -1, 0, 1).

PyTorch twin of ``reference/vfnet.py``; it adds the batched IoU targets of the loss step
(:func:`vfnet_iou_targets_batched`), the unchecked offsets the head computes on every level
(:func:`star_dcn_offsets_unchecked`, any leading dims, with mmdet's ``gradient_mul``) and
the star deformable convolution (:class:`StarDeformConv2d`). The head itself is
``detector/modeling/vfnet_head.py``.
"""
import math

import torch
from torch import nn
from torchvision.ops import deform_conv2d

from detector.batched_targets import box_targets_batched, class_targets_batched
from detector.boxes import aligned_box_iou
from detector.targets import box_targets, class_targets
from detector.validation import as_boxes, as_values, check_number

#: mmdet ``VFNetHead(gradient_mul=0.1)``: the share of the initial box's gradient that reaches
#: it through the star offsets (values are unchanged: ``(1 - g) d + g d = d``).
GRADIENT_MUL = 0.1
#: The initial distances are ``exp(Scale_l(conv)) * INIT_DISTANCE_STRIDES * stride``: mmdet's
#: ``bbox_norm_type='reg_denom'`` with FCOS's regression ranges (64, 128, 256, 512, then
#: 2 x 512) on P3-P7, i.e. 8 strides on every level.
INIT_DISTANCE_STRIDES = 8.0
#: IoU targets of positives are at least this (mmdet ``bbox_overlaps(...).clamp(min=1e-6)``).
IOU_TARGET_MIN = 1e-6
#: Loss weights of mmdet's ``vfnet_r50_fpn_1x_coco.py``: GIoU of the initial box (the
#: config's ``loss.box_weight``) and of the refined box.
INIT_BOX_LOSS_WEIGHT = 1.5
REFINE_BOX_LOSS_WEIGHT = 2.0


def star_points(distances, strides):
    """The 9 sampling points of the star-shaped box representation (specs/vfnet.md §1).

    For a location with distances (l, t, r, b) and stride s, in feature cells relative to
    the location: the top-left corner ``(-t, -l) / s``, the top edge's midpoint
    ``(-t, 0) / s``, the top-right corner ``(-t, r) / s``, the left midpoint ``(0, -l) / s``,
    the location itself ``(0, 0)``, the right midpoint ``(0, r) / s``, the bottom-left
    corner ``(b, -l) / s``, the bottom midpoint ``(b, 0) / s`` and the bottom-right corner
    ``(b, r) / s``, each as ``(dy, dx)``, in the order of the 3x3 kernel taps.

    Args:
        distances: (A, 4) finite (l, t, r, b) in pixels.
        strides: (A,) strides, or one number, > 0.

    Returns:
        (A, 9, 2) ``(dy, dx)`` in feature cells.
    """
    distances = as_values(distances, "distances", ndim=2, width=4)
    strides = _as_strides(strides, distances)
    return _star_points(distances, strides)


def star_dcn_offsets(distances, strides, gradient_mul=GRADIENT_MUL):
    """Deformable-conv offsets that move the 3x3 kernel's taps onto the star points
    (specs/vfnet.md §1; mmdet ``VFNetHead.star_dcn_offset``).

    ``offset[k] = star_points[k] - grid[k]`` where ``grid[k] = (ky, kx)`` is tap ``k``'s
    regular position, so tap ``k`` samples ``location + star_points[k]``. The distances
    enter as ``(1 - gradient_mul) * d.detach() + gradient_mul * d``: the same values, a
    gradient scaled by ``gradient_mul``.

    Args:
        distances: (A, 4) finite (l, t, r, b) in pixels.
        strides: (A,) strides, or one number, > 0.
        gradient_mul: in [0, 1], the share of the gradient that flows into ``distances``.

    Returns:
        (A, 18), ``(dy, dx)`` of tap k at columns 2k, 2k + 1.
    """
    gradient_mul = _check_gradient_mul(gradient_mul)
    distances = as_values(distances, "distances", ndim=2, width=4)
    strides = _as_strides(strides, distances)
    return star_dcn_offsets_unchecked(distances, strides, gradient_mul)


def star_dcn_offsets_unchecked(distances, strides, gradient_mul=GRADIENT_MUL):
    """:func:`star_dcn_offsets` of checked inputs, any leading dims: distances (..., 4),
    strides a number or a tensor broadcasting against (...,) -> (..., 18)."""
    mixed = (1.0 - gradient_mul) * distances.detach() + gradient_mul * distances
    points = _star_points(mixed, strides)
    grid = _kernel_grid(dtype=points.dtype, device=points.device)
    return (points - grid).flatten(-2)


def vfnet_iou_targets(boxes, matched_gt, gt_boxes):
    """IoU of each positive's box with its assigned GT, at least ``IOU_TARGET_MIN``
    (specs/vfnet.md §2): the weights of both GIoU terms (with the initial or the refined
    boxes) and, with the refined boxes, VFL's target.

    Args:
        boxes: (A, 4) xyxy decoded boxes (detached here).
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A,), no grad: ``max(IoU, IOU_TARGET_MIN)`` at positives, 0 elsewhere.
    """
    boxes = as_boxes(boxes, "boxes")
    assigned = box_targets(matched_gt, gt_boxes)
    if len(boxes) != len(assigned):
        raise ValueError(f"boxes: expected {len(assigned)} rows to pair with matched_gt, got {len(boxes)}")
    return vfnet_iou_targets_batched(boxes[None], torch.as_tensor(matched_gt)[None], torch.as_tensor(gt_boxes)[None])[0]


def vfnet_iou_targets_batched(boxes, matched_gt, gt_boxes, gt_valid=None):
    """Batched :func:`vfnet_iou_targets`: boxes (B, A, 4), matched_gt (B, A), gt_boxes
    (B, G_max, 4), gt_valid (B, G_max) or None -> (B, A), no grad, in the promoted dtype."""
    boxes = as_boxes(boxes, "boxes", batched=True).detach()
    assigned = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    if boxes.shape != assigned.shape:
        raise ValueError(f"boxes: expected shape {tuple(assigned.shape)} to pair with matched_gt, got {tuple(boxes.shape)}")
    dtype = torch.promote_types(boxes.dtype, assigned.dtype)
    iou = aligned_box_iou(boxes.reshape(-1, 4).to(dtype), assigned.reshape(-1, 4).to(dtype)).reshape(assigned.shape[:2])
    positive = torch.as_tensor(matched_gt, device=assigned.device) >= 0
    return torch.where(positive, iou.clamp(min=IOU_TARGET_MIN), 0.0)


def varifocal_targets(refined_boxes, matched_gt, gt_boxes, gt_labels, num_classes):
    """VFL's IoU-aware classification targets (specs/vfnet.md §2).

    Args:
        refined_boxes: (A, 4) xyxy refined boxes (detached here).
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) classes in 0..K-1.
        num_classes: K >= 1.

    Returns:
        targets: (A, K), ``vfnet_iou_targets(refined_boxes)`` at each positive's class, 0
            elsewhere.
        label_weights: (A,), 0 at IGNORE anchors, 1 otherwise.
    """
    scores = vfnet_iou_targets(refined_boxes, matched_gt, gt_boxes)
    return class_targets(matched_gt, gt_labels, num_classes, scores)


def varifocal_targets_batched(refined_boxes, matched_gt, gt_boxes, gt_labels, num_classes, gt_valid=None, *, dtype=None):
    """Batched :func:`varifocal_targets` (B leading) -> targets (B, A, K), label_weights (B, A)."""
    scores = vfnet_iou_targets_batched(refined_boxes, matched_gt, gt_boxes, gt_valid)
    return class_targets_batched(matched_gt, gt_labels, num_classes, scores, gt_valid, dtype=dtype)


class StarDeformConv2d(nn.Module):
    """VFNet's 3x3 deformable convolution (stride 1, padding 1, no bias, no mask), sampled
    at the star offsets (mmcv ``DeformConv2d(C_in, C_out, 3, 1, padding=1)``).

    The weight starts uniform in ``+-1 / sqrt(C_in * 9)`` (mmcv ``DeformConv2d.reset_parameters``;
    mmdet's ``Normal(std=0.01)`` init of the head matches ``Conv2d`` layers only). Under
    autocast ``deform_conv2d`` runs in float32 and returns the input's dtype, as
    ``ModulatedDeformConv3x3`` in the backbone (specs/model.md §1.2).
    """

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, 3, 3))
        bound = 1.0 / math.sqrt(in_channels * 9)
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x, offsets):
        """x (B, C_in, H, W), offsets (B, 18, H, W) -> (B, C_out, H, W)."""
        if torch.is_autocast_enabled(x.device.type):
            dtype = x.dtype
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = deform_conv2d(x.float(), offsets.float(), self.weight.float(), None, padding=(1, 1))
            return out.to(dtype)
        return deform_conv2d(x, offsets.to(x.dtype), self.weight, None, padding=(1, 1))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, kernel_size=(3, 3), padding=(1, 1), bias=False"


def _star_points(distances, strides):
    cells = distances / strides[..., None] if isinstance(strides, torch.Tensor) else distances / strides
    left, top, right, bottom = cells.unbind(-1)
    zero = torch.zeros_like(left)
    rows = torch.stack([-top, -top, -top, zero, zero, zero, bottom, bottom, bottom], dim=-1)
    columns = torch.stack([-left, zero, right, -left, zero, right, -left, zero, right], dim=-1)
    return torch.stack([rows, columns], dim=-1)


def _kernel_grid(dtype=torch.float64, device=None):
    """(9, 2) the regular ``(ky, kx)`` of the 3x3 taps, row-major."""
    base = torch.arange(-1.0, 2.0, dtype=dtype, device=device)
    return torch.stack([base.repeat_interleave(3), base.repeat(3)], dim=1)


def _as_strides(strides, distances):
    count = distances.shape[0]
    tensor = torch.as_tensor(strides, dtype=distances.dtype, device=distances.device)
    if tensor.ndim == 0:
        tensor = tensor.expand(count)
    if tuple(tensor.shape) != (count,):
        raise ValueError(f"strides: expected one number or shape ({count},), got {tuple(tensor.shape)}")
    if not bool((torch.isfinite(tensor) & (tensor > 0)).all()):
        raise ValueError("strides: expected finite numbers > 0")
    return tensor


def _check_gradient_mul(gradient_mul):
    value = check_number(gradient_mul, "gradient_mul", minimum=0.0)
    if value > 1.0:
        raise ValueError(f"gradient_mul: expected a number in [0, 1], got {gradient_mul!r}")
    return value
