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
"""
import numpy as np

from reference.assign.atss import resolve_multiple_matches
from reference.assign.result import Assignment, empty_assignment
from reference.boxes import _centers, box_iou, safe_divide
from reference.conventions import ATSS_INSIDE_EPS
from reference.validation import as_boxes, as_class_labels, as_class_scores, as_pred_boxes, check_number, check_topk

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
):
    """Assign anchors to GTs with TOOD's task-aligned assigner (specs/tal.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major; only their centres are read (points may be
            passed as zero-size boxes ``[x, y, x, y]``).
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        gt_labels: (G,) integers in 0..K-1, the class of each GT.
        pred_scores: (A, K) the network's class probabilities in [0, 1], one row per
            anchor (plain numbers here; the torch twin detaches them).
        pred_boxes: (A, 4) xyxy, the network's decoded box predictions, one per anchor.
            Rows with a NaN or Inf are allowed: such a prediction has IoU 0 with every GT
            (§2.2). A finite row must have x1 <= x2 and y1 <= y2.
        topk: positive candidates per GT (int >= 1), over all levels together.
        alpha: exponent of the class score (>= 0).
        beta: exponent of the IoU (>= 0).
        inside_eps: strict inside margin of the anchor centre, pixels.

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
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    pred_scores = as_class_scores(pred_scores, "pred_scores", (len(anchors),))
    gt_labels = as_class_labels(gt_labels, "gt_labels", (len(gt_boxes),), pred_scores.shape[1])
    pred_boxes = as_pred_boxes(pred_boxes, "pred_boxes", (len(anchors), 4))
    topk = check_topk(topk)
    alpha = check_number(alpha, "alpha", minimum=0.0)
    beta = check_number(beta, "beta", minimum=0.0)
    inside_eps = check_number(inside_eps, "inside_eps", minimum=0.0)
    if len(gt_boxes) == 0:  # §5.1
        return empty_assignment(len(anchors), 0)

    scores = class_scores(pred_scores, gt_labels)
    ious = prediction_ious(gt_boxes, pred_boxes)
    metrics = alignment_metrics(scores, ious, alpha, beta)
    inside = anchors_inside(gt_boxes, anchors, inside_eps)
    is_candidate = select_topk(metrics, inside & (metrics > 0), topk)
    anchor_index = np.broadcast_to(np.arange(len(anchors)), metrics.shape)
    matched_gt, matched_iou = resolve_multiple_matches(anchor_index, ious, is_candidate, len(anchors))
    matched_alignment = assigned_values(metrics, matched_gt)
    matched_metric = normalized_metrics(matched_gt, matched_alignment, matched_iou, len(gt_boxes))
    threshold = np.full(len(gt_boxes), np.nan)
    return Assignment(matched_gt, matched_metric, threshold, np.zeros((len(gt_boxes), 0), dtype=np.int64))


# ---------------------------------------------------------------------------------------
# step helpers; inputs are already validated float64 arrays


def class_scores(pred_scores, gt_labels):
    """``s``: each anchor's predicted probability of each GT's class (specs/tal.md §2.1).

    Args:
        pred_scores: (A, K) float64 in [0, 1].
        gt_labels: (G,) int64 in 0..K-1.

    Returns:
        (G, A) float64: ``pred_scores[a, gt_labels[g]]`` at ``[g, a]``.
    """
    return np.ascontiguousarray(pred_scores[:, gt_labels].T)


def prediction_ious(gt_boxes, pred_boxes):
    """``u``: IoU between each GT and every anchor's decoded prediction (specs/tal.md §2.2).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        pred_boxes: (A, 4) float64 xyxy; non-finite rows allowed.

    Returns:
        (G, A) float64 in [0, 1]; 0 where the prediction is not finite, and where the union
        is 0 (specs/boxes.md §2).
    """
    finite = np.isfinite(pred_boxes).all(axis=-1)
    safe_boxes = np.where(finite[..., None], pred_boxes, 0.0)  # placeholder rows, zeroed below
    ious = box_iou(gt_boxes, safe_boxes)
    return np.where(finite, ious, 0.0)


def alignment_metrics(scores, ious, alpha, beta):
    """``t = s ** alpha * u ** beta`` (paper §3.2.1; specs/tal.md §2.3).

    Integral exponents in 0..64 by binary exponentiation (``_power``): the same IEEE
    multiplications in both trees.

    Args:
        scores, ious: (G, A) float64 in [0, 1].
        alpha, beta: floats >= 0.

    Returns:
        (G, A) float64 in [0, 1].
    """
    return _power(scores, alpha) * _power(ious, beta)


