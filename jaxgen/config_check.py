"""A config's checks before any work: cross-field checks that the types alone do not catch (each a ValueError naming
the field and the fix), the settings a run ignores, and the fields a config file added that nothing reads.
`check` runs when a task is built (jaxgen.training.vae_task, gan_task)."""

from __future__ import annotations

import logging
import math

import ml_collections

from jaxgen import config as config_lib
from jaxgen.config import flat_fields, updates

log = logging.getLogger("jaxgen")


def check(config: ml_collections.ConfigDict, training: bool = True) -> None:
    """Cross-field checks that the types alone do not catch. Raises ValueError naming the field and the fix.
    training=False (--mode=eval/sample): the best checkpoint's metric is not checked (only training keeps one; an
    eval with other eval.extractors than training need not change checkpoint.best_metric to match), and settings
    that do nothing are not warned about (training said so, and what only training reads does nothing here)."""
    if config.task not in ("vae", "gan"):
        raise ValueError(f"unknown task {config.task!r}; choices: gan, vae")
    base = {"vae": config_lib.vae_config, "gan": config_lib.gan_config}[config.task]()  # the defaults, built once
    _check_train(config, base)
    _check_eval(config, training)
    _check_optimizers(config)
    (_check_vae if config.task == "vae" else _check_gan)(config)
    _report_added_fields(config, base)
    if training and (ignored := ignored_settings(config, base)):  # said when training; in eval modes, noise
        log.warning("These settings do nothing in this run: %s", "; ".join(ignored))


# The consistency regularizers (jaxgen.objectives.gan): the reg.name values that read reg.cr_policy and take no
# input gradient.
CONSISTENCY = ("cr", "bcr")

# The model fields each built-in model reads (the others in its task's model block belong to other models).
MODEL_READS = {
    "conv_vae": ("latent_dim", "channels", "dense", "activation", "output_bias", "conv_impl", "num_classes", "prior",
                 "vamp_components", "vamp_init"),
    "mlp_vae": ("latent_dim", "hidden", "activation", "output_bias", "num_classes", "prior", "vamp_components",
                "vamp_init"),
    "dcgan": ("latent_dim", "g_width", "d_width", "g_norm", "d_norm", "g_spectral_norm", "d_spectral_norm", "dtype",
              "conv_impl", "norm_impl", "num_classes", "d_conditioning"),
    "resnet": ("latent_dim", "g_width", "d_width", "g_norm", "d_norm", "g_spectral_norm", "d_spectral_norm", "dtype",
               "norm_impl", "num_classes", "d_conditioning"),
}


# What a VAE model class of the user's reads of the model block (it is constructed with image_shape, latent_dim and
# num_classes; jaxgen wraps it in the prior).
CLASS_MODEL_READS = ("name", "latent_dim", "num_classes", "prior", "vamp_components", "vamp_init")

# The built-in VAE objectives' own fields of the objective block, and which of them each reads (the likelihood's are
# every objective's).
VAE_OBJECTIVE_READS = {"elbo": ("beta", "k", "kl", "kl_warmup_steps", "estimator"), "iwae": ("k", "estimator"),
                       "miwae": ("k", "m", "estimator"), "ciwae": ("k", "elbo_weight", "estimator"),
                       "piwae": ("k", "m", "estimator"),
                       "beta_tcvae": ("beta", "mi_weight", "dim_kl_weight", "tc_estimator"),
                       "info_vae": ("beta", "mmd_weight", "mmd_kernel"),
                       "capacity_vae": ("beta", "capacity", "capacity_steps")}
VAE_OBJECTIVE_FIELDS = {f: tuple(n for n, reads in VAE_OBJECTIVE_READS.items() if f in reads)
                        for f in ("beta", "k", "m", "elbo_weight", "estimator", "kl", "kl_warmup_steps", "mi_weight",
                                  "dim_kl_weight", "tc_estimator",
                                  "mmd_weight", "mmd_kernel", "capacity", "capacity_steps")}


