"""Named configurations and command-line overrides (specs/training.md §1)."""
import math
import re
from pathlib import Path

import pytest

from detector import configs
from detector.configs import CONFIGS, apply_overrides, from_dict, get_config, to_dict
from detector.paper_rows import NEEDS_DCN, NEEDS_GFLV2, NEEDS_RETINANET, NEEDS_VFNET, PAPER_ROWS, rows_of_config

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configs.md"


def test_every_config_is_valid_named_and_round_trips():
    for name, config in CONFIGS.items():
        assert config.name == name
        assert config.description and config.reproduces
        assert configs.validate(config) is config
        assert from_dict(to_dict(config)) == config


def test_docs_table_lists_every_config():
    text = DOCS.read_text()
    listed = re.findall(r"^\| `([a-z0-9_]+)` \|", text, flags=re.M)
    assert sorted(listed) == sorted(CONFIGS)  # each once


def test_generated_blocks_of_the_docs_are_current():
    """docs/configs.md holds ``paper_rows.doc_blocks()`` verbatim (rewrite with
    ``python -m detector.paper_rows docs/configs.md``)."""
    from detector.paper_rows import doc_blocks

    text = DOCS.read_text()
    for name, block in doc_blocks().items():
        assert f"<!-- begin {name} -->\n{block}<!-- end {name} -->" in text, name


#: Rows per table of both papers (their experiments; rows quoting other detectors excluded).
TABLE_SIZES = {("Dynamic ATSS", "Table 1"): 4, ("Dynamic ATSS", "Table 2"): 7, ("Dynamic ATSS", "Table 3"): 8,
               ("Dynamic ATSS", "Table 4"): 4, ("Dynamic ATSS", "Table 5"): 14,
               ("Pseudo-IoU", "Table 1a"): 8, ("Pseudo-IoU", "Table 1b"): 8, ("Pseudo-IoU", "Table 1c"): 8,
               ("Pseudo-IoU", "Table 2"): 18, ("Pseudo-IoU", "Table 3"): 5, ("Pseudo-IoU", "Table 4"): 5}


def test_every_paper_row_has_a_config_or_a_stated_reason():
    """Walk both papers' tables: every row names configs that exist and say they reproduce
    that table, or names what it still needs (a head or operator of another issue)."""
    sizes = {}
    for row in PAPER_ROWS:
        sizes[(row.paper, row.table)] = sizes.get((row.paper, row.table), 0) + 1
        assert bool(row.configs) != bool(row.pending), row
        if row.pending:
            assert row.pending in (NEEDS_DCN, NEEDS_GFLV2, NEEDS_VFNET, NEEDS_RETINANET), row
        for name in row.configs:
            assert name in CONFIGS, (row, name)
            reproduces = CONFIGS[name].reproduces
            assert f"{row.paper} paper" in reproduces and row.table in reproduces, (row, name, reproduces)
    assert sizes == TABLE_SIZES
    # and the other way: a config that says it reproduces a paper table is in that table's rows
    for name, config in CONFIGS.items():
        if " paper Table" in config.reproduces:
            assert rows_of_config(name), name


def test_paper_recipes():
    for name, config in CONFIGS.items():
        if name.endswith("_r50_1x"):
            s, d = config.solver, config.data
            assert (s.batch_size, s.lr, s.momentum, s.weight_decay, s.warmup_iters) == (16, 0.01, 0.9, 1e-4, 500), name
            if config.head.family == "anchor_based" and config.head.type != "retinanet":  # official ATSS: 90k iterations
                assert (s.max_iters, s.steps) == (90_000, (60_000, 80_000)), name
            else:  # official Pseudo-IoU, mmdetection's RetinaNet (epoch runner)
                assert (s.max_iters, s.epochs, s.steps) == (None, 12, (8, 11)), name
            assert (d.max_size, config.backbone.name) == (1333, "resnet50"), name
            assert config.fpn.levels == (3, 4, 5, 6, 7) and config.fpn.out_channels == 256
            depth = 3 if config.head.type == "vfnet" else 4  # mmdetection's VFNetHead: stacked_convs=3
            assert (config.head.width, config.head.depth, config.head.gn_groups) == (256, depth, 32), name
            assert config.inference.score_threshold == 0.05
            assert config.inference.pre_nms_top_k == 1000 and config.inference.max_detections == 100
        if name.endswith("_2x"):
            s = config.solver
            assert config.backbone.name in ("resnet101", "resnext101_32x8d", "resnext101_64x4d"), name
            if config.head.family == "anchor_based":
                assert (s.max_iters, s.steps) == (180_000, (120_000, 160_000)), name
            else:
                assert (s.max_iters, s.epochs, s.steps) == (None, 24, (16, 22)), name


