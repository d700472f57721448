"""The (GT, anchor) pairs whose anchor centre lies strictly inside a rectangle around the GT.

No reference twin: search machinery of the prediction-aware assigners. TAL reads an anchor
for a GT only when the anchor's centre lies inside the GT (specs/tal.md §2.4), DSL's valid
priors are the anchors whose centre lies inside some GT (specs/dsl.md §2.1), and SimOTA's
candidates those whose centre lies inside some GT's box or centre square (specs/simota.md
§2.1). The references test every anchor against every GT; the twins get these pairs from
this module, exactly, without testing the others:

- ``centre_grids`` splits the anchors into runs of one anchor shape (width, height); when
  each run's centres form a row-major grid (the generated layout, specs/conventions.md §3:
  one run per level) they become a ``windows.PackedGrids``, computed once per anchors
  tensor (``assign/memo.py``). Otherwise (or with more than ``MAX_RUNS`` runs) there are no
  grids.
- ``rectangle_pairs`` finds, per GT slot and grid, the columns and rows whose centres lie
  strictly between the rectangle's bounds (two ``searchsorted`` per axis: the window) and
  lists its pairs, one row of the window (a run of consecutive anchors) at a time, so
  that a pair costs a few operations. Without grids the assigners test every pair.

Why exact: the tests are conjunctions of ``x - x1 > e`` and ``x2 - x > e`` (and the same
in y) with ``e >= 0``, the rectangle's bounds computed by the same arithmetic as the
test's. A rounded difference of two floats is positive exactly when the first is larger
(rounding is monotone, and with subnormals a difference of distinct floats is not 0), so
for ``e = 0`` the test is ``x1 < x < x2``, which is the window; for ``e > 0`` every accepted
centre is in the window and the test itself runs on the window's pairs. The windows hold
every centre of the grids between the bounds: the grid coordinates are the centres
themselves, checked equal when the grid is detected.
"""
import math

import torch

from detector.assign.atss import anchor_centers_of
from detector.assign.memo import memo
from detector.assign.windows import LevelGrid, PackedGrids
from detector.conventions import OCTAVE_BASE_SCALE

#: More runs of one anchor shape than this: no grids (the generated layouts have one per level).
MAX_RUNS = 64


def centre_grids(anchors):
    """The anchor centres as row-major grids, one per run of equal anchor shape, or None.

    Computed once per anchors tensor (``assign/memo.py``).

    Args:
        anchors: (A, 4) xyxy, checked.

    Returns:
        ``CentreGrids``, or None when the anchors are empty, have more than ``MAX_RUNS``
        runs, or a run's centres are not a row-major grid.
    """
    return memo(anchors, "centre grids", lambda: _build_grids(anchors))


class CentreGrids:
    """The anchors' centres as L row-major grids (``windows.PackedGrids`` ``packed``: level
    ``l`` is the ``l``-th run of one anchor shape, in anchor order), with the centres' (A,)
    ``x`` and ``y`` and each run's ``strides`` (L,), its anchor width / OCTAVE_BASE_SCALE
    computed as the assigners compute an anchor's stride."""

    def __init__(self, packed, centers, strides):
        self.packed = packed
        self.x, self.y = centers[:, 0].contiguous(), centers[:, 1].contiguous()
        self.strides = strides
        self.num_levels = packed.xs.shape[0]
        # each anchor's cell in an (L, H_max + 1, W_max + 1) table of the grids (``rectangle_mask``)
        self.cells = (packed.ys.shape[1] + 1, packed.xs.shape[1] + 1)
        level = torch.repeat_interleave(torch.arange(self.num_levels, device=centers.device), packed.width * packed.ys.isfinite().sum(dim=1))
        within = torch.arange(centers.shape[0], device=centers.device) - packed.offset[level]
        row, col = torch.div(within, packed.width[level], rounding_mode="floor"), within % packed.width[level]
        self.cell = (level * self.cells[0] + row) * self.cells[1] + col


def rectangle_mask(grids, rectangles, valid, image, batch):
    """Which anchors of each image have their centre strictly inside some valid rectangle of
    that image: ``rectangle_pairs`` (without ``margin``) reduced to a (B, A) mask, without
    listing the pairs.

    Each window (the rows and columns of a grid whose centres lie strictly between the
    rectangle's bounds, as in ``rectangle_pairs``) adds +1 and -1 at its four corners in a
    per-image table of the grids' cells; two cumulative sums then count the windows covering
    each cell (a 2-D difference array), O(1) work per window and O(B * A) in all.

    Args:
        grids: ``centre_grids(anchors)``, not None.
        rectangles: (S, 4) or (L, S, 4), as ``rectangle_pairs``.
        valid: (S,) bool.
        image: (S,) int64, the image of each slot, in 0..B-1.
        batch: B.

    Returns:
        (B, A) bool.
    """
    packed, num_levels = grids.packed, grids.num_levels
    height, width = grids.cells
    x1, y1, x2, y2 = _bounds(rectangles, num_levels)
    col0 = torch.searchsorted(packed.xs, x1, right=True)  # columns [col0, col1): x1 < x < x2
    col1 = torch.searchsorted(packed.xs, x2, right=False)
    row0 = torch.searchsorted(packed.ys, y1, right=True)
    row1 = torch.searchsorted(packed.ys, y2, right=False)
    empty = (col1 <= col0) | (row1 <= row0) | ~valid
    row1 = torch.where(empty, row0, row1)  # an empty window adds and removes at the same cells
    level = (image * num_levels)[None, :] + torch.arange(num_levels, device=image.device)[:, None]  # (L, S)
    top, bottom = (level * height + row0) * width, (level * height + row1) * width
    corners = torch.stack([top + col0, top + col1, bottom + col0, bottom + col1]).reshape(4, -1)
    signs = torch.tensor([[1], [-1], [-1], [1]], dtype=torch.int32, device=image.device).expand_as(corners)
    table = torch.zeros(batch * num_levels * height * width, dtype=torch.int32, device=image.device)
    table.index_add_(0, corners.reshape(-1), signs.reshape(-1))
    covered = table.view(batch * num_levels, height, width).cumsum(1, dtype=torch.int32).cumsum(2, dtype=torch.int32)
    return covered.view(batch, -1).index_select(1, grids.cell) > 0


