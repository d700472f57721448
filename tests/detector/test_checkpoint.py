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


def test_resume_refuses_a_different_config(tmp_path):
    root = tmp_path / "data"
    config = tiny_config(root, "demo_atss")
    train(config, tmp_path / "run", progress=False, stop_after=1, evaluate_at_end=False)
    other = tiny_config(root, "demo_atss", "solver.lr=0.02")
    with pytest.raises(ValueError, match="config differs"):
        train(other, tmp_path / "run", resume=True, progress=False)
