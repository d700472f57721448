"""Max-IoU assignment, as in RetinaNet (specs/max_iou.md).

Each anchor looks at its best GT (highest IoU, lower GT index on ties): IoU >= pos_iou_thr
makes it positive, IoU < neg_iou_thr background, anything in between IGNORE. Optionally,
every GT also claims its best anchors ("low-quality matches"), which override the
thresholds.

Twin of ``reference/assign/max_iou.py``; ``assign_max_iou_batched`` holds the algorithm
and ``assign_max_iou`` runs it on one image, as in ``assign/atss.py``. The (B, G, A) IoUs
exist one chunk of GTs at a time when B * G * A exceeds ``max_elements``
(``_best_in_chunks``: the per-anchor maxima are merged with a strict ``>``, so the lower GT
index still wins ties). On anchors that form row-major grids of boxes (generated anchors,
1 or 9 per location) only the (GT, anchor) pairs that can change the result are evaluated,
those whose boxes overlap enough (``detector/assign/max_iou_windows.py``; specs/max_iou.md
§7): the same assignment, exactly.
"""
import math

import torch

from detector.assign.batching import DEFAULT_MAX_ELEMENTS, as_padded_batch, finish_batch, one_image
from detector.assign.memo import shared_boxes
from detector.assign.max_iou_windows import best_on_windows, cached_anchor_box_grids
from detector.boxes import aligned_box_iou_unchecked
from detector.conventions import BACKGROUND, IGNORE
from detector.validation import check_bool, check_choice, check_max_elements, check_number

#: GTs are processed in chunks of at most this many (GT, anchor) values even under a larger
#: ``max_elements``: chunks that fit in the CPU cache made the dense IoU passes 2-4x faster
#: on an 800x1333 scene (docs/benchmarks.md). The result does not depend on the chunking.
CACHE_FRIENDLY_ELEMENTS = 2**18

#: How ``assign_max_iou_batched`` finds the IoUs (specs/max_iou.md §7): "dense" computes
#: every (GT, anchor) IoU; "windows" only those of the pairs that can matter, when the
#: anchors form row-major grids of boxes (dense otherwise); "auto" is "windows" from
#: ``WINDOWS_MIN_ELEMENTS`` dense IoUs (B * G_max * A) on, "dense" below.
SEARCHES = ("auto", "windows", "dense")

#: Below this many dense IoUs the dense path is faster than the windows' fixed cost
#: (about 1 ms on one CPU thread; the measured crossover lies between 2^16 and 2^17).
WINDOWS_MIN_ELEMENTS = 2**16


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
    """Assign anchors to GTs by maximum IoU (specs/max_iou.md §2).

    Args:
        anchors: (A, 4) xyxy.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (IoU 0 with everything).
        pos_iou_thr: an anchor whose best IoU is ``>= pos_iou_thr`` is positive.
        neg_iou_thr: an anchor whose best IoU is ``< neg_iou_thr`` is background; must be
            ``<= pos_iou_thr``; best IoUs in ``[neg_iou_thr, pos_iou_thr)`` are IGNORE.
        min_pos_iou: a GT claims its best anchors only when its best IoU is
            ``>= min_pos_iou`` (and > 0, §2.3).
        match_low_quality: enable the low-quality matches of §2.3.
        max_elements: bound on the B * G * A IoUs held at once (GTs are chunked above it;
            the result does not depend on it).

    Returns:
        Assignment with matched_gt (A,) int64 in {-2, -1, 0..G-1}; matched_metric (A,)
        IoU with the assigned GT (0 for background and IGNORE); gt_threshold (G,)
        all equal to ``pos_iou_thr``; candidate_index (G, 0) int64.

    Raises:
        ValueError: bad boxes; a non-finite threshold; ``neg_iou_thr > pos_iou_thr``;
            ``match_low_quality`` not a bool.
        ValueError: ``max_elements`` not an int >= 1.
    """
    return one_image(
        assign_max_iou_batched,
        (anchors,),
        gt_boxes,
        pos_iou_thr=pos_iou_thr,
        neg_iou_thr=neg_iou_thr,
        min_pos_iou=min_pos_iou,
        match_low_quality=match_low_quality,
        max_elements=max_elements,
    )


