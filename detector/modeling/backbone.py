"""Backbones: torchvision ResNet / ResNeXt and a small ResNet for CPU demos (specs/model.md §1).

Every backbone returns the C3, C4, C5 feature maps (strides 8, 16, 32) as a list and
exposes their channel counts in ``out_channels``. Pretrained weights are never downloaded:
``build_backbone`` builds the torchvision network with ``weights=None`` and, when the config
names a file, loads that local file into it: a torchvision-layout state dict, or a
Caffe2/detectron ``.pkl`` of numpy arrays (``R-50.pkl``), converted to torchvision keys.

``backbone.style`` "caffe" (specs/model.md §1.1) is the MSRA/detectron ResNet: downsampling
Bottlenecks stride in their first 1x1 conv, and the input is BGR in [0, 255] minus the
Caffe pixel mean (``Normalize.for_style`` in ``detector/data/transforms.py``).

``backbone.dcn_stages`` (specs/model.md §1.2) replaces the 3x3 ``conv2`` of every Bottleneck
of the named stages (1..4 = ``layer1``..``layer4``; the papers' "-DCN" rows use 2, 3, 4) by a
modulated deformable convolution (DCNv2, ``ModulatedDeformConv3x3``).
"""
import codecs
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import deform_conv2d
from torchvision.ops.misc import FrozenBatchNorm2d

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct, scalar
    from numpy._core.numeric import _frombuffer
except ImportError:  # numpy 1.x
    from numpy.core.multiarray import _reconstruct, scalar
    from numpy.core.numeric import _frombuffer

logger = logging.getLogger(__name__)

#: torchvision builders by config name.
TORCHVISION_RESNETS = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
    "resnext101_32x8d": torchvision.models.resnext101_32x8d,
    "resnext101_64x4d": torchvision.models.resnext101_64x4d,
}
#: ``backbone.name`` choices: the torchvision networks and the small ``tiny`` ResNet.
BACKBONES = (*TORCHVISION_RESNETS, "tiny")
#: ``backbone.norm`` choices.
NORMS = ("frozen_bn", "bn", "gn")
#: ``backbone.style`` choices: "pytorch" (torchvision) or "caffe" (MSRA/detectron, §1.1).
BACKBONE_STYLES = ("pytorch", "caffe")
#: Networks whose caffe style moves the stride to the 1x1 conv1 (maskrcnn-benchmark
#: ``STRIDE_IN_1X1=True``). ResNeXt keeps it on the 3x3 conv2, as maskrcnn-benchmark's ResNeXt
#: configs and the detectron X-101 weights do; BasicBlock nets have no 1x1 conv1.
STRIDE_IN_1X1_NETWORKS = ("resnet50", "resnet101")
#: Networks whose stages are Bottlenecks, the only blocks ``backbone.dcn_stages`` applies to
#: (maskrcnn-benchmark and mmdetection implement DCN for Bottlenecks only).
DCN_NETWORKS = ("resnet50", "resnet101", "resnext101_32x8d", "resnext101_64x4d")


