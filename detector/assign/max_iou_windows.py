"""Max-IoU on the (GT, anchor) pairs that can matter (specs/max_iou.md §7).

The search engine behind ``assign_max_iou_batched`` of ``detector/assign/max_iou.py`` (no
reference twin: the reference computes every IoU). The assignment reads an IoU only where
it is > 0 and, for GT ``g``, at least ``t_g = min(neg_iou_thr, max(L_g, min_pos_iou))``
(``neg_iou_thr`` without low-quality matches; ``L_g``: one IoU of ``g``, a lower bound of its
maximum), so only the pairs whose boxes overlap enough to reach it are evaluated:

- ``anchor_box_grids`` splits the anchors by (width, height) into shape groups (one per
  level and scale/ratio for generated anchors) and checks that each group is a row-major
  grid of boxes: ``x1`` and ``x2`` depend on the column only, ``y1`` and ``y2`` on the row
  only, each strictly increasing. Otherwise (or with more than ``MAX_SHAPES`` shapes) it
  returns None and the caller computes every IoU.
- ``AnchorBoxGrids.windows`` finds, per group and GT, the columns and rows whose
  intersection with the GT can be wide and high enough (two ``searchsorted`` per axis on
  the group's sorted edges); with ``t_g <= 0`` exactly those with a positive intersection.
- ``best_on_windows`` evaluates the IoU of those pairs with ``aligned_box_iou_unchecked``
  (the dense path's arithmetic, so the same values to the bit) in chunks of at most
  ``max(max_elements, B * A)`` pairs and reduces them per anchor and per GT with
  ``scatter_reduce``.
"""
import math

import torch

from detector.assign.memo import memo
from detector.assign.windows import expand_windows
from detector.boxes import aligned_box_iou_unchecked
from detector.conventions import BACKGROUND

#: More anchor shapes than this: no window search (RetinaNet has 9 per level, 45 in all).
MAX_SHAPES = 64

#: IoU bounds below this are treated as 0 (windows of overlapping boxes).
MIN_PRUNING_IOU = 2.0**-10

#: The rounding argument of specs/max_iou.md §7.3 holds for coordinates of magnitude at most
#: this and positive sides of at least ``1 / LARGEST_COORDINATE``; a GT outside these bounds
#: gets the windows of overlapping boxes (which need no rounding argument).
LARGEST_COORDINATE = 2.0**20

#: Relative slack on the window bounds, far above the rounding error of the IoU (< 2^-19
#: in float32) and of the bounds themselves.
SLACK = 2.0**-12

_NO_GT = torch.iinfo(torch.int64).max  # above every GT index


