"""Batch plumbing of the detector's assigners (specs/conventions.md §4; no reference twin).

Every ``assign_X_batched`` takes GTs padded to ``(B, G_max, 4)`` with a ``gt_valid
(B, G_max)`` bool mask and anchors or points shared by the batch; every single-image
``assign_X`` runs it on a batch of one (``one_image``). This module holds what that costs
besides the algorithm: checking and converting the padded batch, gathering per-image boxes,
and marking padded slots in the result.
"""
import math

import numpy as np
import torch

from detector.assign.result import Assignment
from detector.validation import as_boxes, check_same_device

#: Default bound on the number of GT x anchor values an anchor-based assigner materialises
#: at once (B * G * A); GTs are processed in chunks above it.
DEFAULT_MAX_ELEMENTS = 2**26


def one_image(assign_batched, shared, gt_boxes, *per_image, **options):
    """Run a batched assigner on one image, every GT valid.

    Args:
        assign_batched: an ``assign_X_batched`` function.
        shared: its arguments before ``gt_boxes`` (the anchors or points, the level counts).
        gt_boxes: (G, 4) xyxy.
        per_image: its per-image arguments after ``gt_valid`` (Dynamic ATSS's ``pred_boxes``
            (A, 4)); each gets a batch dimension of 1.
        options: its keyword arguments.

    Returns:
        the single-image ``Assignment`` (``matched_gt (A,)``, ``gt_threshold (G,)``, ...).
    """
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_valid = torch.ones((1, len(gt_boxes)), dtype=torch.bool, device=gt_boxes.device)
    per_image = [(values if isinstance(values, torch.Tensor) else np.asarray(values))[None] for values in per_image]
    return assign_batched(*shared, gt_boxes[None], gt_valid, *per_image, **options).image(0)


def as_padded_batch(priors, gt_boxes, gt_valid, priors_name="anchors"):
    """Check and convert a padded batch of GTs for checked anchors or points.

    Args:
        priors: (A, 4) anchors or (A, 2) points, already checked (``as_boxes``/``as_points``).
        gt_boxes: (B, G_max, 4) xyxy; slots where ``gt_valid`` is False may hold anything
            (they are zeroed before the check).
        gt_valid: (B, G_max) bool mask (a tensor or array-like).
        priors_name: the name of ``priors`` in error messages.

    Returns:
        ``priors``, ``gt_boxes`` and ``gt_valid`` with priors and GTs in one floating dtype
        (the promotion of both) on the priors' device, padded GT slots zeroed.

    Raises:
        ValueError: ``gt_valid`` not a (B, G_max) bool mask; ``gt_boxes`` not (B, G_max, 4)
            or a bad valid box (names the first bad ``(image, slot)``); a tensor on the meta
            device, or on another device than ``priors``.
    """
    check_same_device(gt_boxes, priors, "gt_boxes", priors_name)
    check_same_device(gt_valid, priors, "gt_valid", priors_name)
    gt_valid = torch.as_tensor(gt_valid)
    if gt_valid.dtype != torch.bool or gt_valid.ndim != 2:
        raise ValueError(f"gt_valid: expected a (B, G_max) bool mask, got {gt_valid.dtype} {tuple(gt_valid.shape)}")
    gt_boxes = gt_boxes if isinstance(gt_boxes, torch.Tensor) else torch.as_tensor(gt_boxes)
    if gt_boxes.ndim != 3 or gt_boxes.shape[-1] != 4 or tuple(gt_boxes.shape[:2]) != tuple(gt_valid.shape):
        expected = f"(B, G_max, 4) matching gt_valid {tuple(gt_valid.shape)}"
        raise ValueError(f"gt_boxes: expected shape {expected}, got {tuple(gt_boxes.shape)}")
    gt_valid = gt_valid.to(gt_boxes.device)
    if gt_boxes.is_floating_point():
        zero = torch.zeros((), dtype=gt_boxes.dtype, device=gt_boxes.device)
        gt_boxes = torch.where(gt_valid[..., None], gt_boxes, zero)
    else:
        gt_boxes = gt_boxes * gt_valid[..., None]
    gt_boxes = as_boxes(gt_boxes, "gt_boxes", batched=True)
    dtype = torch.promote_types(priors.dtype, gt_boxes.dtype)
    return priors.to(dtype), gt_boxes.to(device=priors.device, dtype=dtype), gt_valid.to(priors.device)


def gather_boxes(boxes, candidate_index):
    """Boxes of the candidates: (A, 4) shared or (B, A, 4) per image, with (B, G, C)
    candidate indices -> (B, G, C, 4)."""
    if boxes.ndim == 2:
        return boxes[candidate_index]
    batch = torch.arange(boxes.shape[0], device=boxes.device)[:, None, None]
    return boxes[batch, candidate_index]


def finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid):
    """The batched ``Assignment``; padded GT slots get threshold NaN and candidates -1
    (specs/conventions.md §4).

    Args:
        matched_gt: (B, A) int64; matched_metric: (B, A); threshold: (B, G_max);
        candidate_index: (B, G_max, C) int64; gt_valid: (B, G_max) bool.
    """
    threshold = torch.where(gt_valid, threshold, math.nan)
    candidate_index = torch.where(gt_valid[..., None], candidate_index, -1)
    return Assignment(matched_gt, matched_metric, threshold, candidate_index)


def sequential_sum(values):
    """Sum over the last dimension, strictly left to right, on every device: (..., C) -> (...).

    The references sum candidates in order (``np.cumsum(...)[..., -1]``); torch's CPU
    ``cumsum`` does the same, but CUDA's is a parallel scan whose rounding differs, which
    moved float64 ATSS thresholds by an ulp on a GPU (a GT whose candidates all had one IoU
    lost every positive). Off the CPU the C additions are done one column at a time (C is
    the number of candidates of a GT: a few dozen at most).
    """
    if values.shape[-1] == 0:
        return values.sum(dim=-1)
    if values.device.type == "cpu":
        return values.cumsum(dim=-1)[..., -1]
    return column_by_column_sum(values)


def column_by_column_sum(values):
    """(..., C) -> (...): ``((v0 + v1) + v2) + ...``, one column at a time (C >= 1)."""
    total = values[..., 0]
    for column in range(1, values.shape[-1]):
        total = total + values[..., column]
    return total
