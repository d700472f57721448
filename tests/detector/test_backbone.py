"""Backbone styles, input normalisation and pretrained-weight layouts (specs/model.md §1.1)."""
import dataclasses
import pickle

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
np = pytest.importorskip("numpy")

from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from detector.configs import BackboneConfig, get_config, validate  # noqa: E402
from detector.data import loaders  # noqa: E402
from detector.data.transforms import CAFFE_MEAN_BGR, IMAGENET_MEAN, IMAGENET_STD, Normalize  # noqa: E402
from detector.modeling.backbone import (  # noqa: E402
    build_backbone,
    detectron_to_torchvision,
    load_backbone_weights,
    read_detectron_pickle,
)

# ---------------------------------------------------------------------------------------
# caffe style: stride in the 1x1 conv1


def _strides(backbone):
    """[(conv1.stride, conv2.stride)] of the first block of layer1..layer4."""
    return [(tuple(stage[0].conv1.stride), tuple(stage[0].conv2.stride))
            for stage in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)]


def test_caffe_style_strides_in_conv1_and_keeps_output_shapes():
    torch.manual_seed(0)
    pytorch = build_backbone(BackboneConfig(name="resnet50", style="pytorch"))
    caffe = build_backbone(BackboneConfig(name="resnet50", style="caffe"))
    assert _strides(pytorch) == [((1, 1), (1, 1)), ((1, 1), (2, 2)), ((1, 1), (2, 2)), ((1, 1), (2, 2))]
    assert _strides(caffe) == [((1, 1), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (1, 1)), ((2, 2), (1, 1))]
    for stage in (caffe.layer2, caffe.layer3, caffe.layer4):  # only the first block downsamples
        assert all(tuple(block.conv1.stride) == (1, 1) and tuple(block.conv2.stride) == (1, 1) for block in stage[1:])
        assert tuple(stage[0].downsample[0].stride) == (2, 2)
    images = torch.randn(1, 3, 75, 101)  # odd sizes: both styles round up the same way
    with torch.no_grad():
        shapes_pytorch = [tuple(f.shape) for f in pytorch.eval()(images)]
        shapes_caffe = [tuple(f.shape) for f in caffe.eval()(images)]
    assert shapes_caffe == shapes_pytorch == [(1, 512, 10, 13), (1, 1024, 5, 7), (1, 2048, 3, 4)]
    assert list(pytorch.state_dict()) == list(caffe.state_dict())


def test_caffe_style_resnext_keeps_stride_in_3x3():
    backbone = build_backbone(BackboneConfig(name="resnext101_32x8d", style="caffe"))
    assert tuple(backbone.layer2[0].conv1.stride) == (1, 1) and tuple(backbone.layer2[0].conv2.stride) == (2, 2)


def test_style_errors():
    with pytest.raises(ValueError, match="backbone.style: the tiny backbone"):
        build_backbone(BackboneConfig(name="tiny", style="caffe"))
    with pytest.raises(ValueError, match="backbone.style"):
        build_backbone(BackboneConfig(name="resnet18", style="detectron"))
    with pytest.raises(ValueError, match="backbone.style"):
        validate(dataclasses.replace(get_config("demo"), backbone=BackboneConfig(style="msra")))
    with pytest.raises(ValueError, match="backbone.style"):
        Normalize.for_style("msra")


# ---------------------------------------------------------------------------------------
# input normalisation


