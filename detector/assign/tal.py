"""TAL: the task-aligned assigner of TOOD (specs/tal.md).

Each anchor and GT have an alignment metric ``t = s ** alpha * u ** beta`` (paper §3.2.1),
``s`` the predicted probability of the GT's class and ``u`` the IoU of the anchor's decoded
predicted box with the GT. For each GT, the ``topk`` anchors with the largest ``t`` among
those whose centre lies inside the GT and whose ``t`` is positive are its positive
candidates, ties to the lower anchor index; an anchor that is a candidate of several GTs
goes to the highest IoU, then to the lower GT index. ``matched_metric`` is the normalised
alignment ``t / max t * max u`` over the GT's final positives, the soft target of the
classification loss.

The predictions come decoded and as probabilities: the caller decodes its regression
outputs and applies the sigmoid to its classification logits once (specs/tal.md §1).

Twin of ``reference/assign/tal.py``; ``assign_tal_batched`` holds the algorithm and
``assign_tal`` runs it on one image, as in ``assign/atss.py``. The step helpers take
batched tensors: GTs (B, G, 4), labels (B, G), per-GT-and-anchor values (B, G, A).
``assign_tal_batched`` runs the same steps on a list of (GT, anchor) pairs instead: only a
pair whose anchor centre lies inside the GT can be a candidate (§2.5), so the pairs are
found on the anchors' grids (``assign/centre_windows.py``) and the scores, IoUs and
metrics are computed for them alone, never for the (B, G, A) matrices or the whole
(B, A, K) scores (the detector-only helpers at the bottom; every value is the same
elementwise arithmetic as the dense step's, so the result is the same to the bit). GTs are
processed in chunks of at most about ``max_elements`` (B * G * A) values; the candidates
of all chunks are resolved together, so the result does not depend on the chunk size. The
predictions are detached here; half and bfloat16 are up-cast to float32, then cast to the
dtype of the anchors and GTs.
"""
import math

import numpy as np
import torch

from detector.assign.batching import DEFAULT_MAX_ELEMENTS, as_padded_batch, finish_batch, one_image
from detector.assign.centre_windows import centre_grids, rectangle_pairs
from detector.assign.memo import shared_boxes
from detector.boxes import _centers, aligned_box_iou_unchecked, safe_divide
from detector.conventions import ATSS_INSIDE_EPS, BACKGROUND
from detector.validation import (
    as_class_labels,
    as_class_scores,
    as_boxes,
    as_pred_boxes,
    check_max_elements,
    check_number,
    check_same_device,
    check_topk,
)

#: TOOD's number of positive candidates per GT (mmdetection ``TaskAlignedAssigner(topk=13)``).
TAL_TOPK = 13
#: Exponent of the class score in the alignment metric (paper §3.2.1).
TAL_ALPHA = 1.0
#: Exponent of the IoU in the alignment metric (paper §3.2.1).
TAL_BETA = 6.0


