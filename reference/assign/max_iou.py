"""Max-IoU assignment, as in RetinaNet (specs/max_iou.md).

Each anchor looks at its best GT (highest IoU, lower GT index on ties): IoU >= pos_iou_thr
makes it positive, IoU < neg_iou_thr background, anything in between IGNORE. Optionally,
every GT also claims its best anchors ("low-quality matches"), which override the
thresholds.
"""
import numpy as np

from reference.assign.result import Assignment, empty_assignment
from reference.boxes import box_iou
from reference.conventions import BACKGROUND, IGNORE
from reference.validation import as_boxes, check_bool, check_number


def assign_max_iou(
    anchors,
    gt_boxes,
    *,
    pos_iou_thr=0.5,
    neg_iou_thr=0.4,
    min_pos_iou=0.0,
    match_low_quality=False,
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

    Returns:
        Assignment with matched_gt (A,) int64 in {-2, -1, 0..G-1}; matched_metric (A,)
        IoU with the assigned GT (0 for background and IGNORE); gt_threshold (G,)
        all equal to ``pos_iou_thr``; candidate_index (G, 0) int64.

    Raises:
        ValueError: bad boxes; a non-finite threshold; ``neg_iou_thr > pos_iou_thr``;
            ``match_low_quality`` not a bool.
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    pos_iou_thr = check_number(pos_iou_thr, "pos_iou_thr")
    neg_iou_thr = check_number(neg_iou_thr, "neg_iou_thr")
    min_pos_iou = check_number(min_pos_iou, "min_pos_iou")
    if neg_iou_thr > pos_iou_thr:
        raise ValueError(f"neg_iou_thr: expected <= pos_iou_thr = {pos_iou_thr}, got {neg_iou_thr}")
    match_low_quality = check_bool(match_low_quality, "match_low_quality")
    if len(gt_boxes) == 0:  # §4.1: nothing to match; every anchor is background
        return empty_assignment(len(anchors), 0)

    ious = box_iou(gt_boxes, anchors)
    best_iou, best_gt = best_gt_per_anchor(ious)
    matched_gt = apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr)
    matched_metric = np.where(matched_gt >= 0, best_iou, 0.0)
    if match_low_quality:
        claims = low_quality_claims(ious, min_pos_iou)
        matched_gt, matched_metric = apply_low_quality_matches(ious, claims, matched_gt, matched_metric)
    gt_threshold = np.full(len(gt_boxes), pos_iou_thr)
    candidate_index = np.zeros((len(gt_boxes), 0), dtype=np.int64)
    return Assignment(matched_gt, matched_metric, gt_threshold, candidate_index)


# ---------------------------------------------------------------------------------------
# step helpers on validated float64 arrays


def best_gt_per_anchor(ious):
    """Each anchor's best GT (specs/max_iou.md §2.1; specs/conventions.md §5.2).

    Args:
        ious: (G, A) float64, G >= 1.

    Returns:
        best_iou: (A,) float64, the highest IoU over the GTs.
        best_gt: (A,) int64, the GT reaching it; the lower GT index on ties.
    """
    best_gt = np.argmax(ious, axis=0)  # argmax returns the first (lowest) index on ties
    best_iou = ious[best_gt, np.arange(ious.shape[1])]
    return best_iou, best_gt.astype(np.int64)


def apply_iou_thresholds(best_iou, best_gt, pos_iou_thr, neg_iou_thr):
    """Positive / ignore / background by thresholds (specs/max_iou.md §2.2).

    Args:
        best_iou: (A,) float64.
        best_gt: (A,) int64.
        pos_iou_thr, neg_iou_thr: floats, ``neg_iou_thr <= pos_iou_thr``.

    Returns:
        (A,) int64: ``best_gt`` where ``best_iou >= pos_iou_thr``; BACKGROUND where
        ``best_iou < neg_iou_thr``; IGNORE otherwise.
    """
    matched_gt = np.full(len(best_iou), IGNORE, dtype=np.int64)
    matched_gt[best_iou < neg_iou_thr] = BACKGROUND
    positive = best_iou >= pos_iou_thr
    matched_gt[positive] = best_gt[positive]
    return matched_gt


def low_quality_claims(ious, min_pos_iou):
    """Which anchors each GT claims as its best (specs/max_iou.md §2.3).

    GT ``g`` claims every anchor whose IoU equals the GT's highest IoU ``m_g`` (all tied
    anchors, like mmdetection's ``gt_max_assign_all``), provided ``m_g >= min_pos_iou`` and
    ``m_g > 0``.

    Args:
        ious: (G, A) float64.
        min_pos_iou: float.

    Returns:
        (G, A) bool.
    """
    gt_max = ious.max(axis=1, initial=0.0)  # IoUs are >= 0, so 0 is a neutral start (A = 0)
    eligible = (gt_max >= min_pos_iou) & (gt_max > 0)
    return eligible[..., None] & (ious == gt_max[..., None])


def apply_low_quality_matches(ious, claims, matched_gt, matched_metric):
    """Claimed anchors go to a claiming GT (specs/max_iou.md §2.3).

    A claimed anchor goes to the claiming GT with the highest IoU, the lower GT index on
    ties, whatever the thresholds said (positive for another GT, IGNORE or background).

    Args:
        ious: (G, A) float64.
        claims: (G, A) bool from ``low_quality_claims``.
        matched_gt: (A,) int64 after the thresholds.
        matched_metric: (A,) float64.

    Returns:
        matched_gt (A,) int64 and matched_metric (A,) float64, updated.
    """
    claimed_iou = np.where(claims, ious, -np.inf)
    winner = np.argmax(claimed_iou, axis=0)  # the first maximum: the lower GT index
    claimed = claims.any(axis=0)
    matched_gt = np.where(claimed, winner, matched_gt).astype(np.int64)
    matched_metric = np.where(claimed, ious[winner, np.arange(ious.shape[1])], matched_metric)
    return matched_gt, matched_metric
