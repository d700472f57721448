"""Box metrics (specs/boxes.md).

All boxes are (N, 4) xyxy in continuous pixel coordinates (specs/conventions.md §2).
Pairwise functions return GT-first matrices: row ``g`` is the first argument's box ``g``.
Every function validates its inputs, keeps the floating dtype and device of its inputs,
and never returns NaN.

Twin of ``reference/boxes.py``. The ``*_unchecked`` functions (no reference twin) skip the
input checks for hot paths whose boxes were validated once, and broadcast over leading
dimensions.
"""
import torch
import torchvision

from detector.validation import as_boxes, as_points


def box_area(boxes):
    """Area of each box (specs/boxes.md §1).

    Args:
        boxes: (N, 4) xyxy.

    Returns:
        (N,) ``(x2 - x1) * (y2 - y1)``; 0 for zero-area boxes.
    """
    boxes = as_boxes(boxes, "boxes")
    return _area(boxes)


def box_centers(boxes):
    """Centre of each box (specs/boxes.md §1).

    Args:
        boxes: (N, 4) xyxy.

    Returns:
        (N, 2) ``((x1 + x2) / 2, (y1 + y2) / 2)``.
    """
    boxes = as_boxes(boxes, "boxes")
    return _centers(boxes)


def box_iou(boxes1, boxes2):
    """Pairwise IoU (specs/boxes.md §2).

    Uses ``torchvision.ops.box_iou``, which divides 0 by 0 for two zero-area boxes; those
    NaNs (the only possible ones for valid finite boxes) become the spec's 0.

    Args:
        boxes1: (G, 4) xyxy, e.g. GT boxes.
        boxes2: (A, 4) xyxy, e.g. anchors.

    Returns:
        (G, A) in [0, 1]; 0 where the union is 0 (two zero-area boxes).
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _common_dtype(boxes1, boxes2)
    return torchvision.ops.box_iou(boxes1, boxes2).nan_to_num_(nan=0.0)


def box_giou(boxes1, boxes2):
    """Pairwise generalized IoU (specs/boxes.md §3).

    GIoU = IoU - (|E| - |U|) / |E|, with E the smallest box enclosing both.

    Not ``torchvision.ops.generalized_box_iou``: for two zero-area boxes whose enclosure
    has positive area it returns NaN where the spec says -1.

    Args:
        boxes1: (G, 4) xyxy.
        boxes2: (A, 4) xyxy.

    Returns:
        (G, A) in [-1, 1]; where |E| = 0 (both boxes the same point or
        collinear degenerate boxes) the enclosure term is 0, so GIoU = IoU = 0.
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _common_dtype(boxes1, boxes2)
    return _giou(boxes1[:, None, :], boxes2[None, :, :])  # (G, A)


def box_iof(regions, boxes):
    """Pairwise intersection over the area of the second box ("IoF", specs/boxes.md §4).

    The fraction of each box that lies inside each region (e.g. an anchor inside an
    ignore region).

    Args:
        regions: (G, 4) xyxy.
        boxes: (A, 4) xyxy.

    Returns:
        (G, A) in [0, 1]; 0 where the box has zero area.
    """
    regions = as_boxes(regions, "regions")
    boxes = as_boxes(boxes, "boxes")
    regions, boxes = _common_dtype(regions, boxes)
    inter, _ = _inter_union(regions[:, None, :], boxes[None, :, :])  # (G, A)
    return safe_divide(inter, _area(boxes)[None, :].expand_as(inter))


def aligned_box_iou(boxes1, boxes2):
    """IoU of row-aligned pairs (specs/boxes.md §5).

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (N, 4) xyxy.

    Returns:
        (N,) IoU(boxes1[i], boxes2[i]); 0 where the union is 0.
    """
    boxes1, boxes2 = _aligned_pair(boxes1, boxes2)
    return aligned_box_iou_unchecked(boxes1, boxes2)


def aligned_box_iou_unchecked(boxes1, boxes2):
    """``aligned_box_iou`` without input checks, broadcasting (specs/boxes.md §2, §5).

    For hot paths (the assigners) whose boxes were validated once: (..., 4) and (..., 4)
    broadcastable -> (...) IoUs, in the dtype of the inputs (which must be one floating
    dtype). The same arithmetic, in the same order, as ``aligned_box_iou``,
    ``reference.boxes.box_iou`` and ``torchvision.ops.box_iou``; 0 where the union is 0.
    """
    inter, union = _inter_union(boxes1, boxes2)
    return safe_divide(inter, union)


