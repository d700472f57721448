"""Dynamic ATSS: ATSS on combined IoUs of predictions and anchors (specs/dynamic_atss.md).

Candidates are the ATSS candidates (closest anchor centres per level). Each candidate has a
predicted IoU ``P`` (decoded prediction vs GT) and an anchor IoU ``A``; the combined IoU is
``w_p * P + w_a * A`` (paper Eq. 1) and the threshold sums the parts' statistics,
``w_p * (mean(P) + std(P)) + w_a * (mean(A) + std(A))`` (paper Eqs. 2-4). A candidate is
positive when its combined IoU reaches the threshold and its anchor centre lies inside the
GT; several GTs -> highest combined IoU, then lower GT index.

The predictions come decoded: the caller decodes its regression outputs once (with the
delta-xywh coder, ``coders.decode_deltas``) and passes the boxes, so the assigner does not
depend on the coder (specs/dynamic_atss.md §1). The soft targets of the paper's losses,
``IoU(prediction, assigned GT)``, are ``targets.iou_targets`` (§3).

Twin of ``reference/assign/dynamic_atss.py``; ``assign_dynamic_atss_batched`` holds the
algorithm and ``assign_dynamic_atss`` runs it on one image, as in ``assign/atss.py``. The
predictions are detached here, so no gradient ever flows through the assignment; half and
bfloat16 predictions are up-cast to float32, then cast to the dtype of the anchors and GTs.
"""
import numbers

import torch

from detector.assign.atss import (
    candidate_ious,
    centers_inside,
    mean_plus_std_threshold,
    resolve_multiple_matches,
    select_candidates,
)
from detector.assign.batching import DEFAULT_MAX_ELEMENTS, as_padded_batch, finish_batch, gather_boxes, one_image
from detector.boxes import aligned_box_iou_unchecked
from detector.conventions import ATSS_INSIDE_EPS, ATSS_TOPK
from detector.validation import (
    as_boxes,
    as_pred_boxes,
    check_level_counts,
    check_max_elements,
    check_same_device,
    check_number,
    check_topk,
)

#: The dynamic weight schedules of the paper's Table 3.
DYNAMIC_WEIGHT_SCHEDULES = ("up", "down")


