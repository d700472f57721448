"""Batched training targets (specs/targets.md): one call for a whole batch, no reference twin.

The builders of ``detector/targets.py`` for ``B`` images at once: ``matched_gt`` is
(B, A), the GTs are padded to (B, G_max, ...) with ``gt_valid`` (B, G_max) bool, and an
anchor matched to a padded slot is an error. Image ``b`` of a result equals the
single-image function of ``detector/targets.py`` on image ``b``'s valid GTs (each of those
runs the builder here on a batch of one), and the reference function (parity tests).

Vectorised over images, GTs and anchors, no Python loop. Targets are constants: they never
require grad (the IoU target is computed from detached predictions, specs/targets.md §5).
"""
import torch

from detector.boxes import aligned_box_iou
from detector.conventions import BACKGROUND, IGNORE
from detector.validation import as_boxes, as_points, as_values, check_num_classes


def class_targets_batched(matched_gt, gt_labels, num_classes, scores=None, gt_valid=None, *, dtype=None):
    """Batched ``targets.class_targets`` (specs/targets.md §1, §2).

    Args:
        matched_gt: (B, A) integers in {IGNORE, BACKGROUND, 0..G_max-1}, never a padded slot.
        gt_labels: (B, G_max) integers; valid slots in 0..K-1 (padded slots are not read).
        num_classes: K >= 1.
        scores: None, or (B, A) soft targets in [0, 1].
        gt_valid: (B, G_max) bool, or None for all valid.
        dtype: floating dtype of the results (default: that of ``scores``, else the
            default dtype).

    Returns:
        targets: (B, A, K); label_weights: (B, A).
    """
    labels, values, label_weights = class_target_rows_batched(matched_gt, gt_labels, num_classes, scores, gt_valid,
                                                              dtype=dtype)
    return dense_class_targets(labels, values, num_classes), label_weights


def class_target_rows_batched(matched_gt, gt_labels, num_classes, scores=None, gt_valid=None, *, dtype=None):
    """``class_targets_batched`` without its dense (B, A, K) tensor, with the same checks.

    Row ``(b, a)`` of the dense target is zero except ``values[b, a]`` at class
    ``labels[b, a]`` (``dense_class_targets`` builds it); the fused loss step reads the rows
    (specs/losses.md §7.1).

    Returns:
        labels: (B, A) int64, a positive's class (0 elsewhere); values: (B, A), its target
        at that class (1, or ``scores``; 0 elsewhere), detached; label_weights: (B, A), 0 at
        IGNORE anchors.
    """
    num_classes = check_num_classes(num_classes)
    gt_labels = _as_index_tensor(gt_labels, "gt_labels", 2)
    gt_valid = _check_gt_valid(gt_valid, gt_labels.shape, device=gt_labels.device)
    bad = gt_valid & ((gt_labels < 0) | (gt_labels >= num_classes))
    if bool(bad.any()):
        row = _first(bad)
        raise ValueError(f"gt_labels: row {row} is {int(gt_labels[row])}, expected a class in 0..{num_classes - 1}")
    matched_gt = _check_matched_gt_batched(matched_gt, gt_valid)
    if dtype is None:
        soft = isinstance(scores, torch.Tensor) and scores.is_floating_point()
        dtype = scores.dtype if soft else torch.get_default_dtype()

    positive = matched_gt >= 0
    labels = torch.where(positive, _gather(gt_labels.to(matched_gt.device), matched_gt), 0)  # (B, A); 0 if none
    if scores is None:
        values = positive.to(dtype)
    else:
        values = torch.where(positive, _check_scores(scores, matched_gt.shape[-1]).to(dtype), 0.0)
    label_weights = (matched_gt != IGNORE).to(dtype)
    return labels, values.detach(), label_weights


def dense_class_targets(labels, values, num_classes):
    """(B, A) rows of ``class_target_rows_batched`` -> the (B, A, K) class targets."""
    targets = torch.zeros(*labels.shape, num_classes, dtype=values.dtype, device=labels.device)
    return targets.scatter_(-1, labels[..., None], values[..., None])


def box_targets_batched(matched_gt, gt_boxes, gt_valid=None):
    """Batched ``targets.box_targets`` (specs/targets.md §3).

    Args:
        matched_gt: (B, A) integers in {IGNORE, BACKGROUND, 0..G_max-1}, never a padded slot.
        gt_boxes: (B, G_max, 4) xyxy, padded.
        gt_valid: (B, G_max) bool, or None for all valid.

    Returns:
        (B, A, 4) in the dtype of ``gt_boxes``: the assigned GT box, zero rows for
        non-positives.
    """
    gt_boxes = as_boxes(gt_boxes, "gt_boxes", batched=True)
    gt_valid = _check_gt_valid(gt_valid, gt_boxes.shape[:2], device=gt_boxes.device)
    matched_gt = _check_matched_gt_batched(matched_gt, gt_valid)
    positive = (matched_gt >= 0)[..., None]
    return torch.where(positive, _gather(gt_boxes.detach(), matched_gt), 0.0)