def aligned_box_giou(boxes1, boxes2):
    """GIoU of row-aligned pairs (specs/boxes.md §5).

    Returns:
        (N,) GIoU(boxes1[i], boxes2[i]).
    """
    boxes1, boxes2 = _aligned_pair(boxes1, boxes2)
    return _giou(boxes1, boxes2)


def center_distances(boxes, points):
    """Euclidean distance from each box centre to each point (specs/boxes.md §6).

    Args:
        boxes: (G, 4) xyxy.
        points: (A, 2) (x, y), e.g. anchor centres.

    Returns:
        (G, A) >= 0.
    """
    boxes = as_boxes(boxes, "boxes")
    points = as_points(points, "points")
    boxes, points = _common_dtype(boxes, points)
    centers = _centers(boxes)
    dx = points[None, :, 0] - centers[:, None, 0]  # (G, A)
    dy = points[None, :, 1] - centers[:, None, 1]  # (G, A)
    return torch.sqrt(dx * dx + dy * dy)


def ltrb_distances(points, boxes):
    """Distances from each point to the four sides of each box (specs/boxes.md §7).

    Args:
        points: (A, 2) (x, y).
        boxes: (G, 4) xyxy.

    Returns:
        (G, A, 4) ``(l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y)``; negative
        where the point is outside that side.
    """
    points = as_points(points, "points")
    boxes = as_boxes(boxes, "boxes")
    points, boxes = _common_dtype(points, boxes)
    x, y = points[None, :, 0], points[None, :, 1]  # (1, A)
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))  # (G, 1) each
    return torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # (G, A, 4)


def points_inside_boxes(points, boxes, eps):
    """Whether each point lies inside each box by more than ``eps`` (specs/boxes.md §7).

    Args:
        points: (A, 2) (x, y).
        boxes: (G, 4) xyxy.
        eps: margin in pixels; the test is strict: ``min(l, t, r, b) > eps``.

    Returns:
        (G, A) bool. A zero-area box contains no point for any ``eps >= 0``.
    """
    distances = ltrb_distances(points, boxes)
    if distances.shape[-2] == 0:
        return torch.zeros(distances.shape[:2], dtype=torch.bool, device=distances.device)
    return distances.amin(dim=-1) > eps


def safe_divide(numerator, denominator, where=None):
    """``numerator / denominator`` where ``where`` holds, 0 elsewhere (specs/boxes.md §9).

    The one zero-safe division of the tree (specs/conventions.md §7): it never divides where
    ``where`` is False, so it never warns and never returns NaN there.

    Args:
        numerator, denominator: broadcastable values.
        where: bool mask broadcastable to their shape; ``None`` means ``denominator > 0``
            (a zero or negative denominator gives 0).

    Returns:
        the quotients, in the broadcast shape of ``numerator`` and ``denominator``.
    """
    if where is None:
        where = denominator > 0
    return torch.where(where, numerator / torch.where(where, denominator, 1.0), 0.0)


# ---------------------------------------------------------------------------------------
# helpers on validated tensors; they broadcast over leading dimensions


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _centers(boxes):
    return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], dim=-1)


def _inter_union(boxes1, boxes2):
    """Intersection and union areas of broadcastable (..., 4) boxes -> (...), (...)."""
    width = (torch.minimum(boxes1[..., 2], boxes2[..., 2]) - torch.maximum(boxes1[..., 0], boxes2[..., 0])).clamp(min=0)
    height = (torch.minimum(boxes1[..., 3], boxes2[..., 3]) - torch.maximum(boxes1[..., 1], boxes2[..., 1])).clamp(min=0)
    inter = width * height
    union = _area(boxes1) + _area(boxes2) - inter
    return inter, union


def _giou(boxes1, boxes2):
    inter, union = _inter_union(boxes1, boxes2)
    iou = safe_divide(inter, union)
    enclose_w = torch.maximum(boxes1[..., 2], boxes2[..., 2]) - torch.minimum(boxes1[..., 0], boxes2[..., 0])
    enclose_h = torch.maximum(boxes1[..., 3], boxes2[..., 3]) - torch.minimum(boxes1[..., 1], boxes2[..., 1])
    enclose = enclose_w * enclose_h
    return iou - safe_divide(enclose - union, enclose)


def _common_dtype(first, second):
    dtype = torch.promote_types(first.dtype, second.dtype)
    return first.to(dtype), second.to(dtype)


def _aligned_pair(boxes1, boxes2):
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    if len(boxes1) != len(boxes2):
        raise ValueError(f"boxes2: expected {len(boxes1)} rows to pair with boxes1, got {len(boxes2)}")
    return _common_dtype(boxes1, boxes2)
