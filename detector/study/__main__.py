"""``python -m detector.study``: run and aggregate a study (specs/study.md).

Usage::

    python -m detector.study --list
    python -m detector.study dyn_atss_table1 --jobs 2
    python -m detector.study my_study.toml --seeds 0-9 --jobs 4
    python -m detector.study piou_table1a --aggregate            # tables and plots from stored results only
    python -m detector.study fig3 --executor slurm --slurm-partition gpu --slurm-time 120 --slurm-gpus 1
    python -m detector.study --name topk --baseline k9 \
        --arm k9 study_atss --arm k15 study_atss assign.topk=15 --seeds 0-4 --jobs 2
"""
import argparse
import signal
import sys
from pathlib import Path

from detector.study.definitions import BUILTIN_STUDIES, resolve_study, study_from_dict, with_options
from detector.study.runner import EXECUTORS, run_key, run_pending, run_specs

#: Default folder of the small results (meant to be committed) and of the run directories.
DEFAULT_RESULTS = Path("results")
DEFAULT_RUNS = Path("runs") / "studies"


def parse_seeds(text):
    """"0-4" -> (0, 1, 2, 3, 4); "0,2,5" -> (0, 2, 5)."""
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if "-" in part:
            first, last = part.split("-", 1)
            seeds += list(range(int(first), int(last) + 1))
        elif part:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds):
        raise ValueError(f"expected seeds like 0-4 or 0,2,5, got {text!r}")
    return tuple(seeds)


def command_line_study(name, baseline, arms):
    """A study from ``--name``, ``--baseline`` and ``--arm NAME CONFIG [KEY=VALUE ...]`` options."""
    if not name or not baseline:
        raise ValueError("a study defined with --arm needs --name and --baseline")
    definitions = []
    for values in arms:
        if len(values) < 2:
            raise ValueError(f"--arm {' '.join(values)}: expected NAME CONFIG [KEY=VALUE ...]")
        definitions.append({"name": values[0], "config": values[1], "overrides": list(values[2:])})
    return study_from_dict({"name": name, "baseline": baseline, "arms": definitions}, where="command line")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m detector.study",
                                     description="Run a study (arms x seeds) and report it with 95 % confidence intervals.")
    parser.add_argument("study", nargs="?", help="a built-in study (see --list) or a .toml/.yaml study file")
    parser.add_argument("--list", action="store_true", help="list the built-in studies and exit")
    parser.add_argument("--arm", nargs="+", action="append", default=None, metavar="NAME CONFIG [KEY=VALUE ...]",
                        help="define a study on the command line: one --arm per arm (with --name and --baseline)")
    parser.add_argument("--name", default=None, help="name of a command-line study")
    parser.add_argument("--baseline", default=None, help="baseline arm of a command-line study")
    parser.add_argument("--seeds", default=None, help="training seeds, e.g. 0-4 or 0,2,5 (default: the study's)")
    parser.add_argument("--data-seeds", default=None, help="data seeds of the built-in dataset (default: the study's, 0)")
    parser.add_argument("--arms", nargs="+", default=None, help="run only these arms (the baseline is always kept)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every arm")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (local executor)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each run")
    parser.add_argument("--executor", default="local", choices=EXECUTORS)
    parser.add_argument("--slurm-partition", default=None)
    parser.add_argument("--slurm-time", type=int, default=60, help="minutes per run (Slurm and submitit executors)")
    parser.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run (Slurm)")
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="folder of the small per-run results and reports")
    parser.add_argument("--runs", type=Path, default=DEFAULT_RUNS, help="folder of the run directories (checkpoints, logs)")
    parser.add_argument("--aggregate", action="store_true", help="only aggregate the stored results (run nothing)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their keys, run nothing")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def _terminate_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.list:
        width = max(len(n) for n in BUILTIN_STUDIES)
        for name, study in BUILTIN_STUDIES.items():
            print(f"{name:<{width}}  {len(study.arms)} arms x {len(study.seeds)} seeds  {study.description}")
        return 0
    if not args.study and not args.arm:
        print("error: a study name or file, or --arm definitions, is required (see --list)", file=sys.stderr)
        return 2
    try:
        if args.jobs < 1 or args.threads < 1:
            raise ValueError("--jobs and --threads: expected ints >= 1")
        if args.arm and args.study:
            raise ValueError("give either a study (name or file) or --arm definitions, not both")
        study = with_options(
            resolve_study(args.study) if args.study else command_line_study(args.name, args.baseline, args.arm),
            seeds=parse_seeds(args.seeds) if args.seeds else None,
            data_seeds=parse_seeds(args.data_seeds) if args.data_seeds else None,
            overrides=tuple(args.set), arms=args.arms,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from detector.study.report import write_report

    specs = run_specs(study)
    if args.dry_run:
        for spec in specs:
            print(f"{run_key(spec.config())}  {spec.arm}  seed {spec.seed}  data seed {spec.data_seed}")
        return 0
    failed = []
    if not args.aggregate:
        print(f"study {study.name}: {len(study.arms)} arms x {len(study.seeds)} seeds x {len(study.data_seeds)} data seeds "
              f"= {len(specs)} runs; run directories (with each run's train.log) in {args.runs}", flush=True)
        previous = signal.signal(signal.SIGTERM, _terminate_as_interrupt)  # stop the workers with the study
        try:
            _, failed = run_pending(specs, runs_dir=args.runs, results_dir=args.results, executor=args.executor,
                                    jobs=args.jobs, threads=args.threads, progress=not args.no_progress,
                                    slurm={"partition": args.slurm_partition, "time": args.slurm_time,
                                           "gpus": args.slurm_gpus})
        except KeyboardInterrupt:
            print("interrupted: the running runs wrote their checkpoints; start the same command again to continue",
                  file=sys.stderr)
            return 130
        finally:
            signal.signal(signal.SIGTERM, previous)
    out = write_report(study, args.results)
    print((out / "study.md").read_text(encoding="utf-8"))
    print(f"report written to {out}")
    for spec, error in failed:
        print(f"error: run {spec.arm} seed {spec.seed} failed: {error} (log: {args.runs}/{run_key(spec.config())}/train.log)",
              file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
