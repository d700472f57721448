"""Windows of GTs on the levels of points: the (GT, point) pairs an anchor-free assigner
must test (specs/anchor_free.md §8).

The search engine behind ``_match_min_area`` of ``detector/assign/anchor_free.py`` (no
reference twin: the reference tests every point against every GT). It never builds a dense
(B, G_max, A) tensor: per level, each GT only meets the points inside a window around it (a
row/column range of the level's grid, or a range of the level's points sorted by y when the
points do not form a grid), and the window is conservative, so the exact tests of steps 2-3
run on a subset that holds every candidate. The pairs are produced in chunks of at most
``max_elements``. When every level is a grid (the generated layout), the levels are searched
side by side (``PackedGrids``): one pass for all levels instead of one per level.
"""
import torch

from detector.assign.grids import pad_stack, row_major_grid

#: Default bound on the (GT, point) pairs evaluated at once by a batched anchor-free assigner.
MAX_ELEMENTS = 1 << 22


class LevelGrid:
    """The points of one level as rows (sorted y) x columns (sorted x) for window look-ups.

    If the level's points are a row-major grid (``points == meshgrid(ys, xs)`` exactly,
    the layout of specs/conventions.md §3), rows are its ys and columns its xs and the
    point of row r, column c is ``offset + r * width + c``. Otherwise the points are
    sorted by y (stable) and form one column (windows then restrict y only), and the
    point of row r is ``order[r]``. ``level`` holds the level's scalar lo, hi, stride.
    """

    def __init__(self, points, offset, count, level):
        self.offset, self.level = offset, level
        grid = row_major_grid(points[offset : offset + count])
        self.is_grid = grid is not None
        if self.is_grid:
            self.xs, self.ys = grid
            self.order, self.width = None, self.xs.shape[0]
        else:
            y = points[offset : offset + count, 1]
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
        row0, rows = _range(self.ys, y1, y2, self.level["hi"])
        if self.is_grid:
            col0, cols = _range(self.xs, x1, x2, self.level["hi"])
        else:
            col0, cols = torch.zeros_like(row0), torch.ones_like(rows)
        count = rows * cols * valid
        ends = torch.cat([count.new_zeros(1), count.cumsum(0)])
        return {"row0": row0, "col0": col0, "cols": cols, "count": count, "ends": ends}

    def point_index(self, row, col):
        """Flat point index of (row, col) pairs of this level."""
        if self.is_grid:
            return self.offset + row * self.width + col
        return self.offset + self.order[row]


def level_grids(points, num_points_per_level, levels):
    """The levels prepared for window look-ups: a ``PackedGrids`` when there are several
    non-empty levels and each is a row-major grid, else one ``LevelGrid`` per non-empty level.

    Args:
        points: (A, 2) (x, y), level-major.
        num_points_per_level: L ints summing to A.
        levels: L dicts of the level's scalar ``lo``, ``hi`` and ``stride``.

    Returns:
        ``PackedGrids``, or a list of ``LevelGrid`` in level order.
    """
    grids, offset = [], 0
    for count, level in zip(num_points_per_level, levels):
        if count:
            grids.append(LevelGrid(points, offset, count, level))
        offset += count
    if len(grids) > 1 and all(grid.is_grid for grid in grids):
        return PackedGrids(grids)
    return grids


def window_pairs(grids, boxes, valid, max_elements):
    """The (GT, point) pairs of every window, in chunks.

    Args:
        grids: from ``level_grids``: a ``PackedGrids`` (all levels at once) or a list of
            ``LevelGrid`` (level by level).
        boxes: (B * G_max, 4) xyxy GT boxes, a batch's slots flattened (slot = b * G_max + g).
        valid: (B * G_max,) bool, which slots are real GTs.
        max_elements: int >= 1, the most pairs per chunk (any value gives the same pairs).

    Yields:
        ``(level, slot, point)``: the scalars ``lo``, ``hi`` and ``stride`` of the pairs'
        level (floats, or (N,) tensors of each pair's level from a ``PackedGrids``) and two
        (N,) int64 tensors with N <= max_elements, the slot and the point of each pair;
        every pair of a window once.
    """
    for grid in [grids] if isinstance(grids, PackedGrids) else grids:  # at most L levels
        windows = grid.windows(boxes, valid)
        total = int(windows["ends"][-1])
        for first in range(0, total, max_elements):
            window, point = expand_windows(grid, windows, first, min(first + max_elements, total))
            if isinstance(grid, PackedGrids):
                level = torch.div(window, len(boxes), rounding_mode="floor")
                yield grid.pair_levels(level), window - level * len(boxes), point
            else:
                yield grid.level, window, point


