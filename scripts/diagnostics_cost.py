"""What the per-step assignment diagnostics cost (specs/study.md §6), measured in one run.

Two measurements, each interleaved (on, off, on, off, ...) so that machine load affects
both sides alike:

1. whole training steps of a config (default: the CPU demo, Dynamic ATSS) with
   ``diagnostics=true`` and ``diagnostics=false``, on one fixed batch of the built-in data;
2. ``modeling.objective.assignment_diagnostics`` alone on a COCO-size scene (800 x 1333,
   22,300 anchors, batch 2 and 16, G GTs per image) after an ATSS and a Dynamic ATSS
   assignment (the latter also runs plain ATSS for ``jaccard_vs_atss``), beside the time of
   the assignment itself.

    python scripts/diagnostics_cost.py [--config demo] [--steps 30] [--threads 1]
"""
import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detector import engine  # noqa: E402
from detector.configs import get_config  # noqa: E402
from detector.data.collate import collate, pad_targets  # noqa: E402
from detector.data.loaders import build_datasets, size_divisor  # noqa: E402
from detector.modeling import Detector  # noqa: E402
from detector.modeling.assigners import AtssOptions, DynamicAtssOptions, assign  # noqa: E402
from detector.modeling.objective import assignment_diagnostics  # noqa: E402


def step_times(config_name, steps):
    """Median seconds of a training step with diagnostics on and off (interleaved)."""
    times = {True: [], False: []}
    models = {}
    for on in (True, False):
        config = get_config(config_name, [f"diagnostics={'true' if on else 'false'}"])
        data = build_datasets(config)
        batch = collate([data.train[i] for i in range(config.solver.batch_size)], size_divisor=size_divisor(config))
        torch.manual_seed(0)
        model = Detector(config, data.num_classes)
        models[on] = (config, model, engine.build_optimizer(config, model), batch)
    for step in range(steps + 1):
        for on in (True, False):
            config, model, optimizer, batch = models[on]
            start = time.perf_counter()
            engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=step, max_iterations=1000)
            if step:  # the first step warms up
                times[on].append(time.perf_counter() - start)
    return statistics.median(times[True]), statistics.median(times[False])


def scene_times(batch, num_gts, repeats):
    """(assignment, diagnostics) median seconds for ATSS and Dynamic ATSS on a COCO-size scene."""
    config = get_config("atss_r50_1x")
    model = Detector(config, 80)
    priors = model.priors((800, 1344))
    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(batch, num_gts, 2, generator=generator) * torch.tensor([1200.0, 700.0])
    wh = 8 + torch.rand(batch, num_gts, 2, generator=generator) * 300
    targets = pad_targets([{"boxes": torch.cat([xy[b], xy[b] + wh[b]], dim=1), "labels": torch.zeros(num_gts, dtype=torch.int64)}
                           for b in range(batch)])
    pred_boxes = priors.decode(torch.randn(batch, priors.points.shape[0], 4, generator=generator) * 0.2)
    rows = {}
    for options in (AtssOptions(), DynamicAtssOptions()):
        assignment = assign(options, priors, targets, pred_boxes)
        assign_t, diag_t = [], []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            assign(options, priors, targets, pred_boxes)
            middle = time.perf_counter()
            assignment_diagnostics(priors, assignment, targets, pred_boxes, options)
            end = time.perf_counter()
            assign_t.append(middle - start)
            diag_t.append(end - middle)
        rows[options.name] = (statistics.median(assign_t[1:]), statistics.median(diag_t[1:]))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    on, off = step_times(args.config, args.steps)
    print(f"\ntraining step of `{args.config}` (median of {args.steps}):")
    print(f"  diagnostics on {on * 1e3:8.1f} ms | off {off * 1e3:8.1f} ms | cost {(on - off) * 1e3:+.1f} ms "
          f"({100 * (on - off) / off:+.1f} %)")
    print("\nCOCO-size scene, 22,300 anchors (median ms per call: assignment | diagnostics):")
    for batch, num_gts in ((2, 20), (16, 20), (2, 100)):
        rows = scene_times(batch, num_gts, args.repeats)
        cells = "  ".join(f"{name}: {a * 1e3:7.2f} | {d * 1e3:6.2f}" for name, (a, d) in rows.items())
        print(f"  B = {batch:2d}, G = {num_gts:3d}   {cells}")


if __name__ == "__main__":
    main()
