"""`mnist_5k`: 5000 real MNIST digits shipped inside the package (see MNIST_5K_ATTRIBUTION.md)."""

from __future__ import annotations

import functools
import importlib.resources

import numpy as np

TRAIN_PER_CLASS = 400  # of the 500 per class; the other 100 per class are the test split
SPLIT_SEED = 5000


@functools.lru_cache(maxsize=1)
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    with importlib.resources.files("jaxgen.data").joinpath("mnist_5k.npz").open("rb") as f:
        z = np.load(f)
        return z["image"], z["label"]


def mnist_5k(data_config, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (uint8 [N, 28, 28, 1], labels [N]) for 'train' (4000, 400 per class) or 'test' (1000, 100 per class).

    The split is fixed: within each class the digits are shuffled by a seeded permutation and the first 400 go to
    train. Both splits are ordered by that shuffle across classes, so any prefix is roughly class-balanced.
    """
    del data_config
    image, label = _arrays()
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(label == c))
        train_idx.append(idx[:TRAIN_PER_CLASS])
        test_idx.append(idx[TRAIN_PER_CLASS:])
    if split == "train":
        idx = np.concatenate(train_idx)
    elif split == "test":
        idx = np.concatenate(test_idx)
    else:
        raise ValueError(f"mnist_5k has splits 'train' and 'test', not {split!r}"
                         + ("; a 'validation' split is held out of 'train' by data.validation_examples=N"
                            if split == "validation" else ""))
    idx = idx[rng.permutation(len(idx))]
    return image[idx], label[idx]