@torch.no_grad()
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
    search="auto",
):
    """``assign_max_iou`` for a batch of images sharing one set of anchors (specs/max_iou.md
    §2; specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, shared by every image.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        pos_iou_thr, neg_iou_thr, min_pos_iou, match_low_quality, max_elements: as
            ``assign_max_iou``.
        search: "auto", "windows" or "dense", how the IoUs are found (``SEARCHES``;
            specs/max_iou.md §7); the result does not depend on it.

    Returns:
        Assignment with matched_gt (B, A), matched_metric (B, A), gt_threshold (B, G_max)
        (``pos_iou_thr``; NaN for padded slots), candidate_index (B, G_max, 0).
    """
    anchors = shared_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    pos_iou_thr = check_number(pos_iou_thr, "pos_iou_thr")
    neg_iou_thr = check_number(neg_iou_thr, "neg_iou_thr")
    min_pos_iou = check_number(min_pos_iou, "min_pos_iou")
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"neg_iou_thr: expected <= pos_iou_thr = {pos_iou_thr}, got {neg_iou_thr}")
    match_low_quality = check_bool(match_low_quality, "match_low_quality")
    max_elements = check_max_elements(max_elements)
    check_choice(search, SEARCHES, "search")

    claim_min_iou = min_pos_iou if match_low_quality else None  # None: no low-quality claims
    best_iou, best_gt, claim_iou, claim_gt = _best_ious(gt_boxes, anchors, gt_valid, neg_iou_thr, claim_min_iou, max_elements, search)
    matched_gt = apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr)
    matched_metric = torch.where(matched_gt >= 0, best_iou, 0.0)
    if match_low_quality:
        matched_gt, matched_metric = _override(claim_iou, claim_gt, matched_gt, matched_metric)
    gt_threshold = torch.full(gt_valid.shape, pos_iou_thr, dtype=anchors.dtype, device=anchors.device)
    candidate_index = torch.zeros((*gt_valid.shape, 0), dtype=torch.int64, device=anchors.device)
    return finish_batch(matched_gt, matched_metric, gt_threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers on (B, G, A) IoUs


def best_gt_per_anchor(ious):
    """Each anchor's best GT (specs/max_iou.md §2.1; specs/conventions.md §5.2).

    Args:
        ious: (B, G, A); padded GT rows hold -inf.

    Returns:
        best_iou: (B, A), the highest IoU over the GTs (-inf when G = 0).
        best_gt: (B, A) int64, the GT reaching it; the lower GT index on ties.
    """
    if ious.shape[1] == 0:
        shape = (ious.shape[0], ious.shape[2])
        return torch.full(shape, -math.inf, dtype=ious.dtype, device=ious.device), torch.zeros(shape, dtype=torch.int64, device=ious.device)
    best_iou, best_gt = ious.max(dim=1)  # torch.max returns the first (lowest) index on ties
    return best_iou, best_gt


def apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr):
    """Positive / ignore / background by thresholds (specs/max_iou.md §2.2).

    Args:
        best_iou: (B, A).
        best_gt: (B, A) int64.
        pos_iou_thr, neg_iou_thr: floats, ``neg_iou_thr <= pos_iou_thr``.

    Returns:
        (B, A) int64: ``best_gt`` where ``best_iou >= pos_iou_thr``; BACKGROUND where
        ``best_iou < neg_iou_thr``; IGNORE otherwise.
    """
    matched_gt = torch.full_like(best_gt, IGNORE)
    matched_gt = torch.where(best_iou < neg_iou_thr, BACKGROUND, matched_gt)
    return torch.where(best_iou >= pos_iou_thr, best_gt, matched_gt)


def low_quality_claims(ious, min_pos_iou):
    """Which anchors each GT claims as its best (specs/max_iou.md §2.3).

    GT ``g`` claims every anchor whose IoU equals the GT's highest IoU ``m_g`` (all tied
    anchors, like mmdetection's ``gt_max_assign_all``), provided ``m_g >= min_pos_iou`` and
    ``m_g > 0``.

    Args:
        ious: (B, G, A).
        min_pos_iou: float.

    Returns:
        (B, G, A) bool.
    """
    if ious.shape[2] == 0:
        return torch.zeros(ious.shape, dtype=torch.bool, device=ious.device)
    gt_max = ious.amax(dim=2)
    eligible = (gt_max >= min_pos_iou) & (gt_max > 0)
    return eligible[..., None] & (ious == gt_max[..., None])


