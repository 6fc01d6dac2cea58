"""The GAN task: what jaxgen.training.loop needs to train and evaluate a GAN config."""

from __future__ import annotations

import functools
import logging

import jax
import numpy as np

from jaxgen import config as config_lib
from jaxgen import config_check, data, parallel, registry
from jaxgen.data import augment
from jaxgen.evaluation import gan as gan_eval
from jaxgen.evaluation import quality, sampling
from jaxgen.models import gan as gan_models
from jaxgen.objectives import gan as gan_obj
from jaxgen.reporting import images, plots
from jaxgen.training import gan_step, optim
from jaxgen.training import state as state_lib

log = logging.getLogger("jaxgen")

HISTORY_COLUMNS = 8  # fixed-noise samples per row of samples_over_time.png


class GANTask:
    """Built once from a GAN config: data, G and D, their optimizers, the loss and regularizer, the mesh."""

    headline = ("d_loss", "g_loss")
    not_final = ()  # every eval metric is measured the same way at the final eval

    def __init__(self, config, workdir, training: bool = True, image_shape: tuple[int, int, int] | None = None):
        """training=False: --mode=eval/sample. image_shape (--mode=sample, from the workdir's data.json): the
        dataset is not read (train, validation and test are None)."""
        config_check.check(config, training=training)
        c = config
        self.config, self.workdir = c, workdir
        self.mesh = parallel.make_mesh()
        self.num_classes = gan_models.num_classes(c.model)  # 0: unconditional
        a = c.augment
        self.ada = (a.ada_target, a.ada_interval, a.ada_kimg) if a.get("ada_target", 0.0) > 0 else None
        r = c.reg
        self.lecam = (r.lecam_weight, r.lecam_decay) if r.get("lecam_weight", 0.0) > 0 else None
        lo = c.loss
        self.topk = (lo.topk_gamma, lo.topk_nu) if lo.get("topk_nu", 0.0) > 0 else None  # top-k training
        # ACGAN's auxiliary classifier terms, with an auxiliary-classifier D
        self.ac_weight = float(lo.ac_weight) if c.model.get("d_conditioning", "projection") == "ac" else 0.0
        self.train_fields = ("image", "label") if self.num_classes else ("image",)  # on the devices for the step
        self.g_batch = config_lib.g_batch_size(c)
        # Outside training (--mode=eval/sample) train.batch_size sizes only the passes that re-estimate the EMA
        # generator's statistics (sampling_g), checked once the state's shapes show them (below).
        parallel.check_batches(self.mesh, {"train.batch_size": c.train.batch_size if training else 0,
                                           "eval.batch_size": c.eval.batch_size,
                                           "train.g_batch_size": self.g_batch if training else 0})
        # The loss, the regularizer and the augmentations are training's alone: --mode=eval/sample neither resolve
        # nor check them, so functions of the user's there need not be importable (a PYTHONPATH training had).
        self.loss_fn = self.reg_fn = None
        if training:
            self.loss_fn = gan_obj.get_loss(c.loss.name, c.loss)
            self.reg_fn = gan_obj.get_regularizer(c.reg.name, c.reg)
            gan_obj.check_loss(self.loss_fn, c.loss.name, batch=c.train.batch_size, g_batch=self.g_batch)
            augment.check_policy(c.augment.policy)
            if c.reg.name in config_check.CONSISTENCY:
                if c.reg.cr_policy.strip().lower() in ("", "none", "off"):
                    raise ValueError(f"reg.name={c.reg.name} compares D's outputs on images and on augmentations of "
                                     f"them, and reg.cr_policy={c.reg.cr_policy!r} has none: set some, e.g. "
                                     f"--config.reg.cr_policy={gan_obj.CR_POLICY}")
                augment.check_policy(c.reg.cr_policy, field="reg.cr_policy")
        registry.resolve("GAN model", c.model.name, gan_models.GANS)  # unknown names fail before the data loads
        if c.data.name in data.READ_BY["resolution"] and c.data.resolution > 0:  # so does a resolution G and D lack,
            gan_models.build(c.model, (c.data.resolution,) * 2 + (3,), axis_name=parallel.AXIS)  # before decoding
        self.g_tx, self.g_lr = optim.make(c.g_optim, c.train.steps)
        self.d_tx, self.d_lr = optim.make(c.d_optim, c.train.steps * c.train.d_steps)
        if image_shape is None:
            quality.check_ready(c)  # the Inception weights, before a large image folder is decoded
            self.train, self.validation, self.test = data.load_splits(c.data)
            self.image_shape = self.train.shape
            self._check_sizes(training)
            self._check_labels()
        else:
            self.train = self.validation = self.test = None
            self.image_shape = tuple(image_shape)
        # The penalty through the augmentation: an input gradient's (the consistency regularizers take none)
        self.reg_through_augment = bool(c.reg.through_augment and c.augment.policy
                                        and c.reg.name not in config_check.CONSISTENCY)
        reg_names = gan_obj.check_regularizer(self.reg_fn, c.reg.name, self.image_shape,
                                              batch=max(1, c.train.batch_size // self.mesh.size),  # per device
                                              through_augment=self.reg_through_augment,
                                              conditional=bool(self.num_classes))
        # A lazy regularizer's metrics: averaged over the D updates that ran it (gan_step, _train_record).
        self.lazy_metrics = ("reg", *reg_names) if self.reg_fn is not None and c.reg.interval > 1 else ()
        self.generator, self.discriminator = gan_models.build(c.model, self.image_shape, axis_name=parallel.AXIS)
        # (training only: reg_fn is None otherwise; the consistency regularizers take no input gradient)
        if self.reg_fn is not None and c.model.d_norm == "batch" and c.reg.name not in config_check.CONSISTENCY:
            log.warning("reg.name=%s with BatchNorm in D (model.d_norm='batch'): the penalty's per-example input "
                        "gradients are coupled through the batch statistics; Gulrajani et al. (2017) advise a "
                        "critic without BatchNorm (--config.model.d_norm=none)", c.reg.name)
        # Jitted once here: the shapes below, the restore's target and a fresh state all come from one trace of it.
        self.create = jax.jit(functools.partial(state_lib.create_gan, self.generator, self.discriminator, self.g_tx,
                                                self.d_tx, self.image_shape, c.seed, c.train.ema_half_life > 0,
                                                self.num_classes, self.ada is not None, self.lecam is not None),
                              out_shardings=parallel.replicated(self.mesh))
        shapes = jax.eval_shape(self.create)
        gan_models.check_pair(c.model.name, self.generator, self.discriminator, shapes["g"], shapes["d"],
                              self.image_shape, self.num_classes)
        if not training and "ema_g" in shapes and "batch_stats" in shapes["g"]:  # BatchNorm, spectral norm's vectors
            try:
                parallel.check_batch(c.train.batch_size, self.mesh)
            except ValueError as e:
                raise ValueError(f"{e}; the EMA generator's BatchNorm statistics are estimated again before it "
                                 f"samples, in {gan_eval.STANDING_PASSES} passes of train.batch_size fakes split over "
                                 "the devices (the run's batch size, or close to it)") from None

    def _check_sizes(self, training: bool) -> None:
        """Every size the data cannot fill, at once (a small image folder may need several changes)."""
        c, problems = self.config, []
        if training and len(self.train) < c.train.batch_size:
            problems.append(f"train split has {len(self.train)} examples, fewer than train.batch_size="
                            f"{c.train.batch_size}; lower the batch size"
                            + parallel.at_most(len(self.train), self.mesh.size))
        for split in (self.test, self.validation) if self.validation is not None else (self.test,):
            try:
                self._eval_count(split)  # before any training: evaluation needs one full batch of images
            except ValueError as e:
                problems.append(str(e))
        if problems:
            raise ValueError("; and ".join(problems))

    def _check_labels(self) -> None:
        """A class-conditional run's labels (data.check_class_labels)."""
        if self.num_classes:
            data.check_class_labels(self.num_classes, self.train, self.validation, self.test, model="GAN",
                                    untrained="G learns nothing for them")

    def _topk_how(self) -> str:
        return f" (top-k: nu {self.topk[1]}, gamma {self.topk[0]})" if self.topk else ""

    def describe(self) -> str:
        c = self.config
        fresh = f" on {self.g_batch} fresh fakes" if self.g_batch else ""
        held = f"validation {len(self.validation)} images; " if self.validation is not None else ""
        return (f"train {c.data.name} {self.train.shape}, {len(self.train)} images; {held}{c.model.name} GAN, "
                f"loss {c.loss.name}{self._topk_how()}, reg {c.reg.name}"
                f"{f' + LeCam {self.lecam[0]}' if self.lecam else ''}, "
                f"{c.train.d_steps} D step(s) per G step{fresh}, "
                f"augment {c.augment.policy or 'off'}{self._augment_how()}"
                f"{', reals mirrored at random' if c.data.random_flip else ''}, "
                + (f"class-conditional on {self.num_classes} classes, " if self.num_classes else "")
                + f"compute {c.model.dtype}" + ("" if c.model.name in gan_models.GANS else
                                              " (model.dtype, which your model function may or may not use)"))

    def _augment_how(self) -> str:
        """' (adaptive, target 0.6)' or ' (probability 0.5)' after the policy, for the log's description."""
        a = self.config.augment
        if not a.policy:
            return ""
        if self.ada:
            return f" (adaptive probability, target {a.ada_target})"
        return f" (probability {a.probability})" if a.probability < 1 else ""

    def compile_train(self):
        c = self.config
        return gan_step.compile_train(
            self.mesh, steps_per_dispatch=c.train.steps_per_dispatch, generator=self.generator,
            discriminator=self.discriminator, g_tx=self.g_tx, d_tx=self.d_tx, loss_fn=self.loss_fn,
            reg_fn=self.reg_fn, reg_weight=c.reg.weight, reg_interval=c.reg.interval, d_steps=c.train.d_steps,
            batch=c.train.batch_size, augment_policy=c.augment.policy,
            ema_half_life=c.train.ema_half_life, ema_rampup=c.train.ema_rampup, g_lr=self.g_lr,
            d_lr=self.d_lr, g_batch=self.g_batch, random_flip=c.data.random_flip,
            reg_through_augment=self.reg_through_augment, lazy_metrics=self.lazy_metrics, num_classes=self.num_classes,
            augment_probability=c.augment.probability, ada=self.ada, lecam=self.lecam, topk=self.topk,
            ac_weight=self.ac_weight)

    def sampling_g(self, state) -> dict:
        """G's variables to sample and evaluate with: the EMA weights when kept, with their BatchNorm statistics
        re-estimated (gan_eval.standing_statistics: the running averages in the state were gathered with the raw
        weights). Cached per step."""
        g = state_lib.eval_params(state)
        if "ema_g" not in state or "batch_stats" not in g:
            return g
        step = int(jax.device_get(state["step"]))
        if getattr(self, "_sampling_cache", (None,))[0] == step:
            return self._sampling_cache[1]
        g = gan_eval.standing_statistics(  # the same latents at every step and on every process
            self._refresh, g, self._eval_key(state_lib.STANDING), batch_size=self.config.train.batch_size,
            latent_dim=self.generator.latent_dim, mesh=self.mesh, num_classes=self.num_classes)
        self._sampling_cache = (step, g)
        return g

    @functools.cached_property
    def _refresh(self):
        return gan_eval.compile_refresh(self.mesh, self.generator, conditional=bool(self.num_classes))

    def _eval_key(self, stream: int) -> jax.Array:
        """The key of one of the evaluation's fixed streams of latents (a function of the seed only)."""
        return state_lib.eval_key(self.config.seed, stream)

    def _z(self, n: int, stream: int) -> jax.Array:
        """A fixed batch of latents: the same at every evaluation of a run."""
        return jax.random.normal(self._eval_key(stream), (n, self.generator.latent_dim))

    @functools.cached_property
    def _generate(self):
        return jax.jit(self._g_eval)

    def _g_eval(self, g: dict, z: jax.Array, labels=None) -> jax.Array:
        return gan_eval.generate(self.generator, g, z, labels)

    @functools.cached_property
    def _scores(self):
        return gan_eval.compile_scores(self.mesh, generator=self.generator, discriminator=self.discriminator,
                                       conditional=bool(self.num_classes))

    def _eval_count(self, split) -> int:
        c = self.config
        return gan_eval.eval_count(split, num_examples=c.eval.num_examples, batch_size=c.eval.batch_size,
                                   mesh=self.mesh, image_folder=c.data.name == "image_folder")

    def evaluate(self, state, final: bool, data) -> dict:
        """D's mean output on the first eval.num_examples images of `data` (all with 0) and on as many samples of
        the evaluated G (EMA when kept), in whole batches of eval.batch_size (gan_eval.d_outputs)."""
        del final
        n = self._eval_count(data)
        zs = np.asarray(self._z(n, state_lib.SCORES))  # the same latents at every evaluation, whatever the batch size
        return gan_eval.d_outputs(self._scores, self.sampling_g(state), state["d"], data.image[:n], zs,
                                  batch_size=self.config.eval.batch_size, mesh=self.mesh,
                                  labels=data.label[:n] if self.num_classes else None)

    def samples(self, state, n: int, truncation: float = 0.0, classes: tuple[int, ...] = ()) -> np.ndarray:
        """n samples (uint8 [n, H, W, C]) of the evaluated G (EMA when kept), from a fixed stream of latents: the
        same latents at every evaluation. Made data-parallel in batches of eval.batch_size (which, like the device
        count, does not change them); every process gets them all. A class-conditional G's sample j is of class
        j % model.num_classes (`sample_labels`), or with `classes` (sample.classes) of class classes[j %
        len(classes)]. truncation > 0: the latents truncated (sampling.stream_latents)."""
        return self._sampler(self.sampling_g(state), n, self.config.eval.batch_size, truncation, classes)

    def sample_labels(self, n: int, classes: tuple[int, ...] = ()) -> np.ndarray | None:
        """The classes of `samples(state, n, classes=classes)` (int32 [n]) for a class-conditional G; None when
        unconditional."""
        return sampling.sample_labels(n, self.num_classes, classes)

    @functools.cached_property
    def _sampler(self):
        key = self._eval_key(state_lib.SAMPLER)
        return sampling.make_sampler(self._g_eval, self.mesh, key=key, dim=self.generator.latent_dim,
                                    value_range=(-1.0, 1.0), num_classes=self.num_classes)

    def lr_line(self, step: int) -> str:
        """The learning rates the schedules give the updates from `step` (D's first of its train.d_steps), for the
        log."""
        return f"g_lr {float(self.g_lr(step)):.3g}, d_lr {float(self.d_lr(step * self.config.train.d_steps)):.3g}"

    def eval_line(self, ev: dict) -> str:
        return (f"D(x) {ev['d_real']:.3f}, D(G(z)) {ev['d_fake']:.3f} on {ev['num_examples']} real images and as "
                "many samples")

    def eval_record(self, state) -> dict:
        """What stands beside the numbers in eval.json; with adaptive augmentation, its probability at that step."""
        ada = {"augment_p": float(jax.device_get(state["ada"]["p"]))} if "ada" in state else {}
        return {"dataset": self.config.data.name, "split": self.config.data.test_split,
                "params": "ema" if "ema_g" in state else "raw", "units": "D outputs (logits or critic scores)", **ada}

    def summary(self, final: dict) -> str:
        return f"final {self.eval_line(final)}"

    def save_images(self, state, suffix: str = "") -> None:
        """Fixed-noise samples (every eval), and at the end interpolations, samples over time and the curves."""
        g = self.sampling_g(state)  # on every process: the standing-statistics passes run over the whole mesh
        if jax.process_index() != 0:
            return
        # A host copy: what follows runs on this process's own device. A compiled call on the replicated variables
        # would be a program over every process's devices, which process 0 must not run alone.
        c, g = self.config, jax.device_get(g)
        out = self.workdir / "images"
        out.mkdir(exist_ok=True)
        to01 = lambda x: (np.asarray(x, np.float32) + 1.0) / 2.0
        n = c.output.num_samples
        samples = to01(self._generate(g, self._z(n, state_lib.FIXED_NOISE), self.sample_labels(n)))
        # A class-conditional G's grid: one class per column (sample j is of class j % num_classes).
        images.save_png(out / f"samples{suffix}.png", samples, ncol=images.class_columns(self.num_classes))
        # The history's row: the first HISTORY_COLUMNS of the fixed noise whatever output.num_samples is (a prefix
        # of the same latents: jax.random's draws of a longer batch begin with those of a shorter one).
        history = samples[:HISTORY_COLUMNS] if len(samples) >= HISTORY_COLUMNS else to01(
            self._generate(g, self._z(HISTORY_COLUMNS, state_lib.FIXED_NOISE), self.sample_labels(HISTORY_COLUMNS)))
        images.append_history(out / "fixed_noise_history.npz", int(jax.device_get(state["step"])), history)
        if suffix or not c.output.plots:
            return
        z, labels = self._interpolation_z()
        images.save_png(self.workdir / "interpolations.png", to01(self._generate(g, z, labels)), ncol=10)
        images.save_history(out / "fixed_noise_history.npz", self.workdir / "samples_over_time.png")
        plots.gan_curves(self.workdir / "metrics.jsonl", self.workdir / "gan_curves.png")

    def _interpolation_z(self, pairs: int = 8, steps: int = 10):
        """Spherical interpolations between `pairs` pairs of latents, `steps` points each: ([pairs * steps, dim],
        their classes [pairs * steps] or None: a class-conditional G's path p keeps the class p % num_classes)."""
        z = gan_eval.slerp_paths(self._z(2 * pairs, state_lib.INTERPOLATION).reshape(pairs, 2, -1), steps)
        labels = self.sample_labels(pairs)
        return z, None if labels is None else np.repeat(labels, steps)
