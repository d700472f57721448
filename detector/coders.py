"""Box coders (specs/coders.md). Twin of ``reference/coders.py``.

delta-xywh: anchor-based regression, normalised by ``stds`` (DELTA_STDS), with |dw|, |dh|
clamped on decode. ltrb: anchor-free distances from a point to the four sides, divided by
the point's stride. All functions are vectorised over rows and differentiable in the
regression values.
"""
import torch

from detector.conventions import DELTA_MAX_RATIO, DELTA_STDS
from detector.validation import as_boxes, as_points, as_values


def encode_deltas(anchors, boxes, stds=DELTA_STDS):
    """Encode boxes relative to anchors (specs/coders.md §1).

    Args:
        anchors: (N, 4) xyxy with positive width and height.
        boxes: (N, 4) xyxy with positive width and height.
        stds: (dx, dy, dw, dh) divisors.

    Returns:
        (N, 4) ``(dx, dy, dw, dh)``.

    Raises:
        ValueError: an anchor or box with zero width or height.
    """
    anchors = _positive_size_boxes(anchors, "anchors")
    boxes = _positive_size_boxes(boxes, "boxes")
    if len(anchors) != len(boxes):
        raise ValueError(f"boxes: expected {len(anchors)} rows to pair with anchors, got {len(boxes)}")
    anchors, boxes = _common_dtype(anchors, boxes)
    acx, acy, aw, ah = _cxcywh(anchors)
    bcx, bcy, bw, bh = _cxcywh(boxes)
    return torch.stack(
        [
            (bcx - acx) / aw / stds[0],
            (bcy - acy) / ah / stds[1],
            torch.log(bw / aw) / stds[2],
            torch.log(bh / ah) / stds[3],
        ],
        dim=1,
    )


def decode_deltas(anchors, deltas, stds=DELTA_STDS, max_ratio=DELTA_MAX_RATIO):
    """Decode regression deltas into boxes (specs/coders.md §2).

    Args:
        anchors: (N, 4) xyxy with positive width and height.
        deltas: (N, 4) raw regression outputs; non-finite values propagate (NaN stays
            NaN; +-Inf in dw/dh is clamped).
        stds: (dx, dy, dw, dh) multipliers.
        max_ratio: ``dw * stds[2]`` and ``dh * stds[3]`` are clamped to
            ``[-max_ratio, max_ratio]`` before ``exp``.

    Returns:
        (N, 4) xyxy boxes, differentiable in ``deltas``.
    """
    anchors = _positive_size_boxes(anchors, "anchors")
    deltas = as_values(deltas, "deltas", ndim=2, width=4, finite=False)
    if len(anchors) != len(deltas):
        raise ValueError(f"deltas: expected {len(anchors)} rows to pair with anchors, got {len(deltas)}")
    return decode_deltas_unchecked(anchors, deltas, stds, max_ratio)


def decode_deltas_unchecked(anchors, deltas, stds=DELTA_STDS, max_ratio=DELTA_MAX_RATIO):
    """``decode_deltas`` without input checks, broadcasting over leading dims.

    For hot paths whose anchors were validated once: anchors (..., 4), deltas (..., 4)
    broadcastable -> boxes (..., 4). Same arithmetic, in the same order, as ``decode_deltas``.
    """
    anchors, deltas = _common_dtype(anchors, deltas)
    acx, acy, aw, ah = _cxcywh(anchors)
    dx = deltas[..., 0] * stds[0]
    dy = deltas[..., 1] * stds[1]
    dw = (deltas[..., 2] * stds[2]).clamp(min=-max_ratio, max=max_ratio)
    dh = (deltas[..., 3] * stds[3]).clamp(min=-max_ratio, max=max_ratio)
    cx, cy = acx + dx * aw, acy + dy * ah
    w, h = aw * torch.exp(dw), ah * torch.exp(dh)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def encode_ltrb(points, boxes, strides):
    """Encode boxes as stride-normalised distances from points (specs/coders.md §3).

    Args:
        points: (N, 2) (x, y).
        boxes: (N, 4) xyxy.
        strides: (N,) positive stride of each point's level.

    Returns:
        (N, 4) ``(x - x1, y - y1, x2 - x, y2 - y) / stride``.
    """
    points = as_points(points, "points")
    boxes = as_boxes(boxes, "boxes")
    strides = _positive_strides(strides, len(points))
    if len(boxes) != len(points):
        raise ValueError(f"boxes: expected {len(points)} rows to pair with points, got {len(boxes)}")
    points, boxes = _common_dtype(points, boxes)
    x, y = points[:, 0], points[:, 1]
    distances = torch.stack([x - boxes[:, 0], y - boxes[:, 1], boxes[:, 2] - x, boxes[:, 3] - y], dim=1)
    return distances / strides.to(distances.dtype)[:, None]


def decode_ltrb(points, distances, strides):
    """Decode stride-normalised distances into boxes (specs/coders.md §4).

    Args:
        points: (N, 2) (x, y).
        distances: (N, 4) ``(l, t, r, b) / stride``; negative values are clamped to 0.
        strides: (N,) positive strides.

    Returns:
        (N, 4) xyxy ``(x - l*s, y - t*s, x + r*s, y + b*s)``, differentiable in ``distances``.
    """
    points = as_points(points, "points")
    distances = as_values(distances, "distances", ndim=2, width=4, finite=False)
    strides = _positive_strides(strides, len(points))
    if len(distances) != len(points):
        raise ValueError(f"distances: expected {len(points)} rows to pair with points, got {len(distances)}")
    return decode_ltrb_unchecked(points, distances, strides)


def decode_ltrb_unchecked(points, distances, strides):
    """``decode_ltrb`` without input checks, broadcasting: points (..., 2), distances
    (..., 4), strides (...) -> boxes (..., 4)."""
    points, distances = _common_dtype(points, distances)
    scaled = distances.clamp(min=0.0) * strides.to(distances.dtype)[..., None]
    x, y = points[..., 0], points[..., 1]
    return torch.stack([x - scaled[..., 0], y - scaled[..., 1], x + scaled[..., 2], y + scaled[..., 3]], dim=-1)


def _cxcywh(boxes):
    return (
        (boxes[..., 0] + boxes[..., 2]) / 2,
        (boxes[..., 1] + boxes[..., 3]) / 2,
        boxes[..., 2] - boxes[..., 0],
        boxes[..., 3] - boxes[..., 1],
    )


def _positive_size_boxes(boxes, name):
    boxes = as_boxes(boxes, name)
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(flat.any()):
        row = int(torch.nonzero(flat)[0][0])
        raise ValueError(f"{name}: row {row} has zero width or height: {boxes[row].tolist()}")
    return boxes


def _positive_strides(strides, count):
    strides = as_values(strides, "strides", ndim=1)
    if len(strides) != count or bool((strides <= 0).any()):
        raise ValueError(f"strides: expected {count} positive values, got shape {tuple(strides.shape)}")
    return strides


def _common_dtype(first, second):
    dtype = torch.promote_types(first.dtype, second.dtype)
    return first.to(dtype), second.to(dtype)