def norm_layer_factory(norm, gn_groups=32):
    """A ``channels -> nn.Module`` normalisation factory: "frozen_bn", "bn" or "gn"."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm == "bn":
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(gn_groups, channels)
    raise ValueError(f"norm: expected one of {', '.join(NORMS)}, got {norm!r}")


class ResNetBackbone(nn.Module):
    """A torchvision ResNet without its classifier, returning [C3, C4, C5].

    Args:
        network: a torchvision ``ResNet``.
        frozen_stages: -1 trains everything; 0 freezes the stem (conv1 + bn1); k >= 1 also
            freezes stages 1..k (``layer1``..``layerk``). Frozen parameters get
            ``requires_grad=False``; with "bn" norm their BN layers stay in eval mode.
    """

    def __init__(self, network, frozen_stages=1):
        super().__init__()
        self.stem = nn.Sequential(network.conv1, network.bn1, network.relu, network.maxpool)
        self.layer1, self.layer2, self.layer3, self.layer4 = network.layer1, network.layer2, network.layer3, network.layer4
        self.out_channels = [_stage_channels(stage) for stage in (self.layer2, self.layer3, self.layer4)]
        self.frozen_stages = frozen_stages
        for module in self._frozen_modules():
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def _frozen_modules(self):
        if self.frozen_stages < 0:
            return []
        return [self.stem] + [getattr(self, f"layer{i}") for i in range(1, min(self.frozen_stages, 4) + 1)]

    def train(self, mode=True):
        super().train(mode)
        for module in self._frozen_modules():  # frozen stages never update BN statistics
            module.eval()
        return self

    def forward(self, images):
        """images (B, 3, H, W) -> [C3 (B, C_3, H/8, W/8), C4 (.., H/16, ..), C5 (.., H/32, ..)]."""
        x = self.layer1(self.stem(images))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c3, c4, c5]


class ModulatedDeformConv3x3(nn.Module):
    """A modulated deformable 3x3 convolution (DCNv2) replacing the plain ``nn.Conv2d`` ``conv``.

    It keeps ``conv``'s ``weight`` (C_out, C_in / groups, 3, 3) and ``bias`` (None for
    ResNets) under the same names, with its stride, padding, dilation and groups, so the
    state-dict keys of a plain network (``layerN.i.conv2.weight``) still name the same
    tensors. ``offset_mask`` is a plain conv of the same geometry (C_in -> 27 channels, one
    deformable group, with bias) on the same input; its output holds, per output location,
    18 offsets (``(dy, dx)`` for each of the 9 kernel taps, in torchvision's
    ``deform_conv2d`` layout) and 9 mask logits, which a sigmoid turns into the modulation
    mask (the split of maskrcnn-benchmark's / ATSS's ``DFConv2d`` and mmcv's
    ``ModulatedDeformConv2dPack``). ``offset_mask`` starts at zero (DCNv2, mmcv), so the
    initial layer samples the regular grid with mask sigmoid(0) = 0.5: exactly half the
    plain conv (the bias, if any, is added unmodulated).
    """

    def __init__(self, conv):
        super().__init__()
        if tuple(conv.kernel_size) != (3, 3):
            raise ValueError(f"ModulatedDeformConv3x3: expected a 3x3 conv, got kernel {tuple(conv.kernel_size)}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = tuple(conv.kernel_size)
        self.stride, self.padding = tuple(conv.stride), tuple(conv.padding)
        self.dilation, self.groups = tuple(conv.dilation), conv.groups
        self.weight = conv.weight
        self.bias = conv.bias  # None or the conv's Parameter
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_mask = nn.Conv2d(conv.in_channels, 3 * taps, self.kernel_size, stride=self.stride,
                                     padding=self.padding, dilation=self.dilation, bias=True)
        self.reset_offset_mask()

    def reset_offset_mask(self):
        """Zero the offset/mask predictor: regular sampling grid, mask 0.5."""
        nn.init.zeros_(self.offset_mask.weight)
        nn.init.zeros_(self.offset_mask.bias)

    def offsets_and_mask(self, x):
        """x (B, C_in, H, W) -> offset (B, 18, H_out, W_out), mask (B, 9, H_out, W_out) in (0, 1)."""
        out = self.offset_mask(x)
        taps = out.shape[1] // 3
        return out[:, :2 * taps], out[:, 2 * taps:].sigmoid()

    def forward(self, x):
        offset, mask = self.offsets_and_mask(x)
        weight, bias = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type):
            # deform_conv2d runs in float32 under autocast and returns the input's dtype (what
            # torchvision's CUDA autocast rule does; its CPU kernel has no autocast rule and
            # would fail on the mixed float32/bfloat16 operands)
            dtype = x.dtype
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = deform_conv2d(x.float(), offset.float(), weight.float(), None if bias is None else bias.float(),
                                    stride=self.stride, padding=self.padding, dilation=self.dilation, mask=mask.float())
            return out.to(dtype)
        return deform_conv2d(x, offset, weight, bias, stride=self.stride, padding=self.padding,
                             dilation=self.dilation, mask=mask)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")


def use_dcn(network, stages):
    """In place: the 3x3 ``conv2`` of every Bottleneck of the torchvision ResNet ``network``'s
    stages ``stages`` (1..4 = ``layer1``..``layer4``) becomes a ``ModulatedDeformConv3x3``
    holding the same weight, stride (after ``stride_in_1x1`` when caffe style), padding,
    dilation and groups. Returns ``network``.
    """
    for index in stages:
        if index not in (1, 2, 3, 4):
            raise ValueError(f"backbone.dcn_stages: expected stages in 1..4, got {index!r}")
        for block in getattr(network, f"layer{index}"):
            if not isinstance(block, Bottleneck):
                raise ValueError(f"backbone.dcn_stages: deformable convs replace Bottleneck 3x3 convs; "
                                 f"layer{index} has {type(block).__name__} blocks")
            if not isinstance(block.conv2, ModulatedDeformConv3x3):
                block.conv2 = ModulatedDeformConv3x3(block.conv2)
    return network


class TinyResNet(nn.Module):
    """A narrow ResNet of torchvision ``BasicBlock`` stages for fast CPU runs.

    Stem: 3x3 conv stride 2 + norm + ReLU (stride 2), then four stages of ``blocks[i]``
    BasicBlocks with ``widths[i]`` channels and strides 2, 2, 2, 2: the stages end at
    strides 4, 8, 16, 32 like a ResNet's, and stages 2-4 give C3, C4, C5.
    """

    def __init__(self, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1), norm_layer=nn.BatchNorm2d):
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError("tiny_widths, tiny_blocks: expected 4 values each")
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), norm_layer(widths[0]), nn.ReLU(inplace=True)
        )
        stages, in_channels = [], widths[0]
        for width, count in zip(widths, blocks):
            layers = []
            for index in range(count):
                stride = 2 if index == 0 else 1
                downsample = None
                if stride != 1 or in_channels != width:
                    downsample = nn.Sequential(nn.Conv2d(in_channels, width, 1, stride=stride, bias=False), norm_layer(width))
                layers.append(BasicBlock(in_channels, width, stride, downsample, norm_layer=norm_layer))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = list(widths[1:])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images):
        x = self.layer1(self.stem(images))
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        return [c3, c4, self.layer4(c4)]


def build_backbone(config):
    """The backbone of a ``BackboneConfig``; loads ``config.weights`` from a local file."""
    norm_layer = norm_layer_factory(config.norm, config.gn_groups)
    if config.style not in BACKBONE_STYLES:
        raise ValueError(f"backbone.style: expected one of {', '.join(BACKBONE_STYLES)}, got {config.style!r}")
    if config.name == "tiny":
        if getattr(config, "dcn_stages", ()):
            raise ValueError("backbone.dcn_stages: the tiny backbone has no deformable convolutions")
        if config.style != "pytorch":
            raise ValueError(f"backbone.style: the tiny backbone has only the pytorch style, got {config.style!r}")
        if config.weights:
            raise ValueError("backbone.weights: the tiny backbone has no pretrained weights")
        return TinyResNet(config.tiny_widths, config.tiny_blocks, norm_layer)
    if config.name not in TORCHVISION_RESNETS:
        raise ValueError(f"backbone.name: expected one of {', '.join(BACKBONES)}, got {config.name!r}")
    dcn_stages = tuple(getattr(config, "dcn_stages", ()) or ())
    if dcn_stages and config.name not in DCN_NETWORKS:
        raise ValueError(f"backbone.dcn_stages: deformable convs need a Bottleneck network "
                         f"({', '.join(DCN_NETWORKS)}), got backbone.name={config.name!r}")
    network = TORCHVISION_RESNETS[config.name](weights=None, norm_layer=norm_layer)
    if config.style == "caffe" and config.name in STRIDE_IN_1X1_NETWORKS:
        stride_in_1x1(network)
    if dcn_stages:
        use_dcn(network, dcn_stages)
    if config.weights:
        load_backbone_weights(network, config.weights)
    return ResNetBackbone(network, config.frozen_stages)


def stride_in_1x1(network):
    """Caffe style in place: every downsampling ``Bottleneck`` of the torchvision ResNet
    ``network`` strides in its 1x1 ``conv1`` instead of its 3x3 ``conv2``.

    The parameters (and so the state-dict keys and shapes) are unchanged; an (H, W) input
    of a block still gives (ceil(H / s), ceil(W / s)) outputs. Returns ``network``.
    """
    for stage in (network.layer1, network.layer2, network.layer3, network.layer4):
        for block in stage:
            if isinstance(block, Bottleneck) and tuple(block.conv2.stride) != (1, 1):
                block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return network


def load_backbone_weights(network, path):
    """Load pretrained weights from the local file ``path`` into a torchvision ResNet.

    Two layouts (specs/model.md §1.1), told apart by the key names:

    - torchvision: a state dict (``conv1.weight``, ``bn1.running_var``, ``layer1.0.conv1.weight``,
      ...) saved with ``torch.save``; a checkpoint dict with a ``"state_dict"`` or ``"model"``
      entry is unwrapped. mmdet's converted MSRA weights have this layout.
    - Caffe2/detectron: a ``.pkl`` (or ``.pickle``) dict of numpy arrays, optionally under
      ``"blobs"`` (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ...), read with
      a restricted unpickler and converted by ``detectron_to_torchvision``.

    The classifier (``fc.*``, ``pred_*``) may be absent or present, and so may the offset/mask
    predictors of deformable convs (``layerN.i.conv2.offset_mask.*``, §1.2: absent, they keep
    their zero initialisation); any other missing, unexpected or mis-shaped key is a one-line
    ValueError naming the file and the layout, so a wrong file is never silently half-loaded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights: no such file: {path} (weights are never downloaded; "
                                "pass the path of a local torchvision state-dict or detectron .pkl file)")
    if path.suffix in (".pkl", ".pickle"):
        state = read_detectron_pickle(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"backbone.weights: {path} holds a {type(state).__name__}, not a dict of weights")
    layout = weights_layout(state)
    if layout == "detectron":
        try:
            state = detectron_to_torchvision(state, eps=_norm_eps(network))
        except ValueError as exc:
            raise ValueError(f"backbone.weights: {path} (Caffe2/detectron layout): {exc}") from None
    else:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = network.state_dict()
    optional = _dcn_offset_keys(network)
    missing = [k for k in expected if k not in state and k not in optional
               and not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        name = "Caffe2/detectron" if layout == "detectron" else "torchvision"
        raise ValueError(f"backbone.weights: {path} ({name} layout) does not match the network: "
                         f"missing {_first(missing)}, unexpected {_first(unexpected)}, shapes {_first(shapes)}")
    network.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    logger.info("loaded backbone weights from %s (%s layout)", path, layout)


def _dcn_offset_keys(network):
    """State-dict keys of the offset/mask predictors of ``network``'s deformable convs."""
    keys = set()
    for name, module in network.named_modules():
        if isinstance(module, ModulatedDeformConv3x3):
            prefix = f"{name}.offset_mask."
            keys.update(prefix + key for key in module.offset_mask.state_dict())
    return keys


def weights_layout(state):
    """"detectron" when the keys of ``state`` are Caffe2 blob names (``conv1_w``,
    ``res_conv1_bn_s``, ``res<n>_<i>_branch...``), else "torchvision"."""
    for key in state:
        if key in ("conv1_w", "res_conv1_bn_s", "res_conv1_bn_b") or _DETECTRON_BLOCK.match(str(key)):
            return "detectron"
    return "torchvision"


#: ``res<stage>_<block>_<branch>[_bn]_<w|s|b>``: stage 2..5 is torchvision ``layer1..layer4``.
_DETECTRON_BLOCK = re.compile(r"res(\d+)_(\d+)_(branch2a|branch2b|branch2c|branch1)(_bn)?_([wsb])$")
_DETECTRON_BRANCHES = {  # branch -> (conv module, norm module) of a torchvision block
    "branch2a": ("conv1", "bn1"), "branch2b": ("conv2", "bn2"), "branch2c": ("conv3", "bn3"),
    "branch1": ("downsample.0", "downsample.1"),
}
#: Blobs that are not backbone weights: the ImageNet classifier.
_DETECTRON_CLASSIFIER = ("pred_w", "pred_b", "fc1000_w", "fc1000_b")


def detectron_to_torchvision(blobs, eps=1e-5):
    """Caffe2/detectron blob names -> a torchvision ResNet state dict of float tensors.

    ``conv1_w`` -> ``conv1.weight``; ``res_conv1_bn_{s,b}`` -> ``bn1.{weight,bias}``;
    ``res<n>_<i>_branch2{a,b,c}_w`` -> ``layer<n-1>.<i>.conv{1,2,3}.weight`` and their
    ``_bn_{s,b}`` -> ``bn{1,2,3}.{weight,bias}``; ``branch1`` -> ``downsample.0`` / ``.1``.
    ``pred_*``/``fc1000_*`` (classifier) and ``*_momentum`` blobs are skipped; any other
    name is kept as it is (the loader reports it as unexpected).

    The Caffe2 BN is an affine channel ``s * x + b`` without statistics: each converted
    norm gets ``running_mean = 0`` and ``running_var = 1 - eps``, so a ``FrozenBatchNorm2d``
    (or an eval-mode BatchNorm) with that ``eps`` computes
    ``s * (x - 0) / sqrt(1 - eps + eps) + b = s * x + b`` exactly.

    Args:
        blobs: {name: numpy array or tensor}, e.g. conv weights (C_out, C_in/groups, k, k),
            BN scales/biases (C,).
        eps: the ``eps`` of the network's norm layers.
    Returns:
        {torchvision key: float32 tensor}.
    """
    state = {}
    for name, value in blobs.items():
        if name in _DETECTRON_CLASSIFIER or name.endswith("_momentum"):
            continue
        key = _detectron_key(name)
        state[key] = _as_tensor(name, value)
        if key.endswith(("bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "bn3.weight", "bn3.bias",
                         "downsample.1.weight", "downsample.1.bias")):
            prefix = key.rsplit(".", 1)[0]
            state[f"{prefix}.running_mean"] = torch.zeros_like(state[key])
            state[f"{prefix}.running_var"] = torch.full_like(state[key], 1.0 - eps)
    return state


def _detectron_key(name):
    if name == "conv1_w":
        return "conv1.weight"
    if name in ("res_conv1_bn_s", "res_conv1_bn_b"):
        return "bn1.weight" if name.endswith("_s") else "bn1.bias"
    match = _DETECTRON_BLOCK.match(name)
    if not match or not 2 <= int(match.group(1)) <= 5:
        return name
    stage, block, branch, bn, kind = match.groups()
    conv, norm = _DETECTRON_BRANCHES[branch]
    prefix = f"layer{int(stage) - 1}.{int(block)}"
    if bn:
        if kind == "w":
            return name
        return f"{prefix}.{norm}.{'weight' if kind == 's' else 'bias'}"
    if kind == "s":
        return name
    return f"{prefix}.{conv}.{'weight' if kind == 'w' else 'bias'}"


def _as_tensor(name, value):
    if isinstance(value, torch.Tensor):
        return value.detach().to(torch.float32)
    array = np.asarray(value)
    if array.dtype.kind not in "fiu":
        raise ValueError(f"blob {name!r} is not a numeric array (dtype {array.dtype})")
    return torch.tensor(array, dtype=torch.float32)


#: The only globals a Caffe2/detectron weights pickle may name: numpy array and scalar
#: reconstruction (numpy 1.x and 2.x module names), and ``_codecs.encode``, with which
#: Python 3 pickles of protocol 2 store bytes.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): scalar,
    ("numpy._core.multiarray", "scalar"): scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): codecs.encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays, dicts, lists and strings, and nothing else."""

    def find_class(self, module, name):
        if (module, name) in _PICKLE_GLOBALS:
            return _PICKLE_GLOBALS[(module, name)]
        raise pickle.UnpicklingError(f"it references {module}.{name}, and only numpy arrays are allowed")


def read_detectron_pickle(path):
    """{blob name: numpy array} of a Caffe2/detectron weights pickle (``R-50.pkl``).

    Read as maskrcnn-benchmark's ``c2_model_loading.py`` reads it (latin1 strings; the
    ``"blobs"`` entry when there is one), but with a restricted unpickler: a pickle naming
    anything other than numpy array reconstruction is refused with a ValueError, never run.
    """
    try:
        with open(path, "rb") as file:
            data = _NumpyOnlyUnpickler(file, encoding="latin1").load()
    except Exception as exc:  # a refused global, a truncated or non-pickle file
        raise ValueError(f"backbone.weights: {path}: not a readable Caffe2/detectron pickle of numpy arrays: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("blobs"), dict):
        data = data["blobs"]
    if not isinstance(data, dict):
        raise ValueError(f"backbone.weights: {path} holds a {type(data).__name__}, not a dict of numpy arrays")
    return data


def _norm_eps(network):
    for module in network.modules():
        if hasattr(module, "running_var") and hasattr(module, "eps"):
            return float(module.eps)
    return 1e-5


def _first(keys, count=5):
    return f"{keys[:count]}{'...' if len(keys) > count else ''}"


def _stage_channels(stage):
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
