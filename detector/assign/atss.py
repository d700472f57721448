"""ATSS: adaptive training sample selection (specs/atss.md).

For each GT: per pyramid level the ``topk`` anchors whose centres are closest to the GT
centre are its candidates; the GT's threshold is the mean plus the sample standard
deviation of the candidates' IoUs; a candidate is positive when its IoU reaches the
threshold and its centre lies inside the GT. An anchor claimed by several GTs goes to the
highest IoU, then to the lower GT index.

The step helpers below (``select_candidates``, ``candidate_ious``,
``mean_plus_std_threshold``, ``centers_inside``, ``resolve_multiple_matches``) are reused by
Dynamic ATSS (``assign/dynamic_atss.py``).

Twin of ``reference/assign/atss.py``. ``assign_atss_batched`` holds the algorithm, for a
batch of images sharing one set of anchors (GTs padded to (B, G_max, 4) with a
``gt_valid`` mask); ``assign_atss`` runs it on one image. The step helpers take batched
tensors: GTs (B, G, 4), candidates (B, G, C). Vectorised over images, GTs and anchors, in
the floating dtype of the inputs (float32 or float64) on any device, without building a
graph (assignment is not differentiable). The nearest-anchor search of
``select_candidates`` is ``detector/assign/nearest.py``; the batch plumbing is
``detector/assign/batching.py``.
"""
import math

import numpy as np
import torch

from detector.assign.batching import (
    DEFAULT_MAX_ELEMENTS,
    as_padded_batch,
    finish_batch,
    gather_boxes,
    one_image,
    sequential_sum,
)
from detector.assign.memo import memo, shared_boxes
from detector.assign.nearest import nearest_anchors
from detector.boxes import _centers, aligned_box_iou_unchecked
from detector.conventions import ATSS_INSIDE_EPS, ATSS_TOPK, BACKGROUND
from detector.validation import check_level_counts, check_max_elements, check_number, check_topk


