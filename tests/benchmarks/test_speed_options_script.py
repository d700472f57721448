"""``scripts/speed_options.py`` times the option sets it is asked for, profiles float32 steps
with ``--profile`` (groups that add up to the whole), and refuses unknown option sets with one
line (the full tables are commands in docs/benchmarks.md, not part of the tests)."""
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))

import speed_options  # noqa: E402

pytestmark = pytest.mark.torch

TINY = ["data.digits_num_train=8", "data.digits_num_val=4", "data.digits_image_size=64", "data.min_size=64",
        "data.max_size=64", "data.test_min_size=64", "solver.batch_size=2", "backbone.tiny_widths=8,16,16,32",
        "fpn.out_channels=16", "head.width=16", "head.depth=1", "head.gn_groups=8"]


def _rows(lines, header_start):
    start = next(index for index, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_only_float32_and_a_profile_whose_groups_add_up(tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    speed_options.main(["demo", f"data.root={tmp_path}", *TINY, "--only", "float32", "--steps", "1", "--warmup", "0",
                        "--threads", "1", "--profile", "1"])
    torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    timed = _rows(lines, "| option |")
    assert [row[0] for row in timed] == ["float32"] and float(timed[0][1]) > 0
    groups = _rows(lines, "| group |")
    assert [row[0] for row in groups] == [label for label, _ in speed_options.PROFILE_GROUPS]
    assert float(groups[0][1]) > 0  # a training step has a convolution backward
    total = next(re.search(r": ([0-9.]+) ms of operators' self CPU time per step", line)
                 for line in lines if line.startswith("Profile of"))
    assert sum(float(row[1]) for row in groups) == pytest.approx(float(total.group(1)), abs=0.3)  # rounding of 4 cells
    operators = _rows(lines, "| operator |")
    assert 0 < len(operators) <= 15 and all(row[0].startswith("`") for row in operators)


def test_unknown_option_set_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        speed_options.main(["demo", "--only", "float64"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error: --only: unknown option sets ['float64']" in err and "Traceback" not in err