def _coco_configs():
    """The COCO rows of the ATSS / Dynamic ATSS / Pseudo-IoU official codes (RetinaNet follows
    mmdetection's own recipe instead: ``test_retinanet_recipe``)."""
    return {name: c for name, c in CONFIGS.items() if c.data.dataset == "coco" and c.head.type != "retinanet"}


def test_every_coco_row_uses_the_official_optimiser_settings():
    """ATSS, Dynamic ATSS and Pseudo-IoU official code: constant warmup at 1/3 for 500
    iterations (1500 for Pseudo-IoU Table 4, from the paper's text), bias lr x2, no bias
    decay; images without annotations left out of training."""
    for name, config in _coco_configs().items():
        s = config.solver
        assert (s.warmup, s.warmup_ratio, s.bias_lr_factor, s.bias_weight_decay) == ("constant", 1 / 3, 2.0, 0.0), name
        pseudo_iou_table4 = config.head.family == "anchor_free" and name.endswith("_2x")  # the paper's text: 1500
        assert s.warmup_iters == (1500 if pseudo_iou_table4 else 500), name
        assert config.data.drop_empty_train, name


def test_paper_configs_use_the_backbone_style_of_their_official_code():
    """maskrcnn-benchmark (ATSS, Dynamic ATSS) and the Pseudo-IoU mmdetection configs train
    Caffe-style ResNets from the MSRA / detectron weights; the demos keep torchvision style."""
    for name, config in CONFIGS.items():
        expected = "caffe" if config.data.dataset in ("coco", "voc") and config.head.type != "retinanet" else "pytorch"
        assert config.backbone.style == expected, name
        if expected == "caffe":
            assert (config.backbone.norm, config.backbone.frozen_stages) == ("frozen_bn", 1), name


def test_voc_rows_follow_the_pseudo_iou_paper_text():
    """P:133: R-101, 600 / 1000, 12 epochs with steps after 8 and 10, lr 0.01 at batch 16,
    500 warmup iterations, flip only, NMS 0.5, focal + IoU loss (weight 1), VOC07 mAP."""
    for name, config in CONFIGS.items():
        if config.data.dataset != "voc":
            continue
        s, d = config.solver, config.data
        assert config.backbone.name == "resnet101" and config.head.family == "anchor_free", name
        assert (d.min_size, d.max_size, d.test_min_size, d.flip, d.metric) == ((600,), 1000, 600, 0.5, "voc07"), name
        assert (d.voc_train_sets, d.voc_test_sets) == (("2007/trainval", "2012/trainval"), ("2007/test",)), name
        assert (config.loss.cls, config.loss.box, config.loss.box_weight, config.head.quality) == (
            "focal", "iou", 1.0, "none"), name
        assert config.inference.nms_threshold == 0.5 and s.warmup_iters == 500 and s.max_iters is None, name
        assert s.lr == pytest.approx(0.01 * s.batch_size / 16), name
        assert s.steps == (round(s.epochs * 2 / 3), round(s.epochs * 5 / 6)), name
    base = CONFIGS["voc_piou_t04_r101"].solver
    assert (base.epochs, base.steps, base.batch_size, base.lr) == (12, (8, 10), 16, 0.01)
    assert [CONFIGS[f"voc_piou_r101_e{e}"].solver.steps for e in (8, 16, 24)] == [(5, 7), (11, 13), (16, 20)]
    assert [CONFIGS[f"voc_af_baseline_r101_b{b}"].solver.lr for b in (4, 6, 8)] == pytest.approx([0.0025, 0.00375, 0.005])