def centerness_targets_batched(centers, matched_gt, gt_boxes, gt_valid=None):
    """Batched ``targets.centerness_targets`` (specs/targets.md §4).

    Args:
        centers: (A, 2) shared by the batch, or (B, A, 2).
        matched_gt: (B, A).
        gt_boxes: (B, G_max, 4).
        gt_valid: (B, G_max) bool or None.

    Returns:
        (B, A) in [0, 1].
    """
    assigned = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    centers = _check_centers(centers, assigned.shape[:2]).to(assigned.dtype).detach()
    x, y = centers[..., 0], centers[..., 1]
    ratio_x = _side_ratio(x - assigned[..., 0], assigned[..., 2] - x)
    ratio_y = _side_ratio(y - assigned[..., 1], assigned[..., 3] - y)
    positive = torch.as_tensor(matched_gt, device=assigned.device) >= 0
    return torch.where(positive, torch.sqrt(ratio_x * ratio_y), 0.0)


def iou_targets_batched(pred_boxes, matched_gt, gt_boxes, gt_valid=None):
    """Batched ``targets.iou_targets`` (specs/targets.md §5).

    Args:
        pred_boxes: (B, A, 4) xyxy decoded predictions; detached here.
        matched_gt: (B, A).
        gt_boxes: (B, G_max, 4).
        gt_valid: (B, G_max) bool or None.

    Returns:
        (B, A) in [0, 1], no grad, in the promoted dtype of ``pred_boxes`` and ``gt_boxes``.
    """
    pred_boxes = as_boxes(pred_boxes, "pred_boxes", batched=True).detach()
    assigned = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    if pred_boxes.shape != assigned.shape:
        raise ValueError(
            f"pred_boxes: expected shape {tuple(assigned.shape)} to pair with matched_gt, got {tuple(pred_boxes.shape)}"
        )
    dtype = torch.promote_types(pred_boxes.dtype, assigned.dtype)
    iou = aligned_box_iou(pred_boxes.reshape(-1, 4).to(dtype), assigned.reshape(-1, 4).to(dtype))
    iou = iou.reshape(assigned.shape[:2])
    positive = torch.as_tensor(matched_gt, device=assigned.device) >= 0
    return torch.where(positive, iou, 0.0)


def ignore_regions_batched(matched_gt, centers, ignore_boxes, ignore_valid):
    """Batched ``targets.ignore_regions`` (specs/targets.md §8).

    Vectorised over images, regions and anchors; the largest intermediate is a
    (B, I_max, A) bool tensor.

    Args:
        matched_gt: (B, A) integers in {IGNORE, BACKGROUND, 0, 1, ...}.
        centers: (A, 2) (x, y) shared by the batch.
        ignore_boxes: (B, I_max, 4) xyxy, padded (``detector.data.collate.pad_boxes``).
        ignore_valid: (B, I_max) bool; padded slots contain no centre.

    Returns:
        (B, A) int64 on the device of ``matched_gt``.
    """
    matched_gt = _check_ignore_matched_gt(matched_gt)
    centers = as_points(centers, "centers")
    ignore_boxes = as_boxes(ignore_boxes, "ignore_boxes", batched=True)
    batch, num_anchors = matched_gt.shape
    if len(centers) != num_anchors:
        raise ValueError(f"centers: expected {num_anchors} rows to pair with matched_gt, got {len(centers)}")
    if ignore_boxes.shape[0] != batch:
        raise ValueError(f"ignore_boxes: expected {batch} images to pair with matched_gt, got {ignore_boxes.shape[0]}")
    ignore_valid = _check_gt_valid(ignore_valid, ignore_boxes.shape[:2], "ignore_valid", device=ignore_boxes.device)

    device = matched_gt.device
    dtype = torch.promote_types(centers.dtype, ignore_boxes.dtype)
    x = centers[:, 0].to(device, dtype).detach()[None, None]  # (1, 1, A)
    y = centers[:, 1].to(device, dtype).detach()[None, None]
    boxes = ignore_boxes.to(device, dtype).detach()[..., None]  # (B, I_max, 4, 1)
    # min(l, t, r, b) > 0 (specs/boxes.md §7), written as four strict comparisons so that
    # no (B, I_max, A) float tensor is built: x - x1 > 0 <=> x > x1 for finite floats.
    inside = x > boxes[:, :, 0]  # (B, I_max, A) bool
    inside &= y > boxes[:, :, 1]
    inside &= x < boxes[:, :, 2]
    inside &= y < boxes[:, :, 3]
    inside &= ignore_valid.to(device)[..., None]
    if inside.shape[1]:
        inside_any = inside.any(dim=1)
    else:
        inside_any = torch.zeros(batch, num_anchors, dtype=torch.bool, device=device)
    return torch.where((matched_gt == BACKGROUND) & inside_any, IGNORE, matched_gt)


