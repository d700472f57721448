"""Anchor-free assigners: FCOS candidates and the Pseudo-IoU paper's rules (specs/anchor_free.md).

Twin of ``reference/assign/anchor_free.py``: same public names, parameters and steps.
Every assigner runs the same steps (specs/anchor_free.md §2):

1. distances (l, t, r, b) of points to GTs;
2. candidates: strictly inside, in the level's regression range (and, for FCOS with
   centre sampling, in the centre region);
3. one GT per point: smallest area, then lower GT index;
4. the rule's filter on the distances to that GT; failures become BACKGROUND, no re-try;
5. matched_metric = Pseudo-IoU with the assigned GT.

The single-image functions run the ``*_batched`` ones on a batch of one. The batched
functions never build a dense (B, G_max, A) tensor: per level, each GT only meets the
points inside a window around it (a row/column range of the level's grid, or a range of
the level's points sorted by y when the points do not form a grid), and the window is
conservative, so the exact tests of steps 2-3 run on a subset that holds every candidate.
Those (GT, point) pairs are evaluated in chunks of at most ``max_elements``; the min-area
choice is an exact integer ``amin`` over each GT's rank in (area, index) order, carried
across chunks, so the result does not depend on the chunk size.
"""
import math

import torch

from detector.assign.result import Assignment
from detector.conventions import (
    BACKGROUND,
    DEFAULT_STRIDES,
    FCOS_CENTER_RADIUS,
    FCOS_INSIDE_EPS,
    FCOS_REGRESS_RANGES,
)
from detector.pseudo_iou import _pseudo_iou_algorithm1
from detector.validation import as_boxes, as_points, check_level_counts

#: Default bound on the (GT, point) pairs evaluated at once by a batched assigner.
MAX_ELEMENTS = 1 << 22


