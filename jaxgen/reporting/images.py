"""Image grids as PNG files, and the history of fixed-noise samples over training."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxgen import atomic


def quantize(x):
    """Pixel values in [0, 1] -> uint8 0..255 as a PNG writer rounds them (half to even; outside clipped). One rule
    for every image jaxgen writes or measures: the grids, the sample history and the samples that sample-quality
    metrics read. NumPy or JAX arrays (on the device, inside a compiled sampler); non-finite values are the
    caller's to handle."""
    return (x * 255.0).round().clip(0, 255).astype(np.uint8)


MAX_CLASS_COLUMNS = 20  # a class-conditional model's grids: one column per class up to this many classes


def class_columns(num_classes: int) -> int | None:
    """The columns of a grid of a class-conditional model's samples, sample j of class j % num_classes: one per
    class (each column one class), or None (square grids) when unconditional, of one class, or with more classes
    than fit."""
    return num_classes if 1 < num_classes <= MAX_CLASS_COLUMNS else None


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
    return quantize(out)


def save_png(path: Path, images: np.ndarray, ncol: int | None = None, scale: int = 2) -> Path:
    """Writes the grid of `images` (values in [0, 1]) to `path`, each pixel `scale`x`scale`."""
    from PIL import Image  # noqa: PLC0415

    g = grid(images, ncol)
    g = np.repeat(np.repeat(g, scale, 0), scale, 1)
    image = Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g)
    return atomic.write_with(path, lambda f: image.save(f, format="PNG"))  # a killed run leaves no torn PNG


def append_history(path: Path, step: int, samples: np.ndarray) -> None:
    """Adds `samples` (values in [0, 1], [N, H, W, C]) as the row of `step` to the uint8 history in the .npz `path`
    (images [rows, N, H, W, C], steps [rows]); rows of `step` and later (a resumed run repeating them) are replaced."""
    row = quantize(np.asarray(samples, np.float32))[None]
    steps = np.asarray([step])
    if path.exists():
        with np.load(path) as h:
            keep = h["steps"] < step
            old = h["images"][keep]
            if old.shape[1] < row.shape[1]:  # rows of fewer columns (an earlier, smaller output.num_samples): the
                # same first latents, so they stay aligned; padded with black on the right
                old = np.pad(old, [(0, 0), (0, row.shape[1] - old.shape[1])] + [(0, 0)] * (old.ndim - 2))
            row = np.concatenate([old, row]) if len(old) else row
            steps = np.concatenate([h["steps"][keep], steps])
    atomic.write_npz(path, compress=True, images=row, steps=steps)


# Rows drawn in samples_over_time.png: a long run's every eval (500 rows of 64x64 samples, gan_celeba over 1M
# steps) made a PNG 65,000 px tall that Pillow refuses to open, and 1 GB of memory to draw it.
HISTORY_ROWS = 64


def history_rows(count: int, most: int = HISTORY_ROWS) -> np.ndarray:
    """The indices of at most `most` of `count` rows, evenly spaced, the first and the last included."""
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(int))


def save_history(history: Path, path: Path) -> Path:
    """The history .npz of `append_history` as one PNG, a row per step: every step's up to HISTORY_ROWS of them,
    else HISTORY_ROWS evenly spaced ones, the first and the last included (the .npz keeps every row)."""
    with np.load(history) as h:
        rows = h["images"][history_rows(len(h["steps"]))]
    return save_png(path, rows.reshape(-1, *rows.shape[2:]) / 255.0, ncol=rows.shape[1])
