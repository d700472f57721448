"""Training-step time with each speed option (solver.amp, solver.channels_last, solver.compile).

    python scripts/speed_options.py [CONFIG] [--steps N] [--warmup N] [--threads T] [key=value ...]
    python scripts/speed_options.py demo --only float32 --profile 5    # where a CPU step goes

Builds the config's model and data once per option set, runs ``--warmup`` steps (compilation
happens there) and then ``--steps`` timed steps of ``engine.train_step`` on the same batches,
and prints a Markdown table: median milliseconds per step, the ratio to the float32 baseline
of the same run, and the first step's time (which includes ``torch.compile``'s compilation).
The default is the CPU demo config; on a GPU pass ``device=cuda`` (fp16 is then measured too).
``--only`` times some option sets only (labels of the table's first column).

``--profile N`` then runs N more float32 steps (CPU only) under ``torch.profiler`` and prints
where their time went: the share of the operators' own (self) CPU time in convolution forward,
convolution backward, normalisation (batch / group norm, forward and backward) and everything
else, and the operators that took most, by input shape.
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


#: (group, test on an operator's name) of the profile's summary, first match wins.
PROFILE_GROUPS = (
    ("convolution backward", lambda name: "conv" in name and "backward" in name),
    ("convolution forward", lambda name: "conv" in name),
    ("normalisation (batch / group norm)", lambda name: "batch_norm" in name or "group_norm" in name),
    ("everything else", lambda name: True),
)


def profile_steps(config, batches, steps, top=15):
    """Markdown: the self CPU time of ``steps`` float32 training steps by operator group, and the
    ``top`` operators (with their input shapes) that took most."""
    from torch.profiler import ProfilerActivity, profile

    device = runtime.select_device(config.device)
    torch.manual_seed(0)
    model = runtime.prepare_model(Detector(config, batches[1]).to(device), False, False).train()
    optimizer = engine.build_optimizer(config, model)
    step = 0

    def train_step():
        nonlocal step
        engine.train_step(model, batches[0][step % len(batches[0])], config, optimizer, device, iteration=step,
                          max_iterations=2 * steps + 2)
        step += 1

    for _ in range(2):  # warm-up: first-touch allocations and kernel selection stay out of the profile
        train_step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as profiler:
        for _ in range(steps):
            train_step()
    operators = [event for event in profiler.key_averages(group_by_input_shape=True) if event.self_cpu_time_total > 0]
    total = sum(event.self_cpu_time_total for event in operators)
    per_group = {label: 0.0 for label, _ in PROFILE_GROUPS}
    for event in operators:
        label = next(label for label, matches in PROFILE_GROUPS if matches(event.key))
        per_group[label] += event.self_cpu_time_total
    lines = [f"Profile of {steps} float32 steps (torch.profiler, its own overhead included): "
             f"{total / steps / 1e3:.1f} ms of operators' self CPU time per step", "",
             "| group | ms / step | share |", "|---|---:|---:|"]
    lines += [f"| {label} | {micros / steps / 1e3:.1f} | {micros / total:.0%} |" for label, micros in per_group.items()]
    lines += ["", "| operator | input shapes | calls / step | self ms / step | share |", "|---|---|---:|---:|---:|"]
    for event in sorted(operators, key=lambda event: -event.self_cpu_time_total)[:top]:
        shapes = ", ".join(str(shape) for shape in event.input_shapes if shape)
        lines.append(f"| `{event.key}` | {shapes} | {event.count / steps:g} | "
                     f"{event.self_cpu_time_total / steps / 1e3:.2f} | {event.self_cpu_time_total / total:.1%} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", nargs="?", default="demo")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", nargs="+", metavar="OPTION", help="time only these option sets (default all)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then profile N float32 steps (CPU): time by operator group and the top operators")
    args = parser.parse_intermixed_args(argv)  # KEY=VALUE overrides before or after the options
    labels = [label for label, _ in OPTION_SETS]
    unknown = sorted(set(args.only or ()) - set(labels))
    if unknown:
        parser.error(f"--only: unknown option sets {unknown}; expected some of {labels}")
    if args.profile < 0 or args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1, --warmup and --profile at least 0")
    try:
        base = configs.get_config(args.config, ["data.num_workers=0", *args.overrides])
    except (KeyError, ValueError) as error:
        parser.error(str(error))
    runtime.set_threads(args.threads)
    runtime.keep_freed_memory()  # as a training run does
    device = runtime.select_device(base.device)
    if args.profile and device.type != "cpu":
        parser.error("--profile measures CPU time; on a GPU use torch.profiler with CUDA activity")
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
    chosen = [(label, overrides) for label, overrides in OPTION_SETS if not args.only or label in args.only]
    print(f"| option | ms / step (median) | vs {chosen[0][0]} | first step (s) |\n|---|---:|---:|---:|")
    baseline = None
    for label, overrides in chosen:
        if "fp16" in label and device.type != "cuda":
            print(f"| {label} | n/a (needs CUDA) | | |")
            continue
        config = configs.apply_overrides(base, list(overrides))
        first, median = measure(config, (batches, data.num_classes), args.steps, args.warmup)
        baseline = baseline or median
        print(f"| {label} | {median * 1e3:.1f} | {median / baseline:.2f}x | {first:.1f} |", flush=True)
    if args.profile:
        print()
        print(profile_steps(base, (batches, data.num_classes), args.profile))


if __name__ == "__main__":
    main()
