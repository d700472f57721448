"""What the assigners derive from their anchors or points, computed once per tensor.

No reference twin: performance machinery (specs/conventions.md §4.1). A training run gives
the assigners the same anchors (or points) at every step (``Detector.priors`` keeps them
per image size), yet each call used to re-check them, recompute their centres and find
the grid of every level again: a fixed cost of about a millisecond per call, more than
the assignment itself at a few GTs (docs/benchmarks.md). ``memo`` keeps such derived
values beside the tensor they come from:

- a value is keyed by the tensor *object* and a key naming what was derived (and from
  which arguments), and is used again only while that object is alive and unchanged:
  its ``_version`` counter (bumped by every in-place write, also through views) must equal
  the one seen when the value was built. A new tensor with equal values is a new entry.
- the entry goes when the tensor is freed (a weak reference), and at most
  ``MAX_TENSORS`` tensors are remembered (the oldest is dropped first);
- inference tensors (``torch.inference_mode``) have no version counter and are never
  memoised, nor is anything while ``memo_disabled()`` is active (tests compare both ways).

A memoised value is what ``build()`` returned the first time, so results are identical
with and without the memo; the memo only skips work.
"""
import contextlib
import weakref

import torch

from detector.validation import as_boxes, as_points

#: The most tensors whose derived values are kept at once.
MAX_TENSORS = 16

_entries = {}  # id(tensor) -> (weak reference, version, {key: value})
_disabled = [0]


def memo(tensor, key, build):
    """``build()``, or the value it returned for this unchanged ``tensor`` and ``key`` before.

    Args:
        tensor: the tensor the value is derived from (anything else: no memo).
        key: a hashable naming the derived value and every argument it depends on
            besides the tensor's contents.
        build: a function of no arguments computing the value.
    """
    if _disabled[0] or not isinstance(tensor, torch.Tensor) or tensor.is_inference():
        return build()
    ident = id(tensor)
    entry = _entries.get(ident)
    if entry is None or entry[0]() is not tensor or entry[1] != tensor._version:
        if entry is None and len(_entries) >= MAX_TENSORS:
            _entries.pop(next(iter(_entries)))
        entry = (weakref.ref(tensor, lambda _, ident=ident: _forget(ident)), tensor._version, {})
        _entries[ident] = entry
    values = entry[2]
    if key not in values:
        values[key] = build()
    return values[key]


def shared_boxes(boxes, name):
    """``validation.as_boxes(boxes, name)`` for boxes reused across calls (anchors): a float32
    or float64 tensor is checked once (errors are raised every time: a failed check is not
    remembered) and returned as it is."""
    if isinstance(boxes, torch.Tensor) and boxes.dtype in (torch.float32, torch.float64):
        memo(boxes, ("as_boxes", name), lambda: as_boxes(boxes, name) is boxes)
        return boxes
    return as_boxes(boxes, name)


def shared_points(points, name):
    """``validation.as_points(points, name)`` for points reused across calls, as ``shared_boxes``."""
    if isinstance(points, torch.Tensor) and points.dtype in (torch.float32, torch.float64):
        memo(points, ("as_points", name), lambda: as_points(points, name) is points)
        return points
    return as_points(points, name)


@contextlib.contextmanager
def memo_disabled():
    """Within this block every ``memo`` call builds its value afresh."""
    _disabled[0] += 1
    try:
        yield
    finally:
        _disabled[0] -= 1


def _forget(ident):
    entry = _entries.get(ident)
    if entry is not None and entry[0]() is None:
        del _entries[ident]
