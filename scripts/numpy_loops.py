"""Plain NumPy loops over GTs: the "no framework" baseline rows of ``scripts/benchmark.py``.

What a careful engineer writes without torch: one vectorised pass over the anchors or
points per GT, a running best per anchor, nothing cached between calls (anchor centres and
level boundaries are recomputed on every call, as the torch assigners are given only
tensors). They are not the project's reference (``reference/`` is written to be read, step
by step, and is slower); they exist so that the torch assigners' per-call cost has a fair
yardstick. Each returns the (A,) matched GT index (BACKGROUND = -1, IGNORE = -2) and must
equal the reference's on a scene without exact ties between GTs
(``tests/benchmarks/test_numpy_loops.py`` checks it).

The prediction-aware loops (``tal_loop``, ``simota_loop``, ``dsl_loop``) also read the
decoded predicted boxes (A, 4) and the class probabilities (A, K) with the GT labels (G,).
SimOTA's and DSL's conflict step is global (an anchor taken by several GTs goes to its
lowest-cost GT among all GTs), so those loops keep a running minimum per anchor and end
with one vectorised step. Like the others, they compute only ``matched_gt``: the soft
targets the assigners also return are left out, which makes them slightly faster than a
full assignment would be.

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


def _cheapest(cost, k):
    """Positions of the ``k`` smallest costs (ties: the lower position), in no set order:
    one ``np.partition`` for the k-th value, then every cost below it and the first ones
    equal to it."""
    if k >= len(cost):
        return np.arange(len(cost))
    kth = np.partition(cost, k - 1)[k - 1]
    below = np.flatnonzero(cost < kth)
    return np.concatenate([below, np.flatnonzero(cost == kth)[: k - len(below)]])


def _finite_rows(boxes):
    """(N, 4) -> the boxes with non-finite rows zeroed, and the (N,) mask of finite rows."""
    finite = np.isfinite(boxes).all(axis=1)
    return np.where(finite[:, None], boxes, 0.0), finite


def tal_loop(anchors, gt_boxes, gt_labels, pred_scores, pred_boxes, topk=13, alpha=1.0, beta=6.0, inside_eps=0.01):
    """TAL (TOOD). Per GT: the anchors whose centre is inside it by more than ``inside_eps``,
    their alignment ``s ** alpha * u ** beta`` (``s`` the score of the GT's class, ``u`` the IoU
    of the anchor's prediction with the GT), the ``topk`` largest positive ones (ties: the
    lower anchor); an anchor that is a candidate of several GTs goes to the higher IoU, then
    the lower GT (a running best, strict ``>``). The soft targets (a normalisation over each
    GT's final positives, after the loop) are not computed: this baseline does less than the
    assigner."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    safe, finite = _finite_rows(pred_boxes)
    best_iou = np.full(len(anchors), -1.0)
    matched = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    for g, box in enumerate(gt_boxes):
        margin = np.minimum(np.minimum(cx - box[0], cy - box[1]), np.minimum(box[2] - cx, box[3] - cy))
        inside = np.flatnonzero(margin > inside_eps)
        iou = np.where(finite[inside], _iou_one_to_many(box, safe[inside]), 0.0)
        metric = pred_scores[inside, gt_labels[g]] ** alpha * iou**beta
        eligible = metric > 0
        inside, iou, metric = inside[eligible], iou[eligible], metric[eligible]
        pick = _cheapest(-metric, topk)  # the topk largest alignments, ties to the lower anchor
        chosen, chosen_iou = inside[pick], iou[pick]
        wins = chosen_iou > best_iou[chosen]
        best_iou[chosen[wins]] = chosen_iou[wins]
        matched[chosen[wins]] = g
    return matched


def simota_loop(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, center_radius=2.5, candidate_topk=10, iou_weight=3.0, cls_weight=1.0):
    """SimOTA (YOLOX). A first loop over GTs collects the candidates (anchor centre inside
    some GT box or inside the square of half-side ``center_radius * stride`` around some GT
    centre; stride = anchor width / 8); each candidate's total ``sum_j log(1 - p_j)`` once;
    a second loop over GTs costs every candidate (BCE of the scores against the GT's one-hot
    class + ``iou_weight * -log(IoU + 1e-8)`` + 1e5 outside the GT's box and centre square),
    takes the GT's dynamic k (``max(1, int(sum of its 10 largest IoUs))``) cheapest (ties:
    the lower anchor), counts each candidate's selections and keeps its lowest cost over all
    GTs (a running minimum, strict ``<``: ties keep the lower GT).

    The conflict step is global, not per GT: an anchor selected by several GTs goes to its
    lowest-cost GT among **all** GTs, which is known only after the loop; it runs vectorised
    on the running minimum after the loop."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    radius = center_radius * ((anchors[:, 2] - anchors[:, 0]) / 8)
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    is_candidate = np.zeros(len(anchors), dtype=bool)
    for box, (gx, gy) in zip(gt_boxes, centers):
        in_box = np.minimum(np.minimum(cx - box[0], cy - box[1]), np.minimum(box[2] - cx, box[3] - cy)) > 0
        in_center = np.minimum(np.minimum(cx - (gx - radius), cy - (gy - radius)), np.minimum((gx + radius) - cx, (gy + radius) - cy)) > 0
        is_candidate |= in_box | in_center
    candidates = np.flatnonzero(is_candidate)
    matched = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    if len(candidates) == 0:
        return matched
    x, y, r = cx[candidates], cy[candidates], radius[candidates]
    scores = pred_scores[candidates]
    safe, finite = _finite_rows(pred_boxes[candidates])
    with np.errstate(divide="ignore"):
        log_neg = np.maximum(np.log1p(-scores), -100.0)
    total = log_neg.sum(axis=1)
    best_cost = np.full(len(candidates), np.inf)
    best_gt = np.zeros(len(candidates), dtype=np.int64)
    count = np.zeros(len(candidates), dtype=np.int64)
    chooser = np.full(len(candidates), BACKGROUND, dtype=np.int64)
    q = min(candidate_topk, len(candidates))
    for g, (box, (gx, gy)) in enumerate(zip(gt_boxes, centers)):
        iou = np.where(finite, _iou_one_to_many(box, safe), 0.0)
        c = gt_labels[g]
        with np.errstate(divide="ignore"):
            log_pos = np.maximum(np.log(scores[:, c]), -100.0)
        cls_cost = -((total - log_neg[:, c]) + log_pos)
        in_box = np.minimum(np.minimum(x - box[0], y - box[1]), np.minimum(box[2] - x, box[3] - y)) > 0
        in_center = np.minimum(np.minimum(x - (gx - r), y - (gy - r)), np.minimum((gx + r) - x, (gy + r) - y)) > 0
        cost = cls_weight * cls_cost + iou_weight * -np.log(iou + 1e-8) + np.where(in_box & in_center, 0.0, 1e5)
        _take_dynamic_k(g, cost, iou, q, count, chooser, best_cost, best_gt)
    matched[candidates] = np.where(count > 1, best_gt, chooser)  # the global conflict step
    return matched


def _take_dynamic_k(g, cost, iou, q, count, chooser, best_cost, best_gt):
    """GT ``g``'s dynamic-k step, shared by ``simota_loop`` and ``dsl_loop``: its
    ``max(1, int(sum of its q largest IoUs))`` cheapest candidates are counted and remember
    ``g`` (the last chooser), and each candidate's running lowest cost (strict ``<``: the
    lower GT keeps ties) is updated in place."""
    k = max(1, int(np.partition(iou, len(iou) - q)[len(iou) - q :].sum()))
    pick = _cheapest(cost, k)
    count[pick] += 1
    chooser[pick] = g
    lower = cost < best_cost
    best_cost[lower] = cost[lower]
    best_gt[lower] = g


def dsl_loop(anchors, gt_boxes, gt_labels, pred_boxes, pred_scores, topk=13, soft_center_radius=3.0, iou_weight=3.0):
    """DSL (RTMDet's dynamic soft-label assigner). A first loop over GTs collects the valid
    priors (anchor centre strictly inside some GT); each prior's negative classification
    cost ``sum_j BCE(p_j, 0) * p_j ** 2`` once; a second loop over GTs costs every valid prior
    (soft-label BCE of the GT's class scaled by ``(IoU - p) ** 2`` + ``iou_weight *
    -log(IoU + 1e-7)`` + ``10 ** (distance / stride - soft_center_radius)``), takes the GT's
    dynamic k (``max(1, int(sum of its 13 largest IoUs))``) cheapest (ties: the lower
    anchor), counts each prior's selections and keeps its lowest cost over all GTs (a running
    minimum, strict ``<``).

    The conflict step is global, as in ``simota_loop``: a prior selected by several GTs goes
    to its lowest-cost GT among all GTs, vectorised after the loop."""
    cx, cy = (anchors[:, 0] + anchors[:, 2]) / 2, (anchors[:, 1] + anchors[:, 3]) / 2
    valid = np.zeros(len(anchors), dtype=bool)
    for box in gt_boxes:
        valid |= np.minimum(np.minimum(cx - box[0], cy - box[1]), np.minimum(box[2] - cx, box[3] - cy)) > 0
    priors = np.flatnonzero(valid)
    matched = np.full(len(anchors), BACKGROUND, dtype=np.int64)
    if len(priors) == 0:
        return matched
    x, y, stride = cx[priors], cy[priors], (anchors[priors, 2] - anchors[priors, 0]) / 8
    scores = pred_scores[priors]
    safe, finite = _finite_rows(pred_boxes[priors])
    with np.errstate(divide="ignore"):
        negative = -np.maximum(np.log(1.0 - scores), -100.0) * (scores * scores)
    negative_total = negative.sum(axis=1)
    best_cost = np.full(len(priors), np.inf)
    best_gt = np.zeros(len(priors), dtype=np.int64)
    count = np.zeros(len(priors), dtype=np.int64)
    chooser = np.full(len(priors), BACKGROUND, dtype=np.int64)
    q = min(topk, len(priors))
    for g, box in enumerate(gt_boxes):
        iou = np.where(finite, _iou_one_to_many(box, safe), 0.0)
        c = gt_labels[g]
        p = scores[:, c]
        with np.errstate(divide="ignore"):
            bce = (iou - 1.0) * np.maximum(np.log(1.0 - p), -100.0) - iou * np.maximum(np.log(p), -100.0)
        cls_cost = (negative_total - negative[:, c]) + bce * (iou - p) ** 2
        distance = np.sqrt((x - (box[0] + box[2]) / 2) ** 2 + (y - (box[1] + box[3]) / 2) ** 2) / stride
        cost = cls_cost + -np.log(iou + 1e-7) * iou_weight + np.power(10.0, distance - soft_center_radius)
        _take_dynamic_k(g, cost, iou, q, count, chooser, best_cost, best_gt)
    matched[priors] = np.where(count > 1, best_gt, chooser)  # the global conflict step
    return matched