class AnchorBoxGrids:
    """The anchors as K row-major grids of boxes of one shape each (from ``anchor_box_grids``).

    ``x1``, ``x2`` (K, W_max) hold each group's column edges and ``y1``, ``y2``
    (K, H_max) its row edges, strictly increasing, padded with +inf; ``width``,
    ``height`` (K,) the group's anchor width and height. The groups' rows are numbered one
    after the other (group k's first row is ``row_offset[k]``); the anchor of (global row r,
    column c) is ``members[row_start[r] + c]``. ``in_range``: every anchor coordinate
    within ``LARGEST_COORDINATE`` and every positive side at least its inverse.
    """

    def __init__(self, members, row_start, row_offset, x1, x2, y1, y2, in_range):
        self.members, self.row_start, self.row_offset = members, row_start, row_offset
        self.x1, self.x2, self.y1, self.y2 = x1, x2, y1, y2
        self.width, self.height = x2[:, 0] - x1[:, 0], y2[:, 0] - y1[:, 0]
        self.in_range = in_range

    def point_index(self, row, col):
        """Anchor index of (global row, column) pairs: (N,), (N,) -> (N,) int64."""
        return self.members[self.row_start[row] + col]

    def probe_iou(self, boxes):
        """A lower bound of each GT's highest IoU: (S, 4) -> (S,), the highest IoU with the
        anchor in the middle of each group's window of overlapping anchors (0 if none)."""
        col0, cols = _ranges(self.x1, self.x2, boxes[:, 0], boxes[:, 2], 0.0)
        row0, rows = _ranges(self.y1, self.y2, boxes[:, 1], boxes[:, 3], 0.0)
        col = (col0 + cols // 2).clamp(max=self.x1.shape[1] - 1)
        row = (row0 + rows // 2).clamp(max=self.y1.shape[1] - 1)
        anchor = torch.stack([self.x1.gather(1, col), self.y1.gather(1, row), self.x2.gather(1, col), self.y2.gather(1, row)], dim=2)
        iou = aligned_box_iou_unchecked(boxes[None], anchor)  # (K, S): values of the IoU matrix
        return torch.where((rows > 0) & (cols > 0), iou, 0.0).amax(dim=0)

    def windows(self, boxes, valid, min_iou):
        """The window of every (group, GT slot) pair, for ``expand_windows``.

        Args:
            boxes: (S, 4) GT boxes; valid: (S,) bool.
            min_iou: (S,) the IoU a pair of each slot must reach to matter; <= 0: any
                overlap (below ``MIN_PRUNING_IOU`` and for GTs out of range: the same).

        Returns:
            dict of (K * S,) int64 ``row0`` (global row), ``col0``, ``cols``, ``count`` and
            ``ends`` (K * S + 1, a leading 0), window ``k * S + s`` for group k and slot s.
            A window holds every anchor of the group whose float IoU with the GT can be
            ``>= min_iou`` and > 0 (specs/max_iou.md §7.3); it is empty for invalid and
            zero-area GTs.
        """
        x1, y1, x2, y2 = boxes.unbind(dim=1)
        gt_w, gt_h = x2 - x1, y2 - y1
        useful = valid & (gt_w > 0) & (gt_h > 0)  # a zero-area GT has IoU 0 with everything
        prune = (min_iou >= MIN_PRUNING_IOU) & _in_range(boxes) & self.in_range
        iou = torch.where(prune, min_iou, 0.0) * (1 - SLACK)
        share = iou / (1 + iou)  # IoU >= t  <=>  intersection >= t / (1 + t) * (area_a + area_g)
        need = share * (self.width[:, None] * self.height[:, None] + gt_w * gt_h)  # (K, S)
        need_w = torch.where(need > 0, need / torch.minimum(self.height[:, None], gt_h), 0.0)  # inf: no pair
        need_h = torch.where(need > 0, need / torch.minimum(self.width[:, None], gt_w), 0.0)
        need_w = (need_w * (1 - SLACK) - SLACK * (x1.abs() + x2.abs())).clamp(min=0)
        need_h = (need_h * (1 - SLACK) - SLACK * (y1.abs() + y2.abs())).clamp(min=0)
        fits = (need_w <= torch.minimum(self.width[:, None], gt_w)) & (need_h <= torch.minimum(self.height[:, None], gt_h))
        col0, cols = _ranges(self.x1, self.x2, x1, x2, need_w)
        row0, rows = _ranges(self.y1, self.y2, y1, y2, need_h)
        count = (rows * cols * (useful & fits)).reshape(-1)
        return {
            "row0": (row0 + self.row_offset[:, None]).reshape(-1),
            "col0": col0.reshape(-1),
            "cols": cols.reshape(-1),
            "count": count,
            "ends": torch.cat([count.new_zeros(1), count.cumsum(0)]),
        }


def anchor_box_grids(anchors, max_shapes=MAX_SHAPES):
    """The anchors as row-major grids of boxes, one per shape, when they form them exactly.

    Args:
        anchors: (A, 4) xyxy, A >= 1.
        max_shapes: at most this many distinct (width, height) shapes.

    Returns:
        ``AnchorBoxGrids``, or None when there are more shapes or a shape's anchors (in
        index order) are not a row-major grid with strictly increasing edges.
    """
    count = anchors.shape[0]
    device = anchors.device
    shape = _shape_ids(anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1])
    sizes = torch.bincount(shape)  # (K,) ids are 0..K-1
    if sizes.shape[0] > max_shapes:
        return None
    members = torch.sort(shape, stable=True).indices  # grouped by shape, index order within
    group = shape[members]
    first = sizes.cumsum(0) - sizes  # (K,) position of each group's first member
    index = torch.arange(count, device=device)
    pos = index - first[group]  # position within the group
    x1, y1, x2, y2 = anchors[members].unbind(dim=1)
    # row length: the first position whose y1 differs from the group's first y1
    new_row = y1 != y1[first][group]
    width = sizes.scatter_reduce(0, group, torch.where(new_row, pos, count), "amin")  # (K,) >= 1
    row_length = width[group]
    col, row = pos % row_length, torch.div(pos, row_length, rounding_mode="floor")
    above, left = (index - row_length).clamp(min=0), (index - 1).clamp(min=0)
    at_row0, at_col0 = index - row * row_length, index - col  # same column in row 0, same row in column 0
    ok = torch.stack([
        sizes[group] % row_length == 0,
        x1 == x1[at_row0], x2 == x2[at_row0], y1 == y1[at_col0], y2 == y2[at_col0],
        (col == 0) | ((x1 > x1[left]) & (x2 > x2[left])),
        (row == 0) | ((y1 > y1[above]) & (y2 > y2[above])),
    ])
    if not bool(ok.all()):
        return None
    height = torch.div(sizes, width, rounding_mode="floor")
    in_row0, in_col0 = row == 0, col == 0
    edges = []
    columns, rows = (col, in_row0, width), (row, in_col0, height)
    for values, (along, keep, length) in ((x1, columns), (x2, columns), (y1, rows), (y2, rows)):
        table = torch.full((sizes.shape[0], int(length.max())), math.inf, dtype=anchors.dtype, device=device)
        table[group[keep], along[keep]] = values[keep]
        edges.append(table)
    row_start = torch.nonzero(in_col0).squeeze(1)  # each row's first member, groups in order
    return AnchorBoxGrids(members, row_start, height.cumsum(0) - height, *edges, in_range=bool(_in_range(anchors).all()))


def cached_anchor_box_grids(anchors):
    """``anchor_box_grids``, computed once per anchors tensor (``assign/memo.py``: the same
    tensor object, unchanged since; a training run passes the same anchors at every step,
    and finding the grids costs a few dozen passes over them)."""
    return memo(anchors, "anchor box grids", lambda: anchor_box_grids(anchors))


def best_on_windows(grids, gt_boxes, anchors, gt_valid, neg_iou_thr, min_pos_iou, max_elements):
    """``max_iou._best_in_chunks`` from the pairs of the windows only (specs/max_iou.md §7).

    Args:
        grids: ``AnchorBoxGrids`` of ``anchors``.
        gt_boxes: (B, G, 4), G >= 1; anchors: (A, 4); gt_valid: (B, G) bool.
        neg_iou_thr: float; anchors whose best IoU is below it are background.
        min_pos_iou: float, or None for no low-quality claims.
        max_elements: the pairs are evaluated in chunks of at most
            ``max(max_elements, B * A)`` (the result does not depend on it).

    Returns:
        best_iou (B, A), best_gt (B, A) int64, claim_iou (B, A) (-inf where no GT claims
        the anchor), claim_gt (B, A) int64, which give the dense path's assignment: equal
        to its values wherever ``best_iou >= neg_iou_thr`` (elsewhere both are below it),
        and wherever a GT claims the anchor.
    """
    batch, num_gts = gt_valid.shape
    num_anchors = anchors.shape[0]
    size = batch * num_anchors
    boxes, valid = gt_boxes.reshape(-1, 4), gt_valid.reshape(-1)
    min_iou = torch.full(valid.shape, neg_iou_thr, dtype=anchors.dtype, device=anchors.device)
    if min_pos_iou is not None:  # a claimed pair has the GT's highest IoU, >= min_pos_iou and >= any probe
        min_iou = torch.minimum(min_iou, grids.probe_iou(boxes).clamp(min=min_pos_iou))
    windows = grids.windows(boxes, valid, min_iou)
    total, chunk = int(windows["ends"][-1]), max(max_elements, size)
    starts = range(0, total, chunk)
    kept = [_pair_chunk(grids, windows, 0, total, gt_boxes, anchors)] if len(starts) == 1 else None

    def chunks():  # one chunk (the usual case) is kept for the claims, more are recomputed
        if kept is not None:
            return kept
        return (_pair_chunk(grids, windows, first, min(first + chunk, total), gt_boxes, anchors) for first in starts)

    zeros = torch.zeros(size, dtype=anchors.dtype, device=anchors.device)
    best, best_gt = zeros, torch.full((size,), _NO_GT, dtype=torch.int64, device=anchors.device)
    gt_max = torch.zeros(batch * num_gts, dtype=anchors.dtype, device=anchors.device)
    for slot, key, iou in chunks():
        best, best_gt = _merge(best, best_gt, *_best_per_key(iou, key, slot % num_gts, zeros))
        if min_pos_iou is not None:
            gt_max = gt_max.scatter_reduce(0, slot, iou, "amax")
    has_gt = gt_valid.any(dim=1)[:, None]
    first_valid = gt_valid.to(torch.uint8).argmax(dim=1)[:, None]  # IoU 0 everywhere: the lowest valid GT
    best_iou = torch.where(has_gt, best.view(batch, num_anchors), -math.inf)
    best_gt = torch.where(best.view(batch, num_anchors) > 0, best_gt.view(batch, num_anchors), first_valid)

    claim_iou = torch.full((size,), -math.inf, dtype=anchors.dtype, device=anchors.device)
    claim_gt = torch.full((size,), BACKGROUND, dtype=torch.int64, device=anchors.device)
    if min_pos_iou is not None:
        eligible = (gt_max >= min_pos_iou) & (gt_max > 0)  # a GT without pairs has maximum 0
        unclaimed = claim_iou
        for slot, key, iou in chunks():
            claimed = torch.where(eligible[slot] & (iou == gt_max[slot]), iou, -math.inf)
            claim_iou, claim_gt = _merge(claim_iou, claim_gt, *_best_per_key(claimed, key, slot % num_gts, unclaimed))
    return best_iou, best_gt, claim_iou.view(batch, num_anchors), claim_gt.view(batch, num_anchors)


def _shape_ids(widths, heights):
    """(A,) ids 0..K-1 of the distinct (width, height) pairs."""
    _, width_id = torch.unique(widths, return_inverse=True)
    _, height_id = torch.unique(heights, return_inverse=True)
    _, shape = torch.unique(width_id * (int(height_id.max()) + 1) + height_id, return_inverse=True)
    return shape


def _in_range(boxes):
    """(N, 4) -> (N,) bool: coordinates within ``LARGEST_COORDINATE``, positive sides at
    least its inverse (the bounds of the rounding argument)."""
    sides = boxes[:, 2:] - boxes[:, :2]
    small = (sides > 0) & (sides < 1 / LARGEST_COORDINATE)
    return (boxes.abs() <= LARGEST_COORDINATE).all(dim=1) & ~small.any(dim=1)


def _ranges(lows, highs, box_low, box_high, need):
    """First index and length of the range of intervals (lows[k, i], highs[k, i]) (strictly
    increasing, padded with +inf) with ``low < box_high - need`` and ``high > box_low + need``:
    (K, N) tables, (S,) box sides, (K, S) or scalar need -> (K, S), (K, S) int64."""
    shape = (lows.shape[0], box_low.shape[0])
    first = torch.searchsorted(highs, (box_low + need).expand(shape).contiguous(), right=True)  # first high > low + need
    end = torch.searchsorted(lows, (box_high - need).expand(shape).contiguous(), right=False)  # first low >= high - need
    return first, (end - first).clamp(min=0)


def _pair_chunk(grids, windows, first, last, gt_boxes, anchors):
    """Pairs [first, last) of the windows -> slot (N,), key = image * A + anchor (N,), IoU (N,)."""
    window, anchor = expand_windows(grids, windows, first, last)
    num_gts = gt_boxes.shape[1]
    slot = window % (gt_boxes.shape[0] * num_gts)
    iou = aligned_box_iou_unchecked(gt_boxes.reshape(-1, 4).index_select(0, slot), anchors.index_select(0, anchor))
    key = torch.div(slot, num_gts, rounding_mode="floor") * anchors.shape[0] + anchor
    return slot, key, iou


def _best_per_key(values, key, gt, start):
    """Per key, the highest of ``start`` and the pairs' values, and the lowest GT of a pair
    reaching it (``_NO_GT`` where none does): (N,) values, keys, GTs and (size,) start ->
    (size,), (size,)."""
    top = start.scatter_reduce(0, key, values, "amax")
    reach = torch.where(values == top[key], gt, _NO_GT)
    lowest = torch.full(start.shape, _NO_GT, dtype=torch.int64, device=start.device)
    return top, lowest.scatter_reduce(0, key, reach, "amin")


def _merge(best, best_gt, candidate, candidate_gt):
    """The better of two (value, GT) per key: the higher value, the lower GT on ties."""
    better = (candidate > best) | ((candidate == best) & (candidate_gt < best_gt))
    return torch.where(better, candidate, best), torch.where(better, candidate_gt, best_gt)
