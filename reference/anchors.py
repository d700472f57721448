"""Anchor and point generators (specs/anchors.md).

One location per feature-map cell; centres at ``(i + offset) * stride``. Anchors may be
several per location (scales x aspect ratios). Levels are concatenated level-major, rows (y)
outer, columns (x) inner, then the anchors of a location (specs/conventions.md §3).
"""
import math

import numpy as np

from reference.conventions import (
    ANCHOR_QUANTUM,
    DEFAULT_ANCHOR_RATIOS,
    DEFAULT_ANCHOR_SCALES,
    DEFAULT_CENTER_OFFSET,
    DEFAULT_STRIDES,
    OCTAVE_BASE_SCALE,
)


def feature_sizes(image_size, strides=DEFAULT_STRIDES):
    """Feature-map size of each level for an input of ``image_size`` (specs/anchors.md §1).

    Args:
        image_size: (H, W) in pixels of the (padded) input.
        strides: L strides.

    Returns:
        list of L ``(H_l, W_l)`` with ``H_l = ceil(H / stride)``, ``W_l = ceil(W / stride)``.
    """
    height, width = _check_image_size(image_size)
    return [(math.ceil(height / s), math.ceil(width / s)) for s in _check_strides(strides)]


def level_points(feature_size, stride, center_offset=DEFAULT_CENTER_OFFSET):
    """Points of one level (specs/anchors.md §2).

    Args:
        feature_size: (H_l, W_l).
        stride: pixels per feature cell.
        center_offset: centre of cell i is ``(i + center_offset) * stride``.

    Returns:
        (A_l, 2) float64 (x, y), A_l = H_l * W_l, rows (y) outer, columns (x) inner.
    """
    rows, cols = feature_size
    points = np.zeros((rows * cols, 2))
    for y in range(rows):
        for x in range(cols):
            points[y * cols + x] = ((x + center_offset) * stride, (y + center_offset) * stride)
    return points


def anchor_shapes(base_size, scales=DEFAULT_ANCHOR_SCALES, ratios=DEFAULT_ANCHOR_RATIOS):
    """Widths and heights of the anchors of one location (specs/anchors.md §3).

    Args:
        base_size: side of the scale-1, ratio-1 anchor (``octave_base_scale * stride``).
        scales: S multipliers of the side (RetinaNet: 2^0, 2^(1/3), 2^(2/3)).
        ratios: R aspect ratios ``h / w`` (RetinaNet: 0.5, 1, 2); each keeps the area.

    Returns:
        (R * S, 2) float64 ``(w, h)``, for each ratio (outer) each scale (inner), as
        mmdetection's ``AnchorGenerator``: anchor ``i * S + j`` has ratio ``ratios[i]`` and
        scale ``scales[j]``, ``w = base_size * scale / sqrt(ratio)``,
        ``h = base_size * scale * sqrt(ratio)``. With several anchors (R * S > 1) each half
        side is then rounded to the nearest multiple of ``ANCHOR_QUANTUM`` (2^-8 px), so that
        the coordinates ``c -+ w / 2`` of an anchor centred on a multiple of 2^-8 are exact
        (in float32 below 2^15 px) and its centre ``(x1 + x2) / 2`` is ``c`` bit for bit.
    """
    scales, ratios = _check_factors(scales, "scales"), _check_factors(ratios, "ratios")
    snap = len(scales) * len(ratios) > 1
    shapes = np.zeros((len(ratios) * len(scales), 2))
    for i, ratio in enumerate(ratios):
        root = math.sqrt(ratio)
        for j, scale in enumerate(scales):
            side = base_size * scale
            shapes[i * len(scales) + j] = (_snap(side / root, snap), _snap(side * root, snap))
    return shapes


def level_anchors(feature_size, stride, octave_base_scale=OCTAVE_BASE_SCALE, center_offset=DEFAULT_CENTER_OFFSET,
                  scales=DEFAULT_ANCHOR_SCALES, ratios=DEFAULT_ANCHOR_RATIOS):
    """Anchors of one level, ``n = len(scales) * len(ratios)`` per location (specs/anchors.md §3).

    Args:
        feature_size: (H_l, W_l).
        stride: pixels per feature cell.
        octave_base_scale: side of the scale-1, ratio-1 anchor = octave_base_scale * stride
            (ATSS: 8, RetinaNet: 4).
        center_offset: as in ``level_points``.
        scales, ratios: as in ``anchor_shapes``; the defaults give one square anchor.

    Returns:
        (A_l, 4) float64 xyxy, A_l = H_l * W_l * n, centred on
        ``level_points(feature_size, stride, center_offset)``; location ``y * W_l + x``
        holds anchors ``(y * W_l + x) * n + a``, ``a`` in ``anchor_shapes`` order.
    """
    half = anchor_shapes(octave_base_scale * stride, scales, ratios) / 2  # (n, 2)
    points = level_points(feature_size, stride, center_offset)[:, None, :]  # (H_l * W_l, 1, 2)
    return np.concatenate([points - half, points + half], axis=2).reshape(-1, 4)


