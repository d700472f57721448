"""Input checks shared by every public function (specs/conventions.md §2).

Bad input raises ``ValueError`` naming the argument and the first bad row; nothing is
silently repaired. Zero-area boxes and empty arrays are valid.
"""
import numpy as np


def as_boxes(boxes, name):
    """Check and convert boxes.

    Args:
        boxes: array-like (N, 4), xyxy; a real integer or floating dtype.
        name: the argument name used in error messages.

    Returns:
        (N, 4) float64 copy of ``boxes``.

    Raises:
        ValueError: wrong shape or dtype; NaN/Inf; x2 < x1 or y2 < y1 (names the first bad row).
    """
    array = _as_real_array(boxes, name)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"{name}: expected shape (N, 4), got {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}: row {row} has a NaN or Inf coordinate: {array[row].tolist()}")
    inverted = (array[:, 2] < array[:, 0]) | (array[:, 3] < array[:, 1])
    if inverted.any():
        row = int(np.flatnonzero(inverted)[0])
        raise ValueError(f"{name}: row {row} has x2 < x1 or y2 < y1: {array[row].tolist()}")
    return array


def as_points(points, name):
    """Check and convert points: array-like (N, 2) of finite (x, y) -> (N, 2) float64."""
    array = _as_real_array(points, name)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {array.shape}")
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        row = int(np.flatnonzero(~finite)[0])
        raise ValueError(f"{name}: row {row} has a NaN or Inf coordinate: {array[row].tolist()}")
    return array


def as_values(values, name, ndim, width=None, finite=True):
    """Check and convert a float array of ``ndim`` dims (last dim == ``width`` if given)."""
    array = _as_real_array(values, name)
    if array.ndim != ndim or (width is not None and array.shape[-1] != width):
        expected = "(" + ", ".join(["N"] * (ndim - 1) + [str(width) if width else "N"]) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {array.shape}")
    if finite:
        bad = ~np.isfinite(array)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise ValueError(f"{name}: row {row} has a NaN or Inf value")
    return array


def check_level_counts(num_per_level, total, name):
    """Check that ``num_per_level`` is a list of non-negative ints summing to ``total``."""
    counts = [int(n) for n in num_per_level]
    if any(n < 0 for n in counts) or sum(counts) != total:
        raise ValueError(f"{name}: expected non-negative counts summing to {total}, got {counts}")
    return counts


def _as_real_array(values, name):
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {array.dtype}")
    return array.astype(np.float64, copy=True)
