"""Named constants shared by every algorithm (specs/conventions.md §4, §7).

``detector/conventions.py`` holds the same names with the same values; a test checks it.
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
#: Anchors per location: one square anchor (scale 1, aspect ratio h / w = 1), as ATSS.
DEFAULT_ANCHOR_SCALES = (1.0,)
DEFAULT_ANCHOR_RATIOS = (1.0,)
#: With several anchors per location, half sides are rounded to a multiple of this (2^-8 px),
#: so that anchor coordinates are exact and the anchors of a location share their centre bit
#: for bit (specs/anchors.md §3).
ANCHOR_QUANTUM = 2.0 ** -8
#: RetinaNet's 9 anchors per location (mmdetection ``AnchorGenerator``: ``octave_base_scale=4``,
#: ``scales_per_octave=3``, ``ratios=[0.5, 1.0, 2.0]``): sides 4 * stride * 2^(i / 3).
RETINANET_OCTAVE_BASE_SCALE = 4
RETINANET_ANCHOR_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
RETINANET_ANCHOR_RATIOS = (0.5, 1.0, 2.0)
#: RetinaNet's delta-xywh coder in mmdetection: means 0, standard deviations 1.
RETINANET_DELTA_STDS = (1.0, 1.0, 1.0, 1.0)

#: FCOS regression ranges per level (the comparison is fixed in specs/anchor_free.md).
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, math.inf))
#: FCOS centre-sampling radius, in strides.
FCOS_CENTER_RADIUS = 1.5
#: Lower clamp of each logarithm of a binary cross-entropy on probabilities, as torch's
#: ``binary_cross_entropy`` (SimOTA's and DSL's class costs, the probability-form QFL).
BCE_LOG_MIN = -100.0