def multi_level_points(image_size=None, strides=DEFAULT_STRIDES, center_offset=DEFAULT_CENTER_OFFSET, level_sizes=None):
    """Points of all levels (specs/anchors.md §4).

    Args:
        image_size: (H, W) of the padded input, or None when ``level_sizes`` is given.
        strides: L strides.
        center_offset: as in ``level_points``.
        level_sizes: None, or the L ``(H_l, W_l)`` of the network's feature maps; with an
            ``image_size`` too they must equal ``feature_sizes(image_size, strides)``.

    Returns:
        points: (A, 2) float64, level-major.
        point_strides: (A,) float64, the stride of each point's level.
        num_points_per_level: list of L ints summing to A.
    """
    strides = _check_strides(strides)
    sizes = _level_sizes(image_size, strides, level_sizes)
    points = [level_points(size, s, center_offset) for size, s in zip(sizes, strides)]
    point_strides = [np.full(len(p), float(s)) for p, s in zip(points, strides)]
    return (
        np.concatenate(points, axis=0) if points else np.zeros((0, 2)),
        np.concatenate(point_strides) if point_strides else np.zeros(0),
        [len(p) for p in points],
    )


def multi_level_anchors(
    image_size=None,
    strides=DEFAULT_STRIDES,
    octave_base_scale=OCTAVE_BASE_SCALE,
    center_offset=DEFAULT_CENTER_OFFSET,
    level_sizes=None,
    scales=DEFAULT_ANCHOR_SCALES,
    ratios=DEFAULT_ANCHOR_RATIOS,
):
    """Anchors of all levels (specs/anchors.md §4), ``n = len(scales) * len(ratios)`` per
    location (one square anchor by default, as ATSS).

    Args as ``multi_level_points``, plus ``octave_base_scale``, ``scales`` and ``ratios`` as
    in ``level_anchors``.

    Returns:
        anchors: (A, 4) float64 xyxy, in (level, row, column, anchor) order.
        num_anchors_per_level: list of L ints summing to A, ``H_l * W_l * n`` each.
    """
    strides = _check_strides(strides)
    sizes = _level_sizes(image_size, strides, level_sizes)
    anchors = [level_anchors(size, s, octave_base_scale, center_offset, scales, ratios) for size, s in zip(sizes, strides)]
    return (np.concatenate(anchors, axis=0) if anchors else np.zeros((0, 4))), [len(a) for a in anchors]


def _level_sizes(image_size, strides, level_sizes):
    """The (H_l, W_l) of each level: ``level_sizes`` when given (checked against
    ``image_size`` when both are), else ``feature_sizes(image_size, strides)``."""
    if level_sizes is None:
        if image_size is None:
            raise ValueError("image_size, level_sizes: expected at least one of them")
        return feature_sizes(image_size, strides)
    sizes = [(int(h), int(w)) for h, w in level_sizes]
    if len(sizes) != len(strides) or any(h < 0 or w < 0 for h, w in sizes):
        raise ValueError(f"level_sizes: expected {len(strides)} (H_l, W_l) pairs of non-negative ints, got {list(level_sizes)}")
    if image_size is not None:
        expected = feature_sizes(image_size, strides)
        if sizes != expected:
            raise ValueError(
                f"level_sizes: the feature maps {sizes} do not tile image_size {tuple(image_size)} at strides {strides} "
                f"(that size gives {expected}); pad the input to a multiple of {max(strides)} (the largest stride) and pass "
                "that size, or pass only the feature-map sizes")
    return sizes


def _check_image_size(image_size):
    if len(image_size) != 2 or any(int(v) != v or v < 0 for v in image_size):
        raise ValueError(f"image_size: expected (H, W) non-negative integers, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def _check_strides(strides):
    strides = list(strides)
    if any(not (s > 0) for s in strides):
        raise ValueError(f"strides: expected positive strides, got {strides}")
    return strides


def _check_factors(values, name):
    values = [float(v) for v in values]
    if not values or any(not (math.isfinite(v) and v > 0) for v in values):
        raise ValueError(f"{name}: expected at least one positive finite value, got {values}")
    return values


def _snap(side, snap):
    """``side`` itself, or with ``snap`` twice its half rounded to a multiple of ANCHOR_QUANTUM."""
    return 2.0 * (round(side / 2.0 / ANCHOR_QUANTUM) * ANCHOR_QUANTUM) if snap else side
