"""Aggregating a study's stored run results into tables, verdicts and plots (specs/study.md §4-§5).

``aggregate`` reads ``RESULTS/runs/<key>.json`` of every (arm, seed, data seed) and
returns one plain dict (the content of ``study.json``): per arm and metric the
``stats.Summary`` over seeds, per arm the ``stats.Difference`` to the baseline over the
seeds both finished, and a verdict in words. ``write_report`` writes ``study.json``,
``study.csv`` (one row per run), ``study.md`` (the paper-style table with 95 %
intervals) and two plots: the metric against the swept parameter (or per arm) with
interval bars, and the training curves as the mean over seeds with a band (min..max).
"""
import csv
import json
import math
from pathlib import Path

from detector.study import stats
from detector.study.runner import load_result, run_key, run_specs

#: Metrics are stored as fractions; reports show AP points (x 100).
SCALE = 100.0


def collect(study, results_dir):
    """{arm: {(seed, data_seed): result dict}} of the runs that have a stored result."""
    found = {arm.name: {} for arm in study.arms}
    for spec in run_specs(study):
        result = load_result(results_dir, run_key(spec.config()))
        if result is not None:
            found[spec.arm][(spec.seed, spec.data_seed)] = result
    return found


def aggregate(study, results_dir):
    """The study's statistics as plain data (see the module docstring)."""
    found = collect(study, results_dir)
    baseline = found[study.baseline]
    expected = len(study.seeds) * len(study.data_seeds)
    arms = []
    for arm in study.arms:
        runs = found[arm.name]
        entry = {"name": arm.name, "config": arm.config, "overrides": list(arm.overrides), "value": arm.value,
                 "runs": len(runs), "expected_runs": expected, "metrics": {}, "difference": {}, "verdict": {}}
        for metric in study.metrics:
            values = [_metric(r, metric) for r in runs.values()]
            values = [v for v in values if v is not None]
            entry["metrics"][metric] = stats.summarize(values).as_dict() if values else None
            if arm.name == study.baseline:
                continue
            common = sorted(k for k in runs if k in baseline and _metric(runs[k], metric) is not None
                            and _metric(baseline[k], metric) is not None)
            if not common:
                entry["difference"][metric] = None
                entry["verdict"][metric] = "not resolved (no seed finished in both arms)"
                continue
            difference = stats.paired_difference([_metric(runs[k], metric) for k in common],
                                                 [_metric(baseline[k], metric) for k in common])
            entry["difference"][metric] = difference.as_dict()
            entry["verdict"][metric] = stats.verdict(difference, SCALE, " AP")
        arms.append(entry)
    return {"study": study.name, "description": study.description, "claim": study.claim, "baseline": study.baseline,
            "seeds": list(study.seeds), "data_seeds": list(study.data_seeds), "metrics": list(study.metrics),
            "swept": study.swept, "arms": arms, "complete": all(a["runs"] == expected for a in arms),
            "curves": _curve_ends(study, found), "pairs": _pairs(study, found)}


#: Studies with at most this many arms also report every pair of arms (first metric).
MAX_ARMS_FOR_PAIRS = 6


def _pairs(study, found):
    """Paired differences of the first metric between every two non-baseline arms (the
    baseline comparisons are in the arms' rows), for studies of at most
    ``MAX_ARMS_FOR_PAIRS`` arms."""
    if len(study.arms) > MAX_ARMS_FOR_PAIRS:
        return []
    metric = study.metrics[0]
    others = [a.name for a in study.arms if a.name != study.baseline]
    pairs = []
    for i, first in enumerate(others):
        for second in others[i + 1:]:
            common = sorted(k for k in found[first] if k in found[second] and _metric(found[first][k], metric) is not None
                            and _metric(found[second][k], metric) is not None)
            if len(common) < 2:
                continue
            difference = stats.paired_difference([_metric(found[first][k], metric) for k in common],
                                                 [_metric(found[second][k], metric) for k in common])
            pairs.append({"first": first, "second": second, "metric": metric, "difference": difference.as_dict(),
                          "verdict": stats.verdict(difference, SCALE, " AP")})
    return pairs


#: The end of a training curve: the mean of its last this-fraction of window means.
CURVE_END_FRACTION = 0.1


