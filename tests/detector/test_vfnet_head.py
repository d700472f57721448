"""The VFNet head in the detector (specs/model.md §3.3, specs/vfnet.md): outputs, the star
offsets, the loss terms, assignment on the refined boxes, prediction and training end to end."""
import dataclasses
import json
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector import engine, losses  # noqa: E402
from detector.assign.atss import assign_atss_batched  # noqa: E402
from detector.boxes import aligned_box_iou  # noqa: E402
from detector.coders import decode_ltrb  # noqa: E402
from detector.configs import CONFIGS, get_config  # noqa: E402
from detector.data import loaders  # noqa: E402
from detector.data.collate import collate, pad_targets  # noqa: E402
from detector.modeling import ASSIGNERS, Detector, HeadOutputs  # noqa: E402
from detector.modeling.head import HEAD_TYPES  # noqa: E402
from detector.paper_rows import rows_of_config  # noqa: E402
from detector.postprocess import clip_boxes  # noqa: E402
from detector.train import train  # noqa: E402
from reference import vfnet as RV  # noqa: E402
from tests.detector.heads import IMAGE, small_model, two_image_targets  # noqa: E402
from tests.detector.test_train_smoke import tiny_config  # noqa: E402

pytestmark = pytest.mark.torch

SIZES = [(8, 12), (4, 6), (2, 3)]


# ---------------------------------------------------------------------------------------
# configuration


def test_head_type_and_config_requirements():
    assert "vfnet" in HEAD_TYPES
    config = get_config("demo_vfnet")
    assert (config.head.type, config.head.quality, config.loss.cls, config.loss.box_weight) == ("vfnet", "none", "vfl", 1.5)
    for override, key in (("head.family=anchor_free", "head.family"), ("head.quality=iou", "head.quality"),
                          ("loss.cls=qfl", "loss.cls"), ("loss.box=l1", "loss.box"),
                          ("head.anchor_ratios=0.5,1,2", "head.anchor")):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            get_config("demo_vfnet", [override])
    with pytest.raises(ValueError, match=r"loss\.soft_target"):
        get_config("demo_vfnet", ["assign.name=tal", "loss.soft_target=assigner"])


def test_paper_configs_follow_the_atss_recipe_with_the_vfnet_head():
    atss = CONFIGS["atss_r50_1x"]
    for name, assign, row in (("vfnet_r50_1x", "atss", "'VFL'"), ("vfnet_ciou_r50_1x", "dynamic_atss", "'VFL+CIoUs'")):
        config = CONFIGS[name]
        assert f"Dynamic ATSS paper Table 4 {row}" == config.reproduces and rows_of_config(name), name
        assert (config.head.type, config.head.depth, config.head.quality, config.head.anchor_scale) == ("vfnet", 3, "none", 8.0)
        assert config.assign.name == assign
        assert (config.loss.cls, config.loss.box, config.loss.box_weight) == ("vfl", "giou", 1.5)
        assert config.inference == dataclasses.replace(atss.inference, score_mode="cls")
        assert (config.solver, config.data, config.backbone, config.fpn) == (atss.solver, atss.data, atss.backbone, atss.fpn)
        assert dataclasses.replace(config.head, type="atss", quality="centerness", depth=4) == atss.head
    for name, assign in (("demo_vfnet", "atss"), ("demo_vfnet_ciou", "dynamic_atss")):
        config = CONFIGS[name]
        assert (config.head.type, config.assign.name, config.backbone.name, config.data.digits_image_size) == \
            ("vfnet", assign, "tiny", 128)


# ---------------------------------------------------------------------------------------
# outputs, the star offsets and the gradients


