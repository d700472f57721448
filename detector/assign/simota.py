"""SimOTA: YOLOX's simplified optimal-transport assignment (specs/simota.md).

Candidates are the anchors whose centre lies inside some GT box or inside the square of
half-side ``center_radius * stride`` around some GT centre (one set for the image). For
each GT and candidate the cost is ``cls_weight * BCE(scores, one-hot) + iou_weight *
(-log(IoU + 1e-8)) + 1e5 * (not in the GT's box and centre region)``, with the IoU of the
candidate's decoded prediction. Each GT takes its ``k_g = max(1, int(sum of its top-q
IoUs))`` cheapest candidates (ties: lower anchor index); an anchor taken by several GTs goes
to the GT with the lowest cost over **all** GTs (ties: lower GT index), as the published
code does. The soft target of a positive is the IoU of its prediction with its GT.

The predictions come decoded and detached: ``pred_boxes`` are the caller's decoded boxes
(as Dynamic ATSS, specs/dynamic_atss.md §1) and ``pred_scores`` the sigmoid of its
classification logits.

Twin of ``reference/assign/simota.py``; ``assign_simota_batched`` holds the algorithm and
``assign_simota`` runs it on one image. The (G, A) cost matrices are never built: each
image's candidates (found on the anchors' grids, ``assign/centre_windows.py``, without
testing every anchor against every GT) are gathered into a padded (B, N) list, and only
their scores are read (the ``log p`` of a class only where a GT has it, when there are
fewer GT slots than classes); costs are computed for chunks of
GTs against it (at most about ``max_elements`` pairs at once), each chunk keeps only its
GTs' selected anchors (at most C per GT), and the conflict step recomputes the costs of all
GTs at the few anchors selected by several GTs (specs/simota.md §5). Every cost is the same
elementwise arithmetic as the reference's, so chunking never changes a result. The
predictions are detached here; half and bfloat16 predictions are up-cast to float32, then
cast to the dtype of the anchors and GTs.
"""
import math
import numbers

import numpy as np
import torch

from detector.assign.atss import anchor_centers_of
from detector.assign.batching import as_padded_batch, finish_batch, one_image, sequential_sum
from detector.assign.centre_windows import centre_grids, rectangle_mask
from detector.assign.memo import memo, shared_boxes
from detector.assign.result import Assignment
from detector.boxes import _centers, aligned_box_iou_unchecked
from detector.conventions import BACKGROUND, BCE_LOG_MIN, OCTAVE_BASE_SCALE
from detector.validation import (
    as_class_labels,
    as_class_scores,
    as_pred_boxes,
    check_level_counts,
    check_max_elements,
    check_number,
    check_same_device,
)

#: Half-side of the centre region, in strides (YOLOX ``center_radius``).
SIMOTA_CENTER_RADIUS = 2.5
#: How many of a GT's largest IoUs are summed for its dynamic k (YOLOX ``n_candidate_k``).
SIMOTA_CANDIDATE_TOPK = 10
#: Weight of the IoU cost (YOLOX ``3.0``).
SIMOTA_IOU_WEIGHT = 3.0
#: Weight of the classification cost (YOLOX ``1``).
SIMOTA_CLS_WEIGHT = 1.0
#: Cost added to a pair whose anchor centre is not inside both the GT box and its centre
#: region (YOLOX ``100000.0``; mmdetection uses ``1e8``).
SIMOTA_OUTSIDE_COST = 100000.0
#: Added to the IoU inside the log of the IoU cost (YOLOX ``1e-8``; mmdetection ``1e-7``).
SIMOTA_IOU_EPS = 1e-8
#: Default bound on the GT x anchor pairs (B * G_chunk * N) whose costs exist at once; a
#: pair holds about 120 bytes of float64 temporaries, so a chunk takes about 130 MB (1,000 GTs
#: on 22,300 anchors: about 0.5 GB above the inputs, 1.3 s on 2 CPU cores).
DEFAULT_MAX_PAIRS = 2**20


