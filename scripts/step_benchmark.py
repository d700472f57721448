"""Whole training steps of this project's R-50 detectors against torchvision's ``FCOS``.

Run through ``python scripts/benchmark.py --steps`` (the machine line comes from there).
Every detector is a ResNet-50-FPN with random weights, frozen BatchNorm, the stem and
stage 1 frozen (torchvision's ``trainable_backbone_layers=3``), trained by SGD (momentum
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

from detector import configs, engine
from detector.data.collate import Batch, pad_targets
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


def project_detector(name):
    """This project's detector of config ``name`` at the benchmark's size, and its step."""
    config = configs.get_config(name, [
        f"data.min_size={IMAGE}", f"data.max_size={IMAGE}", f"solver.batch_size={BATCH}", "backbone.weights=null",
    ])
    torch.manual_seed(0)
    model = Detector(config, NUM_CLASSES)
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


def report(repeats, detectors=DETECTORS):
    """Markdown table of the interleaved step times."""
    batch = batch_of_images()
    steps = {"torchvision FCOS": torchvision_fcos()}
    losses = {}
    for label, name in detectors:
        steps[label], make_losses = project_detector(name)
        losses[label] = make_losses(batch)
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
    baseline, atss = median["torchvision FCOS"], median.get("ATSS", math.nan)
    lines = [
        f"ResNet-50-FPN, random weights, frozen BN, batch {BATCH} of {IMAGE} x {IMAGE}, G = {NUM_GTS} per image, "
        f"torch {torch.__version__} with {torch.get_num_threads()} threads; median of {repeats} interleaved steps.",
        "",
        "| detector | config | ms / step | vs torchvision FCOS | assign + targets + loss (fwd + bwd) ms | share of step | vs ATSS step |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| torchvision FCOS | `torchvision.models.detection.FCOS` | {baseline * 1e3:.0f} | 1.00x | | | |",
    ]
    for label, name in detectors:
        loss_ms = statistics.median(loss_times[label])
        lines.append(
            f"| {label} | `{name}` | {median[label] * 1e3:.0f} | {median[label] / baseline:.2f}x | {loss_ms * 1e3:.1f} | "
            f"{loss_ms / median[label]:.1%} | {median[label] / atss:.2f}x |"
        )
    return "\n".join(lines)