def ignored_settings(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> list[str]:
    """Fields set away from the task's defaults (`base`) that the run's built-in choices do not read, each with
    what would read it: `model.channels` on mlp_vae, `optim.weight_decay` with adam, `optim.end_lr_ratio` with the
    constant schedule, `objective.beta` with iwae, `reg.weight` without a regularizer. A function of the user's may
    read any field of its block, so its block is not reported (the optimizer's schedule fields are jaxgen's,
    whatever the optimizer); a user's feature extractor gets the whole config, so with one nothing is reported."""
    if any(":" in str(name) for name in config.eval.get("extractors", ())):
        return []
    out = []

    def changed(block: str, field: str) -> bool:
        return field in config[block] and field in base[block] and config[block][field] != base[block][field]

    model = config.model.name
    if model in MODEL_READS:
        same_task = [name for name in MODEL_READS if all(f in base.model for f in MODEL_READS[name])]
        for field in sorted(config.model.keys()):
            if field != "name" and field not in MODEL_READS[model] and changed("model", field):
                readers = [name for name in same_task if field in MODEL_READS[name]]
                out.append(f"model.{field}={config.model[field]!r} (read by model.name={' or '.join(readers)}; "
                           f"this run's is {model})")
    elif config.task == "vae" and built_as_class(model):
        out += [f"model.{field}={config.model[field]!r} (read by the built-in models and by a model factory, "
                f"fn(model_config, image_shape); the class {model} is built with image_shape, latent_dim and "
                f"num_classes alone)"
                for field in sorted(config.model.keys()) if field not in CLASS_MODEL_READS and changed("model", field)]
    if config.task == "vae" and config.model.get("prior", "normal") == "normal":
        out += [f"model.{field}={config.model[field]!r} (read by model.prior=vamp; this run's is normal)"
                for field in ("vamp_components", "vamp_init") if changed("model", field)]
    for block in ("optim", "g_optim", "d_optim"):
        if block not in config:
            continue
        if config[block].name == "adam" and changed(block, "weight_decay"):
            out.append(f"{block}.weight_decay={config[block].weight_decay!r} (read by {block}.name=adamw; this run's "
                       f"is adam)")
        if config[block].schedule == "constant" and changed(block, "end_lr_ratio"):
            out.append(f"{block}.end_lr_ratio={config[block].end_lr_ratio!r} (read by {block}.schedule=cosine or "
                       f"linear; this run's is constant)")
    if config.task == "vae" and config.objective.name in VAE_OBJECTIVE_READS:
        reads = VAE_OBJECTIVE_READS[config.objective.name]
        for field, readers in VAE_OBJECTIVE_FIELDS.items():
            if field not in reads and changed("objective", field):
                out.append(f"objective.{field}={config.objective[field]!r} (read by objective.name="
                           f"{' or '.join(readers)}; this run's is {config.objective.name})")
    if config.task == "vae" and config.objective.likelihood in ("bernoulli", "discretized_logistic") and \
            changed("objective", "gaussian_sigma"):
        out.append(f"objective.gaussian_sigma={config.objective.gaussian_sigma!r} (read by "
                   f"objective.likelihood=gaussian; this run's is {config.objective.likelihood})")
    if "reg" in config and config.reg.name == "none":
        out += [f"reg.{field}={config.reg[field]!r} (read by a regularizer: reg.name=r1, gp, cr, bcr or your own)"
                for field in ("weight", "interval") if changed("reg", field)]
    if "reg" in config and config.reg.name in ("none", "r1", "gp") and changed("reg", "cr_policy"):
        out.append(f"reg.cr_policy={config.reg.cr_policy!r} (read by the consistency regularizers, reg.name=cr or "
                   f"bcr; this run's is {config.reg.name})")
    if "loss" in config and config.model.get("d_conditioning", "projection") != "ac" and changed("loss", "ac_weight"):
        out.append(f"loss.ac_weight={config.loss.ac_weight!r} (read by an auxiliary-classifier D, "
                   f"model.d_conditioning='ac'; this run's is {config.model.get('d_conditioning', 'projection')!r})")
    if "loss" in config and config.loss.get("topk_nu", 0.0) == 0 and changed("loss", "topk_gamma"):
        out.append(f"loss.topk_gamma={config.loss.topk_gamma!r} (read by top-k training, loss.topk_nu > 0; this "
                   f"run's is 0)")
    if "reg" in config and config.reg.get("lecam_weight", 0.0) == 0 and changed("reg", "lecam_decay"):
        out.append(f"reg.lecam_decay={config.reg.lecam_decay!r} (read by LeCam regularization, reg.lecam_weight > 0; "
                   f"this run's is 0)")
    return out


def built_as_class(name: str) -> bool:
    """Whether the VAE model `name` is a user's Linen module class, which is built with image_shape and latent_dim
    alone (not a factory, which gets the whole model block). An unknown name: False (building the model says so)."""
    from jaxgen import models, registry  # noqa: PLC0415 (Flax: only for a user's model)

    try:
        return models.is_module_class(registry.resolve("model", name, models.MODELS))
    except registry.UnknownNameError:
        return False


def _check_train(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
    """train.*, checkpoint.every and data.*: sizes, intervals and their multiples of train.steps_per_dispatch;
    model.latent_dim, which every model reads."""
    if config.model.latent_dim < 1:
        raise ValueError(f"model.latent_dim must be >= 1, got {config.model.latent_dim}")
    # The sizes the built-in model and the synthetic dataset read (a user's own may read them otherwise): else a
    # JAX shape error (or worse) while the model is built, after the workdir was made.
    reads = MODEL_READS.get(config.model.name, ())
    sizes = [  # field, read in this run, length (None: any), may be empty, what it must be, an example
        ("model.channels", "channels" in reads, None, False, "a non-empty tuple of", "(32, 64)"),
        ("model.hidden", "hidden" in reads, None, True, "a tuple of", "(200, 200)"),  # () is a linear VAE
        ("data.image_shape", config.data.name == "synthetic", 3, False, "a tuple of 3", "(28, 28, 1)")]
    for field, read, length, empty, what, example in sizes:
        block, name = field.split(".")
        value = config[block].get(name)
        if read and not _positive_ints(value, length, empty):
            raise ValueError(f"{field} must be {what} positive integers, got {value!r}: e.g. "
                             f"--config.{field}='{example}'")
    for name in ("dense", "g_width", "d_width"):
        if name in reads and not _positive_ints((config.model[name],), 1):
            raise ValueError(f"model.{name} must be a positive integer, got {config.model[name]!r}")
    if "dense" in reads and config.model.latent_dim > config.model.dense:
        log.warning("model.latent_dim=%d > model.dense=%d: %s's encoder and decoder pass through %d units, so at most "
                    "%d latent dimensions carry information; raise model.dense with the latent size",
                    config.model.latent_dim, config.model.dense, config.model.name, config.model.dense,
                    config.model.dense)
    if config.seed < 0:  # numpy's generators (evaluation subsets) refuse one, after the whole run
        raise ValueError(f"seed must be >= 0, got {config.seed}")
    if config.checkpoint.keep < 1:  # Orbax would keep none: the run could not resume
        raise ValueError(f"checkpoint.keep must be >= 1 (the newest checkpoints kept; a run resumes from the "
                         f"newest), got {config.checkpoint.keep}")
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
    if config.data.validation_examples < 0:
        raise ValueError(f"data.validation_examples must be >= 0 (0 = no validation split), got "
                         f"{config.data.validation_examples}")
    named = [f"{b}.{f}" for b, f in (("data", "test_split"), ("eval", "reference_split"))
             if config[b][f] == "validation"]
    if config.data.validation_examples and named:
        raise ValueError(f"data.validation_examples holds out a split it names 'validation', which {named[0]} "
                         f"names too: to evaluate on the dataset's own 'validation' split, set "
                         f"--config.data.validation_examples=0")
    k = t.steps_per_dispatch
    off = [f"{field}={value}" for field, value in (("train.steps", t.steps), ("train.log_every", t.log_every),
                                                   ("checkpoint.every", config.checkpoint.every),
                                                   ("eval.every", config.eval.every)) if value and value % k]
    if off:
        raise ValueError(f"{' and '.join(off)} must be {'a multiple' if len(off) == 1 else 'multiples'} of "
                         f"train.steps_per_dispatch={k}: a fused call runs {k} steps")
    if config.checkpoint.every % t.log_every:
        log.warning("checkpoint.every=%d is not a multiple of train.log_every=%d: a run killed and resumed from a "
                    "checkpoint between two train records writes a first record over fewer steps than an "
                    "uninterrupted run would (the state still resumes exactly)", config.checkpoint.every, t.log_every)
    if config.data.binarize not in ("dynamic", "none"):
        raise ValueError(f"data.binarize must be 'dynamic' or 'none', got {config.data.binarize!r}")
    from jaxgen import data  # noqa: PLC0415 (numpy; no TFDS)
    from jaxgen.data import cache  # noqa: PLC0415

    cache.data_dir(config.data)  # a URL is refused before any work (jaxgen's caches live there)
    unread = data.unread_fields(config.data, base.data)
    if unread:
        log.warning("The dataset %r does not read %s: the run uses %s as it is%s", config.data.name,
                    "; ".join(unread), config.data.name,
                    " (a folder of images: --config.data.name=image_folder)" if config.data.path else "")
    if t.ema_half_life < 0:
        raise ValueError(f"train.ema_half_life must be >= 0 images (0 = no EMA), got {t.ema_half_life}")
    if t.ema_rampup < 0:
        raise ValueError(f"train.ema_rampup must be >= 0 (0 = no ramp-up), got {t.ema_rampup}")


def _positive_ints(value, length: int | None, empty: bool = False) -> bool:
    """Whether `value` is a tuple or list of positive ints (bools excluded): of `length` when given, else
    non-empty unless `empty`."""
    return (isinstance(value, tuple | list) and (len(value) > 0 or empty) and (length is None or len(value) == length)
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value))


def _check_eval(config: ml_collections.ConfigDict, training: bool) -> None:
    """eval.* and sample.*: the extractors, the best checkpoint's metric (training keeps it) and the sizes."""
    from jaxgen.evaluation import latent_mixture, quality, sampling  # noqa: PLC0415 (imports JAX: check runs when a task is built)

    quality.check_names(config.eval.extractors)
    if training:
        quality.best_metric(config)  # a sample-quality best_metric names an extractor in use and a per-eval metric
        quality.best_mode(config)  # and its direction is known or given
    config_lib.eval_checkpoint(config)
    if config.eval.classifier_steps < 1:
        raise ValueError(f"eval.classifier_steps must be >= 1, got {config.eval.classifier_steps}")
    if config.eval.extractors and config.eval.num_samples <= quality.FINAL_K:
        raise ValueError(f"eval.num_samples must be > {quality.FINAL_K} with eval.extractors: the final evaluation's "
                         f"nearest-neighbour metrics (density and coverage) take {quality.FINAL_K} neighbours "
                         f"(>= 2048 samples for Inception FID), got {config.eval.num_samples}")
    if config.eval.get("swd", False) and config.eval.num_samples < 2:
        raise ValueError(f"eval.swd compares eval.num_samples samples with as many real images: give at least 2 (the "
                         f"paper took 16384), got {config.eval.num_samples}")
    if config.sample.num < 1 or config.sample.per_grid < 1:
        raise ValueError("sample.num and sample.per_grid must be >= 1")
    sampling.check_truncation(config.sample.get("truncation", 0.0))
    latent_mixture.check(config.sample)
    model = config.get("model")
    sampling.check_classes(tuple(config.sample.get("classes", ())),
                          model.get("num_classes", 0) if model is not None else 0)
    if model is not None and model.get("num_classes", 0) < 0:
        raise ValueError(f"model.num_classes must be >= 0 (0 = unconditional; N = the model conditioned on the "
                         f"dataset's labels 0..N-1), got {model.num_classes}")
    for field in ("eval.batch_size", "output.num_samples"):  # else an error at the first evaluation, after training
        block, name = field.split(".")
        if config[block][name] < 1:
            raise ValueError(f"{field} must be >= 1, got {config[block][name]}")


def _check_optimizers(config: ml_collections.ConfigDict) -> None:
    """optim (VAE), g_optim and d_optim (GAN): a known schedule, and a warm-up shorter than the run."""
    from jaxgen.training import optim  # noqa: PLC0415 (optax, hence JAX, as quality above)

    for block in ("optim", "g_optim", "d_optim"):
        if block not in config:
            continue
        o = config[block]
        for name, low, high in (("lr", 0.0, math.inf), ("b1", 0.0, 1.0), ("b2", 0.0, 1.0),
                                ("warmup_steps", 0, math.inf), ("end_lr_ratio", 0.0, math.inf),
                                ("clip_norm", 0.0, math.inf), ("weight_decay", 0.0, math.inf)):
            value = o.get(name)  # a user's optimizer block may lack some
            if value is not None and not (low <= value < high):  # NaN too
                raise ValueError(f"{block}.{name} must be >= {low:g}" + (f" and < {high:g}" if high < math.inf else
                                 " and finite") + f", got {value}")
        if o.get("eps") is not None and not o.eps > 0:  # 0: a parameter whose gradient is 0 gets 0 / 0 = NaN
            raise ValueError(f"{block}.eps must be > 0 (Adam's denominator), got {o.eps}")
        if o.schedule not in optim.SCHEDULES:
            raise ValueError(f"unknown {block}.schedule {o.schedule!r}; choices: {', '.join(optim.SCHEDULES)}")
        if o.warmup_steps >= updates(config, block) > 0:
            log.warning("%s.warmup_steps=%d >= the run's %d updates: the learning rate never reaches %s.lr=%g",
                        block, o.warmup_steps, updates(config, block), block, o.lr)


def _check_vae(config: ml_collections.ConfigDict) -> None:
    o = config.objective
    if o.likelihood == "gaussian" and not o.gaussian_sigma > 0:
        raise ValueError(f"objective.gaussian_sigma must be > 0 (the Gaussian likelihood's standard deviation, pixels "
                         f"in [0, 1]), got {o.gaussian_sigma}")
    if not o.beta >= 0:
        raise ValueError(f"objective.beta must be >= 0 (the KL term's weight; 1 is the ELBO), got {o.beta}")
    for field in ("mi_weight", "dim_kl_weight"):
        if not o.get(field, 1.0) >= 0:
            raise ValueError(f"objective.{field} must be >= 0 (a weight of beta_tcvae's KL terms; 1 with beta=1 is "
                             f"the ELBO), got {o[field]}")
    if not o.get("mmd_weight", 0.0) >= 0:
        raise ValueError(f"objective.mmd_weight must be >= 0 (info_vae's weight of MMD^2 between q(z) and the prior; "
                         f"a negative one pushes them apart), got {o.mmd_weight}")
    if not o.get("capacity", 0.0) >= 0 or o.get("capacity_steps", 1) < 0:
        raise ValueError(f"objective.capacity (nats) and objective.capacity_steps must be >= 0 (capacity_vae's KL "
                         f"target and the steps it rises over), got {o.capacity} and {o.capacity_steps}")
    if o.name == "info_vae" and config.train.batch_size < 2:
        raise ValueError(f"objective.name='info_vae' estimates MMD^2 over the global batch, which needs at least 2 "
                         f"examples; train.batch_size={config.train.batch_size}")
    if o.get("tc_estimator", "mws") not in ("mws", "mss"):
        raise ValueError(f"unknown objective.tc_estimator {o.tc_estimator!r}; choices: mws, mss (beta_tcvae's estimate "
                         f"of q(z): minibatch weighted or stratified sampling)")
    if o.name == "beta_tcvae" and o.get("tc_estimator", "mws") == "mss" and config.train.batch_size < 2:
        raise ValueError(f"objective.tc_estimator='mss' weighs each example's own posterior apart from the rest of the "
                         f"batch, which needs at least 2 examples; train.batch_size={config.train.batch_size}")
    if o.get("mmd_kernel", "imq") not in ("imq", "rbf"):
        raise ValueError(f"objective.mmd_kernel must be 'imq' or 'rbf', got {o.mmd_kernel!r}")
    if config.objective.k < 1 or config.eval.nll_k < 1 or config.eval.final_nll_k < 1:
        raise ValueError("objective.k, eval.nll_k and eval.final_nll_k must be >= 1")
    _check_importance_fields(o)
    if config.eval.get("factor_vae_votes", 0) < 0 or 0 < config.eval.get("factor_vae_votes", 0) < 3:
        raise ValueError(f"eval.factor_vae_votes must be 0 (off) or >= 3 (two thirds train the FactorVAE metric's "
                         f"classifier, the rest score it), got {config.eval.factor_vae_votes}")
    if config.eval.nll_chunk < 1:
        raise ValueError(f"eval.nll_chunk must be >= 1 (importance samples per pass), got {config.eval.nll_chunk}")
    _check_prior(config)
    if config.objective.kl_warmup_steps < 0:
        raise ValueError(f"objective.kl_warmup_steps must be >= 0 (0 = no KL warm-up), got "
                         f"{config.objective.kl_warmup_steps}")
    _warn_vae_combinations(config)


def _check_gan(config: ml_collections.ConfigDict) -> None:
    t = config.train
    if t.d_steps < 1:
        raise ValueError(f"train.d_steps must be >= 1, got {t.d_steps}")
    if t.g_batch_size < -1:
        raise ValueError(f"train.g_batch_size must be >= -1 (0 = the G update reuses the last D update's fakes, "
                         f"-1 = as many fresh ones as train.batch_size), got {t.g_batch_size}")
    if config.data.binarize != "none":
        raise ValueError(f"data.binarize={config.data.binarize!r} is for VAEs; a GAN trains on the pixels: set "
                         f"--config.data.binarize=none")
    if config.reg.through_augment and not (config.augment.policy and config.reg.name != "none"):
        log.warning("reg.through_augment=True does nothing without a regularizer (reg.name) and an augmentation "
                    "(augment.policy)")
    elif config.reg.through_augment and config.reg.name in CONSISTENCY:
        log.warning("reg.through_augment=True does nothing with reg.name=%s: it takes no input gradient, and "
                    "compares D on the augmented images D saw with D on a further augmentation of them "
                    "(reg.cr_policy)", config.reg.name)
    if config.reg.interval < 1:
        raise ValueError(f"reg.interval must be >= 1 (1 = every D step), got {config.reg.interval}")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"model.dtype must be 'float32' or 'bfloat16', got {config.model.dtype!r}")
    _check_augment(config.augment, config.loss.name)
    if not config.reg.weight >= 0:  # a negative weight rewards D's steep input gradients
        raise ValueError(f"reg.weight must be >= 0, got {config.reg.weight}")
    if config.model.get("d_conditioning", "projection") == "ac" and not config.model.get("num_classes", 0):
        raise ValueError("model.d_conditioning='ac' gives D an auxiliary classifier of the dataset's classes; set "
                         "--config.model.num_classes=N (the classes 0..N-1 of the labels) too")
    if config.model.get("d_conditioning", "projection") == "ac" and config.loss.get("ac_weight", 1.0) == 0:
        log.warning("model.d_conditioning='ac' with loss.ac_weight=0: D ignores the labels and its class head is "
                    "never trained, so G gets no signal of the classes it is asked for; set loss.ac_weight > 0 "
                    "(1: ACGAN's) or use model.d_conditioning='projection'")
    if not config.loss.get("ac_weight", 1.0) >= 0:
        raise ValueError(f"loss.ac_weight must be >= 0 (the auxiliary classifier's cross-entropy weight), got "
                         f"{config.loss.ac_weight}")
    if not 0 <= config.loss.get("topk_nu", 0.0) < 1:
        raise ValueError(f"loss.topk_nu must be in [0, 1) (the least fraction of the G update's fakes top-k training "
                         f"keeps; 0 = off; 1 would keep them all), got {config.loss.topk_nu}")
    if not 0 < config.loss.get("topk_gamma", 0.99) <= 1:
        raise ValueError(f"loss.topk_gamma must be in (0, 1] (k's decay per pass over the training data; 1 = k stays "
                         f"the whole batch), got {config.loss.topk_gamma}")
    if not config.reg.get("lecam_weight", 0.0) >= 0:  # a negative one rewards D for pushing its outputs apart
        raise ValueError(f"reg.lecam_weight must be >= 0 (0 = off; the LeCam paper's BigGAN runs: 0.3), got "
                         f"{config.reg.lecam_weight}")
    if not 0 <= config.reg.get("lecam_decay", 0.99) < 1:
        raise ValueError(f"reg.lecam_decay must be in [0, 1) (the moving averages' decay per D update; 0 = the "
                         f"update's own means; theirs: 0.99), got {config.reg.lecam_decay}")
    _check_critic(config)


