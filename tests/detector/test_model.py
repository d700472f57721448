"""Backbone, FPN, head and detector wiring (specs/model.md)."""
import math

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from detector.configs import BackboneConfig, get_config  # noqa: E402
from detector.modeling import FPN, DenseHead, Detector, build_backbone, load_backbone_weights  # noqa: E402
from detector.modeling.assigners import regress_ranges  # noqa: E402

pytestmark = pytest.mark.torch


def _features(sizes, channels=8, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, h, w, generator=generator) for h, w in sizes]


# ---------------------------------------------------------------------------------------
# head (specs/model.md §3)


@pytest.mark.parametrize("family", ["anchor_based", "anchor_free"])
@pytest.mark.parametrize("quality", [True, False])
def test_head_output_shapes(family, quality):
    sizes = [(8, 6), (4, 3), (2, 2)]
    head = DenseHead(8, 5, 3, width=8, depth=2, gn_groups=4, family=family, quality=quality)
    out = head(_features(sizes))
    num = sum(h * w for h, w in sizes)
    assert out.cls_logits.shape == (2, num, 5)
    assert out.box_regression.shape == (2, num, 4)
    assert (out.quality_logits.shape == (2, num)) if quality else out.quality_logits is None
    assert out.feature_sizes == sizes


def test_head_flattening_is_level_major_row_major():
    """Location (y, x) of level l is row offset_l + y * W_l + x (specs/conventions.md §3)."""
    sizes = [(4, 5), (2, 3)]
    head = DenseHead(8, 3, 2, width=8, depth=1, gn_groups=4)
    features = _features(sizes)
    out = head(features)
    offset = 0
    for level, (feature, (h, w)) in enumerate(zip(features, sizes)):
        cls_map = head.cls_logits(head.cls_tower(feature))  # (B, K, H, W)
        box_map = head.scales[level](head.box_pred(head.box_tower(feature)))
        for y, x in [(0, 0), (h - 1, 0), (0, w - 1), (h - 1, w - 1), (h // 2, w // 2)]:
            row = offset + y * w + x
            torch.testing.assert_close(out.cls_logits[:, row], cls_map[:, :, y, x])
            torch.testing.assert_close(out.box_regression[:, row], box_map[:, :, y, x])
        offset += h * w


def test_head_initialisation():
    head = DenseHead(8, 4, 2, width=8, depth=2, gn_groups=4, prior_prob=0.01)
    torch.testing.assert_close(head.cls_logits.bias, torch.full((4,), -math.log(99.0)))
    # every conv weight ~ N(0, 0.01): the sample std is close to 0.01, far from PyTorch's default init
    weights = torch.cat([m.weight.flatten() for m in head.modules() if isinstance(m, torch.nn.Conv2d)])
    assert 0.008 < float(weights.detach().std()) < 0.012
    assert all(float(s.scale.detach()) == 1.0 for s in head.scales)
    # GN in the towers, no conv bias in front of GN
    towers = list(head.cls_tower) + list(head.box_tower)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in towers) == 4
    assert all(m.bias is None for m in towers if isinstance(m, torch.nn.Conv2d))
    # initial foreground probability is prior_prob wherever the features are small
    out = head(_features([(3, 3), (2, 2)]))
    probs = torch.sigmoid(out.cls_logits)
    assert float((probs - 0.01).abs().max().detach()) < 2e-3


def test_anchor_free_head_regression_is_nonnegative_and_scaled_per_level():
    sizes = [(4, 4), (2, 2)]
    head = DenseHead(8, 2, 2, width=8, depth=1, gn_groups=4, family="anchor_free")
    features = _features(sizes)
    before = head(features).box_regression
    assert bool((before >= 0).all())
    with torch.no_grad():
        head.scales[1].scale.fill_(3.0)
    after = head(features).box_regression
    torch.testing.assert_close(after[:, :16], before[:, :16])  # level 0 unchanged
    torch.testing.assert_close(after[:, 16:], 3.0 * before[:, 16:])  # ReLU(3 x) = 3 ReLU(x)


def test_anchor_based_head_regression_is_linear_in_scale():
    sizes = [(4, 4)]
    head = DenseHead(8, 2, 1, width=8, depth=1, gn_groups=4, family="anchor_based")
    features = _features(sizes)
    before = head(features).box_regression
    assert bool((before < 0).any())  # raw deltas, no ReLU
    with torch.no_grad():
        head.scales[0].scale.fill_(-2.0)
    torch.testing.assert_close(head(features).box_regression, -2.0 * before)


def test_head_rejects_wrong_number_of_levels():
    head = DenseHead(8, 2, 3, width=8, depth=1, gn_groups=4)
    with pytest.raises(ValueError, match="features"):
        head(_features([(4, 4)]))


# ---------------------------------------------------------------------------------------
# backbone (specs/model.md §1)


def test_resnet_backbone_strides_channels_and_frozen_stages():
    backbone = build_backbone(BackboneConfig(name="resnet18", norm="frozen_bn", frozen_stages=1))
    feats = backbone(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[-2:]) for f in feats] == [(8, 12), (4, 6), (2, 3)]
    assert [f.shape[1] for f in feats] == backbone.out_channels == [128, 256, 512]
    assert all(not p.requires_grad for p in backbone.stem.parameters())
    assert all(not p.requires_grad for p in backbone.layer1.parameters())
    assert all(p.requires_grad for p in backbone.layer2.parameters())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.modules())


