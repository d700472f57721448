"""Anchor-free assigners: FCOS candidates and the Pseudo-IoU paper's rules (specs/anchor_free.md).

Every assigner runs the same steps (specs/anchor_free.md §2):

1. distances (l, t, r, b) of each point to each GT (a loop over GTs);
2. candidates: strictly inside, in the level's regression range (and, for FCOS with
   centre sampling, in the centre region);
3. one GT per point: smallest area, then lower GT index;
4. the rule's filter on the distances to that GT; failures become BACKGROUND, no re-try;
5. matched_metric = Pseudo-IoU with the assigned GT.
"""
import math

import numpy as np

from reference.assign.result import Assignment
from reference.conventions import (
    BACKGROUND,
    DEFAULT_STRIDES,
    FCOS_CENTER_RADIUS,
    FCOS_INSIDE_EPS,
    FCOS_REGRESS_RANGES,
)
from reference.pseudo_iou import _pseudo_iou_algorithm1
from reference.validation import as_boxes, as_points, check_level_counts


def assign_all_inside(points, num_points_per_level, gt_boxes, *, strides=DEFAULT_STRIDES, regress_ranges=FCOS_REGRESS_RANGES):
    """The anchor-free baseline: every candidate point is positive (specs/anchor_free.md §1, §3).

    Args:
        points: (A, 2) (x, y), level-major.
        num_points_per_level: L ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes allowed (they get no positive).
        strides: L positive strides (checked; unused by this rule).
        regress_ranges: L pairs (lo, hi); a point is in range when lo <= max(l,t,r,b) <= hi.

    Returns:
        Assignment: matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,) float64,
        the Pseudo-IoU with the assigned GT, 0 on negatives; gt_threshold (G,) NaN;
        candidate_index (G, 0).
    """
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=None)
    ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    return _result(matched_gt, ltrb, keep=None, threshold=math.nan, num_gts=len(gt_boxes))


def assign_pseudo_iou(
    points,
    num_points_per_level,
    gt_boxes,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    threshold=0.4,
    inclusive=False,
):
    """Pseudo-IoU assignment: FCOS candidates filtered by Pseudo-IoU (specs/anchor_free.md §4).

    Args:
        points, num_points_per_level, gt_boxes, strides, regress_ranges: as in
            ``assign_all_inside``.
        threshold: T, finite. A candidate stays positive when its Pseudo-IoU with its
            assigned GT is > T (``inclusive=False``, the paper's text and the official
            code) or >= T (``inclusive=True``).
        inclusive: see ``threshold``.

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = T.
    """
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    threshold = _check_number(threshold, "threshold")
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=None)
    ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_pseudo_iou(ltrb, threshold, inclusive)
    return _result(matched_gt, ltrb, keep=keep, threshold=threshold, num_gts=len(gt_boxes))


def assign_scaled_box(
    points,
    num_points_per_level,
    gt_boxes,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    scale=0.6,
):
    """Scaled-box assignment: FCOS candidates inside the GT scaled by s (specs/anchor_free.md §4).

    Args:
        points, num_points_per_level, gt_boxes, strides, regress_ranges: as in
            ``assign_all_inside``.
        scale: s >= 0, finite. A candidate stays positive when |x - x_c| < s w / 2 and
            |y - y_c| < s h / 2 for its assigned GT.

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = s.
    """
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    scale = _check_number(scale, "scale", minimum=0.0)
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=None)
    ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_scaled_box(ltrb, scale)
    return _result(matched_gt, ltrb, keep=keep, threshold=scale, num_gts=len(gt_boxes))


def assign_centerness(
    points,
    num_points_per_level,
    gt_boxes,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    threshold=0.35,
    inclusive=False,
):
    """Centerness assignment: FCOS candidates filtered by FCOS centerness (specs/anchor_free.md §4).

    centerness = sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b)), the root over the product.

    Args:
        points, num_points_per_level, gt_boxes, strides, regress_ranges: as in
            ``assign_all_inside``.
        threshold: c, finite. A candidate stays positive when centerness > c
            (``inclusive=False``) or >= c (``inclusive=True``).
        inclusive: see ``threshold``.

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = c.
    """
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    threshold = _check_number(threshold, "threshold")
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=None)
    ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_centerness(ltrb, threshold, inclusive)
    return _result(matched_gt, ltrb, keep=keep, threshold=threshold, num_gts=len(gt_boxes))


def assign_fcos(
    points,
    num_points_per_level,
    gt_boxes,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    center_sampling=True,
    center_radius=FCOS_CENTER_RADIUS,
):
    """FCOS assignment, optionally with centre sampling (specs/anchor_free.md §3.3).

    Args:
        points, num_points_per_level, gt_boxes, strides, regress_ranges: as in
            ``assign_all_inside``.
        center_sampling: if True, a point is a candidate of a GT only when
            |x - x_c| < center_radius * stride and |y - y_c| < center_radius * stride
            (before the min-area choice, as FCOS does).
        center_radius: radius in strides, > 0, finite.

    Returns:
        Assignment as in ``assign_all_inside`` (gt_threshold NaN).
    """
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    center_radius = _check_number(center_radius, "center_radius", minimum=0.0, strict=True)
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=center_radius if center_sampling else None)
    ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    return _result(matched_gt, ltrb, keep=None, threshold=math.nan, num_gts=len(gt_boxes))


# ---------------------------------------------------------------------------------------
# steps (same names and order in detector/assign/anchor_free.py)


