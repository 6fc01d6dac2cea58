"""A VAE's prior p(z): N(0, I) (`model.prior='normal'`, every VAE's default) or the VampPrior (`'vamp'`).

The VampPrior (Tomczak and Welling 2018, "VAE with a VampPrior", AISTATS) is the mixture of the encoder's own
posteriors at K learned pseudo-inputs u_k, p(z) = 1/K sum_k q(z | u_k): a prior the aggregate posterior can fill,
learned with the rest of the model. `VampPrior` wraps any VAE module (a built-in one, or a user's with `encode`,
`decode` and a `latent_dim`): its params are the VAE's, under 'vae', and the pseudo-inputs [K, H, W, C], under
'pseudo_inputs'. The encoder sees the pseudo-inputs clipped to [0, 1] (the authors' hardtanh). They start
(`model.vamp_init`) at N(0.05, 0.01) per pixel ('noise', the default), or at K training images plus N(0, 0.01) noise
per pixel ('data'): the two starts of the authors' code (github.com/jmtomczak/vae_vampprior: `use_training_data_init`,
`pseudoinputs_mean` 0.05, `pseudoinputs_std` 0.01; their MNIST runs use K = 500).

Its KL has no closed form: the objectives take log q(z | x) - log p(z) at the drawn z (`objective.kl='mc'`), and
the importance-sampled NLL uses log p(z) in its weights; samples draw a component, then z from its Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PRIORS = ("normal", "vamp")  # model.prior
INITS = ("noise", "data")  # model.vamp_init
INIT_MEAN, INIT_STD = 0.05, 0.01  # the pseudo-inputs' start, per pixel (Tomczak and Welling's code)


def noise_init(key, shape):
    """'noise': N(0.05, 0.01) per pixel."""
    return INIT_MEAN + INIT_STD * jax.random.normal(key, shape)


def data_init(images: np.ndarray, components: int) -> Callable:
    """'data': a fixed random choice of `components` of the uint8 training `images` [N, H, W, C], scaled to [0, 1],
    plus N(0, 0.01) noise per pixel."""
    if len(images) < components:
        raise ValueError(f"model.vamp_init='data' starts the {components} pseudo-inputs at as many training images; "
                         f"the train split has {len(images)}: set --config.model.vamp_components={len(images)} or "
                         "fewer, or --config.model.vamp_init=noise")
    rows = np.sort(np.random.default_rng(0).permutation(len(images))[:components])
    start = np.asarray(images[rows], np.float32) / 255.0

    def init(key, shape):
        return jnp.asarray(start) + INIT_STD * jax.random.normal(key, shape)

    return init


class VampPrior(nn.Module):
    """`vae` with the VampPrior of `components` pseudo-inputs of shape `image_shape`. `encode` and `decode` are the
    VAE's; `prior_components()` gives the K posteriors (mu, logvar) [K, latent_dim] and `prior_log_prob(z)` the
    prior's log density of z [..., latent_dim]."""

    vae: nn.Module
    image_shape: tuple[int, int, int]
    components: int = 500
    pseudo_init: Callable = noise_init  # (key, shape) -> the pseudo-inputs' start: `noise_init` or `data_init`'s
    num_classes: int = 0  # unconditional: the pseudo-inputs carry no label (config_check refuses a conditional one)
    labels: jax.Array | None = None

    @property
    def latent_dim(self) -> int:
        return self.vae.latent_dim

    def setup(self):
        self.pseudo_inputs = self.param("pseudo_inputs", self.pseudo_init, (self.components, *self.image_shape))

    def encode(self, x):
        return self.vae.encode(x)

    def decode(self, z):
        return self.vae.decode(z)

    def prior_components(self):
        """(mu, logvar) [K, latent_dim]: the encoder's posteriors at the pseudo-inputs, clipped to [0, 1]."""
        return self.vae.encode(jnp.clip(self.pseudo_inputs, 0.0, 1.0))

    def prior_log_prob(self, z):
        """log p(z) = logsumexp_k log N(z; mu_k, diag exp(logvar_k)) - log K, summed over z's last axis."""
        mu, logvar = self.prior_components()
        return mixture_log_prob(z, mu, logvar)

    def __call__(self, x, z):  # init: the VAE's, then the pseudo-inputs' path through its encoder
        out = self.vae(x, z)
        self.prior_components()
        return out


def mixture_log_prob(z: jax.Array, mu: jax.Array, logvar: jax.Array, block: int = 32) -> jax.Array:
    """log (1/K) sum_k N(z; mu_k, diag exp(logvar_k)) for z [..., D], components mu, logvar [K, D] -> [...].

    Each (z - mu_k)^2 / v_k is computed as it stands, `block` components at a time (memory [N, block, D], not
    [N, K, D]: an NLL chunk of 50,000 latents against 500 components). Expanding the square into matmuls would
    save that memory but cancels catastrophically near a narrow component's mean, the one that dominates the sum
    (off by 5 nats at D = 50 and logvar -12 in float32)."""
    shape, d = z.shape[:-1], z.shape[-1]
    flat = z.reshape(-1, d)
    k = mu.shape[0]
    pad = -k % block
    # Padding components: far away, weighted out below.
    mu_b = jnp.pad(mu, ((0, pad), (0, 0))).reshape(-1, block, d)
    lv_b = jnp.pad(logvar, ((0, pad), (0, 0))).reshape(-1, block, d)
    real = (jnp.arange(k + pad) < k).reshape(-1, block)

    def one(args):
        m, lv, keep = args  # [block, D], [block, D], [block]
        comp = -0.5 * jnp.sum((flat[:, None] - m[None]) ** 2 * jnp.exp(-lv)[None] + lv[None] + math.log(2 * math.pi),
                              axis=-1)  # [N, block]
        return jnp.where(keep[None], comp, -jnp.inf)

    comp = jax.lax.map(one, (mu_b, lv_b, real))  # [blocks, N, block]
    comp = jnp.moveaxis(comp, 0, 1).reshape(flat.shape[0], -1)  # [N, K + pad]
    return (jax.nn.logsumexp(comp, axis=-1) - math.log(k)).reshape(shape)


def as_mixture(mu: jax.Array, logvar: jax.Array) -> dict:
    """The prior's components (`prior_components`) as the Gaussian mixture the samplers draw from
    (`evaluation.latent_mixture.draw`'s: equal `log_weights` [K], `means` [K, D], diagonal `scale_tril`
    [K, D, D])."""
    k = mu.shape[0]
    return {"log_weights": jnp.full((k,), -math.log(k), jnp.float32), "means": jnp.asarray(mu, jnp.float32),
            "scale_tril": jax.vmap(jnp.diag)(jnp.exp(0.5 * jnp.asarray(logvar, jnp.float32)))}
