"""Backbones: torchvision ResNet / ResNeXt and a small ResNet for CPU demos (specs/model.md §1).

Every backbone returns the C3, C4, C5 feature maps (strides 8, 16, 32) as a list and
exposes their channel counts in ``out_channels``. Pretrained weights are never downloaded:
``build_backbone`` builds the torchvision network with ``weights=None`` and, when the config
names a file, loads that local state dict into it.
"""
import logging
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops.misc import FrozenBatchNorm2d

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
    if config.name == "tiny":
        if config.weights:
            raise ValueError("backbone.weights: the tiny backbone has no pretrained weights")
        return TinyResNet(config.tiny_widths, config.tiny_blocks, norm_layer)
    if config.name not in TORCHVISION_RESNETS:
        raise ValueError(f"backbone.name: expected one of {', '.join(BACKBONES)}, got {config.name!r}")
    network = TORCHVISION_RESNETS[config.name](weights=None, norm_layer=norm_layer)
    if config.weights:
        load_backbone_weights(network, config.weights)
    return ResNetBackbone(network, config.frozen_stages)


def load_backbone_weights(network, path):
    """Load a torchvision-layout state dict from the local file ``path`` into ``network``.

    The classifier (``fc.*``) may be absent or present; any other missing or unexpected key
    is an error, so a wrong file is never silently half-loaded. A checkpoint dict with a
    ``"state_dict"`` or ``"model"`` entry is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"backbone.weights: no such file: {path} (weights are never downloaded; "
                                "pass the path of a local torchvision state-dict file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = network.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(f"backbone.weights: {path} does not match the network: "
                         f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    logger.info("loaded backbone weights from %s", path)


def _stage_channels(stage):
    last = stage[-1]
    return (last.conv3 if hasattr(last, "conv3") else last.conv2).out_channels
