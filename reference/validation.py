"""Input checks shared by every public function (specs/conventions.md §2).

Bad input raises ``ValueError`` naming the argument and the first bad row; nothing is
silently repaired. Zero-area boxes and empty arrays are valid.
"""
import math
import numbers

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


def as_pred_boxes(boxes, name, shape):
    """Check and convert predicted boxes, which may hold non-finite rows.

    Args:
        boxes: array-like xyxy decoded predictions of shape ``shape``; a real integer or
            floating dtype.
        name: the argument name used in error messages.
        shape: the expected shape, ``(A, 4)``.

    Returns:
        float64 copy of ``boxes``. Rows with a NaN or Inf stay (a diverged prediction; each
        caller says what such a row produces).

    Raises:
        ValueError: wrong shape or dtype; a finite row with x2 < x1 or y2 < y1 (names the
            first such row).
    """
    array = _as_real_array(boxes, name)
    if array.shape != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (one box per anchor), got {array.shape}")
    inverted = (array[..., 2] < array[..., 0]) | (array[..., 3] < array[..., 1])
    if inverted.any():
        inverted &= np.isfinite(array).all(axis=-1)
        if inverted.any():
            row = int(np.flatnonzero(inverted)[0])
            raise ValueError(f"{name}: row {row} has x2 < x1 or y2 < y1: {array[row].tolist()}")
    return array



def as_class_scores(scores, name, shape):
    """Class probabilities of the prediction-aware assigners (TAL, SimOTA, DSL): an array of
    shape ``shape + (K,)`` (``shape`` is ``(A,)``), K >= 1, every value in [0, 1] (so finite)
    -> float64.

    Raises:
        ValueError: a wrong dtype or shape; a value that is NaN, Inf or outside [0, 1], naming
            its row and class.
    """
    array = as_values(scores, name, len(shape) + 1, finite=False)
    if array.shape[:-1] != tuple(shape) or array.shape[-1] < 1:
        expected = "(" + ", ".join(str(n) for n in shape) + ", K)"
        raise ValueError(f"{name}: expected shape {expected} with K >= 1 (one row per anchor), got {array.shape}")
    bad = ~((array >= 0) & (array <= 1))  # NaN fails both comparisons
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        row = where[0] if len(where) == 2 else where[:-1]
        raise ValueError(f"{name}: row {row} class {where[-1]} is {float(array[where])}, expected a probability in [0, 1]")
    return array


def as_class_labels(labels, name, shape, num_classes):
    """GT classes of the prediction-aware assigners: integers of ``shape`` (``(G,)``) in
    0..K-1 -> int64. An empty array may have any real dtype (``[]`` is a float array).

    Raises:
        ValueError: a wrong shape or a non-integer dtype (bool included); a class outside
            0..K-1, naming its row.
    """
    array = np.asarray(labels)
    real = np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)  # bool is neither
    if array.size == 0 and array.shape == tuple(shape) and real:
        return np.zeros(tuple(shape), dtype=np.int64)
    if array.shape != tuple(shape) or array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: expected a {tuple(shape)} integer array, got shape {array.shape} dtype {array.dtype}")
    bad = (array < 0) | (array >= num_classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}: row {row} is {int(array[row])}, expected a class in 0..{num_classes - 1}")
    return array.astype(np.int64)


def _as_real_array(values, name):
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {array.dtype}")
    return array.astype(np.float64, copy=True)


# ---------------------------------------------------------------------------------------
# assigner options (specs/atss.md, specs/dynamic_atss.md, specs/max_iou.md,
# specs/anchor_free.md)


def check_topk(topk):
    """``topk`` must be an int >= 1 (bools are rejected)."""
    if isinstance(topk, bool) or not isinstance(topk, numbers.Integral) or topk < 1:
        raise ValueError(f"topk: expected an int >= 1, got {topk!r}")
    return int(topk)


def check_number(value, name, minimum=None, strict=False):
    """``value`` must be a finite real number (bools are rejected), and ``>= minimum`` when a
    minimum is given (``> minimum`` when ``strict``). Returns it as a float."""
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def check_bool(value, name):
    """``value`` must be a bool (NumPy's included). Returns it as a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}: expected a bool, got {value!r}")
    return bool(value)


# ---------------------------------------------------------------------------------------
# losses and targets: values of any shape and scalar options (specs/losses.md §1-§4, §7;
# specs/targets.md §2)


def as_finite(values, name):
    """Check and convert values of any shape (logits, loss targets) -> float64 copy.

    Raises:
        ValueError: a bool or non-real dtype; a NaN or Inf element (names its index).
    """
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {array.dtype}")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name}: element {index} is NaN or Inf")
    return array


def check_exponent(value, name):
    """Check a loss exponent or negative weight (``gamma``, ``beta``, VFL's ``alpha``): a finite number >= 0."""
    if not (isinstance(value, (int, float, np.floating, np.integer)) and np.isfinite(value) and value >= 0):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")


def check_unit(value, name):
    """Check a weight in [0, 1] (the focal loss ``alpha``; its caller handles None)."""
    if not (isinstance(value, (int, float, np.floating, np.integer)) and 0 <= value <= 1):
        raise ValueError(f"{name}: expected a value in [0, 1] or None, got {value!r}")


def check_choice(value, choices, name):
    """Check that ``value`` is one of ``choices`` (e.g. ``losses.CLS_LOSSES``)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_num_classes(num_classes):
    """Check the number of classes K: a positive int, not a bool. Returns it as an int."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    return int(num_classes)
