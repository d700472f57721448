"""Box metrics (specs/boxes.md). Twin of ``reference/boxes.py``.

All boxes are (N, 4) xyxy in continuous pixel coordinates (specs/conventions.md §2).
Pairwise functions return GT-first matrices. Every function validates its inputs, keeps
the floating dtype and device of its inputs, and never returns NaN.
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
        (G, A) in [0, 1]; 0 where the union is 0.
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _common_dtype(boxes1, boxes2)
    return torchvision.ops.box_iou(boxes1, boxes2).nan_to_num_(nan=0.0)


def box_giou(boxes1, boxes2):
    """Pairwise generalized IoU (specs/boxes.md §3).

    Not ``torchvision.ops.generalized_box_iou``: for two zero-area boxes whose enclosure
    has positive area it returns NaN where the spec says -1.

    Args:
        boxes1: (G, 4) xyxy.
        boxes2: (A, 4) xyxy.

    Returns:
        (G, A) in [-1, 1]; the enclosure term is 0 where the enclosure has zero area.
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    boxes1, boxes2 = _common_dtype(boxes1, boxes2)
    return _giou(boxes1[:, None, :], boxes2[None, :, :])  # (G, A)


def box_iof(regions, boxes):
    """Pairwise intersection over the area of the second box (specs/boxes.md §4).

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
    return _safe_divide(inter, _area(boxes)[None, :].expand_as(inter))


def aligned_box_iou(boxes1, boxes2):
    """IoU of row-aligned pairs (specs/boxes.md §5).

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (N, 4) xyxy.

    Returns:
        (N,) IoU(boxes1[i], boxes2[i]); 0 where the union is 0.
    """
    boxes1, boxes2 = _aligned_pair(boxes1, boxes2)
    inter, union = _inter_union(boxes1, boxes2)
    return _safe_divide(inter, union)


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
        points: (A, 2) (x, y).

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
        (G, A, 4) ``(l, t, r, b) = (x - x1, y - y1, x2 - x, y2 - y)``.
    """
    points = as_points(points, "points")
    boxes = as_boxes(boxes, "boxes")
    points, boxes = _common_dtype(points, boxes)
    x, y = points[None, :, 0], points[None, :, 1]  # (1, A)
    x1, y1, x2, y2 = (boxes[:, i, None] for i in range(4))  # (G, 1) each
    return torch.stack([x - x1, y - y1, x2 - x, y2 - y], dim=-1)  # (G, A, 4)


def points_inside_boxes(points, boxes, eps):
    """Whether each point lies inside each box by more than ``eps`` (specs/boxes.md §7).

    Returns:
        (G, A) bool, ``min(l, t, r, b) > eps``.
    """
    distances = ltrb_distances(points, boxes)
    if distances.shape[-2] == 0:
        return torch.zeros(distances.shape[:2], dtype=torch.bool, device=distances.device)
    return distances.amin(dim=-1) > eps


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
    iou = _safe_divide(inter, union)
    enclose_w = torch.maximum(boxes1[..., 2], boxes2[..., 2]) - torch.minimum(boxes1[..., 0], boxes2[..., 0])
    enclose_h = torch.maximum(boxes1[..., 3], boxes2[..., 3]) - torch.minimum(boxes1[..., 1], boxes2[..., 1])
    enclose = enclose_w * enclose_h
    return iou - _safe_divide(enclose - union, enclose)


def _safe_divide(numerator, denominator):
    """numerator / denominator, and 0 where the denominator is 0 (specs/conventions.md §7)."""
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)), 0.0)


def _common_dtype(first, second):
    dtype = torch.promote_types(first.dtype, second.dtype)
    return first.to(dtype), second.to(dtype)


def _aligned_pair(boxes1, boxes2):
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    if len(boxes1) != len(boxes2):
        raise ValueError(f"boxes2: expected {len(boxes1)} rows to pair with boxes1, got {len(boxes2)}")
    return _common_dtype(boxes1, boxes2)