def rectangle_pairs(grids, rectangles, valid, margin=None):
    """The (slot, anchor) pairs whose anchor centre lies inside the slot's rectangle.

    Args:
        grids: ``centre_grids(anchors)``, not None (without grids the assigners test every
            pair themselves).
        rectangles: (S, 4) xyxy, one per slot, or (L, S, 4), one per grid and slot (the
            rectangle of slot ``s`` for the anchors of grid ``l``); finite.
        valid: (S,) bool; an invalid slot gets no pair.
        margin: None: the centres strictly between the bounds, ``x1 < x < x2`` and
            ``y1 < y < y2``, which is exactly the test ``x - x1 > 0``, ``x2 - x > 0`` (and
            in y) of the assigners (a rounded difference of two floats is positive exactly
            when the first is larger, subnormals included). A float >= 0: the centres with
            ``x - x1 > margin``, ``x2 - x > margin``, ``y - y1 > margin`` and ``y2 - y >
            margin``, each difference rounded as computed (the ATSS inside test), tested on
            the pairs of the windows (with grids: by row, then by pair).

    Returns:
        slot, anchor: (P,) int64 each, slot-major and ascending anchor index within a slot:
        exactly the pairs described by ``margin``.
    """
    device = valid.device
    packed, num_levels = grids.packed, grids.num_levels
    bounds = _bounds(rectangles, num_levels)
    x1, y1, x2, y2 = bounds
    col0 = torch.searchsorted(packed.xs, x1, right=True)  # the first centre > x1 ...
    cols = (torch.searchsorted(packed.xs, x2, right=False) - col0).clamp(min=0)  # ... and those < x2
    row0 = torch.searchsorted(packed.ys, y1, right=True)
    rows = (torch.searchsorted(packed.ys, y2, right=False) - row0).clamp(min=0) * ((cols > 0) & valid)
    # window w = slot * L + level (slot-major); each of its rows is a run of consecutive anchors
    first = packed.offset[:, None] + row0 * packed.width[:, None] + col0  # (L, S): the window's first anchor
    slot = torch.arange(valid.shape[0], device=device).expand(num_levels, -1)
    rows = rows.t().reshape(-1)
    per_window = torch.stack([first, packed.width[:, None].expand_as(first), cols, slot]).transpose(1, 2).reshape(4, -1)
    per_window = torch.cat([per_window, (rows.cumsum(0) - rows)[None]])  # and the runs before it
    num_runs = int(rows.sum())
    if num_runs == 0:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return empty, empty
    # per run: its window's values (one repeat for all of them) and its first anchor
    first, width, count, slot, runs_before = per_window.repeat_interleave(rows, dim=1, output_size=num_runs)
    start = first + (torch.arange(num_runs, device=device) - runs_before) * width
    if margin is not None:
        x1, y1, x2, y2 = bounds.transpose(1, 2).reshape(4, -1).repeat_interleave(rows, dim=1, output_size=num_runs)
        y = grids.y.index_select(0, start)
        keep = torch.nonzero(((y - y1) > margin) & ((y2 - y) > margin)).squeeze(1)  # the y test, by run
        start, count, slot = start.index_select(0, keep), count.index_select(0, keep), slot.index_select(0, keep)
        x1, x2 = x1.index_select(0, keep), x2.index_select(0, keep)
    total = int(count.sum())
    # per pair: its run's values and its anchor
    first, slot = torch.stack([start - (count.cumsum(0) - count), slot]).repeat_interleave(count, dim=1, output_size=total)
    anchor = first + torch.arange(total, device=device)
    if margin is not None:
        x1, x2 = torch.stack([x1, x2]).repeat_interleave(count, dim=1, output_size=total)
        x = grids.x.index_select(0, anchor)
        keep = torch.nonzero(((x - x1) > margin) & ((x2 - x) > margin)).squeeze(1)  # the x test, by pair
        slot, anchor = slot.index_select(0, keep), anchor.index_select(0, keep)
    return slot, anchor


# ---------------------------------------------------------------------------------------
# helpers


def _bounds(rectangles, num_levels):
    """(S, 4) or (L, S, 4) rectangles -> (4, L, S) contiguous: x1, y1, x2, y2 per grid and slot."""
    if rectangles.ndim == 2:
        return rectangles.t()[:, None, :].expand(4, num_levels, -1).contiguous()
    return rectangles.permute(2, 0, 1).contiguous()


def _build_grids(anchors):
    count = anchors.shape[0]
    if count == 0:
        return None
    width, height = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    change = torch.nonzero((width[1:] != width[:-1]) | (height[1:] != height[:-1])).squeeze(1)
    if change.shape[0] >= MAX_RUNS:
        return None
    bounds = [0] + (change + 1).tolist() + [count]
    centers = anchor_centers_of(anchors)
    strides = width / OCTAVE_BASE_SCALE
    grids = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        grid = LevelGrid(centers, first, last - first, {"lo": -math.inf, "hi": math.inf, "stride": 1.0})
        if not grid.is_grid:
            return None
        grids.append(grid)
    return CentreGrids(PackedGrids(grids), centers, strides[bounds[:-1]])

