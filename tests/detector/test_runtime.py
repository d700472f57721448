"""Tests of detector/runtime.py's allocator setting (specs/training.md §6, "Freed memory")."""
import platform
import subprocess
import sys

import pytest

pytest.importorskip("torch")

from detector import runtime  # noqa: E402

pytestmark = pytest.mark.torch

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 20 "steps" that each allocate and touch ten 4 MiB blocks (glibc's malloc, which torch's CPU
# allocator calls), like a step's activations, then free them all; print the page faults.
_FAULTS = """
import ctypes, resource, sys
from detector import runtime
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes, libc.memset.argtypes = [ctypes.c_void_p], [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
if sys.argv[1] == "keep":
    assert runtime.keep_freed_memory()
size = 4 * 2**20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    blocks = [libc.malloc(size) for _ in range(10)]
    for block in blocks:
        libc.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode):
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt")
def test_freed_blocks_are_reused_instead_of_faulted_in_again():
    plain, kept = _faults("plain"), _faults("keep")
    # by default the blocks go back to the system and each step faults its 10,240 pages in
    # again (about 200,000 in all); kept, the first step's pages are reused
    assert kept * 4 < plain, (plain, kept)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.setattr(runtime.ctypes, "CDLL", lambda *_: pytest.fail("the C library was called"))
    assert runtime.keep_freed_memory() is False


def test_channels_last_on_a_cpu_with_threads_warns_of_the_known_crash(monkeypatch, caplog):
    import torch

    model = torch.nn.Conv2d(3, 4, 1)
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 2)
    with caplog.at_level("WARNING", logger="detector.runtime"):
        prepared = runtime.prepare_model(model, channels_last=True)
    assert "can crash" in caplog.text and "threads=1" in caplog.text
    assert prepared.weight.is_contiguous(memory_format=torch.channels_last)
    caplog.clear()
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: 1)
    with caplog.at_level("WARNING", logger="detector.runtime"):
        runtime.prepare_model(torch.nn.Conv2d(3, 4, 1), channels_last=True)
    assert caplog.text == ""
