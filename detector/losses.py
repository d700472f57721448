"""Detection losses (specs/losses.md). Twin of ``reference/losses.py``.

Elementwise losses from logits in BCE-with-logits form (finite values and gradients in
float32 for any finite logit), explicit normalisation, and the batched loss step with no
Python loop over images, GTs or anchors. Sums and terms are 0-d tensors; nothing here
synchronises with the device except the input checks.
"""
import torch
import torch.nn.functional as F
import torchvision

from detector.boxes import aligned_box_giou, aligned_box_iou
from detector.targets import (
    box_targets_batched,
    centerness_targets_batched,
    class_targets_batched,
    iou_targets_batched,
)
from detector.validation import as_boxes, as_values

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
BOX_LOSSES = ("giou", "iou")
QUALITY_BRANCHES = ("centerness", "iou", "none")


# ---------------------------------------------------------------------------------------
# elementwise losses (specs/losses.md §1-§5)


def bce_with_logits(logits, targets):
    """Binary cross-entropy from logits, elementwise (specs/losses.md §1).

    Args:
        logits: any shape, finite.
        targets: same shape, values in [0, 1].

    Returns:
        tensor of that shape (``F.binary_cross_entropy_with_logits``, reduction "none").
    """
    logits, targets = _logits_and_targets(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def sigmoid_focal_loss(logits, targets, alpha=FOCAL_ALPHA, gamma=FOCAL_GAMMA):
    """Sigmoid focal loss, elementwise (specs/losses.md §2): ``torchvision.ops.sigmoid_focal_loss``.

    Args:
        logits: any shape, finite.
        targets: same shape, in [0, 1].
        alpha: weight of the positive side in [0, 1], or None for no alpha weighting.
        gamma: focusing exponent >= 0.

    Returns:
        tensor of that shape, >= 0.
    """
    logits, targets = _logits_and_targets(logits, targets)
    _check_exponent(gamma, "gamma")
    if alpha is not None:
        _check_unit(alpha, "alpha")
    return _focal(logits, targets, alpha, gamma)


def quality_focal_loss(logits, targets, beta=QFL_BETA):
    """Quality focal loss, elementwise: ``|y - s(x)| ** beta * BCE(x, y)`` (specs/losses.md §3).

    The modulating factor is not detached (mmdet). Never ``-inf``: no ``log(sigmoid)``.
    """
    logits, targets = _logits_and_targets(logits, targets)
    _check_exponent(beta, "beta")
    return _qfl(logits, targets, beta)


def varifocal_loss(logits, targets, alpha=VFL_ALPHA, gamma=VFL_GAMMA, iou_weighted=True):
    """Varifocal loss, elementwise (specs/losses.md §4).

    ``w * BCE(x, y)`` with ``w = y`` (or 1) where ``y > 0`` and ``alpha * s(x) ** gamma``
    where ``y == 0``; the weight is not detached (mmdet).
    """
    logits, targets = _logits_and_targets(logits, targets)
    _check_exponent(gamma, "gamma")
    _check_exponent(alpha, "alpha")
    return _vfl(logits, targets, alpha, gamma, iou_weighted)


def iou_loss(pred_boxes, target_boxes, mode="log", eps=IOU_LOSS_EPS):
    """IoU loss of row-aligned boxes (specs/losses.md §5).

    ``"log"``: ``-ln(max(IoU, eps))``; ``"linear"``: ``1 - IoU``. Finite values and
    gradients for zero-area and identical boxes.

    Args:
        pred_boxes: (N, 4) xyxy.
        target_boxes: (N, 4) xyxy.
        mode: "log" or "linear".
        eps: lower clamp of the IoU in "log" mode.

    Returns:
        (N,) >= 0.
    """
    if mode not in ("log", "linear"):
        raise ValueError(f"mode: expected 'log' or 'linear', got {mode!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive value, got {eps!r}")
    iou = aligned_box_iou(as_boxes(pred_boxes, "pred_boxes"), as_boxes(target_boxes, "target_boxes"))
    if mode == "log":
        return -torch.log(iou.clamp(min=eps))
    return 1.0 - iou


def giou_loss(pred_boxes, target_boxes):
    """GIoU loss of row-aligned boxes, ``1 - GIoU`` (specs/losses.md §5).

    Returns:
        (N,) in [0, 2].
    """
    return 1.0 - aligned_box_giou(as_boxes(pred_boxes, "pred_boxes"), as_boxes(target_boxes, "target_boxes"))


# ---------------------------------------------------------------------------------------
# normalisation (specs/losses.md §6)


def num_pos_normalizer(num_pos):
    """``max(num_pos, 1)`` as a float tensor (specs/losses.md §6); ``num_pos`` counts the batch."""
    num_pos = torch.as_tensor(num_pos)
    if bool(num_pos < 0):
        raise ValueError(f"num_pos: expected a count >= 0, got {num_pos!r}")
    return num_pos.to(torch.get_default_dtype() if not num_pos.is_floating_point() else num_pos.dtype).clamp(min=1)


def weighted_mean(values, weights):
    """``sum(w * v) / sum(w)``; the unweighted mean where ``sum(w) == 0``; 0 for empty input (specs/losses.md §6).

    Args:
        values: (N,) losses.
        weights: (N,) weights >= 0.

    Returns:
        0-d tensor.
    """
    values = as_values(values, "values", ndim=1)
    weights = as_values(weights, "weights", ndim=1)
    if len(values) != len(weights):
        raise ValueError(f"weights: expected {len(values)} values, got {len(weights)}")
    count = torch.tensor(float(len(values)), dtype=values.dtype, device=values.device)
    return _weighted_mean_of_sums((weights * values).sum(), weights.sum(), values.sum(), count)


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
):
    """Un-normalised loss sums of one image (specs/losses.md §7): :func:`loss_sums_batched` on a batch of one.

    Args:
        cls_logits: (A, K). pred_boxes: (A, 4) decoded. quality_logits: (A,) or None.
        centers: (A, 2). matched_gt: (A,). gt_boxes: (G, 4). gt_labels: (G,).

    Returns:
        dict of 0-d tensors ``num_pos``, ``cls``, ``box_weighted``, ``box_weight``,
        ``box_plain`` and (unless ``quality == "none"``) ``quality``.
    """
    cls_logits = as_values(cls_logits, "cls_logits", ndim=2)
    pred_boxes = as_boxes(pred_boxes, "pred_boxes")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    if quality_logits is not None:
        quality_logits = as_values(quality_logits, "quality_logits", ndim=1)[None]
    gt_labels = torch.as_tensor(gt_labels)
    if gt_labels.ndim != 1:
        raise ValueError(f"gt_labels: expected shape (G,), got {tuple(gt_labels.shape)}")
    matched_gt = torch.as_tensor(matched_gt)
    if matched_gt.ndim != 1:
        raise ValueError(f"matched_gt: expected shape (A,), got {tuple(matched_gt.shape)}")
    return loss_sums_batched(
        cls_logits[None],
        pred_boxes[None],
        quality_logits,
        centers,
        matched_gt[None],
        gt_boxes[None],
        gt_labels[None],
        None,
        cls_loss,
        box_loss,
        quality,
    )