def assign_all_inside(points, num_points_per_level, gt_boxes, *, strides=DEFAULT_STRIDES, regress_ranges=FCOS_REGRESS_RANGES):
    """The anchor-free baseline: every candidate point is positive (specs/anchor_free.md §1, §3).

    Args:
        points: (A, 2) (x, y), level-major.
        num_points_per_level: L ints summing to A.
        gt_boxes: (G, 4) xyxy, on the device of ``points``; zero-area boxes allowed.
        strides: L positive strides (checked; unused by this rule).
        regress_ranges: L pairs (lo, hi); a point is in range when lo <= max(l,t,r,b) <= hi.

    Returns:
        Assignment: matched_gt (A,) int64 in {-1, 0..G-1}; matched_metric (A,), the
        Pseudo-IoU with the assigned GT, 0 on negatives; gt_threshold (G,) NaN;
        candidate_index (G, 0).
    """
    return _one_image(assign_all_inside_batched, points, num_points_per_level, gt_boxes, strides=strides, regress_ranges=regress_ranges)


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

    Args as ``assign_all_inside``, plus ``threshold`` T (finite) and ``inclusive``: a
    candidate stays positive when its Pseudo-IoU is > T (default) or >= T (inclusive).

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = T.
    """
    return _one_image(
        assign_pseudo_iou_batched, points, num_points_per_level, gt_boxes,
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

    Args as ``assign_all_inside``, plus ``scale`` s >= 0: a candidate stays positive when
    |x - x_c| < s w / 2 and |y - y_c| < s h / 2 for its assigned GT.

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = s.
    """
    return _one_image(
        assign_scaled_box_batched, points, num_points_per_level, gt_boxes, strides=strides, regress_ranges=regress_ranges, scale=scale
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
    Args as ``assign_all_inside``, plus ``threshold`` c and ``inclusive`` (> c, or >= c).

    Returns:
        Assignment as in ``assign_all_inside``, with gt_threshold (G,) = c.
    """
    return _one_image(
        assign_centerness_batched, points, num_points_per_level, gt_boxes,
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

    Args as ``assign_all_inside``, plus ``center_sampling`` (a point is a candidate only when
    |x - x_c| < center_radius * stride and |y - y_c| < center_radius * stride, before the
    min-area choice) and ``center_radius`` > 0 in strides.

    Returns:
        Assignment as in ``assign_all_inside`` (gt_threshold NaN).
    """
    return _one_image(
        assign_fcos_batched, points, num_points_per_level, gt_boxes,
        strides=strides, regress_ranges=regress_ranges, center_sampling=center_sampling, center_radius=center_radius,
    )


# ---------------------------------------------------------------------------------------
# batched variants: GTs (B, G_max, 4) + gt_valid (B, G_max); points shared by the batch


def assign_all_inside_batched(
    points, num_points_per_level, gt_boxes, gt_valid, *, strides=DEFAULT_STRIDES, regress_ranges=FCOS_REGRESS_RANGES, max_elements=MAX_ELEMENTS
):
    """Batched ``assign_all_inside`` (specs/anchor_free.md §8).

    Args:
        points: (A, 2) (x, y), level-major, shared by every image.
        num_points_per_level: L ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy; rows where ``gt_valid`` is False are ignored (any
            finite or non-finite content).
        gt_valid: (B, G_max) bool.
        strides, regress_ranges: as in ``assign_all_inside``.
        max_elements: > 0, the most (GT, point) pairs evaluated at once; any value gives
            the same result.

    Returns:
        Assignment with matched_gt (B, A) int64 (slot indices into G_max), matched_metric
        (B, A), gt_threshold (B, G_max) NaN, candidate_index (B, G_max, 0).
    """
    points, gt_boxes, gt_valid, level = _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges)
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, None, max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    return _result(matched_gt, positive, ltrb, None, math.nan, gt_valid)


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
    """Batched ``assign_pseudo_iou``; shapes as ``assign_all_inside_batched``, gt_threshold T on valid slots."""
    points, gt_boxes, gt_valid, level = _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges)
    threshold = _check_number(threshold, "threshold")
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, None, max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_pseudo_iou(ltrb, threshold, inclusive)
    return _result(matched_gt, positive, ltrb, keep, threshold, gt_valid)


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
    """Batched ``assign_scaled_box``; shapes as ``assign_all_inside_batched``, gt_threshold s on valid slots."""
    points, gt_boxes, gt_valid, level = _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges)
    scale = _check_number(scale, "scale", minimum=0.0)
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, None, max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_scaled_box(ltrb, scale)
    return _result(matched_gt, positive, ltrb, keep, scale, gt_valid)


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
    """Batched ``assign_centerness``; shapes as ``assign_all_inside_batched``, gt_threshold c on valid slots."""
    points, gt_boxes, gt_valid, level = _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges)
    threshold = _check_number(threshold, "threshold")
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, None, max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    keep = _passes_centerness(ltrb, threshold, inclusive)
    return _result(matched_gt, positive, ltrb, keep, threshold, gt_valid)


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
    """Batched ``assign_fcos``; shapes as ``assign_all_inside_batched``."""
    points, gt_boxes, gt_valid, level = _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges)
    center_radius = _check_number(center_radius, "center_radius", minimum=0.0, strict=True)
    matched_gt = _match_min_area(points, gt_boxes, gt_valid, level, center_radius if center_sampling else None, max_elements)
    positive, ltrb = _distances_to_matched(points, gt_boxes, matched_gt)
    return _result(matched_gt, positive, ltrb, None, math.nan, gt_valid)


# ---------------------------------------------------------------------------------------
# steps (same names and order as reference/assign/anchor_free.py)


