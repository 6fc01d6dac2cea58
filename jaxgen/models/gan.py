"""GAN models: a generator G(z) -> images and a discriminator D(x) -> logits, built in pairs by name.

G maps z float32 [B, latent_dim] to images float32 [B, H, W, C] in [-1, 1] (tanh); D maps images [B, H, W, C] in
[-1, 1] to raw logits float32 [B]. Both are called as `module.apply(variables, inputs, train=...)`; a
class-conditional pair (`model.num_classes` > 0) as `module.apply(variables, inputs, labels, train=...)`, labels
int [B] in [0, num_classes). Variables live
in 'params' and, when BatchNorm or spectral norm is used, 'batch_stats' (BN running averages; spectral norm's
power-iteration vector u and its last sigma). Train-mode calls with 'batch_stats' present need
`mutable=['batch_stats']`: BN then normalises with the batch's statistics, synchronised over `axis_name` when set
(call inside `jax.shard_map` over that mesh axis), and spectral norm advances its power iteration by one step.
Eval mode (train=False) uses BN's running averages and leaves every variable unchanged.

Built-in pairs (GANS): 'dcgan' (resolutions 28, 32, 64) and 'resnet' (SNGAN's CIFAR-10 ResNets at 32; at 64 the
same blocks with jaxgen's own widths, not SNGAN's 64x64 models).

Class-conditional (num_classes > 0), both pairs: D adds the projection term <embed(y), phi(x)> to its logit, phi(x)
the features its last Dense reads (Miyato and Koyama 2018, "cGANs with projection discriminator"), the embedding
spectrally normalised with D. The ResNet G replaces its blocks' BatchNorm affine by a per-class one (categorical
conditional BatchNorm, as the same paper's generator; the last BN before the output stays unconditional); a G
without BatchNorm in its blocks (the DCGAN G, or g_norm='none') takes the one-hot label concatenated to z (Mirza
and Osindero 2014).
"""

from __future__ import annotations

import logging
import numbers

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jaxgen import registry
from jaxgen.models import batch_norm, layers
from jaxgen.models.gan_blocks import (
    DTYPES,
    ConditionalBatchNorm,
    apply_layer,
    bias_in_float32,
    check_labels,
    check_model,
    norm_layer,
    projection,
    with_one_hot,
)
from jaxgen.models.layers import ConvDown2x, ConvTranspose2x

log = logging.getLogger(__name__)

# Radford et al. 2016, sec. 4: "All weights were initialized from a zero-centered Normal distribution with standard
# deviation 0.02"; the pytorch/examples DCGAN draws BatchNorm's scale from N(1, 0.02).
DCGAN_INIT = nn.initializers.normal(0.02)


def apply_model(module, variables: dict, x, train: bool, labels=None):
    """(output, new non-param collections) of a Flax module called on x (and `labels`, int [B], for a
    class-conditional one); collections are updated only in train mode."""
    args = (x,) if labels is None else (x, labels)
    stats = [k for k in variables if k != "params"]
    if train and stats:
        out, updates = module.apply(variables, *args, train=True, mutable=stats)
        return out, {**variables, **updates}
    return module.apply(variables, *args, train=train), variables


def _dcgan_scale_init(key, shape, dtype=jnp.float32):
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


# --- DCGAN -----------------------------------------------------------------------------------------------------------
# Radford et al. 2016 with the layer sizes of the pytorch/examples DCGAN: resolution -> (base size, width multiples
# from the base up). G starts at base x base x mult[0] * width and doubles the size per transposed conv.
DCGAN_LEVELS = {64: (4, (8, 4, 2, 1)), 32: (4, (4, 2, 1)), 28: (7, (2, 1))}


