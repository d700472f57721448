"""The training objective of a dense detector: one home for the loss step (specs/model.md §4).

``DetectionObjective`` turns head outputs and padded targets into the batch's loss terms,
in this order:

1. decode every prediction once (float32); the assigner and the targets read the
   detached copy, the box loss the original (gradients flow through it);
2. assign (no gradient), with the assigner of the config's table row
   (``detector/modeling/assigners.py``);
3. mark background locations inside ignore regions as IGNORE (crowd boxes, if any);
4. loss sums over the batch (``loss_step.loss_sums_batched``);
5. normalise (``losses.reduce_loss_sums``), with the normalisers averaged over processes
   in a data-parallel run;
6. diagnostics of the assignment (``assignment_diagnostics``, no gradient): GTs left
   without a positive, the mean prior IoU and predicted IoU of the positives, and for
   Dynamic ATSS the overlap of its positives with plain ATSS's at the same step.

The GFL / GFLV2 heads (``head_type``) decode their distribution logits in step 1
(``Priors.decode``), so every assigner (Dynamic ATSS included) reads the boxes of the
distribution; steps 4-5 are then ``loss_step.gfl_loss_sums_batched`` and
``loss_step.reduce_gfl_loss_sums`` (terms ``loss_cls``, ``loss_box``, ``loss_dfl``), and
GFLV2's joint score ``sigmoid(cls) * dgqp_quality`` is the class score everywhere (the QFL
prediction, the box weights, and the scores of assigners that read them).

The VFNet head (``head_type="vfnet"``) decodes its refined boxes in step 1
(``Priors.decode``): the assigner (Dynamic ATSS included), the diagnostics and VFL's IoU
target read them, detached; steps 4-5 are ``loss_step.vfnet_loss_sums_batched`` and
``loss_step.reduce_vfnet_loss_sums`` (terms ``loss_cls``, ``loss_box`` on the initial boxes,
``loss_box_refine``), and ``box_loss_pos`` is the mean box loss of the refined boxes.

The optimisation loop (``detector/engine.py``) calls it through ``Detector.losses`` and
knows nothing of these steps.
"""
import dataclasses
import math
from typing import NamedTuple

import torch

from detector import loss_step, losses
from detector.assign.atss import assign_atss_batched
from detector.batched_targets import ignore_regions_batched
from detector.boxes import aligned_box_iou_unchecked
from detector.gfl import REG_MAX
from detector.modeling.assigners import ASSIGNERS, DynamicAtssOptions, assign
from detector.pseudo_iou import pseudo_iou_algorithm1


class LossOutput(NamedTuple):
    """What the objective computed for one batch.

    Attributes:
        terms: dict of 0-d tensors ``loss_cls``, ``loss_box`` (box weight applied) and,
            with a quality branch, ``loss_quality`` (GFL / GFLV2: ``loss_dfl`` instead);
            the objective is their sum.
        num_pos: 0-d int64 tensor, positives in the batch (this process).
        box_loss_pos: 0-d float64 tensor, the unweighted mean box loss of the positives
            (the Dynamic ATSS paper's Figure 3 quantity; 0 without positives).
        assignment: the batched ``Assignment`` the losses were computed with (matched_gt
            (B, A), IGNORE inside ignore regions).
        diagnostics: dict of 0-d float64 tensors (``assignment_diagnostics``); empty when
            the objective was built with ``diagnostics=False``.
    """

    terms: dict
    num_pos: torch.Tensor
    box_loss_pos: torch.Tensor
    assignment: object
    diagnostics: dict