def expand_windows(grid, windows, first, last):
    """Positions [first, last) of the concatenated windows -> (window, point), (N,) int64 each.

    Args:
        grid: anything with ``point_index(row, col)`` mapping (N,) rows and columns to
            (N,) point indices (a ``LevelGrid``; also used by ``max_iou_windows``).
        windows: dict of (W,) int64 ``row0``, ``col0``, ``cols`` and ``ends`` (W + 1: the
            cumulated window sizes after a leading 0), as ``LevelGrid.windows`` returns.
        first, last: ``0 <= first < last <= ends[-1]``.

    Returns:
        the window of each position and its point, in window order, then row-major within
        a window.
    """
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


class PackedGrids:
    """Every level of a layout whose levels are all row-major grids, side by side, so that
    the windows of all levels are found and expanded in one pass (a fixed number of tensor
    operations per call instead of that many per level; at a few GTs per image the per-level
    calls were most of an anchor-free assignment's time, docs/benchmarks.md).

    ``xs`` (L, W_max) and ``ys`` (L, H_max) hold each level's column and row coordinates,
    padded with +inf. Window ``w = level * N + slot`` of N GT slots; its rows are numbered
    globally, ``level * H_max + row``, so that ``point_index`` finds the level of a pair from
    its row. ``lo``, ``hi`` and ``stride`` are (L,) tensors of the points' dtype holding the
    levels' scalars (each Python float converted once, as the scalar of a per-level
    comparison is), and ``levels`` the per-level dicts.
    """

    def __init__(self, grids):
        device, dtype = grids[0].ys.device, grids[0].ys.dtype
        self.levels = [grid.level for grid in grids]
        self.xs = pad_stack([grid.xs for grid in grids])
        self.ys = pad_stack([grid.ys for grid in grids])
        self.height = self.ys.shape[1]
        self.offset = torch.tensor([grid.offset for grid in grids], device=device)
        self.width = torch.tensor([grid.width for grid in grids], device=device)
        for name in ("lo", "hi", "stride"):
            setattr(self, name, torch.tensor([level[name] for level in self.levels], dtype=dtype, device=device))

    def windows(self, boxes, valid):
        """``LevelGrid.windows`` of every level: (N, 4) boxes, (N,) valid -> dict of (L * N,)
        int64 tensors (``ends``: one more), window ``level * N + slot``, global rows."""
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        hi = self.hi[:, None]  # (L, 1): the same window bound as LevelGrid._range, every level at once
        row0, rows = _range(self.ys, y1, y2, hi)
        col0, cols = _range(self.xs, x1, x2, hi)
        count = (rows * cols * valid).reshape(-1)
        row0 = (row0 + torch.arange(len(self.levels), device=row0.device)[:, None] * self.height).reshape(-1)
        ends = torch.cat([count.new_zeros(1), count.cumsum(0)])
        return {"row0": row0, "col0": col0.reshape(-1), "cols": cols.reshape(-1), "count": count, "ends": ends}

    def point_index(self, row, col):
        """Flat point index of (global row, column) pairs."""
        level = torch.div(row, self.height, rounding_mode="floor")
        return self.offset[level] + (row - level * self.height) * self.width[level] + col

    def pair_levels(self, level):
        """The scalars of each pair's level: (N,) level indices -> dict of (N,) tensors."""
        return {"lo": self.lo[level], "hi": self.hi[level], "stride": self.stride[level]}


def _range(sorted_values, low, high, hi):
    """Index range of the sorted values strictly inside (low, high) and within hi of both ends
    (with slack): ``sorted_values`` (S,) or (L, S), ``low``/``high`` (N,), ``hi`` a float or
    (L, 1) -> first index and count, (N,) or (L, N) int64."""
    slack = 1e-3 * (low.abs() + high.abs() + 1.0 + hi)  # inf when hi is inf
    lower = torch.maximum(low, high - hi - slack)  # hi = inf: no restriction
    upper = torch.minimum(high, low + hi + slack)
    if sorted_values.ndim == 2:
        lower, upper = lower.expand(sorted_values.shape[0], -1).contiguous(), upper.expand(sorted_values.shape[0], -1).contiguous()
    first = torch.searchsorted(sorted_values, lower, right=True)  # first value > lower
    end = torch.searchsorted(sorted_values, upper, right=False)  # first value >= upper
    return first, (end - first).clamp(min=0)
