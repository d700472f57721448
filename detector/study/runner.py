"""Running the (arm, seed) jobs of a study, and keeping their small results (specs/study.md §3).

Every (arm, training seed, data seed) is one ordinary training run
(``detector.train.train``) in its own run directory ``RUNS/<key>`` (checkpoints, full
log), where ``key`` is a hash of the resolved config: two studies that need the same run
share it. When a run finishes, its small result (config, metrics, down-sampled curves,
wall time, machine) is written atomically to ``RESULTS/runs/<key>.json``; that folder is
meant to be committed, so that a study can be aggregated, and continued, on any machine.

A run whose result file exists is skipped; a run with a checkpoint continues from it
(``--resume``), so an interrupted study resumes where it stopped.

Executors:
- ``local`` (default): ``--jobs N`` worker processes on this machine, each with its own
  torch thread count; with GPUs, one GPU per worker (``CUDA_VISIBLE_DEVICES``).
- ``slurm``: one Slurm job per run through submitit (partition, time, GPUs as options).
- ``submitit-local`` / ``submitit-debug``: submitit's own local and in-process executors,
  the same code path as ``slurm`` without a cluster.
"""
import contextlib
import hashlib
import json
import math
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from detector.files import write_json_atomically

EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")
WORKER_STOP_SECONDS = 120  # how long a stopping study waits for a worker's step and checkpoint
#: Fields of a config that do not change its result (left out of the run key).
VOLATILE_FIELDS = {"name", "description", "reproduces", "device", "threads", "output_dir", "log_every", "eval_batch_size"}
VOLATILE_DATA_FIELDS = {"root", "num_workers", "cache_images"}
#: A run's curves keep at most this many points (window means of the per-iteration log).
CURVE_POINTS = 100
#: Logged keys kept in the curves of a run result.
CURVE_KEYS = ("loss", "loss_cls", "loss_box", "loss_quality", "box_loss_pos", "num_pos_per_image",
              "gts_without_pos_per_image", "mean_prior_iou_pos", "mean_pred_iou_pos", "jaccard_vs_atss", "lr")


@dataclass(frozen=True)
class RunSpec:
    """One (arm, seed, data seed) of a study."""

    study: str
    arm: str
    config_name: str
    overrides: tuple
    seed: int
    data_seed: int

    def config(self):
        from detector.configs import get_config

        return get_config(self.config_name, list(self.overrides) + [f"seed={self.seed}", f"data.seed={self.data_seed}"])


def run_specs(study):
    """Every ``RunSpec`` of a study, arm by arm, then seed, then data seed."""
    return [RunSpec(study.name, arm.name, arm.config, tuple(study.overrides) + tuple(arm.overrides), seed, data_seed)
            for arm in study.arms for seed in study.seeds for data_seed in study.data_seeds]


def run_key(config):
    """16 hex digits identifying what a config computes.

    The hash covers the fields whose value differs from their dataclass default (with the
    assigner's name always included), ``VOLATILE_FIELDS`` left out: a field added later with
    a default leaves every existing key, and so every stored result, valid; changing a
    default changes the keys of the configs that rely on it, as it should.
    """
    data = _non_default_fields(config)
    for name in VOLATILE_FIELDS:
        data.pop(name, None)
    for name in VOLATILE_DATA_FIELDS:
        data.get("data", {}).pop(name, None)
    data.setdefault("assign", {})["name"] = config.assign.name
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def _non_default_fields(node):
    """{field: value} of a config dataclass, nested, keeping only values that differ from the
    field's default (a nested section compared with its own class's defaults)."""
    import dataclasses

    out = {}
    for field in dataclasses.fields(node):
        value = getattr(node, field.name)
        if dataclasses.is_dataclass(value):
            sub = _non_default_fields(value)
            if sub:
                out[field.name] = sub
            continue
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if value != default:
            out[field.name] = to_dict_value(value)
    return out


def to_dict_value(value):
    """A config value as JSON-safe data (tuples as lists, infinities as strings), as ``configs.to_dict``."""
    if isinstance(value, tuple):
        return [to_dict_value(v) for v in value]
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


def result_path(results_dir, key):
    return Path(results_dir) / "runs" / f"{key}.json"


