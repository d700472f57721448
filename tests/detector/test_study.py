"""Studies: statistics, study files, diagnostics and a micro-study end to end (specs/study.md)."""
import json
import math

import pytest

torch = pytest.importorskip("torch")
scipy_stats = pytest.importorskip("scipy.stats")

import numpy as np  # noqa: E402

from detector.configs import get_config  # noqa: E402
from detector.study import stats  # noqa: E402
from detector.study.__main__ import main as study_main  # noqa: E402
from detector.study.__main__ import parse_seeds  # noqa: E402
from detector.study.definitions import BUILTIN_STUDIES, Arm, Study, load_study_file, validate_study  # noqa: E402
from detector.study.report import aggregate, markdown  # noqa: E402
from detector.study.runner import curves_of_log, execute_run, result_path, run_key, run_pending, run_specs  # noqa: E402

pytestmark = pytest.mark.torch


# ---------------------------------------------------------------------------------------
# statistics (specs/study.md §4), against hand computations and scipy


def test_summary_by_hand():
    values = [0.30, 0.32, 0.34]  # mean 0.32, sample std 0.02
    summary = stats.summarize(values)
    assert summary.n == 3 and summary.mean == pytest.approx(0.32) and summary.std == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2) from a table
    assert summary.ci_low == pytest.approx(0.32 - half) and summary.ci_high == pytest.approx(0.32 + half)
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert (summary.ci_low, summary.ci_high) == pytest.approx((low, high))


def test_summary_of_one_value_has_no_interval():
    summary = stats.summarize([0.5])
    assert summary.mean == 0.5 and math.isnan(summary.std) and math.isnan(summary.ci_low)
    assert "n = 1" in stats.verdict(stats.paired_difference([0.5], [0.4]))


def test_paired_difference_by_hand_and_against_ttest_rel():
    arm, baseline = [0.31, 0.33, 0.36, 0.30], [0.30, 0.31, 0.33, 0.30]  # differences .01 .02 .03 0
    difference = stats.paired_difference(arm, baseline)
    d = np.array([0.01, 0.02, 0.03, 0.0])
    half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / 2
    assert difference.mean == pytest.approx(0.015) and difference.std == pytest.approx(d.std(ddof=1))
    assert (difference.ci_low, difference.ci_high) == pytest.approx((0.015 - half, 0.015 + half))
    assert difference.p_value == pytest.approx(scipy_stats.ttest_rel(arm, baseline).pvalue)
    assert math.isnan(difference.bootstrap_low)  # fewer than 8 pairs: no bootstrap
    # pairing matters: the same numbers unpaired would not separate the arms
    assert difference.ci_low > -0.01


def test_bootstrap_interval_from_eight_pairs_is_deterministic():
    rng = np.random.default_rng(1)
    baseline = rng.normal(0.3, 0.02, 8)
    arm = baseline + rng.normal(0.01, 0.004, 8)
    first, second = stats.paired_difference(arm, baseline), stats.paired_difference(arm, baseline)
    assert math.isfinite(first.bootstrap_low) and first.bootstrap_low < first.mean < first.bootstrap_high
    assert (first.bootstrap_low, first.bootstrap_high) == (second.bootstrap_low, second.bootstrap_high)


@pytest.mark.parametrize("arm, baseline, word", [
    ([0.35, 0.36, 0.37], [0.30, 0.30, 0.31], "better"),
    ([0.25, 0.26, 0.24], [0.30, 0.30, 0.31], "worse"),
    ([0.31, 0.29, 0.30], [0.30, 0.30, 0.30], "no difference detected (95 % CI ["),
])
def test_verdicts(arm, baseline, word):
    assert stats.verdict(stats.paired_difference(arm, baseline), 100).startswith(word)


def test_statistics_reject_non_finite_and_unpaired_inputs():
    with pytest.raises(ValueError, match="finite"):
        stats.summarize([0.1, math.nan])
    with pytest.raises(ValueError, match="paired"):
        stats.paired_difference([0.1, 0.2], [0.1])


def test_parse_seeds():
    assert parse_seeds("0-4") == (0, 1, 2, 3, 4) and parse_seeds("0,2,5") == (0, 2, 5) and parse_seeds("1-2,7") == (1, 2, 7)
    with pytest.raises(ValueError):
        parse_seeds("")


# ---------------------------------------------------------------------------------------
# study definitions and files


