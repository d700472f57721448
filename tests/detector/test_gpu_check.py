"""scripts/gpu_check.sh: runs (and skips its GPU parts) on a CPU-only machine; its training
overrides are a valid config (docs/benchmarks.md "GPU")."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from detector.configs import get_config  # noqa: E402

pytestmark = pytest.mark.torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"


def test_gpu_check_skips_the_gpu_parts_without_cuda(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHON=sys.executable)
    done = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    results = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "CUDA available: False" in results
    assert "no CUDA device on this machine: the GPU parts are skipped" in results
    assert not (tmp_path / "out" / "runs").exists()  # nothing was trained


def test_gpu_check_training_overrides_are_a_valid_config():
    text = SCRIPT.read_text()
    words = shlex.split(re.search(r"train_args=\((.*?)\)\n", text, flags=re.S).group(1).replace('"$out/', '"/tmp/x/'))
    name, overrides = words[0], words[1:]
    config = get_config(name, [*overrides, "solver.amp=fp16"])
    assert (config.solver.max_iters, config.data.min_size, config.backbone.name) == (60, (800,), "resnet50")
    assert config.data.dataset == "digits" and config.device == "cuda"


@pytest.mark.parametrize("script", ["gpu_benchmark.py", "speed_options.py"])
def test_gpu_scripts_have_their_usage(script):
    done = subprocess.run([sys.executable, str(SCRIPT.parent / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "usage:" in done.stdout
