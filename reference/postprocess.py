"""Post-processing of dense head outputs into detections (specs/postprocess.md).

Per image: sigmoid, score threshold on the class score, top-k per level, decode, final
score, optional clipping, class-aware greedy NMS, and the best ``max_detections``. Every
ordering is by (score descending, flat index ascending), so equal scores never make the
result depend on a sort's stability.
"""
from dataclasses import dataclass

import numpy as np

from reference.boxes import box_iou
from reference.validation import as_boxes, as_values, check_level_counts

SCORE_THRESHOLD = 0.05
PRE_NMS_TOP_K = 1000
NMS_THRESHOLD = 0.6
MAX_DETECTIONS = 100
SCORE_MODES = ("sqrt", "product", "cls")


@dataclass(frozen=True)
class Detections:
    """Detections of one image (specs/postprocess.md §1).

    Attributes:
        boxes: (D, 4) float64 xyxy.
        scores: (D,) float64 in [0, 1], descending.
        labels: (D,) int64 classes in 0..K-1.
        anchor_index: (D,) int64, the anchor/point each detection comes from.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    anchor_index: np.ndarray


def sigmoid(logits):
    """Stable logistic function, elementwise (specs/postprocess.md §2)."""
    logits = as_values(logits, "logits", ndim=np.ndim(logits))
    e = np.exp(-np.abs(logits))
    return np.where(logits >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def final_score(cls_scores, quality, score_mode="sqrt"):
    """Final detection score of every (anchor, class) pair (specs/postprocess.md §4).

    Args:
        cls_scores: (A, K) class probabilities.
        quality: (A,) quality probabilities (ignored for "cls").
        score_mode: "sqrt", "product" or "cls".

    Returns:
        (A, K) float64 in [0, 1].
    """
    if score_mode == "cls":
        return cls_scores.copy()
    product = cls_scores * quality[:, None]
    return np.sqrt(product) if score_mode == "sqrt" else product


def select_candidates(cls_scores, final_scores, num_per_level, score_threshold=SCORE_THRESHOLD, top_k=PRE_NMS_TOP_K):
    """Pre-NMS candidates: class score threshold, then top-k per level (specs/postprocess.md §3).

    Args:
        cls_scores: (A, K) class probabilities; a pair (a, k) is a candidate when
            ``cls_scores[a, k] > score_threshold`` (strict).
        final_scores: (A, K) the scores used for ranking (specs/postprocess.md §4).
        num_per_level: L ints summing to A.
        score_threshold: threshold on the class probability.
        top_k: at most this many candidates per level, the highest ``final_scores``
            (ties: lower flat index ``a * K + k`` first).

    Returns:
        anchor_index: (N,) int64, labels: (N,) int64; level by level, each level in rank order.
    """
    num_anchors, num_classes = cls_scores.shape
    counts = check_level_counts(num_per_level, num_anchors, "num_per_level")
    if top_k < 0:
        raise ValueError(f"top_k: expected a count >= 0, got {top_k!r}")
    anchors, labels = [], []
    start = 0
    for count in counts:
        level_cls = cls_scores[start : start + count].reshape(-1)
        level_final = final_scores[start : start + count].reshape(-1)
        flat = np.flatnonzero(level_cls > score_threshold)
        order = _rank(level_final[flat], flat)[:top_k]
        chosen = flat[order]
        anchors.append(start + chosen // num_classes)
        labels.append(chosen % num_classes)
        start += count
    return np.concatenate(anchors).astype(np.int64), np.concatenate(labels).astype(np.int64)


def nms(boxes, scores, labels, iou_threshold=NMS_THRESHOLD):
    """Class-aware greedy non-maximum suppression (specs/postprocess.md §5).

    Boxes are visited by (score descending, index ascending); a visited box is kept unless
    a kept box of the same label has IoU > ``iou_threshold`` (strict) with it.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) finite scores.
        labels: (N,) integer classes.
        iou_threshold: suppression threshold.

    Returns:
        (D,) int64 indices of the kept boxes, in visiting order.
    """
    boxes = as_boxes(boxes, "boxes")
    scores = as_values(scores, "scores", ndim=1)
    labels = np.asarray(labels)
    if len(scores) != len(boxes) or labels.shape != (len(boxes),):
        raise ValueError(f"scores, labels: expected {len(boxes)} values each to pair with boxes")
    kept = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    for i in _rank(scores, np.arange(len(boxes))):
        if suppressed[i]:
            continue
        kept.append(int(i))
        overlap = box_iou(boxes[i : i + 1], boxes)[0]
        suppressed |= (labels == labels[i]) & (overlap > iou_threshold)
    return np.asarray(kept, dtype=np.int64)


def clip_boxes(boxes, image_size):
    """Clip boxes to the image: x to [0, W], y to [0, H] (specs/postprocess.md §6).

    Args:
        boxes: (N, 4) xyxy.
        image_size: (H, W).

    Returns:
        (N, 4) float64; a box entirely outside the image becomes a zero-area box on its border.
    """
    boxes = as_boxes(boxes, "boxes")
    height, width = image_size
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, width)
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, height)
    return clipped


def postprocess(
    cls_logits,
    box_regression,
    quality_logits,
    num_per_level,
    decode=None,
    image_size=None,
    score_mode="sqrt",
    score_threshold=SCORE_THRESHOLD,
    pre_nms_top_k=PRE_NMS_TOP_K,
    nms_threshold=NMS_THRESHOLD,
    max_detections=MAX_DETECTIONS,
):
    """Detections of one image from its head outputs (specs/postprocess.md §1-§7).

    Args:
        cls_logits: (A, K) classification logits.
        box_regression: (A, 4) raw regression outputs, or decoded xyxy boxes when ``decode`` is None.
        quality_logits: (A,) centerness / IoU branch logits, or None (then ``score_mode`` must be "cls").
        num_per_level: L ints summing to A.
        decode: None, or a callable ``decode(anchor_index (N,), regression (N, 4)) -> (N, 4)``
            xyxy, e.g. ``lambda i, r: decode_deltas(anchors[i], r)``; it is called on the
            pre-NMS candidates only.
        image_size: (H, W) to clip boxes to before NMS, or None for no clipping.
        score_mode: "sqrt" = ``sqrt(cls * quality)`` (ATSS, Dynamic ATSS), "product" =
            ``cls * quality`` (mmdet, Pseudo-IoU), "cls" = the class probability alone.
        score_threshold: strict threshold on the class probability (before the quality factor).
        pre_nms_top_k: candidates kept per level, ranked by the final score.
        nms_threshold: class-aware NMS IoU threshold (suppress when IoU > threshold).
        max_detections: at most this many detections, the highest scores.

    Returns:
        :class:`Detections`, sorted by (score descending, candidate order ascending).
    """
    if score_mode not in SCORE_MODES:
        raise ValueError(f"score_mode: expected one of {SCORE_MODES}, got {score_mode!r}")
    cls_logits = as_values(cls_logits, "cls_logits", ndim=2)
    num_anchors = len(cls_logits)
    box_regression = as_values(box_regression, "box_regression", ndim=2, width=4)
    if len(box_regression) != num_anchors:
        raise ValueError(f"box_regression: expected {num_anchors} rows to pair with cls_logits, got {len(box_regression)}")
    if quality_logits is None:
        if score_mode != "cls":
            raise ValueError(f"quality_logits: required when score_mode is {score_mode!r}")
        quality = np.ones(num_anchors)
    else:
        quality_logits = as_values(quality_logits, "quality_logits", ndim=1)
        if len(quality_logits) != num_anchors:
            raise ValueError(f"quality_logits: expected {num_anchors} values, got {len(quality_logits)}")
        quality = sigmoid(quality_logits)
    if max_detections < 0:
        raise ValueError(f"max_detections: expected a count >= 0, got {max_detections!r}")

    # 1. scores
    cls_scores = sigmoid(cls_logits)
    final_scores = final_score(cls_scores, quality, score_mode)

    # 2. candidates: threshold on the class score, top-k per level on the final score
    anchor_index, labels = select_candidates(cls_scores, final_scores, num_per_level, score_threshold, pre_nms_top_k)
    scores = final_scores[anchor_index, labels]

    # 3. decode the candidates' boxes and clip them
    if decode is None:
        boxes = as_boxes(box_regression[anchor_index], "box_regression")
    else:
        boxes = as_boxes(decode(anchor_index, box_regression[anchor_index]), "decoded boxes")
    if image_size is not None:
        boxes = clip_boxes(boxes, image_size)

    # 4. class-aware NMS, then the best max_detections (nms returns them best first)
    keep = nms(boxes, scores, labels, nms_threshold)[:max_detections]
    return Detections(boxes=boxes[keep], scores=scores[keep], labels=labels[keep], anchor_index=anchor_index[keep])


# ---------------------------------------------------------------------------------------
# helpers


def _rank(scores, index):
    """Order of ``scores`` by (score descending, ``index`` ascending)."""
    return np.lexsort((index, -scores))
