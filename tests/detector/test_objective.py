"""The assigner table and the training objective (specs/model.md §4)."""
import dataclasses

import pytest

torch = pytest.importorskip("torch")

from detector.assign.anchor_free import (  # noqa: E402
    assign_all_inside_batched,
    assign_centerness_batched,
    assign_fcos_batched,
    assign_pseudo_iou_batched,
    assign_scaled_box_batched,
)
from detector.assign.atss import assign_atss_batched  # noqa: E402
from detector.assign.dynamic_atss import assign_dynamic_atss_batched  # noqa: E402
from detector.assign.max_iou import assign_max_iou_batched  # noqa: E402
from detector.configs import get_config  # noqa: E402
from detector.data.collate import pad_targets  # noqa: E402
from detector.modeling import ASSIGNERS, Detector  # noqa: E402
from detector.modeling import assigners as table  # noqa: E402
from detector.modeling.detector import Priors  # noqa: E402
from tests.detector.heads import IMAGE, two_image_targets  # noqa: E402

pytestmark = pytest.mark.torch



def _priors(family):
    config = get_config("demo" if family == "anchor_based" else "demo_piou")
    return Detector(config, 3).priors(IMAGE)


def _pred_boxes(priors):
    generator = torch.Generator().manual_seed(0)
    codes = torch.randn(2, priors.points.shape[0], 4, generator=generator) * 0.5
    return priors.decode(codes if priors.anchors is not None else codes.abs() * 4)


AF_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, float("inf")))
# Non-default options for every row: the batched function its row must call, and the
# keyword arguments it must pass (every option, none dropped).
CASES = {
    "atss": (table.AtssOptions(topk=5), "assign_atss_batched", {"topk": 5}),
    "dynamic_atss": (table.DynamicAtssOptions(topk=4, pred_weight=0.5, anchor_weight=1.5), "assign_dynamic_atss_batched",
                     {"topk": 4, "pred_weight": 0.5, "anchor_weight": 1.5}),
    "max_iou": (table.MaxIouOptions(pos_iou_thr=0.3, neg_iou_thr=0.2, min_pos_iou=0.1, match_low_quality=True),
                "assign_max_iou_batched",
                {"pos_iou_thr": 0.3, "neg_iou_thr": 0.2, "min_pos_iou": 0.1, "match_low_quality": True}),
    "all_inside": (table.AllInsideOptions(regress_ranges=(-1, 32, 32, 64, 64, 1000)), "assign_all_inside_batched",
                   {"strides": (8, 16, 32), "regress_ranges": ((-1.0, 32.0), (32.0, 64.0), (64.0, 1000.0))}),
    "pseudo_iou": (table.PseudoIouOptions(threshold=0.3, inclusive=True), "assign_pseudo_iou_batched",
                   {"strides": (8, 16, 32), "regress_ranges": AF_RANGES, "threshold": 0.3, "inclusive": True}),
    "scaled_box": (table.ScaledBoxOptions(scale=0.4), "assign_scaled_box_batched",
                   {"strides": (8, 16, 32), "regress_ranges": AF_RANGES, "scale": 0.4}),
    "centerness": (table.CenternessOptions(threshold=0.2, inclusive=True), "assign_centerness_batched",
                   {"strides": (8, 16, 32), "regress_ranges": AF_RANGES, "threshold": 0.2, "inclusive": True}),
    "fcos": (table.FcosOptions(center_sampling=False, center_radius=2.5), "assign_fcos_batched",
             {"strides": (8, 16, 32), "regress_ranges": AF_RANGES, "center_sampling": False, "center_radius": 2.5}),
    "tal": (table.TalOptions(topk=7, alpha=0.5, beta=4.0), "assign_tal_batched", {"topk": 7, "alpha": 0.5, "beta": 4.0}),
    "simota": (table.SimotaOptions(center_radius=2.0, candidate_topk=6, iou_weight=2.0, cls_weight=0.5),
               "assign_simota_batched",
               {"center_radius": 2.0, "candidate_topk": 6, "iou_weight": 2.0, "cls_weight": 0.5}),
    "dsl": (table.DslOptions(topk=9, soft_center_radius=2.0, iou_weight=2.5), "assign_dsl_batched",
            {"topk": 9, "soft_center_radius": 2.0, "iou_weight": 2.5}),
}