def test_no_variant_loses_a_field_of_its_family_recipe():
    """Every anchor-free (Pseudo-IoU family) COCO row keeps gradient clipping at 35 and NMS
    0.5; every anchor-based row has no clipping and NMS 0.6 (ATSS, Dynamic ATSS)."""
    for name, config in _coco_configs().items():
        if config.head.family == "anchor_free":
            assert config.solver.grad_clip_norm == 35.0, name
            assert config.inference.nms_threshold == 0.5, name
        else:
            assert config.solver.grad_clip_norm is None, name
            assert config.inference.nms_threshold == 0.6, name


def test_retinanet_recipe():
    """mmdetection 2.x ``retinanet_r50_fpn_1x_coco.py``: 9 anchors (octave base 4, 3 scales,
    ratios 0.5/1/2), max-IoU 0.5/0.4 with low-quality matches (min_pos_iou 0), focal + L1 on
    deltas with stds 1 (weight 1), no GN, no quality; test 0.05 / 1000 / NMS 0.5 / 100;
    pytorch-style R-50, P6 from C5; SGD 0.01, linear warmup 500 from 0.001, 12 epochs, 8/11."""
    config = CONFIGS["retinanet_r50_1x"]
    h, a, s, i = config.head, config.assign, config.solver, config.inference
    assert (h.type, h.family, h.quality, h.norm, h.anchor_scale) == ("retinanet", "anchor_based", "none", "none", 4.0)
    assert h.anchor_scales == pytest.approx((1.0, 2 ** (1 / 3), 2 ** (2 / 3))) and h.anchor_ratios == (0.5, 1.0, 2.0)
    assert h.delta_stds == (1.0, 1.0, 1.0, 1.0) and (h.width, h.depth) == (256, 4)
    assert (a.name, a.pos_iou_thr, a.neg_iou_thr, a.min_pos_iou, a.match_low_quality) == ("max_iou", 0.5, 0.4, 0.0, True)
    assert (config.loss.cls, config.loss.box, config.loss.box_weight) == ("focal", "l1", 1.0)
    assert (i.score_threshold, i.pre_nms_top_k, i.nms_threshold, i.max_detections, i.score_mode) == (0.05, 1000, 0.5, 100, "cls")
    assert (config.backbone.name, config.backbone.style, config.fpn.p6p7_input, config.fpn.levels) == (
        "resnet50", "pytorch", "c5", (3, 4, 5, 6, 7))
    assert (s.batch_size, s.lr, s.momentum, s.weight_decay, s.epochs, s.steps, s.max_iters) == (16, 0.01, 0.9, 1e-4, 12, (8, 11), None)
    assert (s.warmup, s.warmup_iters, s.warmup_ratio, s.bias_lr_factor, s.grad_clip_norm) == ("linear", 500, 0.001, 1.0, None)
    assert config.data == CONFIGS["atss_r50_1x"].data  # 800 / 1333, flip 0.5, empty images dropped
    demo = CONFIGS["demo_retinanet"]
    assert (demo.head.type, demo.assign, demo.loss) == ("retinanet", a, config.loss) and demo.data.dataset == "digits"


@pytest.mark.parametrize("overrides, message", [
    (["head.anchor_scales=1,2", "head.family=anchor_free", "assign.name=pseudo_iou", "head.quality=none",
      "inference.score_mode=cls"], "several anchors per location"),
    (["head.anchor_ratios=0,1"], "head.anchor_ratios"),
    (["head.norm=bn"], "head.norm"),
    (["head.delta_stds=1,1"], "head.delta_stds"),
    (["head.quality=centerness", "inference.score_mode=sqrt"], "head.type=retinanet needs head.quality=none"),
])
def test_anchor_and_retinanet_options_are_validated(overrides, message):
    with pytest.raises(ValueError, match=message):
        get_config("demo_retinanet", overrides)
    with pytest.raises(ValueError, match="loss.box=l1"):
        get_config("demo_gflv2", ["loss.box=l1"])
    several = get_config("demo_atss", ["head.anchor_scales=1,1.5", "head.anchor_ratios=0.5,1,2"])
    assert (several.head.anchor_scales, several.head.anchor_ratios) == ((1.0, 1.5), (0.5, 1.0, 2.0))


