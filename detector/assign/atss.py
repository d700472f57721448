"""ATSS: adaptive training sample selection (specs/atss.md). Twin of ``reference/assign/atss.py``.

Vectorised over images, GTs and anchors; the only Python loops run over the (at most 5)
pyramid levels and, for very large inputs, over chunks of GTs (``max_elements``). Works in
the floating dtype of its inputs (float32 or float64) on any device and never builds a
graph (assignment is not differentiable).

The step helpers (``select_candidates``, ``candidate_ious``, ``mean_plus_std_threshold``,
``centers_inside``, ``resolve_multiple_matches``) take batched tensors: GTs ``(B, G, 4)``,
candidates ``(B, G, C)``. Dynamic ATSS (``detector/assign/dynamic_atss.py``) reuses them.
"""
import math

import numpy as np
import torch

from detector.assign.result import Assignment
from detector.conventions import ATSS_INSIDE_EPS, ATSS_TOPK, BACKGROUND
from detector.validation import as_boxes, check_level_counts

#: Default bound on the number of GT x anchor values materialised at once (B * G * A).
DEFAULT_MAX_ELEMENTS = 2**26


def assign_atss(
    anchors, num_anchors_per_level, gt_boxes, *, topk=ATSS_TOPK, inside_eps=ATSS_INSIDE_EPS, max_elements=DEFAULT_MAX_ELEMENTS
):
    """Assign anchors to GTs with ATSS, one image (specs/atss.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes allowed.
        topk: int >= 1, candidates per level and GT.
        inside_eps: float >= 0, strict inside margin of the anchor centre (pixels).
        max_elements: bound on B * G * A values held at once (GTs are chunked above it).

    Returns:
        ``detector.assign.result.Assignment`` of tensors on the anchors' device:
        matched_gt (A,) int64, matched_metric (A,) IoU, gt_threshold (G,),
        candidate_index (G, C) int64 with C = sum_l min(topk, A_l).
    """
    anchors = as_boxes(anchors, "anchors")
    gt_boxes = as_boxes(gt_boxes, "gt_boxes")
    gt_valid = torch.ones(gt_boxes.shape[:1], dtype=torch.bool, device=gt_boxes.device)
    result = assign_atss_batched(
        anchors, num_anchors_per_level, gt_boxes[None], gt_valid[None], topk=topk, inside_eps=inside_eps, max_elements=max_elements
    )
    return result.image(0)