def test_every_row_of_the_table_has_a_case():
    assert set(CASES) == set(ASSIGNERS)


def test_the_anchor_free_rows_are_the_anchor_free_rules():
    from detector.assign.anchor_free import ANCHOR_FREE_RULES

    assert table.assigner_names("anchor_free") == ANCHOR_FREE_RULES


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_row_passes_every_option_to_its_assigner(name, monkeypatch):
    options, function_name, expected_kwargs = CASES[name]
    row = ASSIGNERS[name]
    assert type(options) is row.options and options.name == name
    priors, targets = _priors(row.family), two_image_targets()
    pred_boxes = _pred_boxes(priors)
    function = getattr(table, function_name)
    calls = []

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return function(*args, **kwargs)

    monkeypatch.setattr(table, function_name, recording)
    scores = torch.rand(2, priors.points.shape[0], 3, generator=torch.Generator().manual_seed(1)) if row.uses_scores else None
    result = table.assign(options, priors, targets, pred_boxes, pred_scores=scores)
    (args, kwargs), = calls
    assert kwargs == expected_kwargs
    inputs = (priors.anchors, priors.num_per_level) if row.family == "anchor_based" else (priors.points, priors.num_per_level)
    if name == "max_iou":
        inputs = (priors.anchors,)
    expected_args = (*inputs, targets.gt_boxes, targets.gt_valid) + ((pred_boxes,) if row.uses_predictions else ())
    if name == "tal":
        expected_args = (priors.anchors, targets.gt_boxes, targets.gt_valid, targets.gt_labels, scores, pred_boxes)
    elif row.uses_scores:
        expected_args = (*inputs, targets.gt_boxes, targets.gt_valid, targets.gt_labels, pred_boxes, scores)
    assert len(args) == len(expected_args) and all(a is b or a == b for a, b in zip(args, expected_args))
    assert result.matched_gt.shape == (2, priors.points.shape[0])
    assert bool((result.matched_gt[0] >= 0).any())  # the scene has positives
    assert not bool((result.matched_gt[1] >= 0).any())  # the empty image has none


def test_options_defaults_match_the_assigners_defaults():
    """An options class with its defaults runs its assigner exactly as a call with the
    function's own defaults (no default is restated differently)."""
    import inspect

    batched = {"atss": assign_atss_batched, "dynamic_atss": assign_dynamic_atss_batched, "max_iou": assign_max_iou_batched,
               "all_inside": assign_all_inside_batched, "pseudo_iou": assign_pseudo_iou_batched,
               "scaled_box": assign_scaled_box_batched, "centerness": assign_centerness_batched, "fcos": assign_fcos_batched,
               "tal": table.assign_tal_batched, "simota": table.assign_simota_batched, "dsl": table.assign_dsl_batched}
    assert set(batched) == set(ASSIGNERS)
    for name, row in ASSIGNERS.items():
        parameters = inspect.signature(batched[name]).parameters
        for field in dataclasses.fields(row.options):
            if field.name in ("name", "regress_ranges", "atss_warmup") or field.name.endswith("_schedule"):
                continue
            assert parameters[field.name].default == field.default, (name, field.name)


def test_the_objective_decodes_once_and_the_assigner_reads_detached_boxes(monkeypatch):
    config = get_config("demo", ["fpn.out_channels=16", "head.width=16", "head.gn_groups=8"])
    model = Detector(config, 3)
    images = torch.randn(2, 3, *IMAGE)
    targets = two_image_targets()
    calls, seen = [], []
    real_decode = Priors.decode

    def counting_decode(self, box_regression):
        calls.append(box_regression.shape)
        return real_decode(self, box_regression)

    row = ASSIGNERS["dynamic_atss"]

    def recording(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
        seen.append(pred_boxes)
        assert pred_scores is None  # Dynamic ATSS reads boxes only: no (B, A, K) sigmoid is computed for it
        return row.run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations)

    monkeypatch.setattr(Priors, "decode", counting_decode)
    monkeypatch.setitem(ASSIGNERS, "dynamic_atss", dataclasses.replace(row, run=recording))
    outputs = model(images)
    result = model.losses(outputs, targets, IMAGE, iteration=3, max_iterations=10)
    assert calls == [(2, outputs.box_regression.shape[1], 4)]  # one decode of every location
    assert len(seen) == 1 and not seen[0].requires_grad
    priors = model.priors(IMAGE, outputs.feature_sizes)
    torch.testing.assert_close(seen[0], real_decode(priors, outputs.box_regression.detach()), rtol=0, atol=0)
    loss = sum(result.terms.values())
    loss.backward()  # gradients flow through the box loss only, never through the assignment
    assert model.head.box_pred.weight.grad is not None
    assert int(result.num_pos) == int((result.assignment.matched_gt >= 0).sum()) > 0


