"""The batched loss step of the training pipeline (specs/losses.md §7), no reference twin.

``losses.loss_sums`` for a whole batch in one call, with no Python loop over images, GTs
or anchors: (1) targets (:func:`loss_targets_batched`), (2) classification sum, (3) box
losses of positives and their weights, (4) quality BCE of positives; the same steps in the
same order as the single-image twins. The sums are added over the images, so
``losses.reduce_loss_sums`` normalises the batch as a whole (specs/losses.md §6); they
equal the sums of the per-image reference (parity tests).

The classification sums from logits (focal, QFL, VFL) are
``fused_losses.classification_loss_sum`` of the positives' classes and target values
(specs/losses.md §7.1): the dense (B, A, K) class target is never built there.

The GFL / GFLV2 heads have their own step, :func:`gfl_loss_sums_batched` then
:func:`reduce_gfl_loss_sums` (specs/model.md §3.1): QFL on the class score (GFLV2: on the
joint probability), GIoU and DFL over the positives weighted by their detached predicted
score (mmdet's ``GFLHead``), each box term a weighted mean over the batch (specs/losses.md §6).

Sums and terms are 0-d tensors; nothing here synchronises with the device except the input
checks.
"""
import torch
import torch.nn.functional as F

from detector.batched_targets import (
    box_targets_batched,
    centerness_targets_batched,
    class_target_rows_batched,
    dense_class_targets,
    iou_targets_batched,
)
from detector.coders import encode_deltas
from detector.conventions import DELTA_STDS
from detector.fused_losses import classification_loss_sum
from detector.gfl import DFL_LOSS_WEIGHT, REG_MAX, distance_targets, distribution_focal_loss, weighted_dfl
from detector.losses import (
    BOX_LOSS_WEIGHT,
    BOX_LOSSES,
    CLS_LOSSES,
    DELTA_BOX_LOSSES,
    QUALITY_BRANCHES,
    giou_loss,
    iou_loss,
    l1_loss,
    _weighted_mean_of_sums,
    quality_focal_loss_prob_unchecked,
    reduce_loss_sums,
    smooth_l1_loss,
    soft_target_scores,
)
from detector.validation import as_boxes, as_finite, as_values, check_choice
from detector.vfnet import INIT_BOX_LOSS_WEIGHT, REFINE_BOX_LOSS_WEIGHT, vfnet_iou_targets_batched


def loss_targets_batched(
    pred_boxes, centers, matched_gt, gt_boxes, gt_labels, gt_valid, num_classes, cls_loss, quality, dtype,
    soft_targets=None,
):
    """Step 1 of the loss step: every target of a batch, as constants (specs/losses.md §7,
    specs/targets.md §2-§5).

    Args:
        pred_boxes: (B, A, 4) decoded predicted boxes; the IoU target reads them detached.
        centers: (A, 2) shared anchor centres / points, or (B, A, 2).
        matched_gt: (B, A) in {IGNORE, BACKGROUND, 0..G_max-1}; never a padded slot.
        gt_boxes: (B, G_max, 4) xyxy, padded.
        gt_labels: (B, G_max) classes in 0..K-1 at valid slots.
        gt_valid: (B, G_max) bool, or None for all valid.
        num_classes: K >= 1.
        cls_loss: "focal" (hard class targets), "qfl" or "vfl" (soft: the IoU target).
        quality: "centerness", "iou" or "none": the quality target (all ones for "none").
        dtype: floating dtype of the class targets, the label weights and the "none"
            quality target (the dtype of the classification logits).
        soft_targets: (B, A) soft classification targets of "qfl" / "vfl" at the
            positives (``losses.soft_target_scores``), or None for the IoU target.

    Returns:
        cls_targets: (B, A, K) in ``dtype``.
        label_weights: (B, A) in ``dtype``; 0 at IGNORE anchors.
        box_targets: (B, A, 4) in the dtype of ``gt_boxes``; zero rows for non-positives.
        quality_targets: (B, A); the centerness or IoU target, or ones.
        positive: (B, A) bool, on the device of ``pred_boxes``.
    """
    labels, values, label_weights, box_t, quality_t, positive = _loss_targets_sparse(
        pred_boxes, centers, matched_gt, gt_boxes, gt_labels, gt_valid, num_classes, cls_loss, quality, dtype,
        soft_targets,
    )
    return dense_class_targets(labels, values, num_classes), label_weights, box_t, quality_t, positive


