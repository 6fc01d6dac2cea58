"""GAN evaluation during training, data-parallel over the mesh: D's mean outputs on reals and on samples, the EMA
generator's standing statistics, and the latent paths of the interpolation grid.

These are the cheap in-training view; sample quality (FID, KID, ...) is jaxgen.evaluation.quality's. G samples in
eval mode (BatchNorm's running averages); D runs as training sees it (train mode: BatchNorm with the batch's
statistics synchronised over the devices, nothing stored), because its running averages mix real and fake batches.
A class-conditional pair (labels given) scores each real image with its own label and the fakes made beside it with
the same labels, as training does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgen import parallel
from jaxgen.models.gan import apply_model

STANDING_PASSES = 30  # train-mode passes that re-estimate the EMA generator's BatchNorm statistics


def generate(generator, g: dict, z: jax.Array, labels=None) -> jax.Array:
    """G(z) (G(z, labels), labels int [B], when class-conditional) in eval mode (BatchNorm's running averages), in
    G's output range [-1, 1]: the images samples and evaluations see. Jit-able."""
    return apply_model(generator, g, z, False, labels)[0]


def compile_scores(mesh, *, generator, discriminator, conditional: bool = False) -> Callable:
    """(G variables, D variables, reals [B, H, W, C] in [-1, 1], z [B, latent][, labels int [B] when
    `conditional`]) -> (D(reals), D(G(z))) [B] each, sharded over the mesh along B."""
    def body(g, d, x, z, *labels):
        y = labels[0] if labels else None
        fake = generate(generator, g, z, y)
        return tuple(apply_model(discriminator, d, v, True, y)[0] for v in (x, fake))

    batch = P(parallel.AXIS)
    specs = (P(), P(), batch, batch) + ((batch,) if conditional else ())
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=(batch, batch), check_vma=False))


def eval_count(split, *, num_examples: int, batch_size: int, mesh, image_folder: bool = False) -> int:
    """How many images of `split` (data.ImageData) an evaluation scores: the first `num_examples` (0: all), which
    must fill one batch of `batch_size` (a ValueError naming the fix if they do not)."""
    n = min(num_examples or len(split), len(split))
    if n < batch_size:
        capped = num_examples and num_examples < len(split)  # the cut, not the split, is short
        raise ValueError(
            f"eval needs at least eval.batch_size={batch_size} images, the {split.split} split has {len(split)}"
            + (f" (eval.num_examples={num_examples} of them are scored)" if capped else "")
            + "; lower eval.batch_size" + parallel.at_most(n, mesh.size)
            + (" or raise eval.num_examples" if capped else
               " or hold out more (data.validation_examples)" if split.split == "validation" else
               " or hold out more (data.test_percent)" if image_folder else ""))
    return n


def d_outputs(scores: Callable, g: dict, d: dict, images: np.ndarray, z: np.ndarray, *, batch_size: int,
              mesh, labels: np.ndarray | None = None) -> dict:
    """D's mean output on the uint8 `images` [n, H, W, C] and on G(z) [n] (`scores`: compile_scores'), in whole
    batches of `batch_size`, since D's BatchNorm runs on the batch's statistics, which padding would change: the
    last batch is the last `batch_size` images, of which those not scored yet count. Every process passes the same
    arrays. `labels` (int [n], class-conditional): the images' classes, also the fakes'. Returns {'d_real',
    'd_fake', 'num_examples'}."""
    n = len(images)
    real_sum = fake_sum = 0.0
    for i in range(0, n, batch_size):
        lo = min(i, n - batch_size)  # the last batch reaches back over images already scored, which do not count
        x = images[lo : lo + batch_size].astype(np.float32) / 127.5 - 1.0
        y = () if labels is None else (np.asarray(labels[lo : lo + batch_size], np.int32),)
        real, fake = scores(g, d, *parallel.put_batch((x, z[lo : lo + batch_size], *y), mesh))
        real_sum += float(jnp.sum(real[i - lo :]))
        fake_sum += float(jnp.sum(fake[i - lo :]))
    return {"d_real": real_sum / n, "d_fake": fake_sum / n, "num_examples": n}


def compile_refresh(mesh, generator, conditional: bool = False) -> Callable:
    """(G variables, z [B, latent][, labels int [B] when `conditional`]) -> G's variables with their statistics
    moved by one train-mode pass, sharded over the mesh along B (BatchNorm's statistics synchronised over the
    devices)."""
    body = lambda g, z, *y: apply_model(generator, g, z, True, *y)[1]  # noqa: E731
    specs = (P(), P(parallel.AXIS)) + ((P(parallel.AXIS),) if conditional else ())
    return jax.jit(jax.shard_map(body, mesh=mesh, in_specs=specs, out_specs=P(), check_vma=False))


def standing_statistics(refresh: Callable, g: dict, key: jax.Array, *, batch_size: int, latent_dim: int, mesh,
                        passes: int = STANDING_PASSES, num_classes: int = 0) -> dict:
    """G's variables with their BatchNorm running averages re-estimated for its weights ('standing statistics'):
    `passes` train-mode passes (`refresh`: compile_refresh's) over batches of latents drawn from `key`, each moving
    the averages by BN's momentum (0.9**30: 4% of the statistics `g` came with remain). Spectral norm's power
    iteration follows the weights the same way. For an EMA of the weights, whose averages in the state were
    gathered with the raw weights. Class-conditional (num_classes > 0): each pass's classes are drawn uniformly, as
    the samples' are evenly spread (a function of the key alone: --mode=sample reads no data)."""
    for i in range(passes):
        z = jax.random.normal(jax.random.fold_in(key, i), (batch_size, latent_dim))
        y = ()
        if num_classes:
            y = (np.asarray(jax.random.randint(jax.random.fold_in(key, passes + i), (batch_size,), 0, num_classes)),)
        g = refresh(g, *parallel.put_batch((np.asarray(z), *y), mesh))
    return g


@functools.partial(jax.jit, static_argnames="steps")  # one program, not ~20 ops each compiled on its own
def slerp_paths(z: jax.Array, steps: int) -> jax.Array:
    """Spherical interpolations between the pairs of latents `z` [pairs, 2, dim], `steps` points from the first of
    each pair to the second: [pairs * steps, dim]."""
    a, b = z[:, 0], z[:, 1]
    cos = jnp.sum(a * b, -1, keepdims=True) / (jnp.linalg.norm(a, axis=-1, keepdims=True)
                                                * jnp.linalg.norm(b, axis=-1, keepdims=True))
    omega = jnp.arccos(jnp.clip(cos, -1.0, 1.0))[:, None]
    t = jnp.linspace(0.0, 1.0, steps)[None, :, None]
    so = jnp.maximum(jnp.sin(omega), 1e-6)
    path = (jnp.sin((1 - t) * omega) / so) * a[:, None] + (jnp.sin(t * omega) / so) * b[:, None]
    return path.reshape(z.shape[0] * steps, -1)