class DetectionObjective:
    """The loss step of a config, built once (see the module docstring).

    Args:
        assign_options: ``Config.assign``, the options of one row of ``ASSIGNERS``.
        loss: ``Config.loss`` (classification loss, box loss, box loss weight, and where
            "qfl" / "vfl" take their soft target: ``soft_target``).
        quality: ``Config.head.quality`` ("centerness", "iou" or "none").
        diagnostics: compute ``assignment_diagnostics`` every step.
        head_type: ``Config.head.type`` (``modeling.head.HEAD_TYPES``): "gfl" and "gflv2"
            train with the GFL loss step (QFL, GIoU and DFL).
        reg_max: largest bin of the GFL / GFLV2 distributions.
    """

    def __init__(self, assign_options, loss, quality, diagnostics=True, *, head_type="atss", reg_max=REG_MAX):
        self.assign_options = assign_options
        self.cls_loss = loss.cls
        self.box_loss = loss.box
        self.box_weight = loss.box_weight
        self.quality = quality
        self.soft_target = loss.soft_target
        self.uses_scores = ASSIGNERS[assign_options.name].uses_scores
        self.diagnostics = diagnostics
        self.head_type = head_type
        self.reg_max = reg_max

    def __call__(self, priors, outputs, targets, *, iteration=0, max_iterations=1, all_reduce_mean=None):
        """Loss terms of one batch.

        Args:
            priors: ``Priors`` of the batch (A locations).
            outputs: ``HeadOutputs``: cls_logits (B, A, K), box_regression (B, A, 4) (GFL /
                GFLV2: (B, A, 4 * (reg_max + 1)) logits), quality_logits (B, A) or None,
                dgqp_quality (B, A) (GFLV2) or None; finite.
            targets: ``PaddedTargets``: gt_boxes (B, G_max, 4), gt_labels (B, G_max),
                gt_valid (B, G_max), ignore_boxes (B, R_max, 4), ignore_valid (B, R_max).
            iteration, max_iterations: the step (0-based) of the run, for scheduled options.
            all_reduce_mean: None, or the mean over processes of a tensor (data-parallel).

        Returns:
            ``LossOutput``.
        """
        # 1. decode once (GFL / GFLV2: the integral of the distribution, Priors.reg_max)
        box_regression = outputs.box_regression.float()
        pred_boxes = priors.decode(box_regression)  # (B, A, 4)
        dgqp_quality = outputs.dgqp_quality.float() if outputs.dgqp_quality is not None else None
        # 2. assign and 3. ignore regions (constants for the loss)
        with torch.no_grad():
            pred_scores = None
            if self.uses_scores:  # (B, A, K); GFLV2: the joint score
                pred_scores = outputs.cls_logits.detach().float().sigmoid()
                if dgqp_quality is not None:
                    pred_scores = pred_scores * dgqp_quality.detach()[..., None]
            assignment = assign(self.assign_options, priors, targets, pred_boxes.detach(), iteration, max_iterations,
                                pred_scores=pred_scores)
            assignment = apply_ignore_regions(priors, assignment, targets)
        # 4. loss sums
        soft_targets = assignment.matched_metric if self.soft_target == "assigner" else None
        if self.head_type == "vfnet":  # initial and refined boxes (specs/model.md §3.3)
            sums = loss_step.vfnet_loss_sums_batched(
                outputs.cls_logits.float(), priors.decode_initial(box_regression), pred_boxes, assignment.matched_gt,
                targets.gt_boxes, targets.gt_labels, targets.gt_valid, box_loss=self.box_loss,
            )
        elif self.head_type in ("gfl", "gflv2"):
            sums = loss_step.gfl_loss_sums_batched(
                outputs.cls_logits.float(), box_regression, pred_boxes, priors.points, priors.strides,
                assignment.matched_gt, targets.gt_boxes, targets.gt_labels, targets.gt_valid,
                dgqp_quality=dgqp_quality, reg_max=self.reg_max, box_loss=self.box_loss, soft_targets=soft_targets,
            )
        else:
            quality_logits = outputs.quality_logits.float() if outputs.quality_logits is not None else None
            sums = loss_step.loss_sums_batched(
                outputs.cls_logits.float(), pred_boxes, quality_logits, priors.points, assignment.matched_gt,
                targets.gt_boxes, targets.gt_labels, targets.gt_valid,
                cls_loss=self.cls_loss, box_loss=self.box_loss, quality=self.quality, soft_targets=soft_targets,
                # the delta box losses ("l1", "smooth_l1") read the raw codes and the anchors
                box_deltas=box_regression if self.box_loss in losses.DELTA_BOX_LOSSES else None,
                anchors=priors.anchors, delta_stds=priors.delta_stds,
            )
        num_pos = sums["num_pos"]
        plain = sums["refine_plain" if self.head_type == "vfnet" else "box_plain"]  # VFNet: the refined boxes
        box_loss_pos = plain.detach().double() / num_pos.clamp(min=1)  # float64: as Python floats
        # 5. normalise; data-parallel runs divide by the normalisers' mean over processes
        if all_reduce_mean is not None:
            sums = dict(sums)
            for key in ("num_pos", "box_weight", "refine_weight"):
                if key not in sums:
                    continue
                sums[key] = all_reduce_mean(torch.as_tensor(sums[key], dtype=torch.float32, device=sums["cls"].device))
        if self.head_type == "vfnet":
            terms = loss_step.reduce_vfnet_loss_sums(sums, box_loss_weight=self.box_weight)
        elif self.head_type in ("gfl", "gflv2"):
            terms = loss_step.reduce_gfl_loss_sums(sums, box_loss_weight=self.box_weight)
        else:
            terms = losses.reduce_loss_sums(sums, box_loss_weight=self.box_weight)
        # 6. diagnostics
        diagnostics = {}
        if self.diagnostics:
            with torch.no_grad():
                diagnostics = assignment_diagnostics(priors, assignment, targets, pred_boxes.detach(), self.assign_options)
        return LossOutput(terms, num_pos, box_loss_pos, assignment, diagnostics)