def assign_simota(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    center_radius=SIMOTA_CENTER_RADIUS,
    candidate_topk=SIMOTA_CANDIDATE_TOPK,
    iou_weight=SIMOTA_IOU_WEIGHT,
    cls_weight=SIMOTA_CLS_WEIGHT,
    max_elements=DEFAULT_MAX_PAIRS,
):
    """Assign anchors to GTs with SimOTA (specs/simota.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; an anchor's point is its centre and its stride
            is its width / OCTAVE_BASE_SCALE (§2.1).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (§4).
        gt_labels: (G,) integer classes in 0..K-1.
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions for this image, one
            per anchor (they may require grad: they are detached here). Rows with a NaN or
            Inf are allowed: such a prediction has IoU 0 with every GT. A finite row must
            have x1 <= x2 and y1 <= y2.
        pred_scores: (A, K) predicted class probabilities in [0, 1] (sigmoid of the logits).
        center_radius: half-side of the centre region in strides, a number >= 0.
        candidate_topk: q, how many of a GT's largest IoUs make its dynamic k (int >= 1).
        iou_weight: weight of the IoU cost, >= 0.
        cls_weight: weight of the classification cost, >= 0.
        max_elements: bound on the B * G * N GT-candidate pairs costed at once.

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) the IoU
        of the anchor's prediction with its assigned GT (the soft classification target; 0
        for background); gt_threshold (G,) each GT's dynamic k as a float (NaN when the image
        has no candidate); candidate_index (G, C) int64, C = min(candidate_topk, A): the
        anchors each GT selected (before conflicts) in (cost, anchor index) order, -1
        padded.

    Raises:
        ValueError: bad boxes, labels, scores or level counts, ``pred_boxes`` not (A, 4) real
            numbers or a finite inverted row (named), a bad option (named).
    """
    anchors = shared_boxes(anchors, "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))  # errors name this image's rows
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(torch.as_tensor(gt_boxes)),), pred_scores.shape[-1])
    return one_image(
        assign_simota_batched,
        (anchors, num_anchors_per_level),
        gt_boxes,
        gt_labels,
        pred_boxes,
        pred_scores,
        center_radius=center_radius,
        candidate_topk=candidate_topk,
        iou_weight=iou_weight,
        cls_weight=cls_weight,
        max_elements=max_elements,
    )


