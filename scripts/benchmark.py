"""Speed table: the torch assigners and loss step against their baselines, in one run.

Assigners (and the loss step) on COCO-like scenes: an 800 x 1333 input, strides 8..128
(22,300 anchors or points), G GTs per image drawn with a COCO-like size mix, predicted
boxes decoded (once, outside the timed calls, as a training step does) from deltas with
small noise. Each cell is the median wall time of ``--repeats`` runs after one warm-up;
batched torch rows are divided by B to give a per-image time. Baselines of each row, timed
per image in the same run:

- ``reference``: the project's NumPy reference (written to be read, not to be fast);
- ``NumPy loop``: a plain NumPy loop over GTs (``scripts/numpy_loops.py``), the fair
  "no framework" yardstick of the per-call cost;
- ``torchvision``: torchvision's own ``FCOS.compute_loss`` matching on the same points
  (its head's loss is replaced by a function returning the matches, so only the matching
  is timed): the peer row of the anchor-free rules;
- the loss step forward + backward is compared with the floor of reading its inputs once
  (``logits.sum()`` over the (B, A, K) classification logits), and with the least
  arithmetic any sigmoid-based classification loss needs there, one ``exp`` per logit
  written to a preallocated buffer (``exp floor``; forward + backward need at least an
  ``exp`` and a ``log`` per logit and one gradient written).

``--steps`` times whole training steps instead: this project's R-50 detectors against
torchvision's ``FCOS`` on the same ResNet-50-FPN (``step_benchmark``).

    python scripts/benchmark.py                  # the full table (many minutes on 2 cores)
    python scripts/benchmark.py --quick          # G = 5 and 20, batch 1: a smoke run
    python scripts/benchmark.py --sizes 5000 --only max_iou atss   # some rows only
    python scripts/benchmark.py --steps          # training steps vs torchvision FCOS
    python scripts/benchmark.py --markdown out.md

The machine is printed with the table; compare numbers only within one table.
"""
import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import loss_step as d_loss_step  # noqa: E402
from detector import runtime  # noqa: E402
from detector.assign import anchor_free as d_af  # noqa: E402
from detector.assign import atss as d_atss  # noqa: E402
from detector.assign import dynamic_atss as d_datss  # noqa: E402
from detector.assign import max_iou as d_maxiou  # noqa: E402
from reference import anchors as r_anchors  # noqa: E402
from reference import coders as r_coders  # noqa: E402
from reference import losses as r_losses  # noqa: E402
from reference.assign import anchor_free as r_af  # noqa: E402
from reference.assign import atss as r_atss  # noqa: E402
from reference.assign import dynamic_atss as r_datss  # noqa: E402
from reference.assign import max_iou as r_maxiou  # noqa: E402
from reference.assign import dsl as r_dsl  # noqa: E402
from reference.assign import simota as r_simota  # noqa: E402
from reference.assign import tal as r_tal  # noqa: E402
from detector.assign import dsl as d_dsl  # noqa: E402
from detector.assign import simota as d_simota  # noqa: E402
from detector.assign import tal as d_tal  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy_loops  # noqa: E402

IMAGE_SIZE = (800, 1333)
NUM_CLASSES = 80


def coco_like_boxes(rng, count, image_size=IMAGE_SIZE):
    """(count, 4) float64 boxes: 40% small, 35% medium, 25% large, aspect 1:3..3:1."""
    height, width = image_size
    kind = rng.choice(3, size=count, p=[0.40, 0.35, 0.25])
    side = np.where(kind == 0, rng.uniform(8, 32, count), np.where(kind == 1, rng.uniform(32, 96, count), rng.uniform(96, 600, count)))
    ratio = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))
    w = np.minimum(side * np.sqrt(ratio), width)
    h = np.minimum(side / np.sqrt(ratio), height)
    x1 = rng.uniform(0, 1, count) * (width - w)
    y1 = rng.uniform(0, 1, count) * (height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1)