class DCGANGenerator(nn.Module):
    """z [B, latent_dim] -> images [B, H, W, C] in [-1, 1].

    At 64 (w = width): Dense (no bias) to 4x4x8w, which is PyTorch's ConvTranspose2d(nz, 8w, 4, 1, 0) on a 1x1 input,
    BN, ReLU; then 4x4 stride-2 transposed convs (no bias) 8w->4w (8x8) ->2w (16) ->w (32), each BN, ReLU; then
    -> C (64x64), tanh. At 32: base 4x4x4w, up 4w->2w->w->C. At 28: base 7x7x2w, up 2w->w->C.
    Class-conditional (num_classes > 0): G(z, labels) with the one-hot labels [B, num_classes] appended to z.
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 100
    width: int = 64
    norm: str = "batch"
    spectral_norm: bool = False
    dtype: str = "float32"
    axis_name: str | None = None
    conv_impl: str = "auto"
    norm_impl: str = "auto"
    num_classes: int = 0  # > 0: class-conditional, the one-hot label appended to z

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        check_model("dcgan", self.image_shape, tuple(DCGAN_LEVELS), [("g_norm", self.norm)], self.dtype)
        check_labels(self, labels)
        base, mults = DCGAN_LEVELS[self.image_shape[0]]
        dt, sn = DTYPES[self.dtype], self.spectral_norm
        norm = lambda h: norm_layer(self.norm, self.axis_name, self.dtype, train, _dcgan_scale_init,
                                    impl=self.norm_impl)(h)
        bias = self.norm == "none"  # BatchNorm's shift makes a bias redundant; without it, layers keep theirs
        dense = nn.Dense(base * base * mults[0] * self.width, use_bias=bias, kernel_init=DCGAN_INIT, dtype=dt,
                         param_dtype=jnp.float32, promote_dtype=bias_in_float32)
        h = apply_layer(dense, with_one_hot(z, labels, self.num_classes), sn, train)
        h = nn.relu(norm(h.astype(dt).reshape(z.shape[0], base, base, mults[0] * self.width)))
        for m in mults[1:]:
            up = ConvTranspose2x(m * self.width, 4, 1, use_bias=bias, kernel_init=DCGAN_INIT, dtype=dt,
                                 impl=self.conv_impl)
            h = apply_layer(up, h, sn, train)
            h = nn.relu(norm(h))
        out = ConvTranspose2x(self.image_shape[-1], 4, 1, use_bias=False, kernel_init=DCGAN_INIT, dtype=dt,
                              impl=self.conv_impl)
        h = apply_layer(out, h, sn, train)
        return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(nn.Module):
    """Images [B, H, W, C] -> logits [B].

    At 64 (w = width): 4x4 stride-2 convs (padding 1, no bias) C->w (32x32), LeakyReLU(0.2) (no BN on the first
    layer); w->2w (16), 2w->4w (8), 4w->8w (4), each BN, LeakyReLU(0.2); then PyTorch's final 4x4 valid conv to 1,
    i.e. a Dense (no bias) on the flattened 4x4x8w. At 32: C->w->2w->4w (4x4), Dense. At 28: C->w (14) ->2w (7),
    Dense on 7x7x2w. Class-conditional (num_classes > 0): D(x, labels) adds the projection term on those flattened
    features.
    """

    image_shape: tuple[int, int, int]
    width: int = 64
    norm: str = "batch"
    spectral_norm: bool = False
    dtype: str = "float32"
    axis_name: str | None = None
    conv_impl: str = "auto"
    norm_impl: str = "auto"
    num_classes: int = 0  # > 0: class-conditional, a projection discriminator (or an auxiliary classifier)
    conditioning: str = "projection"  # D_CONDITIONING: 'ac' adds ACGAN's class head instead of the projection

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        check_model("dcgan", self.image_shape, tuple(DCGAN_LEVELS), [("d_norm", self.norm)], self.dtype)
        check_labels(self, labels)
        _, mults = DCGAN_LEVELS[self.image_shape[0]]
        dt, sn = DTYPES[self.dtype], self.spectral_norm
        h = x.astype(dt)
        for i, m in enumerate(reversed(mults)):
            conv = ConvDown2x(m * self.width, 4, 1, use_bias=self.norm == "none", kernel_init=DCGAN_INIT, dtype=dt,
                              impl=self.conv_impl)
            h = apply_layer(conv, h, sn, train)
            if i > 0:
                h = norm_layer(self.norm, self.axis_name, self.dtype, train, _dcgan_scale_init, impl=self.norm_impl)(h)
            h = layers.leaky_relu(h, 0.2)
        # The logit in float32: rounded to bfloat16 it moved D's loss by 5e-3 relative where |logit| reached 11.
        out = nn.Dense(1, use_bias=False, kernel_init=DCGAN_INIT, dtype=jnp.float32, param_dtype=jnp.float32)
        h = h.reshape(h.shape[0], -1)
        logit = apply_layer(out, h, sn, train)[:, 0].astype(jnp.float32)
        if self.num_classes and self.conditioning == "ac":
            class_head(h, self.num_classes, DCGAN_INIT, sn, train, self)
            return logit
        return logit + projection(h, labels, self.num_classes, DCGAN_INIT, sn, train) if self.num_classes else logit


# --- ResNet (SNGAN) --------------------------------------------------------------------------------------------------
# Miyato et al. 2018, appendix B.4 (Tables 4, 5): the CIFAR-10 ResNets, Glorot-uniform init, zero biases.
GLOROT = nn.initializers.xavier_uniform()
# The official SNGAN code (pfnet-research/sngan_projection, resblocks) draws the blocks' 3x3 convs from Glorot
# uniform with gain sqrt(2), i.e. variance scaled by 2; shortcuts and the dense layers keep gain 1.
GLOROT_RELU = nn.initializers.variance_scaling(2.0, "fan_avg", "uniform")


def _upsample(x):
    """Nearest-neighbour 2x: [B, H, W, C] -> [B, 2H, 2W, C]."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _avg_pool(x):
    return nn.avg_pool(x, (2, 2), (2, 2))