def reduce_loss_sums(sums, box_loss_weight=BOX_LOSS_WEIGHT):
    """Normalise loss sums into the named loss terms (specs/losses.md §6, §7).

    Args:
        sums: one :func:`loss_sums` / :func:`loss_sums_batched` dict, or a list of them
            (added key by key first).
        box_loss_weight: multiplier of the box term.

    Returns:
        dict of 0-d tensors ``loss_cls``, ``loss_box`` and, when present, ``loss_quality``.
    """
    if isinstance(sums, (list, tuple)):
        if not sums:
            raise ValueError("sums: expected at least one image")
        keys = set(sums[0])
        if any(set(s) != keys for s in sums):
            raise ValueError("sums: every image must have the same terms")
        sums = {key: sum(s[key] for s in sums) for key in sums[0]}
    normalizer = num_pos_normalizer(sums["num_pos"]).to(sums["cls"].dtype)
    count = sums["num_pos"].to(sums["cls"].dtype)
    terms = {
        "loss_cls": sums["cls"] / normalizer,
        "loss_box": box_loss_weight
        * _weighted_mean_of_sums(sums["box_weighted"], sums["box_weight"], sums["box_plain"], count),
    }
    if "quality" in sums:
        terms["loss_quality"] = sums["quality"] / normalizer
    return terms


