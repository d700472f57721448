"""Train a detector (specs/training.md).

Usage::

    python -m detector.train --list
    python -m detector.train demo
    python -m detector.train atss_r50_1x data.train_images=... data.train_annotations=... \\
        data.val_images=... data.val_annotations=... backbone.weights=/path/resnet50.pth
    python -m detector.train --resume runs/demo-20250101-120000
    torchrun --nproc_per_node=8 -m detector.train dyn_atss_qfl_iou_r50_1x ...

A run directory holds ``config.json``, ``log.jsonl`` (one record per iteration),
``last.pth`` (the latest checkpoint, written atomically at the end of every epoch, on
interruption and at the end of an iteration schedule), ``epoch_XXX.pth`` (one per epoch) and ``metrics.json`` (final COCO AP).
"""
import argparse
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from detector import configs, engine, runtime
from detector.checkpoint import (
    LAST,
    load_checkpoint,
    remove_orphan_temporaries,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from detector.data.loaders import build_datasets, iterations_per_epoch, train_loader, val_loader
from detector.evaluation import write_metrics_json
from detector.modeling import Detector
from detector.paper_rows import PAPER_ROWS

LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
#: What started the run and with which code: one record per start or resume.
RUN_FILE = "run.json"
#: Set to 1 for tracebacks of user errors (as ``--debug``).
DEBUG_ENV = "LABELASSIGN_DEBUG"


class NonFiniteLossError(RuntimeError):
    """Raised after ``solver.max_bad_steps`` consecutive steps with a non-finite loss."""


#: Errors the command line reports as one ``error: ...`` line (exit status 2): bad data,
#: configuration, paths and checkpoints raise these with a message naming the culprit. Other
#: exceptions are bugs and keep their traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def default_run_dir(config):
    return Path(config.output_dir) / f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


@dataclass
class Run:
    """What a training run holds, built once by ``_setup``."""

    config: object
    run_dir: Path
    device: torch.device
    is_main: bool
    data: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    iters_per_epoch: int
    max_iterations: int
    scaler: object = None


@dataclass
class Position:
    """Where a run is: ``epoch`` (0-based) and ``batch`` in it, ``iteration`` overall, and
    the number of skipped (non-finite) steps so far. Checkpointed; resumed exactly."""

    epoch: int = 0
    batch: int = 0
    iteration: int = 0
    bad_total: int = 0


def train(config, run_dir=None, *, resume=False, progress=True, stop_after=None, evaluate_at_end=True,
          second_interrupt_aborts=True):
    """Train ``config`` in ``run_dir``; return the final metrics dict (or None).

    Args:
        config: a validated ``Config``.
        run_dir: output folder (default: ``output_dir/name-timestamp``).
        resume: continue from ``run_dir/last.pth`` (same config, same data order, same RNG).
        progress: show a tqdm progress bar (rank 0).
        stop_after: stop (as an interruption would: checkpoint, no evaluation) once this
            many iterations in total have run; for tests and time-boxed runs.
        evaluate_at_end: evaluate on the val split (``data.metric``) at the end of the schedule.
        second_interrupt_aborts: a second Ctrl-C / SIGTERM aborts at once (interactive use).
            False in a study's worker process, where one stop request can arrive twice (the
            terminal's Ctrl-C and the study's SIGTERM; the process pool's own termination of
            its workers): an abort there would cut the checkpoint being written.
    """
    run = _setup(config, run_dir)
    position = _resume(run) if resume else _start(run)
    if run.is_main:
        print(f"run directory: {run.run_dir}\nconfig: {config.name} ({config.description})\n"
              f"data: {_dataset_words(config)}\n"
              f"device: {run.device}, processes: {runtime.world_size()}, train images: {len(run.data.train)}, "
              f"iterations: {run.max_iterations} ({run.iters_per_epoch} per epoch, "
              f"{run.max_iterations / run.iters_per_epoch:.4g} epochs)", flush=True)
    if not _train_epochs(run, position, progress=progress, stop_after=stop_after,
                         second_interrupt_aborts=second_interrupt_aborts):
        return None
    return _final_evaluation(run) if evaluate_at_end else None


def _setup(config, run_dir):
    """Device, processes, threads, seeds, data, model, optimiser and schedule of a run."""
    device = runtime.select_device(config.device)
    runtime.check_amp(config.solver.amp, device)
    runtime.setup_distributed(device)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config)
    runtime.set_threads(config.threads)
    runtime.keep_freed_memory()
    runtime.seed_everything(config.seed + runtime.rank())
    data = build_datasets(config)
    model = runtime.wrap_model(Detector(config, data.num_classes).to(device), device)
    model = runtime.prepare_model(model, config.solver.channels_last, config.solver.compile)
    optimizer = engine.build_optimizer(config, model)
    iters_per_epoch = iterations_per_epoch(config, len(data.train))
    scheduler = engine.build_scheduler(config, optimizer, iters_per_epoch)
    return Run(config, run_dir, device, runtime.rank() == 0, data, model, optimizer, scheduler, iters_per_epoch,
               engine.schedule_length(config, iters_per_epoch), runtime.gradient_scaler(device, config.solver.amp))