def timed(function, repeats, sync=None):
    function()  # warm-up
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def scene(num_gts, batch, seed=0):
    rng = np.random.default_rng(seed)
    anchors, anchor_counts = r_anchors.multi_level_anchors(IMAGE_SIZE)
    points, point_strides, point_counts = r_anchors.multi_level_points(IMAGE_SIZE)
    gts = np.stack([coco_like_boxes(rng, num_gts) for _ in range(batch)])  # (B, G, 4)
    deltas = rng.normal(0, 0.3, size=(batch, len(anchors), 4))  # (B, A, 4)
    pred_boxes = np.stack([r_coders.decode_deltas(anchors, image_deltas) for image_deltas in deltas])  # (B, A, 4)
    labels = rng.integers(0, NUM_CLASSES, size=(batch, num_gts))
    scores = rng.uniform(0, 1, size=(batch, len(anchors), NUM_CLASSES)) ** 4  # (B, A, K) mostly low probabilities
    return dict(anchors=anchors, anchor_counts=anchor_counts, points=points, point_counts=point_counts, gts=gts, deltas=deltas, pred_boxes=pred_boxes, labels=labels, scores=scores)


def reference_calls(s):
    a, ac, p, pc = s["anchors"], s["anchor_counts"], s["points"], s["point_counts"]
    gt, pred_boxes = s["gts"][0], s["pred_boxes"][0]
    labels, scores = s["labels"][0], s["scores"][0]
    return {
        "max_iou": lambda: r_maxiou.assign_max_iou(a, gt),
        "atss": lambda: r_atss.assign_atss(a, ac, gt),
        "dynamic_atss": lambda: r_datss.assign_dynamic_atss(a, ac, gt, pred_boxes),
        "pseudo_iou": lambda: r_af.assign_pseudo_iou(p, pc, gt),
        "fcos": lambda: r_af.assign_fcos(p, pc, gt),
        "tal": lambda: r_tal.assign_tal(a, gt, labels, scores, pred_boxes),
        "simota": lambda: r_simota.assign_simota(a, ac, gt, labels, pred_boxes, scores),
        "dsl": lambda: r_dsl.assign_dsl(a, ac, gt, labels, pred_boxes, scores),
    }


def torch_calls(s, device, dtype=torch.float32):
    def t(x):
        return torch.as_tensor(x, dtype=dtype, device=device)

    a, p = t(s["anchors"]), t(s["points"])
    ac, pc = s["anchor_counts"], s["point_counts"]
    gt, pred_boxes = t(s["gts"]), t(s["pred_boxes"])
    labels, scores = torch.as_tensor(s["labels"], device=device), t(s["scores"])
    valid = torch.ones(gt.shape[:2], dtype=torch.bool, device=device)
    return {
        "max_iou": lambda: d_maxiou.assign_max_iou_batched(a, gt, valid),
        "atss": lambda: d_atss.assign_atss_batched(a, ac, gt, valid),
        "dynamic_atss": lambda: d_datss.assign_dynamic_atss_batched(a, ac, gt, valid, pred_boxes),
        "pseudo_iou": lambda: d_af.assign_pseudo_iou_batched(p, pc, gt, valid),
        "fcos": lambda: d_af.assign_fcos_batched(p, pc, gt, valid),
        "tal": lambda: d_tal.assign_tal_batched(a, gt, valid, labels, scores, pred_boxes),
        "simota": lambda: d_simota.assign_simota_batched(a, ac, gt, valid, labels, pred_boxes, scores),
        "dsl": lambda: d_dsl.assign_dsl_batched(a, ac, gt, valid, labels, pred_boxes, scores),
    }


def loop_calls(s):
    """The plain NumPy loops over GTs (``scripts/numpy_loops.py``) on image 0."""
    a, ac, p, pc = s["anchors"], s["anchor_counts"], s["points"], s["point_counts"]
    gt, pred_boxes = s["gts"][0], s["pred_boxes"][0]
    labels, scores = s["labels"][0], s["scores"][0]
    return {
        "max_iou": lambda: numpy_loops.max_iou_loop(a, gt),
        "atss": lambda: numpy_loops.atss_loop(a, ac, gt),
        "dynamic_atss": lambda: numpy_loops.atss_loop(a, ac, gt, pred_boxes),
        "pseudo_iou": lambda: numpy_loops.fcos_loop(p, pc, gt, pseudo_iou_threshold=0.4),
        "fcos": lambda: numpy_loops.fcos_loop(p, pc, gt),
        "tal": lambda: numpy_loops.tal_loop(a, gt, labels, scores, pred_boxes),
        "simota": lambda: numpy_loops.simota_loop(a, gt, labels, pred_boxes, scores),
        "dsl": lambda: numpy_loops.dsl_loop(a, gt, labels, pred_boxes, scores),
    }