def _check_augment(a: ml_collections.ConfigDict, loss: str) -> None:
    """augment.probability and the adaptive augmentation's fields (ada_*), with the GAN loss `loss.name`."""
    if not 0 <= a.probability <= 1:
        raise ValueError(f"augment.probability must be in [0, 1] (each augmentation's probability per example; 1 = "
                         f"always, as DiffAugment), got {a.probability}")
    if not 0 <= a.ada_target < 1:
        raise ValueError(f"augment.ada_target must be in [0, 1): 0 = off; the mean sign of D's outputs on the reals "
                         f"the adaptive augmentation keeps (StyleGAN2-ADA's 0.6), got {a.ada_target}")
    if a.ada_target > 0:
        if not a.policy:
            raise ValueError("augment.ada_target > 0 adapts the probability of the augmentations in augment.policy, "
                             "which is empty: set one, e.g. --config.augment.policy=translation,rotation,scale,color")
        if a.ada_interval < 1 or not a.ada_kimg > 0:
            raise ValueError(f"augment.ada_interval must be >= 1 and augment.ada_kimg > 0, got {a.ada_interval} and "
                             f"{a.ada_kimg}")
        if a.probability != 1.0:
            log.warning("augment.probability=%s does nothing with augment.ada_target > 0: the adaptive probability "
                        "starts at 0", a.probability)
        if loss in ("least_squares", "wasserstein") or loss.startswith("relativistic"):
            log.warning("augment.ada_target with loss.name=%s: the adaptive augmentation follows the sign of D's "
                        "outputs on the reals, which this loss does not centre on 0 (%s), so the probability does not "
                        "measure D's overfitting; StyleGAN2-ADA's heuristic assumes a logistic or hinge loss", loss,
                        "least squares trains them towards 1" if loss == "least_squares" else
                        "a critic is the same up to a constant" if loss == "wasserstein" else
                        "a relativistic D scores reals against fakes: adding a constant changes nothing")


