"""Input checks shared by every public function (specs/conventions.md §2, §7).

Twin of ``reference/validation.py``. Bad input raises ``ValueError`` naming the argument
and the first bad row. Tensors keep their floating dtype (float32 or float64); half and
bfloat16 are up-cast to float32; integers become the default float dtype. Each check
costs one device synchronisation.
"""
import math
import numbers

import numpy as np
import torch


def as_boxes(boxes, name, batched=False):
    """Check and convert boxes.

    Args:
        boxes: (N, 4) xyxy, or (B, N, 4) when ``batched``; a tensor or array-like of a
            real integer or floating dtype.
        name: the argument name used in error messages.
        batched: whether a leading batch dimension is expected.

    Returns:
        float tensor of the same shape (see module docstring for the dtype rule).

    Raises:
        ValueError: wrong shape or dtype; NaN/Inf; x2 < x1 or y2 < y1 (names the first bad row).
    """
    tensor = _as_real_tensor(boxes, name)
    ndim = 3 if batched else 2
    if tensor.ndim != ndim or tensor.shape[-1] != 4:
        expected = "(B, N, 4)" if batched else "(N, 4)"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")
    if not _all_finite(tensor) or bool((tensor[..., 2:] < tensor[..., :2]).any()):
        finite = torch.isfinite(tensor).all(dim=-1)
        inverted = (tensor[..., 2] < tensor[..., 0]) | (tensor[..., 3] < tensor[..., 1])
        if not bool(finite.all()):
            row = _first_row(~finite)
            raise ValueError(f"{name}: row {row} has a NaN or Inf coordinate: {tensor[row].tolist()}")
        row = _first_row(inverted)
        raise ValueError(f"{name}: row {row} has x2 < x1 or y2 < y1: {tensor[row].tolist()}")
    return tensor


def as_points(points, name):
    """Check and convert points: (N, 2) finite (x, y) -> float tensor (N, 2)."""
    tensor = _as_real_tensor(points, name)
    if tensor.ndim != 2 or tensor.shape[1] != 2:
        raise ValueError(f"{name}: expected shape (N, 2), got {tuple(tensor.shape)}")
    if not _all_finite(tensor):
        finite = torch.isfinite(tensor).all(dim=1)
        row = _first_row(~finite)
        raise ValueError(f"{name}: row {row} has a NaN or Inf coordinate: {tensor[row].tolist()}")
    return tensor


def as_values(values, name, ndim, width=None, finite=True):
    """Check and convert a float tensor of ``ndim`` dims (last dim == ``width`` if given)."""
    tensor = _as_real_tensor(values, name)
    if tensor.ndim != ndim or (width is not None and tensor.shape[-1] != width):
        expected = "(" + ", ".join(["N"] * (ndim - 1) + [str(width) if width else "N"]) + ")"
        raise ValueError(f"{name}: expected shape {expected}, got {tuple(tensor.shape)}")
    if finite:
        bad = ~torch.isfinite(tensor)
        if bool(bad.any()):
            row = int(torch.nonzero(bad)[0][0])
            raise ValueError(f"{name}: row {row} has a NaN or Inf value")
    return tensor


def check_level_counts(num_per_level, total, name):
    """Check that ``num_per_level`` is a list of non-negative ints summing to ``total``."""
    counts = [int(n) for n in num_per_level]
    if any(n < 0 for n in counts) or sum(counts) != total:
        raise ValueError(f"{name}: expected non-negative counts summing to {total}, got {counts}")
    return counts


def as_pred_boxes(boxes, name, shape):
    """Check and convert predicted boxes, which may hold non-finite rows.

    Args:
        boxes: xyxy decoded predictions of shape ``shape``; a tensor or array-like of a
            real integer or floating dtype.
        name: the argument name used in error messages.
        shape: the expected shape, ``(A, 4)`` or ``(B, A, 4)``.

    Returns:
        float tensor of ``boxes`` (see module docstring for the dtype rule). Rows with a NaN
        or Inf stay (a diverged prediction; each caller says what such a row produces).

    Raises:
        ValueError: wrong shape or dtype; a finite row with x2 < x1 or y2 < y1 (names the
            first such row).
    """
    tensor = _as_real_tensor(boxes, name)
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)} (one box per anchor), got {tuple(tensor.shape)}")
    inverted = (tensor[..., 2] < tensor[..., 0]) | (tensor[..., 3] < tensor[..., 1])
    if bool(inverted.any()):
        inverted &= torch.isfinite(tensor).all(dim=-1)
        if bool(inverted.any()):
            row = _first_row(inverted)
            raise ValueError(f"{name}: row {row} has x2 < x1 or y2 < y1: {tensor[row].tolist()}")
    return tensor


