"""Sample quality against a dataset: FID, KID, IS, precision/recall and density/coverage on a named extractor's
features, with the reference side computed once per dataset, split, extractor and count, and cached.

Extractors (`eval.extractors` in the config):
  inception   pytorch-fid's InceptionV3 (pool3, 2048-d; its 1008 logits for IS), jaxgen.evaluation.inception.
              Needs the weights file once (`python -m jaxgen.evaluation.inception check` says where).
  classifier  a small classifier jaxgen trains on the dataset's labels (jaxgen.evaluation.classifier): 128-d
              features and class probabilities; offline, for labelled digit-like data such as mnist_5k.

With eval.swd, a block 'swd' beside theirs: the sliced Wasserstein distance of the images' Laplacian pyramids
(jaxgen.evaluation.swd), from the pixels alone.

Samples and reference images go in as uint8 [N, H, W, C], the form images are saved and read in, so a number
here is the number pytorch-fid gives on the same images written as PNG files. Each extractor's block in eval.json
carries its name, the reference (dataset, split, count) and the sample count beside the numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from jaxgen import atomic, parallel, registry
from jaxgen import data as data_lib
from jaxgen.data import cache as caches
from jaxgen.data.cache import data_dir
from jaxgen.evaluation import sample_metrics
from jaxgen.evaluation import swd as swd_lib

log = logging.getLogger("jaxgen")

REFERENCE_CACHE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Extractor:
    """name: a key of EXTRACTORS; description: what stands beside the numbers; key: what the cached reference
    features depend on (the weights); features: uint8 images [N, H, W, C] -> (features [N, D], class
    probabilities [N, K] or None); recommended: the sample count below which FID is warned about."""

    name: str
    description: str
    key: str
    features: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    recommended: int
    inception_score: bool = False  # its probabilities are over ImageNet-like classes: report IS
    class_histograms: bool = False  # its probabilities are over the dataset's labels: report class coverage


def check_names(names) -> tuple[str, ...]:
    """The names, each a key of EXTRACTORS or 'package.module:function' (an unknown one lists the choices)."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for n in names:
        if not isinstance(n, str) or not n.strip():  # --config.eval.extractors=None gives (None,)
            raise ValueError(f"eval.extractors={names!r}: give a tuple of extractor names, e.g. "
                             "--config.eval.extractors=\"('classifier',)\", or \"()\" for none")
        if "," in n:
            raise ValueError(f"eval.extractors: {n!r} looks like a list in one string; give a tuple, e.g. "
                             "--config.eval.extractors=\"('classifier','inception')\"")
        registry.resolve("feature extractor (eval.extractors)", n, EXTRACTORS)
    return names


def build(name: str, config, mesh, train_data) -> Extractor:
    """The extractor `name` for a run of `config` on `mesh` (train_data: the labelled train split, for the
    classifier). A user's own is a function `fn(config, mesh, train_data) -> Extractor`."""
    contract = "fn(config, mesh, train_data) -> jaxgen.evaluation.quality.Extractor"
    fn = registry.resolve("feature extractor (eval.extractors)", name, EXTRACTORS)
    out = registry.call(f"feature extractor {name!r}", fn, contract, config, mesh, train_data)
    if not isinstance(out, Extractor):
        raise ValueError(f"feature extractor {name!r} returned {registry.describe(out)}; expected {contract}")
    return out


def check_ready(config) -> None:
    """Before a run loads its data: the Inception weights `eval.extractors` needs are there (downloaded now, where
    eval.inception_download allows), so that a missing file stops it at once, not after a large image folder has
    been decoded (WeightsNotFoundError, naming where to put the file). Other extractors need no file."""
    if "inception" in config.eval.extractors:
        from jaxgen.evaluation import inception  # noqa: PLC0415 (loads only when asked for)

        inception.weights_file(config.eval.inception_weights or None,
                               allow_download=bool(config.eval.inception_download))


