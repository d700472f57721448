"""Tests of detector/data: built-in dataset, COCO loader, transforms, collate (specs/data.md)."""
import json
import logging

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from detector.data import synthetic  # noqa: E402
from detector.data.coco import CocoDetection  # noqa: E402
from detector.data.collate import PAD_LABEL, collate, pad_boxes, pad_targets  # noqa: E402
from detector.data.synthetic import build_digits_dataset, digit_split  # noqa: E402
from detector.data.transforms import (  # noqa: E402
    Compose,
    Normalize,
    RandomHorizontalFlip,
    Resize,
    hflip,
    to_original_coordinates,
)

pytestmark = pytest.mark.torch

# --------------------------------------------------------------------------------------
# A hand-written COCO file
# --------------------------------------------------------------------------------------

# Image ids are not in file order and category ids are neither sorted nor contiguous on
# purpose: the loader sorts both.
IMAGES = [
    {"id": 5, "file_name": "a.png", "height": 20, "width": 30},
    {"id": 2, "file_name": "b.png", "height": 16, "width": 16},
    {"id": 9, "file_name": "c.png", "height": 24, "width": 24},
]
CATEGORIES = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}, {"id": 12, "name": "twelve"}]
ANNOTATIONS = [
    {"id": 1, "image_id": 5, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 50, "iscrowd": 0},
    {"id": 2, "image_id": 5, "category_id": 3, "bbox": [0, 0, 8, 8], "area": 64, "iscrowd": 1},
    {"id": 3, "image_id": 5, "category_id": 7, "bbox": [5, 5, 0, 4], "area": 0, "iscrowd": 0},
    {"id": 4, "image_id": 9, "category_id": 12, "bbox": [20, -2, 10, 6.5], "area": 65, "iscrowd": 0},
]


def _coco_dict():
    return json.loads(json.dumps({"images": IMAGES, "annotations": ANNOTATIONS, "categories": CATEGORIES}))


def _write_coco(tmp_path, data=None, images=True):
    """Write the annotation file (and, if ``images``, one PNG per image); return (dir, json path)."""
    image_dir = tmp_path / "images"
    image_dir.mkdir(exist_ok=True)
    if images:
        for index, info in enumerate(IMAGES):
            pixels = np.zeros((info["height"], info["width"], 3), np.uint8)
            pixels[0, 0] = (255, 0, 0)
            pixels[-1, -1] = (0, 0, 10 * (index + 1))
            Image.fromarray(pixels).save(image_dir / info["file_name"])
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(json.dumps(_coco_dict() if data is None else data))
    return image_dir, ann_file


@pytest.fixture
def coco_files(tmp_path):
    return _write_coco(tmp_path)


def test_loader_orders_images_and_maps_categories(coco_files):
    dataset = CocoDetection(*coco_files)
    assert len(dataset) == 3
    assert dataset.image_ids == [2, 5, 9]
    assert dataset.category_ids == [3, 7, 12]
    assert dataset.category_names == ["three", "seven", "twelve"]


def test_loader_drops_crowd_and_degenerate_by_default(coco_files, caplog):
    with caplog.at_level(logging.WARNING, logger="detector.data.coco"):
        dataset = CocoDetection(*coco_files)
    assert dataset.num_dropped_degenerate == 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 1 degenerate" in warnings[0].getMessage()
    image, target = dataset[1]  # image id 5
    assert target["image_id"] == 5
    assert target["orig_size"] == (20, 30)
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0]]))
    torch.testing.assert_close(target["labels"], torch.tensor([1]))  # category 7 -> label 1
    assert target["ignore_boxes"].shape == (0, 4) and target["ignore_boxes"].dtype == torch.float32


def test_loader_keeps_crowd_as_ignore_regions(coco_files):
    dataset = CocoDetection(*coco_files, crowd="ignore")
    _, target = dataset[1]
    torch.testing.assert_close(target["ignore_boxes"], torch.tensor([[0.0, 0.0, 8.0, 8.0]]))
    torch.testing.assert_close(target["boxes"], torch.tensor([[2.0, 3.0, 12.0, 8.0]]))
    assert dataset.num_dropped_degenerate == 1


def test_loader_keeps_images_without_annotations(coco_files):
    image, target = CocoDetection(*coco_files)[0]  # image id 2 has no annotations
    assert target["image_id"] == 2
    assert image.shape == (3, 16, 16)
    assert target["boxes"].shape == (0, 4) and target["boxes"].dtype == torch.float32
    assert target["labels"].shape == (0,) and target["labels"].dtype == torch.int64


