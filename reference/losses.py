"""Detection losses (specs/losses.md).

Elementwise losses ("none" reduction) from logits, written in numerically stable
log-sigmoid / BCE-with-logits form, plus the explicit normalisation and the loss step
that turns head outputs and an assignment into the named loss terms.
"""
import numpy as np

from reference.boxes import aligned_box_giou, aligned_box_iou
from reference.coders import encode_deltas
from reference.conventions import BCE_LOG_MIN, DELTA_STDS
from reference.targets import box_targets, centerness_targets, class_targets, iou_targets
from reference.validation import as_boxes, as_finite, as_points, as_values, check_choice, check_exponent, check_unit

#: Focal loss defaults (RetinaNet / ATSS).
FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
#: Quality focal loss exponent (GFL).
QFL_BETA = 2.0
#: Varifocal loss defaults (VFNet).
VFL_ALPHA = 0.75
VFL_GAMMA = 2.0
#: IoU loss ("log" mode): IoU is clamped below at this value before the log.
IOU_LOSS_EPS = 1e-6
#: ATSS / Dynamic ATSS regression loss weight.
BOX_LOSS_WEIGHT = 2.0

CLS_LOSSES = ("focal", "qfl", "vfl")
#: Smooth L1 transition point of the delta losses (Detectron's RetinaNet ``BBOX_REG_BETA``).
SMOOTH_L1_BETA = 1.0 / 9.0

#: Box losses: on decoded boxes ("giou", "iou") or on delta-xywh codes (``DELTA_BOX_LOSSES``).
BOX_LOSSES = ("giou", "iou", "l1", "smooth_l1")
DELTA_BOX_LOSSES = ("l1", "smooth_l1")
QUALITY_BRANCHES = ("centerness", "iou", "none")


# ---------------------------------------------------------------------------------------
# elementwise losses (specs/losses.md §1-§5)


def bce_with_logits(logits, targets):
    """Binary cross-entropy from logits, elementwise (specs/losses.md §1).

    ``max(x, 0) - x * y + log(1 + exp(-|x|))`` = ``-(y log s(x) + (1 - y) log(1 - s(x)))``.

    Args:
        logits: any shape, finite.
        targets: same shape, values in [0, 1].

    Returns:
        float64 array of that shape, >= 0 when targets are in {0, 1}; finite for any
        finite logit.
    """
    logits, targets = _logits_and_targets(logits, targets)
    return _bce(logits, targets)


def sigmoid_focal_loss(logits, targets, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA):
    """Sigmoid focal loss, elementwise (specs/losses.md §2; paper eq. (5)).

    ``alpha_t * (1 - p_t) ** gamma * BCE(x, y)`` with ``p = s(x)``,
    ``p_t = p y + (1 - p)(1 - y)`` and ``alpha_t = alpha y + (1 - alpha)(1 - y)``.

    Args:
        logits: any shape, finite.
        targets: same shape, in [0, 1] (hard targets are 0 or 1).
        alpha: weight of the positive side in [0, 1], or None for no alpha weighting.
        gamma: focusing exponent >= 0.

    Returns:
        float64 array of that shape, >= 0.
    """
    logits, targets = _logits_and_targets(logits, targets)
    check_exponent(gamma, "gamma")
    prob = _sigmoid(logits)
    p_t = prob * targets + (1.0 - prob) * (1.0 - targets)
    loss = _bce(logits, targets) * (1.0 - p_t) ** gamma
    if alpha is not None:
        check_unit(alpha, "alpha")
        loss = loss * (alpha * targets + (1.0 - alpha) * (1.0 - targets))
    return loss


def quality_focal_loss(logits, targets, beta=QFL_BETA):
    """Quality focal loss (GFL), elementwise (specs/losses.md §3; paper eq. (6)).

    ``|y - s(x)| ** beta * BCE(x, y)``. For ``y = 0`` this is ``s(x) ** beta * BCE(x, 0)``,
    the negative branch of eq. (6); with ``y`` in {0, 1} it equals the focal loss with
    ``alpha=None, gamma=beta``.

    Args:
        logits: any shape, finite.
        targets: same shape, soft targets in [0, 1] (the IoU at a positive's class, 0 elsewhere).
        beta: exponent >= 0.

    Returns:
        float64 array of that shape, >= 0.
    """
    logits, targets = _logits_and_targets(logits, targets)
    check_exponent(beta, "beta")
    return np.abs(targets - _sigmoid(logits)) ** beta * _bce(logits, targets)


