"""Box metrics: COCO AP with pycocotools (specs/data.md §5) and the Pascal VOC mAP
(specs/data.md §6.5), both from the same per-image detections."""
import contextlib
import io
import json
import math

import numpy as np

from detector.files import write_json_atomically

#: Returned metric names, in the order of ``COCOeval.stats[:6]``.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: ``data.metric`` choices: COCO AP only; or the VOC mAP at IoU 0.5, 11-point (VOC2007) or
#: area under the curve (VOC2010 and later), reported as ``mAP`` next to the COCO metrics.
METRICS = ("coco", "voc07", "voc_area")
#: Every scalar metric a run can report (``metrics.json``; a study may compare any of them).
SCALAR_METRICS = ("mAP", *METRIC_NAMES)
#: ``voc_evaluate`` modes: the VOC2007 11-point interpolated AP, or the area under the
#: precision envelope.
VOC_AP_MODES = ("11points", "area")
#: The VOC AP mode of each VOC metric of ``METRICS``.
VOC_METRIC_MODES = {"voc07": "11points", "voc_area": "area"}
#: Detections whose IoU is computed in one block, to bound memory (block x GTs per image).
_IOU_BLOCK = 65536


def coco_evaluate(coco_gt, detections, category_ids=None, *, verbose=False):
    """COCO bbox AP of ``detections`` against ``coco_gt``.

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` object or the path of a COCO annotation file.
        detections: list of dicts, one per image (images without an entry have no
            detections): ``image_id`` (int, an image of ``coco_gt``), ``boxes`` (D, 4) xyxy
            in original-image pixels, ``scores`` (D,), ``labels`` (D,) ints in 0..K-1.
            Arrays may be NumPy arrays, torch tensors or lists.
        category_ids: list of K COCO category ids with ``category_ids[label]`` the id of
            ``label``; default: the ascending category ids of ``coco_gt`` (the
            ``CocoDetection`` mapping).
        verbose: print pycocotools' progress and the standard 12-line summary table.

    Returns:
        dict ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` of floats in [0, 1]; NaN for a
        metric whose area range has no ground truth (pycocotools reports -1 there). With no
        detections at all every defined metric is 0.
    """
    with _maybe_quiet(verbose):
        coco_gt = _as_coco(coco_gt)
        if category_ids is None:
            category_ids = sorted(coco_gt.getCatIds())
        results = detections_to_coco_results(detections, category_ids, set(coco_gt.getImgIds()))
        coco_dt = coco_gt.loadRes(results) if results else _empty_results(coco_gt)
        stats = _run_cocoeval(coco_gt, coco_dt)
    return {name: float(value) if value >= 0 else math.nan for name, value in zip(METRIC_NAMES, stats)}


def evaluate_metrics(coco_gt, detections, category_ids=None, *, metric="coco", verbose=False):
    """The metrics of ``data.metric`` (one of ``METRICS``) for ``detections``.

    ``"coco"``: ``coco_evaluate``'s dict. ``"voc07"`` / ``"voc_area"``: ``{"mAP", AP, AP50,
    AP75, APs, APm, APl, "per_class_AP"}``: ``mAP`` of ``voc_evaluate`` (11-point or area
    mode, IoU 0.5) first, then the COCO metrics (computed as well, so that runs stay
    comparable), then ``per_class_AP`` = {category name: AP or NaN}. Arguments as
    ``coco_evaluate``; the annotation file is read once.
    """
    if metric not in METRICS:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    with _maybe_quiet(verbose):
        coco_gt = _as_coco(coco_gt)
    metrics = coco_evaluate(coco_gt, detections, category_ids, verbose=verbose)
    if metric == "coco":
        return metrics
    voc = voc_evaluate(coco_gt, detections, category_ids, mode=VOC_METRIC_MODES[metric])
    return {"mAP": voc["mAP"], **metrics, "per_class_AP": voc["per_class_AP"]}


