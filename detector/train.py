"""Train a detector (specs/training.md).

Usage::

    python -m detector.train --list
    python -m detector.train demo
    python -m detector.train atss_r50_1x data.train_images=... data.train_annotations=... \\
        data.val_images=... data.val_annotations=... backbone.weights=/path/resnet50.pth
    python -m detector.train --resume runs/demo-20250101-120000
    torchrun --nproc_per_node=8 -m detector.train dyn_atss_qfl_iou_r50_1x ...

A run directory holds ``config.json``, ``log.jsonl`` (one record per iteration),
``last.pth`` (the latest checkpoint, written atomically at the end of every epoch and on
interruption), ``epoch_XXX.pth`` (one per epoch) and ``metrics.json`` (final COCO AP).
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from detector import configs, engine
from detector.checkpoint import LAST, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from detector.evaluation import write_metrics_json
from detector.modeling import Detector

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"


class NonFiniteLossError(RuntimeError):
    """Raised after ``solver.max_bad_steps`` consecutive steps with a non-finite loss."""


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(config):
    if config.device != "auto":
        return torch.device(config.device)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def setup_distributed(device):
    """Initialise torch.distributed under torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")


def default_run_dir(config):
    return Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(config, run_dir=None, *, resume=False, progress=True, stop_after=None, evaluate_at_end=True):
    """Train ``config`` in ``run_dir``; return the final metrics dict (or None).

    Args:
        config: a validated ``Config``.
        run_dir: output folder (default: ``output_dir/name-timestamp``).
        resume: continue from ``run_dir/last.pth`` (same config, same data order, same RNG).
        progress: show a tqdm progress bar (rank 0).
        stop_after: stop (as an interruption would: checkpoint, no evaluation) once this
            many iterations in total have run; for tests and time-boxed runs.
        evaluate_at_end: run the COCO evaluation on the val split after the last epoch.
    """
    device = select_device(config)
    setup_distributed(device)
    is_main = engine.rank() == 0
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    torch.set_num_threads(config.threads if config.threads > 0 else max(1, os.cpu_count() or 1))
    seed_everything(config.seed + engine.rank())

    data = engine.build_datasets(config)
    model = Detector(config, data.num_classes).to(device)
    if engine.world_size() > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = engine.build_optimizer(config, model)
    iters_per_epoch = engine.iterations_per_epoch(config, len(data.train))
    max_iterations = iters_per_epoch * config.solver.epochs
    scheduler = engine.build_scheduler(config, optimizer, iters_per_epoch)

    epoch, start_batch, iteration, bad_total = 0, 0, 0, 0
    if resume:
        state = load_checkpoint(run_dir / LAST, map_location=device)
        saved = configs.from_dict(state["config"])
        if saved != config:
            raise ValueError(f"{run_dir / LAST}: the checkpoint's config differs from the requested one; "
                             "resume with `python -m detector.train --resume RUN_DIR` only")
        _module(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, start_batch, iteration = state["epoch"], state["batch_in_epoch"], state["iteration"]
        bad_total = state.get("bad_steps_total", 0)
        set_rng_states(state["rng"][engine.rank()] if engine.rank() < len(state["rng"]) else state["rng"][0])
        if is_main:
            _truncate_log(run_dir / LOG_FILE, iteration)
            print(f"resuming {run_dir} at epoch {epoch + 1}, batch {start_batch}, iteration {iteration}", flush=True)
    elif is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(configs.to_dict(config), indent=2) + "\n")
        (run_dir / LOG_FILE).write_text("")
    if is_main:
        print(f"run directory: {run_dir}\nconfig: {config.name} ({config.description})\n"
              f"device: {device}, processes: {engine.world_size()}, train images: {len(data.train)}, "
              f"iterations: {max_iterations} ({iters_per_epoch} per epoch)", flush=True)

    interrupted = _InterruptFlag()
    bar = _progress_bar(max_iterations, iteration, enabled=progress and is_main)
    throughput = engine.Throughput()
    consecutive_bad = 0
    model.train()
    log = open(run_dir / LOG_FILE, "a", encoding="utf-8") if is_main else None
    try:
        while epoch < config.solver.epochs:
            loader = engine.train_loader(config, data.train, epoch=epoch, start_batch=start_batch)
            batch_in_epoch = start_batch
            stop = False
            tick = time.perf_counter()
            for batch in loader:
                data_time = time.perf_counter() - tick
                result = engine.train_step(model, batch, config, optimizer, device,
                                           iteration=iteration, max_iterations=max_iterations)
                lr = optimizer.param_groups[0]["lr"]
                with warnings.catch_warnings():  # a skipped step has no optimizer.step(); the schedule still advances
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    scheduler.step()
                iteration += 1
                batch_in_epoch += 1
                elapsed = time.perf_counter() - tick
                images = len(batch.image_sizes) * engine.world_size()
                throughput.update(images, elapsed)
                if result.skipped:
                    consecutive_bad += 1
                    bad_total += 1
                else:
                    consecutive_bad = 0
                if log is not None and (iteration % config.log_every == 0 or result.skipped):
                    record = {"iteration": iteration, "epoch": epoch + 1, "lr": lr, **result.terms,
                              "box_loss_pos": result.box_loss_pos, "num_pos": result.num_pos,
                              "num_pos_per_image": result.num_pos / max(1, len(batch.image_sizes)),
                              "grad_norm": result.grad_norm, "skipped": result.skipped, "bad_steps_total": bad_total,
                              "time": elapsed, "data_time": data_time, "images_per_s": throughput.rate}
                    log.write(json.dumps(_json_safe(record)) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_postfix(result, lr, throughput.rate, len(batch.image_sizes), bad_total), refresh=False)
                if consecutive_bad >= config.solver.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last at iteration "
                        f"{iteration}, terms {result.terms}); aborting. Lower solver.lr, set solver.grad_clip_norm, "
                        f"or check the data. The last good checkpoint is {run_dir / LAST}.")
                stop = interrupted.flag or (stop_after is not None and iteration >= stop_after)
                if stop and batch_in_epoch < iters_per_epoch:
                    break
                tick = time.perf_counter()
            else:  # the epoch is complete
                epoch, start_batch = epoch + 1, 0
                _save(run_dir, model, optimizer, scheduler, config, epoch, 0, iteration, bad_total, is_main, per_epoch=True)
                if not stop or epoch >= config.solver.epochs:
                    continue
            if batch_in_epoch < iters_per_epoch:  # stopped mid-epoch: checkpoint the position in the epoch
                _save(run_dir, model, optimizer, scheduler, config, epoch, batch_in_epoch, iteration, bad_total, is_main)
            if bar is not None:
                bar.close()
            if is_main:
                print(f"stopped at iteration {iteration}; checkpoint {run_dir / LAST}; "
                      f"continue with: python -m detector.train --resume {run_dir}", flush=True)
            return None
    finally:
        if log is not None:
            log.close()
        interrupted.restore()
    if bar is not None:
        bar.close()

    metrics = None
    if evaluate_at_end:
        loader = engine.val_loader(config, data.val)
        if is_main:
            print(f"evaluating on {len(data.val)} val images ...", flush=True)
        metrics = engine.evaluate(model, loader, config, device, data.val_annotations, data.category_ids, verbose=is_main)
        if is_main:
            write_metrics_json(metrics, run_dir / METRICS_FILE)
            print(format_metrics(metrics))
            print(f"metrics written to {run_dir / METRICS_FILE}", flush=True)
    return metrics


