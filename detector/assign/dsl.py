"""Dynamic soft-label assignment (DSL) of RTMDet (specs/dsl.md).

A prior (an anchor, located at its centre, with stride = anchor side / 8) is *valid* when
its centre lies strictly inside some GT; only valid priors can be positive. Every (GT,
valid prior) pair gets the cost of mmdetection's ``DynamicSoftLabelAssigner``:

    cost = soft classification cost + iou_weight * -log(IoU + 1e-7) + 10 ** (d / s - radius)

with IoU between the prior's decoded prediction and the GT, ``d`` the Euclidean distance
between the prior centre and the GT centre and ``s`` the prior's stride. Each GT takes its
``k_g = max(1, floor(sum of its topk largest IoUs))`` lowest-cost valid priors; a prior
taken by several GTs goes to the GT of lowest cost among **all** GTs (lower GT index on
ties), as mmdetection does. The soft target (``matched_metric``) of a positive is the IoU
between its prediction and its GT.

The predictions come decoded and detached (``pred_boxes``) with the class probabilities
(``pred_scores``, the sigmoid of the classification logits): the assigner decodes nothing.

Twin of ``reference/assign/dsl.py``; ``assign_dsl_batched`` holds the algorithm and
``assign_dsl`` runs it on one image, as in ``assign/atss.py``. Each image's valid priors
(found on the anchors' grids, ``assign/centre_windows.py``, without testing every anchor
against every GT) are packed to the front of a (B, V_max) index (anchor order kept, so a
lower position is a lower anchor index); the (B, G, V_max) costs are computed for chunks
of GTs of at most ``max_pairs`` pairs, each GT's selection and the per-prior lowest-cost
GT are kept across chunks, and the conflicts are resolved on the selected pairs: the
result does not depend on ``max_pairs``. The predictions are detached here; half and
bfloat16 predictions are up-cast to float32, then cast to the dtype of the anchors and
GTs.
"""
import math
import numbers

import torch

from detector.assign.atss import anchor_centers_of
from detector.assign.batching import as_padded_batch, finish_batch, one_image, sequential_sum
from detector.assign.centre_windows import centre_grids, rectangle_mask
from detector.assign.memo import memo, shared_boxes
from detector.assign.nearest import _exact_topk
from detector.boxes import _centers, aligned_box_iou_unchecked
from detector.conventions import BACKGROUND, BCE_LOG_MIN, OCTAVE_BASE_SCALE
from detector.validation import (
    as_class_labels,
    as_class_scores,
    as_boxes,
    as_pred_boxes,
    check_level_counts,
    check_number,
    check_same_device,
    check_topk,
)

#: Default number of largest IoUs summed into a GT's dynamic k (mmdetection ``topk``).
DSL_TOPK = 13
#: Default soft centre radius ``beta`` of the centre prior ``10 ** (d / s - beta)``
#: (mmdetection ``soft_center_radius``; the paper's beta = 3).
DSL_SOFT_CENTER_RADIUS = 3.0
#: Default weight of the IoU cost (mmdetection ``iou_weight``; the paper's lambda = 3).
DSL_IOU_WEIGHT = 3.0
#: Base ``alpha`` of the soft centre prior (paper and mmdetection: 10).
DSL_CENTER_BASE = 10.0
#: The eps inside the IoU cost ``-log(IoU + eps)`` (mmdetection ``EPS``).
DSL_IOU_EPS = 1e-7
#: Default bound on the (GT, valid prior) pairs whose costs exist at once (B * G_chunk *
#: V_max); about 100 bytes each at the peak in float64.
DEFAULT_MAX_PAIRS = 2**23


