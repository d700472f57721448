"""Hypothesis strategies shared by reference, parity and invariant tests (NumPy only).

Scenes are bounded and valid by construction (coordinates inside the image, x1 <= x2,
y1 <= y2) and deliberately include the cases where assigners differ: empty GT sets, tiny
(< 8 px), huge, slender (1:8 and 8:1), duplicated, nested, border-touching and zero-area
boxes, and coordinates on the pixel/stride grid so that distance ties occur.
"""
import numpy as np
from hypothesis import strategies as st

from reference.anchors import multi_level_anchors, multi_level_points
from reference.conventions import RETINANET_ANCHOR_RATIOS, RETINANET_ANCHOR_SCALES, RETINANET_OCTAVE_BASE_SCALE

STRIDES = (8, 16, 32, 64, 128)

BOX_KINDS = ("normal", "tiny", "huge", "slender_w", "slender_h", "zero_area", "border", "grid")


@st.composite
def image_sizes(draw, max_side=1333, min_side=16):
    """(H, W) integers in [min_side, max_side]."""
    height = draw(st.integers(min_side, max_side))
    width = draw(st.integers(min_side, max_side))
    return height, width


@st.composite
def one_box(draw, image_size, kind=None):
    """One valid (4,) float64 xyxy box inside ``image_size`` of the given (or a drawn) kind."""
    height, width = image_size
    kind = kind or draw(st.sampled_from(BOX_KINDS))
    coord = st.floats(0, 1, allow_nan=False, allow_infinity=False)
    if kind == "grid":  # integer corners on an 8 px grid: centre-distance ties galore
        x1 = 8 * draw(st.integers(0, max(0, (width - 8) // 8)))
        y1 = 8 * draw(st.integers(0, max(0, (height - 8) // 8)))
        x2 = min(width, x1 + 8 * draw(st.integers(1, 16)))
        y2 = min(height, y1 + 8 * draw(st.integers(1, 16)))
        return np.array([x1, y1, x2, y2], dtype=np.float64)
    if kind == "tiny":
        w, h = draw(coord) * 7 + 0.5, draw(coord) * 7 + 0.5
    elif kind == "huge":
        w, h = width * (0.7 + 0.3 * draw(coord)), height * (0.7 + 0.3 * draw(coord))
    elif kind == "slender_w":
        h = 4 + draw(coord) * min(height, width) / 9
        w = min(8 * h, width)
    elif kind == "slender_h":
        w = 4 + draw(coord) * min(height, width) / 9
        h = min(8 * w, height)
    elif kind == "zero_area":
        w, h = (0.0, 2 + draw(coord) * 50) if draw(st.booleans()) else (2 + draw(coord) * 50, 0.0)
    else:
        w, h = 1 + draw(coord) * (width - 1), 1 + draw(coord) * (height - 1)
    w, h = min(w, width), min(h, height)
    x1 = draw(coord) * (width - w)
    y1 = draw(coord) * (height - h)
    if kind == "border":
        side = draw(st.sampled_from(["left", "top", "right", "bottom"]))
        x1 = 0.0 if side == "left" else (width - w if side == "right" else x1)
        y1 = 0.0 if side == "top" else (height - h if side == "bottom" else y1)
    return np.array([x1, y1, min(x1 + w, width), min(y1 + h, height)], dtype=np.float64)


@st.composite
def gt_boxes(draw, image_size, min_boxes=0, max_boxes=12):
    """(G, 4) float64 GT boxes; adds duplicates and nested boxes on top of ``one_box`` kinds."""
    count = draw(st.integers(min_boxes, max_boxes))
    boxes = []
    while len(boxes) < count:
        mode = draw(st.sampled_from(["new", "new", "new", "duplicate", "nested"])) if boxes else "new"
        if mode == "duplicate":
            boxes.append(boxes[draw(st.integers(0, len(boxes) - 1))].copy())
        elif mode == "nested":
            outer = boxes[draw(st.integers(0, len(boxes) - 1))]
            shrink = draw(st.floats(0.0, 0.45))
            w, h = outer[2] - outer[0], outer[3] - outer[1]
            boxes.append(outer + np.array([shrink * w, shrink * h, -shrink * w, -shrink * h]))
        else:
            boxes.append(draw(one_box(image_size)))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


@st.composite
def anchor_scenes(draw, max_side=1333, max_boxes=12, min_boxes=0, min_levels=1, max_levels=5, retinanet=False):
    """An anchor-based scene: dict with image_size, strides, anchors (A, 4),
    num_anchors_per_level, gt_boxes (G, 4). ``retinanet``: RetinaNet's 9 anchors per
    location (octave base scale 4, 3 scales x 3 ratios) instead of one square of side 8 x stride."""
    image_size = draw(image_sizes(max_side=max_side))
    num_levels = draw(st.integers(min_levels, max_levels))
    first = draw(st.integers(0, len(STRIDES) - num_levels))
    strides = STRIDES[first : first + num_levels]
    if retinanet:
        anchors, num_per_level = multi_level_anchors(image_size, strides, RETINANET_OCTAVE_BASE_SCALE,
                                                     scales=RETINANET_ANCHOR_SCALES, ratios=RETINANET_ANCHOR_RATIOS)
    else:
        anchors, num_per_level = multi_level_anchors(image_size, strides)
    return {
        "image_size": image_size,
        "strides": strides,
        "anchors": anchors,
        "num_anchors_per_level": num_per_level,
        "gt_boxes": draw(gt_boxes(image_size, min_boxes, max_boxes)),
    }


@st.composite
def point_scenes(draw, max_side=1333, max_boxes=12, min_boxes=0, min_levels=1, max_levels=5):
    """An anchor-free scene: dict with image_size, strides, points (A, 2), point_strides (A,),
    num_points_per_level, gt_boxes (G, 4)."""
    image_size = draw(image_sizes(max_side=max_side))
    num_levels = draw(st.integers(min_levels, max_levels))
    first = draw(st.integers(0, len(STRIDES) - num_levels))
    strides = STRIDES[first : first + num_levels]
    points, point_strides, num_per_level = multi_level_points(image_size, strides)
    return {
        "image_size": image_size,
        "strides": strides,
        "points": points,
        "point_strides": point_strides,
        "num_points_per_level": num_per_level,
        "gt_boxes": draw(gt_boxes(image_size, min_boxes, max_boxes)),
    }


@st.composite
def pred_deltas(draw, num_anchors, quality=None):
    """(A, 4) raw delta-xywh regression outputs from near-perfect to garbage.

    ``quality`` in {"zero", "small", "large", "garbage"} or drawn. Values are generated
    from a drawn seed, so large A stays cheap.
    """
    quality = quality or draw(st.sampled_from(["zero", "small", "large", "garbage"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = {"zero": 0.0, "small": 0.3, "large": 3.0, "garbage": 50.0}[quality]
    return rng.normal(0.0, 1.0, size=(num_anchors, 4)) * scale