def test_ignore_regions_travel_in_the_padded_targets():
    config = get_config("demo_atss", ["fpn.out_channels=16", "head.width=16", "head.gn_groups=8"])
    model = Detector(config, 3)
    boxes = torch.tensor([[4.0, 6.0, 40.0, 50.0]])
    plain = pad_targets([{"boxes": boxes, "labels": torch.tensor([0])}])
    crowded = pad_targets([{"boxes": boxes, "labels": torch.tensor([0]),
                            "ignore_boxes": torch.tensor([[48.0, 0.0, 96.0, 64.0]])}])
    outputs = model(torch.randn(1, 3, *IMAGE))
    without = model.losses(outputs, plain, IMAGE).assignment.matched_gt
    with_regions = model.losses(outputs, crowded, IMAGE).assignment.matched_gt
    changed = with_regions != without
    assert bool(changed.any()) and bool((with_regions[changed] == -2).all()) and bool((without[changed] == -1).all())


def test_score_reading_assigners_need_scores_and_tal_warms_up_with_atss():
    priors, targets = _priors("anchor_based"), two_image_targets()
    pred_boxes = _pred_boxes(priors)
    with pytest.raises(ValueError, match="tal reads the predicted class scores; pass pred_scores"):
        table.assign(table.TalOptions(), priors, targets, pred_boxes)
    scores = torch.rand(2, priors.points.shape[0], 3, generator=torch.Generator().manual_seed(1))
    warm = table.TalOptions(atss_warmup=0.25)
    atss = table.assign(table.AtssOptions(), priors, targets, pred_boxes)
    early = table.assign(warm, priors, targets, pred_boxes, 24, 100, pred_scores=scores)  # 24 < 25: ATSS
    late = table.assign(warm, priors, targets, pred_boxes, 25, 100, pred_scores=scores)
    tal = table.assign(table.TalOptions(), priors, targets, pred_boxes, 25, 100, pred_scores=scores)
    assert torch.equal(early.matched_gt, atss.matched_gt) and torch.equal(early.matched_metric, atss.matched_metric)
    assert torch.equal(late.matched_gt, tal.matched_gt) and not torch.equal(late.matched_gt, atss.matched_gt)


def test_the_objective_trains_on_the_assigners_soft_targets(monkeypatch):
    """loss.soft_target=assigner: the assigner receives sigmoid(cls_logits) in float32 and
    the classification loss receives its matched_metric as soft_targets."""
    from detector import loss_step

    config = get_config("demo_simota", ["fpn.out_channels=16", "head.width=16", "head.gn_groups=8"])
    model = Detector(config, 3)
    images = torch.randn(2, 3, *IMAGE)
    seen = {}
    row = ASSIGNERS["simota"]

    def recording(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
        seen["scores"] = pred_scores
        seen["assignment"] = row.run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations)
        return seen["assignment"]

    real_sums = loss_step.loss_sums_batched

    def recording_sums(*args, **kwargs):
        seen["soft_targets"] = kwargs["soft_targets"]
        return real_sums(*args, **kwargs)

    monkeypatch.setitem(ASSIGNERS, "simota", dataclasses.replace(row, run=recording))
    monkeypatch.setattr(loss_step, "loss_sums_batched", recording_sums)
    outputs = model(images)
    model.losses(outputs, two_image_targets(), IMAGE)
    assert seen["scores"].dtype == torch.float32 and not seen["scores"].requires_grad
    torch.testing.assert_close(seen["scores"], outputs.cls_logits.detach().sigmoid(), rtol=0, atol=0)
    assert seen["soft_targets"] is seen["assignment"].matched_metric
