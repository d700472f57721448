"""Training targets from an assignment (specs/targets.md).

Every function takes an image's ``matched_gt`` (A,) with the sentinels BACKGROUND = -1
and IGNORE = -2 (specs/conventions.md §4) and the image's GTs, and returns per-anchor
targets. Rows of anchors that are not positive are 0 (and carry weight 0 where a weight
exists), so a target is always finite.

PyTorch twin of ``reference/targets.py``: each function checks one image's inputs as the
reference does, then runs the batched builder of ``detector/batched_targets.py`` on a
batch of one, so one image and a batch give the same numbers. Targets are constants: they
never require grad (the IoU target is computed from detached predictions, §5).
"""
import torch

from detector.batched_targets import (
    box_targets_batched,
    centerness_targets_batched,
    class_targets_batched,
    ignore_regions_batched,
    iou_targets_batched,
)
from detector.conventions import BACKGROUND, IGNORE
from detector.validation import as_boxes, as_points, as_values, check_num_classes


def class_targets(matched_gt, gt_labels, num_classes, scores=None, *, dtype=None):
    """Classification targets and label weights (specs/targets.md §2).

    Args:
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_labels: (G,) integers in 0..K-1, the class of each GT.
        num_classes: K >= 1.
        scores: None for hard targets, or (A,) floats in [0, 1], the soft target of each
            anchor (e.g. :func:`iou_targets`); only positive rows are read.
        dtype: floating dtype of the results (default: that of ``scores``, else the
            default dtype).

    Returns:
        targets: (A, K) in ``dtype``; row ``a`` is 0 except ``targets[a, gt_labels[matched_gt[a]]]``,
            which is 1 (hard) or ``scores[a]`` (soft) for a positive anchor.
        label_weights: (A,) in ``dtype``; 0 for IGNORE anchors, 1 otherwise.

    Raises:
        ValueError: a bad ``matched_gt`` value, label, ``num_classes`` or score.
    """
    num_classes = check_num_classes(num_classes)
    gt_labels = _check_labels(gt_labels, num_classes)
    matched_gt = _check_matched_gt(matched_gt, len(gt_labels))
    num_anchors = len(matched_gt)

    if scores is not None:
        scores = _check_scores(scores, num_anchors)[None]
    targets, label_weights = class_targets_batched(matched_gt[None], gt_labels[None], num_classes, scores, dtype=dtype)
    return targets[0], label_weights[0]


def box_targets(matched_gt, gt_boxes):
    """Regression targets: the assigned GT box (specs/targets.md §3).

    Args:
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A, 4) in the dtype of ``gt_boxes``: ``gt_boxes[matched_gt[a]]`` for a positive
        anchor, a zero row otherwise.
    """
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    matched_gt = _check_matched_gt(matched_gt, len(gt_boxes))
    return box_targets_batched(matched_gt[None], gt_boxes[None])[0]


def centerness_targets(centers, matched_gt, gt_boxes):
    """FCOS/ATSS centerness of each anchor centre inside its assigned GT (specs/targets.md §4).

    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))`` with ``(l, t, r, b)`` the
    distances from the centre to the GT's sides. A ratio is 0 where ``min(l, r) <= 0``
    (resp. ``min(t, b) <= 0``): the centre is on or outside that edge, or the GT has zero
    width (height). The result is never NaN.

    Args:
        centers: (A, 2) (x, y) anchor centres or points.
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A,) in [0, 1], in the dtype of ``gt_boxes``; 0 for anchors that are not positive.
    """
    centers = as_points(centers, "centers")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    matched_gt = _check_matched_gt(matched_gt, len(gt_boxes))
    if len(centers) != len(matched_gt):
        raise ValueError(f"centers: expected {len(matched_gt)} rows to pair with matched_gt, got {len(centers)}")

    return centerness_targets_batched(centers, matched_gt[None], gt_boxes[None])[0]