def _check_critic(config: ml_collections.ConfigDict) -> None:
    """Warns where the Wasserstein loss, whose critic must be 1-Lipschitz, lacks a constraint (not an error: a
    user's model may constrain the critic another way). A penalty with BatchNorm in D: GANTask warns."""
    gradient_penalty = config.reg.name != "none" and config.reg.name not in CONSISTENCY  # they bound no gradient
    constrained = (gradient_penalty and config.reg.weight > 0) or config.model.get("d_spectral_norm", False)
    if config.loss.name == "wasserstein" and not constrained:
        log.warning("loss.name=wasserstein without a Lipschitz constraint on D: its outputs grow without bound and "
                    "its loss falls for ever. Add the gradient penalty (--config.reg.name=gp --config.reg.weight=10, "
                    "as WGAN-GP) or spectral norm (--config.model.d_spectral_norm=True)")


# The blocks a user's function receives as its `cfg` (or model_config, data_config), by the fields that can name
# such a function ('package.module:function'). A user's feature extractor receives the whole config.
USER_BLOCKS = {"objective": ("name", "likelihood"), "loss": ("name",), "reg": ("name",), "model": ("name",),
               "data": ("name",), "optim": ("name",), "g_optim": ("name",), "d_optim": ("name",)}


def _report_added_fields(config: ml_collections.ConfigDict, base: ml_collections.ConfigDict) -> None:
    """Logs the fields a config file added: a note for those a function of the user's may read (its block is handed
    to one), a warning naming the likely typo for the others, which nothing reads (`c.objective.bta = 0.5` with
    the built-in objective, `c.train.step = 10`: the run would go on with the defaults)."""
    added = sorted(set(flat_fields(config)) - set(flat_fields(base)))  # beyond the task's base: a config file's own
    if not added:
        return
    import difflib  # noqa: PLC0415

    extractor = any(":" in str(name) for name in config.eval.get("extractors", ()))  # gets the whole config
    unread = []
    for path in added:
        block, _, field = path.partition(".")
        names = [config[block].get(f) for f in USER_BLOCKS.get(block, ())] if field else []
        if extractor or any(isinstance(n, str) and ":" in n for n in names):
            continue
        if field and block in base:  # a misspelt field of a known block
            close = [f"{block}.{c}" for c in difflib.get_close_matches(field, list(base[block].keys()), n=1)]
        else:  # a misspelt block (or top-level field)
            close = [c + (f".{field}" if field else "")
                     for c in difflib.get_close_matches(block, list(base.keys()), n=1)]
        unread.append(path + (f" (did you mean {close[0]}?)" if close else ""))
    read = [p for p in added if not any(u.split(" ")[0] == p for u in unread)]
    if read:
        log.info("Fields of your own, added by the config file: %s", ", ".join(read))
    if unread:
        log.warning("The config file added fields that nothing reads (their block's function is jaxgen's own, which "
                    "reads only its known fields): %s. A misspelt field here is not an error: unlock only the block "
                    "your function reads (`with c.objective.unlocked():`)", "; ".join(unread))


