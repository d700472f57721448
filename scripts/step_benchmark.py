"""Whole training steps of this project's R-50 detectors against torchvision's ``FCOS``.

Run through ``python scripts/benchmark.py --steps`` (the machine line comes from there).
Every detector is a ResNet-50-FPN with random weights, frozen BatchNorm, the stem and
stage 1 frozen (torchvision's ``trainable_backbone_layers=3``), torchvision's ResNet layout
(``backbone.style=pytorch``: the papers' Caffe-style backbone puts the stride in the 1x1
conv, which makes the 3x3 convs cheaper and would flatter this project's rows), trained by SGD (momentum
0.9, weight decay 1e-4) on the same two 512 x 512 images with G = 20 COCO-like GTs each.
One step = forward, losses, backward, optimizer step (``engine.train_step`` for this
project: it includes the non-finite guard and gradient clipping of every training step;
``loss.backward(); optimizer.step()`` for torchvision). The detectors take turns step by
step, ``repeats`` rounds after two warm-up rounds, so a change of machine load hits all of
them alike; each cell is a median.

Columns: ms per step; the ratio to torchvision's FCOS step (< 1: faster); the time of
assignment + targets + losses, forward and backward (``Detector.losses`` on detached
copies of the head outputs, then ``backward`` to them), and its share of the step; and the
step's ratio to this project's ATSS step (how much a head costs beside the ATSS head).

``demo_report`` makes the same comparison at the CPU demo's scale: the ``demo`` config
(tiny ResNet, FPN P3-P5 of 64 channels, a head of 2 x 64-channel convs; Dynamic ATSS) on
its own batches of 16 digits images of 128 px, against torchvision's ``FCOS`` given the
same backbone and FPN and a head of the same size (``FCOSHead`` with 2 convs, GN 32).
"""
import math
import statistics
import time

import numpy as np
import torch
import torchvision
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.models.detection.fcos import FCOS
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

from detector import configs, engine
from detector.data.collate import Batch, pad_targets
from detector.data.loaders import build_datasets, train_loader
from detector.modeling import Detector

IMAGE = 512
BATCH = 2
NUM_GTS = 20
NUM_CLASSES = 80
#: (label, config) of this project's detectors, ATSS first (the heads' reference).
DETECTORS = (
    ("ATSS", "atss_r50_1x"),
    ("Dynamic ATSS", "dyn_atss_qfl_iou_r50_1x"),
    ("Pseudo-IoU", "piou_giou_ctr_r50_1x"),
    ("GFLV2", "gflv2_r50_1x"),
    ("VFNet", "vfnet_r50_1x"),
    ("RetinaNet", "retinanet_r50_1x"),
)


def batch_of_images(seed=0):
    """``BATCH`` random images with ``NUM_GTS`` boxes of 16-400 px each."""
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((BATCH, 3, IMAGE, IMAGE), generator=generator)
    targets = []
    for _ in range(BATCH):
        side = np.exp(rng.uniform(np.log(16), np.log(400), (NUM_GTS, 2)))
        x1y1 = rng.uniform(0, 1, (NUM_GTS, 2)) * (IMAGE - side)
        boxes = torch.as_tensor(np.concatenate([x1y1, x1y1 + side], axis=1), dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.as_tensor(rng.integers(0, NUM_CLASSES, NUM_GTS))})
    return Batch(images=images, image_sizes=[(IMAGE, IMAGE)] * BATCH, targets=targets)


def project_detector(name, overrides=None, num_classes=NUM_CLASSES):
    """This project's detector of config ``name`` (at the benchmark's size unless
    ``overrides`` are given), its step and a maker of its losses-only call."""
    if overrides is None:
        overrides = [f"data.min_size={IMAGE}", f"data.max_size={IMAGE}", f"solver.batch_size={BATCH}", "backbone.weights=null",
                     "backbone.style=pytorch"]
    config = configs.get_config(name, overrides)
    torch.manual_seed(0)
    model = Detector(config, num_classes)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    device = torch.device("cpu")

    def step(batch):
        engine.train_step(model, batch, config, optimizer, device, iteration=0, max_iterations=1)

    def losses_only(batch):
        """Assignment + targets + losses, forward and backward, on detached head outputs."""
        with torch.no_grad():
            outputs = model(batch.images)
        leaves = {f: v.detach().requires_grad_(True) for f, v in zip(outputs._fields, outputs) if torch.is_tensor(v) and v.is_floating_point()}
        outputs = outputs._replace(**leaves)
        targets = pad_targets(batch.targets)

        def run():
            for leaf in leaves.values():
                leaf.grad = None
            terms = model.losses(outputs, targets, tuple(batch.images.shape[-2:])).terms
            sum(terms.values()).backward()
        return run

    return step, losses_only