def test_output_shapes_and_the_refined_box():
    model = small_model("demo_vfnet").eval()
    assert model.head.cls_dconv.weight.shape == (16, 16, 3, 3)
    images = torch.randn(2, 3, *IMAGE)
    outputs = model(images)
    locations = sum(h * w for h, w in SIZES)
    assert outputs.feature_sizes == SIZES
    assert outputs.cls_logits.shape == (2, locations, 3)
    assert outputs.box_regression.shape == (2, locations, 8)
    assert outputs.quality_logits is None and outputs.dgqp_quality is None
    assert bool((outputs.box_regression > 0).all())
    # level 0 by hand: initial = exp(Scale(conv)) * 8 strides; refined = exp(Scale'(conv')) * initial
    features = model.fpn(model.backbone(images))
    _, initial, refined = model.head.forward_level(features[0], 0)
    first = outputs.box_regression[:, :96]
    torch.testing.assert_close(first[..., :4], initial.permute(0, 2, 3, 1).reshape(2, 96, 4) / 8)
    torch.testing.assert_close(first[..., 4:], refined.permute(0, 2, 3, 1).reshape(2, 96, 4) / 8)
    head = model.head
    box_feature = head.box_tower(features[0])
    expected_initial = head.scales[0](head.box_init(head.box_init_conv(box_feature))).exp() * 64.0
    torch.testing.assert_close(initial, expected_initial)
    ratio = head.scales_refine[0](head.box_refine(torch.relu(head.box_refine_dconv(
        box_feature, head.star_offsets(initial, 8.0))))).exp()
    torch.testing.assert_close(refined, ratio * initial)
    # the priors decode the refined boxes; decode_initial the initial ones
    priors = model.priors(IMAGE)
    assert priors.refined_ltrb and not small_model("demo_atss").priors(IMAGE).refined_ltrb
    torch.testing.assert_close(priors.decode(outputs.box_regression)[0],
                               decode_ltrb(priors.points, outputs.box_regression[0, :, 4:], priors.strides))
    torch.testing.assert_close(priors.decode_initial(outputs.box_regression)[1],
                               decode_ltrb(priors.points, outputs.box_regression[1, :, :4], priors.strides))