def all_in_unit_interval(tensor):
    """Whether every value of a float tensor lies in [0, 1] (NaN does not), for the checks of
    probabilities (the prediction-aware assigners' ``pred_scores``): two reductions, ``amin``
    and ``amax``, which propagate NaN, and one device synchronisation. Values in [0, 1] are
    finite, so a caller that also requires finite values can skip that test when this
    holds; when it does not, the caller searches for the bad value to name it. (One
    ``aminmax`` pass costs more on CPU than the two reductions.)"""
    if tensor.numel() == 0:
        return True
    return bool((tensor.amin() >= 0) & (tensor.amax() <= 1))



def as_class_scores(scores, name, shape):
    """Class probabilities of the prediction-aware assigners (TAL, SimOTA, DSL): a tensor of
    shape ``shape + (K,)`` (``shape`` is ``(A,)``, or ``(B, A)`` when batched), K >= 1, every
    value in [0, 1] (so finite) -> float tensor.

    Values in [0, 1] are finite, so one test (``all_in_unit_interval``, two reductions) passes
    good scores; only when it fails is the bad value searched for, to be named.

    Raises:
        ValueError: a wrong dtype or shape; a value that is NaN, Inf or outside [0, 1], naming
            its row (an int, or a (b, a) tuple when batched) and class.
    """
    tensor = as_values(scores, name, len(shape) + 1, finite=False)
    if tuple(tensor.shape[:-1]) != tuple(shape) or tensor.shape[-1] < 1:
        expected = "(" + ", ".join(str(n) for n in shape) + ", K)"
        raise ValueError(f"{name}: expected shape {expected} with K >= 1 (one row per anchor), got {tuple(tensor.shape)}")
    if not all_in_unit_interval(tensor):
        bad = ~((tensor >= 0) & (tensor <= 1))  # NaN fails both comparisons
        where = tuple(torch.nonzero(bad)[0].tolist())
        row = where[0] if len(where) == 2 else where[:-1]
        raise ValueError(f"{name}: row {row} class {where[-1]} is {float(tensor[where])}, expected a probability in [0, 1]")
    return tensor


def as_class_labels(labels, name, shape, num_classes, *, valid=None):
    """GT classes of the prediction-aware assigners: integers of ``shape`` (``(G,)``, or
    ``(B, G_max)`` when batched) in 0..K-1 -> int64 tensor. An empty array may have any real
    dtype (``[]`` is a float array). ``valid`` (bool, of ``shape``; batched GTs): only the slots
    that hold a GT are checked, the others become 0.

    Raises:
        ValueError: a wrong shape or a non-integer dtype (bool included); a class outside
            0..K-1, naming its row (an int, or a (b, g) tuple when batched).
    """
    tensor = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(np.asarray(labels))
    if tensor.numel() == 0 and tuple(tensor.shape) == tuple(shape) and tensor.dtype != torch.bool and not tensor.is_complex():
        return torch.zeros(tuple(shape), dtype=torch.int64, device=tensor.device)
    if (tuple(tensor.shape) != tuple(shape) or tensor.dtype == torch.bool or tensor.is_floating_point()
            or tensor.is_complex()):
        raise ValueError(f"{name}: expected a {tuple(shape)} integer array, got shape {tuple(tensor.shape)} "
                         f"dtype {tensor.dtype}")
    tensor = tensor.to(torch.int64)
    bad = (tensor < 0) | (tensor >= num_classes)
    if valid is not None:
        valid = valid.to(tensor.device)
        bad &= valid
    if bool(bad.any()):
        row = _first_row(bad)
        raise ValueError(f"{name}: row {row} is {int(tensor[row])}, expected a class in 0..{num_classes - 1}")
    return tensor if valid is None else torch.where(valid, tensor, 0)