def assign_dsl(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    topk=DSL_TOPK,
    soft_center_radius=DSL_SOFT_CENTER_RADIUS,
    iou_weight=DSL_IOU_WEIGHT,
):
    """Assign anchors to GTs with RTMDet's dynamic soft-label assigner (specs/dsl.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; each anchor is a prior located at its centre with
            stride ``(x2 - x1) / 8`` (the ATSS-style square anchors of side 8 x stride).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they contain no prior centre).
        gt_labels: (G,) integers in 0..K-1.
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions for this image, one
            per anchor (they may require grad: they are detached here).
            Rows with a NaN or Inf are allowed: such a prediction has IoU 0 with every GT
            (§2.2). A finite row must have x1 <= x2 and y1 <= y2.
        pred_scores: (A, K) class probabilities in [0, 1] (sigmoid of the logits), K >= 1
            (they may require grad: they are detached here).
        topk: number of largest IoUs summed into the dynamic k of a GT (int >= 1).
        soft_center_radius: ``beta`` of the soft centre prior ``10 ** (d / s - beta)``.
        iou_weight: weight (>= 0) of the IoU cost ``-log(IoU + 1e-7)``.

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1} (DSL never ignores);
        matched_metric (A,) the soft target: IoU of the prediction with the assigned GT
        (0 for background), in [0, 1]; gt_threshold (G,) NaN (DSL has no threshold);
        candidate_index (G, C) int64, C = min(topk, A): each GT's k_g selected priors in
        (cost, anchor index) order, padded with -1. The memory bound is the default
        ``max_pairs`` of ``assign_dsl_batched``.

    Raises:
        ValueError: bad boxes or level counts, an anchor of zero width, ``pred_boxes`` not
            (A, 4) real numbers or a finite inverted row, ``pred_scores`` not (A, K)
            probabilities, a label outside 0..K-1, a bad option (all named).
    """
    anchors = shared_boxes(anchors, "anchors")
    for values, name in ((gt_boxes, "gt_boxes"), (gt_labels, "gt_labels"), (pred_boxes, "pred_boxes"), (pred_scores, "pred_scores")):
        check_same_device(values, anchors, name, "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))  # errors name this image's rows
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(gt_boxes),), pred_scores.shape[-1])
    return one_image(
        assign_dsl_batched,
        (anchors, num_anchors_per_level),
        gt_boxes,
        gt_labels,
        pred_boxes,
        pred_scores,
        topk=topk,
        soft_center_radius=soft_center_radius,
        iou_weight=iou_weight,
    )