def _inception(config, mesh, train_data) -> Extractor:
    del train_data
    e = config.eval
    from jaxgen.evaluation import inception  # noqa: PLC0415 (loads only when asked for)

    variables = inception.load_params(e.inception_weights or None, allow_download=bool(e.inception_download))
    fn = inception.make_extractor(variables, mesh)
    digest = _digest(variables)

    # IS as the original code (openai/improved-gan) and torch-fidelity compute it: softmax of pool3 @ W, no bias.
    fc_bias = np.asarray(variables["params"]["fc"]["bias"], np.float64)

    def features(images):
        out = inception.extract(fn, images, batch_size=e.batch_size, mesh=mesh, desc="inception features",
                                progress=bool(config.output.progress))
        logits = out["logits"].astype(np.float64) - fc_bias
        probs = np.exp(logits - logits.max(1, keepdims=True))
        return out["pool"], probs / probs.sum(1, keepdims=True)

    return Extractor("inception", "pytorch-fid InceptionV3 pool3 (2048-d); IS from its 1008-way fc without the "
                     "bias (as openai/improved-gan, torch-fidelity); bilinear resize to 299, inputs in [-1, 1]",
                     f"inception_{digest}", features,
                     sample_metrics.FID_RECOMMENDED_SAMPLES, inception_score=True)


def _classifier(config, mesh, train_data) -> Extractor:
    del mesh
    e = config.eval
    from jaxgen.evaluation import classifier  # noqa: PLC0415

    labels = np.asarray(train_data.label)
    if len(np.unique(labels)) < 2:
        raise ValueError(f"eval.extractors has 'classifier', which trains on the dataset's labels, but "
                         f"{config.data.name!r} has {len(np.unique(labels))} label value(s); use 'inception' or "
                         "remove 'classifier' from eval.extractors")
    params = classifier.load_or_train(config.data, train_data.image, labels, steps=e.classifier_steps)
    digest = _digest(params)
    return Extractor("classifier", f"jaxgen's metric classifier trained {e.classifier_steps} steps on the labels of "
                     f"{len(labels)} {config.data.name} {config.data.train_split} images (128-d features; weights "
                     f"{digest})", f"classifier_{digest}",
                     lambda images: classifier.embed(params, images, batch=e.batch_size), 256, class_histograms=True)


EXTRACTORS = {"inception": _inception, "classifier": _classifier}


def _digest(tree) -> str:
    """A short hash of a pytree's arrays: what cached reference features are keyed by."""
    return hashlib.sha1(b"".join(np.asarray(v).tobytes() for v in jax.tree.leaves(tree))).hexdigest()[:12]