def test_builtin_studies_are_valid_and_name_the_papers_tables():
    assert {"dyn_atss_table1", "dyn_atss_table2", "dyn_atss_table3", "piou_table1a", "piou_table2", "fig3", "fig4", "fig5"} <= set(BUILTIN_STUDIES)
    for study in BUILTIN_STUDIES.values():
        validate_study(study)
        assert study.claim and len(study.seeds) >= 5
        configs = [spec.config() for spec in run_specs(study)]
        assert len({run_key(c) for c in configs}) == len(configs)  # every (arm, seed) is a different run
        assert all(c.data.seed == 0 for c in configs)  # the data stay fixed while the training seed varies
    table1a = BUILTIN_STUDIES["piou_table1a"]
    assert [arm.value for arm in table1a.arms] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert table1a.arm("T=0.6").overrides[0] == "assign.threshold=0.6"


def test_studies_share_identical_runs():
    """fig3's runs are dyn_atss_table1's ATSS and ATSS+CIoUs runs: the same keys."""
    fig3 = {run_key(s.config()) for s in run_specs(BUILTIN_STUDIES["fig3"])}
    table1 = {run_key(s.config()) for s in run_specs(BUILTIN_STUDIES["dyn_atss_table1"])}
    assert fig3 <= table1


def test_run_key_survives_a_new_config_field_with_a_default(monkeypatch):
    import dataclasses

    from detector import configs

    config = get_config("study_atss")
    before = run_key(config)
    extended = dataclasses.make_dataclass("Extended", [("new_option", int, dataclasses.field(default=3))],
                                          bases=(configs.SolverConfig,), frozen=True)
    config_with_field = dataclasses.replace(config, solver=extended(**dataclasses.asdict(config.solver)))
    assert run_key(config_with_field) == before
    assert run_key(dataclasses.replace(config_with_field, solver=extended(**dataclasses.asdict(config.solver),
                                                                          new_option=4))) != before


def test_run_key_ignores_what_does_not_change_a_result():
    config = get_config("study_atss")
    assert run_key(config) == run_key(get_config("study_atss", ["threads=4", "data.num_workers=3", "output_dir=elsewhere"]))
    assert run_key(config) != run_key(get_config("study_atss", ["seed=1"]))
    assert run_key(config) != run_key(get_config("study_atss", ["data.seed=1"]))


TOML = """
name = "topk"
description = "ATSS top-k"
baseline = "k9"
seeds = [0, 1]
overrides = ["solver.epochs=1"]

[[arms]]
name = "k9"
config = "study_atss"

[[arms]]
name = "k15"
config = "study_atss"
overrides = ["assign.topk=15"]
value = 15
"""

YAML = """
name: topk
baseline: k9
seeds: [0, 1]
arms:
  - {name: k9, config: study_atss}
  - {name: k15, config: study_atss, overrides: ["assign.topk=15"], value: 15}
"""


