"""The k nearest anchors of each GT centre on each level, exactly and fast (specs/atss.md §2.1).

The search engine behind ``select_candidates`` of ``detector/assign/atss.py`` (no reference
twin: the reference sorts every distance). The result is the reference's to the bit: per
level the ``min(k, A_l)`` anchors with the smallest squared centre distance
``dx * dx + dy * dy``, ordered by (squared distance, anchor index), ties to the lower anchor
index on every device (specs/conventions.md §5.1).

- ``torch.topk`` picks the k smallest values but not which of several equal values:
  ``_exact_topk`` takes ``k + 1`` and redoes with a stable sort the rows where the k-th and
  (k+1)-th values are equal (a tie across the cut).
- On a level whose centres form a row-major grid (``detector/assign/grids.py``) distances
  are computed only in a window of cells around each GT centre, and a row is kept only where
  that is provably exact (``_nearest_on_grids``); other rows and levels compute every
  distance (``_nearest_in_level``).
- GTs are processed in chunks so that at most about ``max_elements`` distances exist at once.
- Several anchors per location (specs/anchors.md §3) share a centre, so they tie in distance
  and follow each other in index order: when every level's centres come in runs of ``n``
  equal centres, the search runs on the locations with ``ceil(k / n)`` and each location
  found is expanded into its ``n`` anchors (``_nearest_by_location``); the first
  ``min(k, A_l)`` of that expansion are exactly the (distance, anchor index) order.
"""
import math

import torch

from detector.assign.grids import pad_stack, row_major_grid
from detector.assign.memo import memo


