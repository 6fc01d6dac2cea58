"""pytorch-fid's InceptionV3 in Flax, and its preprocessing (jaxgen/evaluation/inception.py reads the weights and
computes features with it). The convention followed is pytorch-fid 0.3.0's, a port of TensorFlow's
`inception-2015-12-05` graph that the original FID code (bioinf-jku/TTUR) used:

- images are read as uint8 (PNG files), scaled to [0, 1] (x / 255), resized to 299x299 bilinearly with
  `F.interpolate(..., mode='bilinear', align_corners=False)`, i.e. without antialiasing even when shrinking, then
  mapped to [-1, 1] (2x - 1); one channel is replicated to three (PIL's `convert('RGB')`);
- the architecture is torchvision's Inception3 with pytorch-fid's patches: BasicConv2d = conv without bias + BatchNorm
  (eps 1e-3, running statistics) + ReLU; the pool branches of Mixed_5b-d, 6b-e and 7b average 3x3 windows without
  counting the zero padding (`count_include_pad=False`, as TF does); Mixed_7c's pool branch takes a 3x3 max.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

SIZE = 299  # the network's input side
HIGHEST = jax.lax.Precision.HIGHEST  # GPUs default to TF32/bf16 passes for float32 convs; FID wants float32


# ------------------------------------------------------------------------------------------------- the network


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, running statistics) + ReLU; `padding` is (rows, cols) on each side."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x):
        (ph, pw), s = self.padding, self.strides
        x = nn.Conv(self.features, self.kernel, (s, s), padding=((ph, ph), (pw, pw)), use_bias=False,
                    precision=HIGHEST, name="conv")(x)
        return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x))


def _window3x3(x, stride: int, pad: int, kind: str):
    """The max ('max') or sum ('sum', the padding adds zeros) of each 3x3 window of NHWC `x`, padded by `pad` on each
    side, at `stride`: nine strided slices combined elementwise, which fuse into one loop. (XLA:CPU runs a
    reduce-window, what nn.max_pool and nn.avg_pool lower to, calling its reduction per element: without LLVM's
    optimisation, as the tests compile, the pools took 1.3 of the 2.2 s of kernel time of 12 images.)"""
    fill = -jnp.inf if kind == "max" else 0.0
    x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
    h, w = (x.shape[1] - 3) // stride + 1, (x.shape[2] - 3) // stride + 1
    out = None
    for i in range(3):
        for j in range(3):
            part = x[:, i : i + stride * (h - 1) + 1 : stride, j : j + stride * (w - 1) + 1 : stride]
            out = part if out is None else (jnp.maximum(out, part) if kind == "max" else out + part)
    return out


def _max_pool_3x3_s2(x):
    """nn.max_pool(x, (3, 3), (2, 2)) as `_window3x3`: the reductions between Inception's stages."""
    return _window3x3(x, 2, 0, "max")


def _pool3x3(x, kind: str):
    """pytorch-fid's pool branches: 3x3, stride 1, padding 1; 'avg' ignores the padding (count_include_pad=False)."""
    if kind == "max":
        return _window3x3(x, 1, 1, "max")
    count = _window3x3(np.ones((1, *x.shape[1:3], 1), np.float32), 1, 1, "sum")  # 9 inside, 6 on edges, 4 corners
    return _window3x3(x, 1, 1, "sum") / count


class InceptionA(nn.Module):  # Mixed_5b-d
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_pool3x3(x, "avg"))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):  # Mixed_6a
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(nn.Module):  # Mixed_6b-e
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_pool3x3(x, "avg"))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):  # Mixed_7a
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(nn.Module):  # Mixed_7b (pool 'avg'), Mixed_7c (pool 'max': pytorch-fid's FIDInceptionE_2)
    pool: str

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_pool3x3(x, self.pool))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """pytorch-fid's FID InceptionV3: images [N, 299, 299, 3] float in [-1, 1] (see `preprocess`) ->
    (pool [N, 2048] float32, logits [N, 1008] float32). Submodule names are the state dict's."""

    @nn.compact
    def __call__(self, x):
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3_s2(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(c, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return pool, nn.Dense(1008, precision=HIGHEST, name="fc")(pool)


# ----------------------------------------------------------------------------------------------- preprocessing


def check_images(images) -> None:
    shape, dtype = tuple(images.shape), np.dtype(images.dtype)
    want = "uint8 images [N, H, W, C] (NHWC, values 0..255) with C = 1 or 3"
    if len(shape) != 4:
        raise ValueError(f"Inception features want {want}; got shape {shape}")
    if shape[-1] not in (1, 3):
        raise ValueError(f"Inception features want {want}; got {shape[-1]} channels (shape {shape})")
    if dtype != np.uint8:
        raise ValueError(
            f"Inception features want {want}; got dtype {dtype}. Quantise samples as saved PNGs are "
            "(pytorch-fid reads PNGs): from [0, 1] floats `np.clip(np.round(x * 255), 0, 255).astype(np.uint8)`, "
            "from [-1, 1] first x = (x + 1) / 2")


@functools.lru_cache(maxsize=16)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's bilinear `F.interpolate(align_corners=False)` along one axis, no antialias.

    The source coordinate max((o + 0.5) * n_in / n_out - 0.5, 0) is rounded as torch 2.13's CPU kernel rounds it: the
    scale in float32, then a fused multiply-add (exact in float64, rounded once to float32). That gave torch's weights
    bit for bit for 28..1024 -> 299; plain float32 arithmetic was off by up to 1.5e-5 near 300."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.float64(scale) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0.astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (np.arange(n_out), i0), np.float32(1) - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


def preprocess(images_uint8: jax.Array) -> jax.Array:
    """uint8 images [N, H, W, 1 or 3] -> float32 [N, 299, 299, 3] in [-1, 1], exactly as pytorch-fid prepares them
    (x / 255, bilinear resize without antialiasing, 2x - 1, gray replicated). Jit-able; ValueError on bad input."""
    check_images(images_uint8)
    x = jnp.asarray(images_uint8).astype(jnp.float32) / 255.0
    _, h, w, _ = x.shape
    if (h, w) != (SIZE, SIZE):
        x = jnp.einsum("oh,nhwc->nowc", _resize_matrix(h, SIZE), x, precision=HIGHEST)
        x = jnp.einsum("pw,nowc->nopc", _resize_matrix(w, SIZE), x, precision=HIGHEST)
    x = 2.0 * x - 1.0
    return jnp.broadcast_to(x, (*x.shape[:3], 3)) if x.shape[-1] == 1 else x
