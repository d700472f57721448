"""Modulated deformable convolutions (DCNv2) in the backbone (specs/model.md §1.2)."""
import copy
import dataclasses
import pickle
import re

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
np = pytest.importorskip("numpy")

from torch import nn  # noqa: E402

from detector.configs import CONFIGS, BackboneConfig, apply_overrides, validate  # noqa: E402
from detector.modeling.backbone import ModulatedDeformConv3x3, build_backbone, use_dcn  # noqa: E402

PAPER_DCN = (2, 3, 4)  # layer2..layer4 = res3-res5


def _conv(in_channels=8, out_channels=6, stride=1, groups=1, bias=False, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, groups=groups, bias=bias)


def _set_offsets(dcn, dy=0.0, dx=0.0, mask_logit=0.0):
    """Make ``dcn``'s predictor output the constant offset (dy, dx) for every tap and location."""
    with torch.no_grad():
        dcn.offset_mask.weight.zero_()
        bias = dcn.offset_mask.bias
        bias[0:18:2] = dy
        bias[1:18:2] = dx
        bias[18:] = mask_logit


# ---------------------------------------------------------------------------------------
# the layer


@pytest.mark.parametrize("stride, groups, bias", [(1, 1, False), (2, 1, False), (1, 2, False), (2, 2, True)])
def test_initial_layer_is_half_the_plain_conv(stride, groups, bias):
    conv = _conv(stride=stride, groups=groups, bias=bias)
    dcn = ModulatedDeformConv3x3(copy.deepcopy(conv))
    assert dcn.stride == (stride, stride) and dcn.groups == groups and dcn.padding == (1, 1)
    assert torch.count_nonzero(dcn.offset_mask.weight) == 0 and torch.count_nonzero(dcn.offset_mask.bias) == 0
    assert dcn.offset_mask.out_channels == 27
    x = torch.randn(2, 8, 11, 13)
    with torch.no_grad():
        offset, mask = dcn.offsets_and_mask(x)
        assert offset.shape[1] == 18 and mask.shape[1] == 9
        assert torch.all(offset == 0) and torch.all(mask == 0.5)
        out, plain = dcn(x), conv(x)
    assert out.shape == plain.shape
    b = conv.bias.reshape(1, -1, 1, 1) if bias else 0.0  # the bias is not modulated
    torch.testing.assert_close(out, 0.5 * (plain - b) + b)


def test_state_dict_keeps_the_conv_weight_name():
    conv = _conv()
    dcn = ModulatedDeformConv3x3(conv)
    assert dcn.weight is conv.weight and dcn.bias is None
    assert list(dcn.state_dict()) == ["weight", "offset_mask.weight", "offset_mask.bias"]
    with pytest.raises(ValueError, match="3x3"):
        ModulatedDeformConv3x3(nn.Conv2d(4, 4, 1))


@pytest.mark.parametrize("axis", ["y", "x"])
def test_integer_offset_equals_the_shifted_plain_conv(axis):
    conv = _conv(groups=2)
    dcn = ModulatedDeformConv3x3(copy.deepcopy(conv))
    _set_offsets(dcn, dy=1.0 if axis == "y" else 0.0, dx=1.0 if axis == "x" else 0.0)  # (dy, dx) order
    x = torch.randn(1, 8, 9, 10)
    with torch.no_grad():
        out, plain = dcn(x), conv(x)
    if axis == "y":  # output row i samples the rows of output row i + 1
        torch.testing.assert_close(out[..., :-1, :], 0.5 * plain[..., 1:, :])
    else:
        torch.testing.assert_close(out[..., :, :-1], 0.5 * plain[..., :, 1:])
    assert not torch.allclose(out, 0.5 * plain)


def test_fractional_offset_is_a_bilinear_sample():
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    with torch.no_grad():  # only the centre tap: the output is the (modulated) sample itself
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
    dcn = ModulatedDeformConv3x3(conv)
    _set_offsets(dcn, dy=0.25, dx=0.5, mask_logit=2.0)
    x = torch.randn(1, 1, 6, 7)
    with torch.no_grad():
        out = dcn(x)[0, 0]
    v = x[0, 0]
    expected = (0.75 * (0.5 * v[:-1, :-1] + 0.5 * v[:-1, 1:]) + 0.25 * (0.5 * v[1:, :-1] + 0.5 * v[1:, 1:]))
    torch.testing.assert_close(out[:-1, :-1], torch.sigmoid(torch.tensor(2.0)) * expected)