@pytest.mark.parametrize("suffix, text", [(".toml", TOML), (".yaml", YAML)])
def test_study_files(tmp_path, suffix, text):
    path = tmp_path / f"study{suffix}"
    path.write_text(text)
    study = load_study_file(path)
    assert study.name == "topk" and study.baseline == "k9" and study.seeds == (0, 1)
    assert study.arm("k15").overrides == ("assign.topk=15",) and study.arm("k15").value == 15
    assert run_specs(study)[-1].config().assign.topk == 15


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace('baseline = "k9"', 'baseline = "k10"'), "baseline: 'k10' is not an arm"),
    (lambda t: t.replace('name = "k15"', 'name = "k9"'), "duplicated names ['k9']"),
    (lambda t: t.replace('config = "study_atss"\n\n[[arms]]', 'config = "nope"\n\n[[arms]]'), "arm k9: unknown config 'nope'"),
    (lambda t: t.replace('"assign.topk=15"', '"assign.threshold=0.5"'), "arm k15: unknown config key 'assign.threshold'"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 0]"), "seeds: duplicated values"),
    (lambda t: t + "\ncolour = 3\n", "unknown keys ['colour']"),
    (lambda t: t.replace("[[arms]]", "[[arms]]\nbogus = 1", 1), "arms[0]: unknown keys ['bogus']"),
    (lambda t: t.replace('name = "topk"', 'name = "topk'), "cannot parse"),
])
def test_bad_study_files_name_the_file_and_the_field(tmp_path, edit, message):
    path = tmp_path / "bad.toml"
    path.write_text(edit(TOML))
    with pytest.raises(ValueError) as error:
        load_study_file(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_study_command_reports_user_errors_in_one_line(tmp_path, capsys):
    assert study_main(["no_such_study"]) == 2
    assert study_main([str(tmp_path / "missing.toml")]) == 2
    assert study_main(["fig3", "--arms", "nope"]) == 2
    assert study_main(["--name", "x", "--baseline", "a", "--arm", "a", "study_atss", "assign.bogus=1"]) == 2
    assert study_main(["--arm", "a", "study_atss"]) == 2  # no --name / --baseline
    err = capsys.readouterr().err
    assert err.count("error: ") == 5 and "Traceback" not in err
    assert "arm a: unknown config key 'assign.bogus'" in err


def test_a_study_defined_on_the_command_line(tmp_path, capsys):
    argv = ["--name", "topk", "--baseline", "k9", "--arm", "k9", "study_atss", "--arm", "k15", "study_atss",
            "assign.topk=15", "--seeds", "0-1", "--dry-run"]
    assert study_main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and [line.split()[1] for line in lines] == ["k9", "k9", "k15", "k15"]


# ---------------------------------------------------------------------------------------
# diagnostics (specs/study.md §6)


def test_assignment_diagnostics_on_a_fixed_scene():
    from detector.data.collate import pad_targets
    from detector.modeling import Detector
    from detector.modeling.assigners import DynamicAtssOptions, assign
    from detector.modeling.objective import assignment_diagnostics

    model = Detector(get_config("demo"), 3)
    priors = model.priors((64, 64))
    boxes = torch.tensor([[4.0, 4.0, 40.0, 44.0], [50.0, 50.0, 50.0, 60.0]])  # the second has zero width: no positive
    targets = pad_targets([{"boxes": boxes, "labels": torch.tensor([0, 1])}])
    pred_boxes = priors.anchors[None].clone()  # predictions equal to the anchors: PIoU = AIoU
    options = DynamicAtssOptions(pred_weight=0.0)  # w_p = 0: Dynamic ATSS is ATSS
    assignment = assign(options, priors, targets, pred_boxes)
    diagnostics = assignment_diagnostics(priors, assignment, targets, pred_boxes, options)
    positive = assignment.matched_gt[0] >= 0
    assert int(positive.sum()) > 0 and bool((assignment.matched_gt[0][positive] == 0).all())
    assert float(diagnostics["gts_without_pos_per_image"]) == 1.0
    from detector.boxes import aligned_box_iou

    ious = aligned_box_iou(priors.anchors[positive], boxes[:1].expand(int(positive.sum()), 4))
    assert float(diagnostics["mean_prior_iou_pos"]) == pytest.approx(float(ious.double().mean()))
    assert float(diagnostics["mean_pred_iou_pos"]) == pytest.approx(float(ious.double().mean()))
    assert float(diagnostics["jaccard_vs_atss"]) == 1.0


# ---------------------------------------------------------------------------------------
# a micro-study end to end: 2 arms x 2 seeds, a few iterations each


MICRO = ("data.digits_num_train=16", "data.digits_num_val=8", "data.digits_image_size=64", "data.min_size=64",
         "data.max_size=64", "data.test_min_size=64", "data.digits_min_objects=2", "data.digits_max_objects=6",
         "backbone.tiny_widths=8,16,16,32", "fpn.out_channels=16", "head.width=16", "head.depth=1", "head.gn_groups=8",
         "solver.batch_size=8", "solver.epochs=2", "solver.steps=1", "solver.warmup_iters=2", "eval_batch_size=8")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro_study")
    study = Study("micro", "micro-study", arms=(Arm("ATSS", "study_atss"),
                                                Arm("ATSS+CIoUs", "study_atss", ("assign.name=dynamic_atss",))),
                  baseline="ATSS", seeds=(0, 1), overrides=MICRO + (f"data.root={root / 'data'}",), claim="machinery only")
    done, failed = run_pending(run_specs(study), runs_dir=root / "runs", results_dir=root / "results", jobs=1,
                               progress=False)
    assert failed == [] and len(done) == 4
    return study, root


def test_micro_study_runs_resumes_and_reports(micro, monkeypatch):
    study, root = micro
    results, runs = root / "results", root / "runs"
    for spec in run_specs(study):
        stored = json.loads(result_path(results, run_key(spec.config())).read_text())
        assert stored["arm"] == spec.arm and stored["seed"] == spec.seed and 0.0 <= stored["metrics"]["AP"] <= 1.0
        assert stored["curves"]["iteration"] and "box_loss_pos" in stored["curves"]
        assert ("jaccard_vs_atss" in stored["curves"]) == (spec.arm == "ATSS+CIoUs")
        assert "gts_without_pos_per_image" in stored["curves"] and "mean_pred_iou_pos" in stored["curves"]
    # a second call finds every result and trains nothing
    import detector.train

    monkeypatch.setattr(detector.train, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    done, failed = run_pending(run_specs(study), runs_dir=runs, results_dir=results, jobs=1, progress=False)
    assert len(done) == 4 and failed == []
    summary = aggregate(study, results)
    assert summary["complete"] and [a["runs"] for a in summary["arms"]] == [2, 2]
    other = summary["arms"][1]
    assert other["difference"]["AP"]["n"] == 2 and other["verdict"]["AP"]
    assert summary["curves"]["box_loss_pos"]["ATSS+CIoUs"]["difference"]["n"] == 2
    assert summary["pairs"] == []  # one arm besides the baseline: no pair
    table = markdown(summary)
    assert "| `ATSS` | 2/2 |" in table and "(baseline)" in table and "ΔAP vs baseline" in table
    assert "| `box_loss_pos` |" in table


def test_study_command_aggregates_and_writes_every_report_file(micro, tmp_path):
    study, root = micro
    path = tmp_path / "micro.toml"
    arms = "\n".join(f'[[arms]]\nname = "{a.name}"\nconfig = "{a.config}"\noverrides = {json.dumps(list(a.overrides))}\n'
                     for a in study.arms)
    path.write_text(f'name = "micro"\nbaseline = "ATSS"\nseeds = [0, 1]\noverrides = {json.dumps(list(study.overrides))}\n'
                    + arms)
    assert study_main([str(path), "--results", str(root / "results"), "--runs", str(root / "runs"), "--aggregate"]) == 0
    out = root / "results" / "studies" / "micro"
    for name in ("study.md", "study.csv", "study.json", "ap.png", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "study.json").read_text())  # valid JSON: no NaN
    assert data["arms"][0]["metrics"]["AP"]["n"] == 2
    assert len((out / "study.csv").read_text().splitlines()) == 5  # header + 4 runs


def test_an_interrupted_run_continues_from_its_checkpoint(micro, tmp_path):
    from detector.study.runner import RunSpec
    from detector.train import train

    study, root = micro
    spec = RunSpec("micro", "ATSS", "study_atss", study.overrides, 5, 0)
    config = get_config("study_atss", list(spec.overrides) + ["seed=5", "data.seed=0", "threads=1", "data.num_workers=0"])
    run_dir = tmp_path / "runs" / run_key(config)
    train(config, run_dir, progress=False, stop_after=2, evaluate_at_end=False)  # interrupted after 2 iterations
    assert (run_dir / "last.pth").is_file() and not (run_dir / "metrics.json").exists()
    out = execute_run(spec, tmp_path / "runs", tmp_path / "results")
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == list(range(1, len(records) + 1))  # continued, not restarted
    assert "resuming" in (run_dir / "train.log").read_text()
    assert json.loads(out.read_text())["seed"] == 5


@pytest.mark.parametrize("executor", ["submitit-debug", "submitit-local"])
def test_submitit_executors_run_the_same_jobs(micro, tmp_path, executor):
    """The Slurm path (submitit) with submitit's own in-process and local executors."""
    pytest.importorskip("submitit")
    study, _ = micro
    specs = run_specs(study)[:1]
    done, failed = run_pending(specs, runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", executor=executor,
                               progress=False, slurm={"time": 10})
    assert failed == [] and len(done) == 1
    assert result_path(tmp_path / "results", run_key(specs[0].config())).is_file()


def test_curve_end_is_the_mean_of_the_last_tenth():
    from detector.study.report import curve_end

    assert curve_end([float(v) for v in range(1, 21)]) == 19.5  # the last 2 of 20
    assert curve_end([1.0, None, 3.0]) == 3.0 and curve_end([None]) is None


def test_curves_are_window_means(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps({"iteration": i, "loss": float(i), "skipped": i == 3}) + "\n" for i in range(1, 8)))
    curves = curves_of_log(log, keys=("loss",), points=3)  # 6 records left, windows of 2
    assert curves == {"iteration": [2, 5, 7], "loss": [1.5, 4.5, 6.5]}