def torchvision_fcos():
    """torchvision's FCOS on the same ResNet-50-FPN (frozen BN, stages 2-4 trainable), its
    transform kept from resizing (min = max = the image size, ImageNet normalisation)."""
    torch.manual_seed(0)
    backbone = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    backbone = _resnet_fpn_extractor(backbone, 3, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    model = FCOS(backbone, NUM_CLASSES, min_size=IMAGE, max_size=IMAGE)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.01, momentum=0.9, weight_decay=1e-4)

    def step(batch):
        images = list(batch.images)
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch.targets]
        losses = model(images, targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step


def timed_once(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(steps, losses, batch, repeats):
    """Median seconds of each step and each losses-only call, taking turns, after two rounds."""
    times = {label: [] for label in steps}
    loss_times = {label: [] for label in losses}
    for round_ in range(repeats + 2):
        for label, step in steps.items():
            seconds = timed_once(lambda: step(batch))
            if round_ >= 2:
                times[label].append(seconds)
        for label, run in losses.items():
            seconds = timed_once(run)
            if round_ >= 2:
                loss_times[label].append(seconds)
    median = {label: statistics.median(values) for label, values in times.items()}
    return median, {label: statistics.median(values) for label, values in loss_times.items()}


def rows(detectors, median, loss_median, reference_label="ATSS"):
    """Table rows of ``detectors`` ((label, config) pairs) against the torchvision row."""
    baseline, reference = median["torchvision FCOS"], median.get(reference_label, math.nan)
    lines = [
        "| detector | config | ms / step | vs torchvision FCOS | assign + targets + loss (fwd + bwd) ms | share of step "
        f"| vs {reference_label} step |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| torchvision FCOS | `torchvision.models.detection.FCOS` | {baseline * 1e3:.0f} | 1.00x | | | |",
    ]
    for label, name in detectors:
        step, loss = median[label], loss_median[label]
        lines.append(f"| {label} | `{name}` | {step * 1e3:.0f} | {step / baseline:.2f}x | {loss * 1e3:.1f} | "
                     f"{loss / step:.1%} | {step / reference:.2f}x |")
    return lines


def report(repeats, detectors=DETECTORS):
    """Markdown table of the interleaved R-50 step times."""
    batch = batch_of_images()
    steps = {"torchvision FCOS": torchvision_fcos()}
    losses = {}
    for label, name in detectors:
        steps[label], make_losses = project_detector(name)
        losses[label] = make_losses(batch)
    median, loss_median = interleaved(steps, losses, batch, repeats)
    header = [
        f"ResNet-50-FPN, random weights, frozen BN, batch {BATCH} of {IMAGE} x {IMAGE}, G = {NUM_GTS} per image, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; median of {repeats} interleaved steps.",
        "",
    ]
    return "\n".join(header + rows(detectors, median, loss_median))


def demo_report(repeats, name="demo"):
    """Markdown table of the demo config's step against torchvision's FCOS on the same tiny
    backbone and FPN (one batch of the demo's own data)."""
    config = configs.get_config(name, ["data.num_workers=0"])
    data = build_datasets(config)
    batch = next(iter(train_loader(config, data.train, epoch=0)))
    step, make_losses = project_detector(name, ["data.num_workers=0"], data.num_classes)
    steps = {"torchvision FCOS": tiny_torchvision_fcos(config, data.num_classes, batch), name: step}
    median, loss_median = interleaved(steps, {name: make_losses(batch)}, batch, repeats)
    size = tuple(batch.images.shape[-2:])
    header = [
        f"The `{name}` config's model and data: batch {len(batch.image_sizes)} of {size[0]} x {size[1]}, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; median of {repeats} interleaved steps.",
        "",
    ]
    return "\n".join(header + rows([(name, name)], median, loss_median, reference_label=name))


class _FeatureDict(torch.nn.Module):
    """This project's backbone + FPN as a torchvision detection backbone (a dict of levels)."""

    def __init__(self, backbone, fpn, channels):
        super().__init__()
        self.body, self.fpn, self.out_channels = backbone, fpn, channels

    def forward(self, images):
        return {str(i): feature for i, feature in enumerate(self.fpn(self.body(images)))}


def tiny_torchvision_fcos(config, num_classes, batch):
    """torchvision's FCOS on the demo's backbone and FPN (built as the demo builds them), with
    a head of the demo's width and depth, SGD with the demo's lr, momentum and decay."""
    torch.manual_seed(0)
    template = Detector(config, num_classes)
    channels = config.fpn.out_channels
    strides = tuple((2**level,) for level in config.fpn.levels)
    size = int(batch.images.shape[-1])
    model = FCOS(_FeatureDict(template.backbone, template.fpn, channels), num_classes, min_size=size, max_size=size,
                 anchor_generator=AnchorGenerator(strides, ((1.0,),) * len(strides)),
                 head=FCOSHead(channels, 1, num_classes, num_convs=config.head.depth))
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=config.solver.lr, momentum=0.9, weight_decay=config.solver.weight_decay)

    def step(batch):
        targets = [{"boxes": t["boxes"], "labels": t["labels"]} for t in batch.targets]
        losses = model(list(batch.images), targets)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return step
