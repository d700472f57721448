"""Max-IoU assignment, as in RetinaNet (specs/max_iou.md). Twin of ``reference/assign/max_iou.py``.

Batched over images; GTs are processed in chunks when B * G * A exceeds ``max_elements``
(the per-anchor maxima are merged with a strict ``>``, so the lower GT index still wins
ties).
"""
import math

import torch

from detector.assign.atss import DEFAULT_MAX_ELEMENTS, aligned_iou, check_max_elements, finish_batch, prepare_batch
from detector.conventions import BACKGROUND, IGNORE
from detector.validation import as_boxes

#: GTs are processed in chunks of at most this many (GT, anchor) values even under a larger
#: ``max_elements``: chunks that fit in the CPU cache made the dense IoU passes 2-4x faster
#: on an 800x1333 scene (docs/benchmarks.md). The result does not depend on the chunking.
CACHE_FRIENDLY_ELEMENTS = 2**18


def assign_max_iou(
    anchors,
    gt_boxes,
    *,
    pos_iou_thr=0.5,
    neg_iou_thr=0.4,
    min_pos_iou=0.0,
    match_low_quality=False,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Max-IoU assignment for one image (specs/max_iou.md §2).

    Args:
        anchors: (A, 4); gt_boxes: (G, 4); thresholds and ``match_low_quality`` as the
            reference; max_elements: bound on B * G * A values held at once.

    Returns:
        Assignment: matched_gt (A,) int64 in {-2, -1, 0..G-1}, matched_metric (A,) IoU,
        gt_threshold (G,) = pos_iou_thr, candidate_index (G, 0).
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_valid = torch.ones(gt_boxes.shape[:1], dtype=torch.bool, device=gt_boxes.device)
    result = assign_max_iou_batched(
        anchors,
        gt_boxes[None],
        gt_valid[None],
        pos_iou_thr=pos_iou_thr,
        neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou,
        match_low_quality=match_low_quality,
        max_elements=max_elements,
    )
    return result.image(0)


def assign_max_iou_batched(
    anchors,
    gt_boxes,
    gt_valid,
    *,
    pos_iou_thr=0.5,
    neg_iou_thr=0.4,
    min_pos_iou=0.0,
    match_low_quality=False,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Max-IoU assignment for a batch sharing one set of anchors (specs/max_iou.md §2).

    Args:
        anchors: (A, 4); gt_boxes: (B, G_max, 4) padded; gt_valid: (B, G_max) bool.

    Returns:
        Assignment with matched_gt (B, A), matched_metric (B, A), gt_threshold (B, G_max)
        (``pos_iou_thr``; NaN for padded slots), candidate_index (B, G_max, 0).
    """
    anchors, gt_boxes, gt_valid, _ = prepare_batch(anchors, [len(anchors)], gt_boxes, gt_valid)
    pos_iou_thr = check_finite(pos_iou_thr, "pos_iou_thr")
    neg_iou_thr = check_finite(neg_iou_thr, "neg_iou_thr")
    min_pos_iou = check_finite(min_pos_iou, "min_pos_iou")
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"neg_iou_thr: expected <= pos_iou_thr = {pos_iou_thr}, got {neg_iou_thr}")
    if not isinstance(match_low_quality, bool):
        raise ValueError(f"match_low_quality: expected a bool, got {match_low_quality!r}")
    max_elements = check_max_elements(max_elements)
    batch, num_gts = gt_boxes.shape[:2]
    num_anchors = anchors.shape[0]
    device, dtype = anchors.device, anchors.dtype
    with torch.no_grad():
        best_iou = torch.full((batch, num_anchors), -math.inf, dtype=dtype, device=device)
        best_gt = torch.zeros((batch, num_anchors), dtype=torch.int64, device=device)
        claim_iou = torch.full((batch, num_anchors), -math.inf, dtype=dtype, device=device)
        claim_gt = torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=device)
        chunk = max(1, min(max_elements, CACHE_FRIENDLY_ELEMENTS) // max(1, batch * num_anchors))
        for first in range(0, num_gts, chunk):
            ious = _pairwise_ious(gt_boxes[:, first : first + chunk], anchors, gt_valid[:, first : first + chunk])
            chunk_iou, chunk_gt = best_gt_per_anchor(ious)
            best_iou, best_gt = _merge_best(best_iou, best_gt, chunk_iou, chunk_gt + first)
            if match_low_quality:
                chunk_iou, chunk_gt = _best_claim(ious, low_quality_claims(ious, min_pos_iou))
                claim_iou, claim_gt = _merge_best(claim_iou, claim_gt, chunk_iou, chunk_gt + first)
            del ious
        matched_gt = apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr)
        matched_metric = torch.where(matched_gt >= 0, best_iou, 0.0)
        if match_low_quality:
            matched_gt, matched_metric = _override(claim_iou, claim_gt, matched_gt, matched_metric)
        threshold = torch.full((batch, num_gts), pos_iou_thr, dtype=dtype, device=device)
        candidate_index = torch.zeros((batch, num_gts, 0), dtype=torch.int64, device=device)
        return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers on (B, G, A) IoUs


def best_gt_per_anchor(ious):
    """Each anchor's best GT (specs/max_iou.md §2.1).

    Args:
        ious: (B, G, A) (padded GT rows hold -inf).

    Returns:
        best_iou (B, A) and best_gt (B, A) int64: the first (lowest) GT index on ties.
    """
    if ious.shape[1] == 0:
        shape = (ious.shape[0], ious.shape[2])
        return torch.full(shape, -math.inf, dtype=ious.dtype, device=ious.device), torch.zeros(shape, dtype=torch.int64, device=ious.device)
    best_iou, best_gt = ious.max(dim=1)  # torch.max returns the first maximal index
    return best_iou, best_gt


def apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr):
    """Positive (``>= pos``) / background (``< neg``) / IGNORE (specs/max_iou.md §2.2).

    Args:
        best_iou: (B, A); best_gt: (B, A) int64; thresholds: floats.

    Returns:
        (B, A) int64.
    """
    matched_gt = torch.full_like(best_gt, IGNORE)
    matched_gt = torch.where(best_iou < neg_iou_thr, BACKGROUND, matched_gt)
    return torch.where(best_iou >= pos_iou_thr, best_gt, matched_gt)


def low_quality_claims(ious, min_pos_iou):
    """(B, G, A) bool: GT g claims every anchor tied at its best IoU ``m_g`` when
    ``m_g >= min_pos_iou`` and ``m_g > 0`` (specs/max_iou.md §2.3)."""
    if ious.shape[2] == 0:
        return torch.zeros(ious.shape, dtype=torch.bool, device=ious.device)
    gt_max = ious.amax(dim=2, keepdim=True)
    eligible = (gt_max >= min_pos_iou) & (gt_max > 0)
    return eligible & (ious == gt_max)


def apply_low_quality_matches(ious, claims, matched_gt, matched_metric):
    """Claimed anchors go to the claimant with the highest IoU, lower GT index on ties,
    overriding the thresholds (specs/max_iou.md §2.3).

    Args:
        ious: (B, G, A); claims: (B, G, A) bool; matched_gt: (B, A) int64;
        matched_metric: (B, A).

    Returns:
        matched_gt (B, A) int64 and matched_metric (B, A), updated.
    """
    claim_iou, claim_gt = _best_claim(ious, claims)
    return _override(claim_iou, claim_gt, matched_gt, matched_metric)


def check_finite(value, name):
    """``value`` must be a finite real number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _pairwise_ious(gt_boxes, anchors, gt_valid):
    """(B, g, 4), (A, 4), (B, g) -> (B, g, A) IoUs; -inf on padded GT rows."""
    ious = aligned_iou(gt_boxes[:, :, None, :], anchors[None, None, :, :])
    return torch.where(gt_valid[..., None], ious, -math.inf)


def _best_claim(ious, claims):
    """Per anchor, the best claiming GT: (claim IoU or -inf, GT index, first on ties)."""
    return best_gt_per_anchor(torch.where(claims, ious, -math.inf))


def _merge_best(best, best_index, candidate, candidate_index):
    """Keep the running maximum; a later chunk (higher GT indices) wins only if strictly better."""
    better = candidate > best
    return torch.where(better, candidate, best), torch.where(better, candidate_index, best_index)


def _override(claim_iou, claim_gt, matched_gt, matched_metric):
    claimed = claim_iou > -math.inf
    return torch.where(claimed, claim_gt, matched_gt), torch.where(claimed, claim_iou, matched_metric)
