"""python -m detector.predict: a checkpoint run on image files (specs/training.md §7b)."""
import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from detector import configs, engine, predict  # noqa: E402
from detector.checkpoint import save_checkpoint  # noqa: E402
from detector.data.coco import CocoDetection, decode_image  # noqa: E402
from detector.data import loaders  # noqa: E402
from detector.modeling import Detector  # noqa: E402
from tests.detector.test_train_smoke import IMAGE, tiny_config  # noqa: E402

pytestmark = pytest.mark.torch

NUM_CLASSES = 10
#: Shorter side of the resized test image: not the files' 64 px, so that mapping the boxes
#: back to original-image coordinates is exercised.
TEST_SIZE = 96
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """An untrained tiny model with varied scores and labels, saved as a run's last.pth,
    and the val images of its built-in digits (64 px)."""
    root = tmp_path_factory.mktemp("predict")
    config = tiny_config(root, "demo", f"data.test_min_size={TEST_SIZE}", "data.max_size=128", "data.digits_num_val=6",
                         "eval_batch_size=4", "inference.score_threshold=0.005")
    torch.manual_seed(0)
    model = Detector(config, NUM_CLASSES).eval()
    with torch.no_grad():
        model.head.cls_logits.weight.normal_(0.0, 0.3)  # scores of ~0.3-0.8 over several classes
    run_dir = root / "run"
    save_checkpoint({"model": model.state_dict(), "config": configs.to_dict(config), "num_classes": NUM_CLASSES},
                    run_dir / "last.pth")
    _, _, val_images, val_annotations = loaders.dataset_paths(config)
    info = json.loads(val_annotations.read_text())
    paths = [val_images / entry["file_name"] for entry in sorted(info["images"], key=lambda e: e["id"])]
    return SimpleNamespace(config=config, model=model, run_dir=run_dir, val_images=val_images,
                           val_annotations=val_annotations, paths=paths, categories=info["categories"])


def _run(argv, capsys):
    summary = predict.main([str(a) for a in argv] + ["--no-progress"])
    captured = capsys.readouterr()
    return summary, captured.out, captured.err


# ---------------------------------------------------------------------------------------
# the evaluation path


def test_predict_images_equals_run_inference_in_original_coordinates(tiny):
    val = CocoDetection(tiny.val_images, tiny.val_annotations, transforms=loaders.test_transform(tiny.config))
    expected = engine.run_inference(tiny.model, loaders.val_loader(tiny.config, val), CPU)
    got = predict.predict_images(tiny.model, tiny.config, tiny.paths, CPU)
    assert len(got) == len(expected) == len(tiny.paths)
    for index, (mine, theirs) in enumerate(zip(got, expected)):
        assert mine["image_id"] == index + 1 and mine["path"] == tiny.paths[index]
        assert mine["orig_size"] == (IMAGE, IMAGE)
        assert len(theirs["boxes"]) > 0
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-5)
        torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-6)
        assert torch.equal(mine["labels"], theirs["labels"])
        # original pixels (64), not those of the 96 px network input
        assert float(mine["boxes"].max()) <= IMAGE and float(mine["boxes"].min()) >= 0
    assert len(torch.cat([g["labels"] for g in got]).unique()) > 1


# ---------------------------------------------------------------------------------------
# the command


@pytest.fixture()
def folder(tiny, tmp_path):
    """a.png, c.png, e.png: val images; b.png: a truncated PNG; d.png: text; notes.txt."""
    images = tmp_path / "images"
    images.mkdir()
    for name, source in zip(("a", "c", "e"), tiny.paths):
        shutil.copy(source, images / f"{name}.png")
    (images / "b.png").write_bytes(tiny.paths[3].read_bytes()[:120])
    (images / "d.png").write_text("not an image\n")
    (images / "notes.txt").write_text("hello\n")
    return images