def check_images(images: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8 or a.ndim != 4 or a.shape[-1] not in (1, 3):
        raise ValueError(f"{what}: expected uint8 images [N, H, W, C] with C = 1 or 3, got {a.dtype} {a.shape}; "
                         "convert floats in [0, 1] with jaxgen.evaluation.sampling.to_uint8(x, (0.0, 1.0)), which "
                         "rounds as np.clip(np.round(x * 255), 0, 255).astype(np.uint8)")
    return a


def reference(extractor: Extractor, images: np.ndarray, *, data_config, split: str, warn: bool = True) -> dict:
    """Features (and class probabilities) of the real images, cached in <data dir>/jaxgen_cache/reference/, with
    their FID statistics ('mu', 'sigma'), computed once here rather than at every evaluation (`warn`: about too
    few images for FID)."""
    images = check_images(images, f"reference images ({data_config.name} {split})")
    digest = hashlib.sha1(images.tobytes()).hexdigest()[:12]
    name = data_config.name.replace(":", "_").replace("/", "_")
    path = (data_dir(data_config) / "jaxgen_cache" / "reference"
            / f"{name}_{split}_{len(images)}_{digest}_{extractor.key}_v{REFERENCE_CACHE_VERSION}.npz")
    if jax.process_count() > 1:  # the extractor may run over every process's devices: all compute, or none
        cached = _cached_reference(path, warn=True)
        if _all_processes(cached is not None):
            return _with_statistics(extractor, cached, warn)
        return _with_statistics(extractor, _compute_reference(extractor, images, data_config, split, path), warn)
    cached = _cached_reference(path, warn=False)
    if cached is None:  # jobs of a sweep started at once: the first computes them, the others wait and read them
        with caches.filling_lock(path.parent, f"Another process is computing the reference features {path}; "
                                  f"waiting for it, then reading them", name=f"{path.stem}.lock"):
            cached = _cached_reference(path, warn=True)
            if cached is None:
                cached = _compute_reference(extractor, images, data_config, split, path)
    return _with_statistics(extractor, cached, warn)


def _cached_reference(path: Path, warn: bool) -> dict | None:
    """The reference features cached at `path`, or None where there are none or they cannot be read (said when
    `warn`)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 (a torn or corrupt cache file, or any other failure to read it: every
        # process must reach the collective after it, which then has them recompute it together)
        if warn:
            log.warning("Cached reference features %s cannot be read (%s); computing them again", path, e)
        return None


def _compute_reference(extractor: Extractor, images: np.ndarray, data_config, split: str, path: Path) -> dict:
    log.info("Reference features: %s %s, %d images, %s (caching them in %s)", data_config.name, split, len(images),
             extractor.name, path)
    feats, probs = features(extractor, images)
    ref = {"features": np.asarray(feats, np.float32)}
    if probs is not None:
        ref["probs"] = np.asarray(probs, np.float32)
    _save(path, ref)
    return ref


def features(extractor: Extractor, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """extractor.features(images), checked: (features [N, D], class probabilities [N, K] or None) for N images.
    A user's extractor that returns something else fails naming what it returned."""
    out = extractor.features(images)
    n = len(images)
    if not (isinstance(out, tuple | list) and len(out) == 2 and np.ndim(out[0]) == 2 and len(out[0]) == n
            and (out[1] is None or (np.ndim(out[1]) == 2 and len(out[1]) == n))):
        got = (f"({', '.join(registry.describe(v) if v is not None else 'None' for v in out)})"
               if isinstance(out, tuple | list) else registry.describe(out))
        raise ValueError(f"feature extractor {extractor.name!r}: features(images) of {n} images returned {got}; "
                         f"expected (features [{n}, D], class probabilities [{n}, K] or None)")
    return out[0], out[1]


def _with_statistics(extractor: Extractor, ref: dict, warn: bool = True) -> dict:
    mu, sigma = sample_metrics.feature_statistics(ref["features"], extractor.recommended,
                                                  f"the reference ({extractor.name})", warn=warn)
    return {**ref, "mu": mu, "sigma": sigma}


def _all_processes(flag: bool) -> bool:
    """Whether `flag` holds on every process (itself when there is one process)."""
    if jax.process_count() == 1:
        return flag
    return bool(parallel.allgather_ints(int(flag)).all())


def _save(path: Path, arrays: dict) -> None:
    """Writes an .npz atomically (a unique temporary file, then a rename): processes and hosts sharing the data dir
    may all write it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_npz(path, **arrays)
    except OSError as e:  # a read-only data dir: the metrics still work, the features are recomputed next time
        log.warning("Could not cache reference features at %s: %s", path, e)


FINAL_K = 5  # the neighbours of density and coverage (Naeem et al.'s k), the largest k of the final evaluation


def compare(extractor: Extractor, ref: dict, samples: np.ndarray, *, full: bool, reference_name: str,
            seed: int = 0, warn: bool = True, labels: np.ndarray | None = None,
            reference_labels: np.ndarray | None = None, num_classes: int = 0) -> dict:
    """Metrics of uint8 `samples` against the cached reference `ref` (`warn`: about too few samples for FID).

    Always FID (and IS where the extractor gives class probabilities, class histograms for the classifier);
    with `full`, also KID (100 subsets of up to 1000), precision/recall (k=3) and density/coverage (k=5).
    `labels` (int [n]): the classes a class-conditional G was asked for; the classifier's class_accuracy is the
    fraction of samples it assigns to their class (as ACGAN's and the projection paper's classification scores).
    With `full`, `labels`, the reference images' own `reference_labels` and `num_classes`, also the intra-FID
    (sample_metrics.intra_fid), on any extractor's features.
    """
    samples = check_images(samples, "generated samples")
    feats, probs = features(extractor, samples)
    real = ref["features"]
    out = {"extractor": extractor.description, "reference": reference_name, "num_reference": int(len(real)),
           "num_samples": int(len(feats))}
    stats = sample_metrics.feature_statistics(feats, extractor.recommended, f"the samples ({extractor.name})",
                                              warn=warn)
    out["fid"] = sample_metrics.frechet_distance(ref["mu"], ref["sigma"], *stats)
    if probs is not None and extractor.inception_score and len(probs) >= 10:
        out["is_mean"], out["is_std"] = sample_metrics.inception_score(probs, splits=10)
    if probs is not None and extractor.class_histograms:
        k = probs.shape[1]
        hr = np.bincount(ref["probs"].argmax(1), minlength=k) / len(ref["probs"])
        hg = np.bincount(probs.argmax(1), minlength=k) / len(probs)
        present = hr > 0
        out.update(class_tv=float(0.5 * np.abs(hr - hg).sum()),
                   class_coverage=float(np.mean(hg[present] >= 0.5 * hr[present])),
                   class_histogram=hg.round(4).tolist(), data_class_histogram=hr.round(4).tolist())
        if labels is not None:
            out["class_accuracy"] = float(np.mean(probs.argmax(1) == np.asarray(labels)[: len(probs)]))
    if full:
        out["kid_mean"], out["kid_std"] = sample_metrics.kernel_inception_distance(real, feats, seed=seed)
        out["kid_subsets"] = f"100 x {min(1000, len(real), len(feats))}"  # std is 0 when a subset is a whole set
        out["precision"], out["recall"] = sample_metrics.precision_recall(real, feats, k=3)
        out["density"], out["coverage"] = sample_metrics.density_coverage(real, feats, k=FINAL_K)
        if labels is not None and reference_labels is not None and num_classes:
            try:
                intra = sample_metrics.intra_fid(real, reference_labels, feats, np.asarray(labels)[: len(feats)],
                                                 num_classes, extractor.recommended)
            except sample_metrics.NoClassToScore as e:  # too few samples for any class (eval.num_samples under 2 a
                # class): the other numbers stand, and the run keeps what it trained
                log.warning("No intra-FID for %s (%s): %s", extractor.name, reference_name, e)
            else:
                out.update(intra_fid=intra["intra_fid"],
                           intra_fid_per_class=[None if v is None else round(v, 4) for v in intra["per_class"]],
                           intra_fid_samples_per_class=intra["fake_per_class"],
                           intra_fid_reference_per_class=intra["real_per_class"])
    return out


SWD = "swd"  # the sample-quality block of eval.swd, beside the extractors' (its metric: 'swd/swd')


def _swd_draw(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """min(count, all) of `images`, a fixed draw by `seed` (all of them, in order, when they are no more)."""
    if len(images) <= count:
        return images
    return images[np.sort(np.random.default_rng(seed).permutation(len(images))[:count])]


class SampleQuality:
    """The run's sample-quality evaluator: its extractors and their cached reference features, built once.

    references: {split name: uint8 images [N, H, W, C]}, the real images the samples are compared with (the
    validation split's during training and the test split's at the end, when data.validation_examples holds one
    out); the first is the default. reference_labels: {split name: int [N]}, their classes, for the intra-FID of a
    class-conditional model (model.num_classes > 0) at the final evaluation.
    """

    def __init__(self, config, mesh, train_data, references: dict[str, np.ndarray],
                 reference_labels: dict[str, np.ndarray] | None = None):
        self.names = check_names(config.eval.extractors)
        self.num_samples = int(config.eval.num_samples)
        self.num_classes = int(config.model.get("num_classes", 0))
        self.conditional = bool(self.num_classes)  # class_accuracy beside the class histograms; the intra-FID
        self.reference_labels = dict(reference_labels or {}) if self.conditional else {}
        self.seed = int(config.seed)
        self.dataset, self.data_config = config.data.name, config.data
        self.train_images = None if train_data is None else train_data.image  # None: --mode=sample without data
        self.train_labels = None if train_data is None else np.asarray(train_data.label)
        # Keyed by the names in eval.extractors, which metric names ('<name>/fid') and best_metric use.
        self.extractors = {n: build(n, config, mesh, train_data) for n in self.names}
        self.refs = {split: {n: reference(e, images, data_config=config.data, split=split)
                             for n, e in self.extractors.items()} for split, images in references.items()}
        self.swd = bool(config.eval.get("swd", False))
        # SWD reads the pixels at every evaluation, as many references as samples: that draw is all it keeps.
        self.reference_images = {s: _swd_draw(images, self.num_samples, self.seed) for s, images in references.items()
                                 } if self.swd else {}
        self.reference_counts = {s: len(images) for s, images in references.items()}
        if self.swd:
            shape = next(iter(references.values())).shape[1:3]
            if min(shape) < swd_lib.NEIGHBOURHOOD:
                raise ValueError(f"eval.swd compares {swd_lib.NEIGHBOURHOOD}x{swd_lib.NEIGHBOURHOOD} neighbourhoods; "
                                 f"these images are {shape[0]}x{shape[1]}: set --config.eval.swd=False")
        self._warned = False  # too few samples for FID: said at the first evaluation, not at every one

    def evaluate(self, samples: np.ndarray, *, full: bool, reference: str | None = None,
                 labels: np.ndarray | None = None) -> dict:
        """{name in eval.extractors: metrics block} for uint8 samples, against the reference split `reference`
        (None: the first); `labels`: their classes, for a class-conditional model (`compare`)."""
        split = next(iter(self.refs)) if reference is None else reference
        warn, self._warned = not self._warned, True
        blocks = {n: compare(e, self.refs[split][n], samples, full=full, reference_name=f"{self.dataset} {split}",
                             seed=self.seed, warn=warn, labels=labels,
                             reference_labels=self.reference_labels.get(split), num_classes=self.num_classes)
                  for n, e in self.extractors.items()}
        # Not where the reference is the training split itself: the draw would be a part of it (a floor near 0).
        floors = full and self.train_images is not None and split != self.data_config.train_split
        if floors:
            for n, block in blocks.items():
                block.update(self.real_images_fid(n, split, len(samples), labels if "intra_fid" in block else None))
        if self.swd:
            blocks[SWD] = self.sliced_wasserstein(samples, split, floor=floors)
        return blocks

    def sliced_wasserstein(self, samples: np.ndarray, split: str, floor: bool = False) -> dict:
        """eval.swd's block: the SWD of uint8 `samples` against the reference `split`'s images (as many of each, a
        fixed draw of the larger set); with `floor`, also 'swd_train_images': that of as many real training images
        (a fixed draw by `seed`), what real data scores at that count."""
        samples = check_images(samples, "generated samples")
        ref = self.reference_images[split]
        out = {"method": "sliced Wasserstein distance x 1e3 of 7x7 neighbourhoods of the Laplacian pyramid's levels "
                         "(Karras et al. 2018), 128 per image and level, 512 directions; the mean over the levels",
               "reference": f"{self.dataset} {split}", **swd_lib.swd(ref, samples, seed=self.seed),
               "num_reference": self.reference_counts[split]}
        if floor:
            real = swd_lib.swd(ref, _swd_draw(self.train_images, len(samples), self.seed), seed=self.seed)
            out.update(swd_train_images=real["swd"], swd_train_images_levels=real["swd_levels"])
        return out

    def real_images_fid(self, name: str, split: str, count: int, labels: np.ndarray | None = None) -> dict:
        """{'fid_train_images': FID, 'num_train_images': n} of n = min(count, all) real training images against
        the reference `split`, on the extractor `name`: what real data scores at the samples' count (FID is biased
        upwards at small counts, and the classifier's features have no scale of their own). The images are a fixed
        draw (by `seed`) from the whole split, whose order may follow the labels; their features are cached as a
        reference's.

        With the samples' `labels` (a class-conditional model's final evaluation), the draw takes as many training
        images of each class as there are samples of it (all of a class that has fewer), and 'intra_fid_train_images'
        is their intra-FID: the floor of the samples' intra-FID at the same counts per class."""
        images = self.train_images
        rng = np.random.default_rng(self.seed)
        if labels is None:
            n = min(count, len(images))
            chosen = np.sort(rng.permutation(len(images))[:n])
            draw = f"{self.data_config.train_split}_seed{self.seed}"
        else:
            want = np.bincount(np.asarray(labels)[:count], minlength=self.num_classes)
            chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(self.train_labels == c))[: want[c]]
                                             for c in range(self.num_classes)]))
            n = len(chosen)
            draw = f"{self.data_config.train_split}_seed{self.seed}_per_class"
        if n < 2:
            return {}
        train = reference(self.extractors[name], images[chosen], data_config=self.data_config, split=draw, warn=False)
        ref = self.refs[split][name]
        out = {"fid_train_images": sample_metrics.frechet_distance(ref["mu"], ref["sigma"], train["mu"],
                                                                   train["sigma"]),
               "num_train_images": int(n)}
        if labels is not None and split in self.reference_labels:
            try:
                out["intra_fid_train_images"] = sample_metrics.intra_fid(
                    ref["features"], self.reference_labels[split], train["features"], self.train_labels[chosen],
                    self.num_classes, warn=False)["intra_fid"]
            except ValueError as e:  # no class with 2 training images: the floor is missing, the rest stands
                log.warning("No intra-FID of real training images: %s", e)
        return out

    def per_eval(self, name: str) -> tuple[str, ...]:
        """The metrics `compare` gives the extractor `name` at every evaluation, as its reference features show:
        FID, and IS or the class histograms' where it gives class probabilities (as `compare` decides); the SWD's
        block ('swd') gives 'swd'."""
        if name == SWD and name not in self.extractors:
            return ("swd",)
        e, has_probs = self.extractors[name], "probs" in next(iter(self.refs.values()))[name]
        return ("fid", *(("is_mean", "is_std") if has_probs and e.inception_score and self.num_samples >= 10 else ()),
                *(("class_tv", "class_coverage") if has_probs and e.class_histograms else ()),
                *(("class_accuracy",) if has_probs and e.class_histograms and self.conditional else ()))

    def check_best_metric(self, metric: str | None) -> None:
        """A best_metric '<extractor>/<name>' this run's extractor does not compute at every evaluation (a user's
        extractor without class probabilities, say) fails now, before any training, listing what it computes."""
        if not metric or "/" not in metric:
            return
        name, m = metric.rsplit("/", 1)
        if (name in self.extractors or (name == SWD and self.swd)) and m not in (computed := self.per_eval(name)):
            raise ValueError(f"checkpoint.best_metric={metric!r}: the extractor {name!r} does not give {m!r} at "
                             f"every eval (its features show what it computes); choices: "
                             f"{', '.join(f'{name}/{c}' for c in computed)}")


