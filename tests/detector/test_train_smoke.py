"""Training pipeline smoke tests: real steps on tiny generated data (specs/training.md)."""
import json
import math

import pytest

torch = pytest.importorskip("torch")

from detector import configs, engine  # noqa: E402
from detector.data import loaders  # noqa: E402
from detector.data.collate import collate  # noqa: E402
from detector.modeling import Detector  # noqa: E402
from detector.train import NonFiniteLossError, train  # noqa: E402

pytestmark = pytest.mark.torch

IMAGE = 64


def tiny_config(root, name="demo", *extra):
    """A very small model on a tiny digits set generated under ``root`` (64 px, CPU)."""
    overrides = [
        f"data.root={root}", "data.digits_num_train=16", "data.digits_num_val=8", f"data.digits_image_size={IMAGE}",
        "data.digits_max_objects=3", "data.digits_object_size=12,40", f"data.min_size={IMAGE}", f"data.max_size={IMAGE}",
        f"data.test_min_size={IMAGE}", "data.num_workers=0", "data.flip=0.5",
        "backbone.tiny_widths=8,16,16,32", "fpn.out_channels=16", "head.width=16", "head.depth=1", "head.gn_groups=8",
        "solver.batch_size=4", "solver.epochs=2", "solver.steps=1", "solver.warmup_iters=2", "solver.lr=0.01",
        "eval_batch_size=8", "threads=2", f"output_dir={root}/runs",
    ]
    return configs.get_config(name, overrides + list(extra))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


def _fixed_batch(config):
    data = loaders.build_datasets(config)
    items = [data.train[i] for i in range(4)]
    return collate(items, size_divisor=loaders.size_divisor(config)), data.num_classes


# ---------------------------------------------------------------------------------------
# overfitting one batch, per family and assigner


@pytest.mark.parametrize("name, extra", [
    ("demo_atss", ()),
    ("demo", ()),  # Dynamic ATSS, QFL, IoU branch
    ("demo_piou", ()),  # anchor-free, Pseudo-IoU T = 0.4
    ("demo_tal", ("assign.atss_warmup=0",)),  # TAL from the first step, QFL on its soft targets
    ("demo_simota", ()),
    ("demo_dsl", ()),
    ("demo_retinanet", ()),  # 9 anchors per location, max-IoU, focal + L1 on deltas, no GN
    ("demo_atss", ("head.anchor_scale=4", "head.anchor_scales=1,1.2599210498948732,1.5874010519681994",
                   "head.anchor_ratios=0.5,1,2")),  # ATSS with 9 anchors per location
])
def test_overfit_one_batch(data_root, name, extra):
    config = tiny_config(data_root, name, "solver.warmup=none", "solver.lr=0.01", *extra)
    batch, num_classes = _fixed_batch(config)
    torch.manual_seed(0)
    model = Detector(config, num_classes)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    losses = []
    for step in range(25):
        result = engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=step, max_iterations=25)
        assert not result.skipped
        assert all(math.isfinite(v) for v in result.terms.values())
        assert result.num_pos > 0
        losses.append(result.terms["loss"])
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, losses


def test_retinanet_few_iterations_train_and_evaluate(data_root, tmp_path):
    """RetinaNet (9 anchors per location, max-IoU, L1 on deltas) through ``train``: a short run
    with the final evaluation, finite losses, positives at every step."""
    config = tiny_config(data_root, "demo_retinanet", "solver.epochs=1")
    metrics = train(config, tmp_path / "run", progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["AP"] is not None and 0.0 <= metrics["AP"] <= 1.0
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records and all(math.isfinite(r["loss"]) and r["num_pos"] > 0 for r in records)
    assert "loss_quality" not in records[0] and math.isfinite(records[0]["loss_box"])


# ---------------------------------------------------------------------------------------
# images without objects


def _empty_target(image_id=1):
    return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
            "ignore_boxes": torch.zeros((0, 4)), "image_id": image_id, "orig_size": (IMAGE, IMAGE),
            "scale_factor": (1.0, 1.0), "flipped": False}


