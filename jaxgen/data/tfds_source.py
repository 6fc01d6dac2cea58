"""Datasets of the TFDS catalog, prepared once into a TFDS data dir and cached as uint8 arrays.

Preparing (download + encode) a catalog image dataset needs TensorFlow (`pip install 'jaxgen[prepare]'`); reading
a prepared one does not. The first read of a split also writes `<data_dir>/jaxgen_cache/<name>/<split>.npz`, so
later runs start in a second. Offline, a missing dataset fails at once with a message that says how to provide it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Where each dataset's files come from, checked before a download so that an offline machine fails in seconds
# instead of retrying for minutes.
DOWNLOAD_HOSTS = {
    "mnist": "storage.googleapis.com",
    "fashion_mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
    "cifar10": "www.cs.toronto.edu",
}


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared in the data dir and cannot be prepared here."""


def data_dir(data_config) -> Path:
    """The TFDS data dir: `data.data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    d = data_config.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(d).expanduser()


def can_reach(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """True if a TCP connection to host:port opens within `timeout` seconds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def has_tensorflow() -> bool:
    """True if TensorFlow imports (TFDS needs it to encode the catalog's image datasets)."""
    try:
        import tensorflow  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def _prepare_command(name: str, ddir: Path) -> str:
    return (
        f"pip install 'jaxgen[prepare]' && python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir='{ddir}').download_and_prepare(file_format='array_record')\""
    )


def _unavailable(name: str, ddir: Path, why: str) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"TFDS dataset {name!r} is not prepared in {ddir} and {why}.\n"
        f"  To provide it, on a machine with a network run:\n    {_prepare_command(name, ddir)}\n"
        f"  then copy {ddir / name} to this machine's data dir (--config.data.data_dir=DIR or $TFDS_DATA_DIR).\n"
        f"  Or train on the digits that ship with jaxgen: --config.data.name=mnist_5k"
    )


def _read_split(name: str, split: str, data_config) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only where data is read)

    ddir = data_dir(data_config)
    builder = tfds.builder(name, data_dir=str(ddir), file_format="array_record")
    if not builder.is_prepared():
        if not data_config.download:
            raise _unavailable(name, ddir, "data.download is False")
        host = DOWNLOAD_HOSTS.get(name)
        if host and not can_reach(host):
            raise _unavailable(name, ddir, f"cannot be downloaded here (no connection to {host})")
        if not has_tensorflow():
            raise _unavailable(name, ddir, "preparing it needs TensorFlow, which is not installed")
        log.info("Preparing TFDS %s in %s (once)", name, ddir)
        builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split=split)
    n = len(source)
    images, labels = [], []
    for start in range(0, n, 1000):
        records = [source[i] for i in range(start, min(n, start + 1000))]
        images.append(np.stack([np.asarray(r["image"], np.uint8) for r in records]))
        labels.append(np.asarray([int(r["label"]) for r in records], np.int32))
    return np.concatenate(images), np.concatenate(labels)


def loader(name: str) -> Callable:
    """A loader for the catalog dataset `name`: (data_config, split) -> (uint8 [N, H, W, C], int32 [N])."""

    def load(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
        cache = data_dir(data_config) / "jaxgen_cache" / name / f"{split}.npz"
        if cache.exists():
            with np.load(cache) as z:
                return z["image"], z["label"]
        image, label = _read_split(name, split, data_config)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, image=image, label=label)
            os.replace(tmp, cache)
        except OSError as e:  # a read-only data dir still trains, only slower to start next time
            log.warning("Could not cache %s/%s at %s: %s", name, split, cache, e)
        return image, label

    load.__name__ = f"load_{name}"
    load.__doc__ = f"TFDS {name!r}, prepared once into the data dir and cached as uint8 arrays."
    return load
