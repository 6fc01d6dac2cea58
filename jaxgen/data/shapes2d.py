"""`shapes2d`: dSprites' grid of generative factors (Matthey et al. 2017), rendered by jaxgen, for disentanglement.

Every image is one combination of five known factors: shape (square, ellipse, heart), scale (6 values from 0.5 to 1),
orientation (40 values from 0 to 2 pi), x and y position (32 values each from 0 to 1): 3 x 6 x 40 x 32 x 32 = 737,280
binary 64x64 images, the factor grid of dSprites. jaxgen draws them itself, so no download is needed, and
`factors` gives each image's factors, which disentanglement metrics (jaxgen.evaluation.disentanglement) score the
latents against. The shapes are jaxgen's own outlines (a square, an ellipse of axes 1 : 0.5 and the implicit
heart curve), not dSprites' pixels: numbers here are not comparable with those published on dSprites.

Splits: the grid in a fixed random order; 'test' is its first TEST_SIZE combinations, 'train' the rest (or its first
`data.num_examples`), so the two never share an image.
"""

from __future__ import annotations

import math

import numpy as np

FACTORS = ("shape", "scale", "orientation", "x", "y")
SIZES = (3, 6, 40, 32, 32)
SHAPES = ("square", "ellipse", "heart")
SIZE = 64  # pixels per side
TEST_SIZE = 10_000
SPLIT_SEED = 2017
HALF_WIDTH = 10.0  # pixels: a scale-1 square is 20 wide
_MARGIN = 15.0  # the centre's range in pixels: x, y = 0..1 -> 15..49 (a scale-1 square at 45 degrees reaches 14.2)
WINDOW = 32  # pixels around the centre that every shape lies within


def values(factors: np.ndarray) -> np.ndarray:
    """The factors' values (float [N, 5]) of their indices int [N, 5]: the shape's index, scale 0.5..1,
    orientation 0..2 pi, x and y 0..1 (dSprites' values)."""
    f = np.asarray(factors)
    return np.stack([f[:, 0].astype(np.float64), 0.5 + 0.1 * f[:, 1], f[:, 2] * (2 * math.pi / 39),
                     f[:, 3] / 31.0, f[:, 4] / 31.0], axis=1)


def render(factors: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """uint8 images [N, 64, 64, 1] (0 or 255) of the factor indices int [N, 5] (in the order of FACTORS). A pixel is
    on when its centre lies inside the shape (binary, as dSprites). In float64 on the host, in the WINDOW x WINDOW
    pixels around each centre (every shape lies within), so the images are the same on any machine."""
    factors = np.asarray(factors)
    out = np.zeros((len(factors), SIZE, SIZE), np.uint8)
    offsets = np.arange(WINDOW)
    for lo in range(0, len(factors), chunk):
        v = values(factors[lo : lo + chunk])
        cx, cy = _MARGIN + (SIZE - 2 * _MARGIN) * v[:, 3], _MARGIN + (SIZE - 2 * _MARGIN) * v[:, 4]
        left = np.clip(np.floor(cx).astype(int) - WINDOW // 2, 0, SIZE - WINDOW)
        top = np.clip(np.floor(cy).astype(int) - WINDOW // 2, 0, SIZE - WINDOW)
        cols, rows = left[:, None] + offsets, top[:, None] + offsets  # [n, WINDOW] pixel indices
        dx = (cols + 0.5 - cx[:, None])[:, None, :]  # [n, 1, WINDOW]
        dy = (rows + 0.5 - cy[:, None])[:, :, None]  # [n, WINDOW, 1]
        angle, r = v[:, 2][:, None, None], (HALF_WIDTH * v[:, 1])[:, None, None]
        cos, sin = np.cos(angle), np.sin(angle)
        inside = np.zeros((len(v), WINDOW, WINDOW), bool)
        for k, test in enumerate((_square, _ellipse, _heart)):
            m = v[:, 0] == k
            if m.any():  # the pixel in the shape's own frame: rotated back by the orientation, in units of its size
                u = (cos[m] * dx[m] + sin[m] * dy[m]) / r[m]
                w = (-sin[m] * dx[m] + cos[m] * dy[m]) / r[m]
                inside[m] = test(u, w)
        n = np.arange(len(v))[:, None, None]
        out[lo + n, rows[:, :, None], cols[:, None, :]] = inside.astype(np.uint8) * 255
    return out[..., None]


def _square(u, w):
    return np.maximum(np.abs(u), np.abs(w)) <= 1.0


def _ellipse(u, w):
    return (u / 1.3) ** 2 + (w / 0.65) ** 2 <= 1.0


def _heart(u, w):
    x, y = 1.15 * u, -1.15 * w + 0.2935  # y up, its point downwards, its centroid (of area) at the centre
    return (x**2 + y**2 - 1.0) ** 3 - x**2 * y**3 <= 0.0


def _order() -> np.ndarray:
    return np.random.default_rng(SPLIT_SEED).permutation(math.prod(SIZES))


def factors(data_config, split: str) -> np.ndarray:
    """The factor indices int32 [N, 5] of the split's images, in the order `shapes2d` returns them."""
    order = _order()
    if split == "test":
        chosen = order[:TEST_SIZE]
    elif split == "train":
        chosen = order[TEST_SIZE:]
    else:
        raise ValueError(f"shapes2d has splits 'train' and 'test', not {split!r}"
                         + ("; a 'validation' split is held out of 'train' by data.validation_examples=N"
                            if split == "validation" else ""))
    n = int(data_config.get("num_examples", 0) or 0)
    if n:
        chosen = chosen[:n]
    return np.stack(np.unravel_index(chosen, SIZES), axis=1).astype(np.int32)


def shapes2d(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 [N, 64, 64, 1], labels int32 [N]: the shape, 0..2) of `split`: 'test' (10,000 combinations) or
    'train' (the other 727,280; the first `data.num_examples` when set, rendering only those)."""
    f = factors(data_config, split)
    return render(f), f[:, 0].copy()