@torch.no_grad()
def assign_dsl_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    gt_labels,
    pred_boxes,
    pred_scores,
    *,
    topk=DSL_TOPK,
    soft_center_radius=DSL_SOFT_CENTER_RADIUS,
    iou_weight=DSL_IOU_WEIGHT,
    max_pairs=DEFAULT_MAX_PAIRS,
):
    """``assign_dsl`` for a batch of images sharing one set of anchors (specs/dsl.md §2;
    specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        gt_labels: (B, G_max) integers, in 0..K-1 where ``gt_valid``; padded slots may
            hold anything.
        pred_boxes: (B, A, 4) xyxy decoded predictions (detached here; non-finite rows
            allowed, finite rows not inverted).
        pred_scores: (B, A, K) class probabilities in [0, 1] (detached here).
        topk, soft_center_radius, iou_weight: as ``assign_dsl``.
        max_pairs: bound (int >= 1) on the B * G_chunk * V_max (GT, valid prior) pairs
            whose costs exist at once (GTs are chunked above it; the result does not depend
            on it).

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) NaN, candidate_index (B, G_max, C) int64 (-1 for padded slots).
    """
    anchors = shared_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    batch, num_gts = gt_valid.shape
    num_anchors = len(anchors)
    check_same_device(pred_boxes, anchors, "pred_boxes", "anchors")
    check_same_device(pred_scores, anchors, "pred_scores", "anchors")
    check_same_device(gt_labels, anchors, "gt_labels", "anchors")
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (batch, num_anchors, 4))
    pred_scores = as_class_scores(pred_scores, "pred_scores", (batch, num_anchors))
    gt_labels = as_class_labels(gt_labels, "gt_labels", tuple(gt_valid.shape), pred_scores.shape[-1], valid=gt_valid)
    topk = check_topk(topk)
    soft_center_radius = check_number(soft_center_radius, "soft_center_radius")
    iou_weight = check_number(iou_weight, "iou_weight", minimum=0.0)
    max_pairs = _check_max_pairs(max_pairs)
    pred_boxes = pred_boxes.detach().to(device=anchors.device, dtype=anchors.dtype)
    pred_scores = pred_scores.detach().to(device=anchors.device, dtype=anchors.dtype)
    strides = memo(anchors, "anchor strides", lambda: anchor_strides(anchors))  # raises at every call for a bad anchor
    num_candidates = min(topk, num_anchors)
    device = anchors.device

    valid = _valid_priors_of(gt_boxes, gt_valid, anchors, max_pairs)  # valid_priors, on the grids
    # pack each image's valid priors to the front, in anchor order
    num_valid = valid.sum(dim=1)  # (B,)
    width = int(num_valid.max()) if batch else 0
    order = _packed_order(valid, width)  # (B, V) anchor indices
    real = torch.arange(width, device=device) < num_valid[:, None]  # (B, V) valid priors, padding after them
    boxes = _gather_rows(pred_boxes, order)  # (B, V, 4)
    scores = _gather_rows(pred_scores, order)  # (B, V, K)
    centers = anchor_centers_of(anchors).index_select(0, order.reshape(-1)).view(batch, width, 2)  # (B, V, 2)
    prior_strides = strides.index_select(0, order.reshape(-1)).view(batch, width)  # (B, V)
    negative = negative_costs(scores)

    positions = torch.full((batch, num_gts, num_candidates), -1, dtype=torch.int64, device=device)
    best_cost = torch.full((batch, width), math.nan, dtype=anchors.dtype, device=device)
    best_gt = torch.full((batch, width), num_gts, dtype=torch.int64, device=device)
    padded = not bool(real.all())  # images with fewer valid priors than V (never with one image)
    for first, last in _chunks(num_gts if width else 0, max_pairs // max(1, batch * width)):
        chunk_valid = gt_valid[:, first:last]
        ious = predicted_ious(gt_boxes[:, first:last], boxes)  # (B, g, V)
        if padded:
            ious = torch.where(real[:, None, :], ious, 0.0)
        cls_cost = soft_classification_cost(ious, scores, negative, gt_labels[:, first:last])
        center_prior = soft_center_prior(gt_boxes[:, first:last], centers, prior_strides, soft_center_radius)
        cost = cls_cost + iou_cost(ious, iou_weight) + center_prior  # (B, g, V)
        del cls_cost, center_prior
        if padded:
            cost = torch.where(real[:, None, :], cost, math.inf)  # padding after every valid prior
        ks = torch.where(chunk_valid & (num_valid[:, None] > 0), dynamic_ks(ious, topk), 0)
        positions[:, first:last] = select_lowest_costs(cost, ks, num_candidates)
        _keep_lowest(best_cost, best_gt, cost, chunk_valid, first)
    matched = resolve_conflicts(positions, best_gt, width)  # (B, V)

    matched_gt = torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=device)
    matched_gt.scatter_(1, order, matched)  # distinct anchors per row; padding is never matched
    matched_metric = torch.zeros((batch, num_anchors), dtype=anchors.dtype, device=device)
    matched_metric.scatter_(1, order, _matched_ious(gt_boxes, boxes, matched))
    candidate_index = positions  # all -1 when no image has a valid prior
    if width:
        candidate_index = torch.where(positions >= 0, order.gather(1, positions.clamp(min=0).flatten(1)).view_as(positions), -1)
    threshold = torch.full((batch, num_gts), math.nan, dtype=anchors.dtype, device=device)
    return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated tensors of one floating dtype on one device