def assign_dynamic_atss(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    pred_boxes,
    *,
    topk=ATSS_TOPK,
    pred_weight=1.0,
    anchor_weight=1.0,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Assign anchors to GTs with Dynamic ATSS (specs/dynamic_atss.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions for this image, one
            per anchor (they may require grad: they are detached here).
            Rows with a NaN or Inf are allowed: such a prediction has predicted IoU 0
            (§2.2). A finite row must have x1 <= x2 and y1 <= y2.
        topk: candidates per level and GT (int >= 1).
        pred_weight: ``w_p`` >= 0, weight of the predicted IoUs (paper Table 3).
        anchor_weight: ``w_a`` >= 0, weight of the anchor IoUs.
        inside_eps: strict inside margin of the anchor centre, pixels.
        max_elements: bound on the B * G * A values held at once (as ``assign_atss``).

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) the
        combined IoU with the assigned GT (0 for background), in [0, w_p + w_a];
        gt_threshold (G,) (NaN when C = 0); candidate_index (G, C) int64 exactly as
        ATSS.

    Raises:
        ValueError: bad boxes or level counts, ``pred_boxes`` not (A, 4) real numbers or a
            finite inverted row (named), a bad option (named).
    """
    anchors = as_boxes(anchors, "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))  # errors name this image's rows
    return one_image(
        assign_dynamic_atss_batched,
        (anchors, num_anchors_per_level),
        gt_boxes,
        pred_boxes,
        topk=topk,
        pred_weight=pred_weight,
        anchor_weight=anchor_weight,
        inside_eps=inside_eps,
        max_elements=max_elements,
    )


@torch.no_grad()
def assign_dynamic_atss_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    pred_boxes,
    *,
    topk=ATSS_TOPK,
    pred_weight=1.0,
    anchor_weight=1.0,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """``assign_dynamic_atss`` for a batch of images sharing one set of anchors
    (specs/dynamic_atss.md §2; specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        pred_boxes: (B, A, 4) xyxy decoded predictions (detached here; non-finite rows
            allowed, finite rows not inverted).
        topk, pred_weight, anchor_weight, inside_eps, max_elements: as
            ``assign_dynamic_atss``.

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) (NaN for padded slots and when C = 0), candidate_index (B, G_max, C)
        int64 (-1 for padded slots).
    """
    anchors = as_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    counts = check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    check_same_device(pred_boxes, anchors, "pred_boxes", "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(gt_boxes), len(anchors), 4))
    topk = check_topk(topk)
    pred_weight = check_number(pred_weight, "pred_weight", minimum=0.0)
    anchor_weight = check_number(anchor_weight, "anchor_weight", minimum=0.0)
    inside_eps = check_number(inside_eps, "inside_eps", minimum=0.0)
    max_elements = check_max_elements(max_elements)
    pred_boxes = pred_boxes.detach().to(device=anchors.device, dtype=anchors.dtype)

    candidate_index = select_candidates(gt_boxes, anchors, counts, topk, max_elements=max_elements)
    anchor_ious = candidate_ious(gt_boxes, anchors, candidate_index)
    pred_ious = predicted_ious(gt_boxes, pred_boxes, candidate_index)
    combined = combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight)
    threshold = combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight)
    is_positive = (combined >= threshold[..., None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
    is_positive &= gt_valid[..., None]
    matched_gt, matched_metric = resolve_multiple_matches(candidate_index, combined, is_positive, len(anchors))
    return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


def dynamic_weight(schedule, iteration, max_iterations):
    """The dynamic weights of the paper's Table 3 (specs/dynamic_atss.md §5).

    Args:
        schedule: ``"up"`` (``D_up = iteration / max_iterations``) or ``"down"``
            (``D_down = 1 - iteration / max_iterations``).
        iteration: int in ``0..max_iterations`` (the current iteration, 0-based).
        max_iterations: int >= 1.

    Returns:
        float in [0, 1].

    Raises:
        ValueError: an unknown schedule, a non-int or out-of-range iteration or
            ``max_iterations``.
    """
    if schedule not in DYNAMIC_WEIGHT_SCHEDULES:
        raise ValueError(f"schedule: expected one of {DYNAMIC_WEIGHT_SCHEDULES}, got {schedule!r}")
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, numbers.Integral) or max_iterations < 1:
        raise ValueError(f"max_iterations: expected an int >= 1, got {max_iterations!r}")
    if (
        isinstance(iteration, bool)
        or not isinstance(iteration, numbers.Integral)
        or not 0 <= iteration <= max_iterations
    ):
        raise ValueError(f"iteration: expected an int in 0..{max_iterations}, got {iteration!r}")
    progress = int(iteration) / int(max_iterations)
    return progress if schedule == "up" else 1.0 - progress


# ---------------------------------------------------------------------------------------
# step helpers


def predicted_ious(gt_boxes, pred_boxes, candidate_index):
    """PIoU: IoU between each GT and its candidates' decoded predictions (§2.2).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        pred_boxes: (B, A, 4) xyxy; non-finite rows allowed.
        candidate_index: (B, G, C) int64.

    Returns:
        (B, G, C) in [0, 1]; 0 where the prediction is not finite.
    """
    boxes = gather_boxes(pred_boxes, candidate_index)  # (B, G, C, 4)
    finite = torch.isfinite(boxes).all(dim=-1)
    safe_boxes = torch.where(finite[..., None], boxes, 0.0)  # placeholder rows, zeroed below
    ious = aligned_box_iou_unchecked(gt_boxes[:, :, None, :], safe_boxes)
    return torch.where(finite, ious, 0.0)


def combine_ious(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """CIoU = w_p * PIoU + w_a * AIoU (paper Eq. 1; specs/dynamic_atss.md §2.3).

    Args:
        pred_ious, anchor_ious: (B, G, C).
        pred_weight, anchor_weight: floats >= 0.

    Returns:
        (B, G, C) in [0, w_p + w_a].
    """
    return pred_weight * pred_ious + anchor_weight * anchor_ious


def combined_threshold(pred_ious, anchor_ious, pred_weight, anchor_weight):
    """Sum of the parts' statistics (paper Eqs. 2-4; specs/dynamic_atss.md §2.4).

    ``w_p * (mean(P) + std(P)) + w_a * (mean(A) + std(A))``, each with the ATSS
    ``mean_plus_std_threshold`` (sample std; 0 for a single candidate).

    Args:
        pred_ious, anchor_ious: (B, G, C).
        pred_weight, anchor_weight: floats >= 0.

    Returns:
        (B, G); NaN when C = 0.
    """
    return pred_weight * mean_plus_std_threshold(pred_ious) + anchor_weight * mean_plus_std_threshold(anchor_ious)
