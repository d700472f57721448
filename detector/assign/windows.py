"""Windows of GTs on the levels of points: the (GT, point) pairs an anchor-free assigner
must test (specs/anchor_free.md §8).

The search engine behind ``_match_min_area`` of ``detector/assign/anchor_free.py`` (no
reference twin: the reference tests every point against every GT). It never builds a dense
(B, G_max, A) tensor: per level, each GT only meets the points inside a window around it (a
row/column range of the level's grid, or a range of the level's points sorted by y when the
points do not form a grid), and the window is conservative, so the exact tests of steps 2-3
run on a subset that holds every candidate. The pairs are produced in chunks of at most
``max_elements``.
"""
import torch

from detector.assign.grids import row_major_grid

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


def level_grids(points, num_points_per_level, levels):
    """One ``LevelGrid`` per non-empty level.

    Args:
        points: (A, 2) (x, y), level-major.
        num_points_per_level: L ints summing to A.
        levels: L dicts of the level's scalar ``lo``, ``hi`` and ``stride``.

    Returns:
        list of ``LevelGrid``, in level order.
    """
    grids, offset = [], 0
    for count, level in zip(num_points_per_level, levels):
        if count:
            grids.append(LevelGrid(points, offset, count, level))
        offset += count
    return grids


def window_pairs(grids, boxes, valid, max_elements):
    """The (GT, point) pairs of every window, level by level, in chunks.

    Args:
        grids: ``LevelGrid`` list from ``level_grids``.
        boxes: (B * G_max, 4) xyxy GT boxes, a batch's slots flattened (slot = b * G_max + g).
        valid: (B * G_max,) bool, which slots are real GTs.
        max_elements: int >= 1, the most pairs per chunk (any value gives the same pairs).

    Yields:
        ``(grid, slot, point)``: the level's ``LevelGrid`` and two (N,) int64 tensors with
        N <= max_elements, the slot and the point of each pair; every pair of a window once.
    """
    for grid in grids:  # at most L levels
        windows = grid.windows(boxes, valid)
        total = int(windows["ends"][-1])
        for first in range(0, total, max_elements):
            slot, point = expand_windows(grid, windows, first, min(first + max_elements, total))
            yield grid, slot, point


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
