"""Box coders (specs/coders.md).

delta-xywh: anchor-based regression, normalised by ``stds`` (DELTA_STDS), with |dw|, |dh|
clamped on decode. ltrb: anchor-free distances from a point to the four sides, divided by
the point's stride.
"""
import numpy as np

from reference.conventions import DELTA_MAX_RATIO, DELTA_STDS
from reference.validation import as_boxes, as_points, as_values


def encode_deltas(anchors, boxes, stds=DELTA_STDS):
    """Encode boxes relative to anchors (specs/coders.md §1).

    Args:
        anchors: (N, 4) xyxy with positive width and height.
        boxes: (N, 4) xyxy with positive width and height.
        stds: (dx, dy, dw, dh) divisors.

    Returns:
        (N, 4) float64 ``(dx, dy, dw, dh)`` with ``dx = (cx_b - cx_a) / w_a / stds[0]``,
        ``dw = log(w_b / w_a) / stds[2]`` (and likewise for y, h).

    Raises:
        ValueError: an anchor or box with zero width or height (log(0) has no code).
    """
    anchors = _positive_size_boxes(anchors, "anchors")
    boxes = _positive_size_boxes(boxes, "boxes")
    if len(anchors) != len(boxes):
        raise ValueError(f"boxes: expected {len(anchors)} rows to pair with anchors, got {len(boxes)}")
    deltas = np.zeros((len(anchors), 4))
    for i in range(len(anchors)):
        acx, acy, aw, ah = _cxcywh(anchors[i])
        bcx, bcy, bw, bh = _cxcywh(boxes[i])
        deltas[i] = (
            (bcx - acx) / aw / stds[0],
            (bcy - acy) / ah / stds[1],
            np.log(bw / aw) / stds[2],
            np.log(bh / ah) / stds[3],
        )
    return deltas


def decode_deltas(anchors, deltas, stds=DELTA_STDS, max_ratio=DELTA_MAX_RATIO):
    """Decode regression deltas into boxes (specs/coders.md §2).

    Args:
        anchors: (N, 4) xyxy with positive width and height.
        deltas: (N, 4) raw regression outputs ``(dx, dy, dw, dh)``; non-finite values are
            allowed and propagate (NaN stays NaN; +-Inf in dw/dh is clamped).
        stds: (dx, dy, dw, dh) multipliers.
        max_ratio: ``dw * stds[2]`` and ``dh * stds[3]`` are clamped to
            ``[-max_ratio, max_ratio]`` before ``exp``.

    Returns:
        (N, 4) float64 xyxy boxes centred at ``cx_a + dx * stds[0] * w_a`` with width
        ``w_a * exp(clamp(dw * stds[2]))`` (and likewise for y, h).
    """
    anchors = _positive_size_boxes(anchors, "anchors")
    deltas = as_values(deltas, "deltas", ndim=2, width=4, finite=False)
    if len(anchors) != len(deltas):
        raise ValueError(f"deltas: expected {len(anchors)} rows to pair with anchors, got {len(deltas)}")
    boxes = np.zeros((len(anchors), 4))
    for i in range(len(anchors)):
        acx, acy, aw, ah = _cxcywh(anchors[i])
        dx, dy, dw, dh = deltas[i] * np.asarray(stds, dtype=np.float64)
        dw = np.clip(dw, -max_ratio, max_ratio)
        dh = np.clip(dh, -max_ratio, max_ratio)
        cx, cy = acx + dx * aw, acy + dy * ah
        w, h = aw * np.exp(dw), ah * np.exp(dh)
        boxes[i] = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return boxes


def encode_ltrb(points, boxes, strides):
    """Encode boxes as stride-normalised distances from points (specs/coders.md §3).

    Args:
        points: (N, 2) (x, y).
        boxes: (N, 4) xyxy.
        strides: (N,) positive stride of each point's level.

    Returns:
        (N, 4) float64 ``(x - x1, y - y1, x2 - x, y2 - y) / stride``; negative where the
        point is outside that side.
    """
    points = as_points(points, "points")
    boxes = as_boxes(boxes, "boxes")
    strides = _positive_strides(strides, len(points))
    if len(boxes) != len(points):
        raise ValueError(f"boxes: expected {len(points)} rows to pair with points, got {len(boxes)}")
    distances = np.zeros((len(points), 4))
    for i in range(len(points)):
        x, y = points[i]
        x1, y1, x2, y2 = boxes[i]
        distances[i] = np.array([x - x1, y - y1, x2 - x, y2 - y]) / strides[i]
    return distances


def decode_ltrb(points, distances, strides):
    """Decode stride-normalised distances into boxes (specs/coders.md §4).

    Args:
        points: (N, 2) (x, y).
        distances: (N, 4) ``(l, t, r, b) / stride``; negative values are clamped to 0, so
            every decoded box is valid (a network's ReLU output never needs the clamp).
        strides: (N,) positive strides.

    Returns:
        (N, 4) float64 xyxy ``(x - l*s, y - t*s, x + r*s, y + b*s)``.
    """
    points = as_points(points, "points")
    distances = as_values(distances, "distances", ndim=2, width=4, finite=False)
    strides = _positive_strides(strides, len(points))
    if len(distances) != len(points):
        raise ValueError(f"distances: expected {len(points)} rows to pair with points, got {len(distances)}")
    boxes = np.zeros((len(points), 4))
    for i in range(len(points)):
        x, y = points[i]
        left, top, right, bottom = np.maximum(distances[i], 0.0) * strides[i]
        boxes[i] = (x - left, y - top, x + right, y + bottom)
    return boxes


def _cxcywh(box):
    x1, y1, x2, y2 = box
    return (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1


def _positive_size_boxes(boxes, name):
    boxes = as_boxes(boxes, name)
    flat = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if flat.any():
        row = int(np.flatnonzero(flat)[0])
        raise ValueError(f"{name}: row {row} has zero width or height: {boxes[row].tolist()}")
    return boxes


def _positive_strides(strides, count):
    strides = as_values(strides, "strides", ndim=1)
    if len(strides) != count or (strides <= 0).any():
        raise ValueError(f"strides: expected {count} positive values, got shape {strides.shape}")
    return strides
