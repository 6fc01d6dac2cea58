"""Datasets by name: one entry point, `load(data_config, split)`, returning uint8 images and integer labels.

Pixels stay uint8 on the host and on the way to the devices; scaling and binarization happen on the device
(jaxgen.data.device). TensorFlow and TFDS are imported only inside the TFDS loaders.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from jaxgen import registry
from jaxgen.data import image_folder, shapes2d, shipped, synthetic, tfds_source

log = logging.getLogger("jaxgen")


@dataclasses.dataclass(frozen=True)
class ImageData:
    """A whole split in host memory. image: uint8 [N, H, W, C], pixels 0-255; label: int32 [N]."""

    image: np.ndarray
    label: np.ndarray
    name: str
    split: str

    def __post_init__(self):
        if self.image.dtype != np.uint8 or self.image.ndim != 4:
            fixes = []
            if self.image.ndim == 3:
                fixes.append("grey images [N, H, W] need a channel axis: images[..., None]")
            if self.image.dtype != np.uint8:
                fixes.append("floats in [0, 1] need np.round(images * 255).astype(np.uint8)"
                             if np.issubdtype(self.image.dtype, np.floating) else
                             "pixels 0-255 of another integer type need images.astype(np.uint8)")
            raise ValueError(
                f"dataset {self.name!r} split {self.split!r}: images must be uint8 [N, H, W, C], "
                f"got {self.image.dtype} {self.image.shape}" + "".join(f"; {f}" for f in fixes)
            )
        if self.label.shape != (self.image.shape[0],):
            raise ValueError(f"dataset {self.name!r}: {self.image.shape[0]} images but labels {self.label.shape}")
        if self.image.shape[0] == 0:
            raise ValueError(f"dataset {self.name!r} split {self.split!r} is empty")
        if self.image.shape[-1] not in (1, 3):
            raise ValueError(
                f"dataset {self.name!r} split {self.split!r}: images must be [N, H, W, C] with C = 1 (grey) or 3 "
                f"(RGB), got {self.image.shape}"
                + ("; channels-first images [N, C, H, W] need np.transpose(images, (0, 2, 3, 1))"
                   if self.image.shape[1] in (1, 3) else "")
                + ("; drop the alpha channel of RGBA images" if self.image.shape[-1] == 4 else ""))
        if self.image[:1000].max() <= 1:
            log.warning("dataset %r split %r: the pixels of its first images are all 0 or 1, where jaxgen expects "
                        "0-255 (binarized data? multiply by 255; data.binarize='dynamic' binarizes on the device)",
                        self.name, self.split)

    def __len__(self) -> int:
        return self.image.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.image.shape[1:])


def check_class_labels(num_classes: int, train: ImageData, *others: ImageData | None, model: str,
                       untrained: str) -> None:
    """A class-conditional run's labels: every split's in [0, num_classes) (an error naming the num_classes to set),
    not all one value in the train split (unlabelled data: an error), and a warning naming the classes the train
    split lacks. model: 'GAN' or 'VAE', for the messages; untrained: what that means for the model's missing classes
    ('G learns nothing for them')."""
    k = num_classes
    for split in (train, *others):
        if split is None:
            continue
        lo, hi = int(split.label.min()), int(split.label.max())
        if lo < 0 or hi >= k:
            raise ValueError(f"model.num_classes={k}, but the {split.split} split of {split.name!r} has labels "
                             f"{lo}..{hi}; a class-conditional {model} needs labels 0..num_classes-1: set "
                             f"--config.model.num_classes={hi + 1}" if lo >= 0 else
                             f"model.num_classes={k}, but the {split.split} split of {split.name!r} has negative "
                             f"labels (down to {lo}); a class-conditional {model} needs labels 0..num_classes-1")
    counts = np.bincount(train.label, minlength=k)
    if k > 1 and np.count_nonzero(counts) == 1:  # an unlabelled dataset's labels are all 0
        raise ValueError(f"model.num_classes={k}, but every example of the train split of {train.name!r} has "
                         f"the label {int(np.argmax(counts))}: unlabelled data (image_folder's labels are its "
                         f"first-level subfolders) cannot train a class-conditional {model}; set "
                         f"--config.model.num_classes=0, or give data with labels")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        log.warning("model.num_classes=%d, but the train split of %r has no example of class(es) %s: %s, yet samples "
                    "and evaluations ask for every class equally often", k, train.name,
                    ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else ""), untrained)


# name -> loader(data_config, split) -> (image uint8 [N,H,W,C], label int [N])
DATASETS: dict[str, Callable] = {
    "mnist_5k": shipped.mnist_5k,
    "mnist": tfds_source.loader("mnist"),
    "fashion_mnist": tfds_source.loader("fashion_mnist"),
    "cifar10": tfds_source.loader("cifar10"),
    "celeb_a": tfds_source.celeb_a,  # data.path (an image folder) when set, else TFDS
    "image_folder": image_folder.image_folder,  # data.path, cropped/resized by data.crop/data.resolution
    "synthetic": synthetic.synthetic,
    "shapes2d": shapes2d.shapes2d,  # dSprites' factor grid, drawn by jaxgen (no download)
}

class FactorDataset(NamedTuple):
    """A dataset whose images come with known generative factors, which VAE evaluations score the latents against
    (jaxgen.evaluation.disentanglement; a class-conditional model's against all but the label's factor)."""

    factors: Callable  # (data_config, split) -> int [N, K]: each image's factor indices, in the loader's order
    names: tuple[str, ...]  # the K factors'
    sizes: tuple[int, ...]  # the values each factor takes: its indices are 0..size-1
    render: Callable  # (factor indices int [N, K]) -> uint8 images [N, H, W, C]: any combination, drawn on demand
    label: str  # the factor the labels give


FACTORS: dict[str, FactorDataset] = {
    "shapes2d": FactorDataset(shapes2d.factors, shapes2d.FACTORS, shapes2d.SIZES, shapes2d.render, "shape")}


# Fields of the data block that only some of the built-in datasets read (every dataset reads the others).
READ_BY = {
    "path": ("image_folder", "celeb_a"),
    "resolution": ("image_folder", "celeb_a"),
    "crop": ("image_folder", "celeb_a"),
    "test_percent": ("image_folder", "celeb_a"),
    "image_shape": ("synthetic",),
    "download": ("mnist", "fashion_mnist", "cifar10", "celeb_a"),
}


def unread_fields(data_config, defaults) -> list[str]:
    """The fields of READ_BY that `data_config` sets away from `defaults` (the base config's data block) but its
    built-in dataset does not read, each with the datasets that do: `--config.data.path=...` on mnist_5k trains on
    mnist_5k. A user's own dataset ('package.module:function') may read any of them."""
    if data_config.name not in DATASETS:
        return []
    why = {"image_shape": ", for which the smoke variants set it"}  # a smoke variant's, on another dataset
    return [f"data.{field}={data_config[field]!r} (read by {', '.join(names)}{why.get(field, '')})"
            for field, names in READ_BY.items()
            if data_config.name not in names and field in defaults and data_config[field] != defaults[field]]


def load(data_config, split: str) -> ImageData:
    """Loads `split` of the dataset `data_config.name` into host memory.

    A user's own dataset is `data.name='package.module:function'`, the function taking (data_config, split) and
    returning (images uint8 [N, H, W, C], labels int [N]).
    """
    fn = registry.resolve("dataset", data_config.name, DATASETS)
    out = registry.call(f"dataset {data_config.name!r}", fn, "fn(data_config, split) -> (images, labels)",
                        data_config, split)
    if not (isinstance(out, tuple | list) and len(out) == 2):
        raise ValueError(f"dataset {data_config.name!r} returned {registry.describe(out)}; a dataset function returns "
                         "the pair (images uint8 [N, H, W, C], labels int [N]) (np.zeros(N, np.int32) without labels)")
    image, label = out
    if label is None:
        raise ValueError(f"dataset {data_config.name!r} returned labels None; without labels return "
                         "np.zeros(len(images), np.int32)")
    image, label = np.asarray(image), np.asarray(label).astype(np.int32)
    if data_config.num_examples and data_config.name != "synthetic":
        image, label = image[: data_config.num_examples], label[: data_config.num_examples]
    return ImageData(image=image, label=label, name=data_config.name, split=split)


VALIDATION_SEED = 0  # the held-out examples: one fixed choice, whatever the run's seed


def load_splits(data_config) -> tuple[ImageData, ImageData | None, ImageData]:
    """(train, validation, test): `load_train` and the split `data.test_split`, which must hold images of the
    train split's shape (a dataset function of the user's may return other ones; the model is built for the train
    split's)."""
    train, validation = load_train(data_config)
    test = load(data_config, data_config.test_split)
    if test.shape != train.shape:
        raise ValueError(f"dataset {data_config.name!r}: the {test.split!r} split's images are {list(test.shape)}, "
                         f"the {train.split!r} split's {list(train.shape)}; every split must have the images of the "
                         f"shape the model is built for")
    return train, validation, test


def load_train(data_config) -> tuple[ImageData, ImageData | None]:
    """(train, validation): the split `data.train_split`, less the `data.validation_examples` examples it holds out
    as the validation split (None when 0).

    The held-out examples are a fixed random choice (VALIDATION_SEED, not the run's seed), so every run of a config
    trains and is selected on the same images; the rest keep their order. They come out of the first
    `data.num_examples` when that is set."""
    train = load(data_config, data_config.train_split)
    n = int(data_config.get("validation_examples", 0))
    if not n:
        return train, None
    if not 0 < n < len(train):
        raise ValueError(f"data.validation_examples={n} must be >= 0 and leave training examples: the "
                         f"{data_config.train_split!r} split of {data_config.name!r} has {len(train)}")
    held = held_out(len(train), n)

    def part(mask, split):
        return ImageData(image=train.image[mask], label=train.label[mask], name=train.name, split=split)

    return part(~held, train.split), part(held, "validation")


def held_out(size: int, n: int) -> np.ndarray:
    """The mask (bool [size]) of the `n` examples `load_train` holds out of a train split of `size` as 'validation'."""
    held = np.zeros(size, bool)
    held[np.random.default_rng(VALIDATION_SEED).permutation(size)[:n]] = True
    return held


def split_factors(data_config, split: str) -> np.ndarray:
    """The known factors (int [N, K], FACTORS) of the split `load_splits` gives by that name, in its order: the
    held-out 'validation' split's and the train split less them with data.validation_examples."""
    factors_of = FACTORS[data_config.name].factors
    n = int(data_config.get("validation_examples", 0))
    if not n or split not in ("validation", data_config.train_split):
        return factors_of(data_config, split)
    train = factors_of(data_config, data_config.train_split)
    held = held_out(len(train), n)
    return train[held] if split == "validation" else train[~held]
