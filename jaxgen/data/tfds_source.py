"""Datasets of the TFDS catalog, prepared once into a TFDS data dir and cached as uint8 arrays.

Preparing (download + encode) a catalog image dataset needs TensorFlow (the `prepare` extra:
`pip install -e '.[prepare]'`); reading a prepared one does not. The first read of a split also writes
`<data_dir>/jaxgen_cache/<name>/<split>.npz`, so later runs start in a second (jobs started together prepare it once:
the first holds a lock, the others wait for it). Offline, a missing dataset fails at once with a message that says
how to provide it.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxgen import parallel, runtime
from jaxgen.atomic import write_npz
from jaxgen.data import cache as caches
from jaxgen.data import image_folder
from jaxgen.data.cache import CHUNK, PROGRESS_MIN_FILES, data_dir
from jaxgen.data.image_folder import crop_and_resize

log = logging.getLogger(__name__)

# Where each dataset's files come from (host, port), checked before a download so that an offline machine fails in
# seconds instead of retrying for minutes. The port follows the scheme of the URLs in tfds 4.9.10's
# url_checksums/<name>.txt (celeb_a: datasets/celeb_a/checksums.tsv): https 443, http 80.
DOWNLOAD_HOSTS = {
    "mnist": ("storage.googleapis.com", 443),
    "fashion_mnist": ("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80),  # S3 website endpoint: http only
    "cifar10": ("www.cs.toronto.edu", 443),
    "celeb_a": ("drive.google.com", 443),  # drive.google.com/uc?export=download&id=...
}


class DatasetUnavailableError(RuntimeError):
    """The dataset is not prepared in the data dir and cannot be prepared here."""


def can_reach(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """True if a TCP connection to host:port opens within `timeout` seconds; where the environment names a proxy
    for the scheme (`$HTTPS_PROXY`, `$HTTP_PROXY`: TFDS downloads through it) and does not bypass it for `host`,
    a connection to that proxy instead."""
    import urllib.parse  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    proxy = urllib.request.getproxies().get("https" if port == 443 else "http")
    if proxy and not urllib.request.proxy_bypass(host):
        parsed = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if parsed.hostname:
            host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
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
        f"pip install tensorflow-cpu (the 'prepare' extra: pip install -e '.[prepare]' in a checkout) && "
        f"python -c \"import tensorflow_datasets as tfds; "
        f"tfds.builder('{name}', data_dir='{ddir}').download_and_prepare(file_format='array_record')\""
    )


# What to train on offline instead, for a dataset whose shape the shipped digits (28x28x1) do not have.
OFFLINE_HINTS = {"cifar10": "or check the config offline on generated 32x32x3 images: its :smoke variant, or "
                            "--config.data.name=synthetic --config.data.image_shape='(32, 32, 3)'"}


def _unavailable(name: str, ddir: Path, why: str, hint: str = "") -> DatasetUnavailableError:
    """The error for a dataset that cannot be had here; `hint` (or the dataset's OFFLINE_HINTS entry) replaces the
    closing 'or train on mnist_5k' line."""
    hint = hint or OFFLINE_HINTS.get(name, "")
    end = f",\n  {hint}." if hint else ".\n  Or train on the digits that ship with jaxgen: --config.data.name=mnist_5k"
    return DatasetUnavailableError(
        f"TFDS dataset {name!r} is not prepared in {ddir} and {why}.\n"
        f"  To provide it, on a machine with a network run:\n    {_prepare_command(name, ddir)}\n"
        f"  then copy {ddir / name} to this machine's data dir (--config.data.data_dir=DIR or $TFDS_DATA_DIR){end}"
    )


def _source(name: str, split: str, data_config, hint: str = ""):
    """(the TFDS data source of `split`, whether its records may be cached), preparing the dataset first if it is
    missing and can be prepared here. Not the records of a dataset still not prepared after that
    (tfds.testing.mock_data's random records): a later real run would take them for the dataset."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 (heavy; only where data is read)

    ddir = data_dir(data_config)
    try:
        builder = tfds.builder(name, data_dir=str(ddir), file_format="array_record")
    except ValueError as e:  # prepared in another format: "File format is already set to FileFormat.TFRECORD"
        if "file format" not in str(e).lower():
            raise
        raise DatasetUnavailableError(
            f"TFDS dataset {name!r} is prepared in {ddir} in another file format than the array_record jaxgen reads "
            f"(TFDS: {str(e).splitlines()[-1][:200]}).\n  Convert it into another data dir (needs TensorFlow), "
            f"<version> being the folder in {ddir / name}:\n    tfds convert_format "
            f"--dataset_version_dir={ddir / name}/<version> --out_file_format=array_record "
            f"--out_dir=NEWDIR/{name}/<version>\n  then run with --config.data.data_dir=NEWDIR; or prepare it as "
            f"array_record there:\n    {_prepare_command(name, Path('NEWDIR'))}") from e
    with runtime.absl_errors_only():  # TFDS warns "Variant folder ... has no dataset_info.json" if not prepared
        prepared = builder.is_prepared()
    if not prepared:
        if not data_config.download:
            raise _unavailable(name, ddir, "data.download is False", hint)
        host, port = DOWNLOAD_HOSTS.get(name, (None, None))
        if host and not can_reach(host, port):
            raise _unavailable(name, ddir, f"cannot be downloaded here (no connection to {host}:{port})", hint)
        if not has_tensorflow():
            raise _unavailable(name, ddir, "preparing it needs TensorFlow, which is not installed", hint)
        # Jobs started together on a data dir without the dataset: the first downloads and prepares it, the others
        # wait for it (TFDS alone would download it in each, racing to rename the same folder).
        with caches.filling_lock(ddir / "jaxgen_cache" / name,
                                  f"Another process is preparing TFDS {name} in {ddir}; waiting for it"):
            with runtime.absl_errors_only():
                prepared = builder.is_prepared()
            if prepared:  # by the job this one waited for: a builder made now reads its splits
                builder = tfds.builder(name, data_dir=str(ddir), file_format="array_record")
            else:
                log.info("Preparing TFDS %s in %s (once)", name, ddir)
                builder.download_and_prepare(file_format="array_record")
    source = builder.as_data_source(split=split)
    mocked = getattr(type(builder).as_data_source, "__module__", "").startswith("tensorflow_datasets.testing")
    with runtime.absl_errors_only():
        cacheable = builder.is_prepared() and not mocked
    if not cacheable:
        log.warning("TFDS %s %s: its %s records are not cached", name,
                    "is read through tfds.testing.mock_data" if mocked else f"is not prepared in {ddir}", split)
    return source, cacheable


def _read_split(source, cacheable: bool, image_fn: Callable | None, label_key: str | None, desc: str
                ) -> tuple[np.ndarray, np.ndarray, bool]:
    """All records of a data source -> (uint8 [N, H, W, C], int32 [N], `cacheable`); `image_fn` maps each uint8
    [h, w, c] image (e.g. crop and resize); no `label_key` gives label 0. Records are decoded in threads, in
    order."""
    from tqdm.auto import tqdm  # noqa: PLC0415

    n = len(source)

    def read(start: int) -> tuple[np.ndarray, np.ndarray]:
        records = [source[i] for i in range(start, min(n, start + CHUNK))]
        images = [np.asarray(r["image"], np.uint8) for r in records]
        if image_fn is not None:
            images = [image_fn(im) for im in images]
        labels = [int(r[label_key]) if label_key else 0 for r in records]
        return np.stack(images), np.asarray(labels, np.int32)

    starts = range(0, n, CHUNK)
    images, labels = [], []
    with (caches.thread_pool() as pool,
          tqdm(total=n, unit="img", desc=desc, mininterval=1.0,
               disable=n < PROGRESS_MIN_FILES or not sys.stderr.isatty()) as bar):  # no \r in log files
        for start, (im, lb) in zip(starts, pool.map(read, starts)):
            images.append(im)
            labels.append(lb)
            bar.update(min(CHUNK, n - start))
    return np.concatenate(images), np.concatenate(labels), cacheable


def _cached(cache: Path, read: Callable) -> tuple[np.ndarray, np.ndarray]:
    """The arrays in `cache` if it exists (and reads), else `read()` -> (image, label, cacheable), written to `cache`
    (tmp then rename) for the next run when cacheable.
    In a multi-host run process 0 reads (and prepares) first, so a shared data dir is filled once."""
    return parallel.process_0_first(lambda: _read_cached(cache, read), needed=not caches.readable(cache),
                                    what=f"prepare {cache.parent.name} (cache {cache})")


def _read_cached(cache: Path, read: Callable) -> tuple[np.ndarray, np.ndarray]:
    if cache.exists():
        try:
            return caches.read_arrays(cache)
        except caches.TORN_CACHE as e:  # torn by a copy or a full disk
            log.warning("The cached %s at %s cannot be read (%s: %s); reading the dataset again", cache.parent.name,
                        cache, type(e).__name__, e)
    image, label, cacheable = read()
    if not cacheable:
        return image, label
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        write_npz(cache, image=image, label=label)
    except OSError as e:  # a read-only data dir still trains, only slower to start next time
        log.warning("Could not cache %s at %s: %s", cache.parent.name, cache, e)
    return image, label


def loader(name: str) -> Callable:
    """A loader for the catalog dataset `name`: (data_config, split) -> (uint8 [N, H, W, C], int32 [N])."""

    def load(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
        cache = data_dir(data_config) / "jaxgen_cache" / name / f"{split}.npz"
        return _cached(cache, lambda: _read_split(*_source(name, split, data_config), None, "label", f"{name} {split}"))

    load.__name__ = f"load_{name}"
    load.__doc__ = f"TFDS {name!r}, prepared once into the data dir and cached as uint8 arrays."
    return load


CELEB_A_HINT = "or point --config.data.path at the img_align_celeba folder you already have"


def celeb_a(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """TFDS `celeb_a` ('train', 'validation', 'test'; 218x178 RGB faces) -> (uint8 [N, R, R, 3], zeros int32 [N]).

    With data.resolution > 0 (or data.crop > 0) each face is centre-cropped (data.crop source pixels; 0 = the
    largest centred square) and resized to R x R before caching, in
    `<data_dir>/jaxgen_cache/celeb_a/<split>_r<resolution>_c<crop>.npz`. When data.path is set, TFDS is not
    tried at all (its Google Drive download often fails): data.path is read as an `image_folder` (the
    img_align_celeba folder) with the same crop and resize, its 'test' split taken by data.test_percent.
    """
    if data_config.path:
        log.info("celeb_a %s: reading data.path=%s as an image folder (TFDS is not used when data.path is set)",
                 split, data_config.path)
        return image_folder.image_folder(data_config, split)
    res, crop = int(data_config.resolution), int(data_config.crop)
    cache = data_dir(data_config) / "jaxgen_cache" / "celeb_a" / f"{split}_r{res}_c{crop}.npz"
    image_fn = (lambda im: crop_and_resize(im, res, crop)) if res > 0 or crop > 0 else None
    read = lambda: _read_split(*_source("celeb_a", split, data_config, hint=CELEB_A_HINT), image_fn, None,  # noqa: E731
                               f"celeb_a {split}")
    return _cached(cache, read)
