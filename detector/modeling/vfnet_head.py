"""The VFNet head (``head.type = "vfnet"``; specs/model.md §3.3, specs/vfnet.md).

VarifocalNet (Zhang et al., CVPR 2021) as mmdetection's ``VFNetHead`` with
``vfnet_r50_fpn_1x_coco.py``, shared by all levels. Per level of stride s:

1. towers: classification and box, each ``depth`` x (3x3 conv + GN + ReLU) (``_tower`` of
   the dense head; VFNet: 3);
2. **initial box**: one more 3x3 conv + GN + ReLU on the box tower (mmdet ``vfnet_reg_conv``),
   a 3x3 conv to 4, the level's ``Scale``, then ``exp(.) * 8 s``: the distances (l, t, r, b)
   in pixels (mmdet ``exp() * reg_denom``, ``bbox_norm_type='reg_denom'``);
3. **star offsets** of the initial box (``detector.vfnet.star_dcn_offsets_unchecked`` with
   ``gradient_mul = 0.1``);
4. **refined box**: the star deformable conv on the box tower's output, ReLU, a 3x3 conv to
   4, the level's second ``Scale``, ``exp``, times the **detached** initial distances;
5. **IoU-aware classification score**: the star deformable conv on the classification
   tower's output, ReLU, a 3x3 conv to K logits.

Outputs (``HeadOutputs``): ``cls_logits (B, A, K)`` (the IACS logits), ``box_regression
(B, A, 8)``: the initial then the refined (l, t, r, b) distances **in strides** (pixels / s,
what ``coders.decode_ltrb`` decodes from the points), no quality branch, no DGQP.
"""
import math

import torch
from torch import nn

from detector.modeling.head import HeadOutputs, Scale, _flatten, _tower
from detector.vfnet import GRADIENT_MUL, INIT_DISTANCE_STRIDES, StarDeformConv2d, star_dcn_offsets_unchecked


class VFNetHead(nn.Module):
    """VFNet's head for the levels of ``strides``; see the module docstring.

    Args:
        in_channels: channels of every pyramid level.
        num_classes: K.
        strides: the L strides of the levels (e.g. 8, 16, 32, 64, 128).
        width, depth, gn_groups: tower width, conv+GN+ReLU blocks per tower, GN groups.
        prior_prob: initial foreground probability of the classifier.
        gradient_mul: share of the initial box's gradient through the star offsets.
        norm: "gn" or "none", the towers' and the initial box conv's norm (``_tower``).
    """

    def __init__(self, in_channels, num_classes, strides, *, width=256, depth=3, gn_groups=32, prior_prob=0.01,
                 gradient_mul=GRADIENT_MUL, norm="gn"):
        super().__init__()
        self.num_classes = num_classes
        self.strides = tuple(float(s) for s in strides)
        self.gradient_mul = float(gradient_mul)
        self.cls_tower = _tower(in_channels, width, depth, gn_groups, norm)
        self.box_tower = _tower(in_channels, width, depth, gn_groups, norm)
        tower_out = width if depth > 0 else in_channels
        self.box_init_conv = _tower(tower_out, width, 1, gn_groups, norm)
        self.box_init = nn.Conv2d(width, 4, 3, padding=1)
        self.box_refine_dconv = StarDeformConv2d(tower_out, width)
        self.box_refine = nn.Conv2d(width, 4, 3, padding=1)
        self.cls_dconv = StarDeformConv2d(tower_out, width)
        self.cls_logits = nn.Conv2d(width, num_classes, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in self.strides)
        self.scales_refine = nn.ModuleList(Scale(1.0) for _ in self.strides)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0.0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features):
        """features: list of L (B, C, H_l, W_l) -> ``HeadOutputs``."""
        if len(features) != len(self.strides):
            raise ValueError(f"features: expected {len(self.strides)} levels, got {len(features)}")
        cls_all, box_all, sizes = [], [], []
        for level, feature in enumerate(features):
            cls_logits, initial, refined = self.forward_level(feature, level)
            stride = self.strides[level]
            cls_all.append(_flatten(cls_logits))
            box_all.append(_flatten(torch.cat([initial, refined], dim=1) / stride))
            sizes.append(tuple(feature.shape[-2:]))
        return HeadOutputs(cls_logits=torch.cat(cls_all, dim=1), box_regression=torch.cat(box_all, dim=1),
                           quality_logits=None, feature_sizes=sizes)

    def forward_level(self, feature, level):
        """One level: (B, C, H, W) -> IACS logits (B, K, H, W), initial and refined
        distances (B, 4, H, W) in pixels (float32)."""
        stride = self.strides[level]
        cls_feature = self.cls_tower(feature)
        box_feature = self.box_tower(feature)
        init_logits = self.scales[level](self.box_init(self.box_init_conv(box_feature)))
        initial = init_logits.float().exp() * (INIT_DISTANCE_STRIDES * stride)
        offsets = self.star_offsets(initial, stride).to(box_feature.dtype)
        refine_feature = torch.relu(self.box_refine_dconv(box_feature, offsets))
        refined = self.scales_refine[level](self.box_refine(refine_feature)).float().exp() * initial.detach()
        cls_logits = self.cls_logits(torch.relu(self.cls_dconv(cls_feature, offsets)))
        return cls_logits, initial, refined

    def star_offsets(self, initial, stride):
        """(B, 4, H, W) initial distances in pixels -> (B, 18, H, W) star offsets."""
        offsets = star_dcn_offsets_unchecked(initial.permute(0, 2, 3, 1), stride, self.gradient_mul)
        return offsets.permute(0, 3, 1, 2)
