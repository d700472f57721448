"""Where the resident memory of a CPU training process goes (specs/training.md §10).

Prints the resident set size (VmRSS) and its peak (VmHWM) of this process after each
stage: importing torch, torchvision and the project, building the datasets, the model
and one batch, then a few training steps; and the allocations of one step by operator
(torch profiler).

    python scripts/memory_profile.py [--config demo] [--size 320] [--threads 1] [KEY=VALUE ...]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def rss():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def report(stage, before=None):
    now, peak = rss()
    added = f" (+{now - before:.0f} MB)" if before is not None else ""
    print(f"{stage:<32} rss {now:6.0f} MB{added}, peak {peak:6.0f} MB")
    return now


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="demo")
    parser.add_argument("--size", type=int, default=320, help="image side of the built-in data (px)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    start = report("python")
    import torch

    after_torch = report("import torch", start)
    import torchvision  # noqa: F401

    after_vision = report("import torchvision", after_torch)
    from detector import engine
    from detector.configs import get_config
    from detector.data.collate import collate
    from detector.data.loaders import build_datasets, size_divisor
    from detector.modeling import Detector

    after_project = report("import the project", after_vision)
    from detector import runtime

    torch.set_num_threads(args.threads)
    runtime.keep_freed_memory()  # as a training run does
    size = args.size
    config = get_config(args.config, [f"data.min_size={size}", f"data.max_size={size}", f"data.test_min_size={size}",
                                      f"data.digits_image_size={size}", "data.digits_num_train=200",
                                      "data.digits_num_val=20", *args.overrides])
    data = build_datasets(config)
    batch = collate([data.train[i] for i in range(config.solver.batch_size)], size_divisor=size_divisor(config))
    model = Detector(config, data.num_classes)
    optimizer = engine.build_optimizer(config, model)
    before_steps = report("datasets, model, one batch", after_project)
    for step in range(args.steps):
        engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=step, max_iterations=100)
        report(f"after training step {step + 1}", before_steps)
    with torch.autograd.profiler.profile(profile_memory=True) as profile:
        engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=args.steps, max_iterations=100)
    print(profile.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=8))


if __name__ == "__main__":
    main()