def test_loader_clips_boxes_to_the_image(coco_files):
    _, target = CocoDetection(*coco_files)[2]  # image id 9, 24 x 24, bbox [20, -2, 10, 6.5]
    torch.testing.assert_close(target["boxes"], torch.tensor([[20.0, 0.0, 24.0, 4.5]]))
    torch.testing.assert_close(target["labels"], torch.tensor([2]))


def test_loader_image_is_rgb_float_in_unit_range(coco_files):
    image, _ = CocoDetection(*coco_files)[1]
    assert image.dtype == torch.float32 and image.shape == (3, 20, 30)
    torch.testing.assert_close(image[:, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(image[:, -1, -1], torch.tensor([0.0, 0.0, 10 / 255]))  # image id 5 is IMAGES[0]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_loader_counts_non_finite_and_outside_boxes_as_degenerate(tmp_path):
    data = _coco_dict()
    data["annotations"][0]["bbox"] = [float("nan"), 3, 10, 5]
    data["annotations"][3]["bbox"] = [30, 0, 5, 5]  # entirely right of the 24-px-wide image
    dataset = CocoDetection(*_write_coco(tmp_path, data))
    assert dataset.num_dropped_degenerate == 3
    assert data["annotations"][0]["id"] in dataset.dropped_degenerate_ids
    assert data["annotations"][3]["id"] in dataset.dropped_degenerate_ids
    assert dataset[1][1]["boxes"].shape == (0, 4)
    assert dataset[2][1]["boxes"].shape == (0, 4)


def test_loader_no_warning_without_degenerate_boxes(tmp_path, caplog):
    data = _coco_dict()
    del data["annotations"][2]
    with caplog.at_level(logging.WARNING, logger="detector.data.coco"):
        dataset = CocoDetection(*_write_coco(tmp_path, data))
    assert dataset.num_dropped_degenerate == 0
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def _set(path, value):
    def mutate(data):
        *keys, last = path
        node = data
        for key in keys:
            node = node[key]
        node[last] = value
    return mutate


def _delete(path):
    def mutate(data):
        *keys, last = path
        node = data
        for key in keys:
            node = node[key]
        del node[last]
    return mutate


MALFORMED = {
    "missing images": (_delete(["images"]), ["missing key 'images'"]),
    "missing annotations": (_delete(["annotations"]), ["missing key 'annotations'"]),
    "missing category_id": (_delete(["annotations", 1, "category_id"]), ["annotations[1]", "(id 2)", "'category_id'"]),
    "bbox of 3 numbers": (_set(["annotations", 0, "bbox"], [1, 2, 3]), ["annotations[0]", "'bbox'", "4 numbers"]),
    "bbox with a string": (_set(["annotations", 3, "bbox"], [1, 2, "3", 4]), ["annotations[3]", "(id 4)", "'bbox'"]),
    "missing bbox": (_delete(["annotations", 2, "bbox"]), ["annotations[2]", "'bbox'"]),
    "unknown image": (_set(["annotations", 1, "image_id"], 77), ["annotations[1]", "unknown image_id 77"]),
    "unknown category": (_set(["annotations", 3, "category_id"], 4), ["annotations[3]", "unknown category_id 4"]),
    "duplicate annotation id": (_set(["annotations", 3, "id"], 1), ["annotations[3]", "duplicate annotation id 1"]),
    "duplicate image id": (_set(["images", 2, "id"], 5), ["images[2]", "duplicate image id 5"]),
    "duplicate category id": (_set(["categories", 1, "id"], 7), ["categories[1]", "duplicate category id 7"]),
    "image without size": (_delete(["images", 0, "width"]), ["images[0]", "'width'"]),
    "string image id": (_set(["annotations", 0, "image_id"], "5"), ["annotations[0]", "'image_id' must be int"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_loader_rejects_malformed_files(tmp_path, case):
    mutate, expected = MALFORMED[case]
    data = _coco_dict()
    mutate(data)
    image_dir, ann_file = _write_coco(tmp_path, data, images=False)
    with pytest.raises(ValueError) as error:
        CocoDetection(image_dir, ann_file)
    message = str(error.value)
    assert str(ann_file) in message
    for part in expected:
        assert part in message


@pytest.mark.parametrize("text", ["{not json", "[1, 2, 3]", ""])
def test_loader_rejects_unreadable_json(tmp_path, text):
    ann_file = tmp_path / "broken.json"
    ann_file.write_text(text)
    with pytest.raises(ValueError, match="broken.json"):
        CocoDetection(tmp_path, ann_file)


def test_loader_rejects_unknown_crowd_mode(coco_files):
    with pytest.raises(ValueError, match="crowd"):
        CocoDetection(*coco_files, crowd="keep")


def test_loader_missing_image_file(tmp_path):
    image_dir, ann_file = _write_coco(tmp_path)
    (image_dir / "c.png").unlink()
    dataset = CocoDetection(image_dir, ann_file)
    dataset[0]
    with pytest.raises(FileNotFoundError, match="c.png"):
        dataset[2]


def test_loader_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        CocoDetection(tmp_path, tmp_path / "nothing.json")


def test_loader_image_size_disagrees_with_json(tmp_path):
    data = _coco_dict()
    data["images"][0]["height"] = 21
    dataset = CocoDetection(*_write_coco(tmp_path, data))
    with pytest.raises(ValueError, match="a.png"):
        dataset[1]


def test_image_cache_reads_each_file_once_and_returns_the_same_items(tmp_path):
    image_dir, ann_file = _write_coco(tmp_path)
    # a 16-bit image among them: the cache keeps its scaled float pixels
    Image.fromarray(np.linspace(0, 65535, 16 * 16).astype(np.uint16).reshape(16, 16)).save(image_dir / "b.png")
    plain = CocoDetection(image_dir, ann_file)
    expected_items = [plain[index] for index in range(len(plain))]
    cached = CocoDetection(image_dir, ann_file, cache_images=True)
    for path in image_dir.iterdir():  # everything was read at construction
        path.unlink()
    for index, (expected, expected_target) in enumerate(expected_items):
        image, target = cached[index]
        assert torch.equal(image, expected) and image.stride() == expected.stride()
        torch.testing.assert_close(target["boxes"], expected_target["boxes"])
        image.add_(1.0)  # callers may modify what they get: the cache keeps its own pixels
        assert torch.equal(cached[index][0], expected)
    with pytest.raises(FileNotFoundError):
        plain[0]


def test_image_cache_refuses_what_does_not_fit_and_reports_missing_files_at_start(tmp_path, monkeypatch):
    from detector.data import coco

    image_dir, ann_file = _write_coco(tmp_path)
    monkeypatch.setattr(coco, "available_memory_bytes", lambda: 2 * 3 * (20 * 30 + 16 * 16 + 24 * 24) - 1)
    with pytest.raises(ValueError, match=r"data\.cache_images: the 3 images of .*instances\.json need"):
        CocoDetection(image_dir, ann_file, cache_images=True)
    monkeypatch.setattr(coco, "available_memory_bytes", lambda: None)  # platform does not say: no check
    (image_dir / "c.png").unlink()
    with pytest.raises(FileNotFoundError, match="c.png"):
        CocoDetection(image_dir, ann_file, cache_images=True)


def test_loader_applies_transforms(coco_files):
    dataset = CocoDetection(*coco_files, transforms=Resize(40, 1000))
    image, target = dataset[1]
    assert image.shape == (3, 40, 60)
    torch.testing.assert_close(target["boxes"], torch.tensor([[4.0, 6.0, 24.0, 16.0]]))
    assert target["scale_factor"] == (2.0, 2.0)


# --------------------------------------------------------------------------------------
# The built-in dataset
# --------------------------------------------------------------------------------------

SMALL = dict(num_train=40, num_val=8, image_size=(96, 128), object_size=(8.0, 64.0))


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    return build_digits_dataset(tmp_path_factory.mktemp("digits"), seed=3, **SMALL)


def _load(path):
    return json.loads(path.read_text())


def _all_files(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_generator_is_deterministic(small_set, tmp_path):
    again = build_digits_dataset(tmp_path / "again", seed=3, **SMALL)
    assert again.root.name == small_set.root.name
    first, second = _all_files(small_set.root), _all_files(again.root)
    assert len(first) == 40 + 8 + 3  # images, two annotation files, params.json
    assert first == second


def test_generator_depends_on_seed(small_set, tmp_path):
    other = build_digits_dataset(tmp_path, seed=4, **SMALL)
    assert other.root.name != small_set.root.name
    assert _load(other.train_annotations)["annotations"] != _load(small_set.train_annotations)["annotations"]
    first = (small_set.train_images / "000001.png").read_bytes()
    assert (other.train_images / "000001.png").read_bytes() != first


def test_single_class_variant_has_the_same_images_and_one_category(small_set, tmp_path):
    single = build_digits_dataset(tmp_path, seed=3, single_class=True, **SMALL)
    assert single.root.name != small_set.root.name
    for split in ("train_annotations", "val_annotations"):
        ten, one = _load(getattr(small_set, split)), _load(getattr(single, split))
        assert one["categories"] == [{"id": 1, "name": "digit", "supercategory": "digit"}]
        assert {a["category_id"] for a in one["annotations"]} == {1} and len(ten["categories"]) == 10
        assert [a["bbox"] for a in one["annotations"]] == [a["bbox"] for a in ten["annotations"]]
    assert _all_files(single.train_images) == _all_files(small_set.train_images)


def test_data_seed_is_separate_from_the_training_seed(tmp_path, monkeypatch):
    from detector.configs import get_config
    from detector.data import loaders

    seeds = []
    monkeypatch.setattr(loaders, "build_digits_dataset", lambda root, seed, **kwargs: seeds.append(seed) or small_paths)
    small_paths = build_digits_dataset(tmp_path, seed=3, **SMALL)
    for overrides in (["seed=5"], ["seed=5", "data.seed=2"], ["seed=7", "data.seed=2"]):
        loaders.dataset_paths(get_config("demo", overrides))
    assert seeds == [5, 2, 2]  # data.seed = None follows the training seed; set, it stays fixed


def test_generator_reuses_the_cache(small_set, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("regenerated a cached dataset")

    monkeypatch.setattr(synthetic, "_generate", fail)
    again = build_digits_dataset(small_set.root.parent, seed=3, **SMALL)
    assert again == small_set
    with pytest.raises(AssertionError, match="regenerated"):
        build_digits_dataset(small_set.root.parent, seed=3, **{**SMALL, "num_val": 9})


def test_generator_leaves_no_temporary_folder(small_set):
    assert [p.name for p in small_set.root.parent.iterdir()] == [small_set.root.name]


def test_generator_failure_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synthetic, "_generate_split", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        build_digits_dataset(tmp_path, seed=0, num_train=1, num_val=1)
    assert list(tmp_path.iterdir()) == []


def test_generator_default_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LABELASSIGN_DATA", str(tmp_path))
    paths = build_digits_dataset(seed=0, num_train=1, num_val=1, image_size=(32, 32), object_size=(8, 16))
    assert paths.root.parent == tmp_path
    assert paths.train_annotations == paths.root / "annotations" / "instances_train.json"
    assert paths.val_annotations.is_file() and (paths.val_images / "000001.png").is_file()


def test_generator_rejects_bad_parameters(tmp_path):
    with pytest.raises(ValueError, match="min_objects"):
        build_digits_dataset(tmp_path, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="image_size"):
        build_digits_dataset(tmp_path, image_size=(8, 64))


def test_generated_boxes_lie_inside_images_and_are_valid(small_set):
    for ann_file in (small_set.train_annotations, small_set.val_annotations):
        data = _load(ann_file)
        boxes = np.array([a["bbox"] for a in data["annotations"]], dtype=np.float64)
        assert len(boxes) > 0
        assert (boxes[:, 2] > 0).all() and (boxes[:, 3] > 0).all()
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= 128).all() and (boxes[:, 1] + boxes[:, 3] <= 96).all()
        np.testing.assert_array_equal([a["area"] for a in data["annotations"]], boxes[:, 2] * boxes[:, 3])
        assert all(a["iscrowd"] == 0 for a in data["annotations"])


def test_generated_objects_per_image_and_overlap(small_set):
    data = _load(small_set.train_annotations)
    per_image = {image["id"]: [] for image in data["images"]}
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        per_image[ann["image_id"]].append([x, y, x + w, y + h])
    counts = [len(boxes) for boxes in per_image.values()]
    assert min(counts) >= 1 and max(counts) <= 10
    assert len(set(counts)) > 3
    for boxes in per_image.values():
        for i in range(1, len(boxes)):
            assert synthetic._max_iou(boxes[i], boxes[:i]) <= 0.3


def test_generated_aspect_ratios_and_scales_vary(small_set):
    boxes = np.array([a["bbox"] for a in _load(small_set.train_annotations)["annotations"]], dtype=np.float64)
    ratio = boxes[:, 2] / boxes[:, 3]
    assert ratio.min() <= 1 / 4 and ratio.max() >= 4
    side = np.sqrt(boxes[:, 2] * boxes[:, 3])
    assert side.min() < 12 and side.max() > 40


def test_generated_class_coverage(small_set):
    data = _load(small_set.train_annotations)
    assert [c["id"] for c in data["categories"]] == list(range(1, 11))
    assert [c["name"] for c in data["categories"]] == [str(d) for d in range(10)]
    assert {a["category_id"] for a in data["annotations"]} == set(range(1, 11))


def test_digit_split_is_disjoint_stratified_and_seeded():
    from sklearn.datasets import load_digits

    classes = load_digits().target
    split = digit_split(0)
    assert not set(split["train"]) & set(split["val"])
    assert len(split["train"]) + len(split["val"]) == len(classes)
    for digit in range(10):
        assert (classes[split["val"]] == digit).sum() == round(0.2 * (classes == digit).sum())
    np.testing.assert_array_equal(digit_split(0)["val"], split["val"])
    assert not np.array_equal(digit_split(1)["val"], split["val"])


def test_digit_alpha_box_is_tight():
    from sklearn.datasets import load_digits

    ink = load_digits().images[0] / 16.0  # a real "0" with faint strokes
    alpha, (x1, y1, x2, y2) = synthetic._digit_alpha(ink, 30, 12)
    assert alpha.shape == (30, 12)
    assert (alpha > 0).sum() > 50
    outside = np.ones_like(alpha, dtype=bool)
    outside[y1:y2, x1:x2] = False
    assert (alpha[outside] == 0).all()
    assert alpha[y1, x1:x2].any() and alpha[y2 - 1, x1:x2].any()
    assert alpha[y1:y2, x1].any() and alpha[y1:y2, x2 - 1].any()
    assert ((alpha == 0) | (alpha >= synthetic.INK_THRESHOLD)).all()


def test_generated_set_is_valid_coco(small_set):
    from pycocotools.coco import COCO

    coco = COCO(str(small_set.val_annotations))
    assert sorted(coco.getCatIds()) == list(range(1, 11))
    assert len(coco.getImgIds()) == 8
    info = coco.loadImgs(1)[0]
    with Image.open(small_set.val_images / info["file_name"]) as image:
        assert image.size == (info["width"], info["height"]) == (128, 96)
        assert image.mode == "RGB"


def test_generated_set_loads_and_batches(small_set):
    dataset = CocoDetection(small_set.train_images, small_set.train_annotations)
    assert len(dataset) == 40 and dataset.num_dropped_degenerate == 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, collate_fn=collate)
    batch = next(iter(loader))
    assert batch.images.shape == (4, 3, 128, 128)
    # the background is cluttered: not a flat colour
    assert float(batch.images[0, :, :96, :128].std()) > 0.05


def test_generator_command_line(tmp_path, capsys):
    synthetic.main(["--out", str(tmp_path), "--num-train", "2", "--num-val", "1", "--image-size", "32", "48"])
    printed = capsys.readouterr().out
    folder = next(tmp_path.iterdir())
    assert f"train_annotations: {folder / 'annotations' / 'instances_train.json'}" in printed
    assert _load(folder / "annotations" / "instances_val.json")["images"][0]["width"] == 48


# --------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------


def _marker(height, width, box):
    """(3, H, W) zeros with ones on the integer xyxy ``box``; target with that box."""
    image = torch.zeros(3, height, width)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 1.0
    target = {
        "boxes": torch.tensor([box], dtype=torch.float32),
        "labels": torch.tensor([0]),
        "ignore_boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]),
        "image_id": 1,
        "orig_size": (height, width),
        "scale_factor": (1.0, 1.0),
        "flipped": False,
    }
    return image, target


def _marker_box(image):
    """Tight xyxy box of the pixels above 0.5 in channel 0."""
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    return torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)


def test_resize_upscale_keeps_boxes_on_the_marker():
    image, target = _marker(40, 60, (5, 10, 25, 20))
    resized, out = Resize(80, 200)(image, target)
    assert resized.shape == (3, 80, 120)
    torch.testing.assert_close(out["boxes"], torch.tensor([[10.0, 20.0, 50.0, 40.0]]))
    torch.testing.assert_close(_marker_box(resized), out["boxes"])
    torch.testing.assert_close(out["ignore_boxes"], torch.tensor([[0.0, 0.0, 4.0, 4.0]]))
    assert out["scale_factor"] == (2.0, 2.0)


def test_resize_to_the_same_size_returns_an_equal_copy():
    image, target = _marker(40, 60, (5, 10, 25, 20))
    resized, out = Resize(40, 200)(image, target)
    expected = torch.nn.functional.interpolate(image[None], size=(40, 60), mode="bilinear", align_corners=False)[0]
    assert torch.equal(resized, expected) and torch.equal(resized, image)
    assert resized.data_ptr() != image.data_ptr()
    torch.testing.assert_close(out["boxes"], target["boxes"])
    assert out["scale_factor"] == (1.0, 1.0)


def test_resize_caps_the_longer_side():
    image, target = _marker(40, 100, (20, 8, 60, 32))
    resized, out = Resize(60, 75)(image, target)
    assert resized.shape == (3, 30, 75)
    assert out["scale_factor"] == (0.75, 0.75)
    torch.testing.assert_close(out["boxes"], torch.tensor([[15.0, 6.0, 45.0, 24.0]]))
    torch.testing.assert_close(_marker_box(resized), out["boxes"], atol=1.0, rtol=0.0)


def test_resize_uses_exact_per_axis_factors():
    image, target = _marker(33, 50, (10, 11, 30, 22))
    resized, out = Resize(20)(image, target)
    height, width = resized.shape[-2:]
    assert (height, width) == (20, int(50 * 20 / 33 + 0.5))
    sx, sy = out["scale_factor"]
    assert sx == width / 50 and sy == height / 33
    torch.testing.assert_close(out["boxes"], target["boxes"] * torch.tensor([sx, sy, sx, sy]))


def test_resize_multi_scale_is_seeded():
    image, target = _marker(40, 60, (5, 10, 25, 20))

    def heights(seed):
        resize = Resize((32, 48, 64), 1000, generator=torch.Generator().manual_seed(seed))
        return [resize(image, target)[0].shape[1] for _ in range(30)]

    assert heights(0) == heights(0)
    assert heights(0) != heights(1)
    assert set(heights(0)) == {32, 48, 64}


def test_flip_moves_boxes_with_the_marker():
    image, target = _marker(40, 60, (5, 10, 25, 20))
    flipped, out = RandomHorizontalFlip(p=1.0)(image, target)
    torch.testing.assert_close(out["boxes"], torch.tensor([[35.0, 10.0, 55.0, 20.0]]))
    torch.testing.assert_close(_marker_box(flipped), out["boxes"])
    torch.testing.assert_close(out["ignore_boxes"], torch.tensor([[58.0, 0.0, 60.0, 2.0]]))
    assert out["flipped"] is True
    assert target["flipped"] is False  # input untouched


def test_flip_twice_is_identity():
    image, target = _marker(40, 60, (5, 10, 25, 20))
    image = image + torch.rand(image.shape, generator=torch.Generator().manual_seed(0))
    twice, out = hflip(*hflip(image, target))
    torch.testing.assert_close(twice, image, rtol=0, atol=0)
    torch.testing.assert_close(out["boxes"], target["boxes"], rtol=0, atol=0)
    assert out["flipped"] is False


def test_flip_probability_and_seed():
    image, target = _marker(8, 8, (1, 1, 3, 3))
    assert RandomHorizontalFlip(p=0.0)(image, target)[1]["flipped"] is False

    def draws(seed):
        flip = RandomHorizontalFlip(0.5, generator=torch.Generator().manual_seed(seed))
        return [flip(image, target)[1]["flipped"] for _ in range(40)]

    assert draws(5) == draws(5)
    assert 5 < sum(draws(5)) < 35


def test_normalize():
    image, target = _marker(4, 6, (1, 1, 3, 3))
    out_image, out = Normalize(mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 2.0))(image, target)
    torch.testing.assert_close(out_image[:, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    torch.testing.assert_close(out_image[:, 1, 1], torch.tensor([1.0, 3.0, 0.5]))
    torch.testing.assert_close(out["boxes"], target["boxes"])


def test_to_original_coordinates_undoes_resize_and_flip():
    image, target = _marker(33, 50, (10, 11, 30, 22))
    transform = Compose([Resize(47, 100), RandomHorizontalFlip(p=1.0), Normalize()])
    _, out = transform(image, target)
    assert out["flipped"] is True
    torch.testing.assert_close(to_original_coordinates(out["boxes"], out), target["boxes"])
    wide = torch.tensor([[-5.0, -5.0, 1e4, 1e4]])
    torch.testing.assert_close(to_original_coordinates(wide, out), torch.tensor([[0.0, 0.0, 50.0, 33.0]]))


# --------------------------------------------------------------------------------------
# Collate
# --------------------------------------------------------------------------------------


def _target(num_boxes):
    boxes = torch.tensor([[1.0, 2.0, 5.0, 7.0]] * num_boxes).reshape(-1, 4) + torch.arange(num_boxes)[:, None]
    return {"boxes": boxes, "labels": torch.arange(num_boxes, dtype=torch.int64)}


@pytest.mark.parametrize("divisor, expected", [(128, (256, 256)), (32, (160, 160)), (1, (130, 150))])
def test_collate_pads_to_a_multiple(divisor, expected):
    images = [torch.rand(3, 100, 150), torch.rand(3, 130, 90)]
    batch = collate([(images[0], _target(1)), (images[1], _target(2))], size_divisor=divisor)
    assert batch.images.shape == (2, 3, *expected)
    assert batch.images.shape[-2] % divisor == 0 and batch.images.shape[-1] % divisor == 0
    assert batch.image_sizes == [(100, 150), (130, 90)]
    for b, image in enumerate(images):
        h, w = image.shape[-2:]
        torch.testing.assert_close(batch.images[b, :, :h, :w], image)
        assert float(batch.images[b, :, h:].abs().sum() + batch.images[b, :, :, w:].abs().sum()) == 0.0
    assert len(batch.targets) == 2 and len(batch.targets[1]["boxes"]) == 2


def test_collate_rejects_an_empty_batch():
    with pytest.raises(ValueError, match="batch"):
        collate([])


def test_pad_targets_shapes_and_fill():
    targets = [_target(2), _target(0), _target(3)]
    gt_boxes, gt_labels, gt_valid, ignore_boxes, ignore_valid = pad_targets(targets)
    assert ignore_boxes.shape == (3, 0, 4) and ignore_valid.shape == (3, 0)  # no target has ignore regions
    assert gt_boxes.shape == (3, 3, 4) and gt_boxes.dtype == torch.float32
    assert gt_labels.shape == (3, 3) and gt_labels.dtype == torch.int64
    assert gt_valid.shape == (3, 3) and gt_valid.dtype == torch.bool
    torch.testing.assert_close(gt_valid, torch.tensor([[True, True, False], [False] * 3, [True] * 3]))
    torch.testing.assert_close(gt_labels[0], torch.tensor([0, 1, PAD_LABEL]))
    torch.testing.assert_close(gt_labels[1], torch.full((3,), PAD_LABEL))
    torch.testing.assert_close(gt_boxes[2], targets[2]["boxes"])
    torch.testing.assert_close(gt_boxes[0, :2], targets[0]["boxes"])
    assert float(gt_boxes[1].abs().sum()) == 0.0


def test_pad_targets_with_no_boxes_at_all():
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets([_target(0), _target(0)])
    assert gt_boxes.shape == (2, 0, 4)
    assert gt_labels.shape == (2, 0)
    assert gt_valid.shape == (2, 0)


def test_pad_targets_rejects_mismatched_labels():
    target = _target(2)
    target["labels"] = target["labels"][:1]
    with pytest.raises(ValueError, match="targets\\[0\\]"):
        pad_targets([target])


def test_pad_targets_carries_ignore_regions():
    targets = [_target(1), dict(_target(2), ignore_boxes=torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 5.0, 5.0]])),
               dict(_target(0), ignore_boxes=torch.zeros(0, 4))]
    padded = pad_targets(targets)
    assert padded.ignore_boxes.shape == (3, 2, 4) and padded.ignore_boxes.dtype == padded.gt_boxes.dtype
    torch.testing.assert_close(padded.ignore_valid, torch.tensor([[False, False], [True, True], [False, False]]))
    torch.testing.assert_close(padded.ignore_boxes[1], targets[1]["ignore_boxes"])
    assert float(padded.ignore_boxes[0].abs().sum()) == 0.0


def test_pad_boxes_for_ignore_regions():
    boxes, valid = pad_boxes([torch.zeros(0, 4), torch.ones(2, 4)])
    assert boxes.shape == (2, 2, 4)
    torch.testing.assert_close(valid, torch.tensor([[False, False], [True, True]]))


def test_batch_to_moves_tensors():
    batch = collate([(torch.rand(3, 8, 8), {**_target(1), "image_id": 3})], size_divisor=8)
    moved = batch.to("cpu")
    assert moved.targets[0]["image_id"] == 3
    torch.testing.assert_close(moved.images, batch.images)


# --------------------------------------------------------------------------------------
# image decoding: errors name the file and the image id; 16-bit images keep their range


def test_undecodable_images_name_the_file_and_the_image_id(tmp_path):
    from PIL import Image

    from detector.data.coco import decode_image

    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(good)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image" * 10)
    for path in (truncated, garbage):
        with pytest.raises(ValueError) as error:
            decode_image(path, image_id=17)
        assert str(path) in str(error.value) and "image id 17" in str(error.value)
    image = decode_image(good)
    assert image.shape == (3, 20, 30) and image.dtype == torch.float32 and float(image.max()) <= 1.0


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    from PIL import Image

    from detector.data.coco import decode_image

    values = np.linspace(0, 65535, 16 * 16).astype(np.uint16).reshape(16, 16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # a 16-bit grayscale PNG
    image = decode_image(path)
    assert image.shape == (3, 16, 16)
    torch.testing.assert_close(image[0], torch.from_numpy(values.astype(np.float32) / 65535.0))
    assert float((image >= 1.0).float().mean()) < 0.01  # one pixel at the top, not 99 %
    wide = tmp_path / "wide.tif"
    Image.fromarray(np.full((4, 4), 100000, dtype=np.int32), mode="I").save(wide)
    with pytest.raises(ValueError, match="32-bit integer image"):
        decode_image(wide, image_id=3)


def test_the_degenerate_box_warning_names_the_first_ids_and_a_count(tmp_path, caplog):
    data = _coco_dict()
    template = dict(data["annotations"][0])
    data["annotations"] += [dict(template, id=1000 + i, bbox=[0, 0, 0, 5]) for i in range(7)]
    dataset = CocoDetection(*_write_coco(tmp_path, data))
    (message,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert dataset.num_dropped_degenerate >= 7
    assert "annotation ids" in message and "1000" in message and f"and {dataset.num_dropped_degenerate - 5} more" in message


def test_check_reports_every_problem_of_a_split_at_once(tmp_path):
    from detector.data.coco import check_coco_dataset

    data = _coco_dict()
    data["annotations"][0]["category_id"] = 999  # unknown category
    data["annotations"][1]["bbox"] = "oops"  # malformed box
    image_dir, ann_file = _write_coco(tmp_path, data)
    first, second, third = IMAGES[0], IMAGES[1], IMAGES[2]
    (image_dir / first["file_name"]).write_bytes(b"garbage")  # undecodable
    (image_dir / second["file_name"]).unlink()  # missing
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(image_dir / third["file_name"])  # wrong size
    problems, summary = check_coco_dataset(image_dir, ann_file, progress=False)
    assert len(problems) == 5, problems
    text = "\n".join(problems)
    assert "unknown category_id 999" in text and "'bbox' must be a list" in text
    assert f"(image id {first['id']}): cannot decode" in text
    assert f"(image id {second['id']}): file not found" in text
    assert f"(image id {third['id']}): image is 3x3" in text
    assert summary["images"] == len(IMAGES)
    with pytest.raises(ValueError, match="unknown category_id 999"):  # the loader still stops at the first
        CocoDetection(image_dir, ann_file)


def test_train_check_data_command(tmp_path, capsys):
    from detector.train import main

    image_dir, ann_file = _write_coco(tmp_path)
    argv = ["demo", "data.dataset=coco", f"data.train_images={image_dir}", f"data.train_annotations={ann_file}",
            f"data.val_images={image_dir}", f"data.val_annotations={ann_file}", "--check-data", "--no-progress"]
    summaries = main(argv)
    assert summaries["train"]["images"] == len(IMAGES) and "no problems found" in capsys.readouterr().out
    (image_dir / IMAGES[0]["file_name"]).write_bytes(b"garbage")
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("cannot decode") == 2 and "2 problem(s) found" in err  # train and val name the same file


def test_available_memory_is_a_positive_byte_count_on_linux():
    import platform

    from detector.data.coco import available_memory_bytes

    available = available_memory_bytes()
    if platform.system() == "Linux":
        with open("/proc/meminfo") as f:
            total = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemTotal:"))
        assert 0 < available <= total
    else:
        assert available is None or available > 0
