"""The GFL and GFLV2 heads in the detector (specs/model.md §3.1, specs/gfl.md §7): outputs,
decoding, the loss terms, GFLV2's joint score, assignment on the distribution's boxes, and
training end to end."""
import dataclasses
import json
import math

import pytest

torch = pytest.importorskip("torch")

from detector import engine, gfl, losses  # noqa: E402
from detector.assign.atss import assign_atss_batched  # noqa: E402
from detector.boxes import aligned_box_iou  # noqa: E402
from detector.configs import CONFIGS, get_config  # noqa: E402
from detector.data import loaders  # noqa: E402
from detector.data.collate import collate, pad_targets  # noqa: E402
from detector.modeling import ASSIGNERS, Detector, HeadOutputs  # noqa: E402
from detector.modeling.head import HEAD_TYPES  # noqa: E402
from detector.paper_rows import rows_of_config  # noqa: E402
from detector.postprocess import clip_boxes  # noqa: E402
from detector.train import train  # noqa: E402
from tests.detector.heads import IMAGE, small_model, two_image_targets  # noqa: E402
from tests.detector.test_train_smoke import tiny_config  # noqa: E402

pytestmark = pytest.mark.torch

# ---------------------------------------------------------------------------------------
# configuration


def test_head_types_and_config_requirements():
    assert HEAD_TYPES[:3] == ("atss", "gfl", "gflv2")  # other heads (retinanet, vfnet) follow
    assert get_config("demo_atss").head.type == "atss" and get_config("demo_gflv2").head.reg_max == 16
    assert get_config("demo_gflv2", ["head.type=gfl", "head.reg_max=7"]).head.reg_max == 7
    for override, key in (("head.family=anchor_free", "head.family"), ("head.quality=iou", "head.quality"),
                          ("loss.cls=focal", "loss.cls"), ("head.reg_max=0", "head.reg_max"),
                          ("head.type=gfl3", "head.type")):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            get_config("demo_gflv2", [override])


def test_paper_configs_follow_the_atss_recipe_with_the_gflv2_head():
    atss = CONFIGS["atss_r50_1x"]
    for name, assign in (("gflv2_r50_1x", "atss"), ("gflv2_ciou_r50_1x", "dynamic_atss")):
        config = CONFIGS[name]
        assert "Dynamic ATSS paper Table 4" in config.reproduces and rows_of_config(name), name
        assert (config.head.type, config.head.reg_max, config.head.quality, config.head.family) == \
            ("gflv2", 16, "none", "anchor_based")
        assert config.assign.name == assign
        assert (config.loss.cls, config.loss.box, config.loss.box_weight) == ("qfl", "giou", 2.0)
        assert config.inference == dataclasses.replace(atss.inference, score_mode="cls")
        assert (config.solver, config.data, config.backbone, config.fpn) == (atss.solver, atss.data, atss.backbone, atss.fpn)
        assert dataclasses.replace(config.head, type="atss", quality="centerness") == atss.head
    assert CONFIGS["gfl_r50_1x"].head.type == "gfl" and not rows_of_config("gfl_r50_1x")
    for name, assign in (("demo_gflv2", "atss"), ("demo_gflv2_ciou", "dynamic_atss")):
        config = CONFIGS[name]
        assert (config.head.type, config.assign.name, config.backbone.name, config.data.digits_image_size) == \
            ("gflv2", assign, "tiny", 128)


# ---------------------------------------------------------------------------------------
# outputs and decoding


