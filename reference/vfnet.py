"""VFNet: star-shaped deformable-conv offsets and the IoU targets of its losses (specs/vfnet.md).

Distances are (l, t, r, b) in pixels from a location's point, ``strides`` the stride of the
location's level; offsets are in feature-map cells, in the layout of a 3x3
``deform_conv2d`` (torchvision) / mmcv ``DeformConv2d``: 18 values per location, the
``(dy, dx)`` of kernel tap ``k`` at columns ``2k, 2k + 1``, taps in row-major order
(``k = 3 (ky + 1) + (kx + 1)`` for ``ky, kx`` in -1, 0, 1). Readable NumPy float64.
"""
import numpy as np

from reference.boxes import aligned_box_iou
from reference.targets import box_targets, class_targets
from reference.validation import as_boxes, as_values, check_number

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
        (A, 9, 2) float64 ``(dy, dx)`` in feature cells.
    """
    distances = as_values(distances, "distances", ndim=2, width=4)
    strides = _as_strides(strides, len(distances))
    cells = distances / strides[:, None]
    left, top, right, bottom = cells[:, 0], cells[:, 1], cells[:, 2], cells[:, 3]
    zero = np.zeros(len(cells))
    rows = [-top, -top, -top, zero, zero, zero, bottom, bottom, bottom]
    columns = [-left, zero, right, -left, zero, right, -left, zero, right]
    return np.stack([np.stack(rows, axis=1), np.stack(columns, axis=1)], axis=2)


def star_dcn_offsets(distances, strides, gradient_mul=GRADIENT_MUL):
    """Deformable-conv offsets that move the 3x3 kernel's taps onto the star points
    (specs/vfnet.md §1; mmdet ``VFNetHead.star_dcn_offset``).

    ``offset[k] = star_points[k] - grid[k]`` where ``grid[k] = (ky, kx)`` is tap ``k``'s
    regular position, so tap ``k`` samples ``location + star_points[k]``.

    Args:
        distances: (A, 4) finite (l, t, r, b) in pixels.
        strides: (A,) strides, or one number, > 0.
        gradient_mul: in [0, 1]; only the PyTorch twin's gradient depends on it.

    Returns:
        (A, 18) float64, ``(dy, dx)`` of tap k at columns 2k, 2k + 1.
    """
    _check_gradient_mul(gradient_mul)
    points = star_points(distances, strides)
    return (points - _kernel_grid()[None]).reshape(len(points), 18)


def vfnet_iou_targets(boxes, matched_gt, gt_boxes):
    """IoU of each positive's box with its assigned GT, at least ``IOU_TARGET_MIN``
    (specs/vfnet.md §2): the weights of both GIoU terms (with the initial or the refined
    boxes) and, with the refined boxes, VFL's target.

    Args:
        boxes: (A, 4) xyxy decoded boxes (constants).
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A,) float64: ``max(IoU, IOU_TARGET_MIN)`` at positives, 0 elsewhere.
    """
    boxes = as_boxes(boxes, "boxes")
    assigned = box_targets(matched_gt, gt_boxes)
    if len(boxes) != len(assigned):
        raise ValueError(f"boxes: expected {len(assigned)} rows to pair with matched_gt, got {len(boxes)}")
    positive = np.asarray(matched_gt) >= 0
    targets = np.zeros(len(assigned))
    targets[positive] = np.maximum(aligned_box_iou(boxes[positive], assigned[positive]), IOU_TARGET_MIN)
    return targets


def varifocal_targets(refined_boxes, matched_gt, gt_boxes, gt_labels, num_classes):
    """VFL's IoU-aware classification targets (specs/vfnet.md §2).

    Args:
        refined_boxes: (A, 4) xyxy refined boxes (constants).
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) classes in 0..K-1.
        num_classes: K >= 1.

    Returns:
        targets: (A, K) float64, ``vfnet_iou_targets(refined_boxes)`` at each positive's
            class, 0 elsewhere.
        label_weights: (A,) float64, 0 at IGNORE anchors, 1 otherwise.
    """
    scores = vfnet_iou_targets(refined_boxes, matched_gt, gt_boxes)
    return class_targets(matched_gt, gt_labels, num_classes, scores)


def _kernel_grid():
    """(9, 2) the regular ``(ky, kx)`` of the 3x3 taps, row-major."""
    base = np.arange(-1.0, 2.0)
    return np.stack([np.repeat(base, 3), np.tile(base, 3)], axis=1)


def _as_strides(strides, count):
    array = np.asarray(strides, dtype=np.float64)
    if array.ndim == 0:
        array = np.full(count, float(array))
    if array.shape != (count,):
        raise ValueError(f"strides: expected one number or shape ({count},), got {array.shape}")
    if not (np.isfinite(array) & (array > 0)).all():
        raise ValueError("strides: expected finite numbers > 0")
    return array


def _check_gradient_mul(gradient_mul):
    value = check_number(gradient_mul, "gradient_mul", minimum=0.0)
    if value > 1.0:
        raise ValueError(f"gradient_mul: expected a number in [0, 1], got {gradient_mul!r}")
    return value
