"""Post-processing of dense head outputs into detections (specs/postprocess.md).

Twin of ``reference/postprocess.py``. Every ordering is by (score descending, index
ascending) using stable sorts; NMS is ``torchvision.ops.batched_nms`` fed with rank
scores so that its visiting order is exactly that order, ties included (§5).
"""
from dataclasses import dataclass

import torch
import torchvision

from detector.validation import as_boxes, as_values, check_level_counts

SCORE_THRESHOLD = 0.05
PRE_NMS_TOP_K = 1000
NMS_THRESHOLD = 0.6
MAX_DETECTIONS = 100
SCORE_MODES = ("sqrt", "product", "cls")


@dataclass(frozen=True)
class Detections:
    """Detections of one image (specs/postprocess.md §1).

    Attributes:
        boxes: (D, 4) xyxy.
        scores: (D,) in [0, 1], descending.
        labels: (D,) int64 classes in 0..K-1.
        anchor_index: (D,) int64, the anchor/point each detection comes from.
    """

    boxes: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor
    anchor_index: torch.Tensor


def sigmoid(logits):
    """Logistic function, elementwise (specs/postprocess.md §2)."""
    logits = torch.as_tensor(logits)
    return torch.sigmoid(as_values(logits, "logits", ndim=logits.ndim))


def final_score(cls_scores, quality, score_mode="sqrt"):
    """Final detection score of every (anchor, class) pair (specs/postprocess.md §4): (A, K)."""
    if score_mode == "cls":
        return cls_scores.clone()
    product = cls_scores * quality[..., None]
    return torch.sqrt(product) if score_mode == "sqrt" else product


def select_candidates(cls_scores, final_scores, num_per_level, score_threshold=SCORE_THRESHOLD, top_k=PRE_NMS_TOP_K):
    """Pre-NMS candidates: class score threshold, then top-k per level (specs/postprocess.md §3).

    Args:
        cls_scores: (A, K) class probabilities (threshold is strict ``>``).
        final_scores: (A, K) ranking scores.
        num_per_level: L ints summing to A.
        score_threshold: threshold on the class probability.
        top_k: at most this many per level (ties: lower flat index first).

    Returns:
        anchor_index: (N,) int64, labels: (N,) int64; level by level, in rank order.
    """
    num_anchors, num_classes = cls_scores.shape
    counts = check_level_counts(num_per_level, num_anchors, "num_per_level")
    if top_k < 0:
        raise ValueError(f"top_k: expected a count >= 0, got {top_k!r}")
    anchors, labels = [], []
    start = 0
    for count in counts:  # at most 5 levels
        level_cls = cls_scores[start : start + count].reshape(-1)
        level_final = final_scores[start : start + count].reshape(-1)
        flat = torch.nonzero(level_cls > score_threshold).flatten()
        order = _rank(level_final[flat], flat)[:top_k]
        chosen = flat[order]
        anchors.append(start + torch.div(chosen, num_classes, rounding_mode="floor"))
        labels.append(chosen % num_classes)
        start += count
    if not anchors:
        empty = torch.zeros(0, dtype=torch.int64, device=cls_scores.device)
        return empty, empty.clone()
    return torch.cat(anchors).long(), torch.cat(labels).long()


def nms(boxes, scores, labels, iou_threshold=NMS_THRESHOLD):
    """Class-aware greedy NMS (specs/postprocess.md §5) via ``torchvision.ops.batched_nms``.

    Args:
        boxes: (N, 4) xyxy.
        scores: (N,) finite.
        labels: (N,) integer classes.
        iou_threshold: suppress when IoU > threshold.

    Returns:
        (D,) int64 kept indices in (score descending, index ascending) order.
    """
    boxes = as_boxes(boxes, "boxes")
    scores = as_values(scores, "scores", ndim=1)
    labels = torch.as_tensor(labels, device=boxes.device)
    if len(scores) != len(boxes) or tuple(labels.shape) != (len(boxes),):
        raise ValueError(f"scores, labels: expected {len(boxes)} values each to pair with boxes")
    if len(boxes) == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    order = _rank(scores, torch.arange(len(boxes), device=boxes.device))
    # rank scores: distinct, so torchvision's unstable sort visits boxes in our order
    rank_scores = torch.empty(len(boxes), dtype=boxes.dtype, device=boxes.device)
    rank_scores[order] = torch.arange(len(boxes), 0, -1, dtype=boxes.dtype, device=boxes.device)
    # batched_nms offsets each class by (max coordinate + 1): valid only for coordinates >= 0
    shifted = boxes - boxes.min()
    return torchvision.ops.batched_nms(shifted, rank_scores, labels.long(), float(iou_threshold))


def clip_boxes(boxes, image_size):
    """Clip boxes to the image: x to [0, W], y to [0, H] (specs/postprocess.md §6)."""
    boxes = as_boxes(boxes, "boxes")
    height, width = image_size
    x = boxes[:, 0::2].clamp(min=0.0, max=float(width))
    y = boxes[:, 1::2].clamp(min=0.0, max=float(height))
    return torch.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], dim=1)


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
        cls_logits: (A, K). box_regression: (A, 4) raw outputs, or boxes when ``decode`` is None.
        quality_logits: (A,) or None (then ``score_mode`` must be "cls").
        num_per_level: L ints summing to A.
        decode: None or ``decode(anchor_index (N,), regression (N, 4)) -> (N, 4)`` boxes.
        image_size: (H, W) to clip to, or None.
        score_mode, score_threshold, pre_nms_top_k, nms_threshold, max_detections: see
            ``reference.postprocess.postprocess`` and the spec.

    Returns:
        :class:`Detections` sorted by (score descending, candidate order ascending).
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
        quality = torch.ones(num_anchors, dtype=cls_logits.dtype, device=cls_logits.device)
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


def postprocess_batched(cls_logits, box_regression, quality_logits, num_per_level, decode=None, image_sizes=None, **options):
    """:func:`postprocess` for each image of a batch (no reference twin).

    Args:
        cls_logits: (B, A, K). box_regression: (B, A, 4). quality_logits: (B, A) or None.
        num_per_level: L ints summing to A (shared by the batch).
        decode: None or ``decode(image, anchor_index, regression) -> boxes``.
        image_sizes: None or B pairs (H, W).
        options: the keyword options of :func:`postprocess`.

    Returns:
        list of B :class:`Detections`.
    """
    detections = []
    for b in range(len(cls_logits)):  # NMS output sizes differ per image
        image_decode = None if decode is None else (lambda index, regression, b=b: decode(b, index, regression))
        detections.append(
            postprocess(
                cls_logits[b],
                box_regression[b],
                None if quality_logits is None else quality_logits[b],
                num_per_level,
                image_decode,
                None if image_sizes is None else image_sizes[b],
                **options,
            )
        )
    return detections


# ---------------------------------------------------------------------------------------
# helpers


def _rank(scores, index):
    """Order of ``scores`` by (score descending, ``index`` ascending), with stable sorts."""
    by_index = torch.sort(index, stable=True).indices
    by_score = torch.sort(scores[by_index], descending=True, stable=True).indices
    return by_index[by_score]