def _loss_targets_sparse(
    pred_boxes, centers, matched_gt, gt_boxes, gt_labels, gt_valid, num_classes, cls_loss, quality, dtype,
    soft_targets=None,
):
    """:func:`loss_targets_batched` with the class targets as rows: ``(labels, values,
    label_weights, box_targets, quality_targets, positive)``, ``labels`` / ``values`` (B, A)
    as ``batched_targets.class_target_rows_batched``."""
    check_choice(cls_loss, CLS_LOSSES, "cls_loss")
    check_choice(quality, QUALITY_BRANCHES, "quality")
    ious = iou_targets_batched(pred_boxes, matched_gt, gt_boxes, gt_valid)
    scores = None if cls_loss == "focal" else ious if soft_targets is None else soft_target_scores(soft_targets, matched_gt)
    labels, values, label_weights = class_target_rows_batched(matched_gt, gt_labels, num_classes, scores, gt_valid, dtype=dtype)
    box_t = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    positive = torch.as_tensor(matched_gt, device=pred_boxes.device) >= 0
    if quality == "centerness":
        quality_t = centerness_targets_batched(centers, matched_gt, gt_boxes, gt_valid)
    elif quality == "iou":
        quality_t = ious
    else:
        quality_t = torch.ones(positive.shape, dtype=dtype, device=positive.device)
    return labels, values, label_weights, box_t, quality_t, positive


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
    soft_targets=None,
    box_deltas=None,
    anchors=None,
    delta_stds=DELTA_STDS,
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
        cls_loss, box_loss, quality: as ``losses.loss_sums``.
        soft_targets: (B, A) soft classification targets of "qfl" / "vfl" at the
            positives (an assigner's ``matched_metric``), or None for the IoU target.
        box_deltas: (B, A, 4) raw delta-xywh outputs (decoding to ``pred_boxes``), required
            by the delta box losses "l1" / "smooth_l1" (specs/losses.md §5.1), else ignored.
        anchors: (A, 4) shared anchors of positive size, required by the delta box losses.
        delta_stds: the coder's standard deviations of the delta targets.

    Returns:
        dict of 0-d tensors: ``num_pos`` (int64), ``cls``, ``box_weighted``,
        ``box_weight``, ``box_plain``, and ``quality`` unless ``quality == "none"``;
        ``losses.reduce_loss_sums`` turns it into the batch's loss terms.
    """
    check_choice(cls_loss, CLS_LOSSES, "cls_loss")
    check_choice(box_loss, BOX_LOSSES, "box_loss")
    check_choice(quality, QUALITY_BRANCHES, "quality")
    cls_logits = as_finite(cls_logits, "cls_logits")
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
    if box_loss in DELTA_BOX_LOSSES:
        if box_deltas is None or anchors is None:
            raise ValueError(f"box_deltas, anchors: required when box_loss is {box_loss!r}")
        box_deltas = as_values(box_deltas, "box_deltas", ndim=3, width=4)
        _check_shape(box_deltas, (batch, num_anchors, 4), "box_deltas")
        anchors = as_boxes(anchors, "anchors")
        _check_shape(anchors, (num_anchors, 4), "anchors")

    # 1. targets (constants); the class targets as (class, value) rows
    labels, values, label_weights, box_t, quality_t, positive = _loss_targets_sparse(
        pred_boxes, centers, matched_gt, gt_boxes, gt_labels, gt_valid, num_classes, cls_loss, quality, cls_logits.dtype,
        soft_targets,
    )
    index = torch.nonzero(positive.reshape(-1)).flatten()

    # 2. classification: every anchor and class, IGNORE rows weighted 0 (inputs checked above),
    # fused: the dense one-hot / soft target is never built (specs/losses.md §7.1)
    cls_sum = _fused_classification_sum(cls_logits, label_weights, labels, values, index, cls_loss)

    # 3. box regression: positives, weighted by the quality target
    pos_pred = pred_boxes.reshape(-1, 4).index_select(0, index)
    pos_target = box_t.reshape(-1, 4).index_select(0, index).to(pred_boxes.dtype)
    if box_loss == "giou":
        box_elem = giou_loss(pos_pred, pos_target)
    elif box_loss == "iou":
        box_elem = iou_loss(pos_pred, pos_target)
    else:  # delta-xywh codes of the positives against their GTs encoded on their anchors
        pos_anchors = anchors.index_select(0, index % num_anchors)
        target_deltas = encode_deltas(pos_anchors, pos_target, delta_stds)
        pos_deltas = box_deltas.reshape(-1, 4).index_select(0, index)
        box_elem = l1_loss(pos_deltas, target_deltas) if box_loss == "l1" else smooth_l1_loss(pos_deltas, target_deltas)
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


def detection_losses_batched(*args, box_loss_weight=BOX_LOSS_WEIGHT, **kwargs):
    """The training pipeline's loss step: :func:`loss_sums_batched` then ``losses.reduce_loss_sums``.

    Normalises over the whole batch (specs/losses.md §6).

    Args:
        *args, **kwargs: the arguments of :func:`loss_sums_batched`, by position or by name.
        box_loss_weight: multiplier of the box term, as in ``losses.reduce_loss_sums``.

    Returns:
        dict of 0-d tensors ``loss_cls``, ``loss_box`` (``box_loss_weight`` applied) and,
        unless ``quality == "none"``, ``loss_quality``; the objective is their sum.
    """
    return reduce_loss_sums(loss_sums_batched(*args, **kwargs), box_loss_weight)


# ---------------------------------------------------------------------------------------
# GFL / GFLV2 heads (specs/model.md §3.1, specs/gfl.md §7)


def gfl_loss_sums_batched(
    cls_logits,
    box_logits,
    pred_boxes,
    points,
    strides,
    matched_gt,
    gt_boxes,
    gt_labels,
    gt_valid=None,
    *,
    dgqp_quality=None,
    reg_max=REG_MAX,
    box_loss="giou",
    dfl_weight=DFL_LOSS_WEIGHT,
    soft_targets=None,
):
    """Un-normalised loss sums of a batch for the GFL (``dgqp_quality`` None) or GFLV2 head.

    1. targets as :func:`loss_targets_batched` with "qfl" and no quality branch: the class
       target is one-hot x the IoU of the detached decoded prediction with its GT (or
       ``soft_targets``), the box target the GT;
    2. classification: the score ``p`` is ``sigmoid(cls_logits)`` (GFL: QFL from the logits,
       fused as ``fused_losses.classification_loss_sum``) or the joint
       ``sigmoid(cls_logits) * dgqp_quality`` (GFLV2: QFL of the probability,
       ``losses.quality_focal_loss_prob``), summed over anchors and classes with IGNORE
       rows weighted 0;
    3. each positive's weight ``w = max_k p[a, k]``, detached (mmdet ``weight_targets``);
       the box loss (GIoU, or IoU) of the decoded boxes and the DFL of the distribution
       logits against ``gfl.distance_targets`` of the GT (stride units, clamped to
       ``reg_max - 0.1``), both weighted by ``w``; DFL is ``gfl.weighted_dfl`` (mean over the
       4 sides, times ``dfl_weight``).

    Args:
        cls_logits: (B, A, K) classification logits.
        box_logits: (B, A, 4 * (reg_max + 1)) distribution logits (gradients flow through DFL).
        pred_boxes: (B, A, 4) boxes decoded from ``box_logits`` (gradients flow through the
            box loss; the IoU target reads them detached).
        points: (A, 2) anchor centres; strides: (A,) their levels' strides.
        matched_gt, gt_boxes, gt_labels, gt_valid: as :func:`loss_sums_batched`.
        dgqp_quality: (B, A) GFLV2's DGQP quality in [0, 1], or None (GFL).
        reg_max: largest bin of the distributions.
        box_loss: "giou" or "iou".
        dfl_weight: DFL loss weight (0.25).
        soft_targets: (B, A) soft class targets at the positives, or None for the IoU.

    Returns:
        dict of 0-d tensors: ``num_pos`` (int64), ``cls``, ``box_weighted`` (sum w * box
        loss), ``box_weight`` (sum w), ``box_plain`` (sum of box losses), ``dfl_weighted``
        (``dfl_weight * sum w * mean_s DFL``) and ``dfl_plain`` (the same with w = 1);
        :func:`reduce_gfl_loss_sums` normalises them.
    """
    check_choice(box_loss, ("giou", "iou"), "box_loss")  # decoded-box losses only: the box is the distribution's
    cls_logits = as_finite(cls_logits, "cls_logits")
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits: expected shape (B, A, K), got {tuple(cls_logits.shape)}")
    batch, num_anchors, num_classes = cls_logits.shape
    box_logits = as_finite(box_logits, "box_logits")
    _check_shape(box_logits, (batch, num_anchors, 4 * (reg_max + 1)), "box_logits")
    pred_boxes = as_boxes(pred_boxes, "pred_boxes", batched=True)
    _check_shape(pred_boxes, (batch, num_anchors, 4), "pred_boxes")
    if dgqp_quality is not None:
        dgqp_quality = as_values(dgqp_quality, "dgqp_quality", ndim=2)
        _check_shape(dgqp_quality, (batch, num_anchors), "dgqp_quality")

    # 1. targets (constants); the class targets as (class, value) rows
    labels, values, label_weights, box_t, _, positive = _loss_targets_sparse(
        pred_boxes, points, matched_gt, gt_boxes, gt_labels, gt_valid, num_classes, "qfl", "none", cls_logits.dtype,
        soft_targets,
    )
    index = torch.nonzero(positive.reshape(-1)).flatten()

    # 2. classification on the class score (GFL: fused QFL of the logits, specs/losses.md
    # §7.1) or the joint probability (GFLV2: QFL of the probability, dense)
    if dgqp_quality is None:
        cls_sum = _fused_classification_sum(cls_logits, label_weights, labels, values, index, "qfl")
        pos_scores = torch.sigmoid(cls_logits.detach().reshape(-1, num_classes).index_select(0, index))
    else:
        scores = torch.sigmoid(cls_logits) * dgqp_quality[..., None]
        cls_t = dense_class_targets(labels, values, num_classes)
        cls_sum = (label_weights[..., None] * quality_focal_loss_prob_unchecked(scores, cls_t)).sum()
        pos_scores = scores.detach().reshape(-1, num_classes).index_select(0, index)

    # 3. positives: weights, box loss, DFL
    weights = pos_scores.max(dim=1).values
    pos_pred = pred_boxes.reshape(-1, 4).index_select(0, index)
    pos_target = box_t.reshape(-1, 4).index_select(0, index).to(pred_boxes.dtype)
    box_elem = giou_loss(pos_pred, pos_target) if box_loss == "giou" else iou_loss(pos_pred, pos_target)
    location = index % num_anchors
    pos_points = torch.as_tensor(points, dtype=pred_boxes.dtype, device=pred_boxes.device).index_select(0, location)
    pos_strides = torch.as_tensor(strides, dtype=pred_boxes.dtype, device=pred_boxes.device).index_select(0, location)
    distances = distance_targets(pos_points, pos_strides, pos_target, reg_max)
    pos_logits = box_logits.reshape(-1, 4 * (reg_max + 1)).index_select(0, index)
    dfl = distribution_focal_loss(pos_logits, distances, reg_max)
    weights = weights.to(box_elem.dtype)
    return {
        "num_pos": positive.sum(),
        "cls": cls_sum,
        "box_weighted": (weights * box_elem).sum(),
        "box_weight": weights.sum(),
        "box_plain": box_elem.sum(),
        "dfl_weighted": weighted_dfl(dfl, weights, dfl_weight),
        "dfl_plain": weighted_dfl(dfl, torch.ones_like(weights), dfl_weight),
    }


def reduce_gfl_loss_sums(sums, box_loss_weight=BOX_LOSS_WEIGHT):
    """Normalise :func:`gfl_loss_sums_batched` sums into the GFL head's loss terms.

    ``loss_cls = cls / max(num_pos, 1)``; ``loss_box = box_loss_weight * box_weighted /
    box_weight`` and ``loss_dfl = dfl_weighted / box_weight``: both box terms are means over
    the batch's positives weighted by their predicted scores, with specs/losses.md §6's
    fallbacks (the unweighted means ``box_plain / num_pos``, ``dfl_plain / num_pos`` where
    ``box_weight == 0``; 0 without positives). mmdet's ``GFLHead`` divides by
    ``max(box_weight, 1)`` instead: the same whenever the (process-averaged) sum of the
    weights is at least 1; below 1 its terms are ``box_weight`` times ours.

    Returns:
        dict of 0-d tensors ``loss_cls``, ``loss_box``, ``loss_dfl``; the objective is their sum.
    """
    terms = reduce_loss_sums({key: sums[key] for key in ("num_pos", "cls", "box_weighted", "box_weight", "box_plain")},
                             box_loss_weight)
    count = torch.as_tensor(sums["num_pos"]).to(sums["dfl_plain"].dtype)
    terms["loss_dfl"] = _weighted_mean_of_sums(sums["dfl_weighted"], sums["box_weight"], sums["dfl_plain"], count)
    return terms


# ---------------------------------------------------------------------------------------
# VFNet head (specs/model.md §3.3, specs/vfnet.md §2)


def vfnet_loss_sums_batched(
    cls_logits,
    init_boxes,
    refined_boxes,
    matched_gt,
    gt_boxes,
    gt_labels,
    gt_valid=None,
    *,
    box_loss="giou",
):
    """Un-normalised loss sums of a batch for the VFNet head.

    1. targets (constants): ``vfnet.vfnet_iou_targets_batched`` of the detached refined
       boxes (IoU with the assigned GT, at least 1e-6, at the positives) is VFL's target at
       each positive's class (``vfnet.varifocal_targets_batched``) and the weight of the
       refined box loss; the same IoU of the detached initial boxes weights the initial box
       loss (mmdet ``VFNetHead.loss_by_feat``: ``bbox_weights_ini``, ``bbox_weights_rf``);
    2. classification: VFL (alpha 0.75, gamma 2, IoU-weighted positives) of every location
       and class, IGNORE rows weighted 0 (``fused_losses.classification_loss_sum``);
    3. box losses of the positives: GIoU (or IoU) of the initial and of the refined boxes
       against their GTs.

    Args:
        cls_logits: (B, A, K) IoU-aware classification logits.
        init_boxes: (B, A, 4) decoded initial boxes (gradients flow through their box loss).
        refined_boxes: (B, A, 4) decoded refined boxes (gradients flow through their box loss).
        matched_gt, gt_boxes, gt_labels, gt_valid: as :func:`loss_sums_batched`.
        box_loss: "giou" or "iou".

    Returns:
        dict of 0-d tensors: ``num_pos`` (int64), ``cls``, and for the initial boxes
        ``box_weighted`` (sum w * loss), ``box_weight`` (sum w), ``box_plain`` (sum of
        losses), for the refined boxes ``refine_weighted``, ``refine_weight``,
        ``refine_plain``; :func:`reduce_vfnet_loss_sums` normalises them.
    """
    check_choice(box_loss, ("giou", "iou"), "box_loss")
    cls_logits = as_finite(cls_logits, "cls_logits")
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits: expected shape (B, A, K), got {tuple(cls_logits.shape)}")
    batch, num_anchors, num_classes = cls_logits.shape
    init_boxes = as_boxes(init_boxes, "init_boxes", batched=True)
    _check_shape(init_boxes, (batch, num_anchors, 4), "init_boxes")
    refined_boxes = as_boxes(refined_boxes, "refined_boxes", batched=True)
    _check_shape(refined_boxes, (batch, num_anchors, 4), "refined_boxes")

    # 1. targets (constants)
    refined_ious = vfnet_iou_targets_batched(refined_boxes, matched_gt, gt_boxes, gt_valid)
    init_ious = vfnet_iou_targets_batched(init_boxes, matched_gt, gt_boxes, gt_valid)
    labels, values, label_weights = class_target_rows_batched(matched_gt, gt_labels, num_classes, refined_ious, gt_valid,
                                                             dtype=cls_logits.dtype)
    box_t = box_targets_batched(matched_gt, gt_boxes, gt_valid)
    positive = torch.as_tensor(matched_gt, device=cls_logits.device) >= 0
    index = torch.nonzero(positive.reshape(-1)).flatten()

    # 2. classification (fused VFL, specs/losses.md §7.1)
    cls_sum = _fused_classification_sum(cls_logits, label_weights, labels, values, index, "vfl")

    # 3. box losses of the positives, weighted by their IoU targets
    pos_target = box_t.reshape(-1, 4).index_select(0, index).to(refined_boxes.dtype)
    sums = {"num_pos": positive.sum(), "cls": cls_sum}
    for key, boxes, ious in (("box", init_boxes, init_ious), ("refine", refined_boxes, refined_ious)):
        pos_pred = boxes.reshape(-1, 4).index_select(0, index)
        elem = giou_loss(pos_pred, pos_target) if box_loss == "giou" else iou_loss(pos_pred, pos_target)
        weights = ious.reshape(-1).index_select(0, index).to(elem.dtype)
        sums[f"{key}_weighted"] = (weights * elem).sum()
        sums[f"{key}_weight"] = weights.sum()
        sums[f"{key}_plain"] = elem.sum()
    return sums


def reduce_vfnet_loss_sums(sums, box_loss_weight=INIT_BOX_LOSS_WEIGHT, refine_loss_weight=REFINE_BOX_LOSS_WEIGHT):
    """Normalise :func:`vfnet_loss_sums_batched` sums into the VFNet head's loss terms.

    ``loss_cls = cls / max(num_pos, 1)``; ``loss_box = box_loss_weight * box_weighted /
    box_weight`` (initial boxes, 1.5) and ``loss_box_refine = refine_loss_weight *
    refine_weighted / refine_weight`` (refined boxes, 2.0): means over the batch's positives
    weighted by their IoU targets, with specs/losses.md §6's fallbacks (the unweighted mean
    where a weight sum is 0; 0 without positives). mmdet divides by ``max(sum of weights, 1)``
    instead: the same whenever that sum is at least 1.

    Returns:
        dict of 0-d tensors ``loss_cls``, ``loss_box``, ``loss_box_refine``; the objective is
        their sum.
    """
    terms = reduce_loss_sums({key: sums[key] for key in ("num_pos", "cls", "box_weighted", "box_weight", "box_plain")},
                             box_loss_weight)
    count = torch.as_tensor(sums["num_pos"]).to(sums["refine_plain"].dtype)
    terms["loss_box_refine"] = refine_loss_weight * _weighted_mean_of_sums(
        sums["refine_weighted"], sums["refine_weight"], sums["refine_plain"], count)
    return terms


# ---------------------------------------------------------------------------------------
# helpers


def _fused_classification_sum(cls_logits, label_weights, labels, values, index, cls_loss):
    """Step 2 from logits: ``fused_losses.classification_loss_sum`` of the positives ``index``
    (flat anchor indices) with their classes and target values (specs/losses.md §7.1)."""
    device = cls_logits.device
    index = index.to(device)
    pos_class = labels.reshape(-1).to(device).index_select(0, index)
    pos_target = values.reshape(-1).to(device).index_select(0, index)
    return classification_loss_sum(cls_logits, label_weights.to(device), index, pos_class, pos_target, cls_loss)


def _check_shape(tensor, shape, name):
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} to pair with cls_logits, got {tuple(tensor.shape)}")