def flatten(blocks: dict) -> dict:
    """{'inception': {'fid': 3.1, ...}} -> {'inception/fid': 3.1, ...}: the numbers, for metrics.jsonl."""
    return {f"{name}/{k}": v for name, block in blocks.items() for k, v in block.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


# Sample-quality metrics computed at every eval; the others (KID, precision/recall, density/coverage) only at the end.
PER_EVAL = ("fid", "is_mean", "is_std", "class_tv", "class_coverage", "class_accuracy")
# What each built-in extractor adds to FID at every eval (IS from Inception's logits, the class histograms from the
# classifier's); a user's extractor may give either, which shows only once it is built.
PER_EVAL_OF = {"inception": ("fid", "is_mean", "is_std"), "classifier": ("fid", "class_tv", "class_coverage")}
# Each task's own eval metrics (jaxgen.evaluation.vae.evaluate; GANTask.evaluate): a best_metric without '/' names one.
TASK_METRICS = {"vae": ("elbo", "kl", "rec_nll", "recon_nll_at_mean", "recon_mse", "nll", "nll_bits_per_dim"),
                "gan": ("d_real", "d_fake")}


# Which way is better for the metrics jaxgen computes (the part after '<extractor>/' for sample quality).
LOWER_IS_BETTER = ("fid", "swd", "kid_mean", "class_tv", "nll", "nll_bits_per_dim", "rec_nll", "recon_nll_at_mean",
                   "recon_mse", "loss")
HIGHER_IS_BETTER = ("elbo", "mig", "is_mean", "class_coverage", "class_accuracy", "precision", "recall", "density",
                    "coverage")


def best_mode(config) -> str:
    """'min' or 'max' for checkpoint.best_metric: checkpoint.best_mode, or with 'auto' the direction of the known
    metric. An explicit mode that contradicts a known metric's direction is an error (it would keep the worst)."""
    metric, mode = best_metric(config), config.checkpoint.best_mode
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"checkpoint.best_mode must be 'auto', 'min' or 'max', got {mode!r}")
    if metric is None:
        return "min" if mode == "auto" else mode
    name = metric.rsplit("/", 1)[-1]
    known = "min" if name in LOWER_IS_BETTER else "max" if name in HIGHER_IS_BETTER else None
    if mode == "auto":
        if known is None:
            raise ValueError(f"checkpoint.best_metric={metric!r}: jaxgen does not know whether lower or higher is "
                             "better; set --config.checkpoint.best_mode=min or =max")
        return known
    if known is not None and mode != known:
        raise ValueError(f"checkpoint.best_metric={metric!r} is better when {'lower' if known == 'min' else 'higher'}"
                         f", but checkpoint.best_mode={mode!r} would keep the worst checkpoint; use 'auto' or "
                         f"{known!r}")
    return mode


