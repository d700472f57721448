"""Tests of Pascal VOC: detector/data/voc.py and the VOC mAP of detector/evaluation.py
(specs/data.md §6)."""
import json
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pycocotools")

from PIL import Image  # noqa: E402

from detector import configs  # noqa: E402
from detector.data.coco import CocoDetection  # noqa: E402
from detector.data.loaders import DATASETS, build_datasets, check_data, dataset_paths  # noqa: E402
from detector.data.voc import VOC_CLASSES, build_voc_annotations, parse_voc_set, voc_to_coco  # noqa: E402
from detector.evaluation import (  # noqa: E402
    METRICS,
    evaluate_metrics,
    voc_evaluate,
    write_metrics_json,
)

pytestmark = pytest.mark.torch

# --------------------------------------------------------------------------------------
# A tiny VOCdevkit
# --------------------------------------------------------------------------------------

# (year, image id, width, height, [(name, xmin, ymin, xmax, ymax, difficult)])
VOC_IMAGES = [
    ("2007", "000001", 40, 30, [("dog", 10, 5, 20, 25, 0), ("person", 1, 1, 40, 30, 1)]),
    ("2007", "000002", 32, 24, [("aeroplane", 3, 4, 10, 9, 0)]),
    ("2007", "000003", 20, 20, [("tvmonitor", 2, 2, 19, 20, 0), ("cat", 5, 5, 5, 5, 0)]),
    ("2012", "2012_000004", 24, 16, [("bird", 1, 2, 24, 16, 0)]),
]
SPLITS = {("2007", "trainval"): ["000001", "000002"], ("2007", "test"): ["000003"], ("2012", "trainval"): ["2012_000004"]}


