"""Anchor and point generators (specs/anchors.md). Twin of ``reference/anchors.py``.

One location per feature-map cell; centres at ``(i + offset) * stride``. Anchors may be
several per location (scales x aspect ratios). Levels concatenated level-major, rows (y)
outer, columns (x) inner, then the anchors of a location (specs/conventions.md §3).
Every generator takes ``device`` and ``dtype`` (default: CPU, the default float dtype).
"""
import math

import torch

from detector.conventions import (
    ANCHOR_QUANTUM,
    DEFAULT_ANCHOR_RATIOS,
    DEFAULT_ANCHOR_SCALES,
    DEFAULT_CENTER_OFFSET,
    DEFAULT_STRIDES,
    OCTAVE_BASE_SCALE,
)


def feature_sizes(image_size, strides=DEFAULT_STRIDES):
    """Feature-map size of each level (specs/anchors.md §1).

    Returns:
        list of L ``(H_l, W_l)`` with ``H_l = ceil(H / stride)``, ``W_l = ceil(W / stride)``.
    """
    height, width = _check_image_size(image_size)
    return [(math.ceil(height / s), math.ceil(width / s)) for s in _check_strides(strides)]


def level_points(feature_size, stride, center_offset=DEFAULT_CENTER_OFFSET, *, device=None, dtype=None):
    """Points of one level (specs/anchors.md §2).

    Returns:
        (A_l, 2) (x, y), A_l = H_l * W_l, rows (y) outer, columns (x) inner.
    """
    rows, cols = feature_size
    dtype = dtype or torch.get_default_dtype()
    xs = (torch.arange(cols, device=device, dtype=dtype) + center_offset) * stride  # (W_l,)
    ys = (torch.arange(rows, device=device, dtype=dtype) + center_offset) * stride  # (H_l,)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (H_l, W_l) each
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def anchor_shapes(base_size, scales=DEFAULT_ANCHOR_SCALES, ratios=DEFAULT_ANCHOR_RATIOS, *, device=None, dtype=None):
    """Widths and heights of the anchors of one location (specs/anchors.md §3).

    Returns:
        (R * S, 2) ``(w, h)``, for each ratio (outer) each scale (inner): anchor
        ``i * S + j`` has ``w = base_size * scales[j] / sqrt(ratios[i])``,
        ``h = base_size * scales[j] * sqrt(ratios[i])`` (computed in Python floats, then
        converted: the reference's float64 values). With several anchors (R * S > 1) each
        half side is rounded to the nearest multiple of ``ANCHOR_QUANTUM`` (2^-8 px): exact
        coordinates, and the anchors of a location share their centre bit for bit.
    """
    scales, ratios = _check_factors(scales, "scales"), _check_factors(ratios, "ratios")
    snap = len(scales) * len(ratios) > 1
    shapes = []
    for ratio in ratios:
        root = math.sqrt(ratio)
        for scale in scales:
            side = base_size * scale
            shapes.append((_snap(side / root, snap), _snap(side * root, snap)))
    return torch.tensor(shapes, device=device, dtype=torch.float64).to(dtype or torch.get_default_dtype())


def level_anchors(
    feature_size, stride, octave_base_scale=OCTAVE_BASE_SCALE, center_offset=DEFAULT_CENTER_OFFSET,
    scales=DEFAULT_ANCHOR_SCALES, ratios=DEFAULT_ANCHOR_RATIOS, *, device=None, dtype=None
):
    """Anchors of one level, ``n = len(scales) * len(ratios)`` per location (specs/anchors.md §3).

    Returns:
        (A_l, 4) xyxy, A_l = H_l * W_l * n, centred on the points; location ``y * W_l + x``
        holds anchors ``(y * W_l + x) * n + a``, ``a`` in ``anchor_shapes`` order.
    """
    dtype = dtype or torch.get_default_dtype()
    half = anchor_shapes(octave_base_scale * stride, scales, ratios, device=device, dtype=torch.float64) / 2  # (n, 2)
    half = half.to(dtype)
    points = level_points(feature_size, stride, center_offset, device=device, dtype=dtype)[:, None, :]  # (H_l * W_l, 1, 2)
    return torch.cat([points - half, points + half], dim=2).reshape(-1, 4)


def multi_level_points(
    image_size=None,
    strides=DEFAULT_STRIDES,
    center_offset=DEFAULT_CENTER_OFFSET,
    level_sizes=None,
    *,
    device=None,
    dtype=None,
):
    """Points of all levels (specs/anchors.md §4).

    Args:
        image_size: (H, W) of the padded input, or None when ``level_sizes`` is given.
        strides: L strides.
        center_offset: as in ``level_points``.
        level_sizes: None, or the L ``(H_l, W_l)`` of the network's feature maps; with an
            ``image_size`` too they must equal ``feature_sizes(image_size, strides)``.

    Returns:
        points: (A, 2), level-major.
        point_strides: (A,), the stride of each point's level.
        num_points_per_level: list of L ints summing to A.
    """
    strides = _check_strides(strides)
    dtype = dtype or torch.get_default_dtype()
    sizes = _level_sizes(image_size, strides, level_sizes)
    points = [level_points(size, s, center_offset, device=device, dtype=dtype) for size, s in zip(sizes, strides)]
    point_strides = [torch.full((len(p),), float(s), device=device, dtype=dtype) for p, s in zip(points, strides)]
    return (
        torch.cat(points) if points else torch.zeros((0, 2), device=device, dtype=dtype),
        torch.cat(point_strides) if point_strides else torch.zeros(0, device=device, dtype=dtype),
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
    *,
    device=None,
    dtype=None,
):
    """Anchors of all levels (specs/anchors.md §4), ``n = len(scales) * len(ratios)`` per
    location (one square anchor by default, as ATSS).

    Args as ``multi_level_points``, plus ``octave_base_scale``, ``scales`` and ``ratios`` as
    in ``level_anchors``.

    Returns:
        anchors: (A, 4) xyxy, in (level, row, column, anchor) order.
        num_anchors_per_level: list of L ints summing to A, ``H_l * W_l * n`` each.
    """
    strides = _check_strides(strides)
    dtype = dtype or torch.get_default_dtype()
    sizes = _level_sizes(image_size, strides, level_sizes)
    anchors = [
        level_anchors(size, s, octave_base_scale, center_offset, scales, ratios, device=device, dtype=dtype)
        for size, s in zip(sizes, strides)
    ]
    return (torch.cat(anchors) if anchors else torch.zeros((0, 4), device=device, dtype=dtype)), [len(a) for a in anchors]


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