def voc_evaluate(coco_gt, detections, category_ids=None, *, iou_threshold=0.5, mode="11points"):
    """Pascal VOC mean average precision of ``detections`` (specs/data.md §6.5).

    Args:
        coco_gt: a ``pycocotools.coco.COCO`` object, a COCO-format dict, or the path of a
            COCO annotation file. A GT with a truthy ``difficult`` or ``iscrowd`` field is
            *difficult*: not counted in recall, and a detection whose best GT it is counts
            neither as TP nor as FP. Boxes are ``[x, y, w, h]``, continuous (``x2 = x + w``).
        detections: as ``coco_evaluate``: one dict per image, ``image_id``, ``boxes`` (D, 4)
            continuous xyxy in original-image pixels, ``scores`` (D,), ``labels`` (D,) in 0..K-1.
        category_ids: K category ids, ``category_ids[label]`` the id of ``label``; default:
            the ascending category ids of ``coco_gt``.
        iou_threshold: a detection hits a GT when IoU >= this, in (0, 1].
        mode: ``"11points"`` (VOC2007: mean over t = 0, 0.1, ..., 1 of the largest precision
            at recall >= t, 0 where there is none) or ``"area"`` (VOC2010+: area under the
            precision envelope, a step function of recall).

    Per class, detections are taken by score, descending, **ties in input order** (entry
    order of ``detections``, then row order: a stable sort). Each is compared with every GT
    of its class in its image (IoU of continuous boxes, no ``+1``); with ``j`` the GT of
    largest IoU (the first one on a tie): IoU < threshold -> FP; ``j`` difficult -> ignored;
    ``j`` not yet matched -> TP and ``j`` becomes matched; ``j`` already matched -> FP (the
    devkit's ``VOCevaldet``; another, unmatched GT is not tried). Recall = TP / number of
    non-difficult GTs, precision = TP / (TP + FP), both cumulative.

    Returns:
        ``{"mAP": float, "per_class_AP": {name: float}}``: the per-class AP in [0, 1] keyed
        by category name (``str(id)`` when ``coco_gt`` has no such category) in the order of
        ``category_ids``; a class without non-difficult GT has AP **NaN** and is left out of
        ``mAP`` (NaN when no class has GT). A class with GT and no detection has AP 0.

    Raises:
        ValueError: a bad detections entry (as ``coco_evaluate``), an unknown ``mode`` or an
            ``iou_threshold`` outside (0, 1].
    """
    if mode not in VOC_AP_MODES:
        raise ValueError(f"mode: expected one of {', '.join(VOC_AP_MODES)}, got {mode!r}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold: expected a number in (0, 1], got {iou_threshold!r}")
    dataset = _gt_dataset(coco_gt)
    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset["categories"]}
    if category_ids is None:
        category_ids = sorted(names)
    image_index = {image["id"]: i for i, image in enumerate(dataset["images"])}
    gt_image, gt_category, gt_boxes, gt_difficult = _gt_arrays(dataset, image_index)
    det_image, det_boxes, det_scores, det_labels = _detection_arrays(detections, category_ids, image_index)
    per_class = {}
    for label, category_id in enumerate(category_ids):
        g = gt_category == category_id
        d = det_labels == label
        ap = _class_ap(gt_image[g], gt_boxes[g], gt_difficult[g], det_image[d], det_boxes[d], det_scores[d],
                       iou_threshold, mode)
        per_class[names.get(category_id, str(category_id))] = ap
    defined = [ap for ap in per_class.values() if not math.isnan(ap)]
    return {"mAP": float(np.mean(defined)) if defined else math.nan, "per_class_AP": per_class}


def _gt_dataset(coco_gt):
    """The COCO dict of a ``COCO`` object, a dict or a file path."""
    if isinstance(coco_gt, dict):
        return coco_gt
    if hasattr(coco_gt, "dataset"):
        return coco_gt.dataset
    with open(coco_gt, encoding="utf-8") as f:
        return json.load(f)