@pytest.mark.parametrize("name", ["demo_atss", "demo", "demo_piou"])
def test_images_without_objects_train_without_nan(data_root, name):
    config = tiny_config(data_root, name)
    batch, num_classes = _fixed_batch(config)
    model = Detector(config, num_classes)
    optimizer = engine.build_optimizer(config, model)
    # one empty image in a batch with objects
    mixed = collate([(batch.images[0], _empty_target())] + [(batch.images[i], batch.targets[i]) for i in (1, 2)],
                    size_divisor=loaders.size_divisor(config))
    result = engine.train_step(model, mixed, config, optimizer, torch.device("cpu"), iteration=0, max_iterations=10)
    assert not result.skipped and all(math.isfinite(v) for v in result.terms.values())
    # a batch where no image has an object: no positives, box and quality terms exactly 0
    empty = collate([(batch.images[i], _empty_target(i + 1)) for i in range(2)], size_divisor=loaders.size_divisor(config))
    before = [p.detach().clone() for p in model.parameters()]
    result = engine.train_step(model, empty, config, optimizer, torch.device("cpu"), iteration=1, max_iterations=10)
    assert not result.skipped
    assert result.num_pos == 0
    assert result.terms["loss_box"] == 0.0 and result.terms.get("loss_quality", 0.0) == 0.0
    assert math.isfinite(result.terms["loss_cls"]) and result.terms["loss_cls"] > 0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the negatives still train


# ---------------------------------------------------------------------------------------
# non-finite losses


def test_nan_step_is_skipped_without_update(data_root):
    config = tiny_config(data_root, "demo_atss")
    batch, num_classes = _fixed_batch(config)
    model = Detector(config, num_classes)
    optimizer = engine.build_optimizer(config, model)
    with torch.no_grad():
        model.head.cls_logits.bias[0] = math.nan
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=0, max_iterations=10)
    assert result.skipped
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], equal_nan=True)
    assert all(len(s) == 0 for s in optimizer.state.values())  # no momentum buffers were created