def torchvision_fcos_matching(s, device="cpu"):
    """torchvision's ``FCOS.compute_loss`` matching of image 0 on our points (each given to
    it as a stride-sized box centred on the point, as its anchor generator makes them),
    with the head's loss replaced by a function returning the matches: only torchvision's
    own matching code runs."""
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.fcos import FCOS

    backbone = torch.nn.Conv2d(3, 32, 1)  # never run: FCOS needs a backbone to build its (unused) head
    backbone.out_channels = 32
    sizes = tuple((stride,) for stride in r_anchors.DEFAULT_STRIDES)
    model = FCOS(backbone, NUM_CLASSES, anchor_generator=AnchorGenerator(sizes, ((1.0,),) * len(sizes)))
    model.head.compute_loss = lambda targets, head_outputs, anchors, matched_idxs: matched_idxs
    stride = np.repeat(r_anchors.DEFAULT_STRIDES, s["point_counts"])[:, None]
    boxes = np.concatenate([s["points"] - stride / 2, s["points"] + stride / 2], axis=1)
    anchors = [torch.as_tensor(boxes, dtype=torch.float32, device=device)]
    targets = [{"boxes": torch.as_tensor(s["gts"][0], dtype=torch.float32, device=device)}]
    counts = list(s["point_counts"])
    return lambda: model.compute_loss(targets, {}, anchors, counts)


def loss_step_calls(s, device, dtype=torch.float32):
    """The loss step (QFL + GIoU + IoU branch, K = 80) after an ATSS assignment: reference
    for image 0, torch batched. Inputs are drawn once; only the loss computation is timed."""
    rng = np.random.default_rng(1)
    batch, num_anchors = s["deltas"].shape[:2]
    anchors, gts, labels = s["anchors"], s["gts"], s["labels"]
    matched = np.stack([r_atss.assign_atss(anchors, s["anchor_counts"], gts[b]).matched_gt for b in range(batch)])
    logits = rng.normal(0, 2, size=(batch, num_anchors, NUM_CLASSES))
    quality = rng.normal(0, 1, size=(batch, num_anchors))
    pred_boxes = np.stack([r_coders.decode_deltas(anchors, s["deltas"][b]) for b in range(batch)])
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    options = dict(cls_loss="qfl", box_loss="giou", quality="iou")

    def t(x, kind=dtype):
        return torch.as_tensor(x, dtype=kind, device=device)

    batched = (t(logits), t(pred_boxes), t(quality), t(centers), t(matched, torch.int64), t(gts), t(labels, torch.int64))
    valid = torch.ones(gts.shape[:2], dtype=torch.bool, device=device)
    reference = lambda: r_losses.detection_losses(logits[0], pred_boxes[0], quality[0], centers, matched[0], gts[0], labels[0], **options)  # noqa: E731
    fast = lambda: d_loss_step.detection_losses_batched(*batched[:6], batched[6], valid, **options)  # noqa: E731
    trainable = [x.clone().requires_grad_(True) for x in batched[:3]]

    def train():
        """Forward and backward of the loss step w.r.t. the logits, boxes and quality logits."""
        with torch.enable_grad():
            for x in trainable:
                x.grad = None
            terms = d_loss_step.detection_losses_batched(*trainable, *batched[3:6], batched[6], valid, **options)
            sum(terms.values()).backward()

    buffer = torch.empty_like(batched[0])
    floors = {
        "read floor": lambda: batched[0].sum(),  # reading the (B, A, K) logits once
        "exp floor": lambda: torch.exp(batched[0], out=buffer),  # one exp per logit, no allocation
    }
    return reference, fast, train, floors


