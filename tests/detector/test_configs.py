"""Named configurations and command-line overrides (specs/training.md §1)."""
import math
import re
from pathlib import Path

import pytest

from detector import configs
from detector.configs import CONFIGS, apply_overrides, from_dict, get_config, to_dict

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configs.md"


def test_every_config_is_valid_named_and_round_trips():
    for name, config in CONFIGS.items():
        assert config.name == name
        assert config.description and config.reproduces
        assert configs.validate(config) is config
        assert from_dict(to_dict(config)) == config


def test_docs_table_lists_every_config():
    text = DOCS.read_text()
    listed = set(re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M))
    assert listed == set(CONFIGS)


def test_paper_recipes():
    for name, config in CONFIGS.items():
        if name.endswith("_r50_1x"):
            s, d = config.solver, config.data
            assert (s.batch_size, s.lr, s.momentum, s.weight_decay, s.warmup_iters) == (16, 0.01, 0.9, 1e-4, 500), name
            assert (s.epochs, s.steps) == (12, (8, 11)), name
            assert (d.min_size, d.max_size, config.backbone.name) == ((800,), 1333, "resnet50"), name
            assert config.fpn.levels == (3, 4, 5, 6, 7) and config.fpn.out_channels == 256
            assert (config.head.width, config.head.depth, config.head.gn_groups) == (256, 4, 32)
            assert config.inference.score_threshold == 0.05 and config.inference.nms_threshold == 0.6
            assert config.inference.pre_nms_top_k == 1000 and config.inference.max_detections == 100
        if name.endswith("_2x"):
            assert (config.solver.epochs, config.solver.steps, config.backbone.name) == (24, (16, 22), "resnet101")


def test_ablation_rows():
    atss = CONFIGS["atss_r50_1x"]
    assert (atss.assign.name, atss.loss.cls, atss.loss.box, atss.loss.box_weight, atss.head.quality) == (
        "atss", "focal", "giou", 2.0, "centerness")
    assert atss.inference.score_mode == "sqrt" and atss.head.anchor_scale == 8.0 and atss.assign.topk == 9
    ciou = CONFIGS["atss_ciou_r50_1x"].assign
    assert (ciou.name, ciou.pred_weight, ciou.anchor_weight) == ("dynamic_atss", 1.0, 1.0)
    piou_only = CONFIGS["piou_only_r50_1x"].assign
    assert (piou_only.pred_weight, piou_only.anchor_weight) == (1.0, 0.0)
    final = CONFIGS["dyn_atss_qfl_iou_r50_1x"]
    assert (final.loss.cls, final.head.quality) == ("qfl", "iou")
    assert CONFIGS["dyn_atss_w0p5_1p0_r50_1x"].assign.pred_weight == 0.5
    assert CONFIGS["dyn_atss_w1p0_1p5_r50_1x"].assign.anchor_weight == 1.5
    assert CONFIGS["dyn_atss_dup_ddown_r50_1x"].assign.pred_weight_schedule == "up"
    assert CONFIGS["dyn_atss_dup_ddown_r50_1x"].assign.anchor_weight_schedule == "down"
    thresholds = sorted(c.assign.piou_threshold for n, c in CONFIGS.items() if n.startswith("piou_t0"))
    assert thresholds == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    baseline = CONFIGS["af_baseline_r50_1x"]
    assert (baseline.head.family, baseline.assign.name, baseline.loss.box, baseline.head.quality) == (
        "anchor_free", "all_inside", "iou", "none")
    assert baseline.inference.score_mode == "cls"
    best = CONFIGS["piou_giou_ctr_r50_1x"]
    assert (best.loss.box, best.head.quality, best.inference.score_mode) == ("giou", "centerness", "product")


def test_dynamic_weight_schedules():
    pytest.importorskip("torch")
    from detector.modeling.detector import dynamic_weights

    assert dynamic_weights(CONFIGS["dyn_atss_dup_r50_1x"], 250, 1000) == (0.25, 1.0)
    assert dynamic_weights(CONFIGS["dyn_atss_ddown_r50_1x"], 250, 1000) == (1.0, 0.75)
    assert dynamic_weights(CONFIGS["dyn_atss_w1p5_1p0_r50_1x"], 250, 1000) == (1.5, 1.0)


def test_lr_schedule():
    pytest.importorskip("torch")
    from detector.engine import lr_factor

    config = CONFIGS["atss_r50_1x"]  # linear warmup from 0.001 over 500 its, x0.1 at epochs 8 and 11
    assert lr_factor(config, 0, 100) == pytest.approx(0.001)
    assert lr_factor(config, 250, 100) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(config, 500, 100) == 1.0
    assert lr_factor(config, 799, 100) == 1.0
    assert lr_factor(config, 800, 100) == pytest.approx(0.1)
    assert lr_factor(config, 1100, 100) == pytest.approx(0.01)
    constant = apply_overrides(config, ["solver.warmup=constant", "solver.warmup_ratio=0.3333"])
    assert lr_factor(constant, 499, 100) == pytest.approx(0.3333)


def test_overrides_are_parsed_by_type():
    config = get_config("demo", [
        "solver.lr=0.5", "solver.epochs=3", "solver.steps=1,2", "fpn.levels=3,4", "data.flip=0",
        "backbone.weights=/some/file.pth", "solver.grad_clip_norm=none", "assign.center_sampling=false",
        "data.digits_object_size=8,24.5", "seed=7", "assign.regress_ranges=-1,64,64,inf",
    ])
    assert config.solver.lr == 0.5 and config.solver.epochs == 3 and config.solver.steps == (1, 2)
    assert config.fpn.levels == (3, 4) and config.strides == (8, 16)
    assert config.backbone.weights == "/some/file.pth" and config.solver.grad_clip_norm is None
    assert config.assign.center_sampling is False and config.seed == 7 and config.data.flip == 0.0
    assert config.data.digits_object_size == (8.0, 24.5)
    assert config.assign.regress_ranges == (-1.0, 64.0, 64.0, math.inf)
    assert CONFIGS["demo"].solver.lr != 0.5  # the named config is unchanged (frozen)


@pytest.mark.parametrize("override, message", [
    ("solver.lrr=1", "unknown config key 'solver.lrr'"),
    ("optim.lr=1", "unknown config key 'optim.lr'"),
    ("solver.lr=fast", "solver.lr: expected a number"),
    ("solver.epochs=1.5", "solver.epochs: expected an int"),
    ("assign.center_sampling=maybe", "expected a bool"),
    ("solver=1", "is a section"),
    ("solver.lr.x=1", "has no sub-keys"),
    ("solver.lr", "expected key=value"),
    ("assign.name=nonsense", "assign.name"),
    ("head.family=anchor_free", "assign.name"),  # atss is not an anchor-free assigner
    ("head.width=30", "divisible"),
    ("fpn.levels=3,5", "fpn.levels"),
    ("head.quality=none", "score_mode"),
])
def test_bad_overrides_raise_clear_errors(override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        get_config("demo", [override])


def test_unknown_config_name():
    with pytest.raises(ValueError, match="--list"):
        get_config("no_such_config")
