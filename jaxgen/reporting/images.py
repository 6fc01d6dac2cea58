"""Image grids as PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxgen import atomic


def grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles images [N, H, W, C] with values in [0, 1] into one uint8 image [rows*(H+pad)+pad, ..., C]."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    ncol = ncol or int(np.ceil(np.sqrt(n)))
    nrow = int(np.ceil(n / ncol))
    out = np.ones((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncol)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = images[i]
    return (np.clip(out, 0.0, 1.0) * 255).round().astype(np.uint8)


def save_png(path: Path, images: np.ndarray, ncol: int | None = None, scale: int = 2) -> Path:
    """Writes the grid of `images` (values in [0, 1]) to `path`, each pixel `scale`x`scale`."""
    from PIL import Image  # noqa: PLC0415

    g = grid(images, ncol)
    g = np.repeat(np.repeat(g, scale, 0), scale, 1)
    image = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    return atomic.write_with(path, lambda f: image.save(f, format="PNG"))  # a killed run leaves no torn PNG
