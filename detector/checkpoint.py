"""Checkpoints: atomic writes, RNG states, resume (specs/training.md §4).

A checkpoint is a plain dict saved with ``torch.save`` and read back with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only (the
config is stored as ``configs.to_dict``; NumPy's RNG state as lists).
"""
import contextlib
import random
from pathlib import Path

import numpy as np
import torch

from detector.files import TEMPORARY_SUFFIX, atomic_write

#: Checkpoint format version, stored in every file.
FORMAT_VERSION = 1
#: File name of the most recent checkpoint in a run directory.
LAST = "last.pth"


def save_checkpoint(state, path):
    """Write ``state`` to ``path`` atomically (``files.atomic_write``: a temp file in the same
    folder, fsync, then ``os.replace``). A reader (or a crash) sees the old file or the new
    one, never a part; the file gets the mode of any new file of the run (0644 under umask
    022), not 0600."""
    with atomic_write(path, "wb", fsync=True) as f:
        torch.save({"format_version": FORMAT_VERSION, **state}, f)
    return Path(path)


def load_checkpoint(path, map_location="cpu"):
    """Read a checkpoint written by ``save_checkpoint`` (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a damaged file or one that is not a checkpoint of this project; the
            message names the file and, when the run has one, the newest ``epoch_XXX.pth``
            that could be used instead.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, corrupt, or a pickle with other objects than data
        raise ValueError(f"{path}: damaged, or not a labelassign checkpoint ({type(error).__name__})"
                         f"{_alternative(path)}") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a labelassign checkpoint (format_version {FORMAT_VERSION}){_alternative(path)}")
    return state


def remove_orphan_temporaries(folder):
    """Delete the temporary files an interrupted ``save_checkpoint`` left in ``folder``
    (a kill between creating and renaming them); return their paths."""
    orphans = sorted(Path(folder).glob(f".*.pth.*{TEMPORARY_SUFFIX}"))
    for orphan in orphans:
        with contextlib.suppress(FileNotFoundError):
            orphan.unlink()
    return orphans


def _alternative(path):
    """"; the newest earlier checkpoint of this run is ..." or ""."""
    earlier = sorted(p for p in path.parent.glob("epoch_*.pth") if p.resolve() != path.resolve())
    if not earlier:
        return ""
    return (f"; the newest other checkpoint of this run is {earlier[-1]}: to resume from it, copy it to "
            f"{path.parent / LAST}")


def rng_states():
    """Python, NumPy, torch CPU (and CUDA) generator states as checkpoint-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {
        "python": _to_lists(random.getstate()),
        "numpy": {"kind": kind, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states):
    """Restore what ``rng_states`` returned."""
    random.setstate(_to_tuples(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value