@pytest.mark.parametrize("head_type, reg_max", [("gfl", 16), ("gflv2", 16), ("gflv2", 7)])
def test_head_output_shapes(head_type, reg_max):
    model = small_model("demo_gflv2", f"head.type={head_type}", f"head.reg_max={reg_max}").eval()
    assert model.head.quality is None
    outputs = model(torch.randn(2, 3, *IMAGE))
    locations = sum(h * w for h, w in outputs.feature_sizes)
    assert outputs.feature_sizes == [(8, 12), (4, 6), (2, 3)]
    assert outputs.cls_logits.shape == (2, locations, 3)
    assert outputs.box_regression.shape == (2, locations, 4 * (reg_max + 1))
    assert outputs.quality_logits is None
    if head_type == "gfl":
        assert outputs.dgqp_quality is None and model.head.dgqp is None
    else:
        assert outputs.dgqp_quality.shape == (2, locations)
        torch.testing.assert_close(outputs.dgqp_quality, model.head.dgqp(outputs.box_regression))
        assert bool(((outputs.dgqp_quality - 0.5).abs() < 0.01).all())  # N(0, 0.01) weights: 0.5 at start
    # the level's Scale multiplies the distribution logits (mmdet: scale(gfl_reg(x)))
    with torch.no_grad():
        model.head.scales[0].scale.fill_(2.0)
    doubled = model(torch.zeros(1, 3, *IMAGE))
    with torch.no_grad():
        model.head.scales[0].scale.fill_(1.0)
    plain = model(torch.zeros(1, 3, *IMAGE))
    first = 8 * 12
    torch.testing.assert_close(doubled.box_regression[:, :first], 2 * plain.box_regression[:, :first])
    torch.testing.assert_close(doubled.box_regression[:, first:], plain.box_regression[:, first:])


def test_priors_decode_the_distribution_from_the_anchor_centres():
    model = small_model("demo_gflv2")
    priors = model.priors(IMAGE)
    assert priors.reg_max == 16 and small_model("demo_atss").priors(IMAGE).reg_max is None
    centres = (priors.anchors[:, :2] + priors.anchors[:, 2:]) / 2
    torch.testing.assert_close(centres, priors.points)  # the points are the anchor centres
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2, priors.points.shape[0], 68, generator=generator) * 3
    boxes = priors.decode(logits)
    expected = gfl.decode_distribution(priors.points, priors.strides, logits)
    torch.testing.assert_close(boxes, expected, rtol=0, atol=0)
    index = torch.tensor([0, 5, 96, 120, 125])
    torch.testing.assert_close(priors.decode_at(index, logits[1, index]), expected[1, index], rtol=0, atol=0)
    # a one-hot distribution at bin 3 of every side is a box of 3 strides around the centre
    one_hot = torch.full((1, 1, 4, 17), -30.0)
    one_hot[..., 3] = 30.0
    box = priors.decode_at(torch.tensor([96]), one_hot.reshape(1, 68))  # first location of stride 16
    torch.testing.assert_close(box, torch.tensor([[8.0 - 48, 8.0 - 48, 8.0 + 48, 8.0 + 48]]))


# ---------------------------------------------------------------------------------------
# the loss terms


def _scene(head_type, cls_shift):
    model = small_model("demo_gflv2", f"head.type={head_type}")
    priors = model.priors(IMAGE)
    locations = priors.points.shape[0]
    generator = torch.Generator().manual_seed(2)
    cls_logits = (torch.randn(2, locations, 3, generator=generator) + cls_shift).requires_grad_()
    box_logits = (torch.randn(2, locations, 68, generator=generator) * 2).requires_grad_()
    quality = (torch.rand(2, locations, generator=generator) * 0.8 + 0.1).requires_grad_() if head_type == "gflv2" else None
    sizes = [(8, 12), (4, 6), (2, 3)]
    return model, priors, HeadOutputs(cls_logits, box_logits, None, sizes, quality)


