"""Benchmark of the loss step (specs/losses.md §7): reference vs torch CPU (vs CUDA when present).

Scenes: an 800 x 1333 input with ATSS anchors on strides 8..128 (A = 22,300), K = 80
classes, G in {5, 20, 100, 500} GTs per image, batch 1 and 16; about 10 positives per GT.
The reference runs image by image (``loss_sums`` per image, ``reduce_loss_sums`` over the
batch); the twin runs ``detection_losses_batched`` once. Under ``--benchmark-disable``
only the smallest case runs, as a smoke test.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.loss_step import detection_losses_batched  # noqa: E402
from reference.anchors import multi_level_anchors  # noqa: E402
from reference.losses import loss_sums, reduce_loss_sums  # noqa: E402

IMAGE_SIZE = (800, 1333)
NUM_CLASSES = 80
GT_COUNTS = (5, 20, 100, 500)
BATCH_SIZES = (1, 16)
POSITIVES_PER_GT = 10
IMPLEMENTATIONS = [
    "reference",
    "torch_cpu",
    pytest.param("torch_cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]),
]


def make_scene(num_gts, batch, seed=0):
    """Anchors, GTs, a synthetic assignment (POSITIVES_PER_GT anchors per GT) and head outputs."""
    rng = np.random.default_rng(seed)
    anchors, _ = multi_level_anchors(IMAGE_SIZE, (8, 16, 32, 64, 128))
    num_anchors = len(anchors)
    height, width = IMAGE_SIZE
    images = []
    for _ in range(batch):
        corner = rng.uniform(0, [width - 40, height - 40], size=(num_gts, 2))
        gts = np.concatenate([corner, corner + rng.uniform(8, 400, size=(num_gts, 2))], axis=1)
        gts[:, 2] = np.minimum(gts[:, 2], width)
        gts[:, 3] = np.minimum(gts[:, 3], height)
        matched = np.full(num_anchors, -1, dtype=np.int64)
        chosen = rng.choice(num_anchors, size=min(num_anchors, num_gts * POSITIVES_PER_GT), replace=False)
        matched[chosen] = rng.integers(0, num_gts, size=len(chosen))
        jitter = rng.normal(0, 2.0, size=(num_anchors, 4))
        pred = anchors + jitter
        pred[:, 2:] = np.maximum(pred[:, 2:], pred[:, :2])
        images.append(
            dict(
                cls_logits=rng.normal(-4.0, 1.0, size=(num_anchors, NUM_CLASSES)),
                pred_boxes=pred,
                quality_logits=rng.normal(size=num_anchors),
                centers=(anchors[:, :2] + anchors[:, 2:]) / 2,
                matched_gt=matched,
                gt_boxes=gts,
                gt_labels=rng.integers(0, NUM_CLASSES, size=num_gts),
            )
        )
    return images


def to_batch(images, device):
    stack = lambda key, dtype=torch.float32: torch.stack([torch.as_tensor(i[key], dtype=dtype) for i in images]).to(device)  # noqa: E731
    return dict(
        cls_logits=stack("cls_logits"),
        pred_boxes=stack("pred_boxes"),
        quality_logits=stack("quality_logits"),
        centers=torch.as_tensor(images[0]["centers"], dtype=torch.float32, device=device),
        matched_gt=stack("matched_gt", torch.int64),
        gt_boxes=stack("gt_boxes"),
        gt_labels=stack("gt_labels", torch.int64),
    )


def reference_step(images):
    return reduce_loss_sums([loss_sums(**image, cls_loss="qfl", box_loss="giou", quality="iou") for image in images])


@pytest.mark.parametrize("batch", BATCH_SIZES, ids=lambda b: f"B{b}")
@pytest.mark.parametrize("num_gts", GT_COUNTS, ids=lambda g: f"G{g}")
@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_bench_loss_step(benchmark, request, implementation, num_gts, batch):
    if request.config.getoption("benchmark_disable") and (num_gts, batch) != (GT_COUNTS[0], BATCH_SIZES[0]):
        pytest.skip("benchmarks disabled: only the smallest case runs, as a smoke test")
    benchmark.group = f"loss step G={num_gts} B={batch}"
    images = make_scene(num_gts, batch)
    if implementation == "reference":
        terms = benchmark.pedantic(reference_step, args=(images,), rounds=1 if batch > 1 else 3, iterations=1)
        values = list(terms.values())
    else:
        device = "cuda" if implementation == "torch_cuda" else "cpu"
        inputs = to_batch(images, device)

        def step():
            terms = detection_losses_batched(**inputs, cls_loss="qfl", box_loss="giou", quality="iou")
            if device == "cuda":
                torch.cuda.synchronize()
            return terms

        terms = benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
        values = [float(v) for v in terms.values()]
    assert set(terms) == {"loss_cls", "loss_box", "loss_quality"}
    assert all(np.isfinite(v) for v in values)
