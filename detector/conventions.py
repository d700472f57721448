"""Named constants shared by every algorithm (specs/conventions.md §4, §7).

Twin of ``reference/conventions.py``: same names, same values (checked by a test).
"""
import math

#: ``matched_gt`` value of a negative anchor/point.
BACKGROUND = -1
#: ``matched_gt`` value of an anchor excluded from the classification loss.
IGNORE = -2

#: ATSS / Dynamic ATSS: an anchor centre is inside a GT when min(l, t, r, b) > 0.01 px.
ATSS_INSIDE_EPS = 0.01
#: FCOS-style candidates: a point is inside a GT when min(l, t, r, b) > 0.
FCOS_INSIDE_EPS = 0.0

#: Default ATSS top-k per level.
ATSS_TOPK = 9

#: delta-xywh coder: standard deviations (dx, dy, dw, dh) = 1 / (10, 10, 5, 5).
DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
#: delta-xywh coder: |dw|, |dh| are clamped to this before exp().
DELTA_MAX_RATIO = math.log(1000.0 / 16.0)

#: Pyramid strides P3..P7.
DEFAULT_STRIDES = (8, 16, 32, 64, 128)
#: ATSS anchor side is OCTAVE_BASE_SCALE * stride.
OCTAVE_BASE_SCALE = 8
#: Anchor/point centre offset in units of stride (centre = (i + offset) * stride).
DEFAULT_CENTER_OFFSET = 0.5

#: FCOS regression ranges per level (the comparison is fixed in specs/anchor_free.md).
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))
#: FCOS centre-sampling radius, in strides.
FCOS_CENTER_RADIUS = 1.5
