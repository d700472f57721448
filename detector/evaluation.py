"""COCO box metrics with pycocotools (specs/data.md §5)."""
import contextlib
import io
import math

import numpy as np

from detector.files import write_json_atomically

#: Returned metric names, in the order of ``COCOeval.stats[:6]``.
METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")


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
    written as ``null``."""
    clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    return write_json_atomically(clean, path, indent=2, sort_keys=True)


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