def test_star_offsets_equal_the_reference_and_sample_the_star_points():
    model = small_model("demo_vfnet")
    seen = []
    model.head.cls_dconv.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach()))
    images = torch.randn(1, 3, *IMAGE)
    outputs = model(images)
    assert len(seen) == 3  # one call per level, offsets (1, 18, H_l, W_l)
    start = 0
    for level, (stride, (h, w)) in enumerate(zip((8.0, 16.0, 32.0), SIZES)):
        distances = outputs.box_regression[0, start:start + h * w, :4].detach().double() * stride  # pixels
        expected = RV.star_dcn_offsets(distances.numpy(), stride)
        got = seen[level][0].permute(1, 2, 0).reshape(-1, 18).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)
        start += h * w
    # the deformable conv with these offsets samples the star points (one tap at a time)
    from torchvision.ops import deform_conv2d

    x = torch.randn(1, 1, 12, 12, dtype=torch.float64)
    distances = torch.tensor([[16.0, 8.0, 24.0, 40.0]], dtype=torch.float64)  # 2, 1, 3, 5 cells at stride 8
    offsets = model.head.star_offsets(distances.reshape(1, 4, 1, 1).expand(1, 4, 12, 12), 8.0)
    for k, (dy, dx) in enumerate(RV.star_points(distances.numpy(), 8.0)[0].astype(int)):
        weight = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
        weight[0, 0, k // 3, k % 3] = 1.0
        out = deform_conv2d(x, offsets, weight, None, padding=(1, 1))
        assert float(out[0, 0, 5, 5]) == float(x[0, 0, 5 + dy, 5 + dx]), k


def test_gradient_mul_and_the_detached_initial_box():
    model = small_model("demo_vfnet")
    features = [f.detach() for f in model.fpn(model.backbone(torch.randn(1, 3, *IMAGE)))]
    weight = model.head.box_init.weight

    def grad_of(loss_of_level, gradient_mul):
        model.head.gradient_mul = gradient_mul
        (grad,) = torch.autograd.grad(loss_of_level(model.head.forward_level(features[0], 0)), weight)
        return grad

    def through_scores(out):  # reaches the initial box only through the star offsets
        return out[0].pow(2).sum()

    full, tenth = grad_of(through_scores, 1.0), grad_of(through_scores, 0.1)
    assert float(full.abs().sum()) > 0
    torch.testing.assert_close(tenth, 0.1 * full, rtol=1e-4, atol=1e-10)
    # the refined box multiplies the detached initial box: with gradient_mul 0 nothing reaches it
    assert float(grad_of(lambda out: out[2].sum(), 0.0).abs().sum()) == 0.0
    assert float(grad_of(lambda out: out[1].sum(), 0.0).abs().sum()) > 0


# ---------------------------------------------------------------------------------------
# the loss terms


def _scene(name="demo_vfnet"):
    model = small_model(name)
    priors = model.priors(IMAGE)
    locations = priors.points.shape[0]
    generator = torch.Generator().manual_seed(2)
    cls_logits = (torch.randn(2, locations, 3, generator=generator) - 2).requires_grad_()
    distances = (torch.rand(2, locations, 8, generator=generator) * 3 + 0.2).requires_grad_()
    return model, priors, HeadOutputs(cls_logits, distances, None, SIZES)


def _direct_terms(priors, outputs, targets, matched_gt):
    """The VFNet terms image by image from decode_ltrb, aligned_box_iou, GIoU and VFL."""
    cls_sum, sums, count = 0.0, {"init": [0.0, 0.0], "refine": [0.0, 0.0]}, 0
    plain_refined = 0.0
    for b in range(2):
        initial = decode_ltrb(priors.points, outputs.box_regression[b, :, :4], priors.strides)
        refined = decode_ltrb(priors.points, outputs.box_regression[b, :, 4:], priors.strides)
        matched = matched_gt[b]
        pos = matched >= 0
        gt = targets.gt_boxes[b][matched[pos]]
        labels = targets.gt_labels[b][matched[pos]]
        soft = torch.zeros_like(outputs.cls_logits[b])
        refined_iou = aligned_box_iou(refined[pos].detach(), gt).clamp(min=1e-6)
        soft[pos.nonzero().flatten(), labels] = refined_iou
        cls_sum = cls_sum + losses.varifocal_loss(outputs.cls_logits[b], soft).sum()
        for key, boxes in (("init", initial), ("refine", refined)):
            weights = aligned_box_iou(boxes[pos].detach(), gt).clamp(min=1e-6)
            giou = losses.giou_loss(boxes[pos], gt)
            sums[key][0] = sums[key][0] + (weights * giou).sum()
            sums[key][1] = sums[key][1] + weights.sum()
            if key == "refine":
                plain_refined = plain_refined + float(giou.detach().sum())
        count += int(pos.sum())
    terms = {"loss_cls": cls_sum / max(count, 1), "loss_box": 1.5 * sums["init"][0] / sums["init"][1],
             "loss_box_refine": 2.0 * sums["refine"][0] / sums["refine"][1]}
    return terms, plain_refined / count, count


def test_loss_terms_equal_a_direct_computation():
    model, priors, outputs = _scene()
    targets = two_image_targets()
    result = model.objective(priors, outputs, targets)
    atss = assign_atss_batched(priors.anchors, priors.num_per_level, targets.gt_boxes, targets.gt_valid).matched_gt
    torch.testing.assert_close(result.assignment.matched_gt, atss)
    expected, box_loss_pos, count = _direct_terms(priors, outputs, targets, atss)
    assert set(result.terms) == {"loss_cls", "loss_box", "loss_box_refine"}
    for key, value in expected.items():
        torch.testing.assert_close(result.terms[key], value, rtol=1e-5, atol=1e-7, msg=key)
        assert float(result.terms[key].detach()) > 0, key
    assert int(result.num_pos) == count > 0
    assert float(result.box_loss_pos) == pytest.approx(box_loss_pos, rel=1e-5)  # refined boxes, unweighted
    leaves = [outputs.cls_logits, outputs.box_regression]
    grads = torch.autograd.grad(sum(result.terms.values()), leaves)
    for got, want in zip(grads, torch.autograd.grad(sum(expected.values()), leaves)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-8)
    positive = result.assignment.matched_gt >= 0
    assert bool((grads[1][~positive] == 0).all())  # both boxes learn at the positives only
    assert bool((grads[1][positive][:, :4].abs().sum(-1) > 0).all())
    assert bool((grads[1][positive][:, 4:].abs().sum(-1) > 0).all())
    # the IoU weights differ between the two boxes: swapping them changes the terms
    swapped = HeadOutputs(outputs.cls_logits, outputs.box_regression[..., [4, 5, 6, 7, 0, 1, 2, 3]], None, SIZES)
    other = model.objective(priors, swapped, targets)
    assert float(other.terms["loss_cls"].detach()) != pytest.approx(float(result.terms["loss_cls"].detach()), rel=1e-6)


def test_losses_without_positives():
    model, priors, outputs = _scene()
    empty = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2)
    result = model.objective(priors, outputs, empty)
    assert int(result.num_pos) == 0 and float(result.box_loss_pos) == 0.0
    assert float(result.terms["loss_box"].detach()) == 0.0 and float(result.terms["loss_box_refine"].detach()) == 0.0
    expected = losses.varifocal_loss(outputs.cls_logits, torch.zeros_like(outputs.cls_logits)).sum()
    torch.testing.assert_close(result.terms["loss_cls"], expected)


