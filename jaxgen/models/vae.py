"""VAE models: an encoder q(z|x) = N(mu, diag exp(logvar)) and a decoder giving p(x|z)'s parameters per pixel.

Both expose `encode(x) -> (mu, logvar)`, each [B, latent_dim], and `decode(z) -> out` [B, H, W, C] (logits for
a Bernoulli likelihood, means for a Gaussian; [B, H, W, 2C] with `out_channels=2C`, the discretized logistic's
locations then log-scales). Inputs x are float images [B, H, W, C] in [0, 1].

With `num_classes` > 0 they are class-conditional (a conditional VAE, Sohn et al. 2015: q(z | x, y) and p(x | z, y)):
both methods also read labels int [B], given as their `labels` argument or bound to the module with
`model.clone(labels=y)`. The trainer binds them, so that an objective written for an unconditional VAE
(`model.apply(params, x, method="encode")`) trains a conditional one unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.layers import Conv, ConvTranspose2x, activation, check_divisible
from jaxgen.objectives.vae import MIN_LOG_SCALE

OUTPUT_BIASES = ("zero", "data_mean")


def data_mean_output(images: np.ndarray, likelihood: str, per_pixel: bool) -> np.ndarray:
    """The decoder output at which p(x|z) has the training images' mean: per pixel [H*W*C'] (in the decoder
    output's [H, W, C'] order) or per channel [C'].

    Bernoulli: the logit of the mean grey value (uint8 / 255, which dynamic binarization draws pixels from),
    clipped to [0.001, 0.999] as in Burda et al.'s IWAE code; Gaussian: the mean itself; discretized logistic: the
    mean as the location, then the log of the logistic scale with the images' standard deviation (std sqrt(3) / pi,
    floored at objectives.vae.MIN_LOG_SCALE) as the log-scale."""
    known = ("bernoulli", "gaussian", "discretized_logistic")
    if likelihood not in known:
        raise ValueError(f"model.output_bias='data_mean' knows the likelihoods {', '.join(known)}, not "
                         f"{likelihood!r}; set --config.model.output_bias=zero")
    images = np.asarray(images)
    shape = images.shape[1:] if per_pixel else images.shape[-1:]
    per = images.reshape(len(images), -1) if per_pixel else images.reshape(-1, images.shape[-1])
    mean = per.mean(0, dtype=np.float64) / 255.0  # no float copy of the dataset
    if likelihood == "bernoulli":
        mean = np.clip(mean, 0.001, 0.999)
        return np.log(mean / (1.0 - mean)).astype(np.float32)
    if likelihood == "gaussian":
        return mean.astype(np.float32)
    # Sums of squares in blocks of rows: a float64 copy of a large dataset (CelebA's 2 GiB of uint8) would not fit.
    squares = sum(np.square(per[i : i + 65536], dtype=np.float64).sum(0) for i in range(0, len(per), 65536))
    mean_sq = squares / len(per) / 255.0**2
    scale = np.sqrt(np.maximum(mean_sq - mean**2, 0.0)) * math.sqrt(3.0) / math.pi
    log_scale = np.maximum(np.log(np.maximum(scale, 1e-30)), MIN_LOG_SCALE)
    out = np.concatenate([mean.reshape(shape), log_scale.reshape(shape)], axis=-1)
    return out.reshape(-1).astype(np.float32)


def bind_labels(model: nn.Module, labels) -> nn.Module:
    """`model` with `labels` (int [B]) bound for its methods to read, model.clone(labels=labels), when it is
    class-conditional (num_classes > 0); `model` itself otherwise."""
    return model.clone(labels=labels) if getattr(model, "num_classes", 0) else model


def with_labels(module: nn.Module, h, labels):
    """h [N, F] with the one-hot labels appended ([N, F + num_classes]) for a class-conditional `module`
    (num_classes > 0); h itself for an unconditional one. `labels`: int [N], one per row, else the module's bound
    `labels`. Rows of another count are an error: the caller who decodes k latents per example lays them out and
    repeats the labels to match (jaxgen.objectives.vae.repeat_labels, as the built-in objectives do)."""
    k = module.num_classes
    labels = module.labels if labels is None else labels
    name = type(module).__name__
    if not k:
        if labels is not None:
            raise ValueError(f"{name} is unconditional (num_classes=0) but was given labels; condition it on "
                             "classes with --config.model.num_classes=N")
        return h
    if labels is None:
        raise ValueError(f"{name} is class-conditional (num_classes={k}): call encode(x, labels) and decode(z, "
                         "labels) with labels int [B], or bind them first: model.clone(labels=labels).apply(...)")
    labels = jnp.asarray(labels)
    if labels.shape != (h.shape[0],):
        raise ValueError(f"{name}: labels {labels.shape} for {h.shape[0]} rows; give one label per row (int "
                         f"[{h.shape[0]}]): for k latents per example, repeat each example's label k times in their "
                         "order (jaxgen.objectives.vae.repeat_labels(model, k) does it for bound labels)")
    return jnp.concatenate([h, jax.nn.one_hot(labels, k, dtype=h.dtype)], axis=-1)


class MLPVAE(nn.Module):
    """The IWAE paper's one-stochastic-layer shape (Burda et al. 2016): 2 hidden layers each way, tanh there;
    Glorot-uniform weights as in their code. `out_bias_init`: the output layer's bias (zeros; `build` passes the
    training data's mean for model.output_bias='data_mean', as their code does)."""

    image_shape: tuple[int, int, int]
    latent_dim: int = 50
    hidden: tuple[int, ...] = (200, 200)
    activation: str = "tanh"
    out_bias_init: Callable = nn.initializers.zeros
    out_channels: int | None = None  # the decoder's per pixel: the image's channels (None), 2x for discretized_logistic
    num_classes: int = 0  # > 0: class-conditional, the one-hot label appended to the encoder's and decoder's inputs
    labels: jax.Array | None = None  # int [B]: the labels the methods use when given none (model.clone(labels=y))

    def setup(self):
        dense = lambda n, **kw: nn.Dense(n, kernel_init=nn.initializers.glorot_uniform(), **kw)
        self.enc = [dense(h) for h in self.hidden]
        self.mu = dense(self.latent_dim)
        self.logvar = dense(self.latent_dim)
        self.dec = [dense(h) for h in reversed(self.hidden)]
        self.out = dense(math.prod(self._out_shape()), bias_init=self.out_bias_init)

    def _out_shape(self):
        return (*self.image_shape[:2], self.out_channels or self.image_shape[-1])

    def encode(self, x, labels=None):
        act = activation(self.activation)
        h = with_labels(self, x.reshape(x.shape[0], -1), labels)
        for layer in self.enc:
            h = act(layer(h))
        return self.mu(h), self.logvar(h)

    def decode(self, z, labels=None):
        act = activation(self.activation)
        h = with_labels(self, z, labels)
        for layer in self.dec:
            h = act(layer(h))
        return self.out(h).reshape(z.shape[0], *self._out_shape())

    def __call__(self, x, z, labels=None):  # init; labels None: bound ones, or none (as a subclass's encode(x) takes)
        if labels is None:
            return self.encode(x), self.decode(z)
        return self.encode(x, labels), self.decode(z, labels)