def format_metrics(metrics):
    """One line: AP, AP50, AP75, APs, APm, APl in percent."""
    return "  ".join(f"{k} {'  n/a' if v is None or math.isnan(v) else f'{100 * v:5.2f}'}" for k, v in metrics.items())


def _module(model):
    return model.module if hasattr(model, "module") else model


def _save(run_dir, model, optimizer, scheduler, config, epoch, batch_in_epoch, iteration, bad_total, is_main, per_epoch=False):
    """Checkpoint (atomic) on rank 0 with every process's RNG states."""
    states = [rng_states()]
    if engine.world_size() > 1:
        gathered = [None] * engine.world_size()
        dist.all_gather_object(gathered, states[0])
        states = gathered
    if not is_main:
        return
    state = {
        "model": _module(model).state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
        "epoch": epoch, "batch_in_epoch": batch_in_epoch, "iteration": iteration, "bad_steps_total": bad_total,
        "config": configs.to_dict(config), "rng": states, "num_classes": _module(model).num_classes,
    }
    save_checkpoint(state, run_dir / LAST)
    if per_epoch:
        save_checkpoint(state, run_dir / f"epoch_{epoch:03d}.pth")


def _truncate_log(path, iteration):
    """Drop log records after ``iteration`` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


def _json_safe(record):
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _postfix(result, lr, rate, batch_size, bad_total):
    terms = result.terms
    parts = [f"loss {terms['loss']:.3f}", f"cls {terms['loss_cls']:.3f}", f"box {terms['loss_box']:.3f}"]
    if "loss_quality" in terms:
        parts.append(f"q {terms['loss_quality']:.3f}")
    parts += [f"lr {lr:.2e}", f"pos/img {result.num_pos / max(1, batch_size):.1f}", f"{rate:.1f} img/s"]
    if bad_total:
        parts.append(f"skipped {bad_total}")
    return " ".join(parts)


def _progress_bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="it", dynamic_ncols=True, mininterval=0.5)


class _InterruptFlag:
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. A second one aborts."""

    def __init__(self):
        self.flag = False
        self._previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread
            self._previous = {}

    def _handle(self, signum, frame):
        if self.flag:
            raise KeyboardInterrupt
        self.flag = True
        print("\ninterrupt: finishing this step and writing a checkpoint (interrupt again to abort)", file=sys.stderr)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def list_configs():
    """The table printed by ``--list``."""
    width = max(len(name) for name in configs.CONFIGS)
    lines = [f"{'name':<{width}}  description  [reproduces]"]
    for name, config in configs.CONFIGS.items():
        lines.append(f"{name:<{width}}  {config.description}  [{config.reproduces}]")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m detector.train",
        description="Train a dense detector. Overrides are key.sub=value, e.g. solver.lr=0.02 data.num_workers=4.",
    )
    parser.add_argument("config", nargs="?", help="configuration name (see --list)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides, type-checked against the config")
    parser.add_argument("--list", action="store_true", help="list the configurations and exit")
    parser.add_argument("--run-dir", type=Path, default=None, help="output folder (default: output_dir/NAME-TIMESTAMP)")
    parser.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("--no-eval", action="store_true", help="skip the final COCO evaluation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N iterations in total, with a checkpoint (continue with --resume)")
    args = parser.parse_intermixed_args(argv)
    if args.list:
        print(list_configs())
        return None
    try:
        if args.resume is not None:
            if args.config or args.overrides:
                parser.error("--resume RUN_DIR takes the config from the checkpoint; give no config name or overrides")
            config = configs.from_dict(load_checkpoint(args.resume / LAST)["config"])
            run_dir = args.resume
        else:
            if not args.config:
                parser.error("a configuration name is required (see --list)")
            config = configs.get_config(args.config, args.overrides)
            run_dir = args.run_dir
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    try:
        return train(config, run_dir, resume=args.resume is not None, progress=not args.no_progress,
                     stop_after=args.stop_after, evaluate_at_end=not args.no_eval)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