def _check_importance_fields(o: ml_collections.ConfigDict) -> None:
    """objective.estimator, objective.m and objective.elbo_weight (the importance-weighted family's fields)."""
    from jaxgen.objectives import vae as vae_objectives  # noqa: PLC0415 (JAX loads with it, when checked)

    estimator, m = vae_objectives.estimator(o), vae_objectives.bound_groups(o)
    vae_objectives.elbo_weight(o)
    if o.name == "elbo" and estimator == "dreg" and o.kl == "analytic":
        raise ValueError(vae_objectives.STL_NEEDS_MC)
    if o.name in ("miwae", "piwae") and m == 1:
        log.warning("objective.name=%r with objective.m=1 is the IWAE bound of objective.k=%d draws (objective.name="
                    "iwae); Rainforth et al. split m k draws into m > 1 bounds, e.g. m=8 and k=8", o.name, o.k)


def _check_prior(config) -> None:
    """model.prior and, for 'vamp', model.vamp_components and what the VampPrior trains with."""
    check_prior_fields(config.model)
    if config.model.get("prior", "normal") != "vamp":
        return
    o = config.objective
    if o.name in ("beta_tcvae", "info_vae", "capacity_vae"):
        raise ValueError(f"objective.name={o.name!r} assumes the N(0, I) prior (its KL terms or MMD are taken against "
                         "it); model.prior='vamp' trains with objective.name=elbo (objective.kl=mc) or iwae (or "
                         "miwae, ciwae, piwae), or an objective of yours that calls "
                         "jaxgen.objectives.vae.prior_log_prob")
    if o.name not in VAE_OBJECTIVE_READS:
        log.warning("model.prior='vamp' with your objective %s: it must take log p(z) from "
                    "jaxgen.objectives.vae.prior_log_prob(params, z, model); one that takes its KL against N(0, I) "
                    "(gaussian_kl, std_normal_log_prob) leaves the pseudo-inputs where they start, and the evaluation "
                    "scores the model under that untrained VampPrior", o.name)
    if o.name == "elbo" and o.kl == "analytic":
        raise ValueError("model.prior='vamp' has no closed-form KL: set --config.objective.kl=mc (the single-sample "
                         "log q(z|x) - log p(z), as Tomczak and Welling train it), or --config.model.prior=normal")


