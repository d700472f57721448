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

Twin of ``reference/assign/anchor_free.py``: same public names, parameters, steps and
rules. ``assign_anchor_free_batched`` holds the algorithm for GTs padded to
(B, G_max, 4) with a ``gt_valid`` mask and points shared by the batch; the single-image
functions run it on a batch of one, and ``assign_<rule>_batched`` are calls of it with one
rule each. Steps 1-3 never build a dense (B, G_max, A) tensor: each GT only meets the points
in a conservative window around it (``detector/assign/windows.py``), in chunks of at most
``max_elements`` (GT, point) pairs; the min-area choice is an exact integer ``amin`` over
each GT's rank in (area, index) order, carried across chunks, so the result does not depend
on the chunk size. Steps 4-5 run on the positives only.
"""
import math
from dataclasses import dataclass, field

import torch

from detector.assign.batching import as_padded_batch, one_image
from detector.assign.memo import memo, shared_points
from detector.assign.result import Assignment
from detector.assign.windows import MAX_ELEMENTS, level_grids, window_pairs
from detector.boxes import safe_divide
from detector.conventions import (
    BACKGROUND,
    DEFAULT_STRIDES,
    FCOS_CENTER_RADIUS,
    FCOS_INSIDE_EPS,
    FCOS_REGRESS_RANGES,
)
from detector.pseudo_iou import _pseudo_iou_algorithm1
from detector.validation import check_choice, check_level_counts, check_max_elements, check_number


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
    return one_image(
        assign_anchor_free_batched,
        (rule, points, num_points_per_level),
        gt_boxes,
        strides=strides,
        regress_ranges=regress_ranges,
        **options,
    )


@torch.no_grad()
def assign_anchor_free_batched(
    rule,
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    max_elements=MAX_ELEMENTS,
    **options,
):
    """``assign_anchor_free`` for a batch of images sharing one set of points
    (specs/anchor_free.md §8).

    Args:
        rule: the rule's name, one of ``ANCHOR_FREE_RULES``.
        points: (A, 2) (x, y), level-major, shared by every image.
        num_points_per_level: L ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy; rows where ``gt_valid`` is False are ignored (any
            finite or non-finite content).
        gt_valid: (B, G_max) bool.
        strides, regress_ranges, options: as in ``assign_anchor_free``.
        max_elements: int >= 1, the most (GT, point) pairs evaluated at once; any value
            gives the same result.

    Returns:
        Assignment with matched_gt (B, A) int64 (slot indices into G_max), matched_metric
        (B, A), gt_threshold (B, G_max) (the rule's parameter; NaN for padded slots),
        candidate_index (B, G_max, 0).
    """
    check_choice(rule, ANCHOR_FREE_RULES, "rule")
    rule = _RULES[rule]
    points, gt_boxes, gt_valid, level = _check_inputs(
        points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges
    )
    options = rule.check(options)
    max_elements = check_max_elements(max_elements)
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, rule.center_radius(options), max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = rule.keep(ltrb, options)
    return _result(matched_gt, positive, ltrb, keep, threshold=rule.threshold(options), gt_valid=gt_valid)


def assign_all_inside_batched(
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    max_elements=MAX_ELEMENTS,
):
    """Batched ``assign_all_inside``; shapes as ``assign_anchor_free_batched``."""
    return assign_anchor_free_batched(
        "all_inside", points, num_points_per_level, gt_boxes, gt_valid,
        strides=strides, regress_ranges=regress_ranges, max_elements=max_elements,
    )


def assign_pseudo_iou_batched(
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    threshold=0.4,
    inclusive=False,
    max_elements=MAX_ELEMENTS,
):
    """Batched ``assign_pseudo_iou``; shapes as ``assign_anchor_free_batched``, gt_threshold T on valid slots."""
    return assign_anchor_free_batched(
        "pseudo_iou", points, num_points_per_level, gt_boxes, gt_valid,
        strides=strides, regress_ranges=regress_ranges, max_elements=max_elements,
        threshold=threshold, inclusive=inclusive,
    )


def assign_scaled_box_batched(
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    scale=0.6,
    max_elements=MAX_ELEMENTS,
):
    """Batched ``assign_scaled_box``; shapes as ``assign_anchor_free_batched``, gt_threshold s on valid slots."""
    return assign_anchor_free_batched(
        "scaled_box", points, num_points_per_level, gt_boxes, gt_valid,
        strides=strides, regress_ranges=regress_ranges, max_elements=max_elements, scale=scale,
    )


def assign_centerness_batched(
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    threshold=0.35,
    inclusive=False,
    max_elements=MAX_ELEMENTS,
):
    """Batched ``assign_centerness``; shapes as ``assign_anchor_free_batched``, gt_threshold c on valid slots."""
    return assign_anchor_free_batched(
        "centerness", points, num_points_per_level, gt_boxes, gt_valid,
        strides=strides, regress_ranges=regress_ranges, max_elements=max_elements,
        threshold=threshold, inclusive=inclusive,
    )


def assign_fcos_batched(
    points,
    num_points_per_level,
    gt_boxes,
    gt_valid,
    *,
    strides=DEFAULT_STRIDES,
    regress_ranges=FCOS_REGRESS_RANGES,
    center_sampling=True,
    center_radius=FCOS_CENTER_RADIUS,
    max_elements=MAX_ELEMENTS,
):
    """Batched ``assign_fcos``; shapes as ``assign_anchor_free_batched``."""
    return assign_anchor_free_batched(
        "fcos", points, num_points_per_level, gt_boxes, gt_valid,
        strides=strides, regress_ranges=regress_ranges, max_elements=max_elements,
        center_sampling=center_sampling, center_radius=center_radius,
    )


# ---------------------------------------------------------------------------------------
# steps (same names and order in reference/assign/anchor_free.py)


def _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges):
    """Validate; expand the per-level parameters to one window index per level.

    Returns:
        points (A, 2), gt_boxes (B, G_max, 4) in one float dtype on the points' device
        (padded rows zeroed), gt_valid (B, G_max) bool, and a dict whose ``grids`` holds
        the levels prepared by ``windows.level_grids``, with each level's scalar ``lo``,
        ``hi`` and ``stride`` (the reference expands them to (A,) arrays instead).
    """
    points = shared_points(points, "points")
    points, gt_boxes, gt_valid = as_padded_batch(points, gt_boxes, gt_valid, "points")
    counts = check_level_counts(num_points_per_level, len(points), "num_points_per_level")
    strides = [float(s) for s in strides]
    if len(strides) != len(counts) or not all(math.isfinite(s) and s > 0 for s in strides):
        raise ValueError(f"strides: expected {len(counts)} positive finite strides, got {strides}")
    ranges = [(float(lo), float(hi)) for lo, hi in regress_ranges]
    if len(ranges) != len(counts) or not all(lo <= hi for lo, hi in ranges):  # NaN fails lo <= hi
        raise ValueError(f"regress_ranges: expected {len(counts)} pairs (lo, hi) with lo <= hi, got {ranges}")
    scalars = [{"lo": lo, "hi": hi, "stride": stride} for (lo, hi), stride in zip(ranges, strides)]
    key = ("level grids", tuple(counts), tuple(strides), tuple(ranges))
    level = {"grids": memo(points, key, lambda: level_grids(points, counts, scalars))}
    return points, gt_boxes, gt_valid, level


def _candidates(ltrb, level, center_radius):
    """Step 2 (specs/anchor_free.md §3): (N, 4) distances of N (GT, point) pairs on one
    level -> (N,) bool."""
    inside = ltrb.amin(dim=1) > FCOS_INSIDE_EPS
    largest = ltrb.amax(dim=1)
    in_range = (largest >= level["lo"]) & (largest <= level["hi"])
    candidate = inside & in_range
    if center_radius is not None:
        half_extent = 2 * center_radius * level["stride"]  # |x - x_c| < radius * stride, times 2
        near_center = ((ltrb[:, 0] - ltrb[:, 2]).abs() < half_extent) & ((ltrb[:, 1] - ltrb[:, 3]).abs() < half_extent)
        candidate &= near_center
    return candidate


def _match_min_area(points, gt_boxes, gt_valid, level, center_radius, max_elements):
    """Steps 1-3: each point's candidate GT of smallest area, lower GT index on ties.

    Each valid GT gets its rank in its image's (area, index) order (a stable sort); the
    winner of a point is the candidate GT of smallest rank, an exact integer ``amin`` over
    the (GT, point) pairs of the windows (``windows.window_pairs``).

    Returns:
        (B, A) int64 in {BACKGROUND, 0..G_max-1}.
    """
    num_images, num_slots = gt_valid.shape
    num_points = len(points)
    matched_gt = torch.full((num_images, num_points), BACKGROUND, dtype=torch.int64, device=points.device)
    if num_images * num_slots == 0 or num_points == 0:
        return matched_gt
    area = (gt_boxes[..., 2] - gt_boxes[..., 0]) * (gt_boxes[..., 3] - gt_boxes[..., 1])  # (B, G_max)
    order = torch.sort(torch.where(gt_valid, area, math.inf), dim=1, stable=True).indices  # (B, G_max)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(num_slots, device=points.device).expand_as(order))
    slot_valid = gt_valid.reshape(-1)  # (B * G_max,), slot = image * G_max + gt
    slot_rank = rank.reshape(-1)
    slot_boxes = gt_boxes.reshape(-1, 4)
    best_rank = torch.full((num_images * num_points,), num_slots, dtype=torch.int64, device=points.device)
    for pair_level, slot, point in window_pairs(level["grids"], slot_boxes, slot_valid, max_elements):  # (N,) each
        p = points[point]  # (N, 2)
        box = slot_boxes[slot]  # (N, 4)
        ltrb = torch.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], dim=1)  # (N, 4)
        candidate = _candidates(ltrb, pair_level, center_radius)
        slot, point = slot[candidate], point[candidate]
        target = torch.div(slot, num_slots, rounding_mode="floor") * num_points + point  # image * A + point
        best_rank.scatter_reduce_(0, target, slot_rank[slot], reduce="amin")
    best_rank = best_rank.view(num_images, num_points)
    found = best_rank < num_slots
    winner = order.gather(1, best_rank.clamp(max=num_slots - 1))  # (B, A)
    return torch.where(found, winner, matched_gt)


def _distances_to_matched(points, gt_boxes, matched_gt):
    """Distances (l, t, r, b) of each positive point to its assigned GT.

    Returns:
        positive: the P (image, point) pairs with a GT, two (P,) int64 tensors; ltrb: (P, 4).
    """
    positive = (matched_gt >= 0).nonzero(as_tuple=True)  # (P,) each
    box = gt_boxes[positive[0], matched_gt[positive]]  # (P, 4)
    p = points[positive[1]]  # (P, 2)
    ltrb = torch.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], dim=1)  # (P, 4)
    return positive, ltrb


def _passes_pseudo_iou(ltrb, threshold, inclusive):
    """Step 4, Pseudo-IoU rule: (P, 4) -> (P,) bool."""
    value = _pseudo_iou_algorithm1(ltrb)
    return value >= threshold if inclusive else value > threshold


def _passes_scaled_box(ltrb, scale):
    """Step 4, scaled-box rule: |x - x_c| < s w / 2 and |y - y_c| < s h / 2, both times 2."""
    l, t, r, b = ltrb.unbind(dim=-1)
    return ((l - r).abs() < scale * (l + r)) & ((t - b).abs() < scale * (t + b))


def _passes_centerness(ltrb, threshold, inclusive):
    """Step 4, centerness rule: (P, 4) -> (P,) bool."""
    value = _centerness(ltrb)
    return value >= threshold if inclusive else value > threshold


def _centerness(ltrb):
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)); 0 where a max is <= 0."""
    l, t, r, b = ltrb.unbind(dim=-1)
    ratio_x = safe_divide(torch.minimum(l, r), torch.maximum(l, r))
    ratio_y = safe_divide(torch.minimum(t, b), torch.maximum(t, b))
    return torch.sqrt((ratio_x * ratio_y).clamp(min=0.0))


def _result(matched_gt, positive, ltrb, keep, threshold, gt_valid):
    """Step 4 (apply the filter) and step 5 (metric) -> Assignment."""
    metric = torch.zeros(matched_gt.shape, dtype=ltrb.dtype, device=ltrb.device)
    metric[positive] = _pseudo_iou_algorithm1(ltrb)
    if keep is not None:
        rejected = tuple(index[~keep] for index in positive)
        matched_gt = matched_gt.clone()
        matched_gt[rejected] = BACKGROUND
        metric[rejected] = 0.0
    return Assignment(
        matched_gt=matched_gt,
        matched_metric=metric,
        gt_threshold=torch.full(gt_valid.shape, threshold, dtype=ltrb.dtype, device=gt_valid.device).masked_fill(~gt_valid, math.nan),
        candidate_index=torch.zeros((*gt_valid.shape, 0), dtype=torch.int64, device=gt_valid.device),
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
