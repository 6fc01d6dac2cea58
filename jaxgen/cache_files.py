"""Cache files that the processes and hosts of a run, and other users of a data dir, share."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# What open() would give a new file: mkstemp's 0600 would keep others who share the data dir from reading it.
FILE_MODE = 0o666 & ~_umask()


def write_npz(path: Path, **arrays) -> None:
    """np.savez to a unique temporary name in the same folder, then os.replace: a reader never sees half a file,
    and writers (processes, hosts, users; their PIDs can coincide in containers) never collide. The file gets the
    mode open() would give it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp.npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