def anchor_strides(anchors):
    """The stride of each prior: its anchor side over 8 (specs/dsl.md §2.1).

    Args:
        anchors: (A, 4) xyxy (square anchors of side 8 x stride; the width is used).

    Returns:
        (A,) > 0.

    Raises:
        ValueError: an anchor of zero width (names the first).
    """
    strides = (anchors[:, 2] - anchors[:, 0]) / OCTAVE_BASE_SCALE
    if not bool((strides > 0).all()):
        row = int(torch.nonzero(~(strides > 0))[0])
        raise ValueError(f"anchors: row {row} has zero width, so no stride: {anchors[row].tolist()}")
    return strides


def valid_priors(gt_boxes, anchors):
    """Whether each anchor centre lies strictly inside at least one GT (specs/dsl.md §2.1).

    Inside means ``min(x - x1, y - y1, x2 - x, y2 - y) > 0`` (mmdetection ``is_in_gts``);
    a zero-width or zero-height GT (hence a zeroed padded slot) contains no centre.

    Args:
        gt_boxes: (B, G, 4) xyxy.
        anchors: (A, 4) xyxy.

    Returns:
        (B, A) bool.
    """
    centers = _centers(anchors)
    x, y = centers[:, 0], centers[:, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))  # (B, G, 1) each
    margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))  # (B, G, A)
    return (margin > 0).any(dim=1)