def check_same_device(tensor, reference, name, reference_name):
    """``tensor`` must be on the device of ``reference`` (an assigner never moves its inputs
    silently between devices). Returns ``tensor``."""
    if isinstance(tensor, torch.Tensor) and tensor.device.type == "meta":
        raise ValueError(f"{name}: a tensor on the meta device has no values to compute with")
    if isinstance(tensor, torch.Tensor) and tensor.device != reference.device:
        raise ValueError(f"{name}: on {tensor.device}, but {reference_name} is on {reference.device}; "
                         "put every input of one call on one device")
    return tensor


def _as_real_tensor(values, name):
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(_to_array(values, name))
    if tensor.device.type == "meta":
        raise ValueError(f"{name}: a tensor on the meta device has no values to compute with")
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    if not tensor.is_floating_point():
        return tensor.to(torch.get_default_dtype())
    return tensor


def _to_array(values, name):
    array = np.asarray(values)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {array.dtype}")
    return array


def _all_finite(tensor):
    """Whether every value is finite, with one cheap reduction in the common case: a finite
    sum implies finite values (an Inf or NaN makes the sum non-finite); a non-finite sum
    (which finite values can also give, by overflow) falls back to the per-value test."""
    if tensor.numel() == 0 or bool(torch.isfinite(tensor.sum())):
        return True
    return bool(torch.isfinite(tensor).all())


def _first_row(mask):
    """Index of the first True row of a (N,) or (B, N) mask: an int or a (b, n) tuple."""
    index = torch.nonzero(mask)[0].tolist()
    return index[0] if len(index) == 1 else tuple(index)


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


def check_max_elements(max_elements):
    """``max_elements`` (the memory bound of a batched assigner; no reference twin) must be
    an int >= 1 (bools are rejected)."""
    if isinstance(max_elements, bool) or not isinstance(max_elements, numbers.Integral) or max_elements < 1:
        raise ValueError(f"max_elements: expected an int >= 1, got {max_elements!r}")
    return int(max_elements)


# ---------------------------------------------------------------------------------------
# losses and targets: values of any shape and scalar options (specs/losses.md §1-§4, §7;
# specs/targets.md §2)


def as_finite(values, name):
    """Check and convert values of any shape (logits, loss targets) -> float tensor.

    The dtype rule is that of the module docstring. One reduction in the common case: a
    finite sum proves every element finite.

    Raises:
        ValueError: a bool or complex dtype; a NaN or Inf element (names its index).
    """
    tensor = torch.as_tensor(values)
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    elif not tensor.is_floating_point():
        tensor = tensor.to(torch.get_default_dtype())
    # fast path: one reduction; a finite sum proves every element finite
    if tensor.numel() and bool(torch.isfinite(tensor.sum())):
        return tensor
    bad = ~torch.isfinite(tensor)
    if bool(bad.any()):
        index = tuple(torch.nonzero(bad)[0].tolist())
        raise ValueError(f"{name}: element {index} is NaN or Inf")
    return tensor


def check_exponent(value, name):
    """Check a loss exponent or negative weight (``gamma``, ``beta``, VFL's ``alpha``): a finite number >= 0."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value == value and 0 <= value < float("inf")):
        raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")


def check_unit(value, name):
    """Check a weight in [0, 1] (the focal loss ``alpha``; its caller handles None)."""
    if not (isinstance(value, (int, float)) and 0 <= value <= 1):
        raise ValueError(f"{name}: expected a value in [0, 1] or None, got {value!r}")


def check_choice(value, choices, name):
    """Check that ``value`` is one of ``choices`` (e.g. ``losses.CLS_LOSSES``)."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def check_num_classes(num_classes):
    """Check the number of classes K: a positive int, not a bool. Returns it as an int."""
    if isinstance(num_classes, bool) or not hasattr(num_classes, "__index__") or int(num_classes) < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    return int(num_classes)