def _start(run):
    """A new run: its directory, ``config.json`` and an empty log (rank 0)."""
    if run.is_main:
        run.run_dir.mkdir(parents=True, exist_ok=True)
        remove_orphan_temporaries(run.run_dir)
        (run.run_dir / "config.json").write_text(json.dumps(configs.to_dict(run.config), indent=2) + "\n")
        (run.run_dir / LOG_FILE).write_text("")
        _record_start(run.run_dir, "start", 0)
    return Position()


def _resume(run):
    """Load ``last.pth`` into the run (weights, optimiser, schedule, RNG states); drop the
    log records written after it; return its position."""
    path = run.run_dir / LAST
    state = load_checkpoint(path, map_location=run.device)
    if configs.from_dict(state["config"]) != run.config:
        raise ValueError(f"{path}: the checkpoint's config differs from the requested one; "
                         "resume with `python -m detector.train --resume RUN_DIR` only")
    runtime.unwrap_model(run.model).load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
    position = Position(state["epoch"], state["batch_in_epoch"], state["iteration"], state.get("bad_steps_total", 0))
    rank = runtime.rank()
    set_rng_states(state["rng"][rank] if rank < len(state["rng"]) else state["rng"][0])
    if run.is_main:
        orphans = remove_orphan_temporaries(run.run_dir)
        if orphans:
            print(f"removed {len(orphans)} temporary file(s) of an interrupted checkpoint save", flush=True)
        _truncate_log(run.run_dir / LOG_FILE, position.iteration)
        _record_start(run.run_dir, "resume", position.iteration)
        print(f"resuming {run.run_dir} at epoch {position.epoch + 1}, batch {position.batch}, "
              f"iteration {position.iteration}", flush=True)
    return position


def _train_epochs(run, position, *, progress, stop_after, second_interrupt_aborts):
    """The optimisation loop from ``position`` to the end of the schedule.

    Returns:
        True when the schedule ran to its end (``run.max_iterations``; with an iteration
        schedule the last epoch may end mid-way, and its position is checkpointed); False
        when it stopped early (an interruption or ``stop_after``), after writing a
        checkpoint of the position reached.
    """
    config = run.config
    interrupted = _InterruptFlag(second_aborts=second_interrupt_aborts)
    bar = _progress_bar(run.max_iterations, position.iteration, enabled=progress and run.is_main)
    throughput = engine.Throughput()
    consecutive_bad = 0
    run.model.train()
    log = open(run.run_dir / LOG_FILE, "a", encoding="utf-8") if run.is_main else None
    completed = Position(position.epoch, position.batch, position.iteration, position.bad_total)
    try:
        while position.iteration < run.max_iterations:
            loader = train_loader(config, run.data.train, epoch=position.epoch, start_batch=position.batch)
            stop = False
            tick = time.perf_counter()
            for batch in loader:
                data_time = time.perf_counter() - tick
                result = engine.train_step(run.model, batch, config, run.optimizer, run.device,
                                           iteration=position.iteration, max_iterations=run.max_iterations,
                                           scaler=run.scaler)
                lr = run.optimizer.param_groups[0]["lr"]
                with warnings.catch_warnings():  # a skipped step has no optimizer.step(); the schedule still advances
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                    run.scheduler.step()
                position.iteration += 1
                position.batch += 1
                elapsed = time.perf_counter() - tick
                throughput.update(len(batch.image_sizes) * runtime.world_size(), elapsed)
                consecutive_bad = consecutive_bad + 1 if result.skipped else 0
                position.bad_total += int(result.skipped)
                if log is not None and (position.iteration % config.log_every == 0 or result.skipped):
                    record = _log_record(position, result, lr, len(batch.image_sizes), elapsed, data_time, throughput.rate)
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(_postfix(result, lr, throughput.rate, len(batch.image_sizes), position.bad_total),
                                        refresh=False)
                if consecutive_bad >= config.solver.max_bad_steps:
                    raise NonFiniteLossError(
                        f"{consecutive_bad} consecutive steps had a non-finite loss or gradient (last at iteration "
                        f"{position.iteration}, terms {result.terms}); aborting. Lower solver.lr, set "
                        f"solver.grad_clip_norm, or check the data. The last good checkpoint is {run.run_dir / LAST}.")
                completed = Position(position.epoch, position.batch, position.iteration, position.bad_total)
                stop = interrupted.flag or (stop_after is not None and position.iteration >= stop_after)
                finished = position.iteration >= run.max_iterations
                if (stop or finished) and position.batch < run.iters_per_epoch:
                    break
                tick = time.perf_counter()
            else:  # the epoch is complete
                position.epoch, position.batch = position.epoch + 1, 0
                _save(run, position, per_epoch=True)
                completed = Position(position.epoch, position.batch, position.iteration, position.bad_total)
                if not stop or position.iteration >= run.max_iterations:
                    continue
            if position.batch < run.iters_per_epoch:  # ended mid-epoch: checkpoint the position in the epoch
                _save(run, position)
            if position.iteration >= run.max_iterations:  # an iteration schedule ended inside its last epoch
                break
            if bar is not None:
                bar.close()
            if run.is_main:
                print(f"stopped at iteration {position.iteration}; checkpoint {run.run_dir / LAST}; "
                      f"continue with: python -m detector.train --resume {run.run_dir}", flush=True)
            return False
    except (KeyboardInterrupt, NonFiniteLossError):
        raise  # a second Ctrl-C aborts at once; the non-finite guard keeps the last good checkpoint
    except Exception:
        _save_after_failure(run, completed)
        raise
    finally:
        if log is not None:
            log.close()
        interrupted.restore()
    if bar is not None:
        bar.close()
    return True