def _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges):
    """Validate and expand the per-level parameters to per-point arrays.

    Returns:
        points (A, 2) float64, gt_boxes (G, 4) float64, and a dict of (A,) float64 arrays
        ``lo``, ``hi`` (regression range) and ``stride`` of each point's level.
    """
    points = as_points(points, "points")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    counts = check_level_counts(num_points_per_level, len(points), "num_points_per_level")
    strides = [float(s) for s in strides]
    if len(strides) != len(counts) or not all(math.isfinite(s) and s > 0 for s in strides):
        raise ValueError(f"strides: expected {len(counts)} positive finite strides, got {strides}")
    ranges = [(float(lo), float(hi)) for lo, hi in regress_ranges]
    if len(ranges) != len(counts) or not all(lo <= hi for lo, hi in ranges):  # NaN fails lo <= hi
        raise ValueError(f"regress_ranges: expected {len(counts)} pairs (lo, hi) with lo <= hi, got {ranges}")
    level = {
        "lo": np.repeat([lo for lo, _ in ranges], counts).astype(np.float64),
        "hi": np.repeat([hi for _, hi in ranges], counts).astype(np.float64),
        "stride": np.repeat(strides, counts).astype(np.float64),
    }
    return points, gt_boxes, level


def _candidates(ltrb, level, center_radius):
    """Step 2 (specs/anchor_free.md §3): (A, 4) distances to one GT -> (A,) bool."""
    inside = ltrb.min(axis=1) > FCOS_INSIDE_EPS
    largest = ltrb.max(axis=1)
    in_range = (largest >= level["lo"]) & (largest <= level["hi"])
    candidate = inside & in_range
    if center_radius is not None:
        half_extent = 2 * center_radius * level["stride"]  # |x - x_c| < radius * stride, times 2
        near_center = (np.abs(ltrb[:, 0] - ltrb[:, 2]) < half_extent) & (np.abs(ltrb[:, 1] - ltrb[:, 3]) < half_extent)
        candidate &= near_center
    return candidate


def _match_min_area(points, gt_boxes, level, center_radius):
    """Steps 1-3: each point's candidate GT of smallest area, lower index on ties.

    Returns:
        (A,) int64 in {BACKGROUND, 0..G-1}.
    """
    matched_gt = np.full(len(points), BACKGROUND, dtype=np.int64)
    matched_area = np.full(len(points), np.inf)
    for g, (x1, y1, x2, y2) in enumerate(gt_boxes):
        ltrb = np.stack([points[:, 0] - x1, points[:, 1] - y1, x2 - points[:, 0], y2 - points[:, 1]], axis=1)  # (A, 4)
        area = (x2 - x1) * (y2 - y1)
        # strict <: a later GT (higher index) with the same area does not take the point
        wins = _candidates(ltrb, level, center_radius) & (area < matched_area)
        matched_gt[wins] = g
        matched_area[wins] = area
    return matched_gt


def _distances_to_matched(points, gt_boxes, matched_gt):
    """(A, 4) distances (l, t, r, b) of each point to its assigned GT; 0 on negatives."""
    ltrb = np.zeros((len(points), 4))
    positive = matched_gt >= 0
    box = gt_boxes[matched_gt[positive]]  # (P, 4)
    p = points[positive]
    ltrb[positive] = np.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], axis=1)
    return ltrb


def _passes_pseudo_iou(ltrb, threshold, inclusive):
    """Step 4, Pseudo-IoU rule: (A, 4) -> (A,) bool."""
    value = _pseudo_iou_algorithm1(ltrb)
    return value >= threshold if inclusive else value > threshold


def _passes_scaled_box(ltrb, scale):
    """Step 4, scaled-box rule: |x - x_c| < s w / 2 and |y - y_c| < s h / 2, both times 2."""
    l, t, r, b = ltrb.T
    return (np.abs(l - r) < scale * (l + r)) & (np.abs(t - b) < scale * (t + b))


def _passes_centerness(ltrb, threshold, inclusive):
    """Step 4, centerness rule: (A, 4) -> (A,) bool."""
    value = _centerness(ltrb)
    return value >= threshold if inclusive else value > threshold


def _centerness(ltrb):
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)); 0 where a max is <= 0."""
    l, t, r, b = ltrb.T
    ratio_x = _divide_or_zero(np.minimum(l, r), np.maximum(l, r))
    ratio_y = _divide_or_zero(np.minimum(t, b), np.maximum(t, b))
    return np.sqrt(np.clip(ratio_x * ratio_y, 0.0, None))


def _result(matched_gt, ltrb, keep, threshold, num_gts):
    """Step 4 (apply the filter) and step 5 (metric) -> Assignment."""
    matched_gt = matched_gt.copy()
    if keep is not None:
        matched_gt[~keep] = BACKGROUND
    metric = np.where(matched_gt >= 0, _pseudo_iou_algorithm1(ltrb), 0.0)
    return Assignment(
        matched_gt=matched_gt,
        matched_metric=metric,
        gt_threshold=np.full(num_gts, threshold, dtype=np.float64),
        candidate_index=np.zeros((num_gts, 0), dtype=np.int64),
    )


def _check_number(value, name, minimum=None, strict=False):
    value = float(value)
    too_small = minimum is not None and (value <= minimum if strict else value < minimum)
    if not math.isfinite(value) or too_small:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value}")
    return value


def _divide_or_zero(numerator, denominator):
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out