def anchors_inside(gt_boxes, anchors, eps):
    """Whether each anchor centre lies inside each GT (specs/tal.md §2.4).

    The ATSS test (``atss.centers_inside``) on every anchor:
    ``min(x - x1, y - y1, x2 - x, y2 - y) > eps`` (strict).

    Args:
        gt_boxes: (G, 4) float64 xyxy.
        anchors: (A, 4) xyxy.
        eps: float >= 0.

    Returns:
        (G, A) bool. A zero-width or zero-height GT contains no centre.
    """
    centers = _centers(anchors)  # (A, 2)
    x, y = centers[:, 0], centers[:, 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    margin = np.minimum(np.minimum(x - x1, y - y1), np.minimum(x2 - x, y2 - y))
    return margin > eps


def select_topk(metrics, eligible, topk):
    """Each GT's positive candidates: its ``topk`` best eligible anchors (specs/tal.md §2.5).

    The ``min(topk, #eligible)`` eligible anchors with the largest metric, ordered by
    (metric descending, anchor index ascending): among equal metrics the lower anchor index
    wins.

    Args:
        metrics: (G, A) float64, the alignment metrics.
        eligible: (G, A) bool, inside the GT with a positive metric.
        topk: int >= 1.

    Returns:
        (G, A) bool, at most ``topk`` True per row, only where ``eligible``.
    """
    selected = np.zeros(metrics.shape, dtype=bool)
    for g in range(metrics.shape[0]):
        index = np.flatnonzero(eligible[g])
        # A stable sort of the negated metrics keeps equal metrics in anchor-index order.
        order = np.argsort(-metrics[g, index], kind="stable")[:topk]
        selected[g, index[order]] = True
    return selected


def assigned_values(values, matched_gt):
    """Each anchor's value with its assigned GT: ``values[matched_gt[a], a]``, 0 for
    background.

    Args:
        values: (G, A) float64.
        matched_gt: (A,) int64 in {-1, 0..G-1}.

    Returns:
        (A,) float64.
    """
    positive = matched_gt >= 0
    out = np.zeros(len(matched_gt))
    out[positive] = values[matched_gt[positive], np.flatnonzero(positive)]
    return out


def normalized_metrics(matched_gt, matched_alignment, matched_iou, num_gts):
    """The soft targets ``t_hat = t / T_g * U_g`` (specs/tal.md §2.7).

    ``T_g`` and ``U_g`` are the largest alignment and the largest IoU among the final
    positives of GT ``g``. Every positive has ``t > 0``, so ``T_g > 0`` wherever it is read:
    no eps (the zero-safe division only keeps background at 0).

    Args:
        matched_gt: (A,) int64 in {-1, 0..G-1}.
        matched_alignment: (A,) float64, ``t`` with the assigned GT (0 for background).
        matched_iou: (A,) float64, ``u`` with the assigned GT (0 for background).
        num_gts: G.

    Returns:
        (A,) float64 in [0, 1]: ``(t / T_g) * U_g`` for a positive of ``g``, 0 for
        background.
    """
    if num_gts == 0:
        return np.zeros(len(matched_gt))
    positive = matched_gt >= 0
    gt = np.where(positive, matched_gt, 0)
    best_alignment = np.zeros(num_gts)
    best_iou = np.zeros(num_gts)
    np.maximum.at(best_alignment, matched_gt[positive], matched_alignment[positive])
    np.maximum.at(best_iou, matched_gt[positive], matched_iou[positive])
    return safe_divide(matched_alignment, best_alignment[gt], where=positive) * best_iou[gt]


# ---------------------------------------------------------------------------------------
# private helpers


def _power(values, exponent):
    """``values ** exponent`` for values in [0, 1] and a float exponent >= 0 (§2.3).

    An integral exponent in 0..64 by binary exponentiation, from the lowest bit, with
    ``result`` starting at 1: ``x ** 0 = 1`` (also ``0 ** 0``) and ``x ** 1 = x`` exactly.
    Other exponents use ``np.power``.
    """
    if not (exponent.is_integer() and exponent <= 64):
        return np.power(values, exponent)
    result = np.ones_like(values)
    base = values
    remaining = int(exponent)
    while remaining:
        if remaining & 1:
            result = result * base
        remaining >>= 1
        if remaining:
            base = base * base
    return result