class _ResBlock(nn.Module):
    """A residual block [B, H, W, cin] -> [B, H', W', features].

    'up' (G): BN, ReLU, 2x nearest upsample, 3x3 conv, BN, ReLU, 3x3 conv; shortcut upsample + 1x1 conv.
    'down' (D): [BN], ReLU, 3x3 conv, [BN], ReLU, 3x3 conv, 2x2 avg-pool; shortcut 1x1 conv + avg-pool.
    'first' (D's optimized first block): 3x3 conv, [BN], ReLU, 3x3 conv, avg-pool; shortcut avg-pool + 1x1 conv.
    'same' (D): as 'down' without pooling; identity shortcut when cin == features (else a 1x1 conv).
    With num_classes > 0 and norm 'batch' ('up' only), each BN is a gan_blocks.ConditionalBatchNorm of the labels.
    """

    features: int
    kind: str
    norm: str
    spectral_norm: bool
    dtype: str
    axis_name: str | None
    norm_impl: str = "auto"
    num_classes: int = 0

    @nn.compact
    def __call__(self, x, train: bool, labels=None):
        dt = DTYPES[self.dtype]
        conv = lambda k, name: nn.Conv(self.features, (k, k), padding="SAME", dtype=dt, param_dtype=jnp.float32,
                                       kernel_init=GLOROT_RELU if k == 3 else GLOROT, name=name,
                                       promote_dtype=bias_in_float32)
        apply = lambda layer, h: apply_layer(layer, h, self.spectral_norm, train).astype(dt)
        if self.num_classes and self.norm == "batch":
            norm = lambda h, name: ConditionalBatchNorm(self.num_classes, self.axis_name, self.dtype, train,
                                                        self.norm_impl, name=name)(h, labels)
        else:
            norm = lambda h, name: norm_layer(self.norm, self.axis_name, self.dtype, train, name=name,
                                         impl=self.norm_impl)(h)
        if self.kind == "first":
            h = nn.relu(norm(apply(conv(3, "conv1"), x), "norm1"))
            h = _avg_pool(apply(conv(3, "conv2"), h))
            return h + apply(conv(1, "shortcut"), _avg_pool(x))
        h = nn.relu(norm(x, "norm1"))
        if self.kind == "up":
            h = _upsample(h)
        h = nn.relu(norm(apply(conv(3, "conv1"), h), "norm2"))
        h = apply(conv(3, "conv2"), h)
        if self.kind == "up":
            return h + apply(conv(1, "shortcut"), _upsample(x))
        if self.kind == "down":
            return _avg_pool(h) + _avg_pool(apply(conv(1, "shortcut"), x))
        return h + (x if x.shape[-1] == self.features else apply(conv(1, "shortcut"), x))


