"""Objectives by name: `objective.name` in the config picks one; your own is 'package.module:function'.

An objective is `fn(params, x, keys, *, model, cfg) -> (loss, metrics)`: see jaxgen.objectives.vae for the
arguments. One that names `step` gets the train step; one that names `dataset_size`, the training split's size.
`loss` is the scalar minimised; `metrics` a flat dict of scalars that is logged (include 'loss').
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import config as config_lib
from jaxgen import parallel, registry
from jaxgen.objectives.vae import beta_tcvae, capacity_vae, ciwae, elbo, info_vae, iwae, miwae, piwae

OBJECTIVES = {"elbo": elbo, "iwae": iwae, "miwae": miwae, "ciwae": ciwae, "piwae": piwae, "beta_tcvae": beta_tcvae,
              "info_vae": info_vae, "capacity_vae": capacity_vae}
# The objective block's fields that only the built-in objectives read (the evaluation reads `likelihood` and
# `gaussian_sigma` whatever the objective): set for an objective of the user's that does not read them, they do
# nothing, which the VAE task warns about.
BUILTIN_FIELDS = {"beta": "elbo, beta_tcvae, info_vae and capacity_vae", "k": "elbo, iwae, miwae, ciwae and piwae",
                  "m": "miwae and piwae", "elbo_weight": "ciwae", "estimator": "elbo, iwae, miwae, ciwae and piwae",
                  "kl": "elbo",
                  "kl_warmup_steps": "elbo", "mi_weight": "beta_tcvae", "dim_kl_weight": "beta_tcvae",
                  "tc_estimator": "beta_tcvae",
                  "mmd_weight": "info_vae", "mmd_kernel": "info_vae", "capacity": "capacity_vae",
                  "capacity_steps": "capacity_vae"}  # -> their readers


def get(name: str):
    """The objective function named `name`: a key of OBJECTIVES or 'package.module:function'."""
    return registry.resolve("objective", name, OBJECTIVES)


def check_scalars(what: str, losses: dict, metrics, *, contract: str, reserved: tuple[str, ...] = (),
                  batch: int | None = None) -> None:
    """Raises ValueError naming `what` (e.g. "objective 'my.mod:fn'") and the fix unless every value of `losses`
    ({name: value}) is a scalar, `metrics` is a flat dict of scalars (numbers or arrays) and none of its names is in
    `reserved` (the trainer's own metrics, which it would replace). Values may be arrays or jax.ShapeDtypeStructs (a
    trace on a batch of `batch`, which the messages name: a shape there is not the run's batch)."""
    traced = f" (traced on a batch of {batch} before training)" if batch else ""
    for name, value in losses.items():
        if not _is_array_like(value):
            raise ValueError(f"{what} returned {name} as a {type(value).__name__}; it must be a scalar: the mean over "
                             f"the batch (jnp.mean). Expected: {contract}")
        if np.shape(value) != ():
            raise ValueError(f"{what} returned {name} of shape {tuple(np.shape(value))}{traced}; it must be a scalar: "
                             f"the mean over the batch (jnp.mean). Expected: {contract}")
    if not isinstance(metrics, dict):
        raise ValueError(f"{what} returned {type(metrics).__name__} for its metrics; expected a dict of scalars. "
                         f"Expected: {contract}")
    for name, value in metrics.items():
        if not _is_array_like(value):
            raise ValueError(f"{what}: metric {name!r} is a {type(value).__name__}; metrics are a flat dict of scalars "
                             f"(a nested dict's entries go in as their own names, e.g. {name!r}_a). Expected: "
                             f"{contract}")
        if np.shape(value) != ():
            raise ValueError(f"{what}: metric {name!r} has shape {tuple(np.shape(value))}{traced}; metrics are "
                             "scalars (e.g. jnp.mean over the batch)")
    clash = sorted(set(metrics) & set(reserved))
    if clash:
        raise ValueError(f"{what}: metric name(s) {clash} are the trainer's own (it logs {', '.join(reserved)}); "
                         "rename them, e.g. with a prefix")


def _is_array_like(value) -> bool:
    """A number, a NumPy or JAX array (or scalar), or a traced one (jax.ShapeDtypeStruct from jax.eval_shape)."""
    return isinstance(value, (int, float, bool, np.number, np.bool_, np.ndarray, jax.Array, jax.ShapeDtypeStruct))


# Metrics the VAE step logs itself (jaxgen.training.vae_step): an objective's metrics must not reuse these names.
STEP_METRICS = ("grad_norm", "param_norm", "lr", "finite", "step")


def check_objective(objective, name: str, params, x, keys, *, model, cfg) -> set[str]:
    """Checks, by tracing it once (no computation), that the objective returns (scalar loss, dict of scalar
    metrics with 'loss'). An objective with a `step` parameter gets the train step (an int32 scalar), one with a
    `dataset_size` parameter the training split's size (a Python int; here a stand-in). Returns the fields of `cfg`
    the trace read (the objective itself, and what it called: a likelihood reads its own)."""
    contract = "fn(params, x, keys, *, model, cfg[, step][, dataset_size]) -> (loss, metrics)"
    extra = {"step": jax.ShapeDtypeStruct((), jnp.int32)} if registry.accepts(objective, "step", positional=3) else {}
    static = {"dataset_size": 1000} if registry.accepts(objective, "dataset_size", positional=3) else {}
    registry.check_call(f"objective {name!r}", objective, contract, params, x, keys, model=model, cfg=cfg, **extra,
                        **static)
    cfg, reads = config_lib.recording(cfg)
    out = parallel.eval_shape_on_axis(lambda p, x, k, e: objective(p, x, k, model=model, cfg=cfg, **e, **static),
                                      params, x, keys, extra)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"objective {name!r} returned {registry.describe(out)}; expected {contract}")
    loss, metrics = out
    check_scalars(f"objective {name!r}", {"loss": loss}, metrics, contract=contract,
                  reserved=STEP_METRICS, batch=x.shape[0])
    if "loss" not in metrics:
        raise ValueError(f"objective {name!r}: its metrics have no 'loss' (they have {sorted(metrics)}); add "
                         "metrics['loss'] = loss, which the progress bar and the train records show")
    return reads