def test_gradients_reach_the_offset_and_mask_predictor():
    dcn = ModulatedDeformConv3x3(_conv())
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    dcn(x).square().sum().backward()
    grad = dcn.offset_mask.weight.grad
    assert grad is not None and grad[:18].abs().sum() > 0 and grad[18:].abs().sum() > 0  # offsets and mask
    assert dcn.offset_mask.bias.grad.abs().sum() > 0 and dcn.weight.grad.abs().sum() > 0 and x.grad.abs().sum() > 0


def test_gradcheck_with_non_zero_offsets():
    conv = _conv(in_channels=2, out_channels=1).double()
    dcn = ModulatedDeformConv3x3(conv).double()
    with torch.no_grad():
        dcn.offset_mask.weight.normal_(0.0, 0.3)
        dcn.offset_mask.bias.uniform_(-0.4, 0.4)
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    names = ("weight", "offset_mask.bias")  # the bias moves every offset and mask logit

    def run(x, weight, offset_bias):
        return torch.func.functional_call(dcn, dict(zip(names, (weight, offset_bias))), (x,))

    assert torch.autograd.gradcheck(run, (x, dcn.weight, dcn.offset_mask.bias), eps=1e-6, atol=1e-5, fast_mode=True)


def test_channels_last_input_gives_the_same_output():
    dcn = ModulatedDeformConv3x3(_conv(groups=2))
    _set_offsets(dcn, dy=0.3, dx=-0.6, mask_logit=0.5)
    x = torch.randn(2, 8, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(dcn(x.contiguous(memory_format=torch.channels_last)), dcn(x))


def test_bfloat16_autocast_runs_the_deformable_conv_in_float32():
    conv = _conv(groups=2)
    dcn = ModulatedDeformConv3x3(copy.deepcopy(conv))
    x = torch.randn(1, 8, 10, 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dcn(x)  # float32 input: float32 output
        half = dcn(x.bfloat16())  # bfloat16 input (a previous autocast layer): bfloat16 output
    assert out.dtype == torch.float32 and half.dtype == torch.bfloat16
    with torch.no_grad():
        expected = 0.5 * conv(x)
    torch.testing.assert_close(out, expected, atol=0.05, rtol=0.02)
    torch.testing.assert_close(half.float(), expected, atol=0.1, rtol=0.05)
    out.sum().backward()
    assert dcn.offset_mask.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------
# the backbone


def _conv2s(backbone):
    return {index: [block.conv2 for block in getattr(backbone, f"layer{index}")] for index in (1, 2, 3, 4)}


@pytest.mark.parametrize("style", ["pytorch", "caffe"])
def test_resnet50_dcn_stages_keep_strides_shapes_and_keys(style):
    torch.manual_seed(0)
    plain = build_backbone(BackboneConfig(name="resnet50", style=style))
    dcn = build_backbone(BackboneConfig(name="resnet50", style=style, dcn_stages=PAPER_DCN))
    convs = _conv2s(dcn)
    assert not any(isinstance(conv, ModulatedDeformConv3x3) for conv in convs[1])
    assert all(isinstance(conv, ModulatedDeformConv3x3) for index in PAPER_DCN for conv in convs[index])
    for index in PAPER_DCN:  # the stride stays where the style puts it
        first = getattr(dcn, f"layer{index}")[0]
        assert convs[index][0].stride == ((2, 2) if style == "pytorch" else (1, 1))
        assert tuple(first.conv1.stride) == ((1, 1) if style == "pytorch" else (2, 2))
        assert tuple(first.conv2.weight.shape) == tuple(getattr(plain, f"layer{index}")[0].conv2.weight.shape)
    assert dcn.out_channels == plain.out_channels == [512, 1024, 2048]
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        shapes = [tuple(f.shape) for f in dcn.eval()(images)]
        assert shapes == [tuple(f.shape) for f in plain.eval()(images)] == [(1, 512, 8, 8), (1, 1024, 4, 4), (1, 2048, 2, 2)]
    extra = set(dcn.state_dict()) - set(plain.state_dict())
    assert set(plain.state_dict()) <= set(dcn.state_dict())
    assert extra and all(re.fullmatch(r"layer[234]\.\d+\.conv2\.offset_mask\.(weight|bias)", key) for key in extra)
    assert len(extra) == 2 * (4 + 6 + 3)


def test_resnext_grouped_conv_stays_grouped():
    torch.manual_seed(0)
    plain = torchvision.models.resnext50_32x4d(weights=None)
    network = use_dcn(copy.deepcopy(plain), PAPER_DCN)
    conv, deform = plain.layer3[0].conv2, network.layer3[0].conv2
    assert isinstance(deform, ModulatedDeformConv3x3) and deform.groups == conv.groups == 32
    assert deform.stride == (2, 2) and tuple(deform.weight.shape) == tuple(conv.weight.shape) == (512, 16, 3, 3)
    x = torch.randn(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(deform(x), 0.5 * conv(x))
        images = torch.randn(1, 3, 64, 64)
        plain.eval(), network.eval()
        trunk = lambda net: net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(images))))))))  # noqa: E731
        assert trunk(network).shape == trunk(plain).shape == (1, 2048, 2, 2)


