"""Overlay the loss curves of several runs (specs/training.md §7).

Usage::

    python -m detector.plot runs/atss-... runs/atss_ciou-... --keys box_loss_pos --out fig3.png

Reads each run's ``log.jsonl`` and draws, for every key, one panel with one curve per run
against the iteration (matplotlib, Agg backend, PNG): losses and diagnostics smoothed
(``--raw`` also draws the raw values, faintly), the learning rate and other schedules raw;
dotted vertical lines mark the epoch boundaries, and each axis names its unit. With the default key
``box_loss_pos`` (the unweighted mean box loss of the positives) two runs redraw the
Dynamic ATSS paper's Figure 3 (ATSS vs ATSS + CIoUs) in its unweighted form; the official
code's regression loss, the form the paper plots, is ``loss_box`` (specs/training.md §8).
"""
import argparse
import json
import math
import sys
from pathlib import Path

DEFAULT_KEYS = ("box_loss_pos",)
#: Logged keys drawn without smoothing: schedules and counters, whose steps are the point.
RAW_KEYS = ("lr", "epoch", "bad_steps_total")
#: Axis labels with units (keys not listed are drawn with their name).
LABELS = {
    "lr": "learning rate",
    "loss": "total loss",
    "loss_cls": "classification loss (normalised)",
    "loss_box": "box loss (weighted, x box weight)",
    "loss_quality": "quality-branch BCE (normalised)",
    "box_loss_pos": "box loss of positives (unweighted mean)",
    "num_pos": "positives per batch",
    "num_pos_per_image": "positives per image",
    "gts_without_pos_per_image": "GTs without a positive, per image",
    "mean_prior_iou_pos": "mean prior IoU of positives",
    "mean_pred_iou_pos": "mean predicted IoU of positives",
    "jaccard_vs_atss": "Jaccard(positives, ATSS positives)",
    "grad_norm": "gradient norm (L2, before clipping)",
    "time": "seconds per iteration",
    "data_time": "data seconds per iteration",
    "images_per_s": "images / s",
}


def read_log(run_dir, keys):
    """{key: (iterations, values)} of a run's log.jsonl; records without a finite value are skipped."""
    path = _log_path(run_dir)
    curves = {key: ([], []) for key in keys}
    for record in _records(path):
        for key in keys:
            value = record.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value) and not record.get("skipped", False):
                curves[key][0].append(record["iteration"])
                curves[key][1].append(float(value))
    return curves


def epoch_boundaries(run_dir):
    """Iterations after which a new epoch starts (from the log's ``epoch`` field)."""
    boundaries, previous, last_iteration = [], None, None
    for record in _records(_log_path(run_dir)):
        epoch = record.get("epoch")
        if previous is not None and epoch != previous:
            boundaries.append(last_iteration)
        previous, last_iteration = epoch, record.get("iteration")
    return boundaries


def _log_path(run_dir):
    path = Path(run_dir) / "log.jsonl" if Path(run_dir).is_dir() else Path(run_dir)
    if not path.is_file():
        raise FileNotFoundError(f"no log.jsonl in {run_dir}")
    return path


def _records(path):
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {number} is not JSON ({error.msg})") from None


def smooth(values, weight):
    """Exponential moving average with bias correction (TensorBoard-style); weight in [0, 1)."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing: expected a weight in [0, 1), got {weight}")
    out, average = [], 0.0
    for i, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        out.append(average / (1 - weight ** i))
    return out


def plot_runs(run_dirs, keys=DEFAULT_KEYS, out="losses.png", *, labels=None, smoothing=0.9, title=None, raw=False,
              epochs=True):
    """Draw the curves of ``keys`` for ``run_dirs`` into the PNG ``out``; return its path.

    Keys in ``RAW_KEYS`` (the learning rate) are never smoothed; with ``raw`` the other keys
    show their raw values faintly behind the smoothed curve; with ``epochs`` the first run's
    epoch boundaries are dotted vertical lines.
    """
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
            if not values:
                continue
            if key in RAW_KEYS:
                axis.plot(iterations, values, label=label, linewidth=1.5)
            else:
                line, = axis.plot(iterations, smooth(values, smoothing), label=label, linewidth=1.5)
                if raw:
                    axis.plot(iterations, values, color=line.get_color(), alpha=0.25, linewidth=0.8)
            drawn += 1
        if drawn == 0:
            raise ValueError(f"key {key!r}: no run logged it")
        if epochs:
            for boundary in epoch_boundaries(run_dirs[0]):
                axis.axvline(boundary, color="0.6", linestyle=":", linewidth=0.8)
        axis.set_xlabel("iteration" + (" (dotted: epoch ends)" if epochs else ""))
        axis.set_ylabel(LABELS.get(key, key) + ("" if key in RAW_KEYS else f" (EMA {smoothing})"))
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
    parser.add_argument("--raw", action="store_true", help="also draw the raw values behind the smoothed curves")
    parser.add_argument("--no-epochs", action="store_true", help="do not mark the epoch boundaries")
    args = parser.parse_args(argv)
    try:
        out = plot_runs(args.runs, args.keys, args.out, labels=args.labels, smoothing=args.smoothing, title=args.title,
                        raw=args.raw, epochs=not args.no_epochs)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
