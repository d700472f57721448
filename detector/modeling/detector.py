"""The detector: backbone + FPN + shared head, and the glue from head outputs to the
assigners, the loss step and post-processing (specs/model.md).

This module only wires components together. Assignment lives in ``detector/assign``,
targets and losses in ``detector/targets.py`` / ``detector/losses.py``, post-processing in
``detector/postprocess.py``; nothing here re-implements them.
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from detector.anchors import multi_level_anchors, multi_level_points
from detector.coders import decode_deltas_unchecked, decode_ltrb_unchecked
from detector.conventions import FCOS_REGRESS_RANGES
from detector.modeling.backbone import build_backbone
from detector.modeling.fpn import FPN
from detector.modeling.head import DenseHead


class Priors(NamedTuple):
    """Anchors/points of one padded image size, shared by the batch.

    Attributes:
        anchors: (A, 4) xyxy squares of side ``anchor_scale * stride`` (anchor-based), else None.
        points: (A, 2) anchor centres / points ``((i + 0.5) * stride)``.
        strides: (A,) stride of each location's level.
        num_per_level: L ints summing to A.
    """

    anchors: Optional[torch.Tensor]
    points: torch.Tensor
    strides: torch.Tensor
    num_per_level: list


class Detector(nn.Module):
    """Dense detector of a ``Config`` (anchor-based or anchor-free head)."""

    def __init__(self, config, num_classes):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.strides = config.strides
        self.backbone = build_backbone(config.backbone)
        self.fpn = FPN(self.backbone.out_channels, config.fpn.out_channels, config.fpn.levels, config.fpn.p6p7_input)
        head = config.head
        self.head = DenseHead(
            config.fpn.out_channels, num_classes, len(config.fpn.levels), width=head.width, depth=head.depth,
            gn_groups=head.gn_groups, family=head.family, quality=head.quality != "none", prior_prob=head.prior_prob,
        )

    def forward(self, images):
        """images (B, 3, H, W), H and W multiples of the largest stride -> ``HeadOutputs``."""
        return self.head(self.fpn(self.backbone(images)))

    def priors(self, image_size, feature_sizes=None, *, device=None, dtype=torch.float32):
        """``Priors`` of a padded image of ``image_size`` (H, W).

        ``feature_sizes`` (from ``HeadOutputs``) are checked against the anchor grid, so a
        batch whose size is not a multiple of the largest stride fails loudly instead of
        pairing predictions with the wrong anchors.
        """
        points, point_strides, num_per_level = multi_level_points(image_size, self.strides, device=device, dtype=dtype)
        anchors = None
        if self.config.head.family == "anchor_based":
            anchors, _ = multi_level_anchors(image_size, self.strides, self.config.head.anchor_scale, device=device, dtype=dtype)
        if feature_sizes is not None:
            expected = [h * w for h, w in feature_sizes]
            if expected != list(num_per_level):
                raise ValueError(f"image_size {tuple(image_size)}: feature maps {feature_sizes} do not match the "
                                 f"anchor grid {num_per_level}; pad images to a multiple of {max(self.strides)}")
        return Priors(anchors, points, point_strides, list(num_per_level))


def decode_boxes(config, priors, box_regression):
    """Decode (B, A, 4) regression outputs into xyxy boxes (B, A, 4) (specs/coders.md)."""
    if config.head.family == "anchor_based":
        return decode_deltas_unchecked(priors.anchors, box_regression)
    return decode_ltrb_unchecked(priors.points, box_regression, priors.strides)


def regress_ranges(config):
    """(lo, hi) per level: ``assign.regress_ranges`` or FCOS's ranges of the chosen levels
    with the last upper bound raised to infinity (every object gets a level)."""
    if config.assign.regress_ranges is not None:
        flat = list(config.assign.regress_ranges)
        return tuple((float(flat[2 * i]), float(flat[2 * i + 1])) for i in range(len(flat) // 2))
    ranges = [FCOS_REGRESS_RANGES[level - 3] for level in config.fpn.levels]
    ranges[-1] = (ranges[-1][0], math.inf)
    return tuple(ranges)


def assign_batch(config, priors, outputs, targets, iteration=0, max_iterations=1):
    """Run the configured batched assigner (specs/model.md §4).

    Args:
        config: the run's ``Config``.
        priors: ``Priors`` of the batch.
        outputs: ``HeadOutputs`` (Dynamic ATSS reads the detached box regression).
        targets: ``PaddedTargets`` (gt_boxes (B, G_max, 4), gt_labels, gt_valid (B, G_max)).
        iteration, max_iterations: for Dynamic ATSS's D_up / D_down weights.

    Returns:
        a batched ``Assignment`` (matched_gt (B, A)).
    """
    import importlib

    a = config.assign
    family = "anchor_free" if config.head.family == "anchor_free" else a.name
    module = importlib.import_module(f"detector.assign.{family}")
    gt_boxes, gt_valid = targets.gt_boxes, targets.gt_valid
    with torch.no_grad():
        if config.head.family == "anchor_based":
            anchors = priors.anchors
            if a.name == "atss":
                return module.assign_atss_batched(anchors, priors.num_per_level, gt_boxes, gt_valid, topk=a.topk)
            if a.name == "dynamic_atss":
                pred_weight, anchor_weight = dynamic_weights(config, iteration, max_iterations)
                return module.assign_dynamic_atss_batched(
                    anchors, priors.num_per_level, gt_boxes, gt_valid, outputs.box_regression.detach(),
                    topk=a.topk, pred_weight=pred_weight, anchor_weight=anchor_weight,
                )
            if a.name == "max_iou":
                return module.assign_max_iou_batched(anchors, gt_boxes, gt_valid, pos_iou_thr=a.pos_iou_thr,
                                                      neg_iou_thr=a.neg_iou_thr)
        else:
            common = dict(strides=config.strides, regress_ranges=regress_ranges(config))
            args = (priors.points, priors.num_per_level, gt_boxes, gt_valid)
            if a.name == "all_inside":
                return module.assign_all_inside_batched(*args, **common)
            if a.name == "pseudo_iou":
                return module.assign_pseudo_iou_batched(*args, **common, threshold=a.piou_threshold)
            if a.name == "scaled_box":
                return module.assign_scaled_box_batched(*args, **common, scale=a.box_scale)
            if a.name == "centerness":
                return module.assign_centerness_batched(*args, **common, threshold=a.centerness_threshold)
            if a.name == "fcos":
                return module.assign_fcos_batched(*args, **common, center_sampling=a.center_sampling,
                                                       center_radius=a.center_radius)
    raise ValueError(f"assign.name: unknown assigner {a.name!r} for head.family={config.head.family!r}")


def apply_ignore_regions(priors, assignment, target_dicts):
    """Mark background anchors inside the batch's ignore regions as IGNORE
    (specs/targets.md §8, specs/training.md §2 ``data.crowd``).

    Runs between ``assign_batch`` and ``loss_sums``. The regions are the per-image
    ``target["ignore_boxes"]`` (COCO crowd boxes of ``CocoDetection(..., crowd="ignore")``,
    in the resized image frame), padded with ``data.collate.pad_boxes``; the test point of
    an anchor is its centre (``priors.points``).

    Args:
        priors: ``Priors`` of the batch.
        assignment: a batched ``Assignment`` (matched_gt (B, A)).
        target_dicts: the B target dicts of the batch.

    Returns:
        ``assignment`` itself when no image carries an ignore box (nothing changes), else a
        copy whose ``matched_gt`` has IGNORE at those anchors (``matched_metric`` is already
        0 there: they were background).
    """
    import dataclasses

    from detector.data.collate import pad_boxes
    from detector.targets import ignore_regions_batched

    regions = [t.get("ignore_boxes") for t in target_dicts]
    if not any(r is not None and len(r) > 0 for r in regions):
        return assignment
    regions = [torch.zeros(0, 4) if r is None else torch.as_tensor(r).reshape(-1, 4) for r in regions]
    device = assignment.matched_gt.device
    ignore_boxes, ignore_valid = pad_boxes([r.to(priors.points.dtype) for r in regions], device=device)
    matched_gt = ignore_regions_batched(assignment.matched_gt, priors.points, ignore_boxes, ignore_valid)
    return dataclasses.replace(assignment, matched_gt=matched_gt)


def dynamic_weights(config, iteration, max_iterations):
    """(w_p, w_a) of Dynamic ATSS at ``iteration`` (specs/dynamic_atss.md §5)."""
    from detector.assign.dynamic_atss import dynamic_weight

    a = config.assign
    weights = []
    for base, schedule in ((a.pred_weight, a.pred_weight_schedule), (a.anchor_weight, a.anchor_weight_schedule)):
        factor = 1.0 if schedule == "constant" else dynamic_weight(schedule, min(iteration, max_iterations), max_iterations)
        weights.append(base * factor)
    return tuple(weights)


def loss_sums(config, priors, outputs, targets, assignment):
    """The batch's loss sums (specs/losses.md §7) from the head outputs and an assignment.

    Returns:
        (sums, pred_boxes): the dict of ``losses.loss_sums_batched`` (tensors) and the
        decoded (B, A, 4) predicted boxes.
    """
    from detector import losses

    pred_boxes = decode_boxes(config, priors, outputs.box_regression.float())
    sums = losses.loss_sums_batched(
        outputs.cls_logits.float(), pred_boxes,
        outputs.quality_logits.float() if outputs.quality_logits is not None else None,
        priors.points, assignment.matched_gt, targets.gt_boxes, targets.gt_labels, targets.gt_valid,
        cls_loss=config.loss.cls, box_loss=config.loss.box, quality=config.head.quality,
    )
    return sums, pred_boxes


def reduce_loss_sums(config, sums, all_reduce_mean=None):
    """Normalise loss sums into loss terms (specs/losses.md §6).

    ``all_reduce_mean`` (data-parallel runs) averages a tensor over processes; it is applied
    to the normalisers ``num_pos`` and ``box_weight`` (and ``box_plain``'s count), as the
    official ATSS / Dynamic ATSS code does, so every process divides by the global mean.
    """
    from detector import losses

    if all_reduce_mean is not None:
        sums = dict(sums)
        for key in ("num_pos", "box_weight"):
            sums[key] = all_reduce_mean(torch.as_tensor(sums[key], dtype=torch.float32,
                                                        device=sums["cls"].device))
    return losses.reduce_loss_sums(sums, box_loss_weight=config.loss.box_weight)


def predict(config, priors, outputs, image_sizes):
    """Detections of every image of a batch (specs/model.md §5, specs/postprocess.md).

    Args:
        image_sizes: B (H_b, W_b) unpadded sizes; boxes are clipped to them.

    Returns:
        list of B ``Detections`` (boxes (D, 4) in the resized-image frame, scores, labels).
    """
    from detector import postprocess

    inf = config.inference
    results = []
    for b, size in enumerate(image_sizes):
        regression = outputs.box_regression[b].float()
        if config.head.family == "anchor_based":
            def decode(index, codes):
                return decode_deltas_unchecked(priors.anchors[index], codes)
        else:
            def decode(index, codes):
                return decode_ltrb_unchecked(priors.points[index], codes, priors.strides[index])
        results.append(postprocess.postprocess(
            outputs.cls_logits[b].float(), regression,
            outputs.quality_logits[b].float() if outputs.quality_logits is not None else None,
            priors.num_per_level, decode=decode, image_size=tuple(size), score_mode=inf.score_mode,
            score_threshold=inf.score_threshold, pre_nms_top_k=inf.pre_nms_top_k, nms_threshold=inf.nms_threshold,
            max_detections=inf.max_detections,
        ))
    return results
