"""Differentiable, on-device image augmentation for GAN training (DiffAugment and affine warps).

DiffAugment (Zhao, Liu, Lin, Zhu & Han, "Differentiable Augmentation for Data-Efficient GAN Training", NeurIPS
2020, arXiv:2006.10738) augments the reals AND the fakes D sees, with transforms differentiable in the image, so
that G's gradient flows back through the augmentation of its samples. Every function here is written batched
and traced: per-example draws from a typed PRNG key, static shapes, no host work; it runs inside `jax.jit` and on
each device's slice inside `jax.shard_map`.

Images are float [B, H, W, C] in [-1, 1] (float32 or bfloat16; the dtype is kept, arithmetic is float32).
Every augmentation is `fn(key, x) -> x` of the same shape. Fill convention: pixels with no source (shifted in,
cut out, rotated in) are 0, i.e. mid-grey in [-1, 1], as in DiffAugment, which zero-pads for translation and
multiplies by a zero mask for cutout on images in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen import registry

# The ranges every augmentation draws from, per example. Change them here (before the step is compiled).
RANGES = {
    # DiffAugment 'color' (arXiv:2006.10738; mit-han-lab/data-efficient-gans DiffAugment_pytorch.py, whose
    # rand_brightness, rand_saturation and rand_contrast draw these ranges): add U(-0.5, 0.5); scale the deviation
    # from the per-pixel channel mean by U(0, 2); scale the deviation from the per-image mean by U(0.5, 1.5).
    "brightness": (-0.5, 0.5),
    "saturation": (0.0, 2.0),
    "contrast": (0.5, 1.5),
    # DiffAugment 'translation': integer shift in [-s, s] per axis, s = round(1/8 of that side), zero fill. The
    # rounding is DiffAugment-stylegan2-pytorch's int(n * r + 0.5) (the repository's first DiffAugment_pytorch.py
    # and the TF one floor: the same at 32 and 64, s = 4 instead of 3 at 28).
    "translation": 1 / 8,
    # DiffAugment 'cutout': a square of side round(1/2 of the image side) zeroed at a random centre, clipped.
    "cutout": 1 / 2,
    # Horizontal flip probability per example. Applied to fakes as well as reals: at exactly 0.5 D cannot tell
    # an image from its mirror, so G may draw mirrored content (StyleGAN2-ADA's 'leaking'); harmless for faces,
    # not for digits. DiffAugment's own runs mirror only the dataset.
    "flip": 0.5,
    # Affine warps, jaxgen's choices (for comparison, Differentiable Siamese Augmentation, Zhao & Bilen ICML 2021,
    # sets ratio_rotate = 15 degrees and ratio_scale = 1.2): rotation angle in degrees, isotropic zoom factor, crop
    # side as a fraction of the image side (at a uniform position inside the image, resized back to full size).
    "rotation": (-15.0, 15.0),
    "scale": (0.9, 1.1),
    "crop": (0.8, 1.0),
}


def _uniform(key: jax.Array, batch: int, bounds: tuple[float, float]) -> jax.Array:
    return jax.random.uniform(key, (batch,), jnp.float32, bounds[0], bounds[1])


def _per_example(v: jax.Array) -> jax.Array:
    return v[:, None, None, None]


def _side(n: int, ratio: float) -> int:
    """round(n * ratio), halves up, as DiffAugment's `int(n * ratio + 0.5)` (e.g. 28 * 1/8 -> 4, 32 * 1/8 -> 4)."""
    return int(n * ratio + 0.5)


# ---- color ------------------------------------------------------------------------------------------------------


def brightness(x: jax.Array, delta: jax.Array) -> jax.Array:
    """x + delta per example; x [B, H, W, C], delta [B]."""
    return (x.astype(jnp.float32) + _per_example(delta)).astype(x.dtype)


