"""Benchmarks of the anchor-based assigners (max-IoU, ATSS, Dynamic ATSS).

COCO-like scenes: 800 x 1333 input, strides 8..128 (about 22k anchors), G GTs per image
with log-uniform sizes, batch 1 and 16. Reference (NumPy, batch 1 only: it is a per-image
loop) vs torch CPU (vs torch CUDA when present). ``extra_info["images"]`` holds B: divide
the reported times by it for per-image numbers. Dynamic ATSS gets predicted boxes decoded
once, outside the timed call, from small random deltas (as a training step decodes them).

Under ``--benchmark-disable`` (the default test run) only G = 5, batch 1 runs, as a smoke.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.assign.atss import assign_atss_batched  # noqa: E402
from detector.assign.dynamic_atss import assign_dynamic_atss_batched  # noqa: E402
from detector.assign.max_iou import assign_max_iou_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.coders import decode_deltas  # noqa: E402
from reference.assign.atss import assign_atss  # noqa: E402
from reference.assign.dynamic_atss import assign_dynamic_atss  # noqa: E402
from reference.assign.max_iou import assign_max_iou  # noqa: E402

IMAGE_SIZE = (800, 1333)
ALGORITHMS = ("max_iou", "atss", "dynamic_atss")
IMPLEMENTATIONS = [
    "reference",
    "torch-cpu",
    pytest.param("torch-cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


def coco_like_gts(rng, count, size=IMAGE_SIZE):
    """(count, 4) boxes: log-uniform sides 8..600 px, aspect 1:3..3:1, inside the image."""
    height, width = size
    side = np.exp(rng.uniform(np.log(8), np.log(600), count))
    aspect = np.exp(rng.uniform(-np.log(3), np.log(3), count))
    w = np.minimum(side * np.sqrt(aspect), width)
    h = np.minimum(side / np.sqrt(aspect), height)
    x1 = rng.uniform(0, 1, count) * (width - w)
    y1 = rng.uniform(0, 1, count) * (height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def _inputs(num_gts, batch, seed=0):
    rng = np.random.default_rng(seed)
    anchors, counts = multi_level_anchors(IMAGE_SIZE)
    gts = np.stack([coco_like_gts(rng, num_gts) for _ in range(batch)])
    deltas = rng.normal(0, 0.3, (batch, len(anchors), 4))
    pred_boxes = np.stack([decode_deltas(anchors, image_deltas) for image_deltas in deltas])
    return anchors, counts, gts, pred_boxes


def _reference_call(algorithm, anchors, counts, gts, pred_boxes):
    if algorithm == "max_iou":
        return lambda: assign_max_iou(anchors, gts[0], match_low_quality=True)
    if algorithm == "atss":
        return lambda: assign_atss(anchors, counts, gts[0])
    return lambda: assign_dynamic_atss(anchors, counts, gts[0], pred_boxes[0])


def _torch_call(algorithm, anchors, counts, gts, pred_boxes, device):
    anchors = torch.tensor(anchors, dtype=torch.float32, device=device)
    gts = torch.tensor(gts, dtype=torch.float32, device=device)
    pred_boxes = torch.tensor(pred_boxes, dtype=torch.float32, device=device)
    valid = torch.ones(gts.shape[:2], dtype=torch.bool, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        if algorithm == "max_iou":
            result = assign_max_iou_batched(anchors, gts, valid, match_low_quality=True)
        elif algorithm == "atss":
            result = assign_atss_batched(anchors, counts, gts, valid)
        else:
            result = assign_dynamic_atss_batched(anchors, counts, gts, valid, pred_boxes)
        sync()
        return result

    return run


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("num_gts", [5, 20, 100, 500])
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_assigner_speed(benchmark, request, algorithm, implementation, num_gts, batch):
    smoke = request.config.getoption("benchmark_disable")
    if smoke and (num_gts != 5 or batch != 1):
        pytest.skip("smoke run (--benchmark-disable): G = 5, batch 1 only")
    if implementation == "reference" and batch != 1:
        pytest.skip("the reference is a per-image loop: batch 1 only")
    anchors, counts, gts, pred_boxes = _inputs(num_gts, batch)
    if implementation == "reference":
        call = _reference_call(algorithm, anchors, counts, gts, pred_boxes)
    else:
        call = _torch_call(algorithm, anchors, counts, gts, pred_boxes, implementation.split("-")[1])
    benchmark.extra_info["images"] = batch
    rounds = 3 if implementation == "reference" and num_gts >= 100 else 10
    result = benchmark.pedantic(call, rounds=rounds, warmup_rounds=1)
    matched = result.matched_gt
    assert tuple(matched.shape)[-1] == len(anchors)
    assert (np.asarray(matched.cpu() if hasattr(matched, "cpu") else matched) >= 0).any()
