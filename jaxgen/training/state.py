"""The train state: a plain dict of arrays (a pytree), nothing else.

    {'step': int32 [], 'params': model variables, 'opt_state': optax state, 'key': PRNG key,
     'ema_params': model variables (only when train.ema_decay > 0)}

The model, optimizer and config stay outside it. Random streams derive from 'key': the data order from
fold_in(key, DATA_STREAM), a step's noise from fold_in(fold_in(key, STEP_STREAM), step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INIT_STREAM, DATA_STREAM, STEP_STREAM, EVAL_STREAM = 0, 1, 2, 3


def create(model, tx, image_shape, seed: int, ema: bool) -> dict:
    """A fresh state for `model` (with `encode`, `decode` and a `latent_dim`) on images of `image_shape`."""
    key = jax.random.key(seed)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    z = jnp.zeros((1, model.latent_dim), jnp.float32)
    params = model.init(jax.random.fold_in(key, INIT_STREAM), x, z)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "key": key}
    if ema:
        state["ema_params"] = params
    return state


def eval_params(state: dict):
    """The params to evaluate and sample with: the EMA ones when kept."""
    return state.get("ema_params", state["params"])