def _per_eval_of(extractor: str, config) -> tuple[str, ...]:
    """What the extractor named `extractor` gives at every eval of a run of `config` (PER_EVAL_OF; the classifier
    adds class_accuracy for a class-conditional model; a user's extractor: any of PER_EVAL)."""
    computed = PER_EVAL_OF.get(extractor, PER_EVAL)
    if extractor == "classifier" and config.model.get("num_classes", 0):
        computed = (*computed, "class_accuracy")
    return computed


def best_metric(config) -> str | None:
    """The eval metric the best checkpoint is kept by (checkpoint.best_metric), or None. A sample-quality metric
    ('<extractor>/<metric>') is checked here, before any work: its extractor must be in eval.extractors and the
    metric one computed at every eval."""
    m = config.checkpoint.best_metric
    swd_on = bool(config.eval.get("swd", False))
    if m == "auto":
        return (f"{config.eval.extractors[0]}/fid" if config.eval.extractors else f"{SWD}/swd" if swd_on else None)
    task_metrics = TASK_METRICS.get(config.task, ())
    if config.task == "vae" and config.data.name in data_lib.FACTORS and config.model.get("latent_dim", 2) >= 2:
        task_metrics = (*task_metrics, "mig")  # its evaluations add MIG
    elif m == "mig" and config.task != "vae":
        raise ValueError("checkpoint.best_metric='mig' scores a VAE's latents against the dataset's known factors; a "
                         "GAN has no encoder: keep its best checkpoint by FID ('auto' or '<extractor>/fid')")
    elif m == "mig" and config.data.name in data_lib.FACTORS:
        raise ValueError(f"checkpoint.best_metric='mig' compares the two latents most informative of each factor; "
                         f"model.latent_dim={config.model.latent_dim} has fewer: set --config.model.latent_dim=2 or "
                         f"more, or keep the best by 'elbo'")
    elif m == "mig":
        raise ValueError(f"checkpoint.best_metric='mig' scores the latents against the dataset's known generative "
                         f"factors, which only {', '.join(data_lib.FACTORS)} has (data.name={config.data.name!r}); "
                         f"keep the best by 'elbo' or by a sample-quality metric such as 'classifier/fid'")
    if m and "/" not in m and m not in task_metrics:
        per_eval = [f"{e}/{p}" for e in config.eval.extractors for p in _per_eval_of(e, config)]
        per_eval += [f"{SWD}/swd"] if swd_on else []
        raise ValueError(f"checkpoint.best_metric={m!r} is not a metric of every {config.task} eval; choices: "
                         f"{', '.join((*task_metrics, *per_eval))}"
                         + ("" if per_eval else " (sample-quality ones such as 'classifier/fid' with eval.extractors)"))
    if "/" in m and m.rsplit("/", 1)[0] == SWD and SWD not in tuple(config.eval.extractors):
        if not swd_on or m != f"{SWD}/swd":
            raise ValueError(f"checkpoint.best_metric={m!r}: " + ("the SWD's metric is 'swd/swd'" if swd_on else
                             "the sliced Wasserstein distance is computed with --config.eval.swd=True"))
    elif "/" in m:
        name, metric = m.rsplit("/", 1)
        if name not in tuple(config.eval.extractors):
            raise ValueError(f"checkpoint.best_metric={m!r} names the extractor {name!r}, which is not in "
                             f"eval.extractors={tuple(config.eval.extractors)}")
        computed = _per_eval_of(name, config)
        if metric not in computed:
            raise ValueError(f"checkpoint.best_metric={m!r}: {metric!r} is not computed at every eval"
                             + (f" of the {name} extractor" if name in PER_EVAL_OF else "") + "; choices: "
                             f"{', '.join(f'{name}/{p}' for p in computed)} (or a metric of the task such as "
                             f"{TASK_METRICS.get(config.task, ('nll',))[0]!r})"
                             + ("; class_accuracy is a class-conditional model's: set --config.model.num_classes=N"
                                if metric == "class_accuracy" and name == "classifier" else ""))
    return m or None