def assign_atss(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    *,
    topk=ATSS_TOPK,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """Assign anchors to GTs with ATSS (specs/atss.md §2).

    Args:
        anchors: (A, 4) xyxy, all levels concatenated level-major (specs/conventions.md §3).
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (G, 4) xyxy; zero-area boxes are allowed (they get no positive).
        topk: candidates per level and GT, an int >= 1; a level with fewer anchors gives
            all of them (``min(topk, A_l)``).
        inside_eps: an anchor centre is inside a GT when ``min(l, t, r, b) > inside_eps``
            (pixels, strict).
        max_elements: bound on the B * G * A values held at once (GTs are chunked above
            it; the result does not depend on it).

    Returns:
        Assignment with
        matched_gt (A,) int64 in {-1, 0..G-1} (ATSS never ignores),
        matched_metric (A,) IoU with the assigned GT (0 for background),
        gt_threshold (G,) mean + sample std of the candidate IoUs (NaN when C = 0),
        candidate_index (G, C) int64, C = sum_l min(topk, A_l), level by level, within a
        level in (distance, anchor index) order.
        Tensors on the anchors' device.

    Raises:
        ValueError: bad boxes, level counts that do not sum to A, ``topk < 1``, a negative
            or non-finite ``inside_eps``.
        ValueError: ``max_elements`` not an int >= 1.
    """
    return one_image(
        assign_atss_batched,
        (anchors, num_anchors_per_level),
        gt_boxes,
        topk=topk,
        inside_eps=inside_eps,
        max_elements=max_elements,
    )


@torch.no_grad()
def assign_atss_batched(
    anchors,
    num_anchors_per_level,
    gt_boxes,
    gt_valid,
    *,
    topk=ATSS_TOPK,
    inside_eps=ATSS_INSIDE_EPS,
    max_elements=DEFAULT_MAX_ELEMENTS,
):
    """``assign_atss`` for a batch of images sharing one set of anchors (specs/atss.md §2;
    specs/conventions.md §4).

    Args:
        anchors: (A, 4) xyxy, level-major, shared by every image.
        num_anchors_per_level: L non-negative ints summing to A.
        gt_boxes: (B, G_max, 4) xyxy, padded; padded slots may hold anything.
        gt_valid: (B, G_max) bool, which slots are real GTs.
        topk, inside_eps, max_elements: as ``assign_atss``.

    Returns:
        Assignment with matched_gt (B, A) int64, matched_metric (B, A), gt_threshold
        (B, G_max) (NaN for padded slots and when C = 0), candidate_index (B, G_max, C)
        int64 (-1 for padded slots).
    """
    anchors = shared_boxes(anchors, "anchors")
    anchors, gt_boxes, gt_valid = as_padded_batch(anchors, gt_boxes, gt_valid)
    counts = check_level_counts(num_anchors_per_level, len(anchors), "num_anchors_per_level")
    topk = check_topk(topk)
    inside_eps = check_number(inside_eps, "inside_eps", minimum=0.0)
    max_elements = check_max_elements(max_elements)

    candidate_index = select_candidates(gt_boxes, anchors, counts, topk, max_elements=max_elements)
    ious = candidate_ious(gt_boxes, anchors, candidate_index)
    threshold = mean_plus_std_threshold(ious)
    is_positive = (ious >= threshold[..., None]) & centers_inside(gt_boxes, anchors, candidate_index, inside_eps)
    is_positive &= gt_valid[..., None]
    matched_gt, matched_metric = resolve_multiple_matches(candidate_index, ious, is_positive, len(anchors))
    return finish_batch(matched_gt, matched_metric, threshold, candidate_index, gt_valid)


# ---------------------------------------------------------------------------------------
# step helpers (shared with Dynamic ATSS); inputs are already validated tensors of one
# floating dtype on one device


def select_candidates(gt_boxes, anchors, num_anchors_per_level, topk, *, max_elements=DEFAULT_MAX_ELEMENTS):
    """Candidate anchors of each GT (specs/atss.md §2.1).

    On each level, the ``min(topk, A_l)`` anchors whose centres have the smallest
    **squared** Euclidean distance ``dx * dx + dy * dy`` to the GT centre, ordered by
    (squared distance, anchor index): among equal distances the lower anchor index comes
    first (specs/conventions.md §5.1).

    Exactly so on every device, without sorting every distance: ``detector/assign/nearest.py``.

    Args:
        gt_boxes: (B, G, 4) xyxy.
        anchors: (A, 4) xyxy.
        num_anchors_per_level: L ints summing to A.
        topk: int >= 1.
        max_elements: GTs are processed in chunks so that at most about this many
            distances exist at once.

    Returns:
        (B, G, C) int64 anchor indices into ``anchors``, C = sum_l min(topk, A_l); level 0's
        candidates first.
    """
    gt_centers = _centers(gt_boxes)
    anchor_centers = anchor_centers_of(anchors)
    return nearest_anchors(gt_centers, anchor_centers, num_anchors_per_level, topk, max_elements)


def candidate_ious(gt_boxes, boxes, candidate_index):
    """IoU between each GT and the boxes of its candidates (specs/atss.md §2.2).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        boxes: (A, 4) xyxy, one box per anchor (the anchors themselves for ATSS;
            finite decoded predictions for Dynamic ATSS).
            Or (B, A, 4), one box per anchor and image.
        candidate_index: (B, G, C) int64.

    Returns:
        (B, G, C) in [0, 1]: ``IoU(gt_boxes[b, g], boxes[candidate_index[b, g, c]])``; 0 where
        the union is 0 (specs/boxes.md §2).
        The same arithmetic, in the same order, as ``reference.boxes.box_iou`` (and
        ``torchvision.ops.box_iou``) on the gathered pairs.
    """
    return aligned_box_iou_unchecked(gt_boxes[:, :, None, :], gather_boxes(boxes, candidate_index))


def mean_plus_std_threshold(values):
    """Mean plus sample standard deviation of each row (specs/atss.md §2.3).

    ``mean = sum / n`` and ``std = sqrt(sum((v - mean) ** 2) / (n - 1))`` (sample std,
    divisor ``n - 1``; specs/conventions.md §6). Both sums run left to right in candidate
    order, so the two trees agree bit for bit on CPU in float64.

    Args:
        values: (..., C).

    Returns:
        (...) ``mean + std``; ``std = 0`` when C = 1 (the threshold is the single
        value); NaN when C = 0 (no candidates, no threshold).
    """
    count = values.shape[-1]
    if count == 0:
        return torch.full(values.shape[:-1], math.nan, dtype=values.dtype, device=values.device)
    mean = sequential_sum(values) / count
    if count == 1:
        return mean + 0.0
    deviation = values - mean[..., None]
    variance = sequential_sum(deviation * deviation) / (count - 1)
    return mean + _ieee_sqrt(variance)


def centers_inside(gt_boxes, anchors, candidate_index, eps):
    """Whether each candidate's anchor centre lies inside its GT (specs/atss.md §2.4).

    Args:
        gt_boxes: (B, G, 4) xyxy.
        anchors: (A, 4) xyxy.
        candidate_index: (B, G, C) int64.
        eps: float; inside means ``min(x - x1, y - y1, x2 - x, y2 - y) > eps`` (strict).

    Returns:
        (B, G, C) bool. A zero-width or zero-height GT contains no centre for any ``eps >= 0``.
    """
    centers = anchor_centers_of(anchors)[candidate_index]  # (B, G, C, 2)
    x, y = centers[..., 0], centers[..., 1]
    x1, y1, x2, y2 = (gt_boxes[..., i, None] for i in range(4))
    margin = torch.minimum(torch.minimum(x - x1, y - y1), torch.minimum(x2 - x, y2 - y))
    return margin > eps


def resolve_multiple_matches(candidate_index, candidate_metric, is_positive, num_anchors):
    """Give each anchor to at most one GT (specs/atss.md §2.5; specs/conventions.md §5.2).

    An anchor that is positive for several GTs goes to the GT with the highest metric;
    among equal metrics, to the lower GT index.
    Two scatter reductions: the best metric per anchor, then the lowest GT index reaching it.

    Args:
        candidate_index: (B, G, C) int64.
        candidate_metric: (B, G, C), the matching metric of each candidate.
        is_positive: (B, G, C) bool.
        num_anchors: A.

    Returns:
        matched_gt: (B, A) int64, the GT index or BACKGROUND (-1).
        matched_metric: (B, A), the metric with that GT; 0 for background.
    """
    batch, num_gts = candidate_index.shape[:2]
    device = candidate_index.device
    offsets = torch.arange(batch, device=device)[:, None, None] * num_anchors
    flat_index = (candidate_index + offsets).reshape(-1)
    metric = torch.where(is_positive, candidate_metric, -math.inf).reshape(-1)
    best = torch.full((batch * num_anchors,), -math.inf, dtype=candidate_metric.dtype, device=device)
    best.scatter_reduce_(0, flat_index, metric, reduce="amax")
    gt_index = torch.arange(num_gts, device=device)[None, :, None].expand_as(candidate_index).reshape(-1)
    is_winner = is_positive.reshape(-1) & (metric == best[flat_index])
    winner = torch.full((batch * num_anchors,), num_gts, dtype=torch.int64, device=device)
    winner.scatter_reduce_(0, flat_index, torch.where(is_winner, gt_index, num_gts), reduce="amin")
    matched_gt = torch.where(winner < num_gts, winner, BACKGROUND).reshape(batch, num_anchors)
    matched_metric = torch.where(matched_gt >= 0, best.reshape(batch, num_anchors), 0.0)
    return matched_gt, matched_metric


# ---------------------------------------------------------------------------------------
# detector only


def anchor_centers_of(anchors):
    """(A, 4) anchors -> (A, 2) centres ``(x1 + x2) / 2, (y1 + y2) / 2``, computed once per
    anchors tensor (``assign/memo.py``)."""
    return memo(anchors, "centers", lambda: _centers(anchors))


def _ieee_sqrt(values):
    """Correctly rounded square root (IEEE 754), as NumPy's.

    torch's CPU ``sqrt`` kernel is not correctly rounded (it is 1 ulp off for about 1 % of
    float64 inputs), which would break bit-exact float64 thresholds; on CPU we round
    through NumPy (the (B, G) variances are small). CUDA's ``sqrt`` is IEEE-exact.
    """
    if values.device.type != "cpu":
        return values.sqrt()
    return torch.from_numpy(np.sqrt(values.contiguous().numpy()))