def detection_losses(
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
    box_loss_weight=BOX_LOSS_WEIGHT,
):
    """The loss step of one image: :func:`loss_sums` then :func:`reduce_loss_sums` (specs/losses.md §7)."""
    sums = loss_sums(
        cls_logits, pred_boxes, quality_logits, centers, matched_gt, gt_boxes, gt_labels, cls_loss, box_loss, quality
    )
    return reduce_loss_sums(sums, box_loss_weight)


# ---------------------------------------------------------------------------------------
# batched loss step (no reference twin)


def loss_sums_batched(
    cls_logits,
    pred_boxes,
    quality_logits,
    centers,
    matched_gt,
    gt_boxes,
    gt_labels,
    gt_valid=None,
    cls_loss="focal",
    box_loss="giou",
    quality="centerness",
):
    """Un-normalised loss sums of a batch, added over its images (specs/losses.md §7).

    Args:
        cls_logits: (B, A, K) classification logits.
        pred_boxes: (B, A, 4) decoded predicted boxes (gradients flow through the box loss).
        quality_logits: (B, A) quality-branch logits, or None when ``quality == "none"``.
        centers: (A, 2) shared anchor centres / points, or (B, A, 2).
        matched_gt: (B, A) in {IGNORE, BACKGROUND, 0..G_max-1}; never a padded slot.
        gt_boxes: (B, G_max, 4) xyxy, padded.
        gt_labels: (B, G_max) classes in 0..K-1 at valid slots.
        gt_valid: (B, G_max) bool, or None for all valid.
        cls_loss, box_loss, quality: as :func:`loss_sums`.

    Returns:
        dict of 0-d tensors: ``num_pos`` (int64), ``cls``, ``box_weighted``,
        ``box_weight``, ``box_plain``, and ``quality`` unless ``quality == "none"``;
        :func:`reduce_loss_sums` turns it into the batch's loss terms.
    """
    _check_choice(cls_loss, CLS_LOSSES, "cls_loss")
    _check_choice(box_loss, BOX_LOSSES, "box_loss")
    _check_choice(quality, QUALITY_BRANCHES, "quality")
    cls_logits = _as_finite(cls_logits, "cls_logits")
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits: expected shape (B, A, K), got {tuple(cls_logits.shape)}")
    batch, num_anchors, num_classes = cls_logits.shape
    pred_boxes = as_boxes(pred_boxes, "pred_boxes", batched=True)
    _check_shape(pred_boxes, (batch, num_anchors, 4), "pred_boxes")
    if quality == "none":
        if quality_logits is not None:
            raise ValueError("quality_logits: expected None when quality is 'none'")
    else:
        if quality_logits is None:
            raise ValueError(f"quality_logits: required when quality is {quality!r}")
        quality_logits = as_values(quality_logits, "quality_logits", ndim=2)
        _check_shape(quality_logits, (batch, num_anchors), "quality_logits")
    dtype = cls_logits.dtype

    # 1. targets (constants)
    ious = iou_targets_batched(pred_boxes, matched_gt, gt_boxes, gt_valid)
    scores = None if cls_loss == "focal" else ious
    cls_t, label_weights = class_targets_batched(matched_gt, gt_labels, num_classes, scores, gt_valid, dtype=dtype)
    box_t = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    positive = torch.as_tensor(matched_gt, device=cls_logits.device) >= 0
    if quality == "centerness":
        quality_t = centerness_targets_batched(centers, matched_gt, gt_boxes, gt_valid)
    elif quality == "iou":
        quality_t = ious
    else:
        quality_t = torch.ones(batch, num_anchors, dtype=dtype, device=cls_logits.device)

    # 2. classification: every anchor and class, IGNORE rows weighted 0 (inputs checked above)
    if cls_loss == "focal":
        cls_elem = _focal(cls_logits, cls_t, FOCAL_ALPHA, FOCAL_GAMMA)
    elif cls_loss == "qfl":
        cls_elem = _qfl(cls_logits, cls_t, QFL_BETA)
    else:
        cls_elem = _vfl(cls_logits, cls_t, VFL_ALPHA, VFL_GAMMA, True)
    cls_sum = (label_weights[..., None] * cls_elem).sum()

    # 3. box regression: positives, weighted by the quality target
    index = torch.nonzero(positive.reshape(-1)).flatten()
    pos_pred = pred_boxes.reshape(-1, 4).index_select(0, index)
    pos_target = box_t.reshape(-1, 4).index_select(0, index).to(pred_boxes.dtype)
    if box_loss == "giou":
        box_elem = giou_loss(pos_pred, pos_target)
    else:
        box_elem = iou_loss(pos_pred, pos_target)
    weights = quality_t.reshape(-1).index_select(0, index).to(box_elem.dtype)

    sums = {
        "num_pos": positive.sum(),
        "cls": cls_sum,
        "box_weighted": (weights * box_elem).sum(),
        "box_weight": weights.sum(),
        "box_plain": box_elem.sum(),
    }
    # 4. quality branch: BCE over positives
    if quality != "none":
        pos_logits = quality_logits.reshape(-1).index_select(0, index)
        pos_quality_t = quality_t.reshape(-1).index_select(0, index).to(quality_logits.dtype)
        sums["quality"] = F.binary_cross_entropy_with_logits(pos_logits, pos_quality_t, reduction="sum")
    return sums