class ConvVAE(nn.Module):
    """A small conv VAE: stride-2 3x3 convs (32, 64), dense 16, latent 10; the decoder mirrors it with stride-2
    transposed convs that really upsample (7 -> 14 -> 28), then a 3x3 conv to the image channels.
    Same shapes as the PyTorch reference VAE that benchmarks/vae_throughput.py times beside it."""

    image_shape: tuple[int, int, int]
    latent_dim: int = 10
    channels: tuple[int, ...] = (32, 64)
    dense: int = 16
    activation: str = "relu"
    conv_impl: str = "auto"  # the transposed convs' form: jaxgen.models.layers.IMPLS
    out_bias_init: Callable = nn.initializers.zeros  # the last conv's bias, one per channel
    out_channels: int | None = None  # the decoder's: the image's channels (None), 2x for discretized_logistic
    num_classes: int = 0  # > 0: class-conditional, the one-hot label appended to the flattened conv features and to z
    labels: jax.Array | None = None  # int [B]: the labels the methods use when given none (model.clone(labels=y))

    def setup(self):
        check_divisible(self.image_shape, len(self.channels), "conv_vae")
        pad = ((1, 1), (1, 1))
        self.enc = [nn.Conv(c, (3, 3), strides=(2, 2), padding=pad) for c in self.channels]
        self.enc_dense = nn.Dense(self.dense)
        self.mu = nn.Dense(self.latent_dim)
        self.logvar = nn.Dense(self.latent_dim)
        f = 2 ** len(self.channels)
        self.base = (self.image_shape[0] // f, self.image_shape[1] // f, self.channels[-1])
        self.dec_dense = nn.Dense(self.dense)
        self.dec_proj = nn.Dense(self.base[0] * self.base[1] * self.base[2])
        widths = tuple(reversed(self.channels))  # (64, 32) for channels (32, 64)
        self.up = [ConvTranspose2x(c, kernel_size=3, padding=1, impl=self.conv_impl) for c in widths]
        self.out = Conv(self.out_channels or self.image_shape[-1], 3, impl=self.conv_impl, bias_init=self.out_bias_init)

    def encode(self, x, labels=None):
        act = activation(self.activation)
        h = x
        for conv in self.enc:
            h = act(conv(h))
        h = act(self.enc_dense(with_labels(self, h.reshape(h.shape[0], -1), labels)))
        return self.mu(h), self.logvar(h)

    def decode(self, z, labels=None):
        act = activation(self.activation)
        h = act(self.dec_proj(act(self.dec_dense(with_labels(self, z, labels)))))
        h = h.reshape(z.shape[0], *self.base)
        for up in self.up:
            h = act(up(h))
        return self.out(h)

    def __call__(self, x, z, labels=None):  # init; labels None: bound ones, or none (as a subclass's encode(x) takes)
        if labels is None:
            return self.encode(x), self.decode(z)
        return self.encode(x, labels), self.decode(z, labels)