def _check_inputs(points, num_points_per_level, gt_boxes, gt_valid, strides, regress_ranges):
    """Validate; expand the per-level parameters to per-point tensors; index each level.

    Returns:
        points (A, 2), gt_boxes (B, G_max, 4) in one float dtype on the points' device
        (padded rows zeroed), gt_valid (B, G_max) bool, and a dict whose ``grids`` holds
        one ``_LevelGrid`` per non-empty level, with the level's scalar lo, hi and stride
        (the reference expands them to (A,) arrays instead).
    """
    points = as_points(points, "points")
    gt_valid = _as_mask(gt_valid, gt_boxes)
    gt_boxes = _as_padded_boxes(gt_boxes, gt_valid)
    dtype = torch.promote_types(points.dtype, gt_boxes.dtype)
    points, gt_boxes, gt_valid = points.to(dtype), gt_boxes.to(device=points.device, dtype=dtype), gt_valid.to(points.device)
    counts = check_level_counts(num_points_per_level, len(points), "num_points_per_level")
    strides = [float(s) for s in strides]
    if len(strides) != len(counts) or not all(math.isfinite(s) and s > 0 for s in strides):
        raise ValueError(f"strides: expected {len(counts)} positive finite strides, got {strides}")
    ranges = [(float(lo), float(hi)) for lo, hi in regress_ranges]
    if len(ranges) != len(counts) or not all(lo <= hi for lo, hi in ranges):  # NaN fails lo <= hi
        raise ValueError(f"regress_ranges: expected {len(counts)} pairs (lo, hi) with lo <= hi, got {ranges}")
    level = {"grids": []}
    offset = 0
    for count, (lo, hi), stride in zip(counts, ranges, strides):
        if count:
            level["grids"].append(_LevelGrid(points, offset, count, {"lo": lo, "hi": hi, "stride": stride}))
        offset += count
    return points, gt_boxes, gt_valid, level


def _candidates(ltrb, level, center_radius):
    """Step 2 (specs/anchor_free.md §3): (N, 4) distances to GTs on one level -> (N,) bool."""
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
    """Steps 1-3: each point's candidate GT of smallest area, lower slot index on ties.

    Each valid GT gets its rank in its image's (area, index) order (a stable sort); the
    winner of a point is the candidate GT of smallest rank, an exact integer ``amin``.

    Returns:
        (B, A) int64 in {BACKGROUND, 0..G_max-1}.
    """
    num_images, num_slots = gt_valid.shape
    num_points = len(points)
    max_elements = int(max_elements)
    if max_elements < 1:
        raise ValueError(f"max_elements: expected a positive int, got {max_elements}")
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
    for grid in level["grids"]:  # at most L levels
        windows = grid.windows(slot_boxes, slot_valid)
        total = int(windows["ends"][-1])
        for first in range(0, total, max_elements):
            slot, point = _expand_windows(grid, windows, first, min(first + max_elements, total))  # (N,) each
            p = points[point]  # (N, 2)
            box = slot_boxes[slot]  # (N, 4)
            ltrb = torch.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], dim=1)  # (N, 4)
            candidate = _candidates(ltrb, grid.level, center_radius)
            slot, point = slot[candidate], point[candidate]
            target = torch.div(slot, num_slots, rounding_mode="floor") * num_points + point  # image * A + point
            best_rank.scatter_reduce_(0, target, slot_rank[slot], reduce="amin")
    best_rank = best_rank.view(num_images, num_points)
    found = best_rank < num_slots
    winner = order.gather(1, best_rank.clamp(max=num_slots - 1))  # (B, A)
    return torch.where(found, winner, matched_gt)


def _distances_to_matched(points, gt_boxes, matched_gt):
    """Distances (l, t, r, b) of each positive point to its assigned GT.

    Unlike the reference, which returns (A, 4) with zeros on negatives, only the P positives
    are computed: returns ``(image, point)``, two (P,) int64 tensors, and ltrb (P, 4).
    """
    image, point = (matched_gt >= 0).nonzero(as_tuple=True)  # (P,) each
    box = gt_boxes[image, matched_gt[image, point]]  # (P, 4)
    p = points[point]  # (P, 2)
    ltrb = torch.stack([p[:, 0] - box[:, 0], p[:, 1] - box[:, 1], box[:, 2] - p[:, 0], box[:, 3] - p[:, 1]], dim=1)  # (P, 4)
    return (image, point), ltrb


def _passes_pseudo_iou(ltrb, threshold, inclusive):
    """Step 4, Pseudo-IoU rule: (..., 4) -> (...) bool."""
    value = _pseudo_iou_algorithm1(ltrb)
    return value >= threshold if inclusive else value > threshold


def _passes_scaled_box(ltrb, scale):
    """Step 4, scaled-box rule: |x - x_c| < s w / 2 and |y - y_c| < s h / 2, both times 2."""
    l, t, r, b = ltrb.unbind(dim=-1)
    return ((l - r).abs() < scale * (l + r)) & ((t - b).abs() < scale * (t + b))