def _direct_terms(priors, outputs, targets, matched_gt):
    """The GFL head's terms image by image from detector.gfl, the GIoU and QFL functions."""
    cls_sum, weighted_box, weight_sum, plain, dfl_sum, count = 0.0, 0.0, 0.0, 0.0, 0.0, 0
    for b in range(2):
        boxes = gfl.decode_distribution(priors.points, priors.strides, outputs.box_regression[b])
        matched = matched_gt[b]
        pos = matched >= 0
        gt = targets.gt_boxes[b][matched[pos]]
        labels = targets.gt_labels[b][matched[pos]]
        soft = torch.zeros_like(outputs.cls_logits[b])
        soft[pos.nonzero().flatten(), labels] = aligned_box_iou(boxes[pos].detach(), gt)
        if outputs.dgqp_quality is None:
            scores = torch.sigmoid(outputs.cls_logits[b])
            cls_sum = cls_sum + losses.quality_focal_loss(outputs.cls_logits[b], soft).sum()
        else:
            scores = torch.sigmoid(outputs.cls_logits[b]) * outputs.dgqp_quality[b][:, None]
            cls_sum = cls_sum + losses.quality_focal_loss_prob(scores, soft).sum()
        weights = scores.detach()[pos].max(dim=1).values
        giou = losses.giou_loss(boxes[pos], gt)
        weighted_box = weighted_box + (weights * giou).sum()
        weight_sum = weight_sum + weights.sum()
        plain = plain + giou.sum()
        distances = gfl.distance_targets(priors.points[pos], priors.strides[pos], gt)
        dfl = gfl.distribution_focal_loss(outputs.box_regression[b][pos], distances)
        dfl_sum = dfl_sum + gfl.weighted_dfl(dfl, weights, loss_weight=0.25)
        count += int(pos.sum())
    # weighted means over the batch (specs/losses.md §6), also where the sum of the weights is below 1
    terms = {"loss_cls": cls_sum / max(count, 1), "loss_box": 2.0 * weighted_box / weight_sum, "loss_dfl": dfl_sum / weight_sum}
    return terms, float(weight_sum), float(plain.detach()) / count, count


@pytest.mark.parametrize("head_type", ["gfl", "gflv2"])
@pytest.mark.parametrize("cls_shift", [0.0, -6.0])  # sum of weights above 1, and below 1 (where mmdet clamps it)
def test_loss_terms_equal_a_direct_computation(head_type, cls_shift):
    model, priors, outputs = _scene(head_type, cls_shift)
    targets = two_image_targets()
    result = model.objective(priors, outputs, targets)
    # plain ATSS on the anchors
    atss = assign_atss_batched(priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid).matched_gt
    torch.testing.assert_close(result.assignment.matched_gt, atss)
    expected, weight_sum, box_loss_pos, count = _direct_terms(priors, outputs, targets, atss)
    assert (weight_sum > 1.0) == (cls_shift == 0.0)
    assert set(result.terms) == {"loss_cls", "loss_box", "loss_dfl"}
    for key, value in expected.items():
        torch.testing.assert_close(result.terms[key], value, rtol=1e-5, atol=1e-7, msg=key)
        assert float(result.terms[key].detach()) > 0, key
    assert int(result.num_pos) == count > 0
    assert float(result.box_loss_pos) == pytest.approx(box_loss_pos, rel=1e-5)  # unweighted mean GIoU loss
    # the same gradients: the weights and the IoU targets are constants, the rest is differentiated
    leaves = [t for t in (outputs.cls_logits, outputs.box_regression, outputs.dgqp_quality) if t is not None]
    grads = torch.autograd.grad(sum(result.terms.values()), leaves)
    for got, want in zip(grads, torch.autograd.grad(sum(expected.values()), leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
    # the box branch learns at the positives only
    positive = (result.assignment.matched_gt >= 0)
    assert bool((grads[1][~positive] == 0).all())
    assert bool((grads[1][positive].abs().sum(dim=-1) > 0).all())
    if head_type == "gflv2":  # the joint score trains the quality of every location
        assert bool((grads[2][~positive] != 0).any())


def test_losses_without_positives():
    model, priors, outputs = _scene("gflv2", 0.0)
    empty = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2)
    result = model.objective(priors, outputs, empty)
    assert int(result.num_pos) == 0 and float(result.box_loss_pos) == 0.0
    assert float(result.terms["loss_box"].detach()) == 0.0 and float(result.terms["loss_dfl"].detach()) == 0.0
    joint = torch.sigmoid(outputs.cls_logits) * outputs.dgqp_quality[..., None]
    expected = losses.quality_focal_loss_prob(joint, torch.zeros_like(joint)).sum()
    torch.testing.assert_close(result.terms["loss_cls"], expected)


# ---------------------------------------------------------------------------------------
# GFLV2's joint score and the assignment


def test_gflv2_score_is_the_class_probability_times_the_dgqp_quality():
    model = small_model("demo_gflv2", "inference.score_threshold=0.001")
    model.eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *IMAGE))
    detections = model.predict(outputs, IMAGE, [IMAGE, (60, 90)])
    priors = model.priors(IMAGE)
    for b, found in enumerate(detections):
        assert len(found.scores) > 0
        index, labels = found.anchor_index, found.labels
        expected = torch.sigmoid(outputs.cls_logits[b, index, labels]) * outputs.dgqp_quality[b, index]
        torch.testing.assert_close(found.scores, expected, rtol=1e-5, atol=1e-8)
        boxes = gfl.decode_distribution(priors.points, priors.strides, outputs.box_regression[b])[index]
        torch.testing.assert_close(found.boxes, clip_boxes(boxes, [IMAGE, (60, 90)][b]))
    # the threshold reads the joint score (about 0.01 x 0.5 here), not the class probability (about 0.01)
    assert bool((torch.sigmoid(outputs.cls_logits) > 0.008).any())
    model.config = dataclasses.replace(model.config, inference=dataclasses.replace(model.config.inference,
                                                                                   score_threshold=0.008))
    assert all(len(found.scores) == 0 for found in model.predict(outputs, IMAGE, [IMAGE, IMAGE]))