def test_multi_scale_sources():
    from detector.data.loaders import training_min_sizes

    official_r50 = CONFIGS["piou_giou_ctr_r50_1x"].data
    assert (training_min_sizes(official_r50), official_r50.flip) == ((640, 800), 0.5)  # official R-50 config
    paper_r50 = CONFIGS["piou_giou_ctr_r50_1x_paper"].data
    assert (training_min_sizes(paper_r50), paper_r50.flip) == ((800,), 0.5)  # the paper's Table 3 text
    for name in ("dyn_atss_qfl_iou_r101_2x", "atss_r101_2x"):  # MIN_SIZE_RANGE_TRAIN (640, 800)
        assert training_min_sizes(CONFIGS[name].data) == tuple(range(640, 801)) and CONFIGS[name].data.flip == 0.5
    table4 = CONFIGS["piou_giou_ctr_r101_2x"].data
    assert training_min_sizes(table4) == tuple(range(640, 801)) and table4.flip == 0.0  # "without image flipping"
    with pytest.raises(ValueError, match="data.min_size_range"):
        get_config("demo", ["data.min_size_range=800,640"])


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
    thresholds = sorted(c.assign.threshold for n, c in CONFIGS.items() if n.startswith("piou_t0"))
    assert thresholds == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    baseline = CONFIGS["af_baseline_r50_1x"]
    assert (baseline.head.family, baseline.assign.name, baseline.loss.box, baseline.head.quality) == (
        "anchor_free", "all_inside", "iou", "none")
    assert baseline.inference.score_mode == "cls"
    best = CONFIGS["piou_giou_ctr_r50_1x"]
    assert (best.loss.box, best.head.quality, best.inference.score_mode) == ("giou", "centerness", "product")


def test_dynamic_weight_schedules():
    pytest.importorskip("torch")
    from detector.modeling.assigners import dynamic_weights

    assert dynamic_weights(CONFIGS["dyn_atss_dup_r50_1x"].assign, 250, 1000) == (0.25, 1.0)
    assert dynamic_weights(CONFIGS["dyn_atss_ddown_r50_1x"].assign, 250, 1000) == (1.0, 0.75)
    assert dynamic_weights(CONFIGS["dyn_atss_w1p5_1p0_r50_1x"].assign, 250, 1000) == (1.5, 1.0)


def test_lr_schedule():
    pytest.importorskip("torch")
    from detector import engine
    from detector.engine import lr_factor

    config = apply_overrides(CONFIGS["atss_r50_1x"], ["solver.warmup=linear", "solver.warmup_ratio=0.001",
                                                      "solver.max_iters=none", "solver.steps=8,11"])
    # linear warmup from 0.001 over 500 its (mmdet), x0.1 at epochs 8 and 11
    assert lr_factor(config, 0, 100) == pytest.approx(0.001)
    assert lr_factor(config, 250, 100) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_factor(config, 500, 100) == 1.0
    assert lr_factor(config, 799, 100) == 1.0
    assert lr_factor(config, 800, 100) == pytest.approx(0.1)
    assert lr_factor(config, 1100, 100) == pytest.approx(0.01)
    official = CONFIGS["atss_r50_1x"]  # constant warmup at 1/3 (the official codes)
    assert lr_factor(official, 0, 100) == lr_factor(official, 499, 100) == pytest.approx(1 / 3)
    assert lr_factor(official, 500, 100) == 1.0
    # an iteration schedule: steps are iterations, whatever the epoch length
    iters = apply_overrides(config, ["solver.max_iters=1000", "solver.steps=600,900"])
    assert [lr_factor(iters, it, 7) for it in (599, 600, 899, 900)] == pytest.approx([1.0, 0.1, 0.1, 0.01])
    assert engine.schedule_length(iters, 7) == 1000 and engine.schedule_length(config, 7) == 7 * 12


def test_iteration_schedules_are_validated():
    with pytest.raises(ValueError, match=r"solver.steps: with solver.max_iters=1000 the steps are iterations"):
        apply_overrides(CONFIGS["demo"], ["solver.max_iters=1000", "solver.steps=8,1000"])
    with pytest.raises(ValueError, match="solver.max_iters: expected a positive int"):
        apply_overrides(CONFIGS["demo"], ["solver.max_iters=0", "solver.steps=()"])
    config = apply_overrides(CONFIGS["demo"], ["solver.max_iters=none"])
    assert config.solver.max_iters is None