def quality_focal_loss_prob(probs, targets, beta=QFL_BETA):
    """Quality focal loss of probabilities (GFLV2's joint score), elementwise (specs/losses.md §3.1).

    ``|y - p| ** beta * BCE_p(p, y)`` with ``BCE_p(p, y) = -(y max(ln p, -100) + (1 - y)
    max(ln(1 - p), -100))``: the probability-space BCE of PyTorch's ``binary_cross_entropy``
    (GFocalV2 ``QualityFocalLoss(use_sigmoid=False)``). Equals :func:`quality_focal_loss` of
    ``logit(p)`` wherever neither log is clamped.

    Args:
        probs: any shape, probabilities in [0, 1] (0 and 1 included: the clamp keeps them finite).
        targets: same shape, soft targets in [0, 1].
        beta: exponent >= 0.

    Returns:
        float64 array of that shape, >= 0.
    """
    probs, targets = _probs_and_targets(probs, targets)
    check_exponent(beta, "beta")
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(probs), BCE_LOG_MIN)
        log_not_p = np.maximum(np.log1p(-probs), BCE_LOG_MIN)
    return np.abs(targets - probs) ** beta * -(targets * log_p + (1.0 - targets) * log_not_p)


def varifocal_loss(logits, targets, alpha=VFL_ALPHA, gamma=VFL_GAMMA, iou_weighted=True):
    """Varifocal loss (VFNet), elementwise (specs/losses.md §4; paper eq. (7)).

    ``w * BCE(x, y)`` with ``w = y`` (``iou_weighted``) or ``1`` where ``y > 0``, and
    ``w = alpha * s(x) ** gamma`` where ``y == 0``. An element with target exactly 0 is a
    negative, even at a positive anchor's class.

    Args:
        logits: any shape, finite.
        targets: same shape, soft targets in [0, 1].
        alpha: weight of the negatives, >= 0.
        gamma: exponent of the negatives' modulating factor, >= 0.
        iou_weighted: weight the positives by their target (True, VFNet) or by 1.

    Returns:
        float64 array of that shape, >= 0.
    """
    logits, targets = _logits_and_targets(logits, targets)
    check_exponent(gamma, "gamma")
    check_exponent(alpha, "alpha")
    positive_weight = targets if iou_weighted else np.ones_like(targets)
    weight = np.where(targets > 0, positive_weight, alpha * _sigmoid(logits) ** gamma)
    return weight * _bce(logits, targets)


def iou_loss(pred_boxes, target_boxes, mode="log", eps=IOU_LOSS_EPS):
    """IoU loss of row-aligned boxes (specs/losses.md §5).

    ``"log"``: ``-ln(max(IoU, eps))`` (UnitBox / FCOS); ``"linear"``: ``1 - IoU``.

    Args:
        pred_boxes: (N, 4) xyxy.
        target_boxes: (N, 4) xyxy.
        mode: "log" or "linear".
        eps: lower clamp of the IoU in "log" mode, > 0; a zero IoU gives ``-ln(eps)``.

    Returns:
        (N,) float64 >= 0; at most ``-ln(eps)`` ("log") or 1 ("linear").
    """
    if mode not in ("log", "linear"):
        raise ValueError(f"mode: expected 'log' or 'linear', got {mode!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive value, got {eps!r}")
    iou = aligned_box_iou(as_boxes(pred_boxes, "pred_boxes"), as_boxes(target_boxes, "target_boxes"))
    if mode == "log":
        return -np.log(np.maximum(iou, eps))
    return 1.0 - iou


def giou_loss(pred_boxes, target_boxes):
    """GIoU loss of row-aligned boxes, ``1 - GIoU`` (specs/losses.md §5).

    Args:
        pred_boxes: (N, 4) xyxy.
        target_boxes: (N, 4) xyxy.

    Returns:
        (N,) float64 in [0, 2]; 1 where both the union and the enclosing box are 0
        (specs/boxes.md §3).
    """
    return 1.0 - aligned_box_giou(as_boxes(pred_boxes, "pred_boxes"), as_boxes(target_boxes, "target_boxes"))


def l1_loss(pred_deltas, target_deltas):
    """L1 loss of row-aligned delta-xywh codes (specs/losses.md §5.1).

    Args:
        pred_deltas: (N, 4) predicted codes (the head's raw box outputs).
        target_deltas: (N, 4) ``coders.encode_deltas`` of the GT on the anchor.

    Returns:
        (N,) float64 ``|d0| + |d1| + |d2| + |d3|`` with ``d = pred - target``, added left to
        right (mmdetection's ``L1Loss``, summed over the 4 coordinates).
    """
    difference = _delta_difference(pred_deltas, target_deltas)
    return ((difference[:, 0] + difference[:, 1]) + difference[:, 2]) + difference[:, 3]