def _save_after_failure(run, completed):
    """An exception escaped the loop: checkpoint the last completed step so that ``--resume``
    continues from it (single process: with several, the other processes are not in step)."""
    if runtime.world_size() > 1 or not run.is_main:
        return
    if completed.batch == 0 and (run.run_dir / LAST).is_file():
        state = load_checkpoint(run.run_dir / LAST)
        if state["iteration"] == completed.iteration:  # the epoch-end checkpoint is already this position
            print(f"the last completed step (iteration {completed.iteration}) is in {run.run_dir / LAST}; "
                  f"continue with: python -m detector.train --resume {run.run_dir}", file=sys.stderr, flush=True)
            return
    _save(run, completed)
    print(f"saved the last completed step (iteration {completed.iteration}) to {run.run_dir / LAST}; "
          f"continue with: python -m detector.train --resume {run.run_dir}", file=sys.stderr, flush=True)


def _record_start(run_dir, event, iteration):
    """Append what started this part of the run to ``run.json``: the command, the code
    version (package version, git commit when the code is a git checkout) and the time."""
    path = run_dir / RUN_FILE
    records = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
    records.append({"event": event, "iteration": iteration, "command": [sys.executable, *sys.argv],
                    "time": time.strftime("%Y-%m-%d %H:%M:%S"), **code_version()})
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")


def code_version():
    """{"version": package version, "git_commit": commit or None, "git_dirty": bool or None}."""
    import subprocess
    from importlib import metadata

    try:
        version = metadata.version("labelassign")
    except metadata.PackageNotFoundError:
        version = None
    root = Path(__file__).resolve().parents[1]
    commit = dirty = None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip() or None
        if commit:
            status = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout
            dirty = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"version": version, "git_commit": commit, "git_dirty": dirty}


def _dataset_words(config):
    data = config.data
    if data.dataset == "digits":
        seed = config.seed if data.seed is None else data.seed
        return (f"the built-in digits ({data.digits_num_train} train / {data.digits_num_val} val images of "
                f"{data.digits_image_size} px, data seed {seed}{', one category' if data.digits_single_class else ''})")
    return f"COCO-format files: {data.train_annotations} (train), {data.val_annotations} (val)"


def _log_record(position, result, lr, batch_size, elapsed, data_time, images_per_s):
    """One ``log.jsonl`` record (non-finite floats as null)."""
    record = {"iteration": position.iteration, "epoch": position.epoch + 1, "lr": lr, **result.terms,
              "box_loss_pos": result.box_loss_pos, "num_pos": result.num_pos,
              "num_pos_per_image": result.num_pos / max(1, batch_size),
              "grad_norm": result.grad_norm, "skipped": result.skipped, "bad_steps_total": position.bad_total,
              "time": elapsed, "data_time": data_time, "images_per_s": images_per_s, **result.diagnostics}
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def _final_evaluation(run):
    """Metrics of the trained model on the val split (``data.metric``: COCO AP, or the VOC
    mAP first and then the COCO metrics and the per-class APs); written to ``metrics.json``."""
    loader = val_loader(run.config, run.data.val)
    if run.is_main:
        print(f"evaluating on {len(run.data.val)} val images ...", flush=True)
    metrics = engine.evaluate(run.model, loader, run.device, run.data.val_annotations, run.data.category_ids,
                              verbose=run.is_main, metric=run.config.data.metric)
    if run.is_main:
        write_metrics_json(metrics, run.run_dir / METRICS_FILE)
        print(format_metrics(metrics))
        print(f"metrics written to {run.run_dir / METRICS_FILE}", flush=True)
    return metrics