@torch.no_grad()
def assign_simota_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    center_radius=SIMOTA_CENTER_RADIUS,
    candidate_topk=SIMOTA_CANDIDATE_TOPK,
    iou_weight=SIMOTA_IOU_WEIGHT,
    cls_weight=SIMOTA_CLS_WEIGHT,
    max_elements=DEFAULT_MAX_PAIRS,
):
    """``assign_simota`` for a batch of images sharing one set of anchors
    (specs/simota.md §2, §5; specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        gt_labels: (B, G_max) integer classes in 0..K-1 (padded slots may hold anything).
        pred_boxes: (B, A, 4) xyxy decoded predictions (detached here; non-finite rows
            allowed, finite rows not inverted).
        pred_scores: (B, A, K) class probabilities in [0, 1] (detached here).
        center_radius, candidate_topk, iou_weight, cls_weight, max_elements: as
            ``assign_simota``.

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) (dynamic k; NaN for padded slots and images without candidates),
        candidate_index (B, G_max, C) int64 (-1 for padded slots and unused slots).
    """
    anchors = shared_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    batch, num_gts, num_anchors = gt_valid.shape[0], gt_valid.shape[1], len(anchors)
    check_same_device(pred_boxes, anchors, "pred_boxes", "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (batch, num_anchors, 4))
    check_same_device(pred_scores, anchors, "pred_scores", "anchors")
    pred_scores = as_class_scores(pred_scores, "pred_scores", (batch, num_anchors))
    check_same_device(gt_labels, anchors, "gt_labels", "anchors")
    gt_labels = as_class_labels(gt_labels, "gt_labels", (batch, num_gts), pred_scores.shape[-1], valid=gt_valid)
    center_radius = check_number(center_radius, "center_radius", minimum=0.0)
    candidate_topk = _check_count(candidate_topk, "candidate_topk")
    iou_weight = check_number(iou_weight, "iou_weight", minimum=0.0)
    cls_weight = check_number(cls_weight, "cls_weight", minimum=0.0)
    max_elements = check_max_elements(max_elements)
    device, dtype = anchors.device, anchors.dtype
    pred_boxes = pred_boxes.detach().to(device=device, dtype=dtype)
    pred_scores = pred_scores.detach().to(device=device, dtype=dtype)
    gt_labels = gt_labels.to(device)
    num_slots = min(candidate_topk, num_anchors)
    options = (center_radius, iou_weight, cls_weight)

    centers = anchor_centers_of(anchors)
    strides = memo(anchors, "prior strides", lambda: prior_strides(anchors))
    candidates, candidate_valid = _candidate_anchors(gt_boxes, gt_valid, anchors, center_radius, max_elements)
    num_candidates = candidates.shape[1]  # N, the most candidates of any image
    has_candidates = candidate_valid.any(dim=1)  # (B,)
    if num_gts == 0 or num_candidates == 0:  # §4.1, §4.2
        return _all_background(batch, num_gts, num_anchors, num_slots, gt_valid, device, dtype)

    priors = _Priors(candidates, centers, strides, pred_boxes, pred_scores, num_gts)
    chunk = max(1, max_elements // (batch * num_candidates))
    padded = not bool(candidate_valid.all())  # images with fewer candidates than N (never with one image)
    ks, chosen_parts = [], []
    for first in range(0, num_gts, chunk):
        rows = slice(first, first + chunk)
        ious, cost = _pair_costs(gt_boxes[:, rows], gt_labels[:, rows], priors, options)  # (B, G_c, N)
        if padded:
            ious = torch.where(candidate_valid[:, None, :], ious, 0.0)  # padded positions: no IoU
            cost = torch.where(candidate_valid[:, None, :], cost, math.inf)  # ... and never chosen
        k = dynamic_k(ious, candidate_topk)
        k = torch.where(gt_valid[:, rows] & has_candidates[:, None], k, 0)
        chosen = lowest_cost(cost, k, num_slots)  # (B, G_c, C) candidate positions
        ks.append(k)
        chosen_parts.append(torch.where(chosen >= 0, candidates.gather(1, chosen.clamp(min=0).flatten(1)).view_as(chosen), -1))
    k = torch.cat(ks, dim=1)
    candidate_index = torch.cat(chosen_parts, dim=1)  # (B, G, C) anchor indices

    matched_gt = _resolve_conflicts(candidate_index, gt_boxes, gt_valid, gt_labels, centers, strides, pred_boxes, pred_scores, options, max_elements)
    matched_metric = _matched_ious(matched_gt, gt_boxes, pred_boxes)  # §3
    threshold = torch.where(has_candidates[:, None], k.to(dtype), math.nan)
    return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated tensors of one floating dtype


def prior_strides(anchors):
    """The stride of each anchor: its width / OCTAVE_BASE_SCALE (specs/simota.md §2.1).

    The ATSS-style anchors are squares of side ``OCTAVE_BASE_SCALE * stride`` (8 x stride),
    so this is the stride of the anchor's level, exactly.

    Args:
        anchors: (A, 4) xyxy.

    Returns:
        (A,).
    """
    return (anchors[..., 2] - anchors[..., 0]) / OCTAVE_BASE_SCALE


def inside_boxes(gt_boxes, points):
    """Whether each point lies strictly inside each GT box (specs/simota.md §2.1).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        points: (N, 2) shared or (B, N, 2) per image, (x, y).

    Returns:
        (B, G, N) bool, ``min(x - x1, y - y1, x2 - x, y2 - y) > 0``. A zero-area GT contains no
        point.
    """
    points = points if points.ndim == 3 else points[None]
    x, y = points[:, None, :, 0], points[:, None, :, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    return torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y)) > 0.0


def inside_centers(gt_boxes, points, strides, center_radius):
    """Whether each point lies strictly inside each GT's centre region (specs/simota.md §2.1).

    The region is the square of half-side ``r = center_radius * stride`` (the point's stride)
    around the GT centre ``(cx, cy)``: ``min(x - (cx - r), y - (cy - r), (cx + r) - x,
    (cy + r) - y) > 0``.

    Args:
        gt_boxes: (B, G, 4) xyxy.
        points: (N, 2) shared or (B, N, 2) per image, (x, y).
        strides: (N,) or (B, N), the stride of each point.
        center_radius: float >= 0.

    Returns:
        (B, G, N) bool. Nothing is inside when ``center_radius = 0``.
    """
    points = points if points.ndim == 3 else points[None]
    strides = strides if strides.ndim == 2 else strides[None]
    x, y = points[:, None, :, 0], points[:, None, :, 1]
    centers = _centers(gt_boxes)
    cx, cy = centers[..., 0, None], centers[..., 1, None]
    radius = (center_radius * strides)[:, None, :]
    left, top = x - (cx - radius), y - (cy - radius)
    right, bottom = (cx + radius) - x, (cy + radius) - y
    return torch.minimum(torch.minimum(left, top), torch.minimum(right, bottom)) > 0.0


def prediction_ious(gt_boxes, pred_boxes):
    """IoU between each GT and each decoded prediction (specs/simota.md §2.2).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        pred_boxes: (B, N, 4) xyxy; non-finite rows allowed.

    Returns:
        (B, G, N) in [0, 1]; 0 where the prediction is not finite.
        The same arithmetic, in the same order, as ``reference.boxes.box_iou``.
    """
    return _masked_ious(gt_boxes, *_finite_boxes(pred_boxes))


def classification_cost(pred_scores, gt_labels):
    """Binary cross-entropy of the scores against each GT's one-hot class, summed over the
    K classes (specs/simota.md §2.3).

    ``-sum_j [y_j log p_j + (1 - y_j) log(1 - p_j)]`` with ``y`` the one-hot of the GT's
    class and each log clamped below at -100 (as torch's BCE; ``log(1 - p)`` is
    ``log1p(-p)``). Computed as ``-((T - log(1 - p_c)) + log p_c)`` with
    ``T = sum_j log(1 - p_j)`` summed left to right over the classes.

    Args:
        pred_scores: (B, N, K) in [0, 1].
        gt_labels: (B, G) int64 in 0..K-1.

    Returns:
        (B, G, N) >= 0.
    """
    return _bce_from_logs(_bce_logs(pred_scores), gt_labels)


def matching_cost(cls_cost, ious, inside, iou_weight, cls_weight):
    """The SimOTA cost of each GT-candidate pair (specs/simota.md §2.3).

    ``cls_weight * cls_cost + iou_weight * (-log(IoU + 1e-8))``, plus 1e5 where the
    candidate is not inside both the GT's box and its centre region.

    Args:
        cls_cost, ious: (B, G, N).
        inside: (B, G, N) bool, inside the GT box and its centre region.
        iou_weight, cls_weight: floats >= 0.

    Returns:
        (B, G, N), finite.
    """
    cost = cls_weight * cls_cost + iou_weight * -_log(ious + SIMOTA_IOU_EPS)
    return cost + torch.where(inside, 0.0, SIMOTA_OUTSIDE_COST)


def dynamic_k(ious, candidate_topk):
    """Each GT's number of positives before conflicts (specs/simota.md §2.4).

    ``k_g = max(1, floor(sum of the q largest IoUs of GT g))``, ``q = min(candidate_topk, N)``;
    the q IoUs are summed in descending order, left to right.
    Padded candidate positions must hold IoU 0: they add exact zeros after an image's own
    IoUs, so an image with fewer than q candidates sums all of them, as the reference.

    Args:
        ious: (B, G, N), N >= 1.
        candidate_topk: int >= 1.

    Returns:
        (B, G) int64 in 1..q.
    """
    count = min(candidate_topk, ious.shape[-1])
    largest = ious.topk(count, dim=-1, largest=True, sorted=True).values
    total = sequential_sum(largest)  # ((v0 + v1) + v2) + ...: one cumsum on CPU
    return total.floor().clamp(min=1).to(torch.int64)


def lowest_cost(cost, k, num_slots):
    """The ``k_g`` cheapest candidates of each GT (specs/simota.md §2.5).

    Candidates are ordered by (cost, candidate position); candidate positions follow the
    anchor index, so among equal costs the lower anchor index comes first.
    Exact on every device: ``torch.topk`` takes one more than needed, rows with a tie across
    the cut are redone with a stable sort, and the kept ones are put in (cost, position)
    order explicitly.

    Args:
        cost: (B, G, N).
        k: (B, G) int64 with ``k_g <= min(num_slots, N)``.
        num_slots: C, the width of the result.

    Returns:
        (B, G, C) int64 candidate positions, the first ``k_g`` of each row in that order, -1
        after them.
    """
    count = min(num_slots, cost.shape[-1])
    if count < cost.shape[-1]:
        values, index = cost.topk(count + 1, dim=-1, largest=False, sorted=True)
        tied = values[..., count - 1] == values[..., count]
        values, index = values[..., :count], index[..., :count]
        rows = tied.nonzero(as_tuple=True)
        if rows[0].numel():
            exact = torch.sort(cost[rows], dim=-1, stable=True)
            values[rows], index[rows] = exact.values[:, :count], exact.indices[:, :count]
    else:
        values, index = cost, torch.arange(count, device=cost.device).expand_as(cost)
    index, order = index.sort(dim=-1)  # the kept positions by position, then stably by cost
    order = values.gather(-1, order).sort(dim=-1, stable=True).indices
    index = index.gather(-1, order)
    slot = torch.arange(count, device=cost.device)
    index = torch.where(slot < k[..., None], index, -1)
    if count < num_slots:
        index = torch.cat([index, index.new_full((*index.shape[:-1], num_slots - count), -1)], dim=-1)
    return index


def _resolve_conflicts(candidate_index, gt_boxes, gt_valid, gt_labels, centers, strides, pred_boxes, pred_scores, options, max_elements):
    """Give each anchor to at most one GT (specs/simota.md §2.6, §5).

    An anchor chosen by exactly one GT goes to it; one chosen by several GTs goes to the GT
    with the lowest cost among **all** (valid) GTs, among equal costs to the lower GT index.
    Only the contested anchors (at most C * G / 2 per image) are costed again, for every GT,
    in chunks of GTs: a running minimum that a later chunk replaces only when strictly
    lower, and within a chunk the lowest index reaching the minimum.

    Args:
        candidate_index: (B, G, C) int64 anchors chosen by each GT, -1 padded.
        gt_boxes, gt_valid, gt_labels: the padded GTs (B, G, ...).
        centers, strides: (A, 2), (A,) of the anchors.
        pred_boxes, pred_scores: (B, A, 4), (B, A, K).
        options: (center_radius, iou_weight, cls_weight).
        max_elements: bound on the B * G * M pairs costed at once.

    Returns:
        (B, A) int64, the owning GT of each anchor or BACKGROUND (-1).
    """
    batch, num_gts = gt_valid.shape
    num_anchors, device = centers.shape[0], centers.device
    chosen = candidate_index >= 0
    flat = (candidate_index + torch.arange(batch, device=device)[:, None, None] * num_anchors)[chosen]
    gt_index = torch.arange(num_gts, device=device)[None, :, None].expand_as(candidate_index)[chosen]
    count = torch.zeros(batch * num_anchors, dtype=torch.int64, device=device).index_add_(0, flat, torch.ones_like(flat))
    owner = torch.full((batch * num_anchors,), BACKGROUND, dtype=torch.int64, device=device)
    owner.scatter_reduce_(0, flat, gt_index, reduce="amax")  # the single chooser where count == 1
    owner = owner.view(batch, num_anchors)
    contested = (count >= 2).view(batch, num_anchors)
    if not bool(contested.any()):
        return owner
    anchors_index, anchors_valid = _padded_rows(contested)  # (B, M)
    priors = _Priors(anchors_index, centers, strides, pred_boxes, pred_scores, num_gts)
    best_cost = torch.full(anchors_index.shape, math.inf, dtype=centers.dtype, device=device)
    best_gt = torch.full(anchors_index.shape, BACKGROUND, dtype=torch.int64, device=device)
    chunk = max(1, max_elements // (batch * anchors_index.shape[1]))
    for first in range(0, num_gts, chunk):
        rows = slice(first, first + chunk)
        _, cost = _pair_costs(gt_boxes[:, rows], gt_labels[:, rows], priors, options)  # (B, G_c, M)
        cost = torch.where(gt_valid[:, rows, None], cost, math.inf)
        chunk_min = cost.amin(dim=1)  # (B, M)
        local = torch.arange(cost.shape[1], device=device)[None, :, None]
        chunk_gt = torch.where(cost == chunk_min[:, None, :], local, cost.shape[1]).amin(dim=1) + first
        better = chunk_min < best_cost  # strict: an equal cost keeps the lower GT index
        best_cost = torch.where(better, chunk_min, best_cost)
        best_gt = torch.where(better, chunk_gt, best_gt)
    batch_index = torch.arange(batch, device=device)[:, None].expand_as(anchors_index)
    owner[batch_index[anchors_valid], anchors_index[anchors_valid]] = best_gt[anchors_valid]
    return owner


def _check_count(value, name):
    """``value`` must be an int >= 1 (bools are rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    return int(value)


# ---------------------------------------------------------------------------------------
# detector only


class _Priors:
    """The gathered per-image data of a padded list of anchors (B, N): centres, strides,
    decoded predictions and the logs of their scores (``_bce_logs``; ``num_gts``, the GT slots
    they will be costed against, decides whether every ``log p`` is taken at once)."""

    def __init__(self, index, centers, strides, pred_boxes, pred_scores, num_gts):
        batch, width = index.shape
        flat = (index + torch.arange(batch, device=index.device)[:, None] * pred_boxes.shape[1]).reshape(-1)  # b * A + a
        self.points = centers.index_select(0, index.reshape(-1)).view(batch, width, 2)
        self.strides = strides.index_select(0, index.reshape(-1)).view(batch, width)
        boxes = pred_boxes.reshape(-1, 4).index_select(0, flat).view(batch, width, 4)
        self.finite_boxes = _finite_boxes(boxes)  # (B, N, 4) and (B, N), once
        scores = pred_scores.reshape(-1, pred_scores.shape[-1]).index_select(0, flat).view(batch, width, -1)
        self.bce_logs = _bce_logs(scores, num_gts)  # the scores' logs, once


def _pair_costs(gt_boxes, gt_labels, priors, options):
    """IoUs and costs of GTs (B, G_c) against gathered anchors (B, N): (B, G_c, N) each."""
    center_radius, iou_weight, cls_weight = options
    inside = inside_boxes(gt_boxes, priors.points) & inside_centers(gt_boxes, priors.points, priors.strides, center_radius)
    ious = _masked_ious(gt_boxes, *priors.finite_boxes)  # = prediction_ious(gt_boxes, pred_boxes)
    cls_cost = _bce_from_logs(priors.bce_logs, gt_labels)  # = classification_cost(scores, gt_labels)
    return ious, matching_cost(cls_cost, ious, inside, iou_weight, cls_weight)


def _finite_boxes(pred_boxes):
    """(B, N, 4) predictions -> the boxes with non-finite rows zeroed (placeholders) and the
    (B, N) mask of finite rows."""
    finite = torch.isfinite(pred_boxes).all(dim=-1)
    return torch.where(finite[..., None], pred_boxes, 0.0), finite


def _masked_ious(gt_boxes, safe_boxes, finite):
    """``prediction_ious`` from ``_finite_boxes``: (B, G, N), 0 where the prediction is not finite."""
    ious = aligned_box_iou_unchecked(gt_boxes[:, :, None, :], safe_boxes[:, None, :, :])
    return torch.where(finite[:, None, :], ious, 0.0)


def _bce_logs(pred_scores, num_gts):
    """The per-anchor parts of ``classification_cost``: (B, N, K) clamped ``log(1 - p)``, its
    (B, N) total ``T = sum_j log(1 - p_j)`` (left to right), and the clamped ``log p``: of
    every class when there are at least K GT slots, else None (``_bce_from_logs`` then takes
    the log of the few scores it reads, the same values)."""
    log_pos = _log(pred_scores).clamp_(min=BCE_LOG_MIN) if num_gts >= pred_scores.shape[-1] else None
    log_neg = _log1p(-pred_scores).clamp_(min=BCE_LOG_MIN)
    return pred_scores, log_pos, log_neg, sequential_sum(log_neg)


def _bce_from_logs(logs, gt_labels):
    """``classification_cost`` from ``_bce_logs``: (B, G) labels -> (B, G, N)."""
    scores, log_pos, log_neg, total = logs
    index = gt_labels[:, None, :].expand(-1, log_neg.shape[1], -1)  # (B, N, G)
    neg = log_neg.gather(2, index).transpose(1, 2)  # (B, G, N)
    if log_pos is None:
        pos = _log(scores.gather(2, index)).clamp_(min=BCE_LOG_MIN).transpose(1, 2)
    else:
        pos = log_pos.gather(2, index).transpose(1, 2)
    return -((total[:, None, :] - neg) + pos)


def _candidate_anchors(gt_boxes, gt_valid, anchors, center_radius, max_elements):
    """Each image's candidates (§2.1): anchors inside some valid GT's box or centre region.

    On the anchors' grids (``centre_windows``), the candidates are the anchors of two
    windows per GT and grid: its box, and its centre square with the grid's stride. Both
    tests are
    strict comparisons with 0 of differences computed as ``inside_boxes`` and
    ``inside_centers`` compute them, which the windows reproduce exactly
    (``centre_windows.rectangle_mask``). Otherwise every anchor is tested, GTs in chunks of
    at most about ``max_elements`` (B * G_c * A) pairs.

    Returns:
        index: (B, N) int64 anchor indices, ascending within an image, padded with 0;
        valid: (B, N) bool, which positions are real; N the most candidates of any image.
    """
    batch, num_gts = gt_valid.shape
    num_anchors = anchors.shape[0]
    grids = centre_grids(anchors)
    if grids is not None:  # every GT at once: O(1) work per GT and grid, O(B * A) in all
        boxes = gt_boxes.reshape(-1, 4)
        cx, cy = _centers(boxes).unbind(dim=1)  # (S,) each
        radius = (center_radius * grids.strides)[:, None]  # (L, 1)
        squares = torch.stack([cx - radius, cy - radius, cx + radius, cy + radius], dim=-1)  # (L, S, 4)
        rectangles = torch.cat([boxes.expand(grids.num_levels, -1, -1), squares], dim=1)  # the boxes, then the squares
        image = torch.arange(batch, device=anchors.device).repeat_interleave(num_gts).repeat(2)
        return _padded_rows(rectangle_mask(grids, rectangles, gt_valid.reshape(-1).repeat(2), image, batch))
    centers = anchor_centers_of(anchors)
    strides = memo(anchors, "prior strides", lambda: prior_strides(anchors))
    mask = torch.zeros((batch, num_anchors), dtype=torch.bool, device=anchors.device)
    chunk = max(1, max_elements // max(1, batch * num_anchors))
    for first in range(0, num_gts, chunk):
        boxes = gt_boxes[:, first : first + chunk]
        either = inside_boxes(boxes, centers) | inside_centers(boxes, centers, strides, center_radius)
        mask |= (either & gt_valid[:, first : first + chunk, None]).any(dim=1)
    return _padded_rows(mask)


def _padded_rows(mask):
    """(B, A) bool -> the True columns of each row, ascending: index (B, N) int64 padded with
    0 and valid (B, N) bool, N the most True values of any row."""
    if mask.shape[0] == 1:  # one row: no padding
        index = torch.nonzero(mask[0]).reshape(1, -1)
        return index, torch.ones(index.shape, dtype=torch.bool, device=mask.device)
    row, column = torch.nonzero(mask, as_tuple=True)  # row-major: ascending columns in a row
    counts = mask.sum(dim=1)
    width = int(counts.max()) if mask.shape[0] else 0
    position = torch.arange(row.shape[0], device=mask.device) - (counts.cumsum(0) - counts).index_select(0, row)
    index = torch.zeros((mask.shape[0], width), dtype=torch.int64, device=mask.device)
    index[row, position] = column
    valid = torch.arange(width, device=mask.device)[None, :] < counts[:, None]
    return index, valid


def _matched_ious(matched_gt, gt_boxes, pred_boxes):
    """IoU of each positive anchor's prediction with its assigned GT (§3): (B, A), 0 for
    background and for non-finite predictions; computed at the positives only."""
    batch, num_anchors = matched_gt.shape
    positive = torch.nonzero(matched_gt.reshape(-1) >= 0).squeeze(1)  # flat b * A + a
    boxes = pred_boxes.reshape(-1, 4).index_select(0, positive)
    slot = torch.div(positive, num_anchors, rounding_mode="floor") * gt_boxes.shape[1] + matched_gt.reshape(-1).index_select(0, positive)
    ious = aligned_box_iou_unchecked(gt_boxes.reshape(-1, 4).index_select(0, slot), boxes)
    ious = torch.where(torch.isfinite(boxes).all(dim=-1), ious, 0.0)
    out = torch.zeros(batch * num_anchors, dtype=pred_boxes.dtype, device=pred_boxes.device)
    return out.index_copy_(0, positive, ious).view(batch, num_anchors)


def _all_background(batch, num_gts, num_anchors, num_slots, gt_valid, device, dtype):
    """The batched result when no image has a candidate (or there is no GT slot)."""
    return Assignment(
        matched_gt=torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=device),
        matched_metric=torch.zeros((batch, num_anchors), dtype=dtype, device=device),
        gt_threshold=torch.full((batch, num_gts), math.nan, dtype=dtype, device=device),
        candidate_index=torch.full((batch, num_gts, num_slots), -1, dtype=torch.int64, device=device),
    )


def _log(values):
    """Natural log, correctly matching NumPy's on CPU.

    torch's CPU ``log`` kernel and NumPy's round differently in the last ulp for a small
    fraction of float64 inputs, which would make float64 costs differ from the reference's;
    on CPU we compute through NumPy (as ``atss._ieee_sqrt`` does for ``sqrt``).
    """
    if values.device.type != "cpu":
        return values.log()
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log(values.contiguous().numpy()))


def _log1p(values):
    """``log(1 + x)``, matching NumPy's on CPU (see ``_log``)."""
    if values.device.type != "cpu":
        return values.log1p()
    with np.errstate(divide="ignore"):
        return torch.from_numpy(np.log1p(values.contiguous().numpy()))
