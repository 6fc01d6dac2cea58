"""The sliced Wasserstein distance between image sets (Karras et al. 2018, "Progressive Growing of GANs", section 5
and appendix D; TF-GAN's `sliced_wasserstein_distance`): a sample-quality metric from the pixels alone, with no
network and no labels, so it scores any dataset offline (CelebA, CIFAR-10 without the Inception weights).

Each image set becomes a Laplacian pyramid, from the images' resolution down to 16 (a level per halving; images
under 32 pixels have one level, their own). At each level, `per_image` 7x7 neighbourhoods at random places of
each image become descriptors, normalised per set and channel to mean 0 and std 1; the distance between the two
sets of descriptors is the sliced Wasserstein distance over `repeats` x `directions` random unit directions: the
mean absolute difference of the sorted projections. Reported per level and averaged, times 1e3 as in the paper's
tables (lower is better; the fine levels say how sharp the details are, the coarse ones how the large structures
are distributed). The draws come from a seed, so two evaluations of the same images give the same numbers; they are
jaxgen's own draws, so the numbers compare with jaxgen's, not with the paper's (which also used 16384 images).
"""

from __future__ import annotations

import concurrent.futures
import math

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBOURHOOD = 7  # each descriptor's side, in pixels (the paper's 7x7)
PER_IMAGE = 128  # descriptors per image and level (the paper's)
REPEATS, DIRECTIONS = 4, 128  # 512 random directions, in 4 draws of 128 (the paper's code)
SMALLEST = 16  # the coarsest level's side (the paper's)
# The 5x5 binomial kernel of the Gaussian pyramid (Burt and Adelson 1983; OpenCV's pyrDown).
_BINOMIAL = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]).astype(np.float32) / 256.0


def levels(size: int) -> int:
    """The pyramid's levels for images of side `size`: one per halving down to SMALLEST, at least one."""
    n = 1
    while size // 2 ** n >= SMALLEST:
        n += 1
    return n


def _blur(x: jax.Array, scale: float = 1.0) -> jax.Array:
    """x [N, H, W, C] convolved per channel with the binomial kernel times `scale`, edges mirrored (d c b | a b c d)."""
    c = x.shape[-1]
    kernel = jnp.tile(jnp.asarray(_BINOMIAL * scale)[:, :, None, None], (1, 1, 1, c))  # [5, 5, 1, C]
    padded = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    return jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def _down(x):
    return _blur(x)[:, ::2, ::2]


def _up(x, shape):
    """x at twice its side (zeros between its pixels, then the kernel times 4), cut to `shape`'s H and W."""
    n, h, w, c = x.shape
    up = jnp.zeros((n, 2 * h, 2 * w, c), x.dtype).at[:, ::2, ::2].set(x)
    return _blur(up, 4.0)[:, : shape[1], : shape[2]]


def laplacian_pyramid(x: jax.Array, num_levels: int) -> list[jax.Array]:
    """[band at full size, ..., band, Gaussian at the coarsest size] of float images x [N, H, W, C]: each level
    but the last is its Gaussian level minus the next one brought back up; the last is the low-pass image."""
    gauss = [x]
    for _ in range(num_levels - 1):
        gauss.append(_down(gauss[-1]))
    return [g - _up(gauss[i + 1], g.shape) for i, g in enumerate(gauss[:-1])] + [gauss[-1]]


def descriptors(level: jax.Array, key: jax.Array, per_image: int = PER_IMAGE) -> jax.Array:
    """[N * per_image, 7 * 7 * C] neighbourhoods of `level` [N, H, W, C] at places drawn uniformly from `key`
    (whole neighbourhoods only), normalised to mean 0 and std 1 per channel over all of them."""
    n, h, w, c = level.shape
    r = NEIGHBOURHOOD // 2
    ky, kx = jax.random.split(key)
    cy = jax.random.randint(ky, (n, per_image), r, h - r)
    cx = jax.random.randint(kx, (n, per_image), r, w - r)
    offsets = jnp.arange(-r, r + 1)
    rows = cy[..., None, None] + offsets[:, None]  # [N, P, 7, 1]
    cols = cx[..., None, None] + offsets[None, :]  # [N, P, 1, 7]
    patches = level[jnp.arange(n)[:, None, None, None], rows, cols]  # [N, P, 7, 7, C]
    patches = patches.reshape(n * per_image, NEIGHBOURHOOD * NEIGHBOURHOOD, c)
    patches = (patches - jnp.mean(patches, axis=(0, 1))) / (jnp.std(patches, axis=(0, 1)) + 1e-8)
    return patches.reshape(n * per_image, -1)