def apply_low_quality_matches(ious, claims, matched_gt, matched_metric):
    """Claimed anchors go to a claiming GT (specs/max_iou.md §2.3).

    A claimed anchor goes to the claiming GT with the highest IoU, the lower GT index on
    ties, whatever the thresholds said (positive for another GT, IGNORE or background).

    Args:
        ious: (B, G, A).
        claims: (B, G, A) bool from ``low_quality_claims``.
        matched_gt: (B, A) int64 after the thresholds.
        matched_metric: (B, A).

    Returns:
        matched_gt (B, A) int64 and matched_metric (B, A), updated.
    """
    claim_iou, claim_gt = _best_claim(ious, claims)
    return _override(claim_iou, claim_gt, matched_gt, matched_metric)


# ---------------------------------------------------------------------------------------
# detector only: the IoUs in chunks of GTs, or on the pairs of windows only


def _best_ious(gt_boxes, anchors, gt_valid, neg_iou_thr, min_pos_iou, max_elements, search):
    """``_best_in_chunks``, or ``best_on_windows`` (the pairs that can matter only) when
    ``search`` allows it and the anchors form grids of boxes (specs/max_iou.md §7)."""
    elements = gt_valid.numel() * anchors.shape[0]
    if search != "dense" and elements and (search == "windows" or elements >= WINDOWS_MIN_ELEMENTS):
        grids = cached_anchor_box_grids(anchors)
        if grids is not None:
            return best_on_windows(grids, gt_boxes, anchors, gt_valid, neg_iou_thr, min_pos_iou, max_elements)
    return _best_in_chunks(gt_boxes, anchors, gt_valid, min_pos_iou, max_elements)


def _best_in_chunks(gt_boxes, anchors, gt_valid, min_pos_iou, max_elements):
    """``best_gt_per_anchor`` and, unless ``min_pos_iou`` is None, each anchor's best
    low-quality claim, over GTs processed in chunks of at most ``max_elements`` (and
    ``CACHE_FRIENDLY_ELEMENTS``) IoUs.

    Args:
        gt_boxes: (B, G, 4); anchors: (A, 4); gt_valid: (B, G) bool.

    Returns:
        best_iou (B, A), best_gt (B, A) int64, claim_iou (B, A) (-inf where no GT claims
        the anchor), claim_gt (B, A) int64.
    """
    batch, num_gts = gt_boxes.shape[:2]
    num_anchors = anchors.shape[0]
    device, dtype = anchors.device, anchors.dtype
    best_iou = torch.full((batch, num_anchors), -math.inf, dtype=dtype, device=device)
    best_gt = torch.zeros((batch, num_anchors), dtype=torch.int64, device=device)
    claim_iou = torch.full((batch, num_anchors), -math.inf, dtype=dtype, device=device)
    claim_gt = torch.full((batch, num_anchors), BACKGROUND, dtype=torch.int64, device=device)
    chunk = max(1, min(max_elements, CACHE_FRIENDLY_ELEMENTS) // max(1, batch * num_anchors))
    for first in range(0, num_gts, chunk):
        ious = _pairwise_ious(gt_boxes[:, first : first + chunk], anchors, gt_valid[:, first : first + chunk])
        chunk_iou, chunk_gt = best_gt_per_anchor(ious)
        best_iou, best_gt = _merge_best(best_iou, best_gt, chunk_iou, chunk_gt + first)
        if min_pos_iou is not None:
            chunk_iou, chunk_gt = _best_claim(ious, low_quality_claims(ious, min_pos_iou))
            claim_iou, claim_gt = _merge_best(claim_iou, claim_gt, chunk_iou, chunk_gt + first)
        del ious
    return best_iou, best_gt, claim_iou, claim_gt


def _pairwise_ious(gt_boxes, anchors, gt_valid):
    """(B, g, 4), (A, 4), (B, g) -> (B, g, A) IoUs; -inf on padded GT rows."""
    ious = aligned_box_iou_unchecked(gt_boxes[:, :, None, :], anchors[None, None, :, :])
    return torch.where(gt_valid[..., None], ious, -math.inf)


def _best_claim(ious, claims):
    """Per anchor, the best claiming GT: (claim IoU or -inf, GT index, first on ties)."""
    return best_gt_per_anchor(torch.where(claims, ious, -math.inf))


def _merge_best(best, best_index, candidate, candidate_index):
    """Keep the running maximum; a later chunk (higher GT indices) wins only if strictly better."""
    better = candidate > best
    return torch.where(better, candidate, best), torch.where(better, candidate_index, best_index)


def _override(claim_iou, claim_gt, matched_gt, matched_metric):
    """Anchors with a claim (IoU > -inf) take the claiming GT and its IoU."""
    claimed = claim_iou > -math.inf
    return torch.where(claimed, claim_gt, matched_gt), torch.where(claimed, claim_iou, matched_metric)
