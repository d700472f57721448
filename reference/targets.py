"""Training targets from an assignment (specs/targets.md).

Every function takes an image's ``matched_gt`` (A,) with the sentinels BACKGROUND = -1
and IGNORE = -2 (specs/conventions.md §4) and the image's GTs, and returns per-anchor
targets. Rows of anchors that are not positive are 0 (and carry weight 0 where a weight
exists), so a target is always finite.
"""
import numpy as np

from reference.boxes import aligned_box_iou, points_inside_boxes
from reference.conventions import BACKGROUND, FCOS_INSIDE_EPS, IGNORE
from reference.validation import as_boxes, as_points, as_values, check_num_classes


def class_targets(matched_gt, gt_labels, num_classes, scores=None):
    """Classification targets and label weights (specs/targets.md §2).

    Args:
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_labels: (G,) integers in 0..K-1, the class of each GT.
        num_classes: K >= 1.
        scores: None for hard targets, or (A,) floats in [0, 1], the soft target of each
            anchor (e.g. :func:`iou_targets`); only positive rows are read.

    Returns:
        targets: (A, K) float64; row ``a`` is 0 except ``targets[a, gt_labels[matched_gt[a]]]``,
            which is 1 (hard) or ``scores[a]`` (soft) for a positive anchor.
        label_weights: (A,) float64; 0 for IGNORE anchors, 1 otherwise.

    Raises:
        ValueError: a bad ``matched_gt`` value, label, ``num_classes`` or score.
    """
    num_classes = check_num_classes(num_classes)
    gt_labels = _check_labels(gt_labels, num_classes)
    matched_gt = _check_matched_gt(matched_gt, len(gt_labels))
    num_anchors = len(matched_gt)
    positive = matched_gt >= 0

    if scores is None:
        values = np.ones(num_anchors)
    else:
        values = _check_scores(scores, num_anchors)

    targets = np.zeros((num_anchors, num_classes))
    rows = np.flatnonzero(positive)
    targets[rows, gt_labels[matched_gt[rows]]] = values[rows]
    label_weights = np.where(matched_gt == IGNORE, 0.0, 1.0)
    return targets, label_weights


def box_targets(matched_gt, gt_boxes):
    """Regression targets: the assigned GT box (specs/targets.md §3).

    Args:
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.

    Returns:
        (A, 4) float64: ``gt_boxes[matched_gt[a]]`` for a positive anchor, a zero row otherwise.
    """
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    matched_gt = _check_matched_gt(matched_gt, len(gt_boxes))
    targets = np.zeros((len(matched_gt), 4))
    positive = matched_gt >= 0
    targets[positive] = gt_boxes[matched_gt[positive]]
    return targets


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
        (A,) float64 in [0, 1]; 0 for anchors that are not positive.
    """
    centers = as_points(centers, "centers")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    matched_gt = _check_matched_gt(matched_gt, len(gt_boxes))
    if len(centers) != len(matched_gt):
        raise ValueError(f"centers: expected {len(matched_gt)} rows to pair with matched_gt, got {len(centers)}")

    targets = np.zeros(len(matched_gt))
    rows = np.flatnonzero(matched_gt >= 0)
    x, y = centers[rows, 0], centers[rows, 1]
    x1, y1, x2, y2 = gt_boxes[matched_gt[rows]].T
    ratio_x = _side_ratio(x - x1, x2 - x)
    ratio_y = _side_ratio(y - y1, y2 - y)
    targets[rows] = np.sqrt(ratio_x * ratio_y)
    return targets


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
        (A,) float64 in [0, 1]; 0 for anchors that are not positive, and 0 where the union
        is 0 (specs/boxes.md §5).
    """
    pred_boxes = as_boxes(pred_boxes, "pred_boxes")
    assigned = box_targets(matched_gt, gt_boxes)
    if len(pred_boxes) != len(assigned):
        raise ValueError(f"pred_boxes: expected {len(assigned)} rows to pair with matched_gt, got {len(pred_boxes)}")
    positive = np.asarray(matched_gt) >= 0
    targets = np.zeros(len(assigned))
    targets[positive] = aligned_box_iou(pred_boxes[positive], assigned[positive])
    return targets


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

    Raises:
        ValueError: a bad ``matched_gt`` value, bad centres or boxes, or a length mismatch.
    """
    matched_gt = _check_matched_gt(matched_gt, None)
    centers = as_points(centers, "centers")
    ignore_boxes = as_boxes(ignore_boxes, "ignore_boxes")
    if len(centers) != len(matched_gt):
        raise ValueError(f"centers: expected {len(matched_gt)} rows to pair with matched_gt, got {len(centers)}")

    inside_any = np.zeros(len(matched_gt), dtype=bool)
    for box in ignore_boxes:  # one (A,) test per region
        inside_any |= points_inside_boxes(centers, box[None], FCOS_INSIDE_EPS)[0]
    return np.where((matched_gt == BACKGROUND) & inside_any, IGNORE, matched_gt).astype(np.int64)


# ---------------------------------------------------------------------------------------
# helpers


def _side_ratio(near, far):
    """min / max of distances to two opposite sides, elementwise; 0 where the smaller one is <= 0."""
    low, high = np.minimum(near, far), np.maximum(near, far)
    ratio = np.zeros(len(low))
    np.divide(low, high, out=ratio, where=low > 0)
    return ratio


def _check_matched_gt(matched_gt, num_gts):
    """Check (A,) integer sentinels / GT indices; ``num_gts=None`` accepts any index >= 0."""
    indices = _as_indices(matched_gt, "matched_gt", "(A,)")
    bad = indices < IGNORE
    if num_gts is not None:
        bad |= indices >= num_gts
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        allowed = "a GT index >= 0" if num_gts is None else f"a GT index below {num_gts}"
        raise ValueError(f"matched_gt: row {row} is {int(indices[row])}, expected {IGNORE}, {BACKGROUND} or {allowed}")
    return indices.astype(np.int64)


def _check_labels(gt_labels, num_classes):
    indices = _as_indices(gt_labels, "gt_labels", "(G,)")
    bad = (indices < 0) | (indices >= num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"gt_labels: row {row} is {int(indices[row])}, expected a class in 0..{num_classes - 1}")
    return indices.astype(np.int64)


def _check_scores(scores, num_anchors):
    scores = as_values(scores, "scores", ndim=1)
    if len(scores) != num_anchors:
        raise ValueError(f"scores: expected {num_anchors} values to pair with matched_gt, got {len(scores)}")
    bad = (scores < 0) | (scores > 1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"scores: row {row} is {scores[row]}, expected a value in [0, 1]")
    return scores


def _as_indices(values, name, shape):
    """``values`` as a 1-d integer array (``shape`` names it in the error message)."""
    array = np.asarray(values)
    if array.ndim != 1 or not (np.issubdtype(array.dtype, np.integer) and array.dtype != bool):
        raise ValueError(f"{name}: expected a {shape} integer array, got shape {array.shape} dtype {array.dtype}")
    return array