def test_consecutive_nan_losses_abort_with_a_clear_message(data_root, tmp_path, monkeypatch):
    config = tiny_config(data_root, "demo_atss", "solver.max_bad_steps=3", "solver.epochs=3")
    from detector.modeling.objective import DetectionObjective

    real = DetectionObjective.__call__

    def poisoned(self, *args, **kwargs):
        output = real(self, *args, **kwargs)
        return output._replace(terms={**output.terms, "loss_cls": output.terms["loss_cls"] * math.nan})

    monkeypatch.setattr(DetectionObjective, "__call__", poisoned)
    with pytest.raises(NonFiniteLossError, match="3 consecutive steps"):
        train(config, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped"] for r in records] == [True, True, True]
    assert records[-1]["bad_steps_total"] == 3 and records[-1]["loss"] is None


# ---------------------------------------------------------------------------------------
# the whole loop


@pytest.fixture(scope="module")
def finished_run(data_root, tmp_path_factory):
    """A complete 2-epoch run with final evaluation (shared by the CLI tests)."""
    config = tiny_config(data_root, "demo_atss")
    run_dir = tmp_path_factory.mktemp("run") / "atss"
    metrics = train(config, run_dir, progress=False)
    return config, run_dir, metrics


def test_training_run_writes_log_checkpoints_and_metrics(finished_run):
    config, run_dir, metrics = finished_run
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert json.loads((run_dir / "metrics.json").read_text()).keys() == metrics.keys()
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    iterations = loaders.iterations_per_epoch(config, 16) * 2
    assert [r["iteration"] for r in records] == list(range(1, iterations + 1))
    for key in ("loss", "loss_cls", "loss_box", "loss_quality", "box_loss_pos", "lr", "num_pos", "num_pos_per_image",
                "time", "images_per_s", "skipped"):
        assert key in records[0], key
    assert all(math.isfinite(r["loss"]) for r in records)
    # warmup then the step at epoch 1: lr(it) = base * factor
    assert records[0]["lr"] == pytest.approx(0.01 * config.solver.warmup_ratio)
    assert records[-1]["lr"] == pytest.approx(0.01 * 0.1)
    assert (run_dir / "last.pth").is_file() and (run_dir / "epoch_001.pth").is_file() and (run_dir / "epoch_002.pth").is_file()
    assert configs.from_dict(json.loads((run_dir / "config.json").read_text())) == config


def test_evaluate_cli_on_a_tiny_checkpoint(finished_run, tmp_path, capsys):
    from detector.evaluate import main

    _, run_dir, metrics = finished_run
    out = tmp_path / "m.json"
    result = main([str(run_dir / "last.pth"), "--out", str(out), "--no-progress"])
    printed = capsys.readouterr().out
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all" in printed
    saved = json.loads(out.read_text())
    assert set(saved) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    for key, value in result.items():  # the same model on the same val split: the same numbers
        assert (value is None or math.isnan(value)) if metrics[key] is None or math.isnan(metrics[key]) \
            else value == pytest.approx(metrics[key])
    with pytest.raises(SystemExit):
        main([str(run_dir / "last.pth"), "solver.lr=1", "--no-progress"])  # only data.* / inference.*


def test_evaluate_writes_coco_results_for_an_unannotated_split(finished_run, tmp_path, capsys):
    """Test-dev style: an image-info file (images and categories, no annotations) -> the
    COCO results JSON of the evaluation server, the same detections as the evaluation."""
    from detector.data.loaders import dataset_paths
    from detector.evaluate import main

    config, run_dir, _ = finished_run
    _, _, val_images, val_annotations = dataset_paths(config)
    full = json.loads(val_annotations.read_text())
    info = tmp_path / "image_info.json"
    info.write_text(json.dumps({"images": full["images"], "categories": full["categories"]}))
    out = tmp_path / "results.json"
    low = "inference.score_threshold=0.001"  # the 2-epoch model is not confident
    main([str(run_dir / "last.pth"), low, "--images", str(val_images), "--annotations", str(info), "--format",
          "coco-results", "--out", str(out), "--no-progress"])
    results = json.loads(out.read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} == set(results[0])
    assert {r["image_id"] for r in results} <= {i["id"] for i in full["images"]}
    assert {r["category_id"] for r in results} <= {c["id"] for c in full["categories"]}
    assert all(len(r["bbox"]) == 4 and r["bbox"][2] >= 0 and r["bbox"][3] >= 0 for r in results)
    # scored by pycocotools against the real annotations, the file gives the evaluation's AP
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics = main([str(run_dir / "last.pth"), low, "--out", str(tmp_path / "m.json"), "--no-progress"])
    capsys.readouterr()
    gt = COCO(str(val_annotations))
    scoring = COCOeval(gt, gt.loadRes(str(out)), "bbox")
    scoring.evaluate()
    scoring.accumulate()
    scoring.summarize()
    assert scoring.stats[0] == pytest.approx(metrics["AP"])
    with pytest.raises(SystemExit):  # an image-info file cannot be scored
        main([str(run_dir / "last.pth"), "--images", str(val_images), "--annotations", str(info), "--no-progress"])


def test_plot_writes_a_png(finished_run, tmp_path):
    from detector.plot import main, smooth

    _, run_dir, _ = finished_run
    out = tmp_path / "fig.png"
    main([str(run_dir), str(run_dir), "--keys", "box_loss_pos", "loss_cls", "--labels", "a", "b", "--out", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:
        main([str(run_dir), "--keys", "not_a_key", "--out", str(tmp_path / "x.png")])
    assert exit_info.value.code == 2
    assert smooth([1.0, 1.0, 1.0], 0.9) == pytest.approx([1.0, 1.0, 1.0])  # bias-corrected EMA
    assert smooth([0.0, 10.0], 0.5) == pytest.approx([0.0, 5.0 / 0.75])


def test_plot_draws_the_learning_rate_raw_and_marks_epochs(finished_run, tmp_path, monkeypatch, capsys):
    from detector import plot

    config, run_dir, _ = finished_run
    per_epoch = loaders.iterations_per_epoch(config, 16)
    assert plot.epoch_boundaries(run_dir) == [per_epoch]  # 2 epochs: one boundary
    smoothed = []
    real = plot.smooth
    monkeypatch.setattr(plot, "smooth", lambda values, weight: smoothed.append(len(values)) or real(values, weight))
    plot.plot_runs([run_dir], ["lr", "loss"], tmp_path / "lr.png", raw=True)
    assert smoothed == [2 * per_epoch]  # the loss only: the learning rate is drawn as logged
    with pytest.raises(SystemExit) as exit_info:
        plot.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.png")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no log.jsonl in") and "Traceback" not in err

def test_list_configs(capsys):
    from detector.train import main

    main(["--list"])
    printed = capsys.readouterr().out
    assert all(name in printed for name in configs.CONFIGS)
    rows = printed.split("paper tables, row by row")[1]
    assert "Dynamic ATSS Table 3\n  1 : 1 (39.75 AP): atss_ciou_r50_1x\n" in rows
    assert "Pseudo-IoU Table 4\n" in rows and "Pseudo-IoU R-101-FPN-DCN (43.4 AP (test-dev)): piou_giou_ctr_r101_dcn_2x" in rows
    assert "  RetinaNet (35.7 AP): retinanet_r50_1x\n" in rows


# ---------------------------------------------------------------------------------------
# crowd regions as IGNORE (data.crowd=ignore; specs/targets.md §8, specs/training.md §2)


def test_crowd_option_is_validated_and_reaches_the_training_loader(data_root, monkeypatch):
    assert configs.get_config("demo").data.crowd == "drop"
    with pytest.raises(ValueError, match="data.crowd"):
        configs.get_config("demo", ["data.crowd=keep"])
    seen = []
    original = loaders.CocoDetection

    def recording(*args, **kwargs):
        seen.append(kwargs.get("crowd", "drop"))
        return original(*args, **kwargs)

    monkeypatch.setattr(loaders, "CocoDetection", recording)
    loaders.build_datasets(tiny_config(data_root, "demo_atss", "data.crowd=ignore"))
    assert seen == ["ignore", "drop"]  # train split, then val split


def _with_ignore_boxes(batch, regions, config):
    items = [(batch.images[b, :, :IMAGE, :IMAGE], dict(batch.targets[b], ignore_boxes=torch.tensor(r, dtype=torch.float32).reshape(-1, 4)))
             for b, r in enumerate(regions)]
    return collate(items, size_divisor=loaders.size_divisor(config))


@pytest.mark.parametrize("name", ["demo_atss", "demo_piou"])
def test_ignore_boxes_turn_covered_background_into_ignore(data_root, name):
    from detector.conventions import BACKGROUND, IGNORE
    from detector.data.collate import pad_targets
    from detector.modeling.assigners import assign
    from detector.modeling.objective import apply_ignore_regions
    from detector.batched_targets import class_targets_batched

    config = tiny_config(data_root, name, "data.crowd=ignore")
    batch, num_classes = _fixed_batch(config)
    model = Detector(config, num_classes)
    region = [8.0, 8.0, 40.0, 40.0]
    crowded = _with_ignore_boxes(batch, [[region], [], [], []], config)
    targets = pad_targets(crowded.targets)
    with torch.no_grad():
        outputs = model(crowded.images)
    priors = model.priors(tuple(crowded.images.shape[-2:]), outputs.feature_sizes)
    assignment = assign(config.assign, priors, targets, priors.decode(outputs.box_regression))
    marked = apply_ignore_regions(priors, assignment, targets)

    x, y = priors.points[:, 0], priors.points[:, 1]
    inside = (x > region[0]) & (y > region[1]) & (x < region[2]) & (y < region[3])
    before, after = assignment.matched_gt, marked.matched_gt
    expected_ignore = inside & (before[0] == BACKGROUND)
    assert bool(expected_ignore.any())  # the region covers some background anchors
    torch.testing.assert_close(after[0][expected_ignore], torch.full((int(expected_ignore.sum()),), IGNORE))
    torch.testing.assert_close(after[0][~expected_ignore], before[0][~expected_ignore])  # positives, outside: kept
    torch.testing.assert_close(after[1:], before[1:])  # images without regions are untouched
    _, weights = class_targets_batched(after, targets.gt_labels, num_classes, None, targets.gt_valid)
    torch.testing.assert_close(weights[0][expected_ignore], torch.zeros(int(expected_ignore.sum())))
    # no ignore boxes anywhere: the assignment itself comes back
    assert apply_ignore_regions(priors, assignment, pad_targets(batch.targets)) is assignment


def test_train_step_with_crowd_regions_is_finite_and_drops_covered_negatives(data_root):
    import copy

    config = tiny_config(data_root, "demo_atss", "data.crowd=ignore")
    batch, num_classes = _fixed_batch(config)
    torch.manual_seed(0)
    model = Detector(config, num_classes)
    twin = copy.deepcopy(model)
    everywhere = [[0.0, 0.0, float(IMAGE), float(IMAGE)]]
    crowded = _with_ignore_boxes(batch, [everywhere] * 4, config)
    plain = _with_ignore_boxes(batch, [[]] * 4, config)
    results = []
    for net, data in ((model, crowded), (twin, plain)):
        optimizer = engine.build_optimizer(config, net)
        results.append(engine.train_step(net, data, config, optimizer, torch.device("cpu"), iteration=0, max_iterations=10))
    with_regions, without = results
    assert not with_regions.skipped and all(math.isfinite(v) for v in with_regions.terms.values())
    assert with_regions.num_pos == without.num_pos > 0  # positives are never ignored
    # every negative inside the image is ignored: only positives (and points on the border) add to loss_cls
    assert with_regions.terms["loss_cls"] < without.terms["loss_cls"]
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
