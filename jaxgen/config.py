"""The base config every file in `configs/` extends, and its checks.

Every field a run reads exists here with a default, so a typo in a config file or in `--config.<field>=value`
fails loudly (the ConfigDict is locked) instead of being silently ignored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_collections


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every jaxgen run. Config files change a few fields and add variants."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist_5k"  # jaxgen.data.DATASETS, or 'package.module:function'
    c.data.data_dir = ""  # TFDS data dir and jaxgen's cache; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.binarize = "dynamic"  # 'dynamic' (Bernoulli draw per step), 'none' (pixels in [0, 1])
    c.data.num_examples = 0  # synthetic: examples per split; others: keep the first N (0 = all)
    c.data.image_shape = (28, 28, 1)  # synthetic only
    c.data.download = True  # TFDS: download and prepare when missing

    c.model = ml_collections.ConfigDict()
    c.model.name = "conv_vae"  # jaxgen.models.MODELS, or 'package.module:ModuleClass'
    c.model.latent_dim = 10
    c.model.channels = (32, 64)  # conv_vae: encoder widths (the decoder mirrors them)
    c.model.dense = 16  # conv_vae: the dense bottleneck before the latent
    c.model.hidden = (200, 200)  # mlp_vae: hidden widths
    c.model.activation = "relu"  # relu, tanh, gelu, silu, elu

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "elbo"  # jaxgen.objectives.OBJECTIVES, or 'package.module:function'
    c.objective.likelihood = "bernoulli"  # 'bernoulli' (decoder gives logits) or 'gaussian' (decoder gives means)
    c.objective.gaussian_sigma = 0.1  # std of the Gaussian likelihood, pixels in [0, 1]
    c.objective.beta = 1.0  # weight of the KL term (beta-VAE); 1 is the ELBO
    c.objective.k = 1  # latent samples per example (IWAE's k)
    c.objective.kl = "analytic"  # elbo: 'analytic' or 'mc' (single-sample estimate)

    c.optim = ml_collections.ConfigDict()
    c.optim.name = "adam"  # adam, adamw
    c.optim.lr = 1e-3
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0  # adamw only
    c.optim.schedule = "constant"  # 'constant' or 'cosine' (both after a linear warmup)
    c.optim.warmup_steps = 0
    c.optim.end_lr_ratio = 0.0  # cosine: final lr = lr * end_lr_ratio
    c.optim.clip_norm = 0.0  # global gradient-norm clipping; 0 = off

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global, over all devices of all hosts
    c.train.steps = 10_000
    c.train.steps_per_dispatch = 1  # >1 fuses that many steps into one compiled call (lax.scan)
    c.train.ema_decay = 0.0  # >0 keeps an EMA of the params, used for evaluation and samples
    c.train.log_every = 100

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000  # steps; a checkpoint is also written at the end
    c.checkpoint.keep = 3
    c.checkpoint.asynchronous = True

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 2000  # steps; 0 = only at the end
    c.eval.batch_size = 200
    c.eval.num_examples = 0  # test examples per eval; 0 = the whole test split
    c.eval.nll_k = 100  # importance samples for the NLL at intermediate evals
    c.eval.final_nll_k = 1000  # importance samples for the NLL at the final eval
    c.eval.nll_chunk = 50  # importance samples per pass: batch_size * nll_chunk decodes in memory at once

    c.output = ml_collections.ConfigDict()
    c.output.num_samples = 64  # images in the sample grids
    c.output.plots = True  # latent scatter, traversal and loss curves
    c.output.progress = True  # progress bar on the terminal
    return c


def with_variant(
    config: ml_collections.ConfigDict,
    variant: str,
    variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
    """Applies the named variants (comma-separated) to `config` in place; unknown names list the choices."""
    for name in [v for v in (variant or "").split(",") if v]:
        if name not in variants:
            raise ValueError(f"unknown config variant {name!r}; choices: {', '.join(sorted(variants))}")
        variants[name](config)
    config.lock()
    return config


def smoke(config: ml_collections.ConfigDict) -> None:
    """The tiny-size settings every `smoke` variant shares: same model, objective and step, seconds to run."""
    config.train.batch_size = 32
    config.train.steps = 20
    config.train.log_every = 5
    config.checkpoint.every = 10
    config.eval.every = 10
    config.eval.batch_size = 64
    config.eval.num_examples = 64
    config.eval.nll_k = 8
    config.eval.final_nll_k = 16
    config.eval.nll_chunk = 8
    config.output.num_samples = 16


def check(config: ml_collections.ConfigDict) -> None:
    """Cross-field checks that the types alone do not catch. Raises ValueError naming the field and the fix."""
    t = config.train
    if t.batch_size <= 0 or t.steps < 0:
        raise ValueError(f"train.batch_size must be > 0 and train.steps >= 0, got {t.batch_size} and {t.steps}")
    if t.steps_per_dispatch < 1:
        raise ValueError(f"train.steps_per_dispatch must be >= 1, got {t.steps_per_dispatch}")
    for field, value in (("train.log_every", t.log_every), ("checkpoint.every", config.checkpoint.every)):
        if value <= 0:
            raise ValueError(f"{field} must be > 0, got {value}")
    if config.eval.every < 0:
        raise ValueError(f"eval.every must be >= 0 (0 = only at the end), got {config.eval.every}")
    k = t.steps_per_dispatch
    for field, value in (
        ("train.log_every", t.log_every),
        ("checkpoint.every", config.checkpoint.every),
        ("eval.every", config.eval.every),
    ):
        if value and value % k:
            raise ValueError(
                f"{field}={value} must be a multiple of train.steps_per_dispatch={k}: a fused call runs {k} steps"
            )
    if config.objective.k < 1 or config.eval.nll_k < 1 or config.eval.final_nll_k < 1:
        raise ValueError("objective.k, eval.nll_k and eval.final_nll_k must be >= 1")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if config.data.binarize not in ("dynamic", "none"):
        raise ValueError(f"data.binarize must be 'dynamic' or 'none', got {config.data.binarize!r}")