def test_overrides_are_parsed_by_type():
    config = get_config("demo_piou", [
        "solver.lr=0.5", "solver.epochs=3", "solver.steps=1,2", "fpn.levels=3,4", "data.flip=0",
        "backbone.weights=/some/file.pth", "solver.grad_clip_norm=none", "assign.center_sampling=false",
        "data.digits_object_size=8,24.5", "seed=7", "assign.regress_ranges=-1,64,64,inf", "assign.name=fcos",
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
    ("data.drop_empty_train=maybe", "expected a bool"),
    ("assign.topk=nine", "assign.topk: expected an int"),
    ("assign.threshold=0.5", "unknown config key 'assign.threshold' (assign.name=dynamic_atss); valid keys here: "
                             "anchor_weight, anchor_weight_schedule, pred_weight, pred_weight_schedule, topk"),
    ("assign.name=pseudo_iou", "assign.name: pseudo_iou needs head.family=anchor_free"),
    ("assign.pred_weight_schedule=sideways", "assign.pred_weight_schedule: expected one of constant, up, down"),
    ("solver=1", "is a section"),
    ("solver.lr.x=1", "has no sub-keys"),
    ("solver.lr", "expected key=value"),
    ("assign.name=nonsense", "assign.name"),
    ("head.family=anchor_free", "assign.name: dynamic_atss needs head.family=anchor_based"),
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


def test_assign_name_switches_to_the_defaults_of_that_assigner_in_any_order():
    from detector.modeling.assigners import CenternessOptions

    for order in (["assign.name=centerness", "assign.threshold=0.3"], ["assign.threshold=0.3", "assign.name=centerness"]):
        config = get_config("demo_piou", order)
        assert config.assign == CenternessOptions(threshold=0.3)
    assert get_config("demo_piou", ["assign.name=pseudo_iou"]).assign.threshold == 0.4  # the default, not 0.3


def test_choice_lists_come_from_the_assigner_table():
    from detector.modeling.assigners import ASSIGNERS

    assert set(configs.ANCHOR_BASED_ASSIGNERS) | set(configs.ANCHOR_FREE_ASSIGNERS) == set(ASSIGNERS)
    assert {ASSIGNERS[n].family for n in configs.ANCHOR_BASED_ASSIGNERS} == {"anchor_based"}
    assert {ASSIGNERS[n].family for n in configs.ANCHOR_FREE_ASSIGNERS} == {"anchor_free"}
    for name, config in CONFIGS.items():  # every named config holds the options class of its assigner
        assert type(config.assign) is ASSIGNERS[config.assign.name].options, name


def test_configs_saved_with_the_flat_assign_section_still_load():
    """Run directories written before each assigner had its own options hold one flat
    ``assign`` bag; ``from_dict`` maps it to the chosen assigner's options."""
    flat = {"name": "pseudo_iou", "topk": 9, "pred_weight": 1.0, "anchor_weight": 1.0, "pred_weight_schedule": "constant",
            "anchor_weight_schedule": "constant", "pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "piou_threshold": 0.3,
            "box_scale": 0.6, "centerness_threshold": 0.35, "center_sampling": True, "center_radius": 1.5,
            "regress_ranges": None}
    saved = to_dict(CONFIGS["demo_piou"]) | {"assign": flat}
    assert from_dict(saved) == get_config("demo_piou", ["assign.threshold=0.3"])
    dynamic = to_dict(CONFIGS["demo"]) | {"assign": flat | {"name": "dynamic_atss", "pred_weight": 0.5}}
    assert from_dict(dynamic) == get_config("demo", ["assign.pred_weight=0.5"])


def test_soft_target_choice_is_validated():
    with pytest.raises(ValueError, match="loss.soft_target=assigner: soft targets need loss.cls=qfl or vfl"):
        get_config("demo_atss", ["loss.soft_target=assigner"])
    with pytest.raises(ValueError, match="loss.soft_target: expected one of iou, assigner"):
        get_config("demo", ["loss.soft_target=alignment"])
    with pytest.raises(ValueError, match="assign.name=dynamic_atss gives no soft targets"):
        get_config("demo", ["loss.soft_target=assigner"])
