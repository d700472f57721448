"""Tests of detector/evaluation.py (specs/data.md §5)."""
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from pycocotools.coco import COCO  # noqa: E402

from detector.evaluation import (  # noqa: E402
    METRIC_NAMES,
    coco_evaluate,
    detections_to_coco_results,
    write_metrics_json,
)

pytestmark = pytest.mark.torch

CATEGORY_IDS = [4, 9]  # contiguous labels 0, 1
# (image_id, category_id, [x, y, w, h]): small (< 32^2), medium and large (> 96^2) objects.
GT = [
    (1, 4, [10, 10, 20, 10]),
    (1, 9, [50, 40, 60, 50]),
    (1, 4, [100, 120, 120, 110]),
    (2, 9, [5, 5, 12, 30]),
    (2, 9, [30, 60, 40, 40]),
    (2, 4, [90, 20, 150, 100]),
    (3, 4, [0, 0, 8, 8]),
]


def _gt_dict(gt=GT):
    images = [{"id": i, "file_name": f"{i}.png", "height": 240, "width": 320} for i in (1, 2, 3)]
    annotations = [
        {"id": n + 1, "image_id": image_id, "category_id": cat, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
        for n, (image_id, cat, bbox) in enumerate(gt)
    ]
    categories = [{"id": c, "name": f"c{c}"} for c in (9, 4)]
    return {"images": images, "annotations": annotations, "categories": categories}


@pytest.fixture
def gt_file(tmp_path):
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt_dict()))
    return path


def _detections(shift=0.0, as_tensor=False):
    """One entry per image: the GT boxes (xyxy) shifted right by ``shift`` * their width."""
    per_image = {1: [], 2: [], 3: []}
    for image_id, cat, (x, y, w, h) in GT:
        per_image[image_id].append(([x + shift * w, y, x + w + shift * w, y + h], CATEGORY_IDS.index(cat)))
    detections = []
    for image_id, items in per_image.items():
        boxes = np.array([b for b, _ in items], dtype=np.float32)
        labels = np.array([label for _, label in items], dtype=np.int64)
        scores = np.linspace(0.9, 0.5, len(items))
        if as_tensor:
            boxes, labels, scores = torch.from_numpy(boxes), torch.from_numpy(labels), torch.from_numpy(scores)
        detections.append({"image_id": image_id, "boxes": boxes, "scores": scores, "labels": labels})
    return detections


def test_perfect_predictions_score_one(gt_file):
    metrics = coco_evaluate(gt_file, _detections())
    assert set(metrics) == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert isinstance(metrics[name], float)
        np.testing.assert_allclose(metrics[name], 1.0, atol=1e-6, rtol=0, err_msg=name)


def test_perfect_predictions_as_tensors_and_coco_object(gt_file):
    coco = COCO(str(gt_file))
    metrics = coco_evaluate(coco, _detections(as_tensor=True))
    np.testing.assert_allclose(metrics["AP"], 1.0, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shift", [0.05, 0.2])
def test_shifted_predictions_score_lower(gt_file, shift):
    perfect = coco_evaluate(gt_file, _detections())
    shifted = coco_evaluate(gt_file, _detections(shift))
    assert shifted["AP"] < perfect["AP"] - 0.05
    assert shifted["AP75"] <= perfect["AP75"]
    assert 0.0 <= shifted["AP"] <= 1.0


def test_zero_detections_score_zero(gt_file):
    for detections in ([], [{"image_id": 1, "boxes": np.zeros((0, 4)), "scores": [], "labels": []}]):
        metrics = coco_evaluate(gt_file, detections)
        assert metrics == {name: 0.0 for name in METRIC_NAMES}


def test_labels_map_back_to_category_ids(gt_file):
    swapped = _detections()
    for det in swapped:
        det["labels"] = 1 - det["labels"]
    np.testing.assert_allclose(coco_evaluate(gt_file, swapped)["AP"], 0.0, atol=1e-6)
    metrics = coco_evaluate(gt_file, swapped, category_ids=[9, 4])
    np.testing.assert_allclose(metrics["AP"], 1.0, atol=1e-6, rtol=0)


def test_undefined_area_range_is_nan(tmp_path):
    path = tmp_path / "small_only.json"
    path.write_text(json.dumps(_gt_dict([(1, 4, [10, 10, 20, 10])])))
    detections = [{"image_id": 1, "boxes": [[10, 10, 30, 20]], "scores": [0.9], "labels": [0]}]
    metrics = coco_evaluate(path, detections)
    np.testing.assert_allclose(metrics["APs"], 1.0, atol=1e-6, rtol=0)
    assert math.isnan(metrics["APm"]) and math.isnan(metrics["APl"])


def test_results_are_xywh_with_category_ids():
    detections = [{"image_id": 7, "boxes": [[1.0, 2.0, 4.0, 8.0]], "scores": [0.5], "labels": [1]}]
    results = detections_to_coco_results(detections, [4, 9])
    assert results == [{"image_id": 7, "category_id": 9, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]


@pytest.mark.parametrize("bad, message", [
    ({"labels": [2]}, "labels"),
    ({"labels": [-1]}, "labels"),
    ({"image_id": 99}, "image_id"),
    ({"boxes": [[5.0, 2.0, 4.0, 8.0]]}, "x2 < x1"),
    ({"boxes": [[1.0, 2.0, 4.0]]}, "shape"),
    ({"scores": [0.5, 0.4]}, "count"),
    ({"scores": [float("nan")]}, "non-finite"),
])
def test_bad_detections_raise(gt_file, bad, message):
    det = {"image_id": 1, "boxes": [[1.0, 2.0, 4.0, 8.0]], "scores": [0.5], "labels": [0], **bad}
    with pytest.raises(ValueError, match=message):
        coco_evaluate(gt_file, [det])


def test_verbose_prints_the_table(gt_file, capsys):
    coco_evaluate(gt_file, _detections())
    assert capsys.readouterr().out == ""
    coco_evaluate(gt_file, _detections(), verbose=True)
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]" in capsys.readouterr().out


def test_write_metrics_json(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    write_metrics_json({"AP": 0.5, "APl": math.nan, "epoch": 3}, path)
    assert json.loads(path.read_text()) == {"AP": 0.5, "APl": None, "epoch": 3}
    write_metrics_json({"AP": 0.75}, path)
    assert json.loads(path.read_text()) == {"AP": 0.75}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]


def test_write_metrics_json_failure_keeps_the_old_file(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics_json({"AP": 0.5}, path)
    with pytest.raises(TypeError):
        write_metrics_json({"AP": object()}, path)
    assert json.loads(path.read_text()) == {"AP": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