def load_result(results_dir, key):
    """The stored result of a run, or None."""
    path = result_path(results_dir, key)
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


class RunInterrupted(KeyboardInterrupt):
    """A run's training was interrupted (it wrote its checkpoint): the study stops too,
    instead of counting the run as failed and starting the next one."""


def execute_run(spec, runs_dir, results_dir, threads=1, *, in_worker=False):
    """Train one run (continuing from its checkpoint if it has one) and store its result.

    Runs in a worker process or a Slurm job: prints go to ``RUNS/<key>/train.log``. In a
    local worker (``in_worker``) a repeated stop signal does not abort the training: the
    study's parent asks once, but the pool and the terminal may repeat the request, and an
    abort would cut the checkpoint that the first request is writing.

    Returns:
        the path of the result file.
    """
    from detector import configs
    from detector.train import LOG_FILE, METRICS_FILE, train

    config = spec.config()
    key = run_key(config)
    out = result_path(results_dir, key)
    if out.is_file():
        return out
    config = configs.apply_overrides(config, [f"threads={threads}", "data.num_workers=0"])
    run_dir = Path(runs_dir) / key
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(run_dir / "train.log", "a", encoding="utf-8") as log, contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        if not (run_dir / METRICS_FILE).is_file():
            metrics = train(config, run_dir, resume=(run_dir / "last.pth").is_file(), progress=False,
                            second_interrupt_aborts=not in_worker)
            if metrics is None:  # SIGTERM / Ctrl-C reached the training: it checkpointed and stopped
                raise RunInterrupted(f"run {key} was interrupted; its checkpoint is {run_dir / 'last.pth'}")
    metrics = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    result = {
        "key": key, "study": spec.study, "arm": spec.arm, "config_name": spec.config_name,
        "overrides": list(spec.overrides), "seed": spec.seed, "data_seed": spec.data_seed,
        "metrics": metrics, "curves": curves_of_log(run_dir / LOG_FILE),
        "config": configs.to_dict(config), "wall_seconds": round(time.time() - started, 1),
        "machine": machine_description(threads), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json_atomically(result, out, indent=1, sort_keys=True)
    return out


def curves_of_log(path, keys=CURVE_KEYS, points=CURVE_POINTS):
    """Window means of a run's ``log.jsonl``: {"iteration": [...], key: [...]} with at most
    ``points`` windows of equal length (skipped steps and missing values left out; a window
    without a value gives None)."""
    records = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    records = [r for r in records if not r.get("skipped", False)]
    if not records:
        return {"iteration": []}
    window = max(1, math.ceil(len(records) / points))
    curves = {"iteration": []}
    present = [k for k in keys if any(isinstance(r.get(k), (int, float)) for r in records)]
    for key in present:
        curves[key] = []
    for start in range(0, len(records), window):
        chunk = records[start:start + window]
        curves["iteration"].append(chunk[-1]["iteration"])
        for key in present:
            values = [r[key] for r in chunk if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            curves[key].append(round(sum(values) / len(values), 6) if values else None)
    return curves


def machine_description(threads):
    return {"host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "threads": threads, "python": platform.python_version()}


def run_pending(specs, *, runs_dir, results_dir, executor="local", jobs=1, threads=1, slurm=None, progress=True):
    """Run every spec without a stored result; return ``(done, failed)`` lists of
    ``(spec, result path or error text)``."""
    if executor not in EXECUTORS:
        raise ValueError(f"--executor: expected one of {', '.join(EXECUTORS)}, got {executor!r}")
    pending, done = [], []
    for spec in specs:
        key = run_key(spec.config())
        if result_path(results_dir, key).is_file():
            done.append((spec, result_path(results_dir, key)))
        else:
            pending.append(spec)
    bar = _bar(len(specs), len(done), progress)
    failed = []
    try:
        if executor == "local":
            finished = _run_local(pending, runs_dir, results_dir, jobs, threads, bar)
        else:
            finished = _run_submitit(pending, runs_dir, results_dir, executor, threads, slurm or {}, bar)
    finally:
        if bar is not None:
            bar.close()
    for spec, outcome, ok in finished:
        (done if ok else failed).append((spec, outcome))
    return done, failed


def _run_local(pending, runs_dir, results_dir, jobs, threads, bar):
    finished = []
    if not pending:
        return finished
    if jobs <= 1:
        for spec in pending:
            finished.append(_attempt(execute_run, spec, runs_dir, results_dir, threads))
            _tick(bar, finished)
        return finished
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    devices = context.Queue()
    for device in _gpu_ids(jobs):
        devices.put(device)
    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_init_worker, initargs=(devices, threads))
    try:
        futures = {pool.submit(_worker_run, spec, runs_dir, results_dir, threads): spec for spec in pending}
        for future in as_completed(futures):
            spec = futures[future]
            try:
                finished.append((spec, future.result(), True))
            except Exception as error:  # a failed run must not stop the others
                finished.append((spec, f"{type(error).__name__}: {error}", False))
            _tick(bar, finished)
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM): stop the workers too, never leave them running. SIGTERM
        # makes each running training finish its step and write its checkpoint (train's
        # interrupt handler), so the next start of the study continues from there.
        workers = list((getattr(pool, "_processes", None) or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(timeout=WORKER_STOP_SECONDS)
        for process in workers:
            if process.is_alive():  # never leave a worker training after the study has stopped
                print(f"a worker did not stop within {WORKER_STOP_SECONDS} s; killed it (its run resumes from its "
                      "last checkpoint)", file=sys.stderr)
                process.kill()
                process.join()
        raise
    pool.shutdown(wait=True)
    return finished


def _run_submitit(pending, runs_dir, results_dir, executor, threads, slurm, bar):
    import submitit

    cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[executor]
    pool = submitit.AutoExecutor(folder=str(Path(runs_dir) / "submitit" / "%j"), cluster=cluster)
    parameters = {"timeout_min": int(slurm.get("time", 60)), "cpus_per_task": threads, "name": "labelassign-study"}
    if cluster == "slurm":
        parameters.update({"slurm_partition": slurm.get("partition")} if slurm.get("partition") else {})
        parameters.update({"gpus_per_node": int(slurm["gpus"])} if slurm.get("gpus") else {})
    pool.update_parameters(**parameters)
    finished = []
    jobs = [(spec, pool.submit(execute_run, spec, str(runs_dir), str(results_dir), threads)) for spec in pending]
    remaining = list(jobs)
    while remaining:
        still = []
        for spec, job in remaining:
            if job.done():
                try:
                    finished.append((spec, job.result(), True))
                except Exception as error:
                    finished.append((spec, f"{type(error).__name__}: {error}", False))
                _tick(bar, finished)
            else:
                still.append((spec, job))
        remaining = still
        if remaining:
            time.sleep(5)
    return finished


def _attempt(function, spec, *args):
    try:
        return spec, function(spec, *args), True
    except Exception as error:
        return spec, f"{type(error).__name__}: {error}", False


def _worker_run(spec, runs_dir, results_dir, threads):
    """``execute_run`` in a pool worker. An interrupted run ends the worker process: a pool
    worker would otherwise take the next queued run (the pool hands each worker one run
    ahead), and the study would go on training after it was told to stop."""
    try:
        return execute_run(spec, runs_dir, results_dir, threads, in_worker=True)
    except KeyboardInterrupt:  # RunInterrupted, or a stop signal outside the training loop
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)


def _init_worker(devices, threads):
    """Worker start-up: one GPU per worker (if any), the thread count of a job."""
    try:
        device = devices.get_nowait()
    except Exception:
        device = None
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(device)
    os.environ["OMP_NUM_THREADS"] = str(threads)


def _gpu_ids(jobs):
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip()]
    else:
        try:
            import torch

            ids = list(range(torch.cuda.device_count()))
        except ImportError:
            ids = []
    return ids[:jobs]


def _bar(total, initial, enabled):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="study runs", unit="run", dynamic_ncols=True)


def _tick(bar, finished):
    if bar is not None:
        spec, outcome, ok = finished[-1]
        bar.update(1)
        bar.set_postfix_str(f"last: {spec.arm} seed {spec.seed}{'' if ok else ' FAILED'}", refresh=True)


