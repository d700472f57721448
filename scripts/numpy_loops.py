"""Plain NumPy loops over GTs: the "no framework" baseline rows of ``scripts/benchmark.py``.

What a careful engineer writes without torch: one vectorised pass over the anchors or
points per GT, a running best per anchor, nothing cached between calls (anchor centres and
level boundaries are recomputed on every call, as the torch assigners are given only
tensors). They are not the project's reference (``reference/`` is written to be read, step
by step, and is slower); they exist so that the torch assigners' per-call cost has a fair
yardstick. Each returns the (A,) matched GT index (BACKGROUND = -1, IGNORE = -2) and must
equal the reference's on a scene without exact ties between GTs
(``tests/benchmarks/test_numpy_loops.py`` checks it).

Shapes: anchors (A, 4) xyxy level-major, points (A, 2), GTs (G, 4) xyxy, float64.
"""
import numpy as np

BACKGROUND, IGNORE = -1, -2
STRIDES = (8, 16, 32, 64, 128)
REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, np.inf))


def _iou_one_to_many(box, boxes):
    """(4,), (N, 4) -> (N,) IoU, 0 where the union is 0."""
    w = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = w * h
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def atss_loop(anchors, num_anchors_per_level, gt_boxes, pred_boxes=None, topk=9, inside_eps=0.01):
    """ATSS (Dynamic ATSS when ``pred_boxes`` (A, 4) is given: candidate metric = IoU of the
    anchor + IoU of the prediction, both with the GT). Per GT: the ``topk`` nearest centres
    of each level (``argpartition``), mean + sample std of the candidates' metric, centre
    inside the GT; an anchor claimed twice goes to the higher metric, then the lower GT."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    bounds = np.concatenate([[0], np.cumsum(num_anchors_per_level)])
    best = np.full(len(anchors), -np.inf)
    matched = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    for g, box in enumerate(gt_boxes):
        dx, dy = cx - (box[0] + box[2]) / 2, cy - (box[1] + box[3]) / 2
        squared = dx * dx + dy * dy
        parts = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            k = min(topk, end - start)
            if k == end - start:
                parts.append(np.arange(start, end))
            elif k > 0:
                parts.append(start + np.argpartition(squared[start:end], k - 1)[:k])
        candidates = np.concatenate(parts)
        metric = _iou_one_to_many(box, anchors[candidates])
        if pred_boxes is not None:
            metric = metric + _iou_one_to_many(box, pred_boxes[candidates])
        threshold = metric.mean() + (metric.std(ddof=1) if len(metric) > 1 else 0.0)
        x, y = cx[candidates], cy[candidates]
        margin = np.minimum(np.minimum(x - box[0], y - box[1]), np.minimum(box[2] - x, box[3] - y))
        positive = (metric >= threshold) & (margin > inside_eps)
        chosen, value = candidates[positive], metric[positive]
        wins = value > best[chosen]
        best[chosen[wins]] = value[wins]
        matched[chosen[wins]] = g
    return matched


def max_iou_loop(anchors, gt_boxes, pos_iou_thr=0.5, neg_iou_thr=0.4, match_low_quality=False, min_pos_iou=0.0):
    """RetinaNet's max-IoU: a running best IoU per anchor over the GTs (strict ``>``: the
    lower GT keeps ties), thresholds, then each GT claims its best anchors (all ties) when
    its best IoU is > 0 and >= ``min_pos_iou``; claims are applied in GT order, a later GT
    taking an anchor only with a strictly higher IoU."""
    best = np.zeros(len(anchors))
    best_gt = np.zeros(len(anchors), dtype=np.int64)
    gt_best = np.zeros(len(gt_boxes))
    claims = []
    for g, box in enumerate(gt_boxes):
        iou = _iou_one_to_many(box, anchors)
        better = iou > best
        best[better] = iou[better]
        best_gt[better] = g
        gt_best[g] = iou.max() if len(iou) else 0.0
        if match_low_quality and gt_best[g] > 0 and gt_best[g] >= min_pos_iou:
            claims.append((g, np.flatnonzero(iou == gt_best[g])))
    matched = np.where(best >= pos_iou_thr, best_gt, np.where(best < neg_iou_thr, BACKGROUND, IGNORE))
    claim_iou = np.full(len(anchors), -np.inf)
    for g, index in claims:
        wins = gt_best[g] > claim_iou[index]
        claim_iou[index[wins]] = gt_best[g]
        matched[index[wins]] = g
    return matched


def fcos_loop(points, num_points_per_level, gt_boxes, center_radius=1.5, pseudo_iou_threshold=None, inside_eps=0.0):
    """FCOS: per GT, points strictly inside, in their level's regression range and (with
    ``center_radius``) within ``radius * stride`` of the GT centre; a point goes to its
    candidate GT of smallest area (lower GT on ties). ``pseudo_iou_threshold``: the
    Pseudo-IoU rule instead (no centre region; keep a point when the Pseudo-IoU with its GT
    is > T)."""
    counts = np.asarray(num_points_per_level)
    stride = np.repeat(STRIDES[: len(counts)], counts).astype(np.float64)
    lo = np.repeat([r[0] for r in REGRESS_RANGES[: len(counts)]], counts)
    hi = np.repeat([r[1] for r in REGRESS_RANGES[: len(counts)]], counts)
    x, y = points[:, 0], points[:, 1]
    best_area = np.full(len(points), np.inf)
    matched = np.full(len(points), BACKGROUND, dtype=np.int64)
    for g, (x1, y1, x2, y2) in enumerate(gt_boxes):
        left, top, right, bottom = x - x1, y - y1, x2 - x, y2 - y
        smallest = np.minimum(np.minimum(left, top), np.minimum(right, bottom))
        largest = np.maximum(np.maximum(left, top), np.maximum(right, bottom))
        candidate = (smallest > inside_eps) & (largest >= lo) & (largest <= hi)
        if center_radius is not None and pseudo_iou_threshold is None:
            reach = 2 * center_radius * stride
            candidate &= (np.abs(left - right) < reach) & (np.abs(top - bottom) < reach)
        area = (x2 - x1) * (y2 - y1)
        wins = candidate & (area < best_area)
        best_area[wins] = area
        matched[wins] = g
    if pseudo_iou_threshold is not None:
        positive = np.flatnonzero(matched >= 0)
        box = gt_boxes[matched[positive]]
        w, h = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
        dx = np.abs(x[positive] - (box[:, 0] + box[:, 2]) / 2)
        dy = np.abs(y[positive] - (box[:, 1] + box[:, 3]) / 2)
        overlap = np.clip(1 - dx / w, 0, None) * np.clip(1 - dy / h, 0, None)
        value = overlap / (2 - overlap)
        matched[positive[value <= pseudo_iou_threshold]] = BACKGROUND
    return matched