def nearest_anchors(gt_centers, anchor_centers, num_anchors_per_level, topk, max_elements):
    """The k nearest anchors of each GT centre, level by level.

    Args:
        gt_centers: (B, G, 2) (x, y).
        anchor_centers: (A, 2) (x, y), level-major, of the same floating dtype and device.
        num_anchors_per_level: L ints summing to A.
        topk: int >= 1.
        max_elements: int >= 1; GTs are processed in chunks so that at most about this
            many distances exist at once (the result does not depend on it).

    Returns:
        (B, G, C) int64 anchor indices into ``anchor_centers``, C = sum_l min(topk, A_l);
        level 0's first, within a level in (squared distance, anchor index) order.
    """
    counts = tuple(num_anchors_per_level)
    group = memo(anchor_centers, ("per location", counts), lambda: _anchors_per_location(anchor_centers, counts))
    if group > 1:
        return _nearest_by_location(gt_centers, anchor_centers, num_anchors_per_level, topk, max_elements, group)
    batch, num_gts = gt_centers.shape[:2]
    levels = memo(anchor_centers, ("levels", counts, topk), lambda: _levels(anchor_centers, counts, topk))
    chunk = max(1, max_elements // max(1, batch * max(num_anchors_per_level, default=0)))
    blocks = []
    for first in range(0, num_gts, chunk):
        centers = gt_centers[:, first : first + chunk]
        blocks.append(_cat(_nearest(centers, anchor_centers, levels), centers.shape[:2], anchor_centers.device))
    if not blocks:
        num_candidates = sum(min(topk, n) for n in num_anchors_per_level)
        return torch.zeros((batch, 0, num_candidates), dtype=torch.int64, device=anchor_centers.device)
    return torch.cat(blocks, dim=1)


def _anchors_per_location(anchor_centers, num_anchors_per_level):
    """``n`` > 1 when every non-empty level's centres come in runs of ``n`` equal centres
    (``n`` anchors per location, the same ``n`` on every level), else 1."""
    group, start = None, 0
    for count in num_anchors_per_level:
        if count > 0:
            centers = anchor_centers[start : start + count]
            differs = (centers != centers[0]).any(dim=1)
            n = int(differs.to(torch.uint8).argmax()) if bool(differs.any()) else count
            if n <= 1 or (group is not None and n != group) or count % n:
                return 1
            runs = centers.view(count // n, n, 2)
            if not torch.equal(runs, runs[:, :1].expand_as(runs)):
                return 1
            group = n
        start += count
    return group or 1


def _nearest_by_location(gt_centers, anchor_centers, num_anchors_per_level, topk, max_elements, group):
    """``nearest_anchors`` for ``group`` anchors per location: the ``ceil(topk / group)``
    nearest locations of each level, each expanded into its anchors ``location * group + j``,
    the first ``min(topk, A_l)`` kept. Anchors of one location tie in distance and are
    consecutive, so this is the (squared distance, anchor index) order exactly."""
    location_counts = [count // group for count in num_anchors_per_level]
    location_centers = memo(anchor_centers, ("locations", group), lambda: anchor_centers[::group].clone())
    locations = nearest_anchors(gt_centers, location_centers, location_counts, math.ceil(topk / group), max_elements)
    offsets = torch.arange(group, device=anchor_centers.device)
    parts, location_start, first = [], 0, 0
    for count, location_count in zip(num_anchors_per_level, location_counts):
        k_locations = min(math.ceil(topk / group), location_count)
        block = locations[..., first : first + k_locations] - location_start  # (B, G, k_locations) level-local
        index = (block[..., None] * group + offsets).flatten(-2)[..., : min(topk, count)]
        parts.append(index + location_start * group)
        first += k_locations
        location_start += location_count
    return _cat(parts, gt_centers.shape[:2], anchor_centers.device)


def _levels(anchor_centers, num_anchors_per_level, topk):
    """The non-empty levels as ``(start, count, k, grid)``, ``grid`` from ``_grid`` (or None)."""
    levels, start = [], 0
    for count in num_anchors_per_level:
        if count > 0:
            k = min(topk, count)
            levels.append((start, count, k, _grid(anchor_centers[start : start + count], k)))
        start += count
    return levels


def _grid(anchor_centers, k):
    """(xs (W_l,), ys (H_l,), radius) when the level's (A_l, 2) centres form a row-major grid
    big enough for a ``(2 * radius + 1)^2`` window; None otherwise."""
    radius = math.ceil(math.ceil(math.sqrt(k)) / 2) + 1
    side = 2 * radius + 1
    if anchor_centers.shape[0] < side * side:
        return None
    grid = row_major_grid(anchor_centers)
    if grid is None or grid[0].shape[0] < side or grid[1].shape[0] < side:
        return None
    return (*grid, radius)


def _nearest(gt_centers, anchor_centers, levels):
    """k nearest anchors of each level: (B, G, 2) GT centres -> one (B, G, k_l) tensor of
    anchor indices per level (ordered by (squared distance, index)).

    Levels whose centres form a regular grid take a fast exact path (``_nearest_on_grids``),
    all such levels with the same k at once; the others compute every distance
    (``_nearest_in_level``).
    """
    result = [None] * len(levels)
    same_k = {}
    for position, (start, count, k, grid) in enumerate(levels):
        if grid is None:
            result[position] = _nearest_in_level(gt_centers, anchor_centers[start : start + count], k) + start
        else:
            same_k.setdefault(k, []).append(position)
    for k, positions in same_k.items():
        found = _nearest_on_grids(gt_centers, anchor_centers, [levels[p] for p in positions], k)
        for position, index in zip(positions, found.unbind(0)):
            result[position] = index
    return result


def _nearest_on_grids(gt_centers, anchor_centers, levels, k):
    """k nearest anchors on L' grid levels at once: (B, G, 2) -> (L', B, G, k) anchor indices.

    On a grid (rows of equal y, columns of equal x, both increasing: what every anchor
    generator produces) the k nearest centres of a GT lie in a small window of cells around
    the GT centre. We compute distances in that window only, with the same arithmetic as
    the dense path, and keep the result only where it is provably exact: the k-th window
    distance must be strictly below a lower bound on every outside anchor's distance (the
    squared gap to the nearest column or row outside the window, computed in the same
    rounding). Other rows take the dense path. The levels' column and row coordinates are
    padded with +inf to a common length, so every step runs once for all levels.
    """
    device = anchor_centers.device
    radius = levels[0][3][2]  # the same for every level with this k
    side = 2 * radius + 1
    batch, num_gts = gt_centers.shape[:2]
    num_levels, num_rows = len(levels), batch * num_gts
    key = ("grid pack", tuple((first, count, k) for first, count, k, _ in levels))
    xs, ys, width, height, start = memo(anchor_centers, key, lambda: _grid_pack(levels, device))
    centers = gt_centers.reshape(num_rows, 2)
    gx = centers[:, 0].expand(num_levels, num_rows).contiguous()  # (L', N)
    gy = centers[:, 1].expand(num_levels, num_rows).contiguous()
    col0 = torch.minimum((torch.searchsorted(xs, gx) - radius).clamp(min=0), width - side)  # (L', N) window origin
    row0 = torch.minimum((torch.searchsorted(ys, gy) - radius).clamp(min=0), height - side)
    steps = torch.arange(side, device=device)
    cols = col0[..., None] + steps  # (L', N, side)
    rows = row0[..., None] + steps
    dx = xs.gather(1, cols.flatten(1)).view(num_levels, num_rows, side) - gx[..., None]
    dx.mul_(dx)
    dy = ys.gather(1, rows.flatten(1)).view(num_levels, num_rows, side) - gy[..., None]
    dy.mul_(dy)
    squared = (dx[..., None, :] + dy[..., :, None]).flatten(-2)  # (L', N, side * side), row-major: anchor order
    values, local = _exact_topk(squared, k)  # local = window row * side + window column
    index = start + (row0[..., None] + local // side) * width[..., None] + col0[..., None] + local % side  # (L', N, k)
    # lower bound on the squared distance of any anchor outside the window
    inf = torch.full_like(gx, math.inf)
    left = torch.where(col0 > 0, xs.gather(1, (col0 - 1).clamp(min=0)) - gx, inf)
    right = torch.where(col0 + side < width, xs.gather(1, torch.minimum(col0 + side, width - 1)) - gx, inf)
    top = torch.where(row0 > 0, ys.gather(1, (row0 - 1).clamp(min=0)) - gy, inf)
    bottom = torch.where(row0 + side < height, ys.gather(1, torch.minimum(row0 + side, height - 1)) - gy, inf)
    bound = torch.minimum(torch.minimum(left * left, right * right), torch.minimum(top * top, bottom * bottom))
    unsafe = ~(values[..., -1] < bound)  # (L', N)
    if bool(unsafe.any()):
        for position, (first, count, _, _) in enumerate(levels):
            rows_unsafe = unsafe[position].nonzero(as_tuple=True)[0]
            if rows_unsafe.numel():
                dense = _nearest_in_level(centers[rows_unsafe][None], anchor_centers[first : first + count], k)[0]
                index[position, rows_unsafe] = dense + first
    # ``_exact_topk`` returns ascending values (side * side > k), so a row without equal
    # values is in (distance, index) order already (dense rows are ordered too); rows with
    # equal values are sorted
    tied = (values[..., 1:] == values[..., :-1]).any(dim=-1)  # (L', N)
    if bool(tied.any()):
        level_tied, rows_tied = tied.nonzero(as_tuple=True)
        index[level_tied, rows_tied] = _order_by_distance_then_index(centers[rows_tied], anchor_centers, index[level_tied, rows_tied])
    return index.view(num_levels, batch, num_gts, k)


def _grid_pack(levels, device):
    """The grids of L' levels side by side: xs (L', W_max) and ys (L', H_max), +inf padded;
    width, height (L', 1) and the levels' first anchor index start (L', 1, 1)."""
    xs = pad_stack([grid[0] for _, _, _, grid in levels])
    ys = pad_stack([grid[1] for _, _, _, grid in levels])
    width = torch.tensor([grid[0].shape[0] for _, _, _, grid in levels], device=device)[:, None]
    height = torch.tensor([grid[1].shape[0] for _, _, _, grid in levels], device=device)[:, None]
    start = torch.tensor([level[0] for level in levels], device=device)[:, None, None]
    return xs, ys, width, height, start


def _exact_topk(squared, k):
    """(..., N) values -> the k smallest (values, positions) with ties to the lower position."""
    count = squared.shape[-1]
    if k >= count:
        return squared, torch.arange(count, device=squared.device).expand_as(squared)
    values, index = squared.topk(k + 1, dim=-1, largest=False, sorted=True)
    tied = values[..., k - 1] == values[..., k]
    values, index = values[..., :k], index[..., :k]
    rows = tied.nonzero(as_tuple=True)
    if rows[0].numel():
        exact = torch.sort(squared[rows], dim=-1, stable=True)
        values[rows], index[rows] = exact.values[:, :k], exact.indices[:, :k]
    return values, index


def _order_by_distance_then_index(gt_centers, anchor_centers, index):
    """Sort each row of chosen indices (..., k) by (squared distance, index); ``gt_centers``
    (..., 2) are the rows' GT centres."""
    chosen = anchor_centers[index]  # (..., k, 2)
    dx = chosen[..., 0] - gt_centers[..., 0, None]
    dy = chosen[..., 1] - gt_centers[..., 1, None]
    values = dx * dx + dy * dy
    index, order = index.sort(dim=-1)
    values = values.gather(-1, order)
    order = values.sort(dim=-1, stable=True).indices
    return index.gather(-1, order)


def _nearest_in_level(gt_centers, anchor_centers, k):
    """(B, G, 2) GT centres, (A_l, 2) anchor centres -> (B, G, k) level-local indices of the
    k nearest, ordered by (squared distance, index) exactly."""
    dx = anchor_centers[:, 0].contiguous() - gt_centers[..., 0, None]
    dx.mul_(dx)
    dy = anchor_centers[:, 1].contiguous() - gt_centers[..., 1, None]
    dy.mul_(dy)
    squared = dx.add_(dy)  # (B, G, A_l): dx * dx + dy * dy, in place to save memory traffic
    del dy
    _, index = _exact_topk(squared, k)
    return _order_by_distance_then_index(gt_centers, anchor_centers, index)


def _cat(parts, leading_shape, device):
    """The per-level index tensors side by side: list of (B, G, k_l) -> (B, G, sum k_l)."""
    if parts:
        return torch.cat(parts, dim=-1)
    return torch.zeros((*leading_shape, 0), dtype=torch.int64, device=device)
