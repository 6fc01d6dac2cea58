"""Batches drawn inside the compiled step from a dataset that lives on the devices.

A dataset that fits is uploaded once, replicated on every device as uint8. Each step every device computes the
same global batch of indices (an epoch is a random permutation of the examples, the remainder dropped) and
gathers its own slice: no host work per step, and the global batch of a step depends on the seed and the step
only, not on the device count or on where a run was resumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def batch_indices(key: jax.Array, step: jax.Array, n: int, global_batch: int) -> jax.Array:
    """The dataset indices of `step`'s global batch [global_batch]: epoch e is permutation(fold_in(key, e))."""
    steps_per_epoch = n // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the dataset has {n} examples, fewer than the global batch {global_batch}")
    epoch = step // steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return lax.dynamic_slice(perm, ((step % steps_per_epoch) * global_batch,), (global_batch,))


def local_positions(global_batch: int, axis: str) -> jax.Array:
    """Positions in the global batch [local_batch] of this device's examples (inside shard_map)."""
    local = global_batch // lax.axis_size(axis)
    return lax.axis_index(axis) * local + jnp.arange(local)


def preprocess(image_u8: jax.Array, keys: jax.Array, binarize: str) -> jax.Array:
    """uint8 [B, H, W, C] -> float32 in [0, 1]; 'dynamic' draws a fresh binarization from each example's key."""
    x = image_u8.astype(jnp.float32) / 255.0
    if binarize == "dynamic":
        x = jax.vmap(lambda k, xi: jax.random.bernoulli(k, xi).astype(jnp.float32))(keys, x)
    return x


def example_keys(key: jax.Array, positions: jax.Array) -> jax.Array:
    """One key per example, from its position in the global batch: [B] keys."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, positions)
