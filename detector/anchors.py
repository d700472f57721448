"""Anchor and point generators (specs/anchors.md). Twin of ``reference/anchors.py``.

One location per feature-map cell; centres at ``(i + offset) * stride``; levels
concatenated level-major, rows (y) outer, columns (x) inner (specs/conventions.md §3).
Every generator takes ``device`` and ``dtype`` (default: CPU, the default float dtype).
"""
import math

import torch

from detector.conventions import DEFAULT_CENTER_OFFSET, DEFAULT_STRIDES, OCTAVE_BASE_SCALE


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


def level_anchors(
    feature_size, stride, octave_base_scale=OCTAVE_BASE_SCALE, center_offset=DEFAULT_CENTER_OFFSET, *, device=None, dtype=None
):
    """Square anchors of one level, one per location (specs/anchors.md §3).

    Returns:
        (A_l, 4) xyxy squares of side ``octave_base_scale * stride`` centred on the points.
    """
    half = octave_base_scale * stride / 2
    points = level_points(feature_size, stride, center_offset, device=device, dtype=dtype)
    return torch.cat([points - half, points + half], dim=1)


def multi_level_points(image_size, strides=DEFAULT_STRIDES, center_offset=DEFAULT_CENTER_OFFSET, *, device=None, dtype=None):
    """Points of all levels (specs/anchors.md §4).

    Returns:
        points: (A, 2), level-major.
        point_strides: (A,), the stride of each point's level.
        num_points_per_level: list of L ints summing to A.
    """
    strides = _check_strides(strides)
    dtype = dtype or torch.get_default_dtype()
    sizes = feature_sizes(image_size, strides)
    points = [level_points(size, s, center_offset, device=device, dtype=dtype) for size, s in zip(sizes, strides)]
    point_strides = [torch.full((len(p),), float(s), device=device, dtype=dtype) for p, s in zip(points, strides)]
    return (
        torch.cat(points) if points else torch.zeros((0, 2), device=device, dtype=dtype),
        torch.cat(point_strides) if point_strides else torch.zeros(0, device=device, dtype=dtype),
        [len(p) for p in points],
    )


def multi_level_anchors(
    image_size,
    strides=DEFAULT_STRIDES,
    octave_base_scale=OCTAVE_BASE_SCALE,
    center_offset=DEFAULT_CENTER_OFFSET,
    *,
    device=None,
    dtype=None,
):
    """ATSS anchors of all levels (specs/anchors.md §4).

    Returns:
        anchors: (A, 4) xyxy, level-major.
        num_anchors_per_level: list of L ints summing to A.
    """
    strides = _check_strides(strides)
    dtype = dtype or torch.get_default_dtype()
    sizes = feature_sizes(image_size, strides)
    anchors = [
        level_anchors(size, s, octave_base_scale, center_offset, device=device, dtype=dtype) for size, s in zip(sizes, strides)
    ]
    return (torch.cat(anchors) if anchors else torch.zeros((0, 4), device=device, dtype=dtype)), [len(a) for a in anchors]


def _check_image_size(image_size):
    if len(image_size) != 2 or any(int(v) != v or v < 0 for v in image_size):
        raise ValueError(f"image_size: expected (H, W) non-negative integers, got {tuple(image_size)}")
    return int(image_size[0]), int(image_size[1])


def _check_strides(strides):
    strides = list(strides)
    if any(not (s > 0) for s in strides):
        raise ValueError(f"strides: expected positive strides, got {strides}")
    return strides