def _xml(width, height, objects):
    parts = [f"<annotation><folder>VOC</folder><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax, difficult in objects:
        parts.append(f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
                     f"<difficult>{difficult}</difficult><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def _write_devkit(root):
    for year, image_id, width, height, objects in VOC_IMAGES:
        base = root / f"VOC{year}"
        for sub in ("Annotations", "ImageSets/Main", "JPEGImages"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        (base / "Annotations" / f"{image_id}.xml").write_text(_xml(width, height, objects))
        pixels = np.full((height, width, 3), 90, np.uint8)
        Image.fromarray(pixels).save(base / "JPEGImages" / f"{image_id}.jpg", quality=95)
    for (year, split), ids in SPLITS.items():
        (root / f"VOC{year}" / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(i + "\n" for i in ids))
    return root


@pytest.fixture
def devkit(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELASSIGN_DATA", str(tmp_path / "cache"))
    return _write_devkit(tmp_path / "VOCdevkit")


def test_classes_are_the_twenty_in_devkit_order():
    assert len(VOC_CLASSES) == 20 and len(set(VOC_CLASSES)) == 20
    assert VOC_CLASSES[:3] == ("aeroplane", "bicycle", "bird") and VOC_CLASSES[-1] == "tvmonitor"
    assert VOC_CLASSES.index("person") == 14 and VOC_CLASSES.index("diningtable") == 10


def test_conversion_gives_the_expected_coco_dict(devkit):
    data = voc_to_coco(devkit, ("2007/trainval", "2012/trainval"))
    assert data["images"] == [
        {"id": 1, "file_name": "VOC2007/JPEGImages/000001.jpg", "width": 40, "height": 30},
        {"id": 2, "file_name": "VOC2007/JPEGImages/000002.jpg", "width": 32, "height": 24},
        {"id": 3, "file_name": "VOC2012/JPEGImages/2012_000004.jpg", "width": 24, "height": 16},
    ]
    assert data["categories"] == [{"id": k + 1, "name": n, "supercategory": "voc"} for k, n in enumerate(VOC_CLASSES)]
    # 1-based inclusive (xmin, ymin, xmax, ymax) -> continuous (xmin - 1, ymin - 1, xmax, ymax):
    # dog (10, 5, 20, 25) -> [9, 4, 20, 25] -> bbox [9, 4, 11, 21], area 231
    # person (1, 1, 40, 30), difficult -> [0, 0, 40, 30]: the whole 40x30 image, iscrowd 1
    # aeroplane (3, 4, 10, 9) -> [2, 3, 10, 9] -> bbox [2, 3, 8, 6]
    # bird (1, 2, 24, 16) -> [0, 1, 24, 16] -> bbox [0, 1, 24, 15]
    assert data["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 12, "bbox": [9.0, 4.0, 11.0, 21.0], "area": 231.0, "iscrowd": 0,
         "difficult": 0},
        {"id": 2, "image_id": 1, "category_id": 15, "bbox": [0.0, 0.0, 40.0, 30.0], "area": 1200.0, "iscrowd": 1,
         "difficult": 1},
        {"id": 3, "image_id": 2, "category_id": 1, "bbox": [2.0, 3.0, 8.0, 6.0], "area": 48.0, "iscrowd": 0,
         "difficult": 0},
        {"id": 4, "image_id": 3, "category_id": 3, "bbox": [0.0, 1.0, 24.0, 15.0], "area": 360.0, "iscrowd": 0,
         "difficult": 0},
    ]


def test_a_one_pixel_box_has_width_one(devkit):
    data = voc_to_coco(devkit, ("2007/test",))
    cat = [a for a in data["annotations"] if a["category_id"] == VOC_CLASSES.index("cat") + 1]
    assert cat[0]["bbox"] == [4.0, 4.0, 1.0, 1.0]  # (5, 5, 5, 5): the single pixel [4, 5] x [4, 5]


def test_converted_file_is_cached_and_keyed_by_the_inputs(devkit, tmp_path):
    path = build_voc_annotations(devkit, ("2007/trainval",))
    assert path.parent.parent == tmp_path / "cache" and path.parent.name.startswith("voc-")
    assert json.loads(path.read_text()) == json.loads(json.dumps(voc_to_coco(devkit, ("2007/trainval",))))
    stamp = path.stat().st_mtime_ns
    assert build_voc_annotations(devkit, ("2007/trainval",)) == path and path.stat().st_mtime_ns == stamp
    assert build_voc_annotations(devkit, ("2007/test",)) != path
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    # an edited annotation gives a new file with the new content
    xml = devkit / "VOC2007" / "Annotations" / "000002.xml"
    xml.write_text(_xml(32, 24, [("aeroplane", 3, 4, 12, 9, 0)]))
    os.utime(xml, ns=(stamp + 10**9, stamp + 10**9))
    edited = build_voc_annotations(devkit, ("2007/trainval",))
    assert edited != path
    assert json.loads(edited.read_text())["annotations"][-1]["bbox"] == [2.0, 3.0, 10.0, 6.0]


def test_converted_file_loads_with_the_coco_loader(devkit):
    ann = build_voc_annotations(devkit, ("2007/trainval", "2012/trainval"))
    dropped = CocoDetection(devkit, ann, crowd="drop")
    assert dropped.category_names == list(VOC_CLASSES)
    target = dropped.get_target(0)
    # the difficult person is gone; the dog is label 11 (category id 12)
    assert target["boxes"].tolist() == [[9.0, 4.0, 20.0, 25.0]] and target["labels"].tolist() == [11]
    assert target["ignore_boxes"].shape == (0, 4)
    image, _ = dropped[2]
    assert tuple(image.shape) == (3, 16, 24)
    ignored = CocoDetection(devkit, ann, crowd="ignore").get_target(0)
    assert ignored["boxes"].tolist() == [[9.0, 4.0, 20.0, 25.0]]
    assert ignored["ignore_boxes"].tolist() == [[0.0, 0.0, 40.0, 30.0]]


def _error(root, sets=("2007/trainval",)):
    with pytest.raises(ValueError) as info:
        voc_to_coco(root, sets)
    message = str(info.value)
    assert "\n" not in message
    return message


def _rewrite(devkit, image_id, text):
    path = devkit / "VOC2007" / "Annotations" / f"{image_id}.xml"
    path.write_text(text)
    return path


def test_error_missing_devkit_folder(tmp_path):
    message = _error(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in message and "no such VOCdevkit folder" in message


def test_error_missing_year_folder(devkit):
    message = _error(devkit, ("2007/trainval", "2010/trainval"))
    assert str(devkit / "VOC2010") in message and "no such folder" in message


def test_error_missing_split_file(devkit):
    message = _error(devkit, ("2007/val",))
    assert str(devkit / "VOC2007" / "ImageSets" / "Main" / "val.txt") in message and "no such split file" in message


def test_error_malformed_set_name():
    with pytest.raises(ValueError, match="expected 'YEAR/SPLIT'"):
        parse_voc_set("VOC2007-test")


def test_error_missing_xml(devkit):
    (devkit / "VOC2007" / "Annotations" / "000002.xml").unlink()
    message = _error(devkit)
    assert str(devkit / "VOC2007" / "Annotations" / "000002.xml") in message and "trainval.txt" in message
    with pytest.raises(ValueError, match="000002.xml: no such annotation file"):
        build_voc_annotations(devkit, ("2007/trainval",))


def test_error_malformed_xml(devkit):
    path = _rewrite(devkit, "000002", "<annotation><size><width>3</width>")
    message = _error(devkit)
    assert message.startswith(f"{path}: malformed XML")


def test_error_box_outside_the_image(devkit):
    path = _rewrite(devkit, "000001", _xml(40, 30, [("dog", 10, 5, 20, 25, 0), ("cat", 0, 5, 20, 25, 0)]))
    message = _error(devkit)
    assert message.startswith(f"{path}: object 1 ('cat'): box") and "not inside the 40x30" in message
    _rewrite(devkit, "000001", _xml(40, 30, [("cat", 1, 5, 41, 25, 0)]))
    assert "object 0 ('cat')" in _error(devkit)
    _rewrite(devkit, "000001", _xml(40, 30, [("cat", 20, 5, 10, 25, 0)]))  # xmin > xmax
    assert "object 0 ('cat')" in _error(devkit)


def test_error_unknown_class_name(devkit):
    path = _rewrite(devkit, "000002", _xml(32, 24, [("aeroplane", 3, 4, 10, 9, 0), ("airplane", 3, 4, 10, 9, 0)]))
    message = _error(devkit)
    assert message.startswith(f"{path}: object 1 ('airplane'): unknown class name 'airplane'")


@pytest.mark.parametrize("xml, expected", [
    ("<annotation><object><name>dog</name></object></annotation>", "missing <size>"),
    (_xml(32, 24, [("dog", "a", 1, 2, 2, 0)]), "object 0 ('dog'): bndbox: <xmin> is not a number: 'a'"),
    ("<annotation><size><width>32</width><height>24</height></size><object><name>dog</name></object></annotation>",
     "object 0 ('dog'): missing <bndbox>"),
    (_xml(32, 24, [("dog", 1, 1, 2, 2, 2)]), "object 0 ('dog'): <difficult> must be 0 or 1"),
])
def test_error_missing_or_bad_fields(devkit, xml, expected):
    path = _rewrite(devkit, "000002", xml)
    message = _error(devkit)
    assert message.startswith(f"{path}: ") and expected in message


def test_error_image_listed_in_two_sets(devkit):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "train.txt").write_text("000002\n")
    message = _error(devkit, ("2007/trainval", "2007/train"))
    assert "train.txt: image '000002' (line 1) is also in set '2007/trainval'" in message


# --------------------------------------------------------------------------------------
# Configs and the training pipeline
# --------------------------------------------------------------------------------------


def _voc_config(devkit, *extra):
    return configs.get_config("demo", ["data.dataset=voc", f"data.root={devkit}", "data.voc_train_sets=2007/trainval,2012/trainval",
                                       "data.voc_test_sets=2007/test", "data.metric=voc07", *extra])


def test_config_fields_and_validation():
    assert "voc" in DATASETS and METRICS == ("coco", "voc07", "voc_area")
    data = configs.DataConfig()
    assert (data.metric, data.voc_train_sets, data.voc_test_sets) == ("coco", ("2007/trainval", "2012/trainval"),
                                                                        ("2007/test",))
    config = configs.get_config("demo", ["data.metric=voc_area", "data.voc_test_sets=2012/val"])
    assert config.data.metric == "voc_area" and config.data.voc_test_sets == ("2012/val",)
    assert configs.from_dict(configs.to_dict(config)) == config
    with pytest.raises(ValueError, match="data.metric: expected one of coco, voc07, voc_area"):
        configs.get_config("demo", ["data.metric=voc"])
    with pytest.raises(ValueError, match="data.voc_train_sets: VOC set 'trainval'"):
        configs.get_config("demo", ["data.voc_train_sets=trainval"])
    with pytest.raises(ValueError, match="data.voc_test_sets: data.dataset=voc needs at least one"):
        configs.get_config("demo", ["data.dataset=voc", "data.voc_test_sets=()"])


def test_dataset_paths_and_build_datasets(devkit):
    config = _voc_config(devkit)
    train_images, train_ann, val_images, val_ann = dataset_paths(config)
    assert str(train_images) == str(devkit) == str(val_images)
    assert json.loads(val_ann.read_text())["images"][0]["file_name"] == "VOC2007/JPEGImages/000003.jpg"
    splits = build_datasets(config)
    assert splits.num_classes == 20 and splits.category_ids == list(range(1, 21))
    assert len(splits.train) == 3 and len(splits.val) == 1 and splits.val_annotations == str(val_ann)
    image, target = splits.train[0]
    assert image.shape[0] == 3 and target["labels"].tolist() == [11]  # the difficult person dropped
    problems, summaries = check_data(config, progress=False)
    assert problems == [] and summaries["train"]["images"] == 3 and summaries["val"]["annotations"] == 2


def test_dataset_paths_needs_the_devkit_root():
    config = configs.get_config("demo", ["data.dataset=voc"])
    with pytest.raises(ValueError, match="data.dataset=voc needs data.root=PATH"):
        dataset_paths(config)


# --------------------------------------------------------------------------------------
# The VOC metric
# --------------------------------------------------------------------------------------


def _gt(annotations, images=(1, 2), categories=((1, "a"), (2, "b"))):
    """COCO dict from (image_id, category_id, xyxy, difficult)."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in images],
        "categories": [{"id": c, "name": n} for c, n in categories],
        "annotations": [
            {"id": n + 1, "image_id": i, "category_id": c, "bbox": [x1, y1, x2 - x1, y2 - y1],
             "area": (x2 - x1) * (y2 - y1), "iscrowd": int(d), "difficult": int(d)}
            for n, (i, c, (x1, y1, x2, y2), d) in enumerate(annotations)
        ],
    }


def _det(image_id, rows):
    """One detections entry from rows (xyxy, score, label)."""
    return {"image_id": image_id, "boxes": np.array([r[0] for r in rows], float).reshape(-1, 4),
            "scores": np.array([r[1] for r in rows], float), "labels": np.array([r[2] for r in rows], np.int64)}


# Class "a": GTs G1 (image 1), G2 (image 1, difficult), G3 and G4 (image 2): 3 non-difficult.
HAND_GT = [
    (1, 1, (0, 0, 10, 10), False),   # G1
    (1, 1, (20, 0, 30, 10), True),   # G2, difficult
    (2, 1, (0, 0, 10, 10), False),   # G3
    (2, 1, (50, 50, 60, 60), False),  # G4
    (2, 2, (100, 100, 120, 120), False),  # class "b", found once
]
HAND_DETECTIONS = [
    _det(1, [((0, 0, 10, 10), 0.9, 0),      # d1: IoU 1 with G1 -> TP
             ((0, 0, 10, 10), 0.8, 0),      # d2: best GT G1, already matched -> FP (duplicate)
             ((20, 0, 30, 10), 0.7, 0)]),   # d3: best GT G2 is difficult -> ignored
    _det(2, [((0, 0, 10, 10), 0.6, 0),      # d4: G3 -> TP
             ((150, 150, 160, 160), 0.5, 0),  # d5: no overlap -> FP
             ((50, 50, 60, 62), 0.4, 0),    # d6: IoU 100 / 120 = 0.83 with G4 -> TP
             ((100, 100, 120, 120), 0.3, 1)]),  # class b: TP, AP 1
]


def test_voc_metric_hand_computed():
    # class a, by score without d3: TP FP TP FP TP
    #   cumulative TP 1 1 2 2 3, FP 0 1 1 2 2
    #   precision 1, 1/2, 2/3, 1/2, 3/5;  recall 1/3, 1/3, 2/3, 2/3, 1
    # 11-point: t = 0, .1, .2, .3 (<= 1/3): max precision 1;
    #           t = .4, .5, .6 (<= 2/3): max(2/3, 1/2, 3/5) = 2/3;  t = .7 .. 1: 3/5
    #           AP = (4 * 1 + 3 * 2/3 + 4 * 3/5) / 11 = 8.4 / 11
    # area: envelope 1 on (0, 1/3], 2/3 on (1/3, 2/3], 3/5 on (2/3, 1]
    #       AP = 1/3 + 2/9 + 1/5 = 34/45
    gt = _gt(HAND_GT)
    eleven = voc_evaluate(gt, HAND_DETECTIONS, mode="11points")
    area = voc_evaluate(gt, HAND_DETECTIONS, mode="area")
    assert eleven["per_class_AP"]["a"] == pytest.approx(8.4 / 11, abs=1e-12)
    assert area["per_class_AP"]["a"] == pytest.approx(34 / 45, abs=1e-12)
    assert eleven["per_class_AP"]["b"] == area["per_class_AP"]["b"] == 1.0
    assert eleven["mAP"] == pytest.approx((8.4 / 11 + 1) / 2, abs=1e-12)
    assert area["mAP"] == pytest.approx((34 / 45 + 1) / 2, abs=1e-12)


def test_voc_metric_inputs_as_path_coco_object_and_tensors(tmp_path):
    from pycocotools.coco import COCO

    path = tmp_path / "gt.json"
    path.write_text(json.dumps(_gt(HAND_GT)))
    tensors = [{k: torch.as_tensor(v) if k != "image_id" else v for k, v in d.items()} for d in HAND_DETECTIONS]
    expected = voc_evaluate(_gt(HAND_GT), HAND_DETECTIONS)
    assert voc_evaluate(path, tensors) == expected
    assert voc_evaluate(COCO(str(path)), HAND_DETECTIONS) == expected


def test_voc_metric_best_gt_already_matched_is_a_false_positive():
    # G1 and G2 overlap (IoU 9/11). d2 equals G1: its best GT is G1, already taken by d1, so d2
    # is FP although its IoU with the free G2 is 0.82 (the devkit does not try another GT).
    # precision 1, 1/2; recall 1/2, 1/2 -> 11-point: 6 thresholds <= 1/2 reach precision 1: 6/11.
    gt = _gt([(1, 1, (0, 0, 10, 10), False), (1, 1, (0, 1, 10, 11), False)], categories=((1, "a"),))
    dets = [_det(1, [((0, 0, 10, 10), 0.9, 0), ((0, 0, 10, 10), 0.8, 0)])]
    assert voc_evaluate(gt, dets)["mAP"] == pytest.approx(6 / 11, abs=1e-12)
    assert voc_evaluate(gt, dets, mode="area")["mAP"] == pytest.approx(0.5, abs=1e-12)


def test_voc_metric_ties_keep_input_order():
    # one GT; a hit and a miss with the same score. Hit first: precision 1, 1/2 at recall 1
    # -> AP 1. Miss first: precision 0, 1/2 at recall 0, 1 -> AP 1/2 (both modes).
    gt = _gt([(1, 1, (0, 0, 10, 10), False)], categories=((1, "a"),))
    hit, miss = ((0, 0, 10, 10), 0.5, 0), ((50, 50, 60, 60), 0.5, 0)
    for mode in ("11points", "area"):
        assert voc_evaluate(gt, [_det(1, [hit, miss])], mode=mode)["mAP"] == 1.0
        assert voc_evaluate(gt, [_det(1, [miss, hit])], mode=mode)["mAP"] == pytest.approx(0.5)
        assert voc_evaluate(gt, [_det(1, [miss]), _det(1, [hit])], mode=mode)["mAP"] == pytest.approx(0.5)
        many = [miss] * 9 + [hit]  # hit last among 10 tied: precision 1/10 at recall 1
        assert voc_evaluate(gt, [_det(1, many)], mode=mode)["mAP"] == pytest.approx(0.1)


def test_voc_metric_eleven_point_threshold_is_exact():
    # 10 GTs, 3 found with precision 1 then only misses: recall reaches exactly 3/10, which
    # counts for t = 0.3 (k / 10, not 0.1 * k = 0.30000000000000004): AP = 4 / 11.
    gt = _gt([(1, 1, (20 * k, 0, 20 * k + 10, 10), False) for k in range(10)], categories=((1, "a"),))
    dets = [_det(1, [((20 * k, 0, 20 * k + 10, 10), 1.0 - 0.1 * k, 0) for k in range(3)])]
    assert voc_evaluate(gt, dets)["mAP"] == pytest.approx(4 / 11, abs=1e-12)


def test_voc_metric_iou_threshold_is_inclusive():
    # detection (0, 0, 10, 5) against GT (0, 0, 10, 10): IoU exactly 50 / 100 = 0.5 -> TP
    gt = _gt([(1, 1, (0, 0, 10, 10), False)], categories=((1, "a"),))
    dets = [_det(1, [((0, 0, 10, 5), 0.9, 0)])]
    assert voc_evaluate(gt, dets)["mAP"] == 1.0
    assert voc_evaluate(gt, dets, iou_threshold=0.51)["mAP"] == 0.0


def test_voc_metric_class_without_gt_is_nan_and_left_out():
    # class b has only a difficult GT: no positive, AP NaN, not in the mean; class c has no
    # GT at all; class a is found perfectly.
    gt = _gt([(1, 1, (0, 0, 10, 10), False), (1, 2, (50, 50, 60, 60), True)], categories=((1, "a"), (2, "b"), (3, "c")))
    dets = [_det(1, [((0, 0, 10, 10), 0.9, 0), ((50, 50, 60, 60), 0.9, 1), ((80, 80, 90, 90), 0.9, 2)])]
    result = voc_evaluate(gt, dets)
    assert result["per_class_AP"]["a"] == 1.0
    assert math.isnan(result["per_class_AP"]["b"]) and math.isnan(result["per_class_AP"]["c"])
    assert result["mAP"] == 1.0
    only_b = voc_evaluate(_gt([(1, 2, (50, 50, 60, 60), True)], categories=((2, "b"),)), [])
    assert math.isnan(only_b["mAP"])


def test_voc_metric_gt_without_detections_is_zero_and_bad_arguments_raise():
    gt = _gt(HAND_GT)
    assert voc_evaluate(gt, []) == {"mAP": 0.0, "per_class_AP": {"a": 0.0, "b": 0.0}}
    with pytest.raises(ValueError, match="mode: expected one of 11points, area"):
        voc_evaluate(gt, [], mode="voc07")
    with pytest.raises(ValueError, match="iou_threshold"):
        voc_evaluate(gt, [], iou_threshold=0.0)
    with pytest.raises(ValueError, match=r"detections\[0\] \(image_id 7\): image_id is not an image"):
        voc_evaluate(gt, [_det(7, [((0, 0, 1, 1), 0.5, 0)])])
    with pytest.raises(ValueError, match="labels must be integers in 0..1"):
        voc_evaluate(gt, [_det(1, [((0, 0, 1, 1), 0.5, 2)])])


def _reference_voc_ap(gt, detections, mode, threshold=0.5):
    """A plain loop over detections, one class at a time (category ids ascending)."""
    categories = sorted(c["id"] for c in gt["categories"])
    aps = []
    for label, category in enumerate(categories):
        objects = {}
        for a in gt["annotations"]:
            if a["category_id"] == category:
                x, y, w, h = a["bbox"]
                objects.setdefault(a["image_id"], []).append([[x, y, x + w, y + h], bool(a["difficult"]), False])
        npos = sum(not o[1] for objs in objects.values() for o in objs)
        flat = [(det["image_id"], list(box), score) for det in detections
                for box, score, lab in zip(det["boxes"].tolist(), det["scores"].tolist(), det["labels"].tolist())
                if lab == label]
        flat = sorted(flat, key=lambda item: -item[2])  # sorted() is stable
        tp, fp = [], []
        for image_id, box, _ in flat:
            best, best_object = -1.0, None
            for obj in objects.get(image_id, []):
                g = obj[0]
                iw = max(0.0, min(box[2], g[2]) - max(box[0], g[0]))
                ih = max(0.0, min(box[3], g[3]) - max(box[1], g[1]))
                union = (box[2] - box[0]) * (box[3] - box[1]) + (g[2] - g[0]) * (g[3] - g[1]) - iw * ih
                iou = iw * ih / union if union > 0 else 0.0
                if iou > best:
                    best, best_object = iou, obj
            if best >= threshold and best_object[1]:
                continue
            if best >= threshold and not best_object[2]:
                best_object[2] = True
                tp.append(1)
                fp.append(0)
            else:
                tp.append(0)
                fp.append(1)
        if npos == 0:
            aps.append(math.nan)
            continue
        ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
        rec = ctp / npos
        prec = ctp / np.maximum(ctp + cfp, 1.0)
        if mode == "11points":
            ap = 0.0
            for k in range(11):
                above = prec[rec >= k / 10]
                ap += (above.max() if above.size else 0.0) / 11
        else:
            mrec = np.concatenate([[0.0], rec, [1.0]])
            mpre = np.concatenate([[0.0], prec, [0.0]])
            for i in range(len(mpre) - 2, -1, -1):
                mpre[i] = max(mpre[i], mpre[i + 1])
            ap = sum((mrec[i + 1] - mrec[i]) * mpre[i + 1] for i in range(len(mrec) - 1) if mrec[i + 1] != mrec[i])
        aps.append(ap)
    return aps


def _random_case(seed, num_images=12, num_classes=3):
    """Clustered GTs (overlapping, some difficult), jittered and duplicated detections, tied scores."""
    rng = np.random.default_rng(seed)
    annotations = []
    detections = []
    for image_id in range(1, num_images + 1):
        rows = []
        for _ in range(rng.integers(0, 6)):
            c = int(rng.integers(1, num_classes + 1))
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(5, 40, 2)
            annotations.append((image_id, c, (x, y, x + w, y + h), bool(rng.random() < 0.2)))
            for _ in range(rng.integers(0, 3)):
                jitter = rng.normal(0, 0.15, 4) * [w, h, w, h]
                box = np.array([x, y, x + w, y + h]) + jitter
                box[2:] = np.maximum(box[2:], box[:2] + 1)
                rows.append((tuple(box), float(rng.integers(0, 5)) / 4, c - 1 if rng.random() < 0.9 else 0))
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 100, 2)
            rows.append(((x, y, x + 10, y + 10), float(rng.integers(0, 5)) / 4, int(rng.integers(0, num_classes))))
        if rows:
            detections.append(_det(image_id, rows))
    categories = tuple((c, f"c{c}") for c in range(1, num_classes + 1))
    return _gt(annotations, images=range(1, num_images + 1), categories=categories), detections


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("mode", ["11points", "area"])
def test_voc_metric_agrees_with_a_plain_loop(seed, mode):
    gt, detections = _random_case(seed)
    expected = _reference_voc_ap(gt, detections, mode)
    result = voc_evaluate(gt, detections, mode=mode)
    np.testing.assert_allclose(list(result["per_class_AP"].values()), expected, atol=1e-12, equal_nan=True)


def test_voc_area_ap_agrees_with_pycocotools_at_iou_half():
    """Single class, GTs on a grid far apart (a detection overlaps at most one GT), no
    difficult or crowd GT, distinct scores: pycocotools' AP at IoU 0.5 with a fine recall
    grid, every area and no detection cap is the area-based VOC AP.

    pycocotools matches at IoU >= 0.5 (it skips ``iou < t``), like the VOC rule here, and
    both use continuous boxes without ``+1``; no IoU is exactly 0.5 here anyway.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    rng = np.random.default_rng(3)
    annotations, rows_of = [], {}
    for image_id in range(1, 21):
        rows = []
        for cell in range(4):
            cx, cy = 100 * (cell % 2) + 10, 100 * (cell // 2) + 10
            if rng.random() < 0.8:
                w, h = rng.uniform(10, 40, 2)
                annotations.append((image_id, 1, (cx, cy, cx + w, cy + h), False))
                for _ in range(rng.integers(0, 3)):  # jittered hits and misses, duplicates
                    shift = rng.normal(0, 0.15, 2) * [w, h]
                    rows.append(((cx + shift[0], cy + shift[1], cx + shift[0] + w, cy + shift[1] + h), 0.0, 0))
            elif rng.random() < 0.5:
                rows.append(((cx, cy, cx + 20, cy + 20), 0.0, 0))  # a false positive in an empty cell
        rows_of[image_id] = rows
    scores = iter(rng.permutation(1000)[:sum(len(r) for r in rows_of.values())] / 1000 + 0.0005)
    detections = [_det(i, [(box, next(scores), lab) for box, _, lab in rows]) for i, rows in rows_of.items() if rows]
    gt = _gt(annotations, images=range(1, 21), categories=((1, "a"),))
    voc = voc_evaluate(gt, detections, mode="area")["mAP"]

    coco_gt = COCO()
    coco_gt.dataset = gt
    coco_gt.createIndex()
    results = [{"image_id": d["image_id"], "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for d in detections for (x1, y1, x2, y2), s in zip(d["boxes"].tolist(), d["scores"].tolist())]
    evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
    evaluator.params.iouThrs = np.array([0.5])
    evaluator.params.recThrs = np.linspace(0.0, 1.0, 100001)
    evaluator.params.areaRng = [[0.0, 1e10]]
    evaluator.params.areaRngLbl = ["all"]
    evaluator.params.maxDets = [10000]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, 0, 0, 0]
    coco = float(np.mean(precision[precision > -1]))
    assert 0.2 < voc < 0.95  # a non-trivial curve
    assert coco == pytest.approx(voc, abs=1e-3)


def test_evaluate_metrics_reports_the_voc_map_first(tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt(HAND_GT)))
    coco = evaluate_metrics(gt, HAND_DETECTIONS, metric="coco")
    assert list(coco) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
    voc = evaluate_metrics(gt, HAND_DETECTIONS, metric="voc07")
    assert list(voc) == ["mAP", "AP", "AP50", "AP75", "APs", "APm", "APl", "per_class_AP"]
    assert voc["mAP"] == pytest.approx((8.4 / 11 + 1) / 2) and voc["AP"] == coco["AP"]
    assert evaluate_metrics(gt, HAND_DETECTIONS, metric="voc_area")["mAP"] == pytest.approx((34 / 45 + 1) / 2)
    with pytest.raises(ValueError, match="metric: expected one of coco, voc07, voc_area"):
        evaluate_metrics(gt, HAND_DETECTIONS, metric="voc")
    from detector.train import format_metrics

    line = format_metrics(voc)
    assert line.startswith("mAP 0.882  AP ") and "per_class" not in line


@pytest.mark.parametrize("metric, expected", [("coco", None), ("voc07", (8.4 / 11 + 1) / 2),
                                              ("voc_area", (34 / 45 + 1) / 2)])
def test_engine_evaluate_reports_the_configured_metric(tmp_path, monkeypatch, metric, expected):
    from detector import engine

    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(_gt(HAND_GT)))
    monkeypatch.setattr(engine, "run_inference", lambda *args, **kwargs: HAND_DETECTIONS)
    metrics = engine.evaluate(None, None, "cpu", str(gt), [1, 2], verbose=False, metric=metric)
    if expected is None:
        assert "mAP" not in metrics and list(metrics)[0] == "AP"
    else:
        assert metrics["mAP"] == pytest.approx(expected) and set(metrics["per_class_AP"]) == {"a", "b"}


def test_metrics_json_writes_nested_nan_as_null(tmp_path):
    path = write_metrics_json({"mAP": 0.5, "AP": math.nan, "per_class_AP": {"a": 0.5, "b": math.nan}}, tmp_path / "m.json")
    assert json.loads(path.read_text()) == {"mAP": 0.5, "AP": None, "per_class_AP": {"a": 0.5, "b": None}}
