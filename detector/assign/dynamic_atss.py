"""Dynamic ATSS: ATSS on combined IoUs of predictions and anchors (specs/dynamic_atss.md).

Twin of ``reference/assign/dynamic_atss.py``. The predictions are raw regression outputs;
they are detached and decoded here (``detector.coders``), so no gradient ever flows through
the assignment. Half and bfloat16 predictions are up-cast to float32.
"""
import math

import torch

from detector.assign.atss import (
    DEFAULT_MAX_ELEMENTS,
    aligned_iou,
    candidate_ious,
    centers_inside,
    check_max_elements,
    check_nonnegative,
    check_topk,
    finish_batch,
    gather_boxes,
    mean_plus_std_threshold,
    prepare_batch,
    resolve_multiple_matches,
    select_candidates,
)
from detector.coders import decode_deltas_unchecked
from detector.conventions import ATSS_INSIDE_EPS, ATSS_TOPK, DELTA_STDS
from detector.validation import as_boxes, as_values

#: The dynamic weight schedules of the paper's Table 3.
DYNAMIC_WEIGHT_SCHEDULES = ("up", "down")


def assign_dynamic_atss(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    pred_deltas,
    *,
    topk=ATSS_TOPK,
    pred_weight=1.0,
    anchor_weight=1.0,
    stds=DELTA_STDS,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Dynamic ATSS for one image (specs/dynamic_atss.md §2).

    Args:
        anchors: (A, 4) xyxy, positive width and height, level-major.
        num_anchors_per_level: L ints summing to A.
        gt_boxes: (G, 4) xyxy.
        pred_deltas: (A, 4) raw delta-xywh outputs (may require grad; detached here;
            non-finite values give PIoU 0).
        topk, pred_weight, anchor_weight, stds, inside_eps: as the reference.
        max_elements: bound on B * G * A values held at once.

    Returns:
        Assignment: matched_gt (A,) int64, matched_metric (A,) combined IoU,
        gt_threshold (G,), candidate_index (G, C) int64.
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    pred_deltas = check_pred_deltas(pred_deltas, anchors.shape[0])
    gt_valid = torch.ones(gt_boxes.shape[:1], dtype=torch.bool, device=gt_boxes.device)
    result = assign_dynamic_atss_batched(
        anchors,
        num_anchors_per_level,
        gt_boxes[None],
        gt_valid[None],
        pred_deltas[None],
        topk=topk,
        pred_weight=pred_weight,
        anchor_weight=anchor_weight,
        stds=stds,
        inside_eps=inside_eps,
        max_elements=max_elements,
    )
    return result.image(0)


def assign_dynamic_atss_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    pred_deltas,
    *,
    topk=ATSS_TOPK,
    pred_weight=1.0,
    anchor_weight=1.0,
    stds=DELTA_STDS,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Dynamic ATSS for a batch sharing one set of anchors (specs/dynamic_atss.md §2).

    Args:
        anchors: (A, 4), shared.
        num_anchors_per_level: L ints summing to A.
        gt_boxes: (B, G_max, 4) padded; gt_valid: (B, G_max) bool.
        pred_deltas: (B, A, 4) raw regression outputs (detached here).
        other options: as ``assign_dynamic_atss``.

    Returns:
        Assignment with (B, A), (B, G_max), (B, G_max, C) fields; padded GT slots have
        threshold NaN and candidates -1.
    """
    anchors, gt_boxes, gt_valid, counts = prepare_batch(anchors, num_anchors_per_level, gt_boxes, gt_valid)
    pred_deltas = check_pred_deltas(pred_deltas, anchors.shape[0], batched=gt_boxes.shape[0])
    topk = check_topk(topk)
    pred_weight = check_nonnegative(pred_weight, "pred_weight")
    anchor_weight = check_nonnegative(anchor_weight, "anchor_weight")
    stds = check_stds(stds)
    inside_eps = check_nonnegative(inside_eps, "inside_eps")
    max_elements = check_max_elements(max_elements)
    check_positive_size(anchors)
    with torch.no_grad():
        pred_deltas = pred_deltas.detach().to(device=anchors.device, dtype=anchors.dtype)
        candidate_index = select_candidates(gt_boxes, anchors, counts, topk, max_elements=max_elements)
        anchor_ious = candidate_ious(gt_boxes, anchors, candidate_index)
        pred_boxes = decode_predictions(anchors, pred_deltas, stds, candidate_index)
        pred_ious = predicted_ious(gt_boxes, pred_boxes, candidate_index)
        combined = combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight)
        threshold = combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight)
        is_positive = (combined >= threshold[..., None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
        is_positive &= gt_valid[..., None]
        matched_gt, matched_metric = resolve_multiple_matches(candidate_index, combined, is_positive, anchors.shape[0])
        return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


def dynamic_atss_soft_targets(anchors, gt_boxes, pred_deltas, matched_gt, *, stds=DELTA_STDS):
    """Soft targets: IoU(decoded detached prediction, assigned GT) (specs/dynamic_atss.md §3).

    Args:
        anchors: (A, 4) positive size; gt_boxes: (G, 4) or (B, G_max, 4);
        pred_deltas: (A, 4) or (B, A, 4); matched_gt: (A,) or (B, A) int64.

    Returns:
        (A,) or (B, A) in [0, 1]; 0 off the positives and for non-finite predictions. No
        gradient (the predictions are detached).
    """
    anchors = as_boxes(anchors, "anchors")
    batched = gt_boxes.ndim == 3 if isinstance(gt_boxes, torch.Tensor) else False
    gt_boxes = as_boxes(gt_boxes, "gt_boxes", batched=batched)
    if not batched:
        gt_boxes = gt_boxes[None]
    pred_deltas = check_pred_deltas(pred_deltas, anchors.shape[0], batched=gt_boxes.shape[0] if batched else None)
    if not batched:
        pred_deltas = pred_deltas[None]
    stds = check_stds(stds)
    check_positive_size(anchors)
    if not isinstance(matched_gt, torch.Tensor) or matched_gt.dtype != torch.int64:
        raise ValueError(f"matched_gt: expected an int64 tensor, got {type(matched_gt).__name__}")
    matched = matched_gt if batched else matched_gt[None]
    if tuple(matched.shape) != (gt_boxes.shape[0], anchors.shape[0]):
        raise ValueError(f"matched_gt: expected shape {(gt_boxes.shape[0], anchors.shape[0])}, got {tuple(matched.shape)}")
    num_gts = gt_boxes.shape[1]
    if bool(((matched < -2) | (matched >= num_gts)).any()):
        raise ValueError(f"matched_gt: values must be in -2..{num_gts - 1}")
    dtype = torch.promote_types(anchors.dtype, gt_boxes.dtype)
    with torch.no_grad():
        anchors = anchors.to(dtype)
        pred_boxes = decode_deltas_unchecked(anchors, pred_deltas.detach().to(device=anchors.device, dtype=dtype), stds)
        positive = matched >= 0
        index = matched.clamp(min=0)
        if num_gts == 0:
            targets = torch.zeros(matched.shape, dtype=dtype, device=anchors.device)
        else:
            assigned = gt_boxes.to(device=anchors.device, dtype=dtype).gather(1, index[..., None].expand(-1, -1, 4))
            finite = torch.isfinite(pred_boxes).all(dim=-1)
            safe = torch.where(finite[..., None], pred_boxes, 0.0)
            ious = aligned_iou(assigned, safe)
            targets = torch.where(positive & finite, ious, 0.0)
    return targets if batched else targets[0]


def dynamic_weight(schedule, iteration, max_iterations):
    """The dynamic weights of the paper's Table 3 (specs/dynamic_atss.md §5).

    Returns:
        float: ``iteration / max_iterations`` for ``"up"``, ``1 - iteration / max_iterations``
        for ``"down"``.
    """
    if schedule not in DYNAMIC_WEIGHT_SCHEDULES:
        raise ValueError(f"schedule: expected one of {DYNAMIC_WEIGHT_SCHEDULES}, got {schedule!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, int) or max_iterations < 1:
        raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
    if isinstance(iteration, bool) or not isinstance(iteration, int) or not 0 <= iteration <= max_iterations:
        raise ValueError(f"iteration: expected an int in 0..{max_iterations}, got {iteration!r}")
    progress = iteration / max_iterations
    return progress if schedule == "up" else 1.0 - progress


# ---------------------------------------------------------------------------------------
# step helpers


def decode_predictions(anchors, pred_deltas, stds, candidate_index):
    """Decoded predicted boxes of the candidate anchors (specs/dynamic_atss.md §2.2).

    Only candidates can become positive, so only their predictions are decoded (the same
    elementwise arithmetic as decoding every row); every other row is NaN (never read).

    Args:
        anchors: (A, 4); pred_deltas: (B, A, 4) detached; stds: 4 floats;
        candidate_index: (B, G, C) int64.

    Returns:
        (B, A, 4) boxes, possibly non-finite.
    """
    batch = torch.arange(pred_deltas.shape[0], device=pred_deltas.device)[:, None, None]
    decoded = decode_deltas_unchecked(anchors[candidate_index], pred_deltas[batch, candidate_index], stds)  # (B, G, C, 4)
    pred_boxes = torch.full(pred_deltas.shape, math.nan, dtype=decoded.dtype, device=decoded.device)
    pred_boxes[batch, candidate_index] = decoded  # an anchor shared by GTs gets the same value
    return pred_boxes


def predicted_ious(gt_boxes, pred_boxes, candidate_index):
    """PIoU of each GT's candidates; 0 for non-finite predictions (§2.2).

    Args:
        gt_boxes: (B, G, 4); pred_boxes: (B, A, 4); candidate_index: (B, G, C).

    Returns:
        (B, G, C) in [0, 1].
    """
    boxes = gather_boxes(pred_boxes, candidate_index)  # (B, G, C, 4)
    finite = torch.isfinite(boxes).all(dim=-1)
    safe_boxes = torch.where(finite[..., None], boxes, 0.0)
    ious = aligned_iou(gt_boxes[:, :, None, :], safe_boxes)
    return torch.where(finite, ious, 0.0)


def combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """CIoU = w_p * PIoU + w_a * AIoU (paper Eq. 1). (B, G, C) -> (B, G, C)."""
    return pred_weight * pred_ious + anchor_weight * anchor_ious


def combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """``w_p * (mean(P) + std(P)) + w_a * (mean(A) + std(A))`` (paper Eqs. 2-4).

    (B, G, C) -> (B, G); NaN when C = 0.
    """
    return pred_weight * mean_plus_std_threshold(pred_ious) + anchor_weight * mean_plus_std_threshold(anchor_ious)


# ---------------------------------------------------------------------------------------
# option checks


def check_pred_deltas(pred_deltas, num_anchors, batched=None):
    """``pred_deltas`` must be (A, 4), or (B, A, 4) when ``batched`` is the batch size B;
    non-finite values are allowed; half/bfloat16 become float32."""
    batch = batched
    ndim = 2 if batch is None else 3
    if isinstance(pred_deltas, torch.Tensor):
        pred_deltas = pred_deltas.detach()
    pred_deltas = as_values(pred_deltas, "pred_deltas", ndim=ndim, width=4, finite=False)
    expected = (num_anchors, 4) if batch is None else (batch, num_anchors, 4)
    if tuple(pred_deltas.shape) != expected:
        raise ValueError(f"pred_deltas: expected shape {expected} (one row per anchor), got {tuple(pred_deltas.shape)}")
    return pred_deltas


def check_stds(stds):
    """``stds`` must be 4 finite positive numbers."""
    try:
        values = [float(v) for v in stds]
    except (TypeError, ValueError):
        values = None
    if values is None or len(values) != 4 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"stds: expected 4 finite positive numbers, got {stds!r}")
    return tuple(values)


def check_positive_size(anchors):
    """Anchors must have positive width and height: the delta coder divides by them."""
    flat = (anchors[:, 2] <= anchors[:, 0]) | (anchors[:, 3] <= anchors[:, 1])
    if bool(flat.any()):
        row = int(flat.nonzero()[0, 0])
        raise ValueError(f"anchors: row {row} has zero width or height: {anchors[row].tolist()}")
