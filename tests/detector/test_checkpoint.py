"""Checkpoints: atomic writes, RNG states, exact resume (specs/training.md §4)."""
import json
import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from detector import checkpoint as ckpt  # noqa: E402
from detector.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states  # noqa: E402
from detector.train import train  # noqa: E402
from tests.detector.test_train_smoke import tiny_config  # noqa: E402

pytestmark = pytest.mark.torch


def test_save_and_load_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "epoch": 3, "config": {"name": "x", "levels": [3, 4]}}
    path = save_checkpoint(state, tmp_path / "sub" / "a.pth")
    loaded = load_checkpoint(path)
    torch.testing.assert_close(loaded["model"]["w"], torch.arange(4.0))
    assert loaded["epoch"] == 3 and loaded["config"] == {"name": "x", "levels": [3, 4]}
    assert load_checkpoint(tmp_path / "sub" / "a.pth")["format_version"] == ckpt.FORMAT_VERSION
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["a.pth"]  # no temp file left


def test_failed_write_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_load_rejects_other_files(tmp_path):
    torch.save({"epoch": 1}, tmp_path / "plain.pth")
    with pytest.raises(ValueError, match="not a labelassign checkpoint"):
        load_checkpoint(tmp_path / "plain.pth")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pth")


def test_rng_states_round_trip(tmp_path):
    states = rng_states()
    save_checkpoint({"rng": states}, tmp_path / "r.pth")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    set_rng_states(load_checkpoint(tmp_path / "r.pth")["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """An uninterrupted 2-epoch Dynamic ATSS run (4 iterations per epoch)."""
    root = tmp_path_factory.mktemp("resume")
    config = tiny_config(root / "data", "demo", "data.digits_num_train=16", "solver.batch_size=4")
    train(config, root / "straight", progress=False, evaluate_at_end=False)
    return config, root / "straight"


@pytest.mark.parametrize("stop_after", [3, 4])  # mid-epoch (4 iterations per epoch) and at the epoch end
def test_resume_continues_exactly(tmp_path, straight_run, stop_after):
    """Interrupt, resume: the final weights, optimizer state and log equal an uninterrupted run."""
    config, straight = straight_run
    resumed = tmp_path / "resumed"
    assert train(config, resumed, progress=False, stop_after=stop_after, evaluate_at_end=False) is None
    stopped = load_checkpoint(resumed / "last.pth")
    assert stopped["iteration"] == stop_after
    assert (stopped["epoch"], stopped["batch_in_epoch"]) == ((0, 3) if stop_after == 3 else (1, 0))
    train(config, resumed, resume=True, progress=False, evaluate_at_end=False)

    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(resumed / "last.pth")
    assert a["iteration"] == b["iteration"] == 8
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    for group_a, group_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        torch.testing.assert_close(group_a["momentum_buffer"], group_b["momentum_buffer"], rtol=0, atol=0)
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    ra, rb = _records(straight), _records(resumed)
    assert [r["iteration"] for r in rb] == list(range(1, 9))
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert [r["lr"] for r in ra] == [r["lr"] for r in rb]


@pytest.mark.parametrize("stop_after", [None, 3, 5])  # straight; mid-epoch 1; mid-epoch 2 (4 iterations per epoch)
def test_iteration_schedule_ends_mid_epoch_and_resumes_exactly(tmp_path, stop_after):
    """``solver.max_iters=6`` with 4 iterations per epoch: the run ends after batch 2 of epoch 2,
    the lr drops at iteration 3 (steps in iterations), and an interrupted run resumes to the
    same weights and log as the straight run."""
    config = tiny_config(tmp_path / "data", "demo_atss", "data.digits_num_train=16", "solver.batch_size=4",
                         "solver.max_iters=6", "solver.steps=3", "solver.warmup=none")
    straight = tmp_path / "straight"
    train(config, straight, progress=False, evaluate_at_end=False)
    final = load_checkpoint(straight / "last.pth")
    assert (final["iteration"], final["epoch"], final["batch_in_epoch"]) == (6, 1, 2)
    assert sorted(p.name for p in straight.glob("epoch_*.pth")) == ["epoch_001.pth"]  # only the complete epoch
    records = _records(straight)
    assert [r["iteration"] for r in records] == list(range(1, 7))
    assert [r["epoch"] for r in records] == [1, 1, 1, 1, 2, 2]
    lrs = [r["lr"] for r in records]
    assert lrs[:3] == [pytest.approx(0.01)] * 3 and lrs[3:] == [pytest.approx(0.001)] * 3
    if stop_after is None:
        return
    resumed = tmp_path / "resumed"
    assert train(config, resumed, progress=False, stop_after=stop_after, evaluate_at_end=False) is None
    assert load_checkpoint(resumed / "last.pth")["iteration"] == stop_after
    train(config, resumed, resume=True, progress=False, evaluate_at_end=False)
    again = load_checkpoint(resumed / "last.pth")
    assert (again["iteration"], again["epoch"], again["batch_in_epoch"]) == (6, 1, 2)
    for key in final["model"]:
        torch.testing.assert_close(final["model"][key], again["model"][key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in _records(resumed)] == [r["loss"] for r in records]
    # resuming a finished run trains nothing more
    train(config, resumed, resume=True, progress=False, evaluate_at_end=False)
    assert len(_records(resumed)) == 6


def test_resume_refuses_a_different_config(tmp_path):
    root = tmp_path / "data"
    config = tiny_config(root, "demo_atss")
    train(config, tmp_path / "run", progress=False, stop_after=1, evaluate_at_end=False)
    other = tiny_config(root, "demo_atss", "solver.lr=0.02")
    with pytest.raises(ValueError, match="config differs"):
        train(other, tmp_path / "run", resume=True, progress=False)


# ---------------------------------------------------------------------------------------
# losing nothing (specs/training.md §5)


@pytest.mark.parametrize("failing_call, saved_position", [
    (4 * 6 + 1, (6, 1, 2)),  # the first image of iteration 7, in the middle of epoch 2
    (16 + 1, (4, 1, 0)),  # the first image of epoch 2: the epoch-end checkpoint is that position
])
def test_an_exception_in_the_loop_checkpoints_the_last_completed_step(tmp_path, straight_run, monkeypatch, failing_call,
                                                                    saved_position):
    """A data error: last.pth holds the last completed step, and resuming from it gives the
    weights and log of the uninterrupted run."""
    from detector.data.loaders import AugmentedDataset

    config, straight = straight_run
    failed = tmp_path / "failed"
    real = AugmentedDataset.__getitem__
    calls = []

    def flaky(self, index):
        calls.append(index)
        if self.epoch == 1 and len(calls) >= failing_call:
            raise OSError(f"image {index}: cannot read (a simulated bad disk)")
        return real(self, index)

    monkeypatch.setattr(AugmentedDataset, "__getitem__", flaky)
    with pytest.raises(OSError, match="simulated"):
        train(config, failed, progress=False, evaluate_at_end=False)
    monkeypatch.undo()
    saved = load_checkpoint(failed / "last.pth")
    assert (saved["iteration"], saved["epoch"], saved["batch_in_epoch"]) == saved_position
    train(config, failed, resume=True, progress=False, evaluate_at_end=False)
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(failed / "last.pth")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert [r["loss"] for r in _records(straight)] == [r["loss"] for r in _records(failed)]
    starts = json.loads((failed / "run.json").read_text())
    assert [r["event"] for r in starts] == ["start", "resume"] and starts[1]["iteration"] == saved_position[0]
    assert "version" in starts[0] and "git_commit" in starts[0] and starts[0]["command"]


def test_an_exception_inside_a_step_leaves_the_model_as_before(straight_run, monkeypatch):
    from detector import engine
    from detector.data.collate import collate
    from detector.data.loaders import build_datasets, size_divisor
    from detector.modeling import Detector
    from detector.modeling.objective import DetectionObjective

    config, _ = straight_run
    data = build_datasets(config)
    batch = collate([data.train[i] for i in range(4)], size_divisor=size_divisor(config))
    model = Detector(config, data.num_classes)
    model.train()
    optimizer = engine.build_optimizer(config, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def broken(self, *args, **kwargs):
        raise RuntimeError("a bug in the loss step")

    monkeypatch.setattr(DetectionObjective, "__call__", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        engine.train_step(model, batch, config, optimizer, torch.device("cpu"), iteration=0, max_iterations=8)
    for key, value in model.state_dict().items():  # BatchNorm statistics included: the forward ran
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)
    assert all(p.grad is None for p in model.parameters())


def test_orphan_temporaries_are_removed_and_checkpoints_are_readable_by_others(tmp_path, monkeypatch):
    import os

    path = save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    old_umask = os.umask(0o022)
    try:
        path = save_checkpoint({"epoch": 1}, tmp_path / "last.pth")
    finally:
        os.umask(old_umask)
    assert path.stat().st_mode & 0o777 == 0o644
    orphan = tmp_path / ".last.pth.abc123.tmp"  # what a kill between write and rename leaves
    orphan.write_bytes(b"half a checkpoint")
    assert ckpt.remove_orphan_temporaries(tmp_path) == [orphan]
    assert not orphan.exists() and path.exists()


def test_a_damaged_checkpoint_names_the_file_and_an_earlier_one(tmp_path):
    save_checkpoint({"epoch": 1}, tmp_path / "epoch_001.pth")
    save_checkpoint({"epoch": 2}, tmp_path / "epoch_002.pth")
    data = (tmp_path / "epoch_002.pth").read_bytes()
    (tmp_path / "last.pth").write_bytes(data[: len(data) // 2])  # truncated by a full disk
    with pytest.raises(ValueError) as error:
        load_checkpoint(tmp_path / "last.pth")
    message = str(error.value)
    assert str(tmp_path / "last.pth") in message and str(tmp_path / "epoch_002.pth") in message
    assert "weights_only" not in message


def test_train_command_reports_data_errors_in_one_line(tmp_path, capsys, monkeypatch):
    from detector.train import main

    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv = ["demo", "data.dataset=coco", f"data.train_images={tmp_path}", f"data.train_annotations={bad}",
            f"data.val_images={tmp_path}", f"data.val_annotations={bad}", f"output_dir={tmp_path}", "--no-progress"]
    for args in (argv, ["demo", "data.dataset=coco"], ["no_such_config"], ["demo", "solver.lr=fast"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    with pytest.raises(ValueError, match="bad.json"):
        main(argv + ["--debug"])
    monkeypatch.setenv("LABELASSIGN_DEBUG", "1")
    with pytest.raises(ValueError, match="data.dataset=coco needs"):
        main(["demo", "data.dataset=coco"])


def test_a_save_killed_half_way_leaves_an_orphan_that_the_next_start_removes(tmp_path):
    """SIGKILL between writing the temporary file and renaming it (no cleanup can run), then
    a new start of the run in that folder: the orphan is gone, the run trains."""
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = ("import os, signal\n"
            "import detector.checkpoint as c, detector.files as f\n"
            "f.os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"c.save_checkpoint({{'epoch': 1}}, {str(run_dir / 'last.pth')!r})\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert killed.returncode == -9
    (orphan,) = run_dir.glob(".last.pth.*.tmp")
    assert orphan.stat().st_size > 0 and not (run_dir / "last.pth").exists()
    config = tiny_config(tmp_path / "data", "demo_atss")
    train(config, run_dir, progress=False, stop_after=1, evaluate_at_end=False)
    assert not orphan.exists() and list(run_dir.glob(".*.tmp")) == []
    assert load_checkpoint(run_dir / "last.pth")["iteration"] == 1


@pytest.mark.parametrize("second_aborts", [True, False])
def test_a_repeated_stop_signal_during_a_checkpoint(tmp_path, straight_run, monkeypatch, second_aborts):
    """Two SIGTERMs while the epoch-end checkpoint is written: interactively the second one
    aborts at once; in a study's worker (second_interrupt_aborts=False) it is ignored, the run
    stops after its next step with a checkpoint, and resuming gives the uninterrupted run."""
    import os
    import signal

    import detector.train

    config, straight = straight_run
    real = detector.train.save_checkpoint
    signalled = []

    def save_while_signalled(state, path):
        if not signalled:
            signalled.append(state["iteration"])
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
        return real(state, path)

    monkeypatch.setattr(detector.train, "save_checkpoint", save_while_signalled)
    run_dir = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    if second_aborts:
        with pytest.raises(KeyboardInterrupt):
            train(config, run_dir, progress=False, evaluate_at_end=False)
        assert not (run_dir / "last.pth").exists()
        return
    assert train(config, run_dir, progress=False, evaluate_at_end=False, second_interrupt_aborts=False) is None
    monkeypatch.undo()
    assert signal.getsignal(signal.SIGTERM) == before  # the training's handler is gone
    assert signalled == [4] and load_checkpoint(run_dir / "last.pth")["iteration"] == 5  # the step after the signals
    train(config, run_dir, resume=True, progress=False, evaluate_at_end=False)
    a, b = load_checkpoint(straight / "last.pth"), load_checkpoint(run_dir / "last.pth")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