def test_caffe_normalisation_is_bgr_255_minus_mean():
    image = torch.tensor([0.2, 0.6, 1.0]).reshape(3, 1, 1).expand(3, 2, 2)  # an RGB pixel in [0, 1]
    out, target = Normalize.for_style("caffe")(image, {"boxes": torch.zeros(0, 4)})
    expected = torch.tensor([255.0 - 102.9801, 153.0 - 115.9465, 51.0 - 122.7717]).reshape(3, 1, 1).expand(3, 2, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
    assert "boxes" in target
    assert CAFFE_MEAN_BGR == (102.9801, 115.9465, 122.7717)


def test_default_normalisation_is_unchanged():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(3, 5, 7, generator=generator)
    mean = torch.tensor(IMAGENET_MEAN).reshape(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).reshape(3, 1, 1)
    reference = (image - mean) / std
    for normalize in (Normalize(), Normalize.for_style("pytorch")):
        out, _ = normalize(image, {})
        assert torch.equal(out, reference)


class _OneImage(torch.utils.data.Dataset):
    def __len__(self):
        return 1

    def __getitem__(self, index):
        image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(index))
        return image, {"boxes": torch.tensor([[1.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([0])}


def test_pipelines_take_the_normalisation_from_the_backbone_style():
    config = get_config("demo")
    caffe = dataclasses.replace(config, backbone=BackboneConfig(name="resnet50", style="caffe"))
    image = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(1))
    default_out, _ = loaders.test_transform(config)(image, {})
    caffe_out, _ = loaders.test_transform(caffe)(image, {})
    assert default_out.abs().max() < 5 and caffe_out.abs().max() > 50  # 0-255 minus mean
    # the training view: the default is bit-identical to an explicit Normalize()
    plain = loaders.AugmentedDataset(_OneImage(), (20,), 100, 0.5, seed=3)
    explicit = loaders.AugmentedDataset(_OneImage(), (20,), 100, 0.5, seed=3, normalize=Normalize())
    bgr = loaders.AugmentedDataset(_OneImage(), (20,), 100, 0.5, seed=3, normalize=Normalize.for_style("caffe"))
    assert torch.equal(plain[0][0], explicit[0][0])
    assert not torch.allclose(plain[0][0], bgr[0][0])


# ---------------------------------------------------------------------------------------
# weights: torchvision layout and Caffe2/detectron pickles


def _random_state(network, seed=0):
    """A torchvision state dict of ``network`` with random values (positive running_var)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in network.state_dict().items():
        if key.endswith("num_batches_tracked"):
            continue
        state[key] = torch.rand(value.shape, generator=generator) + (0.5 if key.endswith("running_var") else -0.5)
    return state


def _detectron_blobs(seed=0):
    """Caffe2 blobs of a ResNet-50: {name: float32 array}, with the classifier and momenta."""
    rng = np.random.default_rng(seed)
    shapes = {"conv1_w": (64, 3, 7, 7), "res_conv1_bn_s": (64,), "res_conv1_bn_b": (64,)}
    in_channels = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=2):
        for index in range(blocks):
            prefix = f"res{stage}_{index}"
            for branch, shape in (("branch2a", (width, in_channels, 1, 1)), ("branch2b", (width, width, 3, 3)),
                                  ("branch2c", (4 * width, width, 1, 1))):
                shapes[f"{prefix}_{branch}_w"] = shape
                shapes[f"{prefix}_{branch}_bn_s"] = shapes[f"{prefix}_{branch}_bn_b"] = shape[:1]
            if index == 0:
                shapes[f"{prefix}_branch1_w"] = (4 * width, in_channels, 1, 1)
                shapes[f"{prefix}_branch1_bn_s"] = shapes[f"{prefix}_branch1_bn_b"] = (4 * width,)
            in_channels = 4 * width
    blobs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    blobs["pred_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    blobs["pred_b"] = rng.standard_normal(1000).astype(np.float32)
    blobs["res2_0_branch2a_w_momentum"] = np.zeros((64, 64, 1, 1), np.float32)
    return blobs


def test_torchvision_layout_loads_every_tensor(tmp_path):
    network = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    state = _random_state(network)
    path = tmp_path / "resnet50_msra.pth"
    torch.save({"state_dict": state}, path)
    backbone = build_backbone(BackboneConfig(name="resnet50", style="caffe", weights=str(path)))
    loaded = {**{f"conv1.{k}": v for k, v in backbone.stem[0].state_dict().items()},
              **{f"bn1.{k}": v for k, v in backbone.stem[1].state_dict().items()},
              **{f"layer{i}.{k}": v for i in range(1, 5) for k, v in getattr(backbone, f"layer{i}").state_dict().items()}}
    compared = 0
    for key, value in state.items():
        if not key.startswith("fc."):
            assert torch.equal(loaded[key], value), key
            compared += 1
    assert compared == len([k for k in state if not k.startswith("fc.")]) > 250


@pytest.mark.parametrize("wrapped", [False, True])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron_pickle_loads_every_blob(tmp_path, wrapped, protocol):
    blobs = _detectron_blobs()
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as file:
        pickle.dump({"blobs": blobs, "cfg": "a config string"} if wrapped else blobs, file, protocol=protocol)
    network = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    load_backbone_weights(network, path)
    modules = dict(network.named_modules())
    checks = {"conv1_w": network.conv1.weight, "res_conv1_bn_s": network.bn1.weight, "res_conv1_bn_b": network.bn1.bias}
    for stage in range(2, 6):
        layer = getattr(network, f"layer{stage - 1}")
        for index in range(len(layer)):
            prefix, block = f"res{stage}_{index}", layer[index]
            for branch, conv, norm in (("branch2a", "conv1", "bn1"), ("branch2b", "conv2", "bn2"),
                                       ("branch2c", "conv3", "bn3")):
                checks[f"{prefix}_{branch}_w"] = getattr(block, conv).weight
                checks[f"{prefix}_{branch}_bn_s"] = getattr(block, norm).weight
                checks[f"{prefix}_{branch}_bn_b"] = getattr(block, norm).bias
            if index == 0:
                checks[f"{prefix}_branch1_w"] = block.downsample[0].weight
                checks[f"{prefix}_branch1_bn_s"] = block.downsample[1].weight
                checks[f"{prefix}_branch1_bn_b"] = block.downsample[1].bias
    assert set(checks) == set(blobs) - {"pred_w", "pred_b", "res2_0_branch2a_w_momentum"}
    for name, tensor in checks.items():
        assert torch.equal(tensor, torch.from_numpy(blobs[name])), name
    for name, module in modules.items():
        if isinstance(module, FrozenBatchNorm2d):
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean)), name
            assert torch.equal(module.running_var, torch.full_like(module.running_var, 1 - module.eps)), name


def test_detectron_state_dict_saved_with_torch_is_recognised(tmp_path):
    blobs = {k: torch.from_numpy(v) for k, v in _detectron_blobs(seed=1).items()}
    path = tmp_path / "r50_c2.pth"
    torch.save(blobs, path)
    network = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    load_backbone_weights(network, path)
    assert torch.equal(network.layer4[2].conv3.weight, blobs["res5_2_branch2c_w"])
    assert torch.equal(network.layer1[0].downsample[1].bias, blobs["res2_0_branch1_bn_b"])


def test_frozen_bn_from_scale_and_bias_is_the_affine_map():
    generator = torch.Generator().manual_seed(0)
    scale, bias = torch.randn(8, generator=generator), torch.randn(8, generator=generator)
    state = detectron_to_torchvision({"res_conv1_bn_s": scale.numpy(), "res_conv1_bn_b": bias.numpy()})
    norm = FrozenBatchNorm2d(8)
    norm.load_state_dict({k.removeprefix("bn1."): v for k, v in state.items()})
    x = torch.randn(2, 8, 5, 5, generator=generator) * 10
    torch.testing.assert_close(norm(x), scale.reshape(1, 8, 1, 1) * x + bias.reshape(1, 8, 1, 1), rtol=0, atol=1e-6)
    batch_norm = torch.nn.BatchNorm2d(8).eval()
    batch_norm.load_state_dict({k.removeprefix("bn1."): v for k, v in state.items()}, strict=False)
    torch.testing.assert_close(batch_norm(x), norm(x), rtol=1e-6, atol=1e-5)  # eval-mode BN: same map


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_a_non_numpy_object_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as file:
        pickle.dump({"blobs": {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "x": _Exploit(marker)}}, file)
    with open(path, "rb") as file:  # the file really runs the command when unpickled without restriction
        pickle.load(file)
    assert marker.exists()
    marker.unlink()
    with pytest.raises(ValueError, match=r"R-50\.pkl.*only numpy arrays") as error:
        read_detectron_pickle(path)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="only numpy arrays"):
        load_backbone_weights(torchvision.models.resnet50(weights=None), path)
    assert not marker.exists()


def test_numpy_1_module_names_are_accepted(tmp_path):
    """The distributed .pkl files were written by numpy 1.x: ``numpy.core.multiarray``."""
    blobs = {"conv1_w": np.arange(6, dtype=np.float32).reshape(1, 2, 3), "res_conv1_bn_s": np.ones(3, np.float32)}
    data = pickle.dumps(blobs, protocol=2)
    if b"numpy._core.multiarray" in data:
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "R-50.pkl"
    path.write_bytes(data)
    read = read_detectron_pickle(path)
    assert set(read) == set(blobs) and all(np.array_equal(read[k], blobs[k]) for k in blobs)


def test_wrong_keys_give_one_line_errors(tmp_path):
    blobs = _detectron_blobs()
    del blobs["res4_5_branch2b_bn_s"]
    blobs["res5_3_branch2a_w"] = np.zeros((512, 2048, 1, 1), np.float32)
    path = tmp_path / "R-50.pkl"
    with open(path, "wb") as file:
        pickle.dump(blobs, file)
    with pytest.raises(ValueError) as error:
        load_backbone_weights(torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d), path)
    message = str(error.value)
    assert "\n" not in message and message.startswith("backbone.weights: ") and str(path) in message
    assert "Caffe2/detectron layout" in message and "does not match" in message
    assert "layer3.5.bn2.weight" in message and "layer4.3.conv1.weight" in message
    # a Bottleneck pickle into a BasicBlock network
    with pytest.raises(ValueError, match=r"R-50\.pkl \(Caffe2/detectron layout\) does not match"):
        load_backbone_weights(torchvision.models.resnet18(weights=None), path)
    # torchvision layout, wrong network: the layout is named too
    wrong = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match=r"r34\.pth \(torchvision layout\) does not match.*missing \[\]"):
        load_backbone_weights(torchvision.models.resnet18(weights=None), wrong)
    # a shape mismatch is reported, not raised by load_state_dict
    bad = _detectron_blobs()
    bad["conv1_w"] = np.zeros((64, 3, 3, 3), np.float32)
    with open(path, "wb") as file:
        pickle.dump(bad, file)
    with pytest.raises(ValueError, match=r"shapes \['conv1.weight \(64, 3, 3, 3\) vs \(64, 3, 7, 7\)'\]"):
        load_backbone_weights(torchvision.models.resnet50(weights=None), path)


def test_missing_file_names_backbone_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="backbone.weights: no such file"):
        build_backbone(BackboneConfig(name="resnet50", style="caffe", weights=str(tmp_path / "R-50.pkl")))
