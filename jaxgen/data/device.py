"""Batches drawn inside the compiled step from a dataset that lives on the devices.

A dataset that fits is uploaded once, replicated on every device as uint8. Each step every device computes the
dataset indices of its own slots of the global batch (an epoch is a keyed pseudo-random permutation of the
examples, the remainder dropped) and gathers them: no host work per step, and the global batch of a step
depends on the seed and the step only, not on the device count or on where a run was resumed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

ROUNDS_PER_BIT = 3
MIN_ROUNDS = 24  # small n mix slowly: n = 2 with 3 rounds swapped 44% of the time, not 50%


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with low bias (the 'lowbias32' constants from Chris Wellons' hash-prospector)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def random_bijection(key: jax.Array, i: jax.Array, n: int) -> jax.Array:
    """A keyed pseudo-random permutation of [0, n), evaluated only at the positions `i` (int array, values < n).

    The swap-or-not shuffle (Hoang, Morris and Rogaway, CRYPTO 2012): round r pairs x with K_r - x (mod n) and
    swaps the two when a keyed hash of the larger one says so. Each round is an involution of [0, n), so any
    number of them is a permutation of exactly [0, n), for every n. max(MIN_ROUNDS, ROUNDS_PER_BIT * log2(n)) rounds
    of a few integer operations: O(len(i)) work with no data-dependent loop. (`jax.random.permutation` sorts all n each
    call, 22 ms a step for n = 60000 on this project's 2-core CPU machines; a Feistel network needs cycle-walking,
    a while loop, which on GPUs blocks the host on every iteration: XLA:GPU reads the loop condition back.)
    """
    if n == 1:
        return jnp.zeros_like(i, jnp.int32)
    rounds = max(MIN_ROUNDS, ROUNDS_PER_BIT * (n - 1).bit_length())
    offsets_key, hash_key = jax.random.split(key)
    offsets = jax.random.randint(offsets_key, (rounds,), 0, n, jnp.int32)
    salts = jax.random.bits(hash_key, (rounds,), jnp.uint32)
    x = i.astype(jnp.int32)
    for r in range(rounds):
        partner = offsets[r] - x
        partner = jnp.where(partner < 0, partner + n, partner)
        swap = (_mix32(jnp.maximum(x, partner).astype(jnp.uint32) ^ salts[r]) & 1) == 1
        x = jnp.where(swap, partner, x)
    return x


def batch_indices(key: jax.Array, step: jax.Array, n: int, global_batch: int, positions: jax.Array) -> jax.Array:
    """Dataset indices of the examples at `positions` of `step`'s global batch.

    Epoch e visits the examples in the order of random_bijection(fold_in(key, e)), the remainder dropped; a step
    reads `global_batch` consecutive slots of it. Every device evaluates only its own positions.
    """
    steps_per_epoch = n // global_batch
    if steps_per_epoch < 1:
        raise ValueError(f"the dataset has {n} examples, fewer than the global batch {global_batch}")
    epoch = step // steps_per_epoch
    slots = (step % steps_per_epoch) * global_batch + positions
    idx = random_bijection(jax.random.fold_in(key, epoch), slots, n)
    if jax.default_backend() == "cpu":
        idx = _unfused(idx)
    return idx


def _unfused(idx: jax.Array) -> jax.Array:
    """idx [B] as it is, through a sort by its own order: an op that XLA:CPU does not fuse into the gather that
    reads the batch with idx. Fused, XLA:CPU's elemental emitters without LLVM's optimisation (the tests' flags,
    tests/conftest.py) ran the bijection's 24-48 rounds again for every pixel gathered: 32 CIFAR-10 images from 256
    took 7.7 ms instead of 0.25, 128 MNIST digits from 60,000 16.3 ms instead of 0.35 (benchmarks/batch_gather.py).
    Otherwise (XLA's default emitters, or LLVM level 2: as users compile) both forms take the same time, 0.08-0.13
    ms at level 2. (An optimization barrier did not stop the fusion, nor did a remainder. GPUs keep the fused form
    their benchmarks measured.)"""
    order = lax.iota(jnp.int32, idx.shape[0])
    return lax.sort((order, idx), num_keys=1, is_stable=False)[1]


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


def random_flip(image: jax.Array, keys: jax.Array) -> jax.Array:
    """Mirrors (left-right) each example of image [B, H, W, C] with probability 1/2, drawn from its key [B]: the
    training set doubled by its mirror images, as StyleGAN's --mirror and StudioGAN's random flip of the reals."""
    do = jax.vmap(jax.random.bernoulli)(keys)
    return jnp.where(do[:, None, None, None], image[:, :, ::-1], image)


def example_keys(key: jax.Array, positions: jax.Array) -> jax.Array:
    """One key per example, from its position in the global batch: [B] keys."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, positions)


def substream(keys: jax.Array, i: int) -> jax.Array:
    """Stream `i` of each example's key ([B] keys, each folded with i): one per use of randomness in a step."""
    return jax.vmap(jax.random.fold_in, (0, None))(keys, i)
