"""`synthetic`: deterministic random images of any shape, for smoke runs and benchmarks with no data on disk."""

from __future__ import annotations

import zlib

import numpy as np


def synthetic(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random uint8 images of `data.image_shape` and labels in 0..9; `data.num_examples` per split (0 = 1024).

    Each image is a low-frequency random field (a 4x4 grid upsampled), so a model has structure to learn. Its label
    is the decile of its mean brightness within the split, so the `classifier` extractor (trained on the labels)
    has something to learn too: with labels drawn apart from the images its features were noise, and every model's
    classifier FID came out near 0.
    """
    n = data_config.num_examples or 1024
    h, w, c = data_config.image_shape
    rng = np.random.default_rng(zlib.crc32(split.encode()))
    coarse = rng.uniform(0, 255, size=(n, 4, 4, c))
    rows = np.linspace(0, 3, h)
    cols = np.linspace(0, 3, w)
    r0, c0 = np.floor(rows).astype(int).clip(0, 2), np.floor(cols).astype(int).clip(0, 2)
    fr, fc = (rows - r0)[None, :, None, None], (cols - c0)[None, None, :, None]
    top = coarse[:, r0][:, :, c0] * (1 - fc) + coarse[:, r0][:, :, c0 + 1] * fc
    bot = coarse[:, r0 + 1][:, :, c0] * (1 - fc) + coarse[:, r0 + 1][:, :, c0 + 1] * fc
    image = (top * (1 - fr) + bot * fr).round().astype(np.uint8)
    rank = np.argsort(np.argsort(image.reshape(n, -1).mean(1), kind="stable"), kind="stable")
    label = (rank * 10 // n).astype(np.int32)
    return image, label