def test_resnet50_channels_and_group_norm_option():
    backbone = build_backbone(BackboneConfig(name="resnet50", norm="gn", frozen_stages=-1))
    assert backbone.out_channels == [512, 1024, 2048]
    assert any(isinstance(m, torch.nn.GroupNorm) for m in backbone.modules())
    assert all(p.requires_grad for p in backbone.parameters())


def test_frozen_bn_stages_stay_in_eval_mode():
    backbone = build_backbone(BackboneConfig(name="resnet18", norm="bn", frozen_stages=2))
    backbone.train()
    assert not backbone.stem.training and not backbone.layer2.training
    assert backbone.layer3.training


def test_backbone_weights_load_from_a_local_file(tmp_path):
    source = torchvision.models.resnet18(weights=None, num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(source.state_dict(), path)
    backbone = build_backbone(BackboneConfig(name="resnet18", norm="frozen_bn", weights=str(path)))
    torch.testing.assert_close(backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.testing.assert_close(backbone.stem[1].running_var, source.bn1.running_var)


def test_backbone_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_backbone(BackboneConfig(name="resnet18", weights=str(tmp_path / "missing.pth")))
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="does not match"):
        load_backbone_weights(torchvision.models.resnet18(weights=None), wrong)


# ---------------------------------------------------------------------------------------
# FPN (specs/model.md §2)


@pytest.mark.parametrize("levels", [(3, 4, 5), (3, 4, 5, 6, 7), (4, 5, 6)])
def test_fpn_levels_and_sizes(levels):
    fpn = FPN([8, 16, 32], out_channels=8, levels=levels)
    feats = [torch.zeros(1, 8, 16, 16), torch.zeros(1, 16, 8, 8), torch.zeros(1, 32, 4, 4)]
    outputs = fpn(feats)
    assert [tuple(o.shape[-2:]) for o in outputs] == [(128 // 2**level, 128 // 2**level) for level in levels]
    assert all(o.shape[1] == 8 for o in outputs)


def test_fpn_p6_input_is_p5_or_c5():
    feats = [torch.randn(1, 8, 16, 16), torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    from_p5 = FPN([8, 16, 32], 8, (3, 4, 5, 6, 7), "p5")
    from_c5 = FPN([8, 16, 32], 8, (3, 4, 5, 6, 7), "c5")
    assert from_p5.fpn.extra_blocks.p6.in_channels == 8 and from_p5.fpn.extra_blocks.use_P5
    assert from_c5.fpn.extra_blocks.p6.in_channels == 32 and not from_c5.fpn.extra_blocks.use_P5
    p = from_p5(feats)
    torch.testing.assert_close(p[3], from_p5.fpn.extra_blocks.p6(p[2]))  # P6 = conv(P5)


def test_fpn_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels"):
        FPN([8, 16, 32], 8, (3, 5))


# ---------------------------------------------------------------------------------------
# detector (specs/model.md §4)


def test_detector_priors_match_head_outputs():
    config = get_config("demo")
    model = Detector(config, 10)
    out = model(torch.zeros(1, 3, 64, 96))
    priors = model.priors((64, 96), out.feature_sizes)
    assert priors.anchors.shape == (out.cls_logits.shape[1], 4)
    side = priors.anchors[:, 2] - priors.anchors[:, 0]
    torch.testing.assert_close(side[:96], torch.full((96,), config.head.anchor_scale * 8.0))
    torch.testing.assert_close(priors.points[0], torch.tensor([4.0, 4.0]))
    with pytest.raises(ValueError, match="multiple of 32"):
        model.priors((72, 96), out.feature_sizes)


def test_anchor_free_detector_has_no_anchors_and_auto_regress_ranges():
    config = get_config("demo_piou")
    model = Detector(config, 10)
    out = model(torch.zeros(1, 3, 64, 64))
    priors = model.priors((64, 64), out.feature_sizes)
    assert priors.anchors is None
    assert regress_ranges(config.assign, priors.levels) == ((-1.0, 64.0), (64.0, 128.0), (128.0, math.inf))
    assert set(priors.strides.tolist()) == {8.0, 16.0, 32.0}


# ---------------------------------------------------------------------------------------
# several anchors per location and the RetinaNet head (specs/model.md §3, §3.2)


@pytest.mark.parametrize("head_type, norm, quality", [("atss", "gn", True), ("retinanet", "none", False)])
def test_head_with_several_anchors_per_location_shapes_and_order(head_type, norm, quality):
    """Output row ``offset_l + (y * W_l + x) * n + a`` is anchor a of location (y, x): the
    conv channels ``a * K + k`` (classes), ``a * 4 + c`` (box), ``a`` (quality)."""
    sizes, n, classes = [(4, 5), (2, 3)], 9, 3
    head = DenseHead(8, classes, 2, width=8, depth=1, gn_groups=4, quality=quality, head_type=head_type, norm=norm,
                     num_anchors=n)
    features = _features(sizes)
    out = head(features)
    total = n * sum(h * w for h, w in sizes)
    assert out.cls_logits.shape == (2, total, classes) and out.box_regression.shape == (2, total, 4)
    assert (out.quality_logits.shape == (2, total)) if quality else out.quality_logits is None
    offset = 0
    for level, (feature, (h, w)) in enumerate(zip(features, sizes)):
        cls_map = head.cls_logits(head.cls_tower(feature))  # (B, n * K, H, W)
        box_map = head.box_pred(head.box_tower(feature))  # (B, n * 4, H, W)
        if head.scales is not None:
            box_map = head.scales[level](box_map)
        for y, x in [(0, 0), (h - 1, 0), (0, w - 1), (h // 2, w // 2)]:
            for a in (0, 4, n - 1):
                row = offset + (y * w + x) * n + a
                torch.testing.assert_close(out.cls_logits[:, row], cls_map[:, a * classes : (a + 1) * classes, y, x])
                torch.testing.assert_close(out.box_regression[:, row], box_map[:, a * 4 : (a + 1) * 4, y, x])
                if quality:
                    quality_map = head.quality(head.box_tower(feature))
                    torch.testing.assert_close(out.quality_logits[:, row], quality_map[:, a, y, x])
        offset += n * h * w


def test_retinanet_head_has_no_norm_no_scale_and_biased_convs():
    head = DenseHead(8, 3, 2, width=8, depth=2, gn_groups=4, quality=False, head_type="retinanet", norm="none",
                     num_anchors=9)
    assert head.scales is None
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())
    assert all(conv.bias is not None for conv in head.cls_tower if isinstance(conv, torch.nn.Conv2d))
    assert head.cls_logits.out_channels == 27 and head.box_pred.out_channels == 36
    torch.testing.assert_close(head.cls_logits.bias, torch.full((27,), -math.log(99.0)))
    with pytest.raises(ValueError, match="num_anchors"):
        DenseHead(8, 3, 2, family="anchor_free", quality=False, num_anchors=9)
    with pytest.raises(ValueError, match="norm"):
        DenseHead(8, 3, 2, norm="bn")


def test_retinanet_priors_and_decoding_pair_anchor_i_with_output_row_i():
    config = get_config("demo_retinanet")
    model = Detector(config, 4)
    out = model(torch.zeros(1, 3, 64, 96))
    priors = model.priors((64, 96), out.feature_sizes)
    n = 9
    assert priors.anchors.shape == (out.cls_logits.shape[1], 4) == (n * (8 * 12 + 4 * 6 + 2 * 3), 4)
    assert priors.num_per_level == [n * 8 * 12, n * 4 * 6, n * 2 * 3]
    assert priors.points.shape == (len(priors.anchors), 2) and priors.strides.shape == (len(priors.anchors),)
    centres = (priors.anchors[:, :2] + priors.anchors[:, 2:]) / 2
    torch.testing.assert_close(centres, priors.points, rtol=0, atol=0)  # each anchor on its location's point
    assert priors.delta_stds == (1.0, 1.0, 1.0, 1.0)
    # a code predicted at row i decodes against anchor i: zero codes give the anchors back,
    # and a code (dx, 0, 0, 0) moves anchor i by dx times its own width (stds 1)
    codes = torch.zeros(1, len(priors.anchors), 4)
    torch.testing.assert_close(priors.decode(codes)[0], priors.anchors)
    index = torch.tensor([0, 1, 5, 8, 9 * 13 + 2, len(priors.anchors) - 1])
    shift = torch.zeros(len(index), 4)
    shift[:, 0] = 0.5
    width = priors.anchors[index, 2] - priors.anchors[index, 0]
    moved = priors.decode_at(index, shift)
    torch.testing.assert_close(moved[:, 0], priors.anchors[index, 0] + 0.5 * width)
    # the per-location anchors are RetinaNet's 3 ratios x 3 scales of side 4 * 8 * 2^(j / 3)
    first = priors.anchors[:9]
    sides = torch.sqrt((first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1]))
    torch.testing.assert_close(sides, 32 * torch.tensor([1.0, 2 ** (1 / 3), 2 ** (2 / 3)] * 3), rtol=1e-3, atol=0)