def _passes_centerness(ltrb, threshold, inclusive):
    """Step 4, centerness rule: (..., 4) -> (...) bool."""
    value = _centerness(ltrb)
    return value >= threshold if inclusive else value > threshold


def _centerness(ltrb):
    """FCOS centerness sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)); 0 where a max is <= 0."""
    l, t, r, b = ltrb.unbind(dim=-1)
    ratio_x = _divide_or_zero(torch.minimum(l, r), torch.maximum(l, r))
    ratio_y = _divide_or_zero(torch.minimum(t, b), torch.maximum(t, b))
    return torch.sqrt((ratio_x * ratio_y).clamp(min=0.0))


def _result(matched_gt, positive, ltrb, keep, threshold, gt_valid):
    """Step 4 (apply the filter) and step 5 (metric) -> batched Assignment."""
    image, point = positive
    metric = torch.zeros(matched_gt.shape, dtype=ltrb.dtype, device=ltrb.device)
    metric[image, point] = _pseudo_iou_algorithm1(ltrb)
    if keep is not None:
        matched_gt = matched_gt.clone()
        matched_gt[image[~keep], point[~keep]] = BACKGROUND
        metric[image[~keep], point[~keep]] = 0.0
    num_images, num_slots = gt_valid.shape
    return Assignment(
        matched_gt=matched_gt,
        matched_metric=metric,
        gt_threshold=torch.full(gt_valid.shape, threshold, dtype=ltrb.dtype, device=gt_valid.device).masked_fill(~gt_valid, math.nan),
        candidate_index=torch.zeros((num_images, num_slots, 0), dtype=torch.int64, device=gt_valid.device),
    )


def _check_number(value, name, minimum=None, strict=False):
    value = float(value)
    too_small = minimum is not None and (value <= minimum if strict else value < minimum)
    if not math.isfinite(value) or too_small:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
        raise ValueError(f"{name}: expected a finite number{bound}, got {value}")
    return value


def _divide_or_zero(numerator, denominator):
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)


# ---------------------------------------------------------------------------------------
# detector-only helpers: single image, input checks of the batch, windows of GTs on levels


def _one_image(batched, points, num_points_per_level, gt_boxes, **options):
    """Run a batched assigner on one image: (G, 4) GTs -> single-image Assignment."""
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_valid = torch.ones((1, len(gt_boxes)), dtype=torch.bool, device=gt_boxes.device)
    return batched(points, num_points_per_level, gt_boxes[None], gt_valid, **options).image(0)


def _as_mask(gt_valid, gt_boxes):
    mask = torch.as_tensor(gt_valid)
    shape = tuple(gt_boxes.shape[:2]) if hasattr(gt_boxes, "shape") else None
    if mask.dtype != torch.bool or mask.ndim != 2 or (shape is not None and len(shape) == 2 and tuple(mask.shape) != shape):
        raise ValueError(f"gt_valid: expected a (B, G_max) bool mask matching gt_boxes, got {mask.dtype} {tuple(mask.shape)}")
    return mask


def _as_padded_boxes(gt_boxes, gt_valid):
    """(B, G_max, 4) boxes with padded rows zeroed, then checked (padding may hold anything)."""
    boxes = torch.as_tensor(gt_boxes) if not isinstance(gt_boxes, torch.Tensor) else gt_boxes
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or tuple(boxes.shape[:2]) != tuple(gt_valid.shape):
        raise ValueError(f"gt_boxes: expected shape (B, G_max, 4) matching gt_valid {tuple(gt_valid.shape)}, got {tuple(boxes.shape)}")
    if boxes.is_floating_point():
        boxes = torch.where(gt_valid.to(boxes.device)[..., None], boxes, 0.0)
    return as_boxes(boxes, "gt_boxes", batched=True)


