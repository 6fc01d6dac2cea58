"""Files written whole or not at all: a reader (another process, host or user, or the next run after a kill)
sees the old file or the new one, never half of one. Lines appended to a log (`append_line`) start on a line of their
own, after a torn one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np


def _umask() -> int:
    """The process's umask: read from /proc on Linux; elsewhere set and restored, which for that instant gives files
    another thread creates mode 0666."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0)
        os.umask(mask)
        return mask


# What open() would give a new file: mkstemp's 0600 would keep others who share the data dir from reading it.
FILE_MODE = 0o666 & ~_umask()


def write_with(path: Path, write: Callable[[IO[bytes]], object], suffix: str = ".tmp") -> Path:
    """write(f) into a unique temporary file in the same folder (binary mode), then os.replace onto `path`: writers
    (processes, hosts, users; their PIDs can coincide in containers) never collide. The file gets the mode open()
    would give it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: whole after a power loss too
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def write_npz(path: Path, *, compress: bool = False, **arrays) -> Path:
    """np.savez (np.savez_compressed with `compress`), atomically (`write_with`)."""
    save = np.savez_compressed if compress else np.savez
    return write_with(path, lambda f: save(f, **arrays), suffix=".tmp.npz")


def write_text(path: Path, text: str) -> Path:
    """A UTF-8 text file, atomically (`write_with`)."""
    return write_with(path, lambda f: f.write(text.encode()))


def append_line(path: Path, line: str) -> None:
    """Appends `line` (one line of UTF-8 text, without its newline) and a newline to the file at `path`; a file that a
    killed run or a full disk left without its last newline gets one first, so that a torn last line stays a line of
    its own (that a reader skips or reports) and does not swallow this one."""
    with Path(path).open("a+b") as f:
        data = line.encode() + b"\n"
        if f.tell() and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
            data = b"\n" + data
        f.write(data)
