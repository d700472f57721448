"""Box metrics (specs/boxes.md).

All boxes are (N, 4) xyxy in continuous pixel coordinates (specs/conventions.md §2).
Pairwise functions return GT-first matrices: row ``g`` is the first argument's box ``g``.
Every function validates its inputs and returns float64 (or bool) arrays.
"""
import numpy as np

from reference.validation import as_boxes, as_points


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

    Args:
        boxes1: (G, 4) xyxy, e.g. GT boxes.
        boxes2: (A, 4) xyxy, e.g. anchors.

    Returns:
        (G, A) in [0, 1]; 0 where the union is 0 (two zero-area boxes).
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    iou = np.zeros((len(boxes1), len(boxes2)))
    for g in range(len(boxes1)):
        inter, union = _inter_union(boxes1[g], boxes2)
        iou[g] = safe_divide(inter, union)
    return iou


def box_giou(boxes1, boxes2):
    """Pairwise generalized IoU (specs/boxes.md §3).

    GIoU = IoU - (|E| - |U|) / |E|, with E the smallest box enclosing both.

    Args:
        boxes1: (G, 4) xyxy.
        boxes2: (A, 4) xyxy.

    Returns:
        (G, A) in [-1, 1]; where |E| = 0 (both boxes the same point or
        collinear degenerate boxes) the enclosure term is 0, so GIoU = IoU = 0.
    """
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    giou = np.zeros((len(boxes1), len(boxes2)))
    for g in range(len(boxes1)):
        giou[g] = _giou_one_to_many(boxes1[g], boxes2)
    return giou


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
    iof = np.zeros((len(regions), len(boxes)))
    area = _area(boxes)
    for g in range(len(regions)):
        inter, _ = _inter_union(regions[g], boxes)
        iof[g] = safe_divide(inter, area)
    return iof


def aligned_box_iou(boxes1, boxes2):
    """IoU of row-aligned pairs (specs/boxes.md §5).

    Args:
        boxes1: (N, 4) xyxy.
        boxes2: (N, 4) xyxy.

    Returns:
        (N,) IoU(boxes1[i], boxes2[i]); 0 where the union is 0.
    """
    boxes1, boxes2 = _aligned_pair(boxes1, boxes2)
    iou = np.zeros(len(boxes1))
    for i in range(len(boxes1)):
        inter, union = _inter_union(boxes1[i], boxes2[i : i + 1])
        iou[i] = safe_divide(inter, union)[0]
    return iou


def aligned_box_giou(boxes1, boxes2):
    """GIoU of row-aligned pairs (specs/boxes.md §5).

    Returns:
        (N,) GIoU(boxes1[i], boxes2[i]).
    """
    boxes1, boxes2 = _aligned_pair(boxes1, boxes2)
    giou = np.zeros(len(boxes1))
    for i in range(len(boxes1)):
        giou[i] = _giou_one_to_many(boxes1[i], boxes2[i : i + 1])[0]
    return giou


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
    centers = _centers(boxes)
    distances = np.zeros((len(boxes), len(points)))
    for g in range(len(boxes)):
        dx = points[:, 0] - centers[g, 0]
        dy = points[:, 1] - centers[g, 1]
        distances[g] = np.sqrt(dx * dx + dy * dy)
    return distances


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
    distances = np.zeros((len(boxes), len(points), 4))
    for g in range(len(boxes)):
        x1, y1, x2, y2 = boxes[g]
        distances[g, :, 0] = points[:, 0] - x1
        distances[g, :, 1] = points[:, 1] - y1
        distances[g, :, 2] = x2 - points[:, 0]
        distances[g, :, 3] = y2 - points[:, 1]
    return distances


def points_inside_boxes(points, boxes, eps):
    """Whether each point lies inside each box by more than ``eps`` (specs/boxes.md §7).

    Args:
        points: (A, 2) (x, y).
        boxes: (G, 4) xyxy.
        eps: margin in pixels; the test is strict: ``min(l, t, r, b) > eps``.

    Returns:
        (G, A) bool. A zero-area box contains no point for any ``eps >= 0``.
    """
    return ltrb_distances(points, boxes).min(axis=2, initial=np.inf) > eps


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
    out = np.zeros(np.broadcast(numerator, denominator).shape)
    np.divide(numerator, denominator, out=out, where=where)
    return out


# ---------------------------------------------------------------------------------------
# helpers on validated float64 arrays; they broadcast over leading dimensions


def _area(boxes):
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _centers(boxes):
    return np.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], axis=-1)


def _inter_union(box, boxes):
    """Intersection and union areas of one box (4,) with many boxes (N, 4) -> (N,), (N,)."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = width * height
    union = (box[2] - box[0]) * (box[3] - box[1]) + _area(boxes) - inter
    return inter, union


def _giou_one_to_many(box, boxes):
    inter, union = _inter_union(box, boxes)
    iou = safe_divide(inter, union)
    enclose_w = np.maximum(box[2], boxes[:, 2]) - np.minimum(box[0], boxes[:, 0])
    enclose_h = np.maximum(box[3], boxes[:, 3]) - np.minimum(box[1], boxes[:, 1])
    enclose = enclose_w * enclose_h
    return iou - safe_divide(enclose - union, enclose)


def _aligned_pair(boxes1, boxes2):
    boxes1 = as_boxes(boxes1, "boxes1")
    boxes2 = as_boxes(boxes2, "boxes2")
    if len(boxes1) != len(boxes2):
        raise ValueError(f"boxes2: expected {len(boxes1)} rows to pair with boxes1, got {len(boxes2)}")
    return boxes1, boxes2
