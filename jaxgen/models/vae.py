"""VAE models: an encoder q(z|x) = N(mu, diag exp(logvar)) and a decoder giving p(x|z)'s parameters per pixel.

Both expose `encode(x) -> (mu, logvar)`, each [B, latent_dim], and `decode(z) -> out` [B, H, W, C] (logits for
a Bernoulli likelihood, means for a Gaussian; [B, H, W, 2C] with `out_channels=2C`, the discretized logistic's
locations then log-scales). Inputs x are float images [B, H, W, C] in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
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

    def setup(self):
        dense = lambda n, **kw: nn.Dense(n, kernel_init=nn.initializers.glorot_uniform(), **kw)
        self.enc = [dense(h) for h in self.hidden]
        self.mu = dense(self.latent_dim)
        self.logvar = dense(self.latent_dim)
        self.dec = [dense(h) for h in reversed(self.hidden)]
        self.out = dense(math.prod(self._out_shape()), bias_init=self.out_bias_init)

    def _out_shape(self):
        return (*self.image_shape[:2], self.out_channels or self.image_shape[-1])

    def encode(self, x):
        act = activation(self.activation)
        h = x.reshape(x.shape[0], -1)
        for layer in self.enc:
            h = act(layer(h))
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        act = activation(self.activation)
        h = z
        for layer in self.dec:
            h = act(layer(h))
        return self.out(h).reshape(z.shape[0], *self._out_shape())

    def __call__(self, x, z):
        return self.encode(x), self.decode(z)


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

    def encode(self, x):
        act = activation(self.activation)
        h = x
        for conv in self.enc:
            h = act(conv(h))
        h = act(self.enc_dense(h.reshape(h.shape[0], -1)))
        return self.mu(h), self.logvar(h)

    def decode(self, z):
        act = activation(self.activation)
        h = act(self.dec_proj(act(self.dec_dense(z))))
        h = h.reshape(z.shape[0], *self.base)
        for up in self.up:
            h = act(up(h))
        return self.out(h)

    def __call__(self, x, z):
        return self.encode(x), self.decode(z)
