"""The shared dense head of both families (specs/model.md §3).

One head is shared by all pyramid levels: a classification tower and a box tower, each
``depth`` x (3x3 conv + GroupNorm + ReLU), then a 3x3 classification conv (K logits), a 3x3
box conv (4 values) multiplied by a learnable per-level ``Scale``, and a 3x3 quality conv
(centerness or IoU logit) on the **box** tower (ATSS, Dynamic ATSS, Pseudo-IoU with
``centerness_on_reg``).

- anchor-based: the box output is the raw delta-xywh code ``Scale_l(conv)`` (ATSS; no exp).
- anchor-free: the box output is ``ReLU(Scale_l(conv))``, the (l, t, r, b) distances divided
  by the level's stride (Pseudo-IoU/FCOS with ``norm_on_bbox``).

Initialisation: every conv weight ~ normal(0, 0.01), bias 0; the classification bias is
``-log((1 - prior_prob) / prior_prob)`` so that every anchor starts at probability
``prior_prob`` (RetinaNet). Tower convs have no bias (GroupNorm follows; mmdet's
``conv_bias="auto"``).

Head types (``HEAD_TYPES``, ``head.type``; specs/model.md §3.1):

- ``atss``: the above.
- ``gfl`` (GFL, mmdet ``GFLHead``): anchor-based, no quality conv; the box conv outputs
  ``4 * (reg_max + 1)`` distribution logits (side-major: the bins of l, t, r, b),
  multiplied by the level's ``Scale``; the box is their integral in stride units from the
  anchor centre (``detector.gfl.decode_distribution``).
- ``gflv2`` (GFLV2, GFocalV2 ``GFLHeadV2``): ``gfl`` plus the Distribution-Guided Quality
  Predictor ``detector.gfl.DistributionQuality`` on the (scaled) distribution logits; its
  quality (B, A) multiplies the class probabilities into the joint score.
- ``retinanet`` (RetinaNet, mmdet ``RetinaHead``): anchor-based, no quality branch, no
  per-level ``Scale`` (the box output is the raw delta-xywh code); with ``norm="none"`` its
  towers are 3x3 conv (with bias) + ReLU, as RetinaNet's.
- ``vfnet`` (VarifocalNet, mmdet ``VFNetHead``): a separate module,
  ``detector/modeling/vfnet_head.py`` (initial box, star deformable refinement, IoU-aware score).

Several anchors per location (``num_anchors`` = n, specs/model.md §3): the classification
conv has ``n * K`` outputs, the box conv ``n * 4`` (GFL: one anchor only), the quality conv
``n``, anchor-major (channel ``a * K + k``, as mmdet); they are flattened to the anchors'
(level, row, column, anchor) order (specs/conventions.md §3), so output row ``i`` belongs
to anchor ``i`` of ``Detector.priors``.
"""
import math
from typing import NamedTuple, Optional

import torch
from torch import nn

from detector.gfl import REG_MAX, DistributionQuality

#: ``head.type`` choices: the ATSS head, GFL (distribution regression), GFLV2 (GFL + DGQP).
HEAD_TYPES = ("atss", "gfl", "gflv2", "retinanet", "vfnet")
#: ``head.norm`` choices: GroupNorm after every tower conv, or none (RetinaNet).
HEAD_NORMS = ("gn", "none")


class HeadOutputs(NamedTuple):
    """Dense predictions of a batch, all levels flattened level-major, rows (y) outer.

    Attributes:
        cls_logits: (B, A, K) classification logits.
        box_regression: (B, A, 4) delta-xywh codes (anchor-based) or stride-normalised
            (l, t, r, b) >= 0 (anchor-free); GFL / GFLV2: (B, A, 4 * (reg_max + 1))
            distribution logits, side-major.
        quality_logits: (B, A) centerness/IoU logits, or None without a quality branch.
        feature_sizes: list of L (H_l, W_l).
        dgqp_quality: (B, A) GFLV2's DGQP quality in (0, 1) (the joint score is
            ``sigmoid(cls_logits) * dgqp_quality[..., None]``), or None for other heads.
    """

    cls_logits: torch.Tensor
    box_regression: torch.Tensor
    quality_logits: Optional[torch.Tensor]
    feature_sizes: list
    dgqp_quality: Optional[torch.Tensor] = None


class Scale(nn.Module):
    """Multiply by one learnable scalar (initial value ``init``)."""

    def __init__(self, init=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init)))

    def forward(self, x):
        return x * self.scale


