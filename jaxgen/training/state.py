"""The train state: a plain dict of arrays (a pytree), nothing else.

VAE:  {'step': int32 [], 'params': model variables, 'opt_state': optax state, 'key': PRNG key,
       'ema_params': model variables (only when train.ema_half_life > 0)}
GAN:  {'step': int32 [] (G updates), 'g': G's variables, 'd': D's variables, 'g_opt', 'd_opt': optax states over
       their 'params', 'key': PRNG key, 'ema_g': G's variables averaged (only when train.ema_half_life > 0),
       'ada': {'p': float32 [], 'signs': float32 []}, the adaptive augmentation's probability and
       its running sum of D's signs on the reals (only with augment.ada_target > 0; gan_step.ada_update),
       'lecam': {'real': float32 [], 'fake': float32 [], 'norm': float32 []}, the moving averages of D's mean outputs
       on reals and fakes, not yet divided by their weights' sum 'norm' (only with reg.lecam_weight > 0;
       gan_step.lecam_anchors)}
       Variables are Flax collections: {'params': ...} plus {'batch_stats': ...} (BatchNorm, spectral norm).

The model, optimizer and config stay outside it. Random streams derive from 'key': the data order from
fold_in(key, DATA_STREAM), a step's noise from fold_in(fold_in(key, STEP_STREAM), step) (a GAN's: from its
D update's index, step * d_steps + i; the G update uses the last one's, with streams of its own).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxgen.models import gan as gan_models
from jaxgen.models import vae as vae_models

INIT_STREAM, DATA_STREAM, STEP_STREAM, EVAL_STREAM = 0, 1, 2, 3
# The evaluation's fixed streams, key(seed) folded with EVAL_STREAM + the stream (`eval_key`): a VAE's latent noise
# in the test metrics; samples.png (and a GAN's samples_over_time.png); interpolations.png; the sample-quality
# metrics' samples; a GAN's standing-statistics passes; its D(x)/D(G(z)) scores. They take the numbers 3..8 of
# key(seed)'s streams, so a new stream of the state takes 9 or more.
EVAL_NOISE, FIXED_NOISE, INTERPOLATION, SAMPLER, STANDING, SCORES = 0, 1, 2, 3, 4, 5


def eval_key(seed: int, stream: int) -> jax.Array:
    """The key of the evaluation's fixed stream `stream` (EVAL_NOISE ... SCORES) for the config's seed."""
    return jax.random.fold_in(jax.random.key(seed), EVAL_STREAM + stream)


def create(model, tx, image_shape, seed: int, ema: bool) -> dict:
    """A fresh state for `model` (with `encode`, `decode` and a `latent_dim`) on images of `image_shape`."""
    key = jax.random.key(seed)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    z = jnp.zeros((1, model.latent_dim), jnp.float32)
    model = vae_models.bind_labels(model, jnp.zeros((1,), jnp.int32))  # a class-conditional VAE's placeholder labels
    params = model.init(jax.random.fold_in(key, INIT_STREAM), x, z)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "key": key}
    if ema:
        state["ema_params"] = jax.tree.map(jnp.copy, params)  # its own buffers: the state is donated leaf by leaf
    return state


def eval_params(state: dict):
    """The params to evaluate and sample with: the EMA ones when kept (a GAN: G's variables)."""
    if "g" in state:
        return state.get("ema_g", state["g"])
    return state.get("ema_params", state["params"])


def create_gan(generator, discriminator, g_tx, d_tx, image_shape, seed: int, ema: bool, num_classes: int = 0,
               ada: bool = False, lecam: bool = False) -> dict:
    """A fresh GAN state; G takes z [B, generator.latent_dim], D takes images [B, *image_shape] (both then labels
    int [B] when num_classes > 0). ada: keep the adaptive augmentation's state, its probability starting at 0;
    lecam: LeCam regularization's moving averages, empty at the start."""
    key = jax.random.key(seed)
    init = jax.random.fold_in(key, INIT_STREAM)
    z = jnp.zeros((2, generator.latent_dim), jnp.float32)
    x = jnp.zeros((2, *image_shape), jnp.float32)
    y = (jnp.zeros((2,), jnp.int32),) if num_classes else ()
    g = gan_models.init_variables(generator, jax.random.fold_in(init, 0), z, *y, train=False)
    d = gan_models.init_variables(discriminator, jax.random.fold_in(init, 1), x, *y, train=False)
    state = {"step": jnp.zeros((), jnp.int32), "g": g, "d": d, "g_opt": g_tx.init(g["params"]),
             "d_opt": d_tx.init(d["params"]), "key": key}
    if ema:
        state["ema_g"] = jax.tree.map(jnp.copy, g)  # its own buffers: the state is donated leaf by leaf
    if ada:
        state["ada"] = fresh_ada()
    if lecam:
        state["lecam"] = fresh_lecam()
    return state


def fresh_ada() -> dict:
    """The adaptive augmentation's state at the start: probability 0, no signs summed (gan_step.ada_update)."""
    return {"p": jnp.zeros((), jnp.float32), "signs": jnp.zeros((), jnp.float32)}


def fresh_lecam() -> dict:
    """LeCam regularization's moving averages at the start: nothing averaged yet (gan_step.lecam_anchors)."""
    return {name: jnp.zeros((), jnp.float32) for name in ("real", "fake", "norm")}


def ema_rate(step, batch: int, half_life_images: float, rampup: float = 0.0) -> jax.Array:
    """The EMA's step size at `step`, 1 - beta with the decay beta = 0.5 ** (batch / half_life): a half-life in
    images whatever the batch size (Karras et al. 2022, EDM). With rampup > 0 the half-life is at most rampup x
    the images seen before this step (StyleGAN2-ADA's ema_rampup), so early averages do not keep the random
    initial weights (step 0 copies the params). Computed as -expm1(-ln 2 * batch / half_life): float32 keeps its
    relative precision however small the step (1 - beta in float32 would lose it past half-lives of ~1e6 batches)."""
    h = jnp.asarray(half_life_images, jnp.float32)
    if rampup > 0:
        h = jnp.minimum(h, jnp.asarray(step, jnp.float32) * (batch * rampup))
    return -jnp.expm1(-jnp.log(2.0) * batch / jnp.maximum(h, 1e-30))