class _LevelGrid:
    """The points of one level as rows (sorted y) x columns (sorted x) for window look-ups.

    If the level's points are a row-major grid (``points == meshgrid(ys, xs)`` exactly,
    the layout of specs/conventions.md §3), rows are its ys and columns its xs and the
    point of row r, column c is ``offset + r * width + c``. Otherwise the points are
    sorted by y (stable) and form one column (windows then restrict y only), and the
    point of row r is ``order[r]``. ``level`` holds the level's scalar lo, hi, stride.
    """

    def __init__(self, points, offset, count, level):
        x, y = points[offset : offset + count, 0], points[offset : offset + count, 1]
        self.offset, self.level = offset, level
        new_row = int((y != y[0]).to(torch.uint8).argmax())  # first point off the first row; 0: none
        width = new_row if new_row > 0 else count
        self.is_grid = False
        if count % width == 0:
            xs, ys = x[:width], y[::width]
            height = count // width
            self.is_grid = (
                torch.equal(x.view(height, width), xs.expand(height, width))
                and torch.equal(y.view(height, width), ys[:, None].expand(height, width))
                and bool(torch.cat([xs[1:] > xs[:-1], ys[1:] > ys[:-1]]).all())
            )
        if self.is_grid:
            self.ys, self.xs, self.order, self.width = ys.contiguous(), xs.contiguous(), None, width
        else:
            self.order = torch.sort(y, stable=True).indices
            self.ys, self.xs, self.width = y[self.order].contiguous(), None, 1

    def windows(self, boxes, valid):
        """The window of each GT: (N, 4) boxes, (N,) valid -> dict of (N,) int64 tensors.

        ``row0``, ``col0``, ``cols`` and ``count`` (rows x cols; 0 for invalid slots), and
        ``ends`` = cumsum(count) (one entry more: a leading 0). The window holds every
        point with x1 < x < x2, y1 < y < y2 (the exact float test for strictly inside) that
        can have max(l, t, r, b) <= hi: beyond hi plus a slack of 1e-3 relative, a side's
        distance exceeds hi after any rounding.
        """
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        row0, rows = self._range(self.ys, y1, y2)
        if self.is_grid:
            col0, cols = self._range(self.xs, x1, x2)
        else:
            col0, cols = torch.zeros_like(row0), torch.ones_like(rows)
        count = rows * cols * valid
        ends = torch.cat([count.new_zeros(1), count.cumsum(0)])
        return {"row0": row0, "col0": col0, "cols": cols, "count": count, "ends": ends}

    def _range(self, sorted_values, low, high):
        hi = self.level["hi"]
        slack = 1e-3 * (low.abs() + high.abs() + 1.0 + hi)  # inf when hi is inf
        lower = torch.maximum(low, high - hi - slack)  # hi = inf: no restriction
        upper = torch.minimum(high, low + hi + slack)
        first = torch.searchsorted(sorted_values, lower, right=True)  # first value > lower
        end = torch.searchsorted(sorted_values, upper, right=False)  # first value >= upper
        return first, (end - first).clamp(min=0)

    def point_index(self, row, col):
        """Flat point index of (row, col) pairs of this level."""
        if self.is_grid:
            return self.offset + row * self.width + col
        return self.offset + self.order[row]


def _expand_windows(grid, windows, first, last):
    """Positions [first, last) of the concatenated windows -> (slot, point), (N,) int64 each."""
    ends = windows["ends"]
    device = ends.device
    # the window holding `first` and one past the window of `last - 1`, in one look-up
    p0, p1 = torch.searchsorted(ends, torch.tensor([first, last - 1], device=device, dtype=ends.dtype), right=True).tolist()
    p0 -= 1
    starts = ends[p0:p1]  # (W,) start of each window
    local = torch.minimum(ends[p0 + 1 : p1 + 1], torch.tensor(last, device=device)) - torch.clamp(starts, min=first)  # (W,)
    window = p0 + torch.repeat_interleave(torch.arange(p1 - p0, device=device), local, output_size=last - first)  # (N,)
    within = torch.arange(first, last, device=device) - ends[window]  # position inside its window
    cols = windows["cols"][window]
    row = windows["row0"][window] + torch.div(within, cols, rounding_mode="floor")
    col = windows["col0"][window] + within % cols
    return window, grid.point_index(row, col)