class DenseHead(nn.Module):
    """Shared head for ``num_levels`` levels; see the module docstring.

    Args:
        in_channels: channels of every pyramid level.
        num_classes: K.
        num_levels: L (one ``Scale`` per level).
        width, depth, gn_groups: tower width, number of conv+GN+ReLU blocks, GN groups.
        family: "anchor_based" or "anchor_free".
        quality: True to build the quality branch.
        prior_prob: initial foreground probability of the classifier.
        head_type: one of ``HEAD_TYPES``; "gfl" and "gflv2" need ``family="anchor_based"``
            and ``quality=False``.
        reg_max: largest bin of the GFL / GFLV2 distribution (ignored by "atss").
        num_anchors: anchors per location, n >= 1 (anchor-based; "gfl" / "gflv2": 1).
        norm: one of ``HEAD_NORMS``: "gn" (conv without bias + GroupNorm + ReLU) or "none"
            (conv with bias + ReLU).
    """

    def __init__(self, in_channels, num_classes, num_levels, *, width=256, depth=4, gn_groups=32,
                 family="anchor_based", quality=True, prior_prob=0.01, head_type="atss", reg_max=REG_MAX,
                 num_anchors=1, norm="gn"):
        super().__init__()
        if family not in ("anchor_based", "anchor_free"):
            raise ValueError(f"family: expected anchor_based or anchor_free, got {family!r}")
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type: expected one of {', '.join(HEAD_TYPES)}, got {head_type!r}")
        if head_type != "atss" and (family != "anchor_based" or quality):
            raise ValueError(f"head_type: {head_type} needs family='anchor_based' and no quality branch")
        if norm not in HEAD_NORMS:
            raise ValueError(f"norm: expected one of {', '.join(HEAD_NORMS)}, got {norm!r}")
        if isinstance(num_anchors, bool) or not isinstance(num_anchors, int) or num_anchors < 1:
            raise ValueError(f"num_anchors: expected an int >= 1, got {num_anchors!r}")
        if num_anchors > 1 and (family != "anchor_based" or head_type in ("gfl", "gflv2")):
            raise ValueError(f"num_anchors: {num_anchors} anchors per location need an anchor-based head that is "
                             f"not gfl / gflv2, got family={family!r}, head_type={head_type!r}")
        self.num_anchors = num_anchors
        self.num_levels = num_levels
        self.num_classes = num_classes
        self.family = family
        self.head_type = head_type
        self.reg_max = int(reg_max) if head_type in ("gfl", "gflv2") else None
        self.cls_tower = _tower(in_channels, width, depth, gn_groups, norm)
        self.box_tower = _tower(in_channels, width, depth, gn_groups, norm)
        tower_out = width if depth > 0 else in_channels
        self.cls_logits = nn.Conv2d(tower_out, num_anchors * num_classes, 3, padding=1)
        box_channels = 4 if self.reg_max is None else 4 * (self.reg_max + 1)
        self.box_pred = nn.Conv2d(tower_out, num_anchors * box_channels, 3, padding=1)
        self.quality = nn.Conv2d(tower_out, num_anchors, 3, padding=1) if quality else None
        # RetinaNet has no per-level Scale: its box output is the conv's raw delta code
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels)) if head_type != "retinanet" else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))
        # GFLV2's DGQP (two linear layers, initialised N(0, 0.01) / 0 by the module itself)
        self.dgqp = DistributionQuality(self.reg_max) if head_type == "gflv2" else None

    def forward(self, features):
        """features: list of L (B, C, H_l, W_l) -> ``HeadOutputs``."""
        if len(features) != self.num_levels:
            raise ValueError(f"features: expected {self.num_levels} levels, got {len(features)}")
        cls_all, box_all, quality_all, sizes = [], [], [], []
        n = self.num_anchors
        for level, feature in enumerate(features):
            cls_feature = self.cls_tower(feature)
            box_feature = self.box_tower(feature)
            box = self.box_pred(box_feature)
            if self.scales is not None:
                box = self.scales[level](box)
            if self.family == "anchor_free":
                box = torch.relu(box)
            cls_all.append(_flatten(self.cls_logits(cls_feature), n))
            box_all.append(_flatten(box, n))
            if self.quality is not None:
                quality_all.append(_flatten(self.quality(box_feature), n)[..., 0])
            sizes.append(tuple(feature.shape[-2:]))
        box_regression = torch.cat(box_all, dim=1)
        return HeadOutputs(
            cls_logits=torch.cat(cls_all, dim=1),
            box_regression=box_regression,
            quality_logits=torch.cat(quality_all, dim=1) if self.quality is not None else None,
            feature_sizes=sizes,
            # one DGQP call on every level's (scaled) logits: the MLP acts on each location alone
            dgqp_quality=self.dgqp(box_regression) if self.dgqp is not None else None,
        )


def _tower(in_channels, width, depth, gn_groups, norm="gn"):
    layers, channels = [], in_channels
    for _ in range(depth):
        if norm == "gn":
            layers += [nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.GroupNorm(gn_groups, width),
                       nn.ReLU(inplace=True)]
        else:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        channels = width
    return nn.Sequential(*layers)


def _flatten(x, num_anchors=1):
    """(B, n * C, H, W) -> (B, H * W * n, C), rows (y) outer, columns (x) inner, then the
    n anchors of a location (channel ``a * C + c`` is value c of anchor a)."""
    batch, channels = x.shape[:2]
    return x.permute(0, 2, 3, 1).reshape(batch, -1, channels // num_anchors)
