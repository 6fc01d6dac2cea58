"""jaxgen's data caches: where they live (the data dir), how they are read whole or found torn, the lock that lets
jobs started together fill one cache once, and the thread pool that decodes into them. Shared by `image_folder`,
`tfds_source` and the evaluation's caches (reference statistics, the metric classifier)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

log = logging.getLogger("jaxgen")

PROGRESS_MIN_FILES = 1000  # a progress bar from this many images up
CHUNK = 64  # images per thread-pool task


def data_dir(data_config) -> Path:
    """The TFDS data dir, also the root of jaxgen's caches: `data.data_dir`, else $TFDS_DATA_DIR, else
    ~/tensorflow_datasets. A URL (gs://...) is refused: jaxgen's caches and readers go through the filesystem, and
    Path('gs://b/d') would be the relative path 'gs:/b/d' under the working directory."""
    if data_config.data_dir in ("None", "none", "null"):  # --config.data.data_dir=None gives the string 'None'
        raise ValueError(f"data.data_dir={data_config.data_dir!r} would be a folder of that name; for the default "
                         f"($TFDS_DATA_DIR, else ~/tensorflow_datasets) pass --config.data.data_dir=''")
    d = data_config.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    if "://" in str(d):
        where = "data.data_dir" if data_config.data_dir else "$TFDS_DATA_DIR"
        raise ValueError(f"{where}={d} is a URL; jaxgen reads and caches data through the filesystem: mount the "
                         f"bucket (e.g. with gcsfuse) and pass the mounted path, or copy the prepared dataset to a "
                         f"local or shared disk")
    return Path(d).expanduser()


def num_workers() -> int:
    """Decode threads: the CPUs this process may use (Pillow releases the GIL while it decodes and resizes)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


@contextlib.contextmanager
def thread_pool():
    """A pool of num_workers() decode threads. When the block raises (an error, or an interruption: Ctrl-C, or
    launch.py's SIGTERM), the work still queued is cancelled instead of done first, so the run stops once the
    chunks under way end, not after the whole dataset is decoded."""
    pool = concurrent.futures.ThreadPoolExecutor(num_workers())
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


# What reading a missing, torn (a copy cut short, a full disk) or damaged .npz cache raises: read again, not fatal.
TORN_CACHE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def readable(cache: Path) -> bool:
    """Whether `cache` exists and is a whole .npz (its zip directory reads: a copy cut short has none)."""
    return cache.is_file() and zipfile.is_zipfile(cache)


def read_arrays(cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) of a cache .npz; raises one of TORN_CACHE where it is missing or damaged."""
    with np.load(cache) as z:
        return z["image"], z["label"]


@contextlib.contextmanager
def filling_lock(cache: Path, waiting: str, name: str = "decoding.lock"):  # its first use's file name
    """Holds an exclusive lock (fcntl.flock) on <cache>/<name> while this process fills the folder `cache` (decodes a
    folder of images into it, prepares a TFDS dataset; trains the metric classifier or computes reference features:
    a `name` per file): the other jobs of a sweep started at once on the same data wait for the first (logging
    `waiting`) and then read what it made, instead of all doing the work together. The kernel drops the lock when
    its process ends, however it ends. Where the data dir cannot be written or has no locks, nothing is held."""
    try:
        cache.mkdir(parents=True, exist_ok=True)
        f = open(cache / name, "a+")  # noqa: SIM115 (held while decoding)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("%s", waiting)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # no locks on this filesystem
            pass
        yield
    finally:
        f.close()