def assign_atss_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    *,
    topk=ATSS_TOPK,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """ATSS for a batch of images sharing one set of anchors (specs/atss.md §2).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything finite.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        topk, inside_eps: as ``assign_atss``.
        max_elements: bound on the B * G * A values held at once.

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) (NaN for padded slots and when C = 0), candidate_index (B, G_max, C)
        int64 (-1 for padded slots).
    """
    anchors, gt_boxes, gt_valid, counts = prepare_batch(anchors, num_anchors_per_level, gt_boxes, gt_valid)
    topk = check_topk(topk)
    inside_eps = check_nonnegative(inside_eps, "inside_eps")
    max_elements = check_max_elements(max_elements)
    with torch.no_grad():
        candidate_index = select_candidates(gt_boxes, anchors, counts, topk, max_elements=max_elements)
        ious = candidate_ious(gt_boxes, anchors, candidate_index)
        threshold = mean_plus_std_threshold(ious)
        is_positive = (ious >= threshold[..., None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
        is_positive &= gt_valid[..., None]
        matched_gt, matched_metric = resolve_multiple_matches(candidate_index, ious, is_positive, anchors.shape[0])
        return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers; inputs are validated tensors of one floating dtype on one device


def select_candidates(gt_boxes, anchors, num_anchors_per_level, topk, *, max_elements=DEFAULT_MAX_ELEMENTS):
    """Candidate anchors of each GT (specs/atss.md §2.1).

    Per level the ``min(topk, A_l)`` anchors with the smallest squared centre distance
    ``dx * dx + dy * dy``, ordered by (squared distance, anchor index); ties go to the lower
    anchor index exactly, on every device. ``torch.topk`` picks the k smallest values but
    not which of several equal values: we take ``k + 1`` and, in the rows where the k-th and
    (k+1)-th values are equal (a tie across the cut), redo that row with a stable sort.

    Args:
        gt_boxes: (B, G, 4).
        anchors: (A, 4).
        num_anchors_per_level: L ints summing to A.
        topk: int >= 1.
        max_elements: GTs are processed in chunks so that at most about this many
            distances exist at once.

    Returns:
        (B, G, C) int64 anchor indices, C = sum_l min(topk, A_l), level 0 first.
    """
    batch, num_gts = gt_boxes.shape[:2]
    anchor_centers = _centers(anchors)
    gt_centers = _centers(gt_boxes)
    levels = _levels(anchor_centers, num_anchors_per_level, topk)
    chunk = max(1, max_elements // max(1, batch * max(num_anchors_per_level, default=0)))
    blocks = []
    for first in range(0, num_gts, chunk):
        centers = gt_centers[:, first : first + chunk]
        blocks.append(_cat(_nearest(centers, anchor_centers, levels), centers.shape[:2], anchors.device))
    if not blocks:
        return torch.zeros((batch, 0, sum(min(topk, n) for n in num_anchors_per_level)), dtype=torch.int64, device=anchors.device)
    return torch.cat(blocks, dim=1)


def candidate_ious(gt_boxes, boxes, candidate_index):
    """IoU between each GT and the boxes of its candidates (specs/atss.md §2.2).

    The same arithmetic, in the same order, as ``reference.boxes.box_iou`` (and
    ``torchvision.ops.box_iou``) on the gathered pairs; 0 where the union is 0 instead of
    torchvision's NaN.

    Args:
        gt_boxes: (B, G, 4).
        boxes: (A, 4) shared by the batch, or (B, A, 4) per image (finite).
        candidate_index: (B, G, C) int64.

    Returns:
        (B, G, C) IoUs in [0, 1].
    """
    return aligned_iou(gt_boxes[:, :, None, :], gather_boxes(boxes, candidate_index))


def mean_plus_std_threshold(values):
    """Mean plus sample standard deviation along the last dim (specs/atss.md §2.3).

    Sums run left to right (cumulative sums), as in the reference: float64 results are
    bit-identical to it on CPU.

    Args:
        values: (..., C).

    Returns:
        (...) ``mean + std`` with divisor ``C - 1``; ``std = 0`` when C = 1; NaN when C = 0.
    """
    count = values.shape[-1]
    if count == 0:
        return torch.full(values.shape[:-1], math.nan, dtype=values.dtype, device=values.device)
    mean = values.cumsum(dim=-1)[..., -1] / count
    if count == 1:
        return mean + 0.0
    deviation = values - mean[..., None]
    variance = (deviation * deviation).cumsum(dim=-1)[..., -1] / (count - 1)
    return mean + _ieee_sqrt(variance)


def centers_inside(gt_boxes, anchors, candidate_index, eps):
    """Whether each candidate's anchor centre lies inside its GT (specs/atss.md §2.4).

    Args:
        gt_boxes: (B, G, 4).
        anchors: (A, 4).
        candidate_index: (B, G, C) int64.
        eps: float; inside means ``min(x - x1, y - y1, x2 - x, y2 - y) > eps`` (strict).

    Returns:
        (B, G, C) bool.
    """
    centers = _centers(anchors[candidate_index])  # (B, G, C, 2)
    x, y = centers[..., 0], centers[..., 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))
    return margin > eps


def resolve_multiple_matches(candidate_index, candidate_metric, is_positive, num_anchors):
    """Give each anchor to at most one GT (specs/atss.md §2.5; conventions §5.2).

    Highest metric wins; among equal metrics the lower GT index. Two scatter reductions:
    the best metric per anchor, then the lowest GT index reaching it.

    Args:
        candidate_index: (B, G, C) int64.
        candidate_metric: (B, G, C) float.
        is_positive: (B, G, C) bool.
        num_anchors: A.

    Returns:
        matched_gt (B, A) int64 (GT index or BACKGROUND) and matched_metric (B, A) (0 for
        background).
    """
    batch, num_gts = candidate_index.shape[:2]
    device = candidate_index.device
    offsets = torch.arange(batch, device=device)[:, None, None] * num_anchors
    flat_index = (candidate_index + offsets).reshape(-1)
    metric = torch.where(is_positive, candidate_metric, -math.inf).reshape(-1)
    best = torch.full((batch * num_anchors,), -math.inf, dtype=candidate_metric.dtype, device=device)
    best.scatter_reduce_(0, flat_index, metric, reduce="amax")
    gt_index = torch.arange(num_gts, device=device)[None, :, None].expand_as(candidate_index).reshape(-1)
    is_winner = is_positive.reshape(-1) & (metric == best[flat_index])
    winner = torch.full((batch * num_anchors,), num_gts, dtype=torch.int64, device=device)
    winner.scatter_reduce_(0, flat_index, torch.where(is_winner, gt_index, num_gts), reduce="amin")
    matched_gt = torch.where(winner < num_gts, winner, BACKGROUND).reshape(batch, num_anchors)
    matched_metric = torch.where(matched_gt >= 0, best.reshape(batch, num_anchors), 0.0)
    return matched_gt, matched_metric


# ---------------------------------------------------------------------------------------
# option checks


def check_topk(topk):
    """``topk`` must be an int >= 1 (bools are rejected)."""
    if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
        raise ValueError(f"topk: expected an int >= 1, got {topk!r}")
    return int(topk)


def check_nonnegative(value, name):
    """``value`` must be a finite real number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------
# batch plumbing shared by the anchor-based assigners (no reference twin)


def check_max_elements(max_elements):
    """``max_elements`` must be an int >= 1."""
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise ValueError(f"max_elements: expected an int >= 1, got {max_elements!r}")
    return max_elements


def prepare_batch(anchors, num_anchors_per_level, gt_boxes, gt_valid):
    """Validate a batch; returns anchors (A, 4), gt_boxes (B, G, 4) of one dtype with padded
    slots zeroed, gt_valid (B, G) bool on the anchors' device, and the level counts."""
    anchors = as_boxes(anchors, "anchors")
    if not isinstance(gt_valid, torch.Tensor) or gt_valid.dtype != torch.bool or gt_valid.ndim != 2:
        raise ValueError(f"gt_valid: expected a (B, G_max) bool tensor, got {getattr(gt_valid, 'shape', type(gt_valid))}")
    gt_boxes = gt_boxes if isinstance(gt_boxes, torch.Tensor) else torch.as_tensor(gt_boxes)
    if gt_boxes.ndim != 3 or tuple(gt_boxes.shape[:2]) != tuple(gt_valid.shape):
        raise ValueError(f"gt_boxes: expected shape (B, G_max, 4) matching gt_valid {tuple(gt_valid.shape)}, got {tuple(gt_boxes.shape)}")
    gt_valid = gt_valid.to(gt_boxes.device)
    if gt_boxes.is_floating_point():
        gt_boxes = torch.where(gt_valid[..., None], gt_boxes, torch.zeros((), dtype=gt_boxes.dtype, device=gt_boxes.device))
    else:
        gt_boxes = gt_boxes * gt_valid[..., None]
    gt_boxes = as_boxes(gt_boxes, "gt_boxes", batched=True)
    dtype = torch.promote_types(anchors.dtype, gt_boxes.dtype)
    anchors = anchors.to(dtype)
    gt_boxes = gt_boxes.to(device=anchors.device, dtype=dtype)
    counts = check_level_counts(num_anchors_per_level, anchors.shape[0], "num_anchors_per_level")
    return anchors, gt_boxes, gt_valid.to(anchors.device), counts


def finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid):
    """Padded GT slots get threshold NaN and candidates -1 (specs/conventions.md §4)."""
    threshold = torch.where(gt_valid, threshold, math.nan)
    candidate_index = torch.where(gt_valid[..., None], candidate_index, -1)
    return Assignment(matched_gt, matched_metric, threshold, candidate_index)


def gather_boxes(boxes, candidate_index):
    """Boxes of the candidates: (A, 4) or (B, A, 4) with (B, G, C) -> (B, G, C, 4)."""
    if boxes.ndim == 2:
        return boxes[candidate_index]
    batch = torch.arange(boxes.shape[0], device=boxes.device)[:, None, None]
    return boxes[batch, candidate_index]


def aligned_iou(boxes1, boxes2):
    """IoU of broadcast pairs: (..., 4) and (..., 4) -> (...) (specs/boxes.md §2, §5).

    No input checks (hot path). The arithmetic, in order, of ``reference.boxes.box_iou``
    and ``torchvision.ops.box_iou`` (which only takes 2-D inputs and gives NaN for two
    zero-area boxes); 0 where the union is 0.
    """
    width = (torch.minimum(boxes1[..., 2], boxes2[..., 2]) - torch.maximum(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    height = (torch.minimum(boxes1[..., 3], boxes2[..., 3]) - torch.maximum(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    inter = width * height
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    union = area1 + area2 - inter
    positive = union > 0
    return torch.where(positive, inter / torch.where(positive, union, 1.0), 0.0)


def _ieee_sqrt(values):
    """Correctly rounded square root (IEEE 754), as NumPy's.

    torch's CPU ``sqrt`` kernel is not correctly rounded (it is 1 ulp off for about 1 % of
    float64 inputs), which would break bit-exact float64 thresholds; on CPU we round
    through NumPy (the (B, G) variances are small). CUDA's ``sqrt`` is IEEE-exact.
    """
    if values.device.type != "cpu":
        return values.sqrt()
    return torch.from_numpy(np.sqrt(values.contiguous().numpy()))


def _centers(boxes):
    """(..., 4) xyxy -> (..., 2) centres ``((x1 + x2) / 2, (y1 + y2) / 2)``."""
    return (boxes[..., :2] + boxes[..., 2:]) / 2


def _levels(anchor_centers, num_anchors_per_level, topk):
    """The non-empty levels as ``(start, count, k, grid)``, ``grid`` from ``_grid`` (or None)."""
    levels, start = [], 0
    for count in num_anchors_per_level:
        if count > 0:
            k = min(topk, count)
            levels.append((start, count, k, _grid(anchor_centers[start : start + count], k)))
        start += count
    return levels


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
    xs = _pad_stack([grid[0] for _, _, _, grid in levels])  # (L', W_max), +inf padded
    ys = _pad_stack([grid[1] for _, _, _, grid in levels])  # (L', H_max)
    width = torch.tensor([grid[0].shape[0] for _, _, _, grid in levels], device=device)[:, None]  # (L', 1)
    height = torch.tensor([grid[1].shape[0] for _, _, _, grid in levels], device=device)[:, None]
    start = torch.tensor([level[0] for level in levels], device=device)[:, None, None]  # (L', 1, 1)
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


def _pad_stack(vectors):
    """1-D tensors -> (len(vectors), longest), padded with +inf (after every finite value)."""
    longest = max(vector.shape[0] for vector in vectors)
    out = torch.full((len(vectors), longest), math.inf, dtype=vectors[0].dtype, device=vectors[0].device)
    for row, vector in enumerate(vectors):
        out[row, : vector.shape[0]] = vector
    return out


def _grid(anchor_centers, k):
    """(xs (W,), ys (H,), radius) when the centres form a row-major grid big enough for a
    window; None otherwise. One pass over the level's centres."""
    count = anchor_centers.shape[0]
    x, y = anchor_centers[:, 0], anchor_centers[:, 1]
    radius = math.ceil(math.ceil(math.sqrt(k)) / 2) + 1
    side = 2 * radius + 1
    if count < side * side:
        return None
    new_row = int((y != y[0]).to(torch.uint8).argmax())  # first centre off the first row; 0: none
    width = new_row if new_row > 0 else count
    if width < side or count % width:
        return None
    height = count // width
    if height < side:
        return None
    grid_x, grid_y = x.reshape(height, width), y.reshape(height, width)
    xs, ys = grid_x[0].contiguous(), grid_y[:, 0].contiguous()
    if not (torch.equal(grid_x, xs.expand(height, width)) and torch.equal(grid_y, ys[:, None].expand(height, width))):
        return None
    if not bool(torch.cat([xs[1:] > xs[:-1], ys[1:] > ys[:-1]]).all()):
        return None
    return xs, ys, radius


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
    """Sort each row of chosen level-local indices (B, G, k) by (squared distance, index)."""
    chosen = anchor_centers[index]  # (B, G, k, 2)
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
    if parts:
        return torch.cat(parts, dim=-1)
    return torch.zeros((*leading_shape, 0), dtype=torch.int64, device=device)