def saturation(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each pixel's deviation from its channel mean by factor [B] (identity for C = 1)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    return ((xf - mean) * _per_example(factor) + mean).astype(x.dtype)


def contrast(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each image's deviation from its mean over H, W, C by factor [B]."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=(1, 2, 3), keepdims=True)
    return ((xf - mean) * _per_example(factor) + mean).astype(x.dtype)


def color(key: jax.Array, x: jax.Array) -> jax.Array:
    """DiffAugment 'color': brightness, then saturation, then contrast, each factor drawn per example."""
    kb, ks, kc = jax.random.split(key, 3)
    b = x.shape[0]
    x = brightness(x, _uniform(kb, b, RANGES["brightness"]))
    x = saturation(x, _uniform(ks, b, RANGES["saturation"]))
    return contrast(x, _uniform(kc, b, RANGES["contrast"]))


# ---- integer shifts, masks, flips -------------------------------------------------------------------------------


def shift(x: jax.Array, dy: jax.Array, dx: jax.Array) -> jax.Array:
    """out[b, i, j] = x[b, i + dy[b], j + dx[b]] where that is inside the image, else 0; dy, dx int [B].

    One gather with computed indices (its gradient is a scatter-add back onto x).
    """
    bsz, h, w, _ = x.shape
    rows = jnp.arange(h)[None, :] + dy[:, None]  # [B, H]
    cols = jnp.arange(w)[None, :] + dx[:, None]  # [B, W]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = jnp.arange(bsz)[:, None, None]
    out = x[batch, jnp.clip(rows, 0, h - 1)[:, :, None], jnp.clip(cols, 0, w - 1)[:, None, :]]
    return jnp.where(inside[..., None], out, jnp.zeros((), x.dtype))


def translation(key: jax.Array, x: jax.Array) -> jax.Array:
    """DiffAugment 'translation': integer shifts dy, dx ~ U{-s..s} per example, s = round(H/8), round(W/8)."""
    ky, kx = jax.random.split(key)
    bsz, h, w, _ = x.shape
    sy, sx = _side(h, RANGES["translation"]), _side(w, RANGES["translation"])
    return shift(x, jax.random.randint(ky, (bsz,), -sy, sy + 1), jax.random.randint(kx, (bsz,), -sx, sx + 1))


def cut(x: jax.Array, top: jax.Array, left: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Zeroes rows [top, top + size[0]) x cols [left, left + size[1]) of each example (clipped); top, left int [B]."""
    _, h, w, _ = x.shape
    r, c = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
    in_r = (r >= top[:, None]) & (r < top[:, None] + size[0])
    in_c = (c >= left[:, None]) & (c < left[:, None] + size[1])
    return jnp.where((in_r[:, :, None] & in_c[:, None, :])[..., None], jnp.zeros((), x.dtype), x)


def cutout(key: jax.Array, x: jax.Array) -> jax.Array:
    """DiffAugment 'cutout': zero a (round(H/2), round(W/2)) square centred at a uniform pixel, clipped at borders.

    The centre is uniform in [0, H - (side % 2)] per axis, so the square starts at centre - side // 2 and is never
    empty (for even sides centre = H puts half the square outside), the distribution DiffAugment uses.
    """
    ky, kx = jax.random.split(key)
    bsz, h, w, _ = x.shape
    ch, cw = _side(h, RANGES["cutout"]), _side(w, RANGES["cutout"])
    cy = jax.random.randint(ky, (bsz,), 0, h + 1 - ch % 2)
    cx = jax.random.randint(kx, (bsz,), 0, w + 1 - cw % 2)
    return cut(x, cy - ch // 2, cx - cw // 2, (ch, cw))


def flip(key: jax.Array, x: jax.Array) -> jax.Array:
    """Horizontal (width) flip of each example with probability RANGES['flip']."""
    do = jax.random.bernoulli(key, RANGES["flip"], (x.shape[0],))
    return jnp.where(_per_example(do), x[:, :, ::-1], x)


# ---- affine warps: one bilinear resampler -----------------------------------------------------------------------


def resample_affine(x: jax.Array, matrix: jax.Array, offset: jax.Array, clamp: bool = False) -> jax.Array:
    """Bilinear resampling of x at src = matrix @ dst + offset, in (row, col) pixel-index coordinates.

    x [B, H, W, C]; matrix [B, 2, 2]; offset [B, 2]. Output pixel dst = (i, j) reads x at the real-valued
    position src; each of its four integer neighbours outside the image contributes 0 (zero fill, mid-grey),
    so the image fades to 0 over one pixel at its border; with `clamp`, src is first clamped to the image (for
    maps whose only reads outside are sub-pixel overshoots, which would fade the edge). Differentiable in x (and in
    matrix, offset).
    An integer-valued map (identity, 90-degree turns about the centre) reproduces pixels exactly.
    """
    bsz, h, w, _ = x.shape
    ii, jj = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32), indexing="ij")
    dst = jnp.stack([ii, jj])  # [2, H, W]
    src = jnp.einsum("bkl,lhw->bkhw", matrix.astype(jnp.float32), dst) + offset.astype(jnp.float32)[:, :, None, None]
    if clamp:
        src = jnp.clip(src, 0.0, jnp.array([h - 1, w - 1], jnp.float32)[None, :, None, None])
    r0, c0 = jnp.floor(src[:, 0]), jnp.floor(src[:, 1])
    fr, fc = src[:, 0] - r0, src[:, 1] - c0
    r0, c0 = r0.astype(jnp.int32), c0.astype(jnp.int32)
    batch = jnp.arange(bsz)[:, None, None]
    xf = x.astype(jnp.float32)
    out = jnp.zeros(x.shape, jnp.float32)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            r, c = r0 + dr, c0 + dc
            weight = jnp.where((r >= 0) & (r < h) & (c >= 0) & (c < w), wr * wc, 0.0)
            out = out + weight[..., None] * xf[batch, jnp.clip(r, 0, h - 1), jnp.clip(c, 0, w - 1)]
    return out.astype(x.dtype)


def _centre(x: jax.Array) -> jax.Array:
    return jnp.array([(x.shape[1] - 1) / 2, (x.shape[2] - 1) / 2], jnp.float32)


def rotate(x: jax.Array, degrees: jax.Array) -> jax.Array:
    """Rotates each example about the image centre by degrees [B], counter-clockwise as displayed (row 0 on top).

    90 degrees on a square image equals np.rot90(image) (axes H, W).
    """
    a = jnp.deg2rad(degrees.astype(jnp.float32))
    cos, sin = jnp.cos(a), jnp.sin(a)
    matrix = jnp.stack([jnp.stack([cos, sin], -1), jnp.stack([-sin, cos], -1)], -2)  # [B, 2, 2]
    c = _centre(x)
    return resample_affine(x, matrix, c - jnp.einsum("bkl,l->bk", matrix, c))


def zoom(x: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each example about the image centre by factor [B] (> 1 enlarges the content)."""
    inv = 1.0 / factor.astype(jnp.float32)
    matrix = inv[:, None, None] * jnp.eye(2, dtype=jnp.float32)
    c = _centre(x)
    return resample_affine(x, matrix, c - inv[:, None] * c)


def crop_resize(x: jax.Array, frac: jax.Array, corner: jax.Array) -> jax.Array:
    """Crops a window of frac [B] times each side at top-left corner [B, 2] (row, col; in pixels, continuous),
    and resizes it back to H x W (pixel-area convention: output pixel i covers [i, i + 1) of the output grid).

    frac = 1, corner = 0 is the identity. The window lies inside the image, so its edge pixels are read, not faded
    (the pixel-area map overshoots the image by up to half an output pixel: clamped).
    """
    frac = frac.astype(jnp.float32)
    matrix = frac[:, None, None] * jnp.eye(2, dtype=jnp.float32)
    # Output pixel centre i + 0.5 maps to corner + frac * (i + 0.5); minus 0.5 for pixel-index coordinates.
    return resample_affine(x, matrix, corner.astype(jnp.float32) + 0.5 * frac[:, None] - 0.5, clamp=True)


def rotation(key: jax.Array, x: jax.Array) -> jax.Array:
    """Rotation about the centre by U(RANGES['rotation']) degrees per example, zero fill."""
    return rotate(x, _uniform(key, x.shape[0], RANGES["rotation"]))


def scale(key: jax.Array, x: jax.Array) -> jax.Array:
    """Isotropic zoom about the centre by U(RANGES['scale']) per example, zero fill where it shrinks."""
    return zoom(x, _uniform(key, x.shape[0], RANGES["scale"]))


def crop(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random crop of side U(RANGES['crop']) of the image, at a uniform position inside it, resized back."""
    kf, kp = jax.random.split(key)
    bsz, h, w, _ = x.shape
    frac = _uniform(kf, bsz, RANGES["crop"])
    room = (1.0 - frac)[:, None] * jnp.array([h, w], jnp.float32)  # [B, 2] free space along each axis
    return crop_resize(x, frac, room * jax.random.uniform(kp, (bsz, 2)))


AUGMENTATIONS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "flip": flip,
    "translation": translation,
    "cutout": cutout,
    "color": color,
    "rotation": rotation,
    "scale": scale,
    "crop": crop,
}


def _resolve(policy: str) -> list[Callable[[jax.Array, jax.Array], jax.Array]]:
    if not policy:
        return []
    return [registry.resolve("augmentation", name.strip(), AUGMENTATIONS) for name in policy.split(",")]


CONTRACT = "fn(key, x [B, H, W, C] in [-1, 1]) -> x"


def check_policy(policy: str, field: str = "augment.policy") -> None:
    """Raises ValueError for a name in the comma-separated `policy` (the config's `field`) that is neither built in
    nor importable as `package.module:function` (listing the choices), or whose function cannot be called as `apply`
    calls it (CONTRACT). Run once at start-up, before the data loads; the shape a function returns is checked while
    the step compiles (`apply`)."""
    if policy.strip().lower() in ("none", "off"):
        raise ValueError(f"{field}={policy!r}: no augmentation is the empty policy: --config.{field}=")
    names = [name.strip() for name in policy.split(",")] if policy else []
    try:
        fns = _resolve(policy)
    except registry.UnknownNameError as e:
        raise registry.UnknownNameError(f"{field}={policy!r}: {e}") from None
    for name, fn in zip(names, fns):
        registry.check_call(f"augmentation {name!r} ({field}={policy!r})", fn, CONTRACT, jax.random.key(0),
                            jnp.zeros((1, 8, 8, 1)))


APPLY_STREAM = 0x0ADA  # folded into augmentation i's key: the draw of whether it applies (with a probability)


def apply(policy: str, key: jax.Array, x: jax.Array, p: jax.Array | float | None = None,
          field: str = "augment.policy") -> jax.Array:
    """Applies the comma-separated augmentations in `policy` in order ('' returns x unchanged).

    Augmentation i gets the key `jax.random.fold_in(key, i)`. x [B, H, W, C] float in [-1, 1]; same shape and
    dtype out. E.g. DiffAugment's recommended policy is 'color,translation,cutout'.
    p (a float or a traced scalar in [0, 1]; None: always, as DiffAugment): each augmentation applies to each example
    with probability p, drawn from fold_in(its key, APPLY_STREAM), as StyleGAN2-ADA's pipeline does (Karras et al.
    2020); the output stays differentiable in x either way. field: the config field `policy` came from, for errors.
    """
    names = [name.strip() for name in policy.split(",")] if policy else []
    for i, fn in enumerate(_resolve(policy)):
        k = jax.random.fold_in(key, i)
        y = fn(k, x)
        if y.shape != x.shape:  # found while tracing: an error at compile time, before any step runs
            raise ValueError(f"augmentation {names[i]!r} ({field}={policy!r}) returned images of shape "
                             f"{y.shape} for {x.shape}; an augmentation returns images of the shape it gets")
        if p is not None:
            do = jax.random.uniform(jax.random.fold_in(k, APPLY_STREAM), (x.shape[0],)) < p
            y = jnp.where(do[:, None, None, None], y, x)
        x = y
    return x


def per_example(policy: str, keys: jax.Array, x: jax.Array, p: jax.Array | float | None = None,
                field: str = "augment.policy") -> jax.Array:
    """`apply` to each example on its own: example i draws from keys[i] (one key per example), so a draw does not
    depend on the batch it is in or on the device count. '' returns x unchanged."""
    if not policy:
        return x
    return jax.vmap(lambda k, xi: apply(policy, k, xi[None], p, field)[0])(keys, x)
