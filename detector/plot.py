"""Overlay the loss curves of several runs (specs/training.md §7).

Usage::

    python -m detector.plot runs/atss-... runs/atss_ciou-... --keys box_loss_pos --out fig3.png

Reads each run's ``log.jsonl`` and draws, for every key, one panel with one smoothed curve
per run against the iteration (matplotlib, Agg backend, PNG). With the default key
``box_loss_pos`` (the unweighted mean box loss of the positives) two runs redraw the
Dynamic ATSS paper's Figure 3 (ATSS vs ATSS + CIoUs) and, for GFL/VFNet-style runs,
Figures 4-5.
"""
import argparse
import json
import math
from pathlib import Path

DEFAULT_KEYS = ("box_loss_pos",)


def read_log(run_dir, keys):
    """{key: (iterations, values)} of a run's log.jsonl; records without a finite value are skipped."""
    path = Path(run_dir) / "log.jsonl" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}")
    curves = {key: ([], []) for key in keys}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            record = json.loads(line)
            for key in keys:
                value = record.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value) and not record.get("skipped", False):
                    curves[key][0].append(record["iteration"])
                    curves[key][1].append(float(value))
    return curves


def smooth(values, weight):
    """Exponential moving average with bias correction (TensorBoard-style); weight in [0, 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing: expected a weight in [0, 1), got {weight}")
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def plot_runs(run_dirs, keys=DEFAULT_KEYS, out="losses.png", *, labels=None, smoothing=0.9, title=None):
    """Draw the curves of ``keys`` for ``run_dirs`` into the PNG ``out``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(labels) if labels else [Path(r).name for r in run_dirs]
    if len(labels) != len(run_dirs):
        raise ValueError(f"labels: expected {len(run_dirs)}, got {len(labels)}")
    figure, axes = plt.subplots(len(keys), 1, figsize=(7, 3.2 * len(keys)), squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        drawn = 0
        for run_dir, label in zip(run_dirs, labels):
            iterations, values = read_log(run_dir, [key])[key]
            if values:
                axis.plot(iterations, smooth(values, smoothing), label=label, linewidth=1.5)
                drawn += 1
        if drawn == 0:
            raise ValueError(f"key {key!r}: no run logged it")
        axis.set_xlabel("iteration")
        axis.set_ylabel(key)
        axis.grid(True, alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=120, format="png")
    plt.close(figure)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m detector.plot", description="Overlay loss curves of training runs.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with a log.jsonl)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS),
                        help="logged keys, e.g. box_loss_pos loss_box loss_cls loss num_pos_per_image lr")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels (default: run folder names)")
    parser.add_argument("--smoothing", type=float, default=0.9, help="EMA weight in [0, 1)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", type=Path, default=Path("losses.png"))
    args = parser.parse_args(argv)
    out = plot_runs(args.runs, args.keys, args.out, labels=args.labels, smoothing=args.smoothing, title=args.title)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
