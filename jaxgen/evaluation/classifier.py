"""An offline quality metric for labelled image datasets: a small classifier jaxgen trains on the dataset's labels
(cached in the data dir), whose penultimate features give a classifier-feature FID and whose predictions give the
class histogram of generated samples against the data's.

No downloaded weights: it works on `mnist_5k` on a machine without a network. Its numbers compare runs on the same
dataset with the same classifier (the cache key names both); they are not Inception FIDs.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxgen import atomic, parallel
from jaxgen.data import cache as caches
from jaxgen.data.cache import TORN_CACHE, data_dir

log = logging.getLogger("jaxgen")

CACHE_VERSION = 1
TRAIN_STEPS = 1500
BATCH = 128


class DigitClassifier(nn.Module):
    """Images [B, H, W, C] in [0, 1] -> (features [B, 128], logits [B, num_classes])."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(32, (3, 3), (2, 2))(x))
        h = nn.relu(nn.Conv(64, (3, 3), (2, 2))(h))
        features = nn.relu(nn.Dense(128)(h.reshape(h.shape[0], -1)))
        return features, nn.Dense(self.num_classes)(features)


def train(images: np.ndarray, labels: np.ndarray, *, steps: int = TRAIN_STEPS, seed: int = 0) -> dict:
    """Classifier params trained with Adam on uint8 images [N, H, W, C] and integer labels [N]."""
    num_classes = int(labels.max()) + 1
    x_all, y_all = jnp.asarray(images), jnp.asarray(labels, jnp.int32)
    params, opt = _init(np.int32(seed), num_classes=num_classes, shape=tuple(images.shape[1:]))
    for i in range(steps):
        previous = params
        params, opt = _train_step(params, opt, x_all, y_all, np.int32(seed), np.int32(i), num_classes=num_classes)
        jax.block_until_ready(previous)  # one step in flight: a signal's handler never waits for the whole queue
    return params


@functools.partial(jax.jit, static_argnames=("num_classes", "shape"))
def _init(seed, *, num_classes: int, shape: tuple[int, ...]):
    """The classifier's fresh params and Adam state, built as one program (run op by op, ~50 programs)."""
    params = DigitClassifier(num_classes).init(jax.random.key(seed), jnp.zeros((1, *shape)))
    return params, _optimizer().init(params)


def _optimizer() -> optax.GradientTransformation:
    return optax.adam(1e-3)


@functools.partial(jax.jit, static_argnames="num_classes")
def _train_step(params, opt, x_all, y_all, seed, i, *, num_classes: int):
    """One Adam step on a batch of BATCH examples drawn with replacement from the images (uint8 [N, H, W, C], on
    the device) and labels (int32 [N]) by the key of (seed, i). The data are arguments, not constants of the
    closure: a captured array would be copied into the compiled program."""
    idx = jax.random.randint(jax.random.fold_in(jax.random.key(seed + 1), i), (BATCH,), 0, x_all.shape[0])
    x = x_all[idx].astype(jnp.float32) / 255.0

    def loss(p):
        logits = DigitClassifier(num_classes).apply(p, x)[1]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_all[idx]).mean()

    grads = jax.grad(loss)(params)
    updates, opt = _optimizer().update(grads, opt, params)
    return optax.apply_updates(params, updates), opt


def load_or_train(data_config, images: np.ndarray, labels: np.ndarray, *, steps: int = TRAIN_STEPS) -> dict:
    """The classifier for this dataset: from `<data dir>/jaxgen_cache/classifier/<key>.npz`, else trained and saved.

    The key hashes the dataset name, the images' shape, a digest of images and labels, the steps and CACHE_VERSION.
    """
    digest = hashlib.sha1(images.tobytes() + np.asarray(labels, np.int64).tobytes()).hexdigest()[:12]
    key = f"{data_config.name.replace(':', '_').replace('/', '_')}_{'x'.join(map(str, images.shape))}_{digest}"
    path = data_dir(data_config) / "jaxgen_cache" / "classifier" / f"{key}_s{steps}_v{CACHE_VERSION}.npz"
    # Several processes: process 0 trains and caches it first, the others then read its cache (a shared data dir)
    # rather than each training one and overwriting the others' cache.
    return parallel.process_0_first(lambda: _load_or_train(path, data_config, images, labels, steps),
                                    needed=not path.exists(), what=f"train the metric classifier into {path}")


def _load_or_train(path: Path, data_config, images: np.ndarray, labels: np.ndarray, steps: int) -> dict:
    params = _cached(path, warn=False)
    if params is not None:
        return params
    # Jobs of a sweep started at once on a new data dir: the first trains it, the others wait and read its cache.
    with caches.filling_lock(path.parent, f"Another process is training the metric classifier into {path}; "
                              f"waiting for it, then reading it", name=f"{path.stem}.lock"):
        params = _cached(path, warn=True)
        if params is not None:
            return params
        log.info("Training the metric classifier on %s (%d images, %d steps; to be cached in %s)", data_config.name,
                 len(images), steps, path)
        params = train(images, labels, steps=steps)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(params).items()}
            atomic.write_npz(path, **flat)  # atomic, unique temporary name: hosts may share the data dir
        except OSError as e:  # a read-only data dir: the metric still works, the classifier is retrained next time
            log.warning("Could not cache the metric classifier at %s: %s", path, e)
    return params


def _cached(path: Path, warn: bool) -> dict | None:
    """The classifier cached at `path`, or None where there is none, or it cannot be read (said when `warn`)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v) for k, v in z.items()})
    except TORN_CACHE as e:  # a torn or corrupt cache file: train again
        if warn:
            log.warning("The cached metric classifier %s cannot be read (%s); training it again", path, e)
        return None


@functools.partial(jax.jit, static_argnames="num_classes")
def _apply(params, x, *, num_classes: int):
    features, logits = DigitClassifier(num_classes).apply(params, x)
    return features, jax.nn.softmax(logits)


def embed(params: dict, images: np.ndarray, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(features [N, 128], class probabilities [N, classes]) of images: uint8 [N, H, W, C] or floats in [0, 1].

    In batches of `batch`, the last padded to the same size: one compilation per batch size and image shape."""
    num_classes = params["params"]["Dense_1"]["bias"].shape[0]
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise ValueError(f"images must be uint8 or floats in [0, 1], got values in [{images.min():.3g}, "
                         f"{images.max():.3g}]")
    feats, probs = [], []
    for s in range(0, len(images), batch):
        chunk = images[s : s + batch]
        k = len(chunk)
        if k < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - k, *chunk.shape[1:]), chunk.dtype)])
        f, p = _apply(params, jnp.asarray(chunk, jnp.float32), num_classes=num_classes)
        feats.append(np.asarray(f)[:k])
        probs.append(np.asarray(p)[:k])
    return np.concatenate(feats), np.concatenate(probs)