def curve_end(curve):
    """Mean of the last ``CURVE_END_FRACTION`` of a run's curve (its window means), or None."""
    values = [v for v in curve if v is not None]
    if not values:
        return None
    count = max(1, round(len(values) * CURVE_END_FRACTION))
    return sum(values[-count:]) / count


def _curve_ends(study, found):
    """Per curve key and arm: the summary of the runs' curve ends, and the paired difference
    to the baseline (the same statistics as the metrics)."""
    out = {}
    baseline = found[study.baseline]
    for key in study.curves:
        entry = {}
        for arm in study.arms:
            ends = {k: curve_end(r["curves"][key]) for k, r in found[arm.name].items() if key in r.get("curves", {})}
            ends = {k: v for k, v in ends.items() if v is not None}
            if not ends:
                continue
            row = {"summary": stats.summarize(list(ends.values())).as_dict()}
            if arm.name != study.baseline:
                base = {k: curve_end(r["curves"][key]) for k, r in baseline.items() if key in r.get("curves", {})}
                common = sorted(k for k in ends if base.get(k) is not None)
                if common:
                    difference = stats.paired_difference([ends[k] for k in common], [base[k] for k in common])
                    row["difference"] = difference.as_dict()
                    row["verdict"] = stats.verdict(difference).replace("better", "higher").replace("worse", "lower")
            entry[arm.name] = row
        if entry:
            out[key] = entry
    return out


def write_report(study, results_dir, out_dir=None):
    """Write ``study.json``, ``study.csv``, ``study.md`` and the plots; return the folder."""
    out_dir = Path(out_dir) if out_dir is not None else Path(results_dir) / "studies" / study.name
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = aggregate(study, results_dir)
    (out_dir / "study.json").write_text(json.dumps(_finite_or_none(summary), indent=1) + "\n", encoding="utf-8")
    _write_csv(study, results_dir, out_dir / "study.csv")
    (out_dir / "study.md").write_text(markdown(summary), encoding="utf-8")
    _plot_metric(summary, study, out_dir / "ap.png")
    _plot_curves(study, results_dir, out_dir / "curves.png")
    return out_dir