def run(args):
    """Rows ``(step, G, B, device, torch s/image, {baseline: s/image})``."""
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    sizes = args.sizes or ((5, 20) if args.quick else (1, 5, 20, 100, 1000))
    wanted = set(args.only or [*torch_calls(scene(1, 1), "cpu"), "loss step"])  # names checked by main
    rows = []
    for num_gts in sizes:
        s1 = scene(num_gts, 1)
        baselines = {name: {"reference": timed(call, args.repeats_reference)} for name, call in reference_calls(s1).items() if name in wanted}
        for name, call in loop_calls(s1).items():
            if name in wanted:
                baselines[name]["NumPy loop"] = timed(call, args.repeats_reference)
        for name in ("fcos", "pseudo_iou"):
            if name in wanted:
                baselines[name]["torchvision"] = timed(torchvision_fcos_matching(s1), args.repeats_reference)
        batches = (1,) if args.quick or num_gts > 100 else (1, 16)
        for batch in batches:
            s = s1 if batch == 1 else scene(num_gts, batch)
            for device in devices:
                sync = torch.cuda.synchronize if device == "cuda" else None
                for name, call in torch_calls(s, device).items():
                    if name in wanted:
                        rows.append((name, num_gts, batch, device, timed(call, args.repeats, sync) / batch, baselines[name]))
                if "loss step" not in wanted:
                    continue
                reference_loss, fast_loss, train_loss, floors = loss_step_calls(s, device)
                if "loss step" not in baselines:
                    baselines["loss step"] = {"reference": timed(reference_loss, args.repeats_reference)}
                rows.append(("loss step", num_gts, batch, device, timed(fast_loss, args.repeats, sync) / batch, baselines["loss step"]))
                floor_time = {name: timed(call, args.repeats, sync) / batch for name, call in floors.items()}
                rows.append(("loss step fwd+bwd", num_gts, batch, device, timed(train_loss, args.repeats, sync) / batch, floor_time))
    return rows


def machine():
    cpu = platform.processor() or platform.machine()
    text = f"{platform.system()} {cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        text += f", CUDA device {torch.cuda.get_device_name(0)}"
    return text


BASELINES = ("reference", "NumPy loop", "torchvision", "read floor", "exp floor")
FLOORS = ("read floor", "exp floor")


def table(rows):
    """Markdown: each baseline's ms/image and its time divided by the torch time (> 1: torch
    is faster); for the floors, the torch time in floors."""
    ratio = ["times the floor" if b in FLOORS else f"vs {b}" for b in BASELINES]
    lines = [
        "| step | G | B | device | torch ms/image | " + " | ".join(f"{b} ms/image | {r}" for b, r in zip(BASELINES, ratio)) + " |",
        "|---|---:|---:|---|---:|" + "---:|---:|" * len(BASELINES),
    ]
    for name, num_gts, batch, device, seconds, baselines in rows:
        cells = []
        for baseline in BASELINES:
            value = baselines.get(baseline)
            if value is None:
                cells += ["", ""]
            elif baseline in FLOORS:
                cells += [f"{value * 1e3:.2f}", f"{seconds / value:.0f}"]
            else:
                cells += [f"{value * 1e3:.2f}", f"{value / seconds:.2f}x"]
        lines.append(f"| {name} | {num_gts} | {batch} | {device} | {seconds * 1e3:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="G = 5 and 20, batch 1 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="GTs per image to time (default 1 5 20 100 1000)")
    parser.add_argument("--only", nargs="+", help="rows to time: assigner names and/or 'loss step' (default all)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per torch cell")
    parser.add_argument("--repeats-reference", type=int, default=3, help="timed runs per reference cell")
    parser.add_argument("--no-cuda", action="store_true")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    parser.add_argument("--steps", action="store_true", help="time whole training steps instead (step_benchmark.py)")
    parser.add_argument("--step-repeats", type=int, default=10, help="timed steps per detector with --steps")
    args = parser.parse_args(argv)
    known = [*torch_calls(scene(1, 1), "cpu"), "loss step"]
    unknown = sorted(set(args.only or ()) - set(known))
    if unknown:
        parser.error(f"--only: unknown rows {unknown}; expected some of {known}")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.steps:
        import step_benchmark

        runtime.keep_freed_memory()  # training steps, timed as a training run runs them

        text = (f"Machine: {machine()}\n\n" + step_benchmark.report(args.step_repeats) + "\n\n"
                + step_benchmark.demo_report(args.step_repeats))
        print(text)
        if args.markdown:
            args.markdown.write_text(text + "\n")
        return
    with torch.no_grad():  # the fwd+bwd rows enable gradients where they need them
        rows = run(args)
    text = f"Machine: {machine()}\nScene: {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}, strides 8..128, 22,300 anchors/points\n\n" + table(rows)
    print(text)
    if args.markdown:
        args.markdown.write_text(text + "\n")


if __name__ == "__main__":
    main()
