"""Feature pyramid: torchvision ``FeaturePyramidNetwork`` with RetinaNet's P6/P7 (specs/model.md §2)."""
from collections import OrderedDict

from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7


class FPN(nn.Module):
    """P_l for the configured pyramid ``levels`` (consecutive, within 3..7, starting <= 5).

    Lateral 1x1 + output 3x3 convs (torchvision) on the backbone's C_l for the levels <= 5;
    when a level > 5 is asked for, P6 = conv3x3/s2 of ``p6p7_input`` (P5 by default, as
    RetinaNet in torchvision and mmdet's ``add_extra_convs="on_output"``; "c5" as FCOS) and
    P7 = conv3x3/s2(ReLU(P6)). Levels above the last requested one are dropped.

    Args:
        in_channels: channels of C3, C4, C5.
        out_channels: channels of every P_l.
        levels: e.g. (3, 4, 5, 6, 7) or (3, 4, 5).
        p6p7_input: "p5" or "c5".
    """

    def __init__(self, in_channels, out_channels=256, levels=(3, 4, 5, 6, 7), p6p7_input="p5"):
        super().__init__()
        levels = tuple(levels)
        if not levels or levels[0] < 3 or levels[0] > 5 or levels[-1] > 7 or list(levels) != list(range(levels[0], levels[-1] + 1)):
            raise ValueError(f"levels: expected consecutive levels within 3..7 starting at 3, 4 or 5, got {levels}")
        self.levels = levels
        self.inputs = [level - 3 for level in levels if level <= 5]  # indices into [C3, C4, C5]
        if self.inputs[-1] != 2:  # P6/P7 and the top-down path need C5
            self.inputs = list(range(self.inputs[0], 3))
        extra = None
        if levels[-1] > 5:
            source = out_channels if p6p7_input == "p5" else in_channels[2]
            extra = LastLevelP6P7(source, out_channels)
            extra.use_P5 = p6p7_input == "p5"
        self.fpn = FeaturePyramidNetwork([in_channels[i] for i in self.inputs], out_channels, extra_blocks=extra)
        self.out_channels = out_channels

    def forward(self, features):
        """features [C3, C4, C5] -> list of P_l (B, out_channels, H/2**l, W/2**l), one per level."""
        named = OrderedDict((f"c{i + 3}", features[i]) for i in self.inputs)
        outputs = list(self.fpn(named).values())  # P_first .. P5 (, P6, P7)
        first = self.inputs[0] + 3
        return [outputs[level - first] for level in self.levels]
