"""The detector: backbone + FPN + shared head, its priors, its training losses and its
detections (specs/model.md).

This module only wires components together. The training objective (assign, ignore
regions, loss sums, normalisation) is ``detector/modeling/objective.py``; the assigners
are chosen from the table in ``detector/modeling/assigners.py``; post-processing is
``detector/postprocess.py``; nothing here re-implements them.
"""
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from detector.anchors import multi_level_anchors, multi_level_points
from detector.coders import decode_deltas_unchecked, decode_ltrb_unchecked
from detector.conventions import DEFAULT_ANCHOR_RATIOS, DEFAULT_ANCHOR_SCALES, DELTA_STDS
from detector.gfl import decode_distribution
from detector.modeling.backbone import build_backbone
from detector.modeling.fpn import FPN
from detector.modeling.head import DenseHead
from detector.modeling.objective import DetectionObjective
from detector.modeling.vfnet_head import VFNetHead
from detector.postprocess import postprocess


@dataclass(frozen=True)
class Priors:
    """Anchors/points of one padded image size, shared by the batch, and their box decoder.

    Attributes:
        anchors: (A, 4) xyxy anchors (anchor-based), else None: ``n`` per location of sides
            ``anchor_scale * stride * scale`` and aspect ratios ``h / w`` (``head.anchor_scales``,
            ``head.anchor_ratios``; one square by default), in (level, row, column, anchor)
            order (specs/anchors.md §3).
        points: (A, 2) anchor centres / points ``((i + 0.5) * stride)``, one row per anchor
            (a location's point repeated for each of its anchors).
        strides: (A,) stride of each anchor's / point's level.
        num_per_level: L ints summing to A (anchors: ``H_l * W_l * n``).
        levels: the L pyramid levels (stride ``2 ** level``).
        reg_max: GFL / GFLV2 heads: the largest bin of their distributions; the box outputs
            are then ``4 * (reg_max + 1)`` logits decoded by ``detector.gfl.decode_distribution``
            from the anchor centres (``points``) in stride units. None for the other heads.
        refined_ltrb: VFNet head (specs/model.md §3.3): the box outputs are (..., 8), the
            initial then the refined (l, t, r, b) in strides from the points; ``decode`` and
            ``decode_at`` return the refined boxes (the initial ones: ``decode_initial``).
    """

    anchors: Optional[torch.Tensor]
    points: torch.Tensor
    strides: torch.Tensor
    num_per_level: list
    levels: tuple
    reg_max: Optional[int] = None
    delta_stds: tuple = DELTA_STDS
    refined_ltrb: bool = False

    @property
    def level_strides(self):
        """The L strides, e.g. (8, 16, 32)."""
        return tuple(2**level for level in self.levels)

    def decode(self, box_regression):
        """Boxes of every location: (..., A, C) head outputs -> (..., A, 4) xyxy
        (delta-xywh on the anchors, or stride-normalised ltrb from the points, C = 4;
        specs/coders.md; or, with ``reg_max``, the integral of the C = 4 * (reg_max + 1)
        distribution logits from the anchor centres, specs/gfl.md §2)."""
        if self.reg_max is not None:
            return decode_distribution(self.points, self.strides, box_regression, self.reg_max)
        if self.refined_ltrb:
            return decode_ltrb_unchecked(self.points, box_regression[..., 4:], self.strides)
        if self.anchors is not None:
            return decode_deltas_unchecked(self.anchors, box_regression, self.delta_stds)
        return decode_ltrb_unchecked(self.points, box_regression, self.strides)

    def decode_at(self, index, box_regression):
        """Boxes of some locations: index (N,) int64, box_regression (N, C) -> (N, 4) xyxy."""
        if self.reg_max is not None:
            return decode_distribution(self.points[index], self.strides[index], box_regression, self.reg_max)
        if self.refined_ltrb:
            return decode_ltrb_unchecked(self.points[index], box_regression[..., 4:], self.strides[index])
        if self.anchors is not None:
            return decode_deltas_unchecked(self.anchors[index], box_regression, self.delta_stds)
        return decode_ltrb_unchecked(self.points[index], box_regression, self.strides[index])

    def decode_initial(self, box_regression):
        """VFNet (``refined_ltrb``): the initial boxes, (..., A, 8) outputs -> (..., A, 4) xyxy."""
        if not self.refined_ltrb:
            raise ValueError("decode_initial: only the VFNet head (refined_ltrb) has initial boxes")
        return decode_ltrb_unchecked(self.points, box_regression[..., :4], self.strides)