def _gt_arrays(dataset, image_index):
    """(G,) image index, (G,) category id, (G, 4) xyxy float64, (G,) bool difficult."""
    annotations = [a for a in dataset.get("annotations", []) if a["image_id"] in image_index]
    images = np.array([image_index[a["image_id"]] for a in annotations], dtype=np.int64)
    categories = np.array([a["category_id"] for a in annotations], dtype=np.int64)
    boxes = np.array([a["bbox"] for a in annotations], dtype=np.float64).reshape(-1, 4).copy()
    boxes[:, 2:] += boxes[:, :2]
    difficult = np.array([bool(a.get("difficult", 0)) or bool(a.get("iscrowd", 0)) for a in annotations], dtype=bool)
    return images, categories, boxes, difficult


def _detection_arrays(detections, category_ids, image_index):
    """All detections concatenated in input order: (D,) image index, (D, 4), (D,), (D,)."""
    images, boxes, scores, labels = [np.zeros(0, np.int64)], [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)]
    for index, det in enumerate(detections):
        where = f"detections[{index}] (image_id {det.get('image_id')!r})"
        b, s, lab = _check_detection(det, where, len(category_ids))
        if det["image_id"] not in image_index:
            raise ValueError(f"{where}: image_id is not an image of the ground truth")
        images.append(np.full(len(b), image_index[det["image_id"]], dtype=np.int64))
        boxes.append(b)
        scores.append(s)
        labels.append(lab)
    return np.concatenate(images), np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)


def _class_ap(gt_image, gt_boxes, gt_difficult, det_image, det_boxes, det_scores, iou_threshold, mode):
    """VOC AP of one class (see ``voc_evaluate``); NaN without non-difficult GT."""
    num_positives = int((~gt_difficult).sum())
    if num_positives == 0:
        return math.nan
    if len(det_scores) == 0:
        return 0.0
    order = np.argsort(-det_scores, kind="stable")
    det_image, det_boxes = det_image[order], det_boxes[order]
    # GTs grouped by image: image i holds gt[start[i] : start[i] + count[i]]
    by_image = np.argsort(gt_image, kind="stable")
    gt_image, gt_boxes, gt_difficult = gt_image[by_image], gt_boxes[by_image], gt_difficult[by_image]
    num_images = int(max(gt_image.max(), det_image.max())) + 1
    count = np.bincount(gt_image, minlength=num_images)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    slots = int(count.max())
    best_iou = np.empty(len(det_image))
    best_gt = np.empty(len(det_image), dtype=np.int64)
    for begin in range(0, len(det_image), _IOU_BLOCK):
        images = det_image[begin:begin + _IOU_BLOCK]
        columns = start[images][:, None] + np.arange(slots)[None, :]       # (B, S) GT indices
        valid = np.arange(slots)[None, :] < count[images][:, None]        # (B, S)
        candidates = gt_boxes[np.where(valid, columns, 0)]                 # (B, S, 4)
        iou = _pairwise_iou(det_boxes[begin:begin + _IOU_BLOCK, None, :], candidates)
        iou = np.where(valid, iou, -1.0)
        j = iou.argmax(axis=1)                                             # first on a tie
        best_iou[begin:begin + len(images)] = iou[np.arange(len(images)), j]
        best_gt[begin:begin + len(images)] = columns[np.arange(len(images)), j]
    hit = best_iou >= iou_threshold
    ignored = hit & gt_difficult[np.where(hit, best_gt, 0)]
    candidate = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(best_gt[candidate], return_index=True)            # the first detection of each GT
    tp = np.zeros(len(det_image), dtype=bool)
    tp[candidate[first]] = True
    keep = ~ignored
    tp = tp[keep]
    true_positives = np.cumsum(tp)
    false_positives = np.cumsum(~tp)
    recall = true_positives / num_positives
    precision = true_positives / np.maximum(true_positives + false_positives, 1)
    return _average_precision(recall, precision, mode)