def markdown(summary):
    """The paper-style table: mean ± half-width of the 95 % interval (AP points), n, and the
    paired difference to the baseline with its verdict."""
    metrics = summary["metrics"]
    first = metrics[0]
    lines = [f"# Study `{summary['study']}`", "", summary["description"], ""]
    if summary["claim"]:
        lines += [f"Paper claim: {summary['claim']}", ""]
    lines += [f"Baseline: `{summary['baseline']}`; training seeds {summary['seeds']}, data seeds {summary['data_seeds']}. "
              "Values are means over seeds in AP points with the half-width of the 95 % Student-t interval; "
              f"the difference is paired over the seeds both arms finished (95 % paired-t interval).", ""]
    if not summary["complete"]:
        lines += ["**Incomplete**: not every run has finished; the `n` column says how many did.", ""]
    header = ["arm", "n"] + metrics + [f"Δ{first} vs baseline", "verdict"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|")
    for arm in summary["arms"]:
        cells = [f"`{arm['name']}`", f"{arm['runs']}/{arm['expected_runs']}"]
        for metric in metrics:
            cells.append(_mean_pm(arm["metrics"].get(metric)))
        difference = arm["difference"].get(first)
        if arm["name"] == summary["baseline"]:
            cells += ["(baseline)", ""]
        elif difference is None:
            cells += ["", arm["verdict"].get(first, "")]
        else:
            cells += [_difference(difference), arm["verdict"][first]]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if summary.get("pairs"):
        lines += [f"Between the other arms ({summary['metrics'][0]}, first minus second, paired):", ""]
        for pair in summary["pairs"]:
            lines.append(f"- `{pair['first']}` - `{pair['second']}`: {_difference(pair['difference'])}: {pair['verdict']}")
        lines.append("")
    if summary.get("curves"):
        lines += [f"Training curves at the end of training (mean of the last {round(100 * CURVE_END_FRACTION)} % of "
                  "each run's curve; mean ± 95 % half-width over seeds; paired difference to the baseline):", "",
                  "| curve | " + " | ".join(f"`{a['name']}`" for a in summary["arms"]) + " |",
                  "|---|" + "---|" * len(summary["arms"])]
        for key, rows in summary["curves"].items():
            cells = []
            for arm in summary["arms"]:
                row = rows.get(arm["name"])
                if row is None:
                    cells.append("n/a")
                    continue
                text = _plain_pm(row["summary"])
                if "difference" in row:
                    text += f"; Δ {_plain_difference(row['difference'])} ({row['verdict'].split(' (')[0]})"
                cells.append(text)
            lines.append(f"| `{key}` | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _plain_pm(summary):
    if not math.isfinite(summary["ci_high"]):
        return f"{summary['mean']:.4g}"
    return f"{summary['mean']:.4g} ± {summary['ci_high'] - summary['mean']:.2g}"


def _plain_difference(difference):
    if not math.isfinite(difference["ci_low"]):
        return f"{difference['mean']:+.3g}"
    return f"{difference['mean']:+.3g} [{difference['ci_low']:+.3g}, {difference['ci_high']:+.3g}]"


def _mean_pm(summary):
    if summary is None:
        return "n/a"
    if not math.isfinite(summary["ci_high"]):
        return f"{summary['mean'] * SCALE:.2f}"
    return f"{summary['mean'] * SCALE:.2f} ± {(summary['ci_high'] - summary['mean']) * SCALE:.2f}"


def _difference(difference):
    if not math.isfinite(difference["ci_low"]):
        return f"{difference['mean'] * SCALE:+.2f}"
    return (f"{difference['mean'] * SCALE:+.2f} [{difference['ci_low'] * SCALE:+.2f}, "
            f"{difference['ci_high'] * SCALE:+.2f}]")


def _metric(result, metric):
    value = result["metrics"].get(metric)
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _write_csv(study, results_dir, path):
    found = collect(study, results_dir)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["arm", "seed", "data_seed", "key", *study.metrics, "wall_seconds"])
        for arm in study.arms:
            for (seed, data_seed), result in sorted(found[arm.name].items()):
                writer.writerow([arm.name, seed, data_seed, result["key"],
                                 *[_metric(result, m) if _metric(result, m) is not None else "" for m in study.metrics],
                                 result.get("wall_seconds", "")])


def _plot_metric(summary, study, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = summary["metrics"][0]
    rows = [(a, a["metrics"].get(metric)) for a in summary["arms"] if a["metrics"].get(metric)]
    figure, axis = plt.subplots(figsize=(7, 4))
    if rows:
        swept = study.swept and all(isinstance(a["value"], (int, float)) for a, _ in rows)
        xs = [a["value"] for a, _ in rows] if swept else list(range(len(rows)))
        means = [s["mean"] * SCALE for _, s in rows]
        errors = [((s["ci_high"] - s["mean"]) * SCALE if math.isfinite(s["ci_high"]) else 0.0) for _, s in rows]
        axis.errorbar(xs, means, yerr=errors, fmt="o-" if swept else "o", capsize=4)
        if swept:
            axis.set_xlabel(study.swept)
        else:
            axis.set_xticks(xs, [a["name"] for a, _ in rows], rotation=20, ha="right")
    axis.set_ylabel(f"{metric} (points, mean ± 95 % CI)")
    axis.set_title(f"{summary['study']}")
    axis.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_curves(study, results_dir, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    found = collect(study, results_dir)
    keys = list(study.curves)
    figure, axes = plt.subplots(len(keys), 1, figsize=(7, 2.8 * len(keys)), squeeze=False)
    for axis, key in zip(axes[:, 0], keys):
        for arm in study.arms:
            series = [r["curves"] for r in found[arm.name].values() if key in r.get("curves", {})]
            if not series:
                continue
            length = min(len(s[key]) for s in series)
            values = np.array([[math.nan if v is None else v for v in s[key][:length]] for s in series], dtype=float)
            iterations = series[0]["iteration"][:length]
            mean = np.nanmean(values, axis=0)
            axis.plot(iterations, mean, label=f"{arm.name} (n={len(series)})", linewidth=1.4)
            if len(series) > 1:
                axis.fill_between(iterations, np.nanmin(values, axis=0), np.nanmax(values, axis=0), alpha=0.2)
        axis.set_xlabel("iteration")
        axis.set_ylabel(key)
        axis.grid(True, alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    figure.suptitle(f"{study.name}: mean over seeds (band: min..max)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _finite_or_none(value):
    """``value`` with every non-finite float replaced by None (valid JSON)."""
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