#: How many (image size, feature sizes, device, dtype) keys ``Detector.priors`` keeps.
PRIORS_CACHE_SIZE = 16


class Detector(nn.Module):
    """Dense detector of a ``Config`` (anchor-based or anchor-free head)."""

    def __init__(self, config, num_classes):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.levels = tuple(config.fpn.levels)
        self.backbone = build_backbone(config.backbone)
        self.fpn = FPN(self.backbone.out_channels, config.fpn.out_channels, config.fpn.levels, config.fpn.p6p7_input)
        head = config.head
        if head.type == "vfnet":  # specs/model.md §3.3
            self.head = VFNetHead(config.fpn.out_channels, num_classes, config.strides, width=head.width,
                                  depth=head.depth, gn_groups=head.gn_groups, prior_prob=head.prior_prob, norm=head.norm)
        else:
            self.head = DenseHead(
                config.fpn.out_channels, num_classes, len(config.fpn.levels), width=head.width, depth=head.depth,
                gn_groups=head.gn_groups, family=head.family, quality=head.quality != "none",
                prior_prob=head.prior_prob, head_type=head.type, reg_max=head.reg_max,
                num_anchors=anchors_per_location(head), norm=head.norm,
            )
        self.objective = DetectionObjective(config.assign, config.loss, head.quality, diagnostics=config.diagnostics,
                                            head_type=head.type, reg_max=head.reg_max)
        self._priors_cache = {}  # see ``priors``

    def forward(self, images):
        """images (B, 3, H, W), H and W multiples of the largest stride -> ``HeadOutputs``."""
        return self.head(self.fpn(self.backbone(images)))

    def priors(self, image_size, feature_sizes=None, *, device=None, dtype=torch.float32):
        """``Priors`` of a padded image of ``image_size`` (H, W).

        ``feature_sizes`` (from ``HeadOutputs``) are checked against ``image_size`` by the
        generators, so a batch whose size is not a multiple of the largest stride fails
        loudly instead of pairing predictions with the wrong anchors.

        The priors of the last ``PRIORS_CACHE_SIZE`` (size, device, dtype) keys are kept, so
        that every step of a run hands the assigners the same tensors and what they derive
        from them is computed once (``detector/assign/memo.py``); nothing writes to them.
        """
        key = (tuple(image_size), None if feature_sizes is None else tuple(map(tuple, feature_sizes)),
               torch.device(device) if device is not None else None, dtype)
        cache = self._priors_cache
        if key not in cache:
            if len(cache) >= PRIORS_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[key] = build_priors(self.config, image_size, feature_sizes, device=device, dtype=dtype)
        return cache[key]

    def losses(self, outputs, targets, image_size, *, iteration=0, max_iterations=1, all_reduce_mean=None):
        """The training objective of a batch (specs/model.md §4): ``DetectionObjective``
        on this model's priors for the padded ``image_size`` (H, W).

        Args:
            outputs: ``HeadOutputs`` of ``forward`` (finite).
            targets: ``PaddedTargets`` of the batch (GTs and ignore regions, padded).
            iteration, max_iterations: the step (0-based) and the run's length, for
                scheduled assigner options (Dynamic ATSS's D_up / D_down).
            all_reduce_mean: in a data-parallel run, the mean over processes of a tensor.

        Returns:
            ``LossOutput`` (terms, diagnostics and the assignment).
        """
        priors = self.priors(image_size, outputs.feature_sizes, device=outputs.cls_logits.device)
        return self.objective(priors, outputs, targets, iteration=iteration, max_iterations=max_iterations,
                              all_reduce_mean=all_reduce_mean)

    def predict(self, outputs, image_size, image_sizes):
        """Detections of every image of a batch (specs/model.md §5, specs/postprocess.md).

        Args:
            outputs: ``HeadOutputs`` of ``forward``.
            image_size: the padded (H, W) of the batch.
            image_sizes: B (H_b, W_b) unpadded sizes; boxes are clipped to them.

        Returns:
            list of B ``Detections`` (boxes (D, 4) in the resized-image frame, scores, labels).

        GFL / GFLV2 (``priors.reg_max``): every location's box is decoded first (the
        distribution logits are not 4 values wide) and passed as boxes. GFLV2 scores with
        the joint probability ``sigmoid(cls) * dgqp_quality`` (``score_mode = "cls"``: the
        threshold, the ranking and the final score all read it, as GFocalV2), passed to
        post-processing as its logit (:func:`joint_score_logits`). VFNet (``priors.refined_ltrb``):
        the refined boxes, decoded first, scored by the IoU-aware classification score
        ``sigmoid(cls_logits)`` (``score_mode = "cls"``).
        """
        priors = self.priors(image_size, outputs.feature_sizes, device=outputs.cls_logits.device)
        inf = self.config.inference
        results = []
        for b, size in enumerate(image_sizes):
            cls_logits = outputs.cls_logits[b].float()
            if outputs.dgqp_quality is not None:
                cls_logits = joint_score_logits(cls_logits, outputs.dgqp_quality[b].float())
            box_regression, decode = outputs.box_regression[b].float(), priors.decode_at
            if priors.reg_max is not None or priors.refined_ltrb:  # VFNet: the refined boxes (8 values wide)
                box_regression, decode = priors.decode(box_regression), None
            results.append(postprocess(
                cls_logits, box_regression,
                outputs.quality_logits[b].float() if outputs.quality_logits is not None else None,
                priors.num_per_level, decode=decode, image_size=tuple(size), score_mode=inf.score_mode,
                score_threshold=inf.score_threshold, pre_nms_top_k=inf.pre_nms_top_k, nms_threshold=inf.nms_threshold,
                max_detections=inf.max_detections,
            ))
        return results