def smooth_l1_loss(pred_deltas, target_deltas, beta=SMOOTH_L1_BETA):
    """Smooth L1 (Huber) loss of row-aligned delta-xywh codes (specs/losses.md §5.1).

    Per coordinate, with ``d = |pred - target|``: ``0.5 * d * d / beta`` if ``d < beta``,
    else ``d - 0.5 * beta`` (Fast R-CNN, Detectron, mmdetection's ``SmoothL1Loss``).

    Args:
        pred_deltas: (N, 4) predicted codes.
        target_deltas: (N, 4) target codes.
        beta: transition point, > 0 (1/9, Detectron's RetinaNet).

    Returns:
        (N,) float64, the 4 coordinates' losses added left to right.
    """
    if not beta > 0:
        raise ValueError(f"beta: expected a positive value, got {beta!r}")
    difference = _delta_difference(pred_deltas, target_deltas)
    loss = np.where(difference < beta, 0.5 * difference * difference / beta, difference - 0.5 * beta)
    return ((loss[:, 0] + loss[:, 1]) + loss[:, 2]) + loss[:, 3]


# ---------------------------------------------------------------------------------------
# normalisation (specs/losses.md §6)


def num_pos_normalizer(num_pos):
    """``max(num_pos, 1)``: the divisor of the classification and quality losses (specs/losses.md §6).

    ``num_pos`` is the number of positives of the whole batch (one image here).
    """
    if num_pos < 0:
        raise ValueError(f"num_pos: expected a count >= 0, got {num_pos!r}")
    return float(max(num_pos, 1))


def weighted_mean(values, weights):
    """``sum(w * v) / sum(w)``, the quality-weighted box loss (specs/losses.md §6).

    Falls back to the unweighted mean where ``sum(w) == 0`` and to 0 for empty input.

    Args:
        values: (N,) losses.
        weights: (N,) weights >= 0.

    Returns:
        float.
    """
    values = as_values(values, "values", ndim=1)
    weights = as_values(weights, "weights", ndim=1)
    if len(values) != len(weights):
        raise ValueError(f"weights: expected {len(values)} values, got {len(weights)}")
    return _weighted_mean_of_sums(float((weights * values).sum()), float(weights.sum()), float(values.sum()), len(values))


# ---------------------------------------------------------------------------------------
# the loss step (specs/losses.md §7)