def check_prior_fields(m: ml_collections.ConfigDict) -> None:
    """A VAE model block's model.prior, model.vamp_components, and a VampPrior on an unconditional model only
    (jaxgen.models.build checks them too, for a block built outside a run)."""
    from jaxgen.models.prior import INITS, PRIORS  # noqa: PLC0415 (the models, flax with them, load when checked)

    name = m.get("prior", "normal")
    if name not in PRIORS:
        raise ValueError(f"unknown model.prior {name!r}; choices: {', '.join(PRIORS)} ('normal': N(0, I); 'vamp': "
                         "the VampPrior of model.vamp_components learned pseudo-inputs)")
    k = m.get("vamp_components", 500)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"model.vamp_components must be an int >= 1 (the VampPrior's pseudo-inputs; Tomczak and "
                         f"Welling used 500 on MNIST), got {k!r}")
    if m.get("vamp_init", "noise") not in INITS:
        raise ValueError(f"unknown model.vamp_init {m.vamp_init!r}; choices: {', '.join(INITS)} (the pseudo-inputs "
                         "start at N(0.05, 0.01) pixels, or at training images)")
    if name == "vamp" and m.get("num_classes", 0):
        raise ValueError(f"model.prior='vamp' learns unlabelled pseudo-inputs; a class-conditional VAE (model."
                         f"num_classes={m.num_classes}) would need a label for each: set --config.model.num_classes=0 "
                         "or --config.model.prior=normal")


def _warn_vae_combinations(config) -> None:
    """Logs settings that run but whose reported numbers mean less than their names say."""
    o, binarize = config.objective, config.data.binarize
    if o.likelihood == "bernoulli" and binarize == "none":
        log.warning("objective.likelihood='bernoulli' with data.binarize='none': on grey values the Bernoulli is "
                    "not a normalised density, so the NLL and bits/dim are not those of any pixel distribution "
                    "(binarize 'dynamic', or likelihood 'discretized_logistic' or 'gaussian' for grey values)")
    if o.likelihood in ("gaussian", "discretized_logistic") and binarize == "dynamic":
        log.warning("objective.likelihood=%r with data.binarize='dynamic': the bits/dim assume 8-bit pixels, these "
                    "are binary (set data.binarize=none, or likelihood 'bernoulli')", o.likelihood)
    if o.likelihood == "gaussian" and o.gaussian_sigma < 1 / (255 * math.sqrt(2 * math.pi)):
        log.warning("objective.gaussian_sigma=%g < 1/(255 sqrt(2 pi)): the Gaussian density of x/255 exceeds 1 per "
                    "8-bit bin, so the reported bits/dim can be negative", o.gaussian_sigma)
