"""Building blocks the GAN pairs share (jaxgen.models.gan): the compute dtypes and norms, spectral norm around a
layer, BatchNorm with PyTorch's defaults, a float32 bias for bf16 layers, and the class-conditional pieces: labels
checked, one-hot labels appended to z, categorical conditional BatchNorm, the projection discriminator's term."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxgen.models import batch_norm

NORMS = ("batch", "none")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bias_in_float32(inputs, kernel, bias=None, *, dtype=None, inexact=True):
    """flax's promote_dtype for a Dense or Conv (`promote_dtype=bias_in_float32`) that keeps its bias float32: the
    layer's output is then float32 (cast it back to the compute dtype), the bias added in float32 and its gradient,
    a sum over the batch (and every position, for a conv), summed in float32. XLA:CPU sums a bfloat16 cotangent in
    bfloat16, rounding every partial sum: a conv's bias gradient over 64 images of 32x32 came out 93% off, and the
    SNGAN D's whole gradient norm half its float32 value (jaxgen audit, 2026-11-30). No change in float32."""
    inputs, kernel = nn.dtypes.promote_dtype(inputs, kernel, dtype=dtype, inexact=inexact)
    return inputs, kernel, bias


def check_model(model: str, image_shape, supported: tuple[int, ...], norms=(), dtype: str = "float32") -> None:
    """A model's resolution (square, one of `supported`), its norms [(field, value)] and compute dtype, with the
    choices where one is unknown."""
    h, w = image_shape[:2]
    if h != w or h not in supported:
        raise ValueError(
            f"{model} supports resolutions {', '.join(map(str, sorted(supported)))}; got {h}x{w}. "
            "data.resolution resizes image_folder and celeb_a images; synthetic images have data.image_shape; other "
            "datasets come at their own size (mnist 28, cifar10 32; a dataset function of yours, data.name="
            "'package.module:function', at the size it returns): pick a model that supports it"
        )
    for what, norm in norms:
        if norm not in NORMS:
            raise ValueError(f"{model}: unknown {what} {norm!r}; choices: {', '.join(NORMS)}")
    if dtype not in DTYPES:
        raise ValueError(f"{model}: unknown dtype {dtype!r}; choices: {', '.join(DTYPES)}")


def apply_layer(layer: nn.Module, x: jax.Array, spectral: bool, train: bool) -> jax.Array:
    """`layer(x)`, with every weight matrix divided by its top singular value when `spectral` (Miyato et al. 2018).

    flax's SpectralNorm reshapes a kernel [..., in, out] to [prod(...) * in, out] (the same singular values as
    PyTorch's [out, in * kh * kw]) and runs one power-iteration step per call from the stored u; `train` stores
    the new u and sigma; eval mode computes the same step without storing it. Biases (1-D) are left as they are.
    flax's init stores each wrapped kernel already divided by its first sigma estimate; `init_variables` puts the
    initializer's own draws back.
    """
    if spectral:
        return nn.SpectralNorm(layer)(x, update_stats=train)
    return layer(x)


def norm_layer(kind: str, axis_name: str | None, dtype: str, train: bool, scale_init=nn.initializers.ones, name=None,
          impl: str = "auto", affine: bool = True):
    """BatchNorm with PyTorch's defaults (momentum 0.1 there = 0.9 here, eps 1e-5), or identity for 'none'.
    `impl` ('auto' | 'fused' | 'flax'): jaxgen's batch_norm.BatchNorm or flax's nn.BatchNorm (same variables and
    arithmetic). affine=False: no scale and bias of its own (a conditional BatchNorm's per-class ones follow)."""
    if kind == "none":
        return lambda x: x
    cls = batch_norm.BatchNorm if batch_norm.resolve_norm_impl(impl) == "fused" else nn.BatchNorm
    return cls(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, axis_name=axis_name, dtype=DTYPES[dtype],
        param_dtype=jnp.float32, scale_init=scale_init, name=name, use_scale=affine, use_bias=affine,
    )


def check_labels(module: nn.Module, labels) -> None:
    """A conditional module needs labels [B]; an unconditional one takes none."""
    if module.num_classes and labels is None:
        raise ValueError(f"{type(module).__name__} has num_classes={module.num_classes}: call it with labels int [B] "
                         "as its second argument")
    if not module.num_classes and labels is not None:
        raise ValueError(f"{type(module).__name__} is unconditional (num_classes=0) but got labels; set "
                         "model.num_classes to train a class-conditional GAN")


def with_one_hot(z: jax.Array, labels, num_classes: int) -> jax.Array:
    """z [B, latent_dim] with the one-hot labels appended ([B, latent_dim + num_classes]) when conditional."""
    z = z.astype(jnp.float32)
    return z if not num_classes else jnp.concatenate([z, jax.nn.one_hot(labels, num_classes, dtype=z.dtype)], -1)


class ConditionalBatchNorm(nn.Module):
    """Categorical conditional BatchNorm (de Vries et al. 2017; the generator of Miyato and Koyama 2018): BatchNorm
    without an affine of its own, then a per-class scale (initialised to 1) and shift (0): x [B, H, W, C], labels
    int [B]. The batch statistics and running averages are the whole batch's, as in plain BatchNorm."""

    num_classes: int
    axis_name: str | None
    dtype: str
    train: bool
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array) -> jax.Array:
        c = x.shape[-1]
        h = norm_layer("batch", self.axis_name, self.dtype, self.train, impl=self.impl, affine=False, name="norm")(x)
        scale = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.ones, name="scale")(labels)
        shift = nn.Embed(self.num_classes, c, embedding_init=nn.initializers.zeros, name="shift")(labels)
        out = h.astype(jnp.float32) * scale[:, None, None, :] + shift[:, None, None, :]
        return out.astype(h.dtype)


def projection(features: jax.Array, labels, num_classes: int, init, spectral: bool, train: bool) -> jax.Array:
    """The projection discriminator's class term <embed(y), phi(x)> [B] (Miyato and Koyama 2018, eq. 3) for the
    features phi(x) [B, F] D's last Dense reads, in float32 (num_classes > 0). Spectrally normalised with D, as their
    SNEmbedID."""
    embed = nn.Embed(num_classes, features.shape[-1], embedding_init=init, param_dtype=jnp.float32,
                     name="class_embedding")
    return jnp.sum(apply_layer(embed, labels, spectral, train) * features.astype(jnp.float32), axis=-1)