# resolution -> widths in units of the config's width. G: the width at 4x4, then after each up-block.
# D: after the optimized first block, then after each further block, and whether that block downsamples.
RESNET_G = {32: (4, 4, 4, 4), 64: (8, 4, 2, 1, 1)}
RESNET_D = {32: ((2, 2, 2, 2), (True, False, False)), 64: ((1, 2, 4, 4, 4), (True, True, False, False))}


class ResNetGenerator(nn.Module):
    """z [B, latent_dim] -> images [B, H, W, C] in [-1, 1] (SNGAN's CIFAR-10 generator, Miyato et al. 2018, Table 4).

    At 32 (ch = 4 * width, 256 for width 64 as in the paper): Dense to 4x4xch; 3 up-blocks ch->ch (8, 16, 32);
    BN, ReLU, 3x3 conv to C, tanh. At 64 (jaxgen's own widths, not SNGAN's resnet_64; w = width): Dense to
    4x4x8w; up-blocks 8w->4w (8), 4w->2w (16), 2w->w (32), w->w (64); BN, ReLU, 3x3 conv to C, tanh.
    Class-conditional (num_classes > 0): G(z, labels); the up-blocks' BatchNorms are ConditionalBatchNorms (with
    norm 'none', the one-hot labels are appended to z instead).
    """

    image_shape: tuple[int, int, int]
    latent_dim: int = 128
    width: int = 64
    norm: str = "batch"
    spectral_norm: bool = False
    dtype: str = "float32"
    axis_name: str | None = None
    norm_impl: str = "auto"
    num_classes: int = 0

    @nn.compact
    def __call__(self, z: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        check_model("resnet", self.image_shape, tuple(RESNET_G), [("g_norm", self.norm)], self.dtype)
        check_labels(self, labels)
        widths = [m * self.width for m in RESNET_G[self.image_shape[0]]]
        dt, sn = DTYPES[self.dtype], self.spectral_norm
        dense = nn.Dense(4 * 4 * widths[0], kernel_init=GLOROT, dtype=dt, param_dtype=jnp.float32,
                         promote_dtype=bias_in_float32)
        cbn = self.num_classes if self.norm == "batch" else 0  # else the labels go in with z
        h = apply_layer(dense, with_one_hot(z, labels, self.num_classes - cbn), sn, train)
        h = h.astype(dt).reshape(z.shape[0], 4, 4, widths[0])
        for w in widths[1:]:
            h = _ResBlock(w, "up", self.norm, sn, self.dtype, self.axis_name, self.norm_impl, cbn)(h, train, labels)
        h = nn.relu(norm_layer(self.norm, self.axis_name, self.dtype, train, impl=self.norm_impl)(h))
        out = nn.Conv(self.image_shape[-1], (3, 3), padding="SAME", kernel_init=GLOROT, dtype=dt,
                      param_dtype=jnp.float32, promote_dtype=bias_in_float32)  # float32 out, into the tanh
        return jnp.tanh(apply_layer(out, h, sn, train).astype(jnp.float32))


class ResNetDiscriminator(nn.Module):
    """Images [B, H, W, C] -> logits [B] (SNGAN's CIFAR-10 discriminator, Miyato et al. 2018, Table 5).

    At 32 (ch = 2 * width, 128 for width 64 as in the paper): optimized down-block C->ch (16x16), down-block ch->ch
    (8), two blocks ch->ch at 8x8, ReLU, global sum pooling, Dense to 1 without a bias (as SNGAN's code). At 64
    (jaxgen's own extension, not SNGAN's resnet_64; w = width, doubling per level): optimized block C->w (32),
    down-blocks w->2w (16), 2w->4w (8), two blocks 4w->4w at 8x8, ReLU, sum, Dense.
    Spectral norm, when on, wraps every conv and the Dense; norm 'batch' adds BN inside the blocks (SNGAN has none).
    Class-conditional (num_classes > 0): D(x, labels) adds the projection term on the pooled features.
    """

    image_shape: tuple[int, int, int]
    width: int = 64
    norm: str = "none"
    spectral_norm: bool = True
    dtype: str = "float32"
    axis_name: str | None = None
    norm_impl: str = "auto"
    num_classes: int = 0
    conditioning: str = "projection"  # D_CONDITIONING: 'ac' adds ACGAN's class head instead of the projection

    @nn.compact
    def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True) -> jax.Array:
        check_model("resnet", self.image_shape, tuple(RESNET_D), [("d_norm", self.norm)], self.dtype)
        check_labels(self, labels)
        mults, down = RESNET_D[self.image_shape[0]]
        dt, sn = DTYPES[self.dtype], self.spectral_norm
        block = lambda w, kind: _ResBlock(w * self.width, kind, self.norm, sn, self.dtype, self.axis_name,
                                              self.norm_impl)
        h = block(mults[0], "first")(x.astype(dt), train)
        for m, d in zip(mults[1:], down):
            h = block(m, "down" if d else "same")(h, train)
        h = nn.relu(h).astype(jnp.float32).sum((1, 2))
        # SNGAN's: no bias. In float32, as its input (the sum pooling) already is: a bfloat16 logit is rounded.
        out = nn.Dense(1, use_bias=False, kernel_init=GLOROT, dtype=jnp.float32, param_dtype=jnp.float32)
        logit = apply_layer(out, h, sn, train)[:, 0].astype(jnp.float32)
        if self.num_classes and self.conditioning == "ac":
            class_head(h, self.num_classes, GLOROT, sn, train, self)
            return logit
        return logit + projection(h, labels, self.num_classes, GLOROT, sn, train) if self.num_classes else logit


