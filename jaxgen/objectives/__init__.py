"""Objectives by name: `objective.name` in the config picks one; your own is 'package.module:function'.

An objective is `fn(params, x, keys, *, model, cfg) -> (loss, metrics)`: see jaxgen.objectives.vae for the
arguments. `loss` is the scalar minimised; `metrics` a flat dict of scalars that is logged (include 'loss').
"""

from __future__ import annotations

from jaxgen import registry
from jaxgen.objectives.vae import elbo, iwae

OBJECTIVES = {"elbo": elbo, "iwae": iwae}


def get(name: str):
    """The objective function named `name`: a key of OBJECTIVES or 'package.module:function'."""
    return registry.resolve("objective", name, OBJECTIVES)