def test_coco_results_drawings_and_skipped_files(tiny, folder, tmp_path, capsys):
    out = tmp_path / "out"
    summary, printed, err = _run([tiny.run_dir, folder, folder / "notes.txt", "--out", out], capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 3, err
    for name in ("b.png", "d.png", "notes.txt"):
        assert sum(line.startswith(f"warning: skipped {folder / name}: ") for line in warnings) == 1, err
    assert "error" not in err
    assert summary["images"] == 3 and summary["skipped"] == 3
    assert "3 images predicted" in printed and "3 skipped" in printed and str(out) in printed

    # ids number the folder's images in order; the unreadable b (2) and d (4) are left out
    images = json.loads((out / predict.IMAGES_FILE).read_text())
    assert images == {"1": str(folder / "a.png"), "3": str(folder / "c.png"), "5": str(folder / "e.png")}
    results = json.loads((out / predict.PREDICTIONS_FILE).read_text())
    assert isinstance(results, list) and results
    expected = predict.predict_images(tiny.model, tiny.config, [folder / n for n in ("a.png", "c.png", "e.png")], CPU,
                                      image_ids=[1, 3, 5])
    category_ids = [c["id"] for c in sorted(tiny.categories, key=lambda c: c["id"])]
    for entry in expected:
        mine = [r for r in results if r["image_id"] == entry["image_id"]]
        keep = entry["scores"] >= tiny.config.inference.score_threshold
        assert len(mine) == int(keep.sum()) > 0
        order = torch.argsort(entry["scores"], descending=True, stable=True)
        for record, i in zip(mine, order[keep[order]].tolist()):
            x1, y1, x2, y2 = entry["boxes"][i].tolist()
            assert record["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-5)
            assert record["score"] == pytest.approx(float(entry["scores"][i]), abs=1e-6)
            assert record["category_id"] == category_ids[int(entry["labels"][i])]
            assert record["file_name"] == images[str(entry["image_id"])]

    # one drawing per readable image: enlarged to 512 px, with boxes on it
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "c.png", "e.png"]
    factor = predict.drawing_style(IMAGE, IMAGE)[0]
    for name in ("a", "c", "e"):
        drawing = np.asarray(Image.open(out / f"{name}.png").convert("RGB"))
        assert drawing.shape == (IMAGE * factor, IMAGE * factor, 3)
        plain = np.asarray(Image.open(folder / f"{name}.png").convert("RGB")).repeat(factor, 0).repeat(factor, 1)
        assert (drawing != plain).any(axis=-1).mean() > 0.02


def test_per_image_json_score_threshold_and_duplicate_stems(tiny, tmp_path, capsys):
    first, second = tmp_path / "x", tmp_path / "y"
    first.mkdir(), second.mkdir()
    shutil.copy(tiny.paths[0], first / "img.png")
    shutil.copy(tiny.paths[1], second / "img.png")
    out = tmp_path / "out"
    summary, _, err = _run([tiny.run_dir, first / "img.png", second / "*.png", "--format", "per-image",
                            "--score-threshold", "0.6", "--out", out], capsys)
    assert summary["images"] == 2 and summary["skipped"] == 0 and "warning" not in err
    assert sorted(p.name for p in out.iterdir()) == ["img-2.json", "img-2.png", "img.json", "img.png"]
    expected = predict.predict_images(tiny.model, tiny.config, [first / "img.png", second / "img.png"], CPU)
    for stem, entry in zip(("img", "img-2"), expected):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["image"] == str(entry["path"]) and record["drawing"] == f"{stem}.png"
        assert (record["height"], record["width"]) == (IMAGE, IMAGE)
        detections = record["detections"]
        assert len(detections) == int((entry["scores"] >= 0.6).sum()) > 0
        assert len(detections) < len(entry["scores"])  # the threshold removed some
        assert [d["score"] for d in detections] == sorted((d["score"] for d in detections), reverse=True)
        for d in detections:
            assert d["score"] >= 0.6
            x1, y1, x2, y2 = d["box_xyxy"]
            assert d["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1])
            assert d["category_name"] == str(d["label"]) and d["category_id"] == d["label"] + 1
            i = int(torch.argmin((entry["scores"] - d["score"]).abs()))
            assert d["box_xyxy"] == pytest.approx(entry["boxes"][i].tolist(), abs=1e-5)
    assert not (out / predict.PREDICTIONS_FILE).exists()


def test_no_draw_writes_only_json(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    _run([tiny.run_dir / "last.pth", tiny.paths[0], "--no-draw", "--out", out], capsys)
    assert sorted(p.name for p in out.iterdir()) == [predict.IMAGES_FILE, predict.PREDICTIONS_FILE]


@pytest.mark.parametrize("case", ["empty folder", "missing input", "missing checkpoint", "bad option"])
def test_user_errors_exit_2_with_one_error_line(tiny, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    checkpoint, inputs, extra = tiny.run_dir, [tiny.paths[0]], []
    if case == "empty folder":
        inputs = [tmp_path / "empty"]
    elif case == "missing input":
        inputs = [tmp_path / "nothing.png", tmp_path / "none" / "*.jpg"]
    elif case == "missing checkpoint":
        checkpoint = tmp_path / "no-run" / "last.pth"
    else:
        extra = ["--max-detections", "0"]
    with pytest.raises(SystemExit) as exit_info:
        predict.main([str(checkpoint), *map(str, inputs), "--out", str(tmp_path / "out"), "--no-progress", *extra])
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    if case == "missing checkpoint":
        assert "checkpoint not found" in errors[0]
    if case in ("empty folder", "missing input"):
        assert "no image found" in errors[0]


# ---------------------------------------------------------------------------------------
# pieces


def test_collect_images_folders_patterns_order_and_repeats(tmp_path):
    for name in ("b.JPG", "a.png", "c.txt", ".hidden.png", "sub/d.tiff", "sub/e.webp"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    paths, problems = predict.collect_images([tmp_path])
    assert [p.name for p in paths] == ["a.png", "b.JPG"] and problems == []
    paths, _ = predict.collect_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a.png", "b.JPG", "sub/d.tiff", "sub/e.webp"]
    paths, problems = predict.collect_images([tmp_path / "sub" / "*", tmp_path / "a.png", tmp_path, tmp_path / "c.txt",
                                              tmp_path / "x.png"])
    assert [p.name for p in paths] == ["d.tiff", "e.webp", "a.png", "b.JPG"]
    assert [(item, reason.split(" (")[0]) for item, reason in problems] == [
        (str(tmp_path / "c.txt"), "not an image file"), (str(tmp_path / "x.png"), "no such file or folder")]


def test_output_stems_never_collide():
    stems = predict.output_stems(["x/img.png", "y/img.jpg", "z/IMG.png", "img-2.png", "other.png"])
    assert stems == ["img", "img-2", "IMG-3", "img-2-2", "other"]
    assert len({s.lower() for s in stems}) == len(stems)


@pytest.mark.parametrize("side", [128, 2000])
def test_drawing_labels_scale_with_the_image(side):
    factor, line, font = predict.drawing_style(side, side)
    canvas_side = side * factor
    assert canvas_side >= predict.DRAW_MIN_SIDE and font >= canvas_side / 45 and line >= canvas_side / 350
    image = torch.zeros(3, side, side)
    box = [side * 0.25, side * 0.5, side * 0.75, side * 0.9]
    drawing = np.asarray(predict.draw_detections(image, [box], [0.87], [2], ["a", "b", "cat"]))
    assert drawing.shape == (canvas_side, canvas_side, 3)
    colour = np.array(predict.PALETTE[2])
    is_colour = (drawing == colour).all(axis=-1)
    top = int(box[1] * factor)
    tag_rows = np.nonzero(is_colour[:top - line].any(axis=1))[0]
    assert len(tag_rows) >= 0.7 * font  # a filled tag about one text line high, above the box
    tag = drawing[tag_rows[0]:tag_rows[-1] + 1, int(box[0] * factor):int(box[2] * factor)]
    assert ((tag != colour).any(axis=-1)).sum() > font  # text drawn on it
    assert is_colour[top + canvas_side // 20, int(box[0] * factor)]  # the box outline


def test_categories_of_digits_match_the_generated_files(tiny):
    state = {}
    found = predict.find_categories(state, tiny.config, NUM_CLASSES)
    by_id = {c["id"]: c["name"] for c in tiny.categories}
    assert found.ids == sorted(by_id) and found.names == [by_id[i] for i in sorted(by_id)]
    single = configs.apply_overrides(tiny.config, ["data.digits_single_class=true"])
    assert predict.find_categories(state, single, 1).names == ["digit"]


def test_categories_from_checkpoint_annotation_file_or_label_index(tiny, tmp_path):
    annotations = tmp_path / "val.json"
    annotations.write_text(json.dumps({"images": [], "annotations": [],
                                       "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]}))
    coco = configs.apply_overrides(tiny.config, ["data.dataset=coco", f"data.val_annotations={annotations}"])
    found = predict.find_categories({}, coco, 2)
    assert (found.ids, found.names) == ([3, 7], ["cat", "dog"])
    stored = predict.find_categories({"category_ids": [5, 9], "category_names": ["x", "y"]}, coco, 2)
    assert (stored.ids, stored.names) == ([5, 9], ["x", "y"])
    fallback = predict.find_categories({}, coco, 3)  # the file has 2 categories, the model 3
    assert (fallback.ids, fallback.names, fallback.source) == ([0, 1, 2], ["class 0", "class 1", "class 2"], "")
    missing = configs.apply_overrides(coco, [f"data.val_annotations={tmp_path / 'gone.json'}"])
    assert predict.find_categories({}, missing, 2).names == ["class 0", "class 1"]


def test_an_unreadable_image_becomes_a_skip_not_an_exception(tiny, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG garbage")
    dataset = predict.ImageFiles([bad, tiny.paths[0], tmp_path / "gone.png"], [1, 2, 3], loaders.test_transform(tiny.config))
    assert isinstance(dataset[0], predict.Skipped) and dataset[0].path == str(bad)
    assert isinstance(dataset[2], predict.Skipped)
    image, target = dataset[1]
    assert image.shape == (3, TEST_SIZE, TEST_SIZE) and target["orig_size"] == (IMAGE, IMAGE)
    torch.testing.assert_close(image, loaders.test_transform(tiny.config)(decode_image(tiny.paths[0]), {})[0])
    skipped = []
    got = predict.predict_images(tiny.model, tiny.config, [bad, tiny.paths[0]], CPU,
                                 on_skip=lambda path, reason: skipped.append((path, reason)))
    assert [g["image_id"] for g in got] == [2] and skipped[0][0] == str(bad) and "cannot decode" in skipped[0][1]