def init_variables(module: nn.Module, key: jax.Array, *args, **kwargs) -> dict:
    """`module.init(key, *args, **kwargs)`, with spectrally normalised kernels as their initializer drew them.

    flax's SpectralNorm stores each kernel divided by its first sigma estimate at init: a 128->128 3x3 conv of
    SNGAN's D starts 1.5x smaller than its Glorot draw, its first conv larger. The forward pass divides by sigma
    either way, but Adam's steps have a fixed size, so that scale sets each layer's effective learning rate.
    Miyato et al.'s Chainer code and PyTorch's spectral_norm keep the draw and divide only in the forward pass;
    so does this. Modules without a `spectral_norm` field (a user's own) get flax's init unchanged.
    """
    variables = dict(module.init(key, *args, **kwargs))
    if getattr(module, "spectral_norm", False):  # the same names and RNG paths without the wrapper: the raw draws
        raw = module.clone(spectral_norm=False).init(key, *args, **kwargs)["params"]
        if jax.tree.structure(raw) == jax.tree.structure(variables["params"]):
            variables["params"] = raw
        else:
            log.warning("%s: its parameters without spectral norm are named differently; its spectrally "
                        "normalised kernels keep flax's init (divided by a first sigma estimate)",
                        type(module).__name__)
    return variables


def num_classes(model_config) -> int:
    """model.num_classes: 0 for an unconditional GAN, else the number of classes G and D are conditioned on."""
    return int(model_config.get("num_classes", 0))


def check_pair(name: str, generator: nn.Module, discriminator: nn.Module, g_vars, d_vars, image_shape,
               classes: int = 0) -> None:
    """Checks, by tracing once in eval mode (no computation), that G(z [B, latent_dim]) returns images
    [B, *image_shape] and D(x [B, *image_shape]) one score per image [B] (with labels int [B] after z and x when
    `classes` > 0): a model pair of the user's that breaks this fails here, naming what came back, not inside the
    train step (a wrong resolution reaching D as a flax shape error; a D output [B, 1] broadcasting against [B] in a
    loss)."""
    b = 2
    z = jax.ShapeDtypeStruct((b, generator.latent_dim), jnp.float32)
    y = (jax.ShapeDtypeStruct((b,), jnp.int32),) if classes else ()
    labels = ", labels" if classes else ""
    fake = jax.eval_shape(lambda v, z, *y: generator.apply(v, z, *y, train=False), g_vars, z, *y)
    if getattr(fake, "shape", None) != (b, *image_shape):
        raise ValueError(f"GAN model {name!r}: G(z{labels}) of z [{b}, {generator.latent_dim}] returned "
                         f"{registry.describe(fake)}; it must return images [{b}, {', '.join(map(str, image_shape))}]"
                         f" (the data's shape), in [-1, 1] (e.g. a tanh output)")
    x = jax.ShapeDtypeStruct((b, *image_shape), jnp.float32)
    score = jax.eval_shape(lambda v, x, *y: discriminator.apply(v, x, *y, train=False), d_vars, x, *y)
    if getattr(score, "shape", None) != (b,):
        hint = " (squeeze its last axis: out[:, 0])" if getattr(score, "shape", None) == (b, 1) else ""
        raise ValueError(f"GAN model {name!r}: D(x{labels}) of images [{b}, {', '.join(map(str, image_shape))}] "
                         f"returned {registry.describe(score)}; it must return one score per image, [{b}]{hint}")


