"""Writing run files safely: atomic replacement and the usual file mode (specs/training.md §5).

A reader, or a crash, sees the old file or the new one, never a part: the data go to a
temporary file in the same folder, which is then renamed over the target. The temporary
file gets the mode any new file of the run gets (``0666 & ~umask``), not ``mkstemp``'s 0600.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path

#: Suffix of the temporary files written before the rename.
TEMPORARY_SUFFIX = ".tmp"


def default_file_mode():
    """The mode a new file gets from ``open`` under the process's umask (0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path, mode="w", fsync=False):
    """``with atomic_write(path) as f: ...`` writes ``path`` atomically; on any error the
    temporary file is removed and an existing ``path`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json_atomically(data, path, **dump_options):
    """``json.dump(data)`` to ``path`` atomically (NaN refused: write None for missing values)."""
    with atomic_write(path) as f:
        json.dump(data, f, allow_nan=False, **dump_options)
        f.write("\n")
    return Path(path)
