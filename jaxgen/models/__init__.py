"""Models by name. A user's own is `model.name='package.module:ModuleClass'`, built like the ones here."""

from __future__ import annotations

import flax.linen as nn

from jaxgen import registry
from jaxgen.models.vae import MLPVAE, ConvVAE

MODELS = {"conv_vae": ConvVAE, "mlp_vae": MLPVAE}


def build(model_config, image_shape: tuple[int, int, int]) -> nn.Module:
    """The module named by `model_config.name` for images of `image_shape` (H, W, C).

    Built-in modules take their fields from the config: conv_vae (latent_dim, channels, dense, activation, conv_impl),
    mlp_vae (latent_dim, hidden, activation). A user's class receives `image_shape` and `latent_dim`.
    """
    cls = registry.resolve("model", model_config.name, MODELS)
    m = model_config
    if cls is ConvVAE:
        return ConvVAE(tuple(image_shape), m.latent_dim, tuple(m.channels), m.dense, m.activation,
                       m.get("conv_impl", "auto"))
    if cls is MLPVAE:
        return MLPVAE(tuple(image_shape), m.latent_dim, tuple(m.hidden), m.activation)
    return cls(image_shape=tuple(image_shape), latent_dim=m.latent_dim)