# --- Building by name ------------------------------------------------------------------------------------------------
def _fields(m, image_shape, axis_name, prefix: str) -> dict:
    return dict(image_shape=tuple(image_shape), width=m[f"{prefix}_width"], norm=m[f"{prefix}_norm"],
                spectral_norm=bool(m[f"{prefix}_spectral_norm"]), dtype=m.dtype, axis_name=axis_name,
                norm_impl=m.get("norm_impl", "auto"), num_classes=num_classes(m))


def _pair(name, gen, disc, supported, model_config, image_shape, axis_name, **extra):
    m = model_config
    check_model(name, image_shape, supported, [("g_norm", m.g_norm), ("d_norm", m.d_norm)], m.dtype)
    batch_norm.resolve_norm_impl(m.get("norm_impl", "auto"))  # an unknown name fails here, listing the choices
    conditioning = m.get("d_conditioning", "projection")
    if conditioning not in D_CONDITIONING:
        raise ValueError(f"unknown model.d_conditioning {conditioning!r}; choices: {', '.join(D_CONDITIONING)}")
    g = gen(latent_dim=m.latent_dim, **_fields(m, image_shape, axis_name, "g"), **extra)
    return g, disc(**_fields(m, image_shape, axis_name, "d"), conditioning=conditioning, **extra)


# How a class-conditional D reads the labels: the projection term (Miyato and Koyama 2018), or an auxiliary classifier
# head whose class logits the step trains with a cross-entropy (ACGAN, Odena et al. 2017; `class_head`).
D_CONDITIONING = ("projection", "ac")


def class_head(h: jax.Array, num_classes: int, init, spectral: bool, train: bool, module: nn.Module) -> None:
    """ACGAN's auxiliary classifier on D's last features h [B, F]: class logits [B, num_classes] in float32, sown as
    'class_logits' in the 'intermediates' collection (read by `apply_with_class_logits`; not while initializing, so
    that the variables hold no such entry)."""
    head = nn.Dense(num_classes, kernel_init=init, dtype=jnp.float32, param_dtype=jnp.float32, name="class_head")
    logits = apply_layer(head, h.astype(jnp.float32), spectral, train)
    if not module.is_initializing():
        module.sow("intermediates", "class_logits", logits)


def apply_with_class_logits(module, variables: dict, x, train: bool, labels=None):
    """`apply_model`'s (output, new non-param collections), and the class logits [B, K] an auxiliary-classifier D
    (d_conditioning='ac') computed on x."""
    args = (x,) if labels is None else (x, labels)
    stats = [k for k in variables if k != "params"]
    out, updates = module.apply(variables, *args, train=train, mutable=[*(stats if train else []), "intermediates"])
    updates = dict(updates)
    sown = traverse_util.flatten_dict(flax.core.unfreeze(updates.pop("intermediates", {})))
    # At the top for a built-in D; under the submodule's path for a D of the user's that wraps one (or calls
    # class_head inside a submodule).
    found = {path: value for path, value in sown.items() if path[-1] == "class_logits"}
    if len(found) != 1 or len(next(iter(found.values()))) != 1:
        name = type(module).__name__
        where = ", ".join("/".join(path[:-1]) or "the top" for path in found)
        raise ValueError(
            f"model.d_conditioning='ac': the discriminator {name} sowed no class logits; the built-in ones (dcgan, "
            "resnet) do, a D of yours calls jaxgen.models.gan.class_head on its last features" if not found else
            f"model.d_conditioning='ac': the discriminator {name} sowed class logits "
            f"{sum(map(len, found.values()))} times (at {where}); D's class head is called once per call of D")
    (logits,) = next(iter(found.values()))
    return out, {**variables, **updates}, logits