def format_metrics(metrics):
    """One line: AP, AP50, AP75, APs, APm, APl (after the VOC ``mAP`` when there is one) as
    fractions with three decimals, the units of the pycocotools table printed above it;
    nested entries (``per_class_AP``) are left out."""
    return "  ".join(f"{k} {'  n/a' if v is None or math.isnan(v) else f'{v:.3f}'}" for k, v in metrics.items()
                     if not isinstance(v, dict))


def _save(run, position, per_epoch=False):
    """Checkpoint (atomic) on rank 0 with every process's RNG states."""
    states = [rng_states()]
    if runtime.world_size() > 1:
        gathered = [None] * runtime.world_size()
        dist.all_gather_object(gathered, states[0])
        states = gathered
    if not run.is_main:
        return
    module = runtime.unwrap_model(run.model)
    state = {
        "model": module.state_dict(), "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
        "epoch": position.epoch, "batch_in_epoch": position.batch, "iteration": position.iteration,
        "bad_steps_total": position.bad_total, "config": configs.to_dict(run.config), "rng": states,
        "num_classes": module.num_classes, "category_ids": list(run.data.category_ids),
        "category_names": list(run.data.category_names),
    }
    if run.scaler is not None:
        state["scaler"] = run.scaler.state_dict()
    save_checkpoint(state, run.run_dir / LAST)
    if per_epoch:
        save_checkpoint(state, run.run_dir / f"epoch_{position.epoch:03d}.pth")


def _truncate_log(path, iteration):
    """Drop log records after ``iteration`` (written after the checkpoint we resume from)."""
    if not path.is_file():
        return
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["iteration"] <= iteration]
    path.write_text("".join(line + "\n" for line in kept))


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
    """First Ctrl-C / SIGTERM: finish the step, checkpoint, exit. A second one aborts (with
    ``second_aborts``; otherwise it is ignored)."""

    def __init__(self, second_aborts=True):
        self.flag = False
        self.second_aborts = second_aborts
        self._previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not in the main thread
            self._previous = {}

    def _handle(self, signum, frame):
        if self.flag:
            if self.second_aborts:
                raise KeyboardInterrupt
            return
        self.flag = True
        again = " (interrupt again to abort)" if self.second_aborts else ""
        print(f"\ninterrupt: finishing this step and writing a checkpoint{again}", file=sys.stderr)

    def restore(self):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _check_data_command(config, *, progress):
    """``--check-data``: every problem of the config's data at once; exit status 2 if any."""
    from detector.data.loaders import check_data

    try:
        problems, summaries = check_data(config, progress=progress)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for split, summary in summaries.items():
        if summary:
            print(f"{split}: {summary['images']} images, {summary['annotations']} annotations, "
                  f"{summary['categories']} categories, {summary['degenerate_annotations']} degenerate boxes (dropped "
                  "at loading)")
    if problems:
        for problem in problems:
            print(f"error: {problem}", file=sys.stderr)
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        sys.exit(2)
    print("no problems found")
    return summaries


def list_configs():
    """The text printed by ``--list``: every config, then both papers' tables row by row
    with the configs that reproduce each row (``detector.paper_rows``)."""
    width = max(len(name) for name in configs.CONFIGS)
    lines = [f"{'name':<{width}}  description  [reproduces]"]
    for name, config in configs.CONFIGS.items():
        lines.append(f"{name:<{width}}  {config.description}  [{config.reproduces}]")
    lines += ["", "paper tables, row by row (paper's number; configs, or why there is none yet):"]
    current = None
    for row in PAPER_ROWS:
        if (row.paper, row.table) != current:
            current = (row.paper, row.table)
            lines.append(f"{row.paper} {row.table}")
        lines.append(f"  {row.row} ({row.reported}): {', '.join(row.configs) if row.configs else 'none, ' + row.pending}")
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
    parser.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--stop-after", type=int, default=None, metavar="N",
                        help="stop after N iterations in total, with a checkpoint (continue with --resume)")
    parser.add_argument("--check-data", action="store_true",
                        help="check every annotation and decode every image of the config's splits, report all "
                             "problems, and exit (status 2 when there are problems)")
    parser.add_argument("--debug", action="store_true",
                        help=f"show the traceback of data and configuration errors (or set {DEBUG_ENV}=1)")
    args = parser.parse_intermixed_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
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
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.check_data:
        return _check_data_command(config, progress=not args.no_progress)
    try:
        return train(config, run_dir, resume=args.resume is not None, progress=not args.no_progress,
                     stop_after=args.stop_after, evaluate_at_end=not args.no_eval)
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except USER_ERRORS as error:
        if debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        runtime.teardown_distributed()


if __name__ == "__main__":
    main()
