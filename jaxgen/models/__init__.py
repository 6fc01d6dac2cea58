"""Models by name. A user's own is `model.name='package.module:ModuleClass'` (constructed with image_shape and
latent_dim) or `'package.module:function'`, a factory `fn(model_config, image_shape) -> module` that reads its own
fields from the model block."""

from __future__ import annotations

import dataclasses
import functools
import numbers

import flax.linen as nn

from jaxgen import config_check, registry
from jaxgen.models import prior
from jaxgen.models.vae import MLPVAE, OUTPUT_BIASES, ConvVAE, data_mean_output
from jaxgen.objectives.vae import output_channels

MODELS = {"conv_vae": ConvVAE, "mlp_vae": MLPVAE}


def build(model_config, image_shape: tuple[int, int, int], *, train_images=None,
          likelihood: str = "bernoulli") -> nn.Module:
    """The VAE `model_config` describes for images of `image_shape` (H, W, C): `build_vae`'s module, wrapped in
    `prior.VampPrior` with model.prior='vamp' (`model.vamp_components` pseudo-inputs, started at `train_images`
    (uint8) with model.vamp_init='data')."""
    config_check.check_prior_fields(model_config)
    vae = build_vae(model_config, image_shape, train_images=train_images, likelihood=likelihood)
    if model_config.get("prior", "normal") == "normal":
        return vae
    k = int(model_config.vamp_components)
    if model_config.get("vamp_init", "noise") == "noise":
        return prior.VampPrior(vae, tuple(image_shape), k, prior.noise_init)
    if train_images is None:
        raise ValueError("model.vamp_init='data' needs the training images")
    return prior.VampPrior(vae, tuple(image_shape), k, prior.data_init(train_images, k))


def build_vae(model_config, image_shape: tuple[int, int, int], *, train_images=None,
              likelihood: str = "bernoulli") -> nn.Module:
    """The module named by `model_config.name` for images of `image_shape` (H, W, C).

    Built-in modules take their fields from the config: conv_vae (latent_dim, channels, dense, activation, conv_impl),
    mlp_vae (latent_dim, hidden, activation). A user's class receives `image_shape` and `latent_dim`; a user's
    factory function is called as `fn(model_config, image_shape)` and returns the module (with a `latent_dim`).
    model.output_bias='data_mean' starts a built-in decoder at the mean of `train_images` (uint8) under
    `likelihood` (per pixel for mlp_vae, per channel for conv_vae; `models.vae.data_mean_output`). A built-in
    decoder gives the channels `likelihood` needs (`objectives.vae.output_channels`: 2C for discretized_logistic).
    """
    cls = registry.resolve("model", model_config.name, MODELS)
    m = model_config
    bias = m.get("output_bias", "zero")
    if bias not in OUTPUT_BIASES:
        raise ValueError(f"unknown model.output_bias {bias!r}; choices: {', '.join(OUTPUT_BIASES)}")
    out_bias = {}
    if bias == "data_mean":
        if cls not in (ConvVAE, MLPVAE):
            raise ValueError(f"model.output_bias='data_mean' sets a built-in decoder's last bias; {m.name!r} is "
                             "your own model: initialise it there, or set --config.model.output_bias=zero")
        if train_images is None:
            raise ValueError("model.output_bias='data_mean' needs the training images")
        out_bias = {"out_bias_init": nn.initializers.constant(data_mean_output(train_images, likelihood,
                                                                               cls is MLPVAE))}
    out_channels = output_channels(likelihood, image_shape[-1])
    k = int(m.get("num_classes", 0))
    if cls is ConvVAE:
        return ConvVAE(tuple(image_shape), m.latent_dim, tuple(m.channels), m.dense, m.activation,
                       m.get("conv_impl", "auto"), out_channels=out_channels, num_classes=k, **out_bias)
    if cls is MLPVAE:
        return MLPVAE(tuple(image_shape), m.latent_dim, tuple(m.hidden), m.activation, out_channels=out_channels,
                      num_classes=k, **out_bias)
    conditional = ("num_classes", "labels") if k else ()
    if is_module_class(cls):
        _check_vae_class(m.name, cls, fields=("image_shape", "latent_dim", *conditional))
        model = cls(image_shape=tuple(image_shape), latent_dim=m.latent_dim, **({"num_classes": k} if k else {}))
        what = "the class's own default"
    else:
        model = registry.call(f"model {m.name!r}", cls, "fn(model_config, image_shape) -> module", m,
                              tuple(image_shape))
        if not isinstance(model, nn.Module) or not isinstance(getattr(model, "latent_dim", None), numbers.Integral):
            raise ValueError(f"model {m.name!r}: a model factory must return a Linen module with an int field "
                             f"latent_dim (and encode/decode methods), got {type(model).__name__}")
        _check_vae_class(m.name, type(model), fields=conditional)
        what = "built by the factory (build it with model_config.num_classes)"
    if getattr(model, "num_classes", 0) != k:  # the step and the evaluation feed labels by model.num_classes
        raise ValueError(f"model {m.name!r}: its module has num_classes={getattr(model, 'num_classes', 0)!r} "
                         f"({what}), but model.num_classes={k}; they must agree: set --config.model.num_classes="
                         f"{getattr(model, 'num_classes', 0)!r} or give the module num_classes={k}")
    return model


README = "README: Objectives, and adding your own"


def _check_vae_class(name: str, cls, fields: tuple[str, ...]) -> None:
    """A user's VAE module class (or a functools.partial of one) against what the trainer calls: `fields` it is
    constructed with, and the methods encode, decode and __call__ (init). Fails before it is built, naming what is
    missing."""
    while isinstance(cls, functools.partial):
        cls = cls.func
    have = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    if missing := [f for f in fields if f not in have and f in ("image_shape", "latent_dim")]:
        raise ValueError(f"model {name!r}: the trainer builds a model class as {cls.__name__}(image_shape=(H, W, C), "
                         f"latent_dim=model.latent_dim); it has no field {' or '.join(missing)}: add "
                         f"`image_shape: tuple` and `latent_dim: int` fields ({README})")
    if missing := [f for f in fields if f not in have]:
        raise ValueError(f"model {name!r}: model.num_classes > 0 makes a class-conditional VAE, whose module has the "
                         f"fields `num_classes: int` and `labels` (the labels the trainer binds with "
                         f"model.clone(labels=y), int [B], for encode and decode to read, as jaxgen.models.vae's "
                         f"with_labels does); {cls.__name__} has no {' or '.join(missing)} ({README})")
    defined = {k for c in cls.__mro__ if c not in (nn.Module, object) for k in vars(c)}
    if missing := [f for f in ("encode", "decode", "__call__") if f not in defined]:
        raise ValueError(f"model {name!r}: {cls.__name__} has no {', '.join(missing)}; a VAE module has encode(x) -> "
                         f"(mu, logvar), decode(z) -> the likelihood's parameters [B, H, W, C] (2C for "
                         f"discretized_logistic), and __call__(x, z) for init ({README})")


def is_module_class(obj) -> bool:
    """A Linen module class, or a functools.partial of one (fields fixed by the user): built with image_shape and
    latent_dim, not called as a factory."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    return isinstance(obj, type) and issubclass(obj, nn.Module)