def _pairwise_iou(a, b):
    """IoU of continuous xyxy boxes (no +1), broadcasting ``a`` (..., 4) against ``b``; 0 for
    an empty union."""
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0.0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0.0, None)
    inter = width * height
    union = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _average_precision(recall, precision, mode):
    """AP of a precision/recall curve (recall non-decreasing), specs/data.md §6.5."""
    if mode == "11points":
        envelope = np.maximum.accumulate(precision[::-1])[::-1]            # max precision at index >= i
        thresholds = np.arange(11) / 10.0                                  # k / 10 exactly rounded
        first = np.searchsorted(recall, thresholds, side="left")          # first index with recall >= t
        reached = first < len(recall)
        values = np.where(reached, envelope[np.minimum(first, len(recall) - 1)], 0.0)
        return float(values.mean())
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def detections_to_coco_results(detections, category_ids, image_ids=None):
    """Per-image xyxy detections -> a flat list of COCO results (bbox [x, y, w, h], w = x2 - x1).

    Raises:
        ValueError: inconsistent shapes, non-finite or inverted boxes, a label outside
            0..K-1, or an ``image_id`` not in ``image_ids`` (when given); names the entry.
    """
    results = []
    for index, det in enumerate(detections):
        where = f"detections[{index}] (image_id {det.get('image_id')!r})"
        boxes, scores, labels = _check_detection(det, where, len(category_ids))
        if image_ids is not None and det["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id is not an image of the ground truth")
        for (x1, y1, x2, y2), score, label in zip(boxes.tolist(), scores.tolist(), labels.tolist()):
            results.append({
                "image_id": int(det["image_id"]), "category_id": int(category_ids[label]),
                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score,
            })
    return results


def write_metrics_json(metrics, path):
    """Write ``metrics`` as JSON atomically (``files.write_json_atomically``); NaN values are
    written as ``null``, also inside nested dicts (``per_class_AP``)."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        return None if isinstance(value, float) and math.isnan(value) else value

    return write_json_atomically(clean(metrics), path, indent=2, sort_keys=True)


def _check_detection(det, where, num_classes):
    """(D, 4) float64 boxes, (D,) float64 scores, (D,) int64 labels of one detections entry."""
    for key in ("image_id", "boxes", "scores", "labels"):
        if key not in det:
            raise ValueError(f"{where}: missing key {key!r}")
    boxes = _to_numpy(det["boxes"]).astype(np.float64)
    boxes = boxes.reshape(0, 4) if boxes.size == 0 else boxes
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{where}: boxes must have shape (D, 4), got {boxes.shape}")
    scores = _to_numpy(det["scores"]).astype(np.float64).reshape(-1)
    labels = _to_numpy(det["labels"]).reshape(-1)
    if not (len(boxes) == len(scores) == len(labels)):
        raise ValueError(f"{where}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels differ in count")
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise ValueError(f"{where}: non-finite box or score")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{where}: a box has x2 < x1 or y2 < y1")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes or not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"{where}: labels must be integers in 0..{num_classes - 1}")
    return boxes, scores, labels.astype(np.int64)


def _to_numpy(values):
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def _as_coco(coco_gt):
    from pycocotools.coco import COCO

    return coco_gt if isinstance(coco_gt, COCO) else COCO(str(coco_gt))


def _empty_results(coco_gt):
    """A results object with no detections (``COCO.loadRes`` cannot take an empty list)."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]),
                     "categories": list(coco_gt.dataset["categories"]), "annotations": []}
    empty.createIndex()
    return empty


def _run_cocoeval(coco_gt, coco_dt):
    """The first 6 entries of ``COCOeval(coco_gt, coco_dt, "bbox").stats`` (-1 = undefined)."""
    from pycocotools.cocoeval import COCOeval

    evaluator = COCOeval(coco_gt, coco_dt, "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats[:6]


@contextlib.contextmanager
def _maybe_quiet(verbose):
    """Silence pycocotools' prints unless ``verbose``."""
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