def build_priors(config, image_size, feature_sizes=None, *, device=None, dtype=torch.float32):
    """The ``Priors`` of ``config`` for a padded image of ``image_size`` (H, W) (see
    ``Detector.priors``; also used without a network, by ``detector.explain``)."""
    levels = tuple(config.fpn.levels)
    strides = tuple(2**level for level in levels)
    points, point_strides, num_per_level = multi_level_points(image_size, strides, level_sizes=feature_sizes,
                                                              device=device, dtype=dtype)
    anchors = None
    head = config.head
    if head.family == "anchor_based":
        n = anchors_per_location(head)
        if tuple(head.anchor_scales) == DEFAULT_ANCHOR_SCALES and tuple(head.anchor_ratios) == DEFAULT_ANCHOR_RATIOS:
            # one square anchor per location: the same call as before anchor shapes were configurable
            anchors, _ = multi_level_anchors(image_size, strides, head.anchor_scale, level_sizes=feature_sizes,
                                             device=device, dtype=dtype)
        else:  # n anchors per location: each location's point and stride n times
            anchors, num_per_level = multi_level_anchors(
                image_size, strides, head.anchor_scale, level_sizes=feature_sizes, scales=head.anchor_scales,
                ratios=head.anchor_ratios, device=device, dtype=dtype)
            points = points.repeat_interleave(n, dim=0)
            point_strides = point_strides.repeat_interleave(n, dim=0)
    reg_max = head.reg_max if head.type in ("gfl", "gflv2") else None
    return Priors(anchors, points, point_strides, list(num_per_level), levels, reg_max, tuple(head.delta_stds),
                  refined_ltrb=head.type == "vfnet")


def anchors_per_location(head):
    """``n``, the anchors per location of a ``HeadConfig``: ``len(anchor_scales) *
    len(anchor_ratios)`` for an anchor-based head, 1 for an anchor-free one."""
    if head.family != "anchor_based":
        return 1
    return len(head.anchor_scales) * len(head.anchor_ratios)


#: Joint-score logits are clamped to this magnitude: sigmoid of it is 0 or 1 in float32.
JOINT_LOGIT_LIMIT = 1.0e4


def joint_score_logits(cls_logits, quality):
    """``logit(sigmoid(cls_logits) * quality[..., None])``: GFLV2's joint probability as a logit.

    Post-processing takes logits and applies the sigmoid; this hands it the joint score.
    Computed in float64 (``sigmoid`` of the result equals the float32 product to rounding)
    and clamped to +-``JOINT_LOGIT_LIMIT`` where the probability is 0 or 1.

    Args:
        cls_logits: (..., A, K) classification logits.
        quality: (..., A) DGQP quality in [0, 1].

    Returns:
        (..., A, K) logits in the dtype of ``cls_logits``.
    """
    joint = torch.sigmoid(cls_logits.double()) * quality.double()[..., None]
    return torch.logit(joint).clamp(-JOINT_LOGIT_LIMIT, JOINT_LOGIT_LIMIT).to(cls_logits.dtype)
