"""Samples of a trained model for evaluation and --mode=sample: the fixed stream of latents (optionally truncated),
a class-conditional model's classes, and the data-parallel sampler that makes uint8 images of them."""

from __future__ import annotations

import functools
import logging
import numbers
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.evaluation import latent_mixture
from jaxgen.reporting.images import quantize

log = logging.getLogger("jaxgen")


def stream_latents(key: jax.Array, index: jax.Array, dim: int, truncation: float = 0.0,
                   mixture: dict | None = None) -> jax.Array:
    """Latents [len(index), dim] ~ N(0, I) of samples `index` of the fixed stream `key`: sample j's from
    fold_in(key, j), so which samples an evaluation sees depends neither on the batch size it makes them in nor
    on the devices that make them. truncation t > 0: each coordinate from N(0, 1) truncated to [-t, t] (the
    truncation trick of Brock et al. 2019, BigGAN: less variety, each sample closer to the mode), else untruncated.
    mixture (a VAE's sample.latents='gmm', `latent_mixture.fit`'s): from that Gaussian mixture instead, the
    truncation applying to each component's standard-normal noise."""
    if mixture:
        return jax.vmap(lambda j: latent_mixture.draw(mixture, jax.random.fold_in(key, j), dim, truncation))(index)
    if truncation > 0:
        draw = lambda k: jax.random.truncated_normal(k, -truncation, truncation, (dim,))  # noqa: E731
    else:
        draw = lambda k: jax.random.normal(k, (dim,))  # noqa: E731
    return jax.vmap(lambda j: draw(jax.random.fold_in(key, j)))(index)


def check_truncation(truncation) -> None:
    """sample.truncation: 0 (off) or a positive bound, in standard deviations of z's coordinates."""
    if isinstance(truncation, bool) or not isinstance(truncation, numbers.Real) or not 0 <= truncation < float("inf"):
        raise ValueError(f"sample.truncation must be 0 (off) or a bound > 0 on each latent coordinate, in standard "
                         f"deviations (BigGAN's truncation trick: 0.5-2 is the usual range), got {truncation!r}")


def check_classes(classes, num_classes: int) -> None:
    """sample.classes: () (every class in turn), or class ids of a class-conditional model (num_classes > 0)."""
    if isinstance(classes, str | bytes) or not all(isinstance(k, int | np.integer) and not isinstance(k, bool)
                                                     for k in classes):
        raise ValueError(f"sample.classes must be a tuple of class ids, e.g. --config.sample.classes='(7,)', got "
                         f"{classes!r}")
    if len(classes) and not num_classes:
        raise ValueError(f"sample.classes={tuple(classes)!r} chooses the classes of a class-conditional model's "
                         "samples; this model is unconditional (model.num_classes=0): leave sample.classes empty")
    bad = [int(k) for k in classes if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"sample.classes has {bad}, outside the model's classes 0..{num_classes - 1} "
                         f"(model.num_classes={num_classes})")


def sample_labels(n: int, num_classes: int, classes: tuple[int, ...] = ()) -> np.ndarray | None:
    """The classes of a class-conditional model's samples 0..n-1 (`make_sampler`'s): sample j is of class
    j % num_classes, every class equally often; with `classes` (sample.classes), of class classes[j % len(classes)].
    None when unconditional (num_classes 0)."""
    if not num_classes:
        return None
    order = np.asarray(classes, np.int32) if len(classes) else np.arange(num_classes, dtype=np.int32)
    return order[np.arange(n) % len(order)]


def make_sampler(sample_fn: Callable, mesh, *, key: jax.Array, dim: int, value_range: tuple[float, float],
                 num_classes: int = 0):
    """fn(variables, n, batch_size, truncation=0.0, classes=(), mixture=None) -> uint8 samples [n, H, W, C] of
    `sample_fn(variables, z)` (float images in `value_range`, per device) at the latents of the fixed stream `key`
    (`stream_latents`, truncated at `truncation` when > 0, compiled once per value; from `mixture` when given),
    data-parallel. num_classes > 0: `sample_fn(variables, z,
    labels)`, sample j of class j % num_classes, or with fn's `classes` of class classes[j % len(classes)]
    (`sample_labels`).

    Each call of the compiled body makes `batch_size` samples (a multiple of the mesh's device count), each device
    its share of them from its own latents, gathered on every device so that every process reads them all.
    Rounded to 0..255 as a PNG writer does (`quantize`); non-finite pixels are counted and logged, NaN and -inf
    written as 0, +inf as 255.
    `variables` are replicated over `mesh`, or host arrays."""
    lo, hi = value_range

    def body(variables, index, n, mixture, truncation, classes):
        order = jnp.asarray(classes if classes else range(num_classes), jnp.int32)
        labels = (order[index % len(order)],) if num_classes else ()
        z = stream_latents(key, index, dim, truncation, mixture)
        x = (sample_fn(variables, z, *labels).astype(jnp.float32) - lo) / (hi - lo)
        kept = (index < n).reshape(-1, *([1] * (x.ndim - 1)))  # the last batch's extra samples are not counted
        bad = jax.lax.psum(jnp.sum(~jnp.isfinite(x) & kept), parallel.AXIS)
        x = jnp.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
        return quantize(x), bad

    out = parallel.replicated(mesh)

    @functools.cache
    def compiled_at(truncation: float, classes: tuple[int, ...]):
        return jax.jit(jax.shard_map(functools.partial(body, truncation=truncation, classes=classes), mesh=mesh,
                                     in_specs=(P(), P(parallel.AXIS), P(), P()), out_specs=(P(parallel.AXIS), P()),
                                     check_vma=False), out_shardings=(out, out))

    def sample(variables, n: int, batch_size: int, truncation: float = 0.0, classes=(),
               mixture: dict | None = None) -> np.ndarray:
        parallel.check_batch(batch_size, mesh, "eval.batch_size")
        check_truncation(truncation)
        check_classes(classes, num_classes)
        compiled = compiled_at(float(truncation), tuple(int(k) for k in classes))
        if not all(isinstance(v, jax.Array) for v in jax.tree.leaves(variables)):
            variables = parallel.put_replicated(variables, mesh)
        mixture = parallel.put_replicated(mixture, mesh) if mixture else {}
        parts, bad_counts = [], []

        def batch(start):
            return compiled(variables, parallel.put_batch(np.arange(start, start + batch_size, dtype=np.int32), mesh),
                            np.int32(n), mixture)

        def fetch(job):
            parts.append(np.asarray(job[0]))
            bad_counts.append(int(job[1]))

        parallel.one_behind((batch(start) for start in range(0, n, batch_size)), fetch)
        bad = sum(bad_counts)
        if bad:
            log.warning("%d non-finite pixel values in generated samples (NaN, -inf written as 0, +inf as 255): "
                        "the model has diverged", bad)
        return np.concatenate(parts)[:n]

    return sample


def to_uint8(images: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    """Float images in `value_range` -> uint8 0..255, rounded as a PNG writer does."""
    lo, hi = value_range
    x = (np.asarray(images, np.float32) - lo) / (hi - lo)
    if not np.all(np.isfinite(x)):
        log.warning("%d non-finite pixel values in generated samples (NaN, -inf written as 0, +inf as 255): "
                    "the model has diverged", int(np.sum(~np.isfinite(x))))
        x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0)
    return quantize(x)