def loss_sums(
    cls_logits,
    pred_boxes,
    quality_logits,
    centers,
    matched_gt,
    gt_boxes,
    gt_labels,
    cls_loss="focal",
    box_loss="giou",
    quality="centerness",
    soft_targets=None,
    box_deltas=None,
    anchors=None,
    delta_stds=DELTA_STDS,
):
    """Un-normalised loss sums of one image (specs/losses.md §7).

    Args:
        cls_logits: (A, K) classification logits.
        pred_boxes: (A, 4) xyxy decoded predicted boxes (the caller decodes with
            ``coders.decode_deltas`` or ``coders.decode_ltrb``).
        quality_logits: (A,) centerness / IoU branch logits; None when ``quality == "none"``.
        centers: (A, 2) anchor centres or points (for the centerness target).
        matched_gt: (A,) integers in {IGNORE, BACKGROUND, 0..G-1}.
        gt_boxes: (G, 4) xyxy.
        gt_labels: (G,) classes in 0..K-1.
        cls_loss: "focal" (hard targets), "qfl" or "vfl" (soft targets = :func:`iou_targets`).
        box_loss: "giou" or "iou" ("log" mode) on ``pred_boxes``; "l1" or "smooth_l1" on
            ``box_deltas`` against ``coders.encode_deltas(anchors, GT, delta_stds)``.
        quality: "centerness", "iou" or "none": the quality branch and the box-loss weights.
        soft_targets: (A,) soft classification targets in [0, 1] that "qfl" and "vfl" use
            at the positives instead of the IoU target (an assigner's ``matched_metric``,
            e.g. TAL's normalised alignment; specs/losses.md §7); None = the IoU target.
        box_deltas: (A, 4) the raw delta-xywh outputs that decode to ``pred_boxes``; required
            by "l1" / "smooth_l1", ignored by the other box losses.
        anchors: (A, 4) xyxy anchors of positive size; required by "l1" / "smooth_l1".
        delta_stds: the coder's (dx, dy, dw, dh) standard deviations (RetinaNet: all 1).

    Returns:
        dict of floats: ``num_pos``; ``cls`` (sum over anchors and classes, IGNORE rows
        weighted 0); ``box_weighted`` (sum of weight * box loss over positives);
        ``box_weight`` (sum of weights); ``box_plain`` (sum of box losses); and ``quality``
        (sum of BCE over positives) unless ``quality == "none"``.
    """
    check_choice(cls_loss, CLS_LOSSES, "cls_loss")
    check_choice(box_loss, BOX_LOSSES, "box_loss")
    check_choice(quality, QUALITY_BRANCHES, "quality")
    cls_logits = as_values(cls_logits, "cls_logits", ndim=2)
    num_anchors, num_classes = cls_logits.shape
    pred_boxes = as_boxes(pred_boxes, "pred_boxes")
    centers = as_points(centers, "centers")
    _check_rows(pred_boxes, num_anchors, "pred_boxes")
    _check_rows(centers, num_anchors, "centers")
    if quality == "none":
        if quality_logits is not None:
            raise ValueError("quality_logits: expected None when quality is 'none'")
    else:
        if quality_logits is None:
            raise ValueError(f"quality_logits: required when quality is {quality!r}")
        quality_logits = as_values(quality_logits, "quality_logits", ndim=1)
        _check_rows(quality_logits, num_anchors, "quality_logits")
    if box_loss in DELTA_BOX_LOSSES:
        if box_deltas is None or anchors is None:
            raise ValueError(f"box_deltas, anchors: required when box_loss is {box_loss!r}")
        box_deltas = as_values(box_deltas, "box_deltas", ndim=2, width=4)
        anchors = as_boxes(anchors, "anchors")
        _check_rows(box_deltas, num_anchors, "box_deltas")
        _check_rows(anchors, num_anchors, "anchors")

    # 1. targets
    ious = iou_targets(pred_boxes, matched_gt, gt_boxes)
    scores = None if cls_loss == "focal" else ious if soft_targets is None else soft_target_scores(soft_targets, matched_gt)
    cls_t, label_weights = class_targets(matched_gt, gt_labels, num_classes, scores)
    box_t = box_targets(matched_gt, gt_boxes)
    positive = np.asarray(matched_gt) >= 0
    if quality == "centerness":
        quality_t = centerness_targets(centers, matched_gt, gt_boxes)
    elif quality == "iou":
        quality_t = ious
    else:
        quality_t = np.ones(num_anchors)

    # 2. classification: every anchor and class, IGNORE rows weighted 0
    if cls_loss == "focal":
        cls_elem = sigmoid_focal_loss(cls_logits, cls_t)
    elif cls_loss == "qfl":
        cls_elem = quality_focal_loss(cls_logits, cls_t)
    else:
        cls_elem = varifocal_loss(cls_logits, cls_t)
    cls_sum = float((label_weights[:, None] * cls_elem).sum())

    # 3. box regression: positives, weighted by the quality target
    if box_loss == "giou":
        box_elem = giou_loss(pred_boxes[positive], box_t[positive])
    elif box_loss == "iou":
        box_elem = iou_loss(pred_boxes[positive], box_t[positive])
    else:  # delta-xywh codes (specs/losses.md §5.1)
        target_deltas = encode_deltas(anchors[positive], box_t[positive], delta_stds)
        if box_loss == "l1":
            box_elem = l1_loss(box_deltas[positive], target_deltas)
        else:
            box_elem = smooth_l1_loss(box_deltas[positive], target_deltas)
    weights = quality_t[positive]

    sums = {
        "num_pos": int(positive.sum()),
        "cls": cls_sum,
        "box_weighted": float((weights * box_elem).sum()),
        "box_weight": float(weights.sum()),
        "box_plain": float(box_elem.sum()),
    }
    # 4. quality branch: BCE over positives
    if quality != "none":
        sums["quality"] = float(bce_with_logits(quality_logits[positive], quality_t[positive]).sum())
    return sums