def assign_tal(
    anchors,
    gt_boxes,
    gt_labels,
    pred_scores,
    pred_boxes,
    *,
    topk=TAL_TOPK,
    alpha=TAL_ALPHA,
    beta=TAL_BETA,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Assign anchors to GTs with TOOD's task-aligned assigner (specs/tal.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; only their centres are read (points may be
            passed as zero-size boxes ``[x, y, x, y]``).
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        gt_labels: (G,) integers in 0..K-1, the class of each GT.
        pred_scores: (A, K) the network's class probabilities in [0, 1], one row per
            anchor (they may require grad: they are detached here).
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions, one per anchor.
            Rows with a NaN or Inf are allowed: such a prediction has IoU 0 with every GT
            (§2.2). A finite row must have x1 <= x2 and y1 <= y2.
        topk: positive candidates per GT (int >= 1), over all levels together.
        alpha: exponent of the class score (>= 0).
        beta: exponent of the IoU (>= 0).
        inside_eps: strict inside margin of the anchor centre, pixels.
        max_elements: bound on the B * G * A values of one GT chunk (the result does not
            depend on it).

    Returns:
        Assignment with matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) the
        normalised alignment ``t_hat`` with the assigned GT (0 for background), in
        [0, max IoU of the GT's positives]; gt_threshold (G,) NaN (TAL has no threshold);
        candidate_index (G, 0).

    Raises:
        ValueError: bad boxes, ``pred_scores`` not (A, K) values in [0, 1], ``gt_labels``
            not (G,) integers in 0..K-1, ``pred_boxes`` not (A, 4) real numbers or a finite
            inverted row (named), a bad option (named).
    """
    anchors = shared_boxes(anchors, "anchors")
    for values, name in ((gt_boxes, "gt_boxes"), (gt_labels, "gt_labels"), (pred_scores, "pred_scores"), (pred_boxes, "pred_boxes")):
        check_same_device(values, anchors, name, "anchors")
    # checked here first, so that errors name this image's rows, as the reference's do
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(gt_boxes),), pred_scores.shape[-1])
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))
    device = anchors.device
    return one_image(
        assign_tal_batched,
        (anchors,),
        gt_boxes.to(device),
        gt_labels.to(device),
        pred_scores.to(device),
        pred_boxes.to(device),
        topk=topk,
        alpha=alpha,
        beta=beta,
        inside_eps=inside_eps,
        max_elements=max_elements,
    )


@torch.no_grad()
def assign_tal_batched(
    anchors,
    gt_boxes,
    gt_valid,
    gt_labels,
    pred_scores,
    pred_boxes,
    *,
    topk=TAL_TOPK,
    alpha=TAL_ALPHA,
    beta=TAL_BETA,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """``assign_tal`` for a batch of images sharing one set of anchors (specs/tal.md §2;
    specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        gt_labels: (B, G_max) integers, in 0..K-1 where ``gt_valid``; padded slots may
            hold anything.
        pred_scores: (B, A, K) class probabilities in [0, 1] (detached here).
        pred_boxes: (B, A, 4) xyxy decoded predictions (detached here; non-finite rows
            allowed, finite rows not inverted).
        topk, alpha, beta, inside_eps, max_elements: as ``assign_tal``.

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) NaN, candidate_index (B, G_max, 0) int64.
    """
    anchors = shared_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    batch, num_gts = gt_valid.shape
    num_anchors = len(anchors)
    check_same_device(gt_labels, anchors, "gt_labels", "anchors")
    check_same_device(pred_scores, anchors, "pred_scores", "anchors")
    check_same_device(pred_boxes, anchors, "pred_boxes", "anchors")
    pred_scores = as_class_scores(pred_scores, "pred_scores", (batch, num_anchors))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (batch, num_gts), pred_scores.shape[-1], valid=gt_valid)
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (batch, num_anchors, 4))
    topk = check_topk(topk)
    alpha = check_number(alpha, "alpha", minimum=0.0)
    beta = check_number(beta, "beta", minimum=0.0)
    inside_eps = check_number(inside_eps, "inside_eps", minimum=0.0)
    max_elements = check_max_elements(max_elements)
    pred_scores = pred_scores.detach().to(device=anchors.device, dtype=anchors.dtype)
    pred_boxes = pred_boxes.detach().to(device=anchors.device, dtype=anchors.dtype)
    gt_labels = gt_labels.to(anchors.device)

    grids = centre_grids(anchors)
    chunk_candidates = []  # per GT chunk, its candidate pairs
    chunk = max(1, max_elements // max(1, batch * num_anchors))
    for start in range(0, max(num_gts, 1), chunk):  # one (empty) chunk when there is no GT slot
        part = slice(start, start + chunk)
        # the (GT, anchor) pairs with the anchor centre inside the GT, the only eligible ones (§2.4, §2.5)
        pairs = _inside_pairs(grids, anchors, gt_boxes[:, part], gt_valid[:, part], inside_eps)
        scores = _pair_scores(pred_scores, gt_labels[:, part], pairs)  # class_scores at the pairs
        ious = _pair_ious(gt_boxes[:, part], pred_boxes, pairs)  # prediction_ious at the pairs
        metrics = alignment_metrics(scores, ious, alpha, beta)
        candidates = _select_topk_pairs(metrics, metrics > 0, pairs, topk)  # select_topk: (Q,) pair positions
        chunk_candidates.append(_candidate_values(candidates, pairs, ious, metrics, start))
    # resolve_multiple_matches and assigned_values over the candidates of every chunk
    flat, gt, iou, alignment = _best_candidates(chunk_candidates, batch * num_anchors, num_gts)
    matched_gt = torch.full((batch * num_anchors,), BACKGROUND, dtype=torch.int64, device=anchors.device)
    matched_gt = matched_gt.index_copy_(0, flat, gt).view(batch, num_anchors)
    matched_metric = _normalized_winner_metrics(flat, gt, iou, alignment, (batch, num_gts, num_anchors))  # normalized_metrics
    threshold = torch.full((batch, num_gts), math.nan, dtype=anchors.dtype, device=anchors.device)
    candidate_index = torch.zeros((batch, num_gts, 0), dtype=torch.int64, device=anchors.device)
    return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated tensors of one floating dtype on one device


def class_scores(pred_scores, gt_labels):
    """``s``: each anchor's predicted probability of each GT's class (specs/tal.md §2.1).

    Args:
        pred_scores: (B, A, K) in [0, 1].
        gt_labels: (B, G) int64 in 0..K-1.

    Returns:
        (B, G, A): ``pred_scores[b, a, gt_labels[b, g]]`` at ``[b, g, a]``.
    """
    batch, num_anchors = pred_scores.shape[:2]
    index = gt_labels[:, None, :].expand(batch, num_anchors, gt_labels.shape[1])
    return pred_scores.gather(2, index).transpose(1, 2)


def prediction_ious(gt_boxes, pred_boxes):
    """``u``: IoU between each GT and every anchor's decoded prediction (specs/tal.md §2.2).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        pred_boxes: (B, A, 4) xyxy; non-finite rows allowed.

    Returns:
        (B, G, A) in [0, 1]; 0 where the prediction is not finite, and where the union
        is 0 (specs/boxes.md §2). The same arithmetic, in the same order, as
        ``reference.boxes.box_iou``.
    """
    finite = torch.isfinite(pred_boxes).all(dim=-1)
    safe_boxes = torch.where(finite[..., None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    ious = aligned_box_iou_unchecked(gt_boxes[:, :, None, :], safe_boxes[:, None, :, :])
    return torch.where(finite[:, None, :], ious, 0.0)


def alignment_metrics(scores, ious, alpha, beta):
    """``t = s ** alpha * u ** beta`` (paper §3.2.1; specs/tal.md §2.3).

    Integral exponents in 0..64 by binary exponentiation (``_power``): the same IEEE
    multiplications in both trees.

    Args:
        scores, ious: (B, G, A) in [0, 1].
        alpha, beta: floats >= 0.

    Returns:
        (B, G, A) in [0, 1].
    """
    return _power(scores, alpha) * _power(ious, beta)


def anchors_inside(gt_boxes, anchors, eps):
    """Whether each anchor centre lies inside each GT (specs/tal.md §2.4).

    The ATSS test (``atss.centers_inside``) on every anchor:
    ``min(x - x1, y - y1, x2 - x, y2 - y) > eps`` (strict).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        anchors: (A, 4) xyxy.
        eps: float >= 0.

    Returns:
        (B, G, A) bool. A zero-width or zero-height GT contains no centre.
    """
    centers = _centers(anchors)  # (A, 2)
    x, y = centers[:, 0], centers[:, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))
    return margin > eps


def select_topk(metrics, eligible, topk):
    """Each GT's positive candidates: its ``topk`` best eligible anchors (specs/tal.md §2.5).

    The ``min(topk, #eligible)`` eligible anchors with the largest metric, ordered by
    (metric descending, anchor index ascending): among equal metrics the lower anchor index
    wins.
    Exactly so on every device without sorting: ``torch.topk`` gives the k-th largest value
    (its order among ties is unspecified, its values are not); every eligible anchor above
    it is taken, and of those equal to it the lowest indices that fill the ``topk``.

    Args:
        metrics: (B, G, A), the alignment metrics.
        eligible: (B, G, A) bool, inside the GT with a positive metric.
        topk: int >= 1.

    Returns:
        (B, G, A) bool, at most ``topk`` True per row, only where ``eligible``.
    """
    count = min(topk, metrics.shape[-1])
    if count == 0 or metrics.numel() == 0:
        return torch.zeros_like(eligible)
    key = torch.where(eligible, metrics, -math.inf)
    kth = key.topk(count, dim=-1).values[..., -1:]  # (B, G, 1); -inf when fewer are eligible
    above = key > kth
    tied = eligible & (key == kth)
    missing = count - above.sum(dim=-1, keepdim=True)
    return above | (tied & (tied.cumsum(dim=-1) <= missing))


def assigned_values(values, matched_gt):
    """Each anchor's value with its assigned GT: ``values[b, matched_gt[b, a], a]``, 0 for
    background.

    Args:
        values: (B, G, A).
        matched_gt: (B, A) int64 in {-1, 0..G-1}.

    Returns:
        (B, A).
    """
    positive = matched_gt >= 0
    gathered = values.gather(1, matched_gt.clamp(min=0)[:, None, :])[:, 0, :]
    return torch.where(positive, gathered, 0.0)


def normalized_metrics(matched_gt, matched_alignment, matched_iou, num_gts):
    """The soft targets ``t_hat = t / T_g * U_g`` (specs/tal.md §2.7).

    ``T_g`` and ``U_g`` are the largest alignment and the largest IoU among the final
    positives of GT ``g``. Every positive has ``t > 0``, so ``T_g > 0`` wherever it is read:
    no eps (the zero-safe division only keeps background at 0).
    Two scatter reductions (amax) per image and GT slot.

    Args:
        matched_gt: (B, A) int64 in {-1, 0..G-1}.
        matched_alignment: (B, A), ``t`` with the assigned GT (0 for background).
        matched_iou: (B, A), ``u`` with the assigned GT (0 for background).
        num_gts: G (G_max).

    Returns:
        (B, A) in [0, 1]: ``(t / T_g) * U_g`` for a positive of ``g``, 0 for background.
    """
    if num_gts == 0:
        return torch.zeros_like(matched_alignment)
    batch = matched_gt.shape[0]
    positive = matched_gt >= 0
    offsets = torch.arange(batch, device=matched_gt.device)[:, None] * num_gts
    flat_index = (matched_gt.clamp(min=0) + offsets).reshape(-1)
    zeros = torch.zeros(batch * num_gts, dtype=matched_alignment.dtype, device=matched_alignment.device)
    # background rows hold 0, which cannot raise a maximum of values >= 0
    best_alignment = zeros.scatter_reduce(0, flat_index, torch.where(positive, matched_alignment, 0.0).reshape(-1), "amax")
    best_iou = zeros.scatter_reduce(0, flat_index, torch.where(positive, matched_iou, 0.0).reshape(-1), "amax")
    best_alignment = best_alignment[flat_index].reshape(matched_gt.shape)
    best_iou = best_iou[flat_index].reshape(matched_gt.shape)
    return safe_divide(matched_alignment, best_alignment, where=positive) * best_iou


# ---------------------------------------------------------------------------------------
# private helpers


def _power(values, exponent):
    """``values ** exponent`` for values in [0, 1] and a float exponent >= 0 (§2.3).

    An integral exponent in 0..64 by binary exponentiation, from the lowest bit, with
    ``result`` starting at 1: ``x ** 0 = 1`` (also ``0 ** 0``) and ``x ** 1 = x`` exactly (the
    first factor is taken as it is: ``1 * x = x`` in IEEE arithmetic).
    Other exponents use the library power: on CPU NumPy's, as the reference (torch's CPU
    ``pow`` rounds an element differently depending on its position in the tensor, so that
    equal inputs could get different powers and break a tie), elsewhere ``torch.pow``.
    """
    if not (exponent.is_integer() and exponent <= 64):
        if values.device.type == "cpu":
            return torch.from_numpy(np.power(values.contiguous().numpy(), exponent))
        return torch.pow(values, exponent)
    result = None
    base = values
    remaining = int(exponent)
    while remaining:
        if remaining & 1:
            result = base if result is None else result * base
        remaining >>= 1
        if remaining:
            base = base * base
    return torch.ones_like(values) if result is None else result


# ---------------------------------------------------------------------------------------
# detector only: the steps on the (GT, anchor) pairs with the anchor centre inside the GT
# (specs/tal.md §2.5: no other pair is eligible), found on the anchors' grids
# (``assign/centre_windows.py``) instead of testing every anchor against every GT. Each value
# is the same elementwise arithmetic as the dense step's at that pair, so the result is the
# same to the bit.


class _Pairs:
    """P (GT, anchor) pairs of a chunk of GT slots (B, G_c), slot-major with ascending anchors
    within a slot: (P,) int64 ``slot`` (``image * G_c + gt``), ``anchor``, ``gt`` (the index in
    the chunk) and ``flat`` (``image * A + anchor``, a row of the (B * A, ...) predictions)."""

    def __init__(self, slot, anchor, shape, num_anchors):
        self.slot, self.anchor, self.shape, self.num_anchors = slot, anchor, shape, num_anchors
        image = torch.div(slot, shape[1], rounding_mode="floor")
        self.gt = slot - image * shape[1]
        self.flat = image * num_anchors + anchor


def _inside_pairs(grids, anchors, gt_boxes, gt_valid, eps):
    """``anchors_inside`` as a list: the pairs of a valid GT (B, G_c) and an anchor whose
    centre is inside it by more than ``eps`` (the same margin arithmetic), found on the
    anchors' grids (``centre_windows.rectangle_pairs``), or by ``anchors_inside`` itself
    when the anchors form no grids."""
    num_anchors = anchors.shape[0]
    if grids is None:
        inside = anchors_inside(gt_boxes, anchors, eps) & gt_valid[..., None]
        slot, anchor = torch.nonzero(inside.reshape(gt_valid.numel(), num_anchors), as_tuple=True)
    else:
        slot, anchor = rectangle_pairs(grids, gt_boxes.reshape(-1, 4), gt_valid.reshape(-1), margin=eps)
    return _Pairs(slot, anchor, tuple(gt_valid.shape), num_anchors)


def _pair_scores(pred_scores, gt_labels, pairs):
    """``class_scores`` at the pairs: (P,) ``pred_scores[b, a, gt_labels[b, g]]``; reads P
    values of the (B, A, K) scores."""
    label = gt_labels.reshape(-1).index_select(0, pairs.slot)
    if not pred_scores.is_contiguous():
        image = torch.div(pairs.flat, pairs.num_anchors, rounding_mode="floor")
        return pred_scores[image, pairs.anchor, label]
    return pred_scores.reshape(-1).index_select(0, pairs.flat * pred_scores.shape[-1] + label)


def _pair_ious(gt_boxes, pred_boxes, pairs):
    """``prediction_ious`` at the pairs: (P,), 0 where the prediction is not finite (the
    IoU of a finite prediction is the same arithmetic on the same values; torch needs no
    placeholder rows for the others, which are replaced)."""
    boxes = pred_boxes.reshape(-1, 4).index_select(0, pairs.flat)  # (P, 4)
    ious = aligned_box_iou_unchecked(gt_boxes.reshape(-1, 4).index_select(0, pairs.slot), boxes)
    return torch.where(_finite_rows(boxes), ious, 0.0)


def _finite_rows(boxes):
    """(P, 4) -> (P,) bool, every coordinate finite: ``x - x == 0`` fails exactly for NaN and
    Inf, and a row of four True bytes read as one int32 is 0x01010101 (cheaper than
    ``isfinite(...).all(dim=-1)``)."""
    finite = ((boxes - boxes) == 0).contiguous()
    return finite.view(torch.int32).squeeze(-1) == 0x01010101


#: Above this many eligible pairs, ``_select_topk_pairs`` first drops the pairs below their
#: GT's k-th largest metric (a float sort costs about 0.1 us a value on one CPU thread).
PRUNE_ABOVE = 4096


def _select_topk_pairs(metrics, eligible, pairs, topk):
    """``select_topk`` on the pairs: each GT's ``min(topk, #eligible)`` eligible pairs of
    largest metric, ties to the lower anchor index (specs/tal.md §2.5).

    The eligible pairs are sorted by (slot, metric descending), stably, so that equal
    metrics keep their anchor order; a pair is a candidate when its rank within its slot is
    below ``topk``. The sort keys are integers, whose CPU sort is several times faster than
    a float sort: a positive float's bit pattern orders as its value, so the key of a
    float32 metric is ``slot * 2**31 + (2**31 - 1 - bits)`` (one sort), and a float64
    metric is sorted by ``2**63 - 1 - bits``, then stably by slot. Above ``PRUNE_ABOVE``
    eligible pairs, only those not below their GT's k-th largest metric are sorted
    (``_not_below_kth``): the others cannot be among its ``topk``.

    Returns:
        (Q,) int64 positions into the pairs, at most ``topk`` per slot.
    """
    index = torch.nonzero(eligible).squeeze(1)
    if index.shape[0] > PRUNE_ABOVE:
        index = _not_below_kth(metrics, index, pairs, topk)
    if index.shape[0] == 0:
        return index
    slot = pairs.slot.index_select(0, index)
    values = metrics.index_select(0, index)  # > 0
    if values.dtype == torch.float32:
        key = slot * 2**31 + (2**31 - 1 - values.view(torch.int32).to(torch.int64))
        order = torch.sort(key, stable=True).indices
    else:
        order = torch.sort((2**63 - 1) - values.view(torch.int64), stable=True).indices
        order = order.index_select(0, torch.sort(slot.index_select(0, order), stable=True).indices)
    slot = slot.index_select(0, order)
    counts = torch.bincount(slot, minlength=pairs.shape[0] * pairs.shape[1])
    rank = torch.arange(slot.shape[0], device=slot.device) - (counts.cumsum(0) - counts).index_select(0, slot)
    return index.index_select(0, order.index_select(0, torch.nonzero(rank < topk).squeeze(1)))


def _not_below_kth(metrics, index, pairs, topk):
    """The pairs of ``index`` (slot-major) whose metric is at least the ``topk``-th largest of
    their slot (all of a slot with at most ``topk``): a superset of each slot's candidates.

    The k-th largest value comes from ``torch.topk`` on the slots with more than ``topk``
    pairs, laid out as rows padded with -inf (the values of ``topk`` are exact; only their
    order among ties is unspecified).
    """
    slot = pairs.slot.index_select(0, index)
    counts = torch.bincount(slot, minlength=pairs.shape[0] * pairs.shape[1])
    over = counts > topk
    num_rows, width = torch.stack([over.sum(), counts.max()]).tolist()
    if num_rows == 0:
        return index
    values = metrics.index_select(0, index)
    row_of_slot = torch.where(over, over.cumsum(0) - 1, -1)
    row = row_of_slot.index_select(0, slot)
    column = torch.arange(index.shape[0], device=index.device) - (counts.cumsum(0) - counts).index_select(0, slot)
    selected = torch.nonzero(row >= 0).squeeze(1)
    padded = torch.full((num_rows, width), -math.inf, dtype=values.dtype, device=values.device)
    padded[row.index_select(0, selected), column.index_select(0, selected)] = values.index_select(0, selected)
    kth = padded.topk(topk, dim=1).values[:, -1]  # (rows,)
    keep = (row < 0) | (values >= kth.index_select(0, row.clamp(min=0)))
    return index.index_select(0, torch.nonzero(keep).squeeze(1))


def _candidate_values(candidates, pairs, ious, metrics, first_gt):
    """The candidate pairs of a chunk as (flat anchor ``b * A + a``, GT index counted from
    ``first_gt``, IoU ``u``, metric ``t``), each (Q,), for ``_best_candidates``."""
    flat = pairs.flat.index_select(0, candidates)
    gt = pairs.gt.index_select(0, candidates) + first_gt
    return flat, gt, ious.index_select(0, candidates), metrics.index_select(0, candidates)


def _best_candidates(candidates, size, num_gts):
    """``resolve_multiple_matches`` on lists of candidate pairs (§2.6): each anchor goes to its
    candidate of highest IoU, then of lowest GT index (two scatter reductions over the ``size``
    = B * A anchors, as ``resolve_multiple_matches``). The candidates of every GT chunk are
    resolved at once, so the chunk size does not matter.

    Args:
        candidates: list of (flat anchor, GT index, IoU, metric) tuples of (Q,) tensors.
        size: B * A.
        num_gts: G_max (above every GT index).

    Returns:
        (flat anchor, GT index, IoU, metric) of the winning pairs, one per positive anchor.
    """
    if len(candidates) > 1:
        candidates = [tuple(torch.cat(parts) for parts in zip(*candidates))]
    flat, gt, iou, metric = candidates[0]
    best = torch.full((size,), -math.inf, dtype=iou.dtype, device=iou.device).scatter_reduce_(0, flat, iou, "amax")
    is_best = iou == best.index_select(0, flat)
    winner = torch.full((size,), num_gts, dtype=torch.int64, device=gt.device)
    winner.scatter_reduce_(0, flat, torch.where(is_best, gt, num_gts), "amin")
    wins = torch.nonzero(is_best & (gt == winner.index_select(0, flat))).squeeze(1)
    return tuple(values.index_select(0, wins) for values in (flat, gt, iou, metric))


def _normalized_winner_metrics(flat, gt, iou, alignment, shape):
    """``normalized_metrics`` from the winning pairs (the final positives), as (B, A): the same
    maxima ``T_g``, ``U_g`` (``normalized_metrics`` adds only zeros for background, which
    cannot raise a maximum of values >= 0) and the same ``(t / T_g) * U_g``; 0 for
    background."""
    batch, num_gts, num_anchors = shape
    out = torch.zeros(batch * num_anchors, dtype=alignment.dtype, device=alignment.device)
    if num_gts == 0:
        return out.view(batch, num_anchors)
    slot = torch.div(flat, num_anchors, rounding_mode="floor") * num_gts + gt
    zeros = torch.zeros(batch * num_gts, dtype=alignment.dtype, device=alignment.device)
    best_alignment = zeros.scatter_reduce(0, slot, alignment, "amax").index_select(0, slot)
    best_iou = zeros.scatter_reduce(0, slot, iou, "amax").index_select(0, slot)
    return out.index_copy_(0, flat, (alignment / best_alignment) * best_iou).view(batch, num_anchors)
