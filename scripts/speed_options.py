"""Training-step time with each speed option (solver.amp, solver.channels_last, solver.compile).

    python scripts/speed_options.py [CONFIG] [--steps N] [--warmup N] [--threads T] [key=value ...]

Builds the config's model and data once per option set, runs ``--warmup`` steps (compilation
happens there) and then ``--steps`` timed steps of ``engine.train_step`` on the same batches,
and prints a Markdown table: median milliseconds per step, the ratio to the float32 baseline
of the same run, and the first step's time (which includes ``torch.compile``'s compilation).
The default is the CPU demo config; on a GPU pass ``device=cuda`` (fp16 is then measured too).
"""
import argparse
import statistics
import time

import torch

from detector import configs, engine, runtime
from detector.data.loaders import build_datasets, train_loader
from detector.modeling import Detector

OPTION_SETS = (
    ("float32", ()),
    ("bf16", ("solver.amp=bf16",)),
    ("fp16 (CUDA)", ("solver.amp=fp16",)),
    ("channels_last", ("solver.channels_last=true",)),
    ("bf16 + channels_last", ("solver.amp=bf16", "solver.channels_last=true")),
    ("torch.compile", ("solver.compile=true",)),
)


def measure(config, batches, steps, warmup):
    device = runtime.select_device(config.device)
    runtime.check_amp(config.solver.amp, device)
    torch.manual_seed(0)
    data_classes = batches[1]
    model = runtime.prepare_model(Detector(config, data_classes).to(device), config.solver.channels_last,
                                  config.solver.compile)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    scaler = runtime.gradient_scaler(device, config.solver.amp)
    times = []
    for index in range(warmup + steps):
        batch = batches[0][index % len(batches[0])]
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        engine.train_step(model, batch, config, optimizer, device, iteration=index, max_iterations=warmup + steps,
                          scaler=scaler)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[warmup:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="demo")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    base = configs.get_config(args.config, ["data.num_workers=0", *args.overrides])
    runtime.set_threads(args.threads)
    runtime.keep_freed_memory()  # as a training run does
    device = runtime.select_device(base.device)
    data = build_datasets(base)
    loader = train_loader(base, data.train, epoch=0)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 8:
            break
    print(f"config {base.name}, device {device}, torch {torch.__version__}, threads {args.threads}, "
          f"batch {base.solver.batch_size}, image {tuple(batches[0].images.shape[-2:])}, "
          f"{args.steps} timed steps after {args.warmup}")
    print("| option | ms / step (median) | vs float32 | first step (s) |\n|---|---:|---:|---:|")
    baseline = None
    for label, overrides in OPTION_SETS:
        if "fp16" in label and device.type != "cuda":
            print(f"| {label} | n/a (needs CUDA) | | |")
            continue
        config = configs.apply_overrides(base, list(overrides))
        first, median = measure(config, (batches, data.num_classes), args.steps, args.warmup)
        baseline = baseline or median
        print(f"| {label} | {median * 1e3:.1f} | {median / baseline:.2f}x | {first:.1f} |", flush=True)


if __name__ == "__main__":
    main()