def apply_ignore_regions(priors, assignment, targets):
    """Mark background locations inside the batch's ignore regions as IGNORE
    (specs/targets.md §8, specs/training.md §2 ``data.crowd``).

    The regions are ``targets.ignore_boxes`` (B, R_max, 4) with ``targets.ignore_valid``
    (B, R_max) (COCO crowd boxes of ``CocoDetection(..., crowd="ignore")`` in the resized
    image frame, padded by ``data.collate.pad_targets``); the test point of a location is
    its centre (``priors.points``).

    Returns:
        ``assignment`` itself when no image has an ignore region (nothing changes), else a
        copy whose ``matched_gt`` (B, A) has IGNORE at those locations (``matched_metric`` is
        already 0 there: they were background).
    """
    if targets.ignore_boxes.shape[1] == 0:
        return assignment
    ignore_boxes = targets.ignore_boxes.to(device=assignment.matched_gt.device, dtype=priors.points.dtype)
    ignore_valid = targets.ignore_valid.to(assignment.matched_gt.device)
    matched_gt = ignore_regions_batched(assignment.matched_gt, priors.points, ignore_boxes, ignore_valid)
    return dataclasses.replace(assignment, matched_gt=matched_gt)


def assignment_diagnostics(priors, assignment, targets, pred_boxes, assign_options=None):
    """What an assignment did to a batch (specs/model.md §4.6), as 0-d float64 tensors.

    Args:
        priors: ``Priors`` of the batch.
        assignment: batched ``Assignment`` (matched_gt (B, A)).
        targets: ``PaddedTargets`` (gt_boxes (B, G_max, 4), gt_valid (B, G_max)).
        pred_boxes: (B, A, 4) decoded, detached predicted boxes.
        assign_options: the assigner's options; with ``DynamicAtssOptions`` plain ATSS
            (same ``topk``) also runs, for ``jaccard_vs_atss``.

    Returns:
        dict with
        ``gts_without_pos_per_image``: valid GTs that no location is assigned to, per image
        (the Pseudo-IoU paper's explanation of the collapse at high thresholds);
        ``mean_prior_iou_pos``: mean over positives of the IoU of the prior with its GT (the
        anchor box; for points the Pseudo-IoU, the IoU of a GT-sized box at the point);
        ``mean_pred_iou_pos``: mean over positives of the IoU of the predicted box with its
        GT (0 for a non-finite prediction);
        ``jaccard_vs_atss`` (Dynamic ATSS only): |D ∩ S| / |D ∪ S| of the (location, GT)
        positives D of the assignment and S of plain ATSS on the same batch (1 when both
        are empty).
        Means over no positives are NaN.
    """
    matched = assignment.matched_gt
    batch = matched.shape[0]
    image, location = (matched >= 0).nonzero(as_tuple=True)
    gt_index = matched[image, location]
    gt_boxes = targets.gt_boxes.to(pred_boxes.dtype)[image, gt_index]  # (P, 4)
    has_positive = torch.zeros(targets.gt_valid.shape, dtype=torch.bool, device=matched.device)
    has_positive[image, gt_index] = True
    without = (targets.gt_valid.to(matched.device) & ~has_positive).sum()
    if priors.anchors is not None:
        prior_ious = aligned_box_iou_unchecked(priors.anchors[location], gt_boxes)
    else:
        points = priors.points[location]
        ltrb = torch.stack([points[:, 0] - gt_boxes[:, 0], points[:, 1] - gt_boxes[:, 1],
                            gt_boxes[:, 2] - points[:, 0], gt_boxes[:, 3] - points[:, 1]], dim=1)
        prior_ious = pseudo_iou_algorithm1(ltrb)
    predicted = pred_boxes[image, location]
    finite = torch.isfinite(predicted).all(dim=1)
    pred_ious = torch.where(finite, aligned_box_iou_unchecked(torch.where(finite[:, None], predicted, 0.0), gt_boxes), 0.0)
    count = image.numel()
    diagnostics = {
        "gts_without_pos_per_image": without.double() / max(batch, 1),
        "mean_prior_iou_pos": prior_ious.double().sum() / count if count else torch.tensor(math.nan, dtype=torch.float64),
        "mean_pred_iou_pos": pred_ious.double().sum() / count if count else torch.tensor(math.nan, dtype=torch.float64),
    }
    if isinstance(assign_options, DynamicAtssOptions):
        atss = assign_atss_batched(priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid,
                                   topk=assign_options.topk).matched_gt
        dynamic = matched.clamp(min=-1)  # IGNORE (crowd regions) counts as not positive
        both = ((dynamic == atss) & (atss >= 0)).sum()
        either = ((dynamic >= 0) | (atss >= 0)).sum()
        diagnostics["jaccard_vs_atss"] = both.double() / either if int(either) else torch.tensor(1.0, dtype=torch.float64)
    return diagnostics