def dcgan(model_config, image_shape, axis_name=None) -> tuple[nn.Module, nn.Module]:
    """DCGAN's (G, D) for `image_shape` (H, W, C) with H = W in 28, 32, 64."""
    impl = model_config.get("conv_impl", "auto")
    layers.resolve_impl(impl)  # an unknown name fails here, listing the choices
    return _pair("dcgan", DCGANGenerator, DCGANDiscriminator, tuple(DCGAN_LEVELS), model_config, image_shape,
                 axis_name, conv_impl=impl)


def resnet(model_config, image_shape, axis_name=None) -> tuple[nn.Module, nn.Module]:
    """SNGAN's ResNet (G, D) for `image_shape` (H, W, C) with H = W in 32, 64."""
    return _pair("resnet", ResNetGenerator, ResNetDiscriminator, tuple(RESNET_G), model_config, image_shape,
                 axis_name)


GANS = {"dcgan": dcgan, "resnet": resnet}


def build(model_config, image_shape: tuple[int, int, int], axis_name: str | None = None) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) named by model_config.name: a GANS key, or 'package.module:function' naming a user
    function called the same way, `fn(model_config, image_shape, axis_name) -> (G, D)`.

    Args:
      model_config: fields name, latent_dim, g_width, d_width, g_norm, d_norm ('batch' | 'none'),
        g_spectral_norm, d_spectral_norm, dtype ('float32' | 'bfloat16'), conv_impl (DCGAN's strided convs:
        'auto' | 'phase' | 'xla', see jaxgen.models.layers), norm_impl (BatchNorm: 'auto' | 'fused' | 'flax'),
        num_classes (0: unconditional; > 0: G(z, labels) and D(x, labels), labels int [B]).
      image_shape: (H, W, C).
      axis_name: the mesh axis BatchNorm synchronises its batch statistics over (None: per call).
    """
    name = model_config.name
    builder = registry.resolve("GAN model", name, GANS)
    contract = "fn(model_config, image_shape, axis_name) -> (generator, discriminator)"
    readme = "(README: \"GANs: losses, regularizers, augmentation, and adding your own\")"
    if isinstance(builder, type):
        raise ValueError(f"GAN model {name!r} is a class; a GAN's model.name names a function {contract}, returning "
                         f"two Linen modules {readme}")
    pair = registry.call(f"GAN model {name!r}", builder, contract, model_config, tuple(image_shape), axis_name)
    _check_built_pair(name, pair, f"{contract} {readme}", num_classes(model_config))
    return pair


def _check_built_pair(name: str, pair, contract: str, classes: int = 0) -> None:
    """What a GAN model function returned, against the contract the trainer uses: two Linen modules, G with an int
    `latent_dim`, both called with `train=` (and labels after z and x when `classes` > 0). Fails before any
    tracing, naming what is missing."""
    what = f"GAN model {name!r}"
    if not (isinstance(pair, tuple | list) and len(pair) == 2 and all(isinstance(m, nn.Module) for m in pair)):
        raise ValueError(f"{what} returned {registry.describe(pair)}; expected {contract}")
    generator, discriminator = pair
    latent_dim = getattr(generator, "latent_dim", None)
    if not isinstance(latent_dim, numbers.Integral) or isinstance(latent_dim, bool):
        raise ValueError(f"{what}: its generator {type(generator).__name__} has no int field latent_dim (the size of "
                         f"the z it takes); add one, e.g. `latent_dim: int = 100`")
    labels = (", labels",) if classes else ()
    for role, module, arg in (("generator", generator, "z"), ("discriminator", discriminator, "x")):
        call = f"{role}({arg}{''.join(labels)}, train=...)"
        if not callable(module):  # a module without __call__ (flax's own error would be an AttributeError)
            raise ValueError(f"{what}: its {role} {type(module).__name__} has no __call__; the trainer calls it as "
                             f"{call}")
        why = (" (train: True in the train step, False for samples and evaluation"
               + (f"; labels: int [B] in [0, model.num_classes={classes}))" if classes else ")"))
        registry.check_call(f"{what}: its {role} {type(module).__name__}", module.__call__, call + why, arg,
                            *(["labels"] if classes else []), train=False)