def iou_targets(pred_boxes, matched_gt, gt_boxes):
    """IoU of each positive's predicted box with its assigned GT (specs/targets.md §5).

    This is Dynamic ATSS's "PIoU" of the assigned pair: the target of the IoU branch and
    the soft class target of QFL/VFL. The predicted boxes are the decoded predictions of
    this step, treated as constants (the PyTorch twin detaches them).

    Args:
        pred_boxes: (A, 4) xyxy decoded predicted boxes.
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A,) in [0, 1], no grad; 0 for anchors that are not positive, and 0 where the union
        is 0 (specs/boxes.md §5).
    """
    pred_boxes = as_boxes(pred_boxes, "pred_boxes")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    matched_gt = _check_matched_gt(matched_gt, len(gt_boxes))
    if len(pred_boxes) != len(matched_gt):
        raise ValueError(f"pred_boxes: expected {len(matched_gt)} rows to pair with matched_gt, got {len(pred_boxes)}")
    return iou_targets_batched(pred_boxes[None], matched_gt[None], gt_boxes[None])[0]


def ignore_regions(matched_gt, centers, ignore_boxes):
    """Turn background anchors whose centre lies inside an ignore region into IGNORE
    (specs/targets.md §8).

    Runs after the assigner, before the targets: a COCO crowd box (``ignore_boxes`` of
    ``CocoDetection(..., crowd="ignore")``) excludes the negatives it covers from the
    classification loss. Positives are never changed.

    Args:
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0, 1, ...}.
        centers: (A, 2) (x, y) anchor centres or points.
        ignore_boxes: (I, 4) xyxy ignore regions; I may be 0.

    Returns:
        (A,) int64: ``IGNORE`` where ``matched_gt == BACKGROUND`` and the centre is strictly
        inside some ignore box (``min(l, t, r, b) > 0``, specs/boxes.md §7), else
        ``matched_gt``. A zero-area ignore box contains no centre.
        The result is on the device of ``matched_gt``.

    Raises:
        ValueError: a bad ``matched_gt`` value, bad centres or boxes, or a length mismatch.
    """
    matched_gt = _check_matched_gt(matched_gt, None)
    centers = as_points(centers, "centers")
    ignore_boxes = as_boxes(ignore_boxes, "ignore_boxes")
    if len(centers) != len(matched_gt):
        raise ValueError(f"centers: expected {len(matched_gt)} rows to pair with matched_gt, got {len(centers)}")

    valid = torch.ones(1, len(ignore_boxes), dtype=torch.bool, device=ignore_boxes.device)
    return ignore_regions_batched(matched_gt[None], centers, ignore_boxes[None], valid)[0]


# ---------------------------------------------------------------------------------------
# helpers


def _check_matched_gt(matched_gt, num_gts):
    """Check (A,) integer sentinels / GT indices; ``num_gts=None`` accepts any index >= 0."""
    indices = _as_indices(matched_gt, "matched_gt", "(A,)")
    bad = indices < IGNORE
    if num_gts is not None:
        bad |= indices >= num_gts
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        allowed = "a GT index >= 0" if num_gts is None else f"a GT index below {num_gts}"
        raise ValueError(f"matched_gt: row {row} is {int(indices[row])}, expected {IGNORE}, {BACKGROUND} or {allowed}")
    return indices


def _check_labels(gt_labels, num_classes):
    indices = _as_indices(gt_labels, "gt_labels", "(G,)")
    bad = (indices < 0) | (indices >= num_classes)
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(f"gt_labels: row {row} is {int(indices[row])}, expected a class in 0..{num_classes - 1}")
    return indices


def _check_scores(scores, num_anchors):
    scores = as_values(scores, "scores", ndim=1)
    if len(scores) != num_anchors:
        raise ValueError(f"scores: expected {num_anchors} values to pair with matched_gt, got {len(scores)}")
    bad = (scores < 0) | (scores > 1)
    if bad.any():
        row = int(torch.nonzero(bad)[0])
        raise ValueError(f"scores: row {row} is {float(scores[row])}, expected a value in [0, 1]")
    return scores


def _as_indices(values, name, shape):
    """``values`` as a 1-d int64 tensor (``shape`` names it in the error message)."""
    tensor = torch.as_tensor(values)
    if tensor.ndim != 1 or tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name}: expected a {shape} integer tensor, got shape {tuple(tensor.shape)} dtype {tensor.dtype}"
        )
    return tensor.long()