def predicted_ious(gt_boxes, pred_boxes):
    """IoU between each GT and each prior's decoded prediction (specs/dsl.md §2.2).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        pred_boxes: (B, V, 4) xyxy; non-finite rows allowed.

    Returns:
        (B, G, V) in [0, 1] (specs/boxes.md §2); 0 where the prediction is not finite.
    """
    finite = torch.isfinite(pred_boxes).all(dim=-1)
    safe_boxes = torch.where(finite[..., None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    return torch.where(finite[:, None, :], aligned_box_iou_unchecked(gt_boxes[:, :, None, :], safe_boxes[:, None, :, :]), 0.0)


def binary_cross_entropy(probabilities, targets):
    """Elementwise binary cross-entropy of probabilities (specs/dsl.md §2.3).

    ``(t - 1) * max(log(1 - p), -100) - t * max(log(p), -100)``: the formula and clamp of
    torch's ``binary_cross_entropy``, finite for p in [0, 1].

    Args:
        probabilities, targets: broadcastable tensors (or a float target) in [0, 1].

    Returns:
        the losses, >= 0.
    """
    log_p = torch.log(probabilities).clamp(min=BCE_LOG_MIN)
    log_not_p = torch.log(1.0 - probabilities).clamp(min=BCE_LOG_MIN)
    return (targets - 1.0) * log_not_p - targets * log_p


def negative_costs(pred_scores):
    """Each prior's classification cost of every class taken as a negative (specs/dsl.md §2.3).

    ``n[v, j] = BCE(p_vj, 0) * (0 - p_vj) ** 2``: the term of class ``j`` in the soft
    classification cost of every GT whose class is not ``j``.
    Computed as ``(0 - L) * (p * p)`` with ``L = max(log(1 - p), -100)``, the same value to
    the bit: with the target 0, ``binary_cross_entropy`` is ``(0 - 1) * L - 0 * max(log p,
    -100)``, and ``0 * max(log p, -100)`` is a zero (the clamped log is finite), so it is
    ``-L`` (``+0`` when ``L = 0``), which is ``0 - L``; and ``(0 - p) ** 2 = p * p`` exactly. The
    ``log p`` of every score is not needed.

    Args:
        pred_scores: (B, V, K) probabilities.

    Returns:
        (B, V, K) >= 0.
    """
    log_not_p = torch.log(1.0 - pred_scores).clamp_(min=BCE_LOG_MIN)  # a new tensor: clamped in place
    return (0.0 - log_not_p) * (pred_scores * pred_scores)


def soft_classification_cost(ious, pred_scores, negative_costs, gt_labels):
    """Soft classification cost of each (GT, prior) pair (specs/dsl.md §2.3).

    With the soft label ``y = one_hot(c_g) * IoU``, mmdetection's cost is
    ``sum_j BCE(p_j, y_j) * (y_j - p_j) ** 2``. Only the GT's class has a non-zero label,
    so it is computed as ``sum_j n[v, j] - n[v, c_g] + BCE(p_c, IoU) * (IoU - p_c) ** 2``
    (``n`` from ``negative_costs``), without a (B, G, V, K) tensor.

    Args:
        ious: (B, G, V), IoU of each prior's prediction with each GT.
        pred_scores: (B, V, K) probabilities.
        negative_costs: (B, V, K), ``negative_costs(pred_scores)``.
        gt_labels: (B, G) int64 in 0..K-1.

    Returns:
        (B, G, V) >= 0 (up to rounding).
    """
    negative_total = negative_costs.sum(dim=-1)  # (B, V)
    batch_index = torch.arange(len(gt_labels), device=gt_labels.device)[:, None]
    scores = pred_scores[batch_index, :, gt_labels]  # (B, G, V): p of each GT's class
    scale = ious - scores
    positive = binary_cross_entropy(scores, ious) * (scale * scale)
    return (negative_total[:, None, :] - negative_costs[batch_index, :, gt_labels]) + positive


def iou_cost(ious, iou_weight):
    """``-log(IoU + 1e-7) * iou_weight`` (specs/dsl.md §2.4).

    Args:
        ious: (B, G, V) in [0, 1].
        iou_weight: float >= 0.

    Returns:
        (B, G, V) in [-1e-7, 16.12] * iou_weight (slightly negative at IoU 1).
    """
    return -torch.log(ious + DSL_IOU_EPS) * iou_weight


def soft_center_prior(gt_boxes, prior_centers, prior_strides, soft_center_radius):
    """``10 ** (d / s - soft_center_radius)`` (specs/dsl.md §2.5).

    ``d = sqrt(dx * dx + dy * dy)`` is the Euclidean distance between the prior centre and
    the GT centre, ``s`` the prior's stride (mmdetection's form of the paper's Eq. 3).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        prior_centers: (B, V, 2) (x, y).
        prior_strides: (B, V) > 0.
        soft_center_radius: float.

    Returns:
        (B, G, V) > 0 (+inf where float32 overflows, beyond about 41 strides).
    """
    gt_centers = _centers(gt_boxes)
    dx = prior_centers[:, None, :, 0] - gt_centers[:, :, None, 0]
    dy = prior_centers[:, None, :, 1] - gt_centers[:, :, None, 1]
    distance = torch.sqrt(dx * dx + dy * dy) / prior_strides[:, None, :]
    return torch.pow(DSL_CENTER_BASE, distance - soft_center_radius)


def dynamic_ks(ious, topk):
    """Dynamic k of each GT: ``max(1, floor(sum of its min(topk, V) largest IoUs))``
    (specs/dsl.md §2.6).

    The IoUs are summed one by one from the largest down, so the sum is reproducible.

    Args:
        ious: (B, G, V) in [0, 1], V >= 1 priors (padded priors with IoU 0 add nothing).
        topk: int >= 1.

    Returns:
        (B, G) int64 in 1..min(topk, V).
    """
    largest = ious.topk(min(topk, ious.shape[-1]), dim=-1, largest=True, sorted=True).values
    total = sequential_sum(largest)  # ((v0 + v1) + v2) + ...: one cumsum on CPU
    return torch.floor(total).clamp(min=1.0).to(torch.int64)


def select_lowest_costs(cost, ks, num_candidates):
    """Each GT's ``k_g`` lowest-cost priors (specs/dsl.md §2.7).

    Ordered by (cost, prior position): among equal costs the lower position (the lower
    anchor index) comes first (specs/conventions.md §5.1). ``_exact_topk`` finds the
    ``min(num_candidates, V)`` lowest exactly at the cut; a stable sort of them, taken in
    position order, orders ties inside.

    Args:
        cost: (B, G, V).
        ks: (B, G) int64, each <= min(num_candidates, V) (0 selects nothing).
        num_candidates: C, the width of the result.

    Returns:
        (B, G, C) int64 positions into the V priors, the first ``k_g`` of row g used, the
        rest -1.
    """
    count = min(num_candidates, cost.shape[-1])
    positions = torch.full((*cost.shape[:-1], num_candidates), -1, dtype=torch.int64, device=cost.device)
    if count == 0:
        return positions
    _, index = _exact_topk(cost, count)
    index = index.sort(dim=-1).values  # position order, then a stable sort by cost
    index = index.gather(-1, cost.gather(-1, index).sort(dim=-1, stable=True).indices)
    taken = torch.arange(count, device=cost.device) < ks[..., None]
    positions[..., :count] = torch.where(taken, index, -1)
    return positions


def lowest_cost_gts(cost):
    """The GT of lowest cost for each prior, among all GTs (specs/dsl.md §2.8).

    Among equal costs the lower GT index wins (specs/conventions.md §5.2). Rows of NaN
    (padded GT slots) never win.

    Args:
        cost: (B, G, V).

    Returns:
        (B, V) int64 in 0..G-1; G where every row is NaN.
    """
    lowest = torch.where(torch.isnan(cost), math.inf, cost).amin(dim=1, keepdim=True)  # (B, 1, V)
    gt_index = torch.arange(cost.shape[1], device=cost.device)[None, :, None]
    return torch.where(cost == lowest, gt_index, cost.shape[1]).amin(dim=1)


def resolve_conflicts(positions, lowest_gt, num_priors):
    """The GT of each prior after every GT took its priors (specs/dsl.md §2.8).

    A prior taken by no GT is background; by one GT, it goes to that GT; by several GTs,
    it goes to ``lowest_gt`` (the lowest cost among **all** GTs, which may be a GT that
    did not take it), as mmdetection's ``dynamic_k_matching`` does.

    Args:
        positions: (B, G, C) int64, each GT's selected priors (``select_lowest_costs``), -1
            padded.
        lowest_gt: (B, V) int64, the lowest-cost GT of each prior (``lowest_cost_gts`` over
            all GT chunks).
        num_priors: V.

    Returns:
        (B, V) int64 in {BACKGROUND, 0..G-1}.
    """
    batch, num_gts = positions.shape[:2]
    target = torch.where(positions >= 0, positions, num_priors).flatten(1)  # -1 -> a spare column
    claims = torch.zeros((batch, num_priors + 1), dtype=torch.int64, device=positions.device)
    claims.scatter_add_(1, target, torch.ones_like(target))
    gt_index = torch.arange(num_gts, device=positions.device)[None, :, None].expand_as(positions).flatten(1)
    claimant = torch.full((batch, num_priors + 1), BACKGROUND, dtype=torch.int64, device=positions.device)
    claimant.scatter_reduce_(1, target, gt_index, reduce="amax")  # one claimant: its index
    spare = torch.full((batch, 1), BACKGROUND, dtype=torch.int64, device=positions.device)
    return torch.where(claims > 1, torch.cat([lowest_gt, spare], dim=1), claimant)[:, :num_priors]


# ---------------------------------------------------------------------------------------
# detector only


def _check_max_pairs(max_pairs):
    """``max_pairs`` (the memory bound of ``assign_dsl_batched``) must be an int >= 1."""
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, numbers.Integral) or max_pairs < 1:
        raise ValueError(f"max_pairs: expected an int >= 1, got {max_pairs!r}")
    return int(max_pairs)


def _chunks(count, size):
    """``(first, last)`` ranges covering ``0..count`` in steps of ``max(1, size)``."""
    size = max(1, size)
    return [(first, min(first + size, count)) for first in range(0, count, size)]


def _keep_lowest(best_cost, best_gt, cost, chunk_valid, first):
    """Merge a chunk of GTs (``cost`` (B, g, V), GT indices from ``first``, ``chunk_valid``
    (B, g) its real slots) into the running lowest cost (NaN while unset) and GT of each
    prior, in place. A later chunk wins only with a strictly lower cost, so ties keep the
    lower GT index.

    ``lowest_cost_gts`` in one reduction: ``torch.min`` over the GTs returns the first index
    of the minimum (documented), the lowest GT index among equal costs; padded slots are
    set to +inf, which cannot be a finite minimum. A minimum that is not finite (every slot
    padded, or float32 costs that overflowed) takes ``lowest_cost_gts`` itself, with NaN
    rows for the padded slots."""
    all_valid = bool(chunk_valid.all())
    chunk_cost, chunk_gt = (cost if all_valid else torch.where(chunk_valid[..., None], cost, math.inf)).min(dim=1)  # (B, V)
    if not bool(torch.isfinite(chunk_cost).all()):
        marked = cost if all_valid else torch.where(chunk_valid[..., None], cost, math.nan)
        chunk_gt = lowest_cost_gts(marked)  # (B, V), g where no valid GT
        chunk_cost = marked.gather(1, chunk_gt.clamp(max=cost.shape[1] - 1)[:, None, :])[:, 0]
    found = chunk_gt < cost.shape[1]
    better = found & (torch.isnan(best_cost) | (chunk_cost < best_cost))
    best_cost.copy_(torch.where(better, chunk_cost, best_cost))
    best_gt.copy_(torch.where(better, chunk_gt + first, best_gt))


def _valid_priors_of(gt_boxes, gt_valid, anchors, max_pairs):
    """``valid_priors`` of the GT slots (B, G): on the anchors' grids, the windows of the
    valid GTs, all at once (``centre_windows.rectangle_mask``: the strict test
    ``min(x - x1, y - y1, x2 - x, y2 - y) > 0`` is exactly a centre strictly between the
    bounds); else ``valid_priors`` itself on chunks of GTs of at most ``max_pairs`` pairs
    (padded slots are zero boxes there, which contain no centre)."""
    batch, num_gts = gt_valid.shape
    grids = centre_grids(anchors)
    if grids is not None:
        image = torch.arange(batch, device=anchors.device).repeat_interleave(num_gts)
        return rectangle_mask(grids, gt_boxes.reshape(-1, 4), gt_valid.reshape(-1), image, batch)
    valid = torch.zeros((batch, anchors.shape[0]), dtype=torch.bool, device=anchors.device)
    for first, last in _chunks(num_gts, max_pairs // max(1, batch * anchors.shape[0])):
        valid |= valid_priors(gt_boxes[:, first:last], anchors)
    return valid


def _packed_order(valid, width):
    """(B, A) bool -> (B, V) the anchors of each row, its valid ones first in anchor order, then
    its first invalid ones (distinct anchors: the result is scattered back through it). One
    image: its valid anchors (``nonzero``); several: a stable sort of the invalid flags."""
    if valid.shape[0] == 1:
        return torch.nonzero(valid[0]).reshape(1, -1)
    return torch.sort((~valid).to(torch.int8), dim=1, stable=True).indices[:, :width]


def _gather_rows(values, order):
    """(B, A, ...) values at (B, V) anchor indices -> (B, V, ...) (``values[b, order[b]]``)."""
    batch, width = order.shape
    flat = (order + torch.arange(batch, device=order.device)[:, None] * values.shape[1]).reshape(-1)
    return values.reshape(batch * values.shape[1], *values.shape[2:]).index_select(0, flat).view(batch, width, *values.shape[2:])


def _matched_ious(gt_boxes, pred_boxes, matched):
    """IoU of each prior's prediction with its matched GT (the soft target, specs/dsl.md §3):
    (B, G, 4), (B, V, 4), (B, V) -> (B, V); 0 for background and non-finite predictions.
    The same arithmetic as ``predicted_ious``."""
    finite = torch.isfinite(pred_boxes).all(dim=-1)
    safe_boxes = torch.where(finite[..., None], pred_boxes, 0.0)
    gts = gt_boxes.gather(1, matched.clamp(min=0)[..., None].expand(*matched.shape, 4))  # (B, V, 4)
    ious = aligned_box_iou_unchecked(gts, safe_boxes)
    return torch.where((matched >= 0) & finite, ious, 0.0)
