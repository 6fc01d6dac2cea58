"""jaxgen's BatchNorm (`model.norm_impl='fused'`): flax nn.BatchNorm's variables and arithmetic, with its backward pass
written out for XLA:CPU, whose autodiff of flax's spent most of a BN layer's time in slow column reductions
(benchmarks/README.md). Synchronised over a mesh axis inside shard_map like flax's."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import layers

NORM_IMPLS = ("auto", "fused", "flax")
# Backend -> the BatchNorm 'auto' picks. CPU: 'fused' (benchmarks/README.md: flax's BatchNorm fwd+bwd took 1.2-8x
# PyTorch's time on XLA:CPU, jax 0.10.2, DCGAN-64's BN layers at batch 128). Elsewhere flax's until measured.
AUTO_NORM_IMPL = {"cpu": "fused"}
DEFAULT_NORM_IMPL = "flax"


def resolve_norm_impl(impl: str) -> str:
    """'fused' or 'flax' for `impl` ('auto' picks by jax.default_backend())."""
    return layers.pick_impl("norm impl", impl, NORM_IMPLS, AUTO_NORM_IMPL, DEFAULT_NORM_IMPL)


def _bn_stats(x, axis_name):
    """float32 batch mean and (biased) variance over all axes but the last, synchronised over `axis_name`."""
    c = x.shape[-1]
    x2 = x.reshape(-1, c).astype(jnp.float32)
    sums = jnp.stack([layers.channel_sum(x2), layers.channel_sum(x2 * x2)])
    count = x2.shape[0]
    if axis_name is not None:
        sums = jax.lax.psum(sums, axis_name)
        count = count * jax.lax.psum(1, axis_name)
    mean, mean2 = sums[0] / count, sums[1] / count
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, axis_name: str | None):
    """Train-mode BatchNorm over all axes but the last: (y, batch mean, batch variance), statistics in float32 and
    synchronised over `axis_name` (inside shard_map), y in x's dtype; flax's nn.BatchNorm arithmetic (variance as
    E[x^2] - E[x]^2, clipped at 0).

    The backward pass is written out (the textbook BatchNorm gradient, two column sums of the cotangent) instead of
    left to autodiff, whose six reductions over the activations are the slow part on XLA:CPU; the cotangents of the
    returned mean and variance are honoured too, so this is the exact VJP (the clip at 0 taken as inactive). The
    backward pass is plain jnp, so gradients of gradients (R1, WGAN-GP) work through it."""
    return _bn_fwd(x, scale, bias, epsilon, axis_name)[0]


def _bn_fwd(x, scale, bias, epsilon, axis_name):
    mean, var = _bn_stats(x, axis_name)
    inv = jax.lax.rsqrt(var + epsilon)
    mul = inv * scale.astype(jnp.float32)
    y = ((x.astype(jnp.float32) - mean) * mul + bias.astype(jnp.float32)).astype(x.dtype)
    return (y, mean, var), (x, mean, inv, scale, bias)


def _bn_bwd(epsilon, axis_name, residuals, cotangents):
    x, mean, inv, scale, bias = residuals
    gy, gmean, gvar = cotangents
    c = x.shape[-1]
    s = scale.astype(jnp.float32)
    gy2 = gy.reshape(-1, c).astype(jnp.float32)
    xc2 = x.reshape(-1, c).astype(jnp.float32) - mean
    sum_gy = layers.channel_sum(gy2)
    sum_gy_xhat = layers.channel_sum(gy2 * xc2) * inv
    # Cotangents of the (synchronised) mean and variance, from y and from the returned statistics.
    cm = gmean - inv * s * sum_gy
    cv = gvar - 0.5 * s * inv * inv * sum_gy_xhat
    count = xc2.shape[0]
    if axis_name is not None:
        cm, cv = jax.lax.psum(jnp.stack([cm, cv]), axis_name)
        count = count * jax.lax.psum(1, axis_name)
    dx = gy2 * (inv * s) + cm / count + xc2 * (2.0 * cv / count)
    return (dx.reshape(x.shape).astype(x.dtype), sum_gy_xhat.astype(scale.dtype), sum_gy.astype(bias.dtype))


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last with flax nn.BatchNorm's variables ('params': scale, bias;
    'batch_stats': mean, var), arithmetic and running averages, computed by `batch_norm_train` in train mode.

    `jaxgen.models.gan_blocks.norm_layer` picks it or nn.BatchNorm by `model.norm_impl` (resolve_norm_impl)."""

    use_running_average: bool | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    axis_name: str | None = None
    scale_init: nn.initializers.Initializer = nn.initializers.ones
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    use_scale: bool = True  # False: no 'scale' param (1), as flax's
    use_bias: bool = True  # False: no 'bias' param (0), as flax's

    @nn.compact
    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), (c,))
        ra_var = self.variable("batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), (c,))
        scale = (self.param("scale", self.scale_init, (c,), self.param_dtype) if self.use_scale
                 else jnp.ones((c,), self.param_dtype))
        bias = (self.param("bias", self.bias_init, (c,), self.param_dtype) if self.use_bias
                else jnp.zeros((c,), self.param_dtype))
        dtype = self.dtype or jnp.result_type(x, self.param_dtype)
        x = x.astype(dtype)
        if use_ra:
            mul = jax.lax.rsqrt(ra_var.value + self.epsilon) * scale
            return ((x.astype(jnp.float32) - ra_mean.value) * mul + bias).astype(dtype)
        axis = None if self.is_initializing() else self.axis_name
        y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, axis)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