def test_dynamic_atss_reads_the_boxes_of_the_distribution_detached(monkeypatch):
    model = small_model("demo_gflv2_ciou")
    row = ASSIGNERS["dynamic_atss"]
    seen = []

    def recording(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations):
        seen.append(pred_boxes)
        return row.run(options, priors, targets, pred_boxes, pred_scores, iteration, max_iterations)

    monkeypatch.setitem(ASSIGNERS, "dynamic_atss", dataclasses.replace(row, run=recording))
    outputs = model(torch.randn(2, 3, *IMAGE))
    result = model.losses(outputs, two_image_targets(), IMAGE, iteration=3, max_iterations=10)
    priors = model.priors(IMAGE, outputs.feature_sizes)
    assert len(seen) == 1 and not seen[0].requires_grad
    expected = gfl.decode_distribution(priors.points, priors.strides, outputs.box_regression.detach())
    torch.testing.assert_close(seen[0], expected, rtol=0, atol=0)
    assert int(result.num_pos) > 0 and "jaccard_vs_atss" in result.diagnostics
    sum(result.terms.values()).backward()
    assert model.head.box_pred.weight.grad is not None and model.head.dgqp.fc1.weight.grad is not None


# ---------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


@pytest.mark.parametrize("name", ["demo_gflv2", "demo_gflv2_ciou"])
def test_overfit_one_batch(data_root, name):
    config = tiny_config(data_root, name, "solver.warmup=none", "solver.lr=0.01")
    data = loaders.build_datasets(config)
    batch = collate([data.train[i] for i in range(4)], size_divisor=loaders.size_divisor(config))
    torch.manual_seed(0)
    model = Detector(config, data.num_classes)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    history = []
    for step in range(30):
        result = engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=step, max_iterations=30)
        assert not result.skipped and result.num_pos > 0
        assert set(result.terms) == {"loss_cls", "loss_box", "loss_dfl", "loss"}
        assert all(math.isfinite(v) for v in result.terms.values())
        history.append(result.terms)
    first = [sum(h[k] for h in history[:3]) / 3 for k in ("loss", "loss_dfl")]
    last = [sum(h[k] for h in history[-3:]) / 3 for k in ("loss", "loss_dfl")]
    assert last[0] < 0.8 * first[0], [h["loss"] for h in history]
    assert last[1] < first[1], [h["loss_dfl"] for h in history]


def test_train_evaluates_and_resumes_exactly(data_root, tmp_path):
    config = tiny_config(data_root, "demo_gflv2")  # 4 iterations per epoch, 2 epochs
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    metrics = train(config, straight, progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    records = [json.loads(line) for line in (straight / "log.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(math.isfinite(r["loss"]) and "loss_dfl" in r for r in records)
    assert train(config, resumed, progress=False, stop_after=3, evaluate_at_end=False) is None
    train(config, resumed, resume=True, progress=False, evaluate_at_end=False)
    from detector.checkpoint import load_checkpoint

    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert a["iteration"] == b["iteration"] == 8
    assert any(key.startswith("head.dgqp.") for key in a["model"]) and a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