def detection_losses_batched(
    cls_logits,
    pred_boxes,
    quality_logits,
    centers,
    matched_gt,
    gt_boxes,
    gt_labels,
    gt_valid=None,
    cls_loss="focal",
    box_loss="giou",
    quality="centerness",
    box_loss_weight=BOX_LOSS_WEIGHT,
):
    """The training pipeline's loss step: :func:`loss_sums_batched` then :func:`reduce_loss_sums`.

    Normalises over the whole batch (specs/losses.md §6). Returns a dict of 0-d tensors
    ``loss_cls``, ``loss_box`` (``box_loss_weight`` applied) and, unless
    ``quality == "none"``, ``loss_quality``; the objective is their sum.
    """
    sums = loss_sums_batched(
        cls_logits, pred_boxes, quality_logits, centers, matched_gt, gt_boxes, gt_labels, gt_valid, cls_loss, box_loss, quality
    )
    return reduce_loss_sums(sums, box_loss_weight)


# ---------------------------------------------------------------------------------------
# helpers


def _weighted_mean_of_sums(weighted, weight, plain, count):
    """weighted / weight; plain / count where weight == 0; 0 where count == 0 (grad-safe wheres)."""
    has_weight = weight > 0
    has_count = count > 0
    mean_weighted = weighted / torch.where(has_weight, weight, torch.ones_like(weight))
    mean_plain = plain / torch.where(has_count, count, torch.ones_like(count))
    return torch.where(has_weight, mean_weighted, torch.where(has_count, mean_plain, torch.zeros_like(mean_plain)))


def _focal(logits, targets, alpha, gamma):
    return torchvision.ops.sigmoid_focal_loss(
        logits, targets, alpha=-1.0 if alpha is None else float(alpha), gamma=float(gamma), reduction="none"
    )


def _qfl(logits, targets, beta):
    modulator = (targets - torch.sigmoid(logits)).abs().pow(beta)
    return modulator * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def _vfl(logits, targets, alpha, gamma, iou_weighted):
    positive_weight = targets if iou_weighted else torch.ones_like(targets)
    weight = torch.where(targets > 0, positive_weight, alpha * torch.sigmoid(logits).pow(gamma))
    return weight * F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def _logits_and_targets(logits, targets):
    logits = _as_finite(logits, "logits")
    targets = _as_finite(targets, "targets").to(logits.dtype)
    if logits.shape != targets.shape:
        raise ValueError(f"targets: expected shape {tuple(logits.shape)} to match logits, got {tuple(targets.shape)}")
    bad = (targets < 0) | (targets > 1)
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise ValueError(f"targets: element {index} is {float(targets[index])}, expected a value in [0, 1]")
    return logits, targets


def _as_finite(values, name):
    tensor = torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    # fast path: one reduction; a finite sum proves every element finite
    if tensor.numel() and bool(torch.isfinite(tensor.sum())):
        return tensor
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise ValueError(f"{name}: element {index} is NaN or Inf")
    return tensor


def _check_exponent(value, name):
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and 0 <= value < float("inf")):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")


def _check_unit(value, name):
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"{name}: expected a value in [0, 1] or None, got {value!r}")


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _check_shape(tensor, shape, name):
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to pair with cls_logits, got {tuple(tensor.shape)}")
