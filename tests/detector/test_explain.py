"""``detector.explain``: the drawn assignment is the training assignment (specs/training.md,
"Seeing an assignment")."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from detector import configs  # noqa: E402
from detector.checkpoint import save_checkpoint  # noqa: E402
from detector.data.collate import collate, pad_targets  # noqa: E402
from detector.data.loaders import size_divisor  # noqa: E402
from detector.explain import compare, draw_explanation, explain_assignment, main  # noqa: E402
from detector.modeling import Detector  # noqa: E402
from detector.modeling.assigners import assign  # noqa: E402
from detector.modeling.objective import apply_ignore_regions  # noqa: E402
from detector.pseudo_iou import pseudo_iou_explicit  # noqa: E402

pytestmark = pytest.mark.torch

SIZE = 96
NUM_CLASSES = 3
#: A fixed scene: three overlapping objects of different sizes and one ignore region.
BOXES = [[10.0, 12.0, 50.0, 44.0], [40.0, 30.0, 90.0, 88.0], [60.0, 5.0, 80.0, 25.0]]
LABELS = [0, 1, 2]
IGNORE_BOXES = [[0.0, 56.0, 34.0, 96.0]]
SMALL = ["backbone.tiny_widths=8,16,16,32", "fpn.out_channels=16", "head.width=16", "head.depth=1",
         "head.gn_groups=8", "threads=1"]


def tiny(name, *extra):
    return configs.get_config(name, SMALL + list(extra))


@pytest.fixture(scope="module")
def scene():
    """(image (3, H, W) RGB in [0, 1], target) of the fixed scene."""
    generator = torch.Generator().manual_seed(0)
    image = 0.2 + 0.1 * torch.rand((3, SIZE, SIZE), generator=generator)
    for (x1, y1, x2, y2), label in zip(BOXES, LABELS):
        image[label, int(y1):int(y2), int(x1):int(x2)] = 0.9
    target = {"boxes": torch.tensor(BOXES), "labels": torch.tensor(LABELS), "ignore_boxes": torch.tensor(IGNORE_BOXES),
              "image_id": 1}
    return image, target


def random_model(config):
    """A randomly initialised model (seed 0) whose box outputs vary from anchor to anchor
    (the regression layer's weights enlarged, as after some training), so that predicted
    IoUs differ from anchor IoUs."""
    torch.manual_seed(0)
    model = Detector(config, NUM_CLASSES).eval()
    with torch.no_grad():
        model.head.box_pred.weight.mul_(20.0)
    return model


def training_assignment(config, image, target, model=None):
    """What the training objective assigns (written out here, independently of explain.py):
    the model's priors of the padded image, decoded detached predictions, assign, ignore."""
    batch = collate([(image, target)], size_divisor=size_divisor(config))
    padded = tuple(batch.images.shape[-2:])
    targets = pad_targets(batch.targets)
    model = model if model is not None else Detector(config, NUM_CLASSES)
    priors = model.priors(padded)
    pred_boxes = pred_scores = None
    if config.assign.name in ("dynamic_atss", "tal", "simota", "dsl"):
        from detector.data.transforms import Normalize

        with torch.no_grad():
            outputs = model(Normalize.for_style(config.backbone.style)(batch.images, {})[0])
        pred_boxes = priors.decode(outputs.box_regression.float()).detach()
        pred_scores = outputs.cls_logits.float().sigmoid()
    assignment = assign(config.assign, priors, targets, pred_boxes, 0, 1,
                        pred_scores=pred_scores if config.assign.name in ("tal", "simota", "dsl") else None)
    return apply_ignore_regions(priors, assignment, targets), priors


def drawn_positives(figure, gt):
    """(P, 2) centres of the positives of ``gt`` drawn on the image panel."""
    found = [c for axis in figure.axes for c in axis.collections if c.get_gid() == f"positives-gt{gt}"]
    return np.zeros((0, 2)) if not found else np.asarray(found[0].get_offsets())


CASES = [("demo_atss", ()), ("demo", ()), ("demo_piou", ())]  # ATSS, Dynamic ATSS, Pseudo-IoU


@pytest.mark.parametrize("name, extra", CASES)
def test_positives_are_the_assigners_output(scene, name, extra):
    image, target = scene
    config = tiny(name, *extra)
    model = random_model(config) if name == "demo" else None
    explanation = explain_assignment(config, image, target, model=model, normalized=False)
    expected, priors = training_assignment(config, image, target, model)
    matched = expected.matched_gt[0].numpy()
    np.testing.assert_array_equal(explanation.matched_gt, matched)
    np.testing.assert_array_equal(explanation.points, priors.points.numpy())
    assert explanation.assigner == config.assign.name
    assert len(explanation.ignored) > 0 and np.all(matched[explanation.ignored] == -2)
    figure = draw_explanation(explanation)
    for g in range(len(BOXES)):
        positives = np.flatnonzero(matched == g)
        assert len(positives) > 0, (name, g)
        np.testing.assert_array_equal(explanation.positives(g), positives)
        np.testing.assert_allclose(drawn_positives(figure, g), priors.points.numpy()[positives])
        # every positive is one of the GT's candidates, drawn on its level
        assert set(positives) <= set(explanation.candidates[g].tolist())
        drawn = [c for c in figure.axes[0].collections if c.get_gid().startswith(f"candidates-gt{g}-")]
        assert sum(len(c.get_offsets()) for c in drawn) == len(explanation.candidates[g])


@pytest.mark.parametrize("name", ["demo_tal", "demo_simota", "demo_dsl"])
def test_score_reading_assigners_are_explained_with_the_models_scores(scene, name):
    """TAL, SimOTA and DSL read the class probabilities: the explanation assigns as training
    does, and lists each GT's selected anchors without the -1 padding of candidate_index."""
    image, target = scene
    config = tiny(name, "assign.atss_warmup=0" if name == "demo_tal" else "loss.soft_target=assigner")
    model = random_model(config)
    explanation = explain_assignment(config, image, target, model=model, normalized=False)
    expected, _ = training_assignment(config, image, target, model)
    np.testing.assert_array_equal(explanation.matched_gt, expected.matched_gt[0].numpy())
    assert (explanation.matched_gt >= 0).any()
    assert all((c >= 0).all() for c in explanation.candidates)
    draw_explanation(explanation)


def test_atss_values_and_thresholds(scene):
    image, target = scene
    config = tiny("demo_atss")
    e = explain_assignment(config, image, target, normalized=False)
    for g in range(len(BOXES)):
        values = e.candidate_values[g]["anchor_iou"]
        assert len(values) == len(e.candidates[g]) == 9 * len(e.level_strides)
        assert np.isclose(e.thresholds[g], values.mean() + values.std(ddof=1), atol=1e-6)
        positive = e.matched_gt[e.candidates[g]] == g
        assert np.all(values[positive] >= e.thresholds[g])
        assert [len(c) for c in e.candidates_by_level(g)] == [9] * len(e.level_strides)


def test_max_iou_candidates_are_the_anchors_within_reach_of_each_gt(scene):
    """RetinaNet's max-IoU: a GT's candidates are its anchors at IoU >= neg_iou_thr (and its
    low-quality matches), with their anchor IoUs; the positives are among them."""
    import torchvision

    image, target = scene
    config = tiny("demo_retinanet")
    e = explain_assignment(config, image, target, normalized=False)
    ious = torchvision.ops.box_iou(torch.as_tensor(e.gt_boxes, dtype=torch.float32),
                                   torch.as_tensor(e.anchors, dtype=torch.float32)).numpy()
    figure = draw_explanation(e)
    for g in range(len(BOXES)):
        expected = np.flatnonzero((ious[g] >= config.assign.neg_iou_thr - 1e-6) | (e.matched_gt == g))
        np.testing.assert_array_equal(e.candidates[g], expected)
        np.testing.assert_allclose(e.candidate_values[g]["anchor_iou"], ious[g, expected], atol=1e-6)
        assert set(e.positives(g).tolist()) <= set(e.candidates[g].tolist()) and len(e.positives(g)) > 0
        assert e.thresholds[g] == config.assign.pos_iou_thr
        assert any(line.get_gid() == f"threshold-gt{g}" for axis in figure.axes for line in axis.lines)


def test_dynamic_atss_parts_and_reference(scene):
    image, target = scene
    config = tiny("demo", "assign.pred_weight=0.5")
    model = random_model(config)
    e = explain_assignment(config, image, target, model=model, normalized=False)
    assert e.weights == (0.5, 1.0)
    atss, _ = training_assignment(tiny("demo_atss"), image, target)
    np.testing.assert_array_equal(e.atss_matched_gt, atss.matched_gt[0].numpy())
    for g in range(len(BOXES)):
        v = e.candidate_values[g]
        np.testing.assert_allclose(v["combined_iou"], 0.5 * v["pred_iou"] + v["anchor_iou"], rtol=1e-6)
        positive = e.matched_gt[e.candidates[g]] == g
        assert np.all(v["combined_iou"][positive] >= e.thresholds[g])
    figure = draw_explanation(e)
    labels = [t.get_text() for axis in figure.axes for t in axis.get_legend().get_texts()]
    assert any("ATSS threshold" in text for text in labels)
    assert "predictions: model" in figure.get_suptitle()


def test_prediction_aware_assigner_needs_a_model(scene):
    image, target = scene
    with pytest.raises(ValueError, match="predictions"):
        explain_assignment(tiny("demo"), image, target, normalized=False)


def test_pseudo_box_of_a_point(scene):
    image, target = scene
    e = explain_assignment(tiny("demo_piou"), image, target, normalized=False, point=(29.0, 27.0))
    p = e.point
    assert p.xy == (28.0, 28.0) and p.gt == 0  # nearest stride-8 point; inside GT 0 only
    x1, y1, x2, y2 = BOXES[0]
    np.testing.assert_allclose(p.pseudo_box, [28 - (x2 - x1) / 2, 28 - (y2 - y1) / 2, 28 + (x2 - x1) / 2, 28 + (y2 - y1) / 2])
    assert np.isclose(p.value, float(pseudo_iou_explicit(torch.tensor([[28.0, 28.0]]), torch.tensor([BOXES[0]]))[0, 0]))
    figure = draw_explanation(e)
    assert any(patch.get_gid() == "pseudo-box" for patch in figure.axes[0].patches)


def test_compare_lists_are_set_differences(scene):
    image, target = scene
    atss, dynamic = tiny("demo_atss"), tiny("demo")
    model = random_model(dynamic)
    result = compare(atss, dynamic, image, target, model=model, normalized=False)
    before = training_assignment(atss, image, target)[0].matched_gt[0].numpy()
    after = training_assignment(dynamic, image, target, model)[0].matched_gt[0].numpy()
    pairs_a = {(int(before[a]), a) for a in np.flatnonzero(before >= 0)}
    pairs_b = {(int(after[a]), a) for a in np.flatnonzero(after >= 0)}
    assert result.added == sorted(pairs_b - pairs_a)
    assert result.removed == sorted(pairs_a - pairs_b)
    assert result.added or result.removed  # the scene does change
    marks = {c.get_gid(): len(c.get_offsets()) for c in result.figure.axes[1].collections}
    assert marks.get("added", 0) == len(result.added) and marks.get("removed", 0) == len(result.removed)


@pytest.fixture(scope="module")
def coco_files(scene, tmp_path_factory):
    """The scene as a PNG and a COCO annotation file (image id 7, one crowd box)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("explain")
    image, _ = scene
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / "scene.png")
    annotations = [{"id": i + 1, "image_id": 7, "category_id": label + 1, "iscrowd": 0, "area": 1.0,
                    "bbox": [x1, y1, x2 - x1, y2 - y1]} for i, ((x1, y1, x2, y2), label) in enumerate(zip(BOXES, LABELS))]
    x1, y1, x2, y2 = IGNORE_BOXES[0]
    annotations.append({"id": 10, "image_id": 7, "category_id": 1, "iscrowd": 1, "area": 1.0,
                        "bbox": [x1, y1, x2 - x1, y2 - y1]})
    data = {"images": [{"id": 7, "file_name": "scene.png", "height": SIZE, "width": SIZE}],
            "annotations": annotations, "categories": [{"id": k + 1, "name": f"c{k}"} for k in range(NUM_CLASSES)]}
    (folder / "scene.json").write_text(json.dumps(data))
    return folder


def cli(coco_files, name, *args):
    overrides = SMALL + [f"data.test_min_size={SIZE}", f"data.max_size={SIZE}", "data.crowd=ignore"]
    return main([name, *overrides, "--image", str(coco_files / "scene.png"), "--annotations",
                 str(coco_files / "scene.json"), "--image-id", "7", *args])


def test_cli_writes_a_png(coco_files, capsys):
    out = cli(coco_files, "demo_piou", "--point", "29", "27", "--out", str(coco_files / "piou.png"))
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "GT 0 (c0)" in printed and "pseudo-IoU" in printed and "ignored locations" in printed


def test_cli_prediction_aware_without_checkpoint_is_exit_2(coco_files, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(coco_files, "demo", "--out", str(coco_files / "never.png"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--checkpoint" in err[0]
    assert not (coco_files / "never.png").exists()


def test_cli_compare_with_a_checkpoint(coco_files, capsys):
    config = tiny("demo")
    model = random_model(config)
    checkpoint = save_checkpoint({"model": model.state_dict(), "config": configs.to_dict(config),
                                  "num_classes": NUM_CLASSES}, coco_files / "last.pth")
    out = cli(coco_files, "demo", "--checkpoint", str(checkpoint), "--compare", "atss", "dynamic_atss",
              "--out", str(coco_files / "compare.png"))
    assert out.is_file()
    printed = capsys.readouterr().out
    assert printed.count("atss") >= len(BOXES) and "dynamic_atss" in printed and "+" in printed
