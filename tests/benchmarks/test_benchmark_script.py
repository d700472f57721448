"""``scripts/benchmark.py`` runs end to end on one small cell and its table has every column
it promises (the full table is a command in docs/benchmarks.md, not part of the tests)."""
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import benchmark  # noqa: E402

pytestmark = pytest.mark.torch


def test_one_loss_step_and_one_assigner_cell(tmp_path):
    import torch

    out = tmp_path / "table.md"
    threads = torch.get_num_threads()
    benchmark.main(["--quick", "--sizes", "1", "--only", "fcos", "loss step", "--repeats", "1",
                    "--repeats-reference", "1", "--no-cuda", "--markdown", str(out)])
    text = out.read_text()
    assert text.startswith("Machine: ")  # the table names its machine
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert {"NumPy loop ms/image", "torchvision ms/image", "read floor ms/image", "exp floor ms/image"} <= set(header)
    rows = {line.split("|")[1].strip(): [cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]}
    assert set(rows) == {"fcos", "loss step", "loss step fwd+bwd"}
    fwd_bwd = dict(zip(header, rows["loss step fwd+bwd"]))
    for floor in ("read floor", "exp floor"):  # both floors measured, in floors of the row's own time
        assert float(fwd_bwd[f"{floor} ms/image"]) > 0 and float(fwd_bwd["torch ms/image"]) > 0
    assert float(dict(zip(header, rows["fcos"]))["torchvision ms/image"]) > 0
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads  # no global state left behind
