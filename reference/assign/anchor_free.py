"""Anchor-free assigners: FCOS candidates and the Pseudo-IoU paper's rules (specs/anchor_free.md).

Every assigner runs the same steps (specs/anchor_free.md §2):

1. distances (l, t, r, b) of each point to each GT;
2. candidates: strictly inside, in the level's regression range (and, for FCOS with
   centre sampling, in the centre region);
3. one GT per point: smallest area, then lower GT index;
4. the rule's filter on the distances to that GT; failures become BACKGROUND, no re-try;
5. matched_metric = Pseudo-IoU with the assigned GT.

``assign_anchor_free`` runs them for any rule of ``ANCHOR_FREE_RULES``; the rules differ
only in their options, their step-4 filter and their ``gt_threshold`` (the table
``_RULES`` at the end of this module). ``assign_all_inside`` ... ``assign_fcos`` are calls
of it with one rule each.
"""
import math
from dataclasses import dataclass, field

import numpy as np

from reference.assign.result import Assignment
from reference.boxes import safe_divide
from reference.conventions import (
    BACKGROUND,
    DEFAULT_STRIDES,
    FCOS_CENTER_RADIUS,
    FCOS_INSIDE_EPS,
    FCOS_REGRESS_RANGES,
)
from reference.pseudo_iou import _pseudo_iou_algorithm1
from reference.validation import as_boxes, as_points, check_choice, check_level_counts, check_number


def assign_all_inside(points, num_points_per_level, gt_boxes, *, strides=DEFAULT_STRIDES, regress_ranges=FCOS_REGRESS_RANGES):
    """The anchor-free baseline: every candidate point is positive (specs/anchor_free.md §1, §3).

    Args:
        points: (A, 2) (x, y), level-major.
        num_points_per_level: L ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes allowed (they get no positive).
        strides: L positive strides (checked; unused by this rule).
        regress_ranges: L pairs (lo, hi); a point is in range when lo <= max(l,t,r,b) <= hi.

    Returns:
        Assignment: matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,), the
        Pseudo-IoU with the assigned GT, 0 on negatives; gt_threshold (G,) NaN;
        candidate_index (G, 0).
    """
    return assign_anchor_free(
        "all_inside", points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges,
    )


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
    return assign_anchor_free(
        "pseudo_iou", points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges, threshold=threshold, inclusive=inclusive,
    )


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
    return assign_anchor_free(
        "scaled_box", points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges, scale=scale,
    )


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
    return assign_anchor_free(
        "centerness", points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges, threshold=threshold, inclusive=inclusive,
    )


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
    return assign_anchor_free(
        "fcos", points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges, center_sampling=center_sampling, center_radius=center_radius,
    )


def assign_anchor_free(
    rule,
    points,
    num_points_per_level,
    gt_boxes,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    **options,
):
    """Any anchor-free rule: steps 1-5 of specs/anchor_free.md §2.

    Args:
        rule: the rule's name, one of ``ANCHOR_FREE_RULES``.
        points, num_points_per_level, gt_boxes, strides, regress_ranges: as in
            ``assign_all_inside``.
        options: the rule's options, the keyword arguments of ``assign_<rule>`` after
            ``regress_ranges``; a missing one takes that function's default.

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) the rule's
        parameter (T, s or c; NaN for all_inside and fcos).

    Raises:
        ValueError: an unknown rule or option; bad points, boxes, level counts, strides or
            ranges; a bad option value (each named).
    """
    check_choice(rule, ANCHOR_FREE_RULES, "rule")
    rule = _RULES[rule]
    points, gt_boxes, level = _check_inputs(points, num_points_per_level, gt_boxes, strides, regress_ranges)
    options = rule.check(options)
    matched_gt = _match_min_area(points, gt_boxes, level, center_radius=rule.center_radius(options))
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = rule.keep(ltrb, options)
    return _result(matched_gt, positive, ltrb, keep, threshold=rule.threshold(options), num_gts=len(gt_boxes))


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
    """Steps 1-3: each point's candidate GT of smallest area, lower GT index on ties.

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
    """Distances (l, t, r, b) of each positive point to its assigned GT.

    Returns:
        positive: the P points with a GT, (P,) int64 indices; ltrb: (P, 4).
    """
    positive = np.flatnonzero(matched_gt >= 0)  # (P,)
    box = gt_boxes[matched_gt[positive]]  # (P, 4)
    p = points[positive]  # (P, 2)
    ltrb = np.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], axis=1)  # (P, 4)
    return positive, ltrb


def _passes_pseudo_iou(ltrb, threshold, inclusive):
    """Step 4, Pseudo-IoU rule: (P, 4) -> (P,) bool."""
    value = _pseudo_iou_algorithm1(ltrb)
    return value >= threshold if inclusive else value > threshold


def _passes_scaled_box(ltrb, scale):
    """Step 4, scaled-box rule: |x - x_c| < s w / 2 and |y - y_c| < s h / 2, both times 2."""
    l, t, r, b = ltrb.T
    return (np.abs(l - r) < scale * (l + r)) & (np.abs(t - b) < scale * (t + b))


def _passes_centerness(ltrb, threshold, inclusive):
    """Step 4, centerness rule: (P, 4) -> (P,) bool."""
    value = _centerness(ltrb)
    return value >= threshold if inclusive else value > threshold


def _centerness(ltrb):
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)); 0 where a max is <= 0."""
    l, t, r, b = ltrb.T
    ratio_x = safe_divide(np.minimum(l, r), np.maximum(l, r))
    ratio_y = safe_divide(np.minimum(t, b), np.maximum(t, b))
    return np.sqrt(np.clip(ratio_x * ratio_y, 0.0, None))


