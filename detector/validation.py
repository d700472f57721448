"""Input checks shared by every public function (specs/conventions.md §2, §7).

Twin of ``reference/validation.py``. Bad input raises ``ValueError`` naming the argument
and the first bad row. Tensors keep their floating dtype (float32 or float64); half and
bfloat16 are up-cast to float32; integers become the default float dtype. Each check
costs one device synchronisation.
"""
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


def _as_real_tensor(values, name):
    tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(_to_array(values, name))
    if tensor.dtype == torch.bool or tensor.is_complex():
        raise ValueError(f"{name}: expected a real integer or floating dtype, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        return tensor.float()
    if not tensor.is_floating_point():
        return tensor.to(torch.get_default_dtype())
    return tensor


def _to_array(values, name):
    import numpy as np

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
