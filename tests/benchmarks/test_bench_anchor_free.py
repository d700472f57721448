"""Benchmarks: anchor-free assigners, reference vs torch CPU (vs CUDA when present).

800 x 1333 image, strides 8..128 (22,300 points), G in {5, 20, 100, 500}, batch 1 and 16.
Targets (specs/anchor_free.md §8): torch CPU <= 3 ms per image at G = 100 and <= 15 ms
at G = 500 on a 2-core CPU. Under ``--benchmark-disable`` only G = 5, batch 1 runs, once,
as a smoke test. The reference runs at batch 1 only (it is a per-image loop over GTs).
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector.assign import anchor_free as DAF  # noqa: E402
from reference.anchors import multi_level_points  # noqa: E402
from reference.assign import anchor_free as RAF  # noqa: E402

NAMES = ["all_inside", "pseudo_iou", "scaled_box", "centerness", "fcos"]
IMAGE_SIZE = (800, 1333)
BACKENDS = ["reference", "torch-cpu"] + (["torch-cuda"] if torch.cuda.is_available() else [])


def coco_like_boxes(count, seed, image_size=IMAGE_SIZE):
    """(count, 4) boxes: log-uniform sizes 8..800 px, aspect ratios 1:3..3:1."""
    rng = np.random.default_rng(seed)
    height, width = image_size
    side = np.exp(rng.uniform(np.log(8), np.log(800), count))
    ratio = np.exp(rng.uniform(-1.1, 1.1, count))
    w, h = np.minimum(side * np.sqrt(ratio), width), np.minimum(side / np.sqrt(ratio), height)
    x1, y1 = rng.uniform(0, width - w), rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize("num_gts", [5, 20, 100, 500])
@pytest.mark.parametrize("name", NAMES)
def test_bench_anchor_free(benchmark, request, name, num_gts, batch, backend):
    quick = request.config.getoption("benchmark_disable")
    if quick and (num_gts != 5 or batch != 1):
        pytest.skip("--benchmark-disable: only the G=5, batch 1 smoke case runs")
    if backend == "reference" and batch != 1:
        pytest.skip("the reference is per image")
    points, _, counts = multi_level_points(IMAGE_SIZE)
    boxes = [coco_like_boxes(num_gts, seed) for seed in range(batch)]
    benchmark.extra_info.update({"points": len(points), "per_image_divisor": batch})
    if backend == "reference":
        result = benchmark(getattr(RAF, f"assign_{name}"), points, counts, boxes[0])
        assert result.matched_gt.shape == (len(points),)
        return
    device = "cuda" if backend == "torch-cuda" else "cpu"
    points_t = torch.as_tensor(points, dtype=torch.float32, device=device)
    boxes_t = torch.as_tensor(np.stack(boxes), dtype=torch.float32, device=device)
    valid = torch.ones(batch, num_gts, dtype=torch.bool, device=device)
    assign = getattr(DAF, f"assign_{name}_batched")

    def run():
        result = assign(points_t, counts, boxes_t, valid)
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    result = benchmark(run)
    assert result.matched_gt.shape == (batch, len(points))
    if quick:  # the smoke case also checks the answer against the reference
        expected = getattr(RAF, f"assign_{name}")(points, counts, boxes[0].astype(np.float32).astype(np.float64))
        assert abs(int((result.matched_gt[0].cpu().numpy() != expected.matched_gt).sum())) <= 5