def _result(matched_gt, positive, ltrb, keep, threshold, num_gts):
    """Step 4 (apply the filter) and step 5 (metric) -> Assignment."""
    metric = np.zeros(matched_gt.shape)
    metric[positive] = _pseudo_iou_algorithm1(ltrb)
    if keep is not None:
        rejected = positive[~keep]
        matched_gt = matched_gt.copy()
        matched_gt[rejected] = BACKGROUND
        metric[rejected] = 0.0
    return Assignment(
        matched_gt=matched_gt,
        matched_metric=metric,
        gt_threshold=np.full(num_gts, threshold, dtype=np.float64),
        candidate_index=np.zeros((num_gts, 0), dtype=np.int64),
    )


# ---------------------------------------------------------------------------------------
# the rules (specs/anchor_free.md §1, §4): what differs between the assigners


@dataclass(frozen=True)
class _Rule:
    """One anchor-free rule.

    Attributes:
        defaults: the rule's options and their defaults (the keyword arguments of
            ``assign_<name>`` after ``regress_ranges``).
        limits: ``{option: (minimum, strict)}`` for the numeric options: finite, and
            ``>= minimum`` (``> minimum`` when strict) unless ``minimum`` is None.
        passes: step 4, ``passes(ltrb, **options) -> bool`` per point; None keeps every
            candidate.
        reports: the option reported as ``gt_threshold``; None reports NaN.
    """

    defaults: dict = field(default_factory=dict)
    limits: dict = field(default_factory=dict)
    passes: object = None
    reports: str = None

    def check(self, options):
        """The rule's options, defaults filled in and numbers checked."""
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise ValueError(f"{unknown[0]}: not an option of this rule; expected one of {sorted(self.defaults)}")
        options = {**self.defaults, **options}
        for name, (minimum, strict) in self.limits.items():
            options[name] = check_number(options[name], name, minimum=minimum, strict=strict)
        return options

    def center_radius(self, options):
        """Step 2's centre-sampling radius (FCOS with centre sampling), or None."""
        return options["center_radius"] if options.get("center_sampling") else None

    def keep(self, ltrb, options):
        """Step 4 on the (P, 4) distances of the positives: (P,) bool, or None (no filter)."""
        return None if self.passes is None else self.passes(ltrb, **options)

    def threshold(self, options):
        """The rule's ``gt_threshold`` value (§5)."""
        return math.nan if self.reports is None else options[self.reports]


_RULES = {
    "all_inside": _Rule(),
    "pseudo_iou": _Rule(
        defaults={"threshold": 0.4, "inclusive": False},
        limits={"threshold": (None, False)},
        passes=_passes_pseudo_iou,
        reports="threshold",
    ),
    "scaled_box": _Rule(
        defaults={"scale": 0.6},
        limits={"scale": (0.0, False)},
        passes=_passes_scaled_box,
        reports="scale",
    ),
    "centerness": _Rule(
        defaults={"threshold": 0.35, "inclusive": False},
        limits={"threshold": (None, False)},
        passes=_passes_centerness,
        reports="threshold",
    ),
    "fcos": _Rule(
        defaults={"center_sampling": True, "center_radius": FCOS_CENTER_RADIUS},
        limits={"center_radius": (0.0, True)},
    ),
}

#: The names of the anchor-free rules, in the order of specs/anchor_free.md §1.
ANCHOR_FREE_RULES = tuple(_RULES)