def soft_target_scores(soft_targets, matched_gt):
    """(A,) float64: ``soft_targets`` at the positives of ``matched_gt``, 0 elsewhere.

    Raises:
        ValueError: not shape (A,), non-finite, or a positive's target outside [0, 1].
    """
    positive = np.asarray(matched_gt) >= 0
    values = as_values(soft_targets, "soft_targets", ndim=1)
    _check_rows(values, len(positive), "soft_targets")
    if not ((values[positive] >= 0) & (values[positive] <= 1)).all():
        raise ValueError("soft_targets: expected values in [0, 1] at the positives")
    return np.where(positive, values, 0.0)


def reduce_loss_sums(sums, box_loss_weight=BOX_LOSS_WEIGHT):
    """Normalise loss sums into the named loss terms (specs/losses.md §6, §7).

    Args:
        sums: one :func:`loss_sums` dict, or a list of them (one per image of a batch);
            a list is added key by key first, so the batch is normalised as a whole.
        box_loss_weight: multiplier of the box term (2.0 for GIoU, as ATSS).

    Returns:
        dict of floats: ``loss_cls = cls / max(num_pos, 1)``;
        ``loss_box = box_loss_weight * box_weighted / box_weight`` (unweighted mean
        ``box_plain / num_pos`` where ``box_weight == 0``; 0 without positives);
        ``loss_quality = quality / max(num_pos, 1)`` when the sums have a quality term.
    """
    if isinstance(sums, (list, tuple)):
        if not sums:
            raise ValueError("sums: expected at least one image")
        keys = set(sums[0])
        if any(set(s) != keys for s in sums):
            raise ValueError("sums: every image must have the same terms")
        sums = {key: sum(s[key] for s in sums) for key in sums[0]}
    normalizer = num_pos_normalizer(sums["num_pos"])
    terms = {
        "loss_cls": sums["cls"] / normalizer,
        "loss_box": box_loss_weight
        * _weighted_mean_of_sums(sums["box_weighted"], sums["box_weight"], sums["box_plain"], sums["num_pos"]),
    }
    if "quality" in sums:
        terms["loss_quality"] = sums["quality"] / normalizer
    return terms


def detection_losses(*args, box_loss_weight=BOX_LOSS_WEIGHT, **kwargs):
    """The loss step of one image: :func:`loss_sums` then :func:`reduce_loss_sums` (specs/losses.md §7).

    Args:
        *args, **kwargs: the arguments of :func:`loss_sums`, by position or by name.
        box_loss_weight: multiplier of the box term, as in :func:`reduce_loss_sums`.

    Returns:
        dict of floats ``loss_cls``, ``loss_box`` and (unless ``quality == "none"``)
        ``loss_quality``; the training objective is their sum.
    """
    return reduce_loss_sums(loss_sums(*args, **kwargs), box_loss_weight)


# ---------------------------------------------------------------------------------------
# helpers


def _sigmoid(x):
    """Stable logistic function: never evaluates exp of a positive number."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _bce(logits, targets):
    return np.maximum(logits, 0.0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))


def _weighted_mean_of_sums(weighted, weight, plain, count):
    if weight > 0:
        return weighted / weight
    if count > 0:
        return plain / count
    return 0.0


def _logits_and_targets(logits, targets):
    logits = as_finite(logits, "logits")
    targets = as_finite(targets, "targets")
    if logits.shape != targets.shape:
        raise ValueError(f"targets: expected shape {logits.shape} to match logits, got {targets.shape}")
    bad = (targets < 0) | (targets > 1)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"targets: element {index} is {targets[index]}, expected a value in [0, 1]")
    return logits, targets


def _probs_and_targets(probs, targets):
    probs = as_finite(probs, "probs")
    targets = as_finite(targets, "targets")
    if probs.shape != targets.shape:
        raise ValueError(f"targets: expected shape {probs.shape} to match probs, got {targets.shape}")
    for name, values in (("probs", probs), ("targets", targets)):
        bad = (values < 0) | (values > 1)
        if bad.any():
            index = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ValueError(f"{name}: element {index} is {values[index]}, expected a value in [0, 1]")
    return probs, targets


def _delta_difference(pred_deltas, target_deltas):
    """|pred - target| of two checked (N, 4) code arrays."""
    pred = as_values(pred_deltas, "pred_deltas", ndim=2, width=4)
    target = as_values(target_deltas, "target_deltas", ndim=2, width=4)
    if target.shape != pred.shape:
        raise ValueError(f"target_deltas: expected shape {pred.shape} to match pred_deltas, got {target.shape}")
    return np.abs(pred - target)


def _check_rows(array, count, name):
    if len(array) != count:
        raise ValueError(f"{name}: expected {count} rows to pair with cls_logits, got {len(array)}")