def directions(key: jax.Array, dim: int, repeats: int = REPEATS, count: int = DIRECTIONS) -> jax.Array:
    """[repeats, dim, count] random unit directions (columns), from `key`."""
    d = jax.random.normal(key, (repeats, dim, count))
    return d / jnp.linalg.norm(d, axis=1, keepdims=True)


@jax.jit
def _sliced_jax(a, b, dirs):
    def one(d):
        pa = jnp.sort(jnp.matmul(a, d, precision=jax.lax.Precision.HIGHEST), axis=0)
        pb = jnp.sort(jnp.matmul(b, d, precision=jax.lax.Precision.HIGHEST), axis=0)
        return jnp.mean(jnp.abs(pa - pb))

    return jnp.mean(jax.lax.map(one, dirs))


def _sliced_numpy(a: np.ndarray, b: np.ndarray, dirs: np.ndarray) -> float:
    """`_sliced_jax` on the host: numpy sorts rows ~4x faster than XLA:CPU sorts (128,000 descriptors x 512
    directions: 6 s against 24 s on 2 cores), the two sets in two threads (numpy's sort and matmul release the
    GIL)."""
    def sorted_projections(x, d):
        p = np.ascontiguousarray((x @ d).T)  # [count, M]: each row sorted in place, contiguous
        p.sort(axis=1)
        return p

    means = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        for d in dirs:
            pa, pb = pool.map(sorted_projections, (a, b), (d, d))
            means.append(np.mean(np.abs(pa - pb), dtype=np.float64))
    return float(np.mean(means))


def sliced_wasserstein(a, b, key: jax.Array, repeats: int = REPEATS, count: int = DIRECTIONS) -> float:
    """The mean over `repeats` x `count` random unit directions of the mean absolute difference between the sorted
    projections of descriptors a and b [M, D] (the 1-D Wasserstein-1 distance along each direction). On a CPU
    backend the projections are sorted by numpy, elsewhere on the device; the directions are the same."""
    dirs = directions(key, a.shape[1], repeats, count)
    if jax.default_backend() == "cpu":
        return _sliced_numpy(np.asarray(a, np.float32), np.asarray(b, np.float32), np.asarray(dirs))
    return float(_sliced_jax(jnp.asarray(a), jnp.asarray(b), dirs))


_pyramid = jax.jit(laplacian_pyramid, static_argnums=1)
_descriptors = jax.jit(descriptors, static_argnums=2)


def swd(real: np.ndarray, fake: np.ndarray, seed: int = 0, per_image: int = PER_IMAGE) -> dict:
    """{'swd': the mean over the levels, 'swd_levels': per level (finest first), 'swd_resolutions': their sides,
    'num_reference', 'num_samples'} between uint8 image sets real and fake [N, H, W, C] (the larger cut to the
    smaller's count, a fixed choice of it), times 1e3. Computed on this process's default device (the sorts by numpy
    when that is a CPU), every process alike."""
    real, fake = np.asarray(real), np.asarray(fake)
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(f"SWD compares images of one shape; the reference is {real.shape[1:]}, the samples "
                         f"{fake.shape[1:]}")
    if min(real.shape[1:3]) < NEIGHBOURHOOD:
        raise ValueError(f"SWD takes {NEIGHBOURHOOD}x{NEIGHBOURHOOD} neighbourhoods; images of {real.shape[1:3]} are "
                         "smaller")
    n = min(len(real), len(fake))
    rng = np.random.default_rng(seed)
    pick = lambda x: x if len(x) == n else x[np.sort(rng.permutation(len(x))[:n])]  # noqa: E731
    num_levels = levels(min(real.shape[1:3]))
    to_float = lambda x: jnp.asarray(x, jnp.float32) / 127.5 - 1.0  # noqa: E731 (the scale cancels per level)
    key = jax.random.key(seed)
    pr, pf = _pyramid(to_float(pick(real)), num_levels), _pyramid(to_float(pick(fake)), num_levels)
    dist = []
    for i in range(num_levels):  # a level's descriptors at a time (10,000 64x64 RGB images: 750 MB a set)
        k = jax.random.fold_in(key, i)  # places drawn for each set on its own; the directions shared
        dr = _descriptors(pr[i], jax.random.fold_in(k, 0), per_image)
        df = _descriptors(pf[i], jax.random.fold_in(k, 1), per_image)
        dist.append(sliced_wasserstein(dr, df, jax.random.fold_in(k, 2)))
        del dr, df
    dist = np.asarray(dist) * 1e3
    sides = [math.ceil(real.shape[1] / 2**i) for i in range(num_levels)]
    return {"swd": float(dist.mean()), "swd_levels": [round(float(v), 4) for v in dist], "swd_resolutions": sides,
            "num_reference": int(len(real)), "num_samples": int(len(fake)), "swd_images": int(n)}