def test_terminating_a_study_stops_its_workers_and_keeps_their_checkpoints(micro, tmp_path):
    """SIGTERM to `python -m detector.study --jobs 2`: the workers stop too (no training goes
    on in the background), each running run writes its checkpoint, the exit status is 130."""
    import signal
    import subprocess
    import sys
    import time

    study, root = micro
    path = tmp_path / "long.toml"
    # long enough that neither run can finish while the other worker is still starting (at 40
    # epochs one run could end and the queued one start before both were seen training)
    overrides = list(study.overrides) + ["solver.epochs=2000", "solver.steps=30"]
    path.write_text(f'name = "long"\nbaseline = "a"\nseeds = [7]\noverrides = {json.dumps(overrides)}\n'
                    '[[arms]]\nname = "a"\nconfig = "study_atss"\n'
                    '[[arms]]\nname = "b"\nconfig = "study_atss"\noverrides = ["assign.topk=5"]\n'
                    '[[arms]]\nname = "c"\nconfig = "study_atss"\noverrides = ["assign.topk=7"]\n')  # queued behind a, b
    runs = tmp_path / "runs"
    process = subprocess.Popen([sys.executable, "-m", "detector.study", str(path), "--jobs", "2", "--runs", str(runs),
                                "--results", str(tmp_path / "results"), "--no-progress"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until both runs train
        logs = list(runs.glob("*/log.jsonl"))
        if len(logs) == 2 and all(log.stat().st_size > 0 for log in logs):
            break
        time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the runs did not start")
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "start the same command again" in err
    sizes = {log: log.stat().st_size for log in runs.glob("*/log.jsonl")}
    time.sleep(3)
    assert {log: log.stat().st_size for log in runs.glob("*/log.jsonl")} == sizes  # nobody trains any more
    assert len(list(runs.glob("*/last.pth"))) == 2  # each interrupted run checkpointed its position
    assert len(sizes) == 2  # the queued run never started
    assert not list((tmp_path / "results").glob("runs/*.json"))  # and no run finished


def test_an_interrupted_run_stops_an_in_process_study(micro, tmp_path, monkeypatch):
    """--jobs 1 trains in the study's own process, where the training's interrupt handler
    takes the signal: the study must stop there, not count the run as failed and go on."""
    import detector.train
    from detector.study.runner import RunInterrupted

    study, _ = micro
    calls = []

    def interrupted_train(config, run_dir, **kwargs):  # what train returns after SIGTERM / Ctrl-C
        calls.append(run_dir)
        return None

    monkeypatch.setattr(detector.train, "train", interrupted_train)
    with pytest.raises(RunInterrupted, match="was interrupted"):
        run_pending(run_specs(study), runs_dir=tmp_path / "runs", results_dir=tmp_path / "results", jobs=1,
                    progress=False)
    assert len(calls) == 1


def test_pairs_between_the_other_arms(tmp_path):
    """Every pair of non-baseline arms gets a paired difference, computed from stored results."""
    from detector.study.report import aggregate
    from detector.study.runner import result_path

    study = Study("pairs", "pairs", arms=(Arm("base", "study_atss"), Arm("a", "study_atss", ("assign.topk=5",)),
                                          Arm("b", "study_atss", ("assign.topk=7",))), baseline="base", seeds=(0, 1, 2))
    values = {"base": [0.30, 0.31, 0.32], "a": [0.33, 0.341, 0.349], "b": [0.31, 0.32, 0.33]}
    for spec in run_specs(study):
        path = result_path(tmp_path, run_key(spec.config()))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"key": run_key(spec.config()), "metrics": {"AP": values[spec.arm][spec.seed]},
                                    "curves": {}}))
    summary = aggregate(study, tmp_path)
    (pair,) = summary["pairs"]
    assert (pair["first"], pair["second"]) == ("a", "b")
    expected = stats.paired_difference(values["a"], values["b"])
    assert pair["difference"]["mean"] == pytest.approx(expected.mean) and pair["verdict"].startswith("better")
    assert "- `a` - `b`: +2.00" in markdown(summary)