def test_dynamic_atss_reads_the_refined_boxes_detached(monkeypatch):
    model = small_model("demo_vfnet_ciou")
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
    refined = torch.stack([decode_ltrb(priors.points, r[:, 4:], priors.strides) for r in outputs.box_regression.detach()])
    torch.testing.assert_close(seen[0], refined, rtol=0, atol=0)
    initial = torch.stack([decode_ltrb(priors.points, r[:, :4], priors.strides) for r in outputs.box_regression.detach()])
    assert not torch.allclose(seen[0], initial)
    assert int(result.num_pos) > 0 and "jaccard_vs_atss" in result.diagnostics
    sum(result.terms.values()).backward()
    for conv in (model.head.box_init, model.head.box_refine, model.head.cls_logits, model.head.cls_dconv):
        assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0


def test_predict_scores_the_iou_aware_score_with_the_refined_boxes():
    model = small_model("demo_vfnet", "inference.score_threshold=0.001").eval()
    with torch.no_grad():
        outputs = model(torch.randn(2, 3, *IMAGE))
    detections = model.predict(outputs, IMAGE, [IMAGE, (60, 90)])
    priors = model.priors(IMAGE)
    for b, found in enumerate(detections):
        assert len(found.scores) > 0
        index, labels = found.anchor_index, found.labels
        torch.testing.assert_close(found.scores, torch.sigmoid(outputs.cls_logits[b, index, labels]))
        refined = decode_ltrb(priors.points, outputs.box_regression[b, :, 4:], priors.strides)[index]
        torch.testing.assert_close(found.boxes, clip_boxes(refined, [IMAGE, (60, 90)][b]))


# ---------------------------------------------------------------------------------------
# training


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("digits")


@pytest.fixture()
def flush_denormals():
    """The tiny model's CPU steps can slow down 10x or more on denormal floats (measured in
    its backward pass); flushing them keeps the training tests fast and is restored after."""
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


@pytest.mark.parametrize("name", ["demo_vfnet", "demo_vfnet_ciou"])
def test_overfit_one_batch(data_root, name, flush_denormals):
    config = tiny_config(data_root, name, "solver.warmup=none", "solver.lr=0.01")
    data = loaders.build_datasets(config)
    batch = collate([data.train[i] for i in range(4)], size_divisor=loaders.size_divisor(config))
    torch.manual_seed(0)
    model = Detector(config, data.num_classes)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    history = []
    for step in range(25):
        result = engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=step, max_iterations=25)
        assert not result.skipped and result.num_pos > 0
        assert set(result.terms) == {"loss_cls", "loss_box", "loss_box_refine", "loss"}
        assert all(math.isfinite(v) for v in result.terms.values())
        history.append(result.terms)
    # the box terms fall fast; VFL's positives are weighted by their IoU targets, which grow as
    # the boxes improve, so the classification term (and the total) falls more slowly
    first = [sum(h[k] for h in history[:3]) / 3 for k in ("loss", "loss_box_refine")]
    last = [sum(h[k] for h in history[-3:]) / 3 for k in ("loss", "loss_box_refine")]
    assert last[0] < 0.9 * first[0], [h["loss"] for h in history]
    assert last[1] < 0.75 * first[1], [h["loss_box_refine"] for h in history]


def test_train_and_evaluate_end_to_end(data_root, tmp_path, flush_denormals):
    config = tiny_config(data_root, "demo_vfnet_ciou")  # 4 iterations per epoch, 2 epochs
    metrics = train(config, tmp_path / "run", progress=False)
    assert set(metrics) == {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert math.isfinite(metrics["AP"]) and math.isfinite(metrics["AP50"])  # APl is NaN: no large digits
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(math.isfinite(r["loss"]) and "loss_box_refine" in r for r in records)
    from detector.checkpoint import load_checkpoint

    state = load_checkpoint(tmp_path / "run" / "last.pth")["model"]
    assert any(key.startswith("head.cls_dconv.") for key in state) and "head.scales_refine.0.scale" in state
