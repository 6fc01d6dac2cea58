"""The VAE train step: a module-level pure function written per device, mapped over the mesh, compiled once.

`vae_step` sees one device's slice: it draws the step's global batch indices from the on-device dataset, takes
its own rows, computes the objective's gradient and averages it over the 'data' axis with `lax.pmean`. An update
whose metrics (the loss among them) or gradient are not finite is not applied (the state stays the last good one)
and is reported in the metrics as finite=0 with its step, so the host can stop the run naming both.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxgen import registry
from jaxgen.data import device as dev
from jaxgen.models import vae as vae_models
from jaxgen.parallel import AXIS
from jaxgen.training import dispatch
from jaxgen.training import state as state_lib
from jaxgen.training.state import DATA_STREAM, STEP_STREAM


def vae_step(state: dict, data: dict, *, model, tx, objective, obj_cfg, lr_schedule, batch: int, binarize: str,
             ema_half_life: float, ema_rampup: float, random_flip: bool = False) -> tuple[dict, dict]:
    """One optimisation step on one device's share of the global batch `batch`. Returns (state, metrics).

    data: {'image': uint8 [N, H, W, C]}, the whole training split, replicated (and 'label' int [N] for a
    class-conditional model, whose drawn labels are bound to it: the objective sees a model that reads them).
    random_flip: mirror each drawn example with probability 1/2 (data.random_flip).
    """
    step = state["step"]
    n = data["image"].shape[0]
    pos = dev.local_positions(batch, AXIS)
    idx = dev.batch_indices(jax.random.fold_in(state["key"], DATA_STREAM), step, n, batch, pos)
    keys = dev.example_keys(jax.random.fold_in(jax.random.fold_in(state["key"], STEP_STREAM), step), pos)
    image = data["image"][idx]
    if random_flip:
        image = dev.random_flip(image, dev.substream(keys, 2))
    x = dev.preprocess(image, dev.substream(keys, 0), binarize)
    obj_keys = dev.substream(keys, 1)
    if getattr(model, "num_classes", 0):
        model = vae_models.bind_labels(model, data["label"][idx])

    # An objective that names `step` gets it (a KL warm-up of one's own, say); one that names `dataset_size`, the
    # training split's size (beta_tcvae's estimate of the aggregate posterior needs it).
    extra = {"step": step} if registry.accepts(objective, "step", positional=3) else {}
    if registry.accepts(objective, "dataset_size", positional=3):
        extra["dataset_size"] = n

    def loss_fn(params):
        return objective(params, x, obj_keys, model=model, cfg=obj_cfg, **extra)

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    grads = lax.pmean(grads, AXIS)
    metrics = lax.pmean(metrics, AXIS)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new = {**state, "step": step + 1, "params": params, "opt_state": opt_state}
    if "ema_params" in state:
        rate = state_lib.ema_rate(step, batch, ema_half_life, ema_rampup)
        new["ema_params"] = optax.incremental_update(params, state["ema_params"], rate)
    grad_norm = optax.tree.norm(grads)
    param_norm = optax.tree.norm(params)  # the new params' (as the GAN step logs): checked and logged
    new, finite = dispatch.keep_if_finite(new, state, (metrics, grad_norm, param_norm))
    metrics = {
        **metrics,
        "grad_norm": grad_norm,
        "param_norm": param_norm,
        "lr": jnp.asarray(lr_schedule(step), jnp.float32),
        "finite": finite.astype(jnp.float32),
        "step": step,
    }
    return new, metrics


def compile_train(mesh, *, steps_per_dispatch: int, **step_kwargs):
    """The jitted, data-parallel train function `(state, data) -> (state, metrics [steps_per_dispatch])` of
    `vae_step` with `step_kwargs`, state donated (jaxgen.training.dispatch)."""
    return dispatch.compile_train(mesh, functools.partial(vae_step, **step_kwargs), steps_per_dispatch)