# ---------------------------------------------------------------------------------------
# helpers


def _side_ratio(near, far):
    """min / max of two distances to opposite sides; 0 when the smaller one is <= 0."""
    low, high = torch.minimum(near, far), torch.maximum(near, far)
    inside = low > 0
    return torch.where(inside, low / torch.where(inside, high, torch.ones_like(high)), 0.0)


def _gather(values, matched_gt):
    """values (B, G, ...) gathered at matched_gt (B, A) (clamped to 0) -> (B, A, ...)."""
    batch, num_anchors = matched_gt.shape
    if values.shape[1] == 0:
        return torch.zeros(batch, num_anchors, *values.shape[2:], dtype=values.dtype, device=values.device)
    index = matched_gt.clamp(min=0).to(values.device)
    index = index.reshape(batch, num_anchors, *([1] * (values.ndim - 2))).expand(batch, num_anchors, *values.shape[2:])
    return torch.gather(values, 1, index)


def _as_index_tensor(values, name, ndim):
    tensor = torch.as_tensor(values)
    if tensor.ndim != ndim or tensor.dtype == torch.bool or tensor.is_floating_point() or tensor.is_complex():
        raise ValueError(
            f"{name}: expected a (B, N) integer tensor, got shape {tuple(tensor.shape)} dtype {tensor.dtype}"
        )
    return tensor.long()


def _check_matched_gt_batched(matched_gt, gt_valid):
    tensor = _as_index_tensor(matched_gt, "matched_gt", 2)
    if tensor.shape[0] != gt_valid.shape[0]:
        raise ValueError(f"matched_gt: expected {gt_valid.shape[0]} images, got {tensor.shape[0]}")
    num_gts = gt_valid.shape[1]
    bad = (tensor < IGNORE) | (tensor >= num_gts)
    if not bool(bad.any()) and num_gts > 0:
        bad = (tensor >= 0) & ~_gather(gt_valid.to(tensor.device), tensor)
    if bool(bad.any()):
        row = _first(bad)
        raise ValueError(
            f"matched_gt: row {row} is {int(tensor[row])}, not {IGNORE}, {BACKGROUND} or a valid GT of its image"
        )
    return tensor


def _check_ignore_matched_gt(matched_gt):
    """(B, A) integers >= IGNORE (ignore regions read no GTs, so no upper bound)."""
    tensor = _as_index_tensor(matched_gt, "matched_gt", 2)
    bad = tensor < IGNORE
    if bool(bad.any()):
        row = _first(bad)
        raise ValueError(
            f"matched_gt: row {row} is {int(tensor[row])}, expected {IGNORE}, {BACKGROUND} or a GT index >= 0"
        )
    return tensor


def _check_gt_valid(gt_valid, shape, name="gt_valid", device=None):
    """``gt_valid`` checked as a bool tensor of ``shape``; None means all valid, made on
    ``device`` (that of the tensor it masks)."""
    if gt_valid is None:
        return torch.ones(tuple(shape), dtype=torch.bool, device=device)
    gt_valid = torch.as_tensor(gt_valid)
    if gt_valid.dtype != torch.bool or tuple(gt_valid.shape) != tuple(shape):
        raise ValueError(
            f"{name}: expected a bool tensor of shape {tuple(shape)}, got {gt_valid.dtype} {tuple(gt_valid.shape)}"
        )
    return gt_valid


def _check_scores(scores, num_anchors):
    scores = as_values(scores, "scores", ndim=2)
    if scores.shape[-1] != num_anchors:
        raise ValueError(
            f"scores: expected {num_anchors} values per image to pair with matched_gt, got {scores.shape[-1]}"
        )
    bad = (scores < 0) | (scores > 1)
    if bool(bad.any()):
        row = _first(bad)
        raise ValueError(f"scores: row {row} is {float(scores[row])}, expected a value in [0, 1]")
    return scores


def _check_centers(centers, batch_shape):
    centers = torch.as_tensor(centers) if not isinstance(centers, torch.Tensor) else centers
    if centers.ndim == 2:
        centers = as_points(centers, "centers")[None].expand(batch_shape[0], -1, -1)
    else:
        flat = as_points(centers.reshape(-1, 2), "centers")
        centers = flat.reshape(centers.shape)
    if tuple(centers.shape) != (*batch_shape, 2):
        raise ValueError(
            f"centers: expected shape (A, 2) or (B, A, 2) with A = {batch_shape[1]}, got {tuple(centers.shape)}"
        )
    return centers


def _first(mask):
    """Index of the first True entry of a (B, N) mask, as a (b, n) tuple."""
    return tuple(torch.nonzero(mask)[0].tolist())