def test_frozen_stages_freeze_the_offset_predictor_with_their_stage():
    backbone = build_backbone(BackboneConfig(name="resnet50", frozen_stages=2, dcn_stages=PAPER_DCN))
    assert not any(p.requires_grad for block in backbone.layer2 for p in block.conv2.offset_mask.parameters())
    assert all(p.requires_grad for block in backbone.layer3 for p in block.conv2.offset_mask.parameters())
    default = build_backbone(BackboneConfig(name="resnet50", dcn_stages=PAPER_DCN))  # the papers' frozen_stages=1
    assert all(p.requires_grad for index in PAPER_DCN for block in getattr(default, f"layer{index}")
               for p in block.conv2.offset_mask.parameters())


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_trains_with_bn_and_gn(norm):
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(name="resnet50", norm=norm, dcn_stages=(3, 4))).train()
    features = backbone(torch.randn(2, 3, 64, 64))
    sum(f.mean() for f in features).backward()
    assert backbone.layer4[0].conv2.offset_mask.weight.grad.abs().sum() > 0
    assert not isinstance(backbone.layer2[0].conv2, ModulatedDeformConv3x3)


# ---------------------------------------------------------------------------------------
# pretrained weights


def _plain_state(seed=0):
    torch.manual_seed(seed)
    network = torchvision.models.resnet50(weights=None)
    return {k: v for k, v in network.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_torchvision_weights_of_the_plain_network_load(tmp_path):
    state = _plain_state()
    path = tmp_path / "r50.pth"
    torch.save(state, path)
    backbone = build_backbone(BackboneConfig(name="resnet50", weights=str(path), dcn_stages=PAPER_DCN))
    for index, blocks in ((2, 4), (3, 6), (4, 3)):
        for block in range(blocks):
            conv2 = getattr(backbone, f"layer{index}")[block].conv2
            assert torch.equal(conv2.weight, state[f"layer{index}.{block}.conv2.weight"])
            assert torch.count_nonzero(conv2.offset_mask.weight) == 0 and torch.count_nonzero(conv2.offset_mask.bias) == 0
    assert torch.equal(backbone.layer3[2].bn2.running_var, state["layer3.2.bn2.running_var"])

    for key in ("layer3.0.conv2.weight", "layer2.1.bn2.weight"):  # anything else missing is still an error
        broken = dict(state)
        del broken[key]
        torch.save(broken, path)
        with pytest.raises(ValueError, match=rf"missing \['{re.escape(key)}'\]"):
            build_backbone(BackboneConfig(name="resnet50", weights=str(path), dcn_stages=PAPER_DCN))


def test_a_dcn_checkpoint_loads_its_offsets(tmp_path):
    source = build_backbone(BackboneConfig(name="resnet50", dcn_stages=(4,)))
    with torch.no_grad():
        source.layer4[1].conv2.offset_mask.bias.fill_(0.125)
    state = _plain_state()
    state.update({f"layer4.{i}.conv2.offset_mask.{name}": value for i in range(3)
                  for name, value in source.layer4[i].conv2.offset_mask.state_dict().items()})
    path = tmp_path / "r50_dcn.pth"
    torch.save({"state_dict": state}, path)
    backbone = build_backbone(BackboneConfig(name="resnet50", weights=str(path), dcn_stages=(4,)))
    assert torch.all(backbone.layer4[1].conv2.offset_mask.bias == 0.125)
    with pytest.raises(ValueError, match="unexpected"):  # offset keys for stages that have no DCN
        build_backbone(BackboneConfig(name="resnet50", weights=str(path)))


def test_detectron_weights_load(tmp_path):
    state = _plain_state(seed=1)
    convs = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c"}
    norms = {"bn1": "branch2a_bn", "bn2": "branch2b_bn", "bn3": "branch2c_bn"}
    blobs = {}
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith(("running_mean", "running_var")):
            continue
        array = value.numpy().astype(np.float32)
        if key == "conv1.weight":
            blobs["conv1_w"] = array
            continue
        if key.startswith("bn1."):
            blobs["res_conv1_bn_" + ("s" if key.endswith("weight") else "b")] = array
            continue
        layer, block, module, *rest = key.split(".")
        prefix = f"res{int(layer[5:]) + 1}_{block}"
        if module == "downsample":
            name = "branch1" if rest[0] == "0" else "branch1_bn"
        else:
            name = convs.get(module) or norms[module]
        suffix = "w" if module.startswith("conv") or rest == ["0", "weight"] else ("s" if key.endswith("weight") else "b")
        blobs[f"{prefix}_{name}_{suffix}"] = array
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as file:
        pickle.dump({"blobs": blobs}, file, protocol=2)
    backbone = build_backbone(BackboneConfig(name="resnet50", style="caffe", weights=str(path), dcn_stages=PAPER_DCN))
    assert isinstance(backbone.layer2[0].conv2, ModulatedDeformConv3x3)
    assert torch.equal(backbone.layer2[0].conv2.weight, state["layer2.0.conv2.weight"])
    assert torch.equal(backbone.layer4[2].conv3.weight, state["layer4.2.conv3.weight"])
    assert torch.count_nonzero(backbone.layer4[2].conv2.offset_mask.weight) == 0


# ---------------------------------------------------------------------------------------
# configuration


def test_config_override_and_validation():
    base = CONFIGS["atss_r50_1x"]
    assert base.backbone.dcn_stages == ()
    config = apply_overrides(base, ["backbone.dcn_stages=2,3,4"])
    assert config.backbone.dcn_stages == PAPER_DCN
    assert apply_overrides(config, ["backbone.dcn_stages=()"]).backbone.dcn_stages == ()

    def with_backbone(**changes):
        return dataclasses.replace(base, backbone=dataclasses.replace(base.backbone, **changes))

    for stages in ((0,), (5,), (2, 2), ("2",), (True,)):
        with pytest.raises(ValueError, match="backbone.dcn_stages"):
            validate(with_backbone(dcn_stages=stages))
    for name in ("tiny", "resnet18", "resnet34"):
        kwargs = {"style": "pytorch"} if name == "tiny" else {}
        with pytest.raises(ValueError, match="backbone.dcn_stages"):
            validate(with_backbone(name=name, dcn_stages=(3,), **kwargs))
    validate(with_backbone(name="resnext101_64x4d", dcn_stages=PAPER_DCN))


def test_build_backbone_rejects_networks_without_bottlenecks():
    for name in ("tiny", "resnet18"):
        with pytest.raises(ValueError, match="backbone.dcn_stages"):
            build_backbone(BackboneConfig(name=name, dcn_stages=(2,)))
    with pytest.raises(ValueError, match="backbone.dcn_stages"):
        use_dcn(torchvision.models.resnet50(weights=None), (5,))
