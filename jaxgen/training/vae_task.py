"""The VAE task: what jaxgen.training.loop needs to train and evaluate a VAE config."""

from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import config as config_lib
from jaxgen import config_check, data, models, objectives, parallel, registry
from jaxgen import data as data_lib  # `data` is also evaluate's argument
from jaxgen.evaluation import disentanglement, latent_mixture, quality, sampling
from jaxgen.evaluation import vae as vae_eval
from jaxgen.models import prior
from jaxgen.models import vae as vae_models
from jaxgen.objectives import vae as vae_obj
from jaxgen.reporting import images, plots
from jaxgen.training import optim, vae_step
from jaxgen.training import state as state_lib

log = logging.getLogger("jaxgen")


class VAETask:
    """Built once from a VAE config: data, model, optimizer, mesh; compiles the train and eval functions."""

    headline = ("loss",)  # metrics on the progress bar
    not_final = ("nll", "nll_bits_per_dim")  # the final eval's NLL uses eval.final_nll_k samples, not eval.nll_k
    lazy_metrics = ()  # every step reports all its metrics

    def __init__(self, config, workdir, training: bool = True, image_shape: tuple[int, int, int] | None = None):
        """training=False: --mode=eval/sample. image_shape (--mode=sample, from the workdir's data.json): the
        dataset is not read (train, validation and test are None)."""
        config_check.check(config, training=training)
        self.config, self.workdir = config, workdir
        self.num_classes = int(config.model.get("num_classes", 0))  # > 0: a class-conditional VAE
        self._mixture, self.mixture_record = None, None  # latent_mixture's cache: ((step, weights), mixture), record
        # The train split's arrays on the devices (the labels too where the step conditions on them).
        self.train_fields = ("image", "label") if self.num_classes else ("image",)
        self.mesh = parallel.make_mesh()
        # Outside training (--mode=eval/sample, maybe on another device count) train.batch_size is not used.
        parallel.check_batches(self.mesh, {"train.batch_size": config.train.batch_size if training else 0,
                                           "eval.batch_size": config.eval.batch_size})
        # The objective is training's alone: --mode=eval/sample score the model as every VAE's, so an objective of
        # the user's need not be importable there (a PYTHONPATH the training command had).
        self.objective = objectives.get(config.objective.name) if training else None
        vae_obj.likelihood(config.objective)  # an unknown likelihood fails here, before any work
        registry.resolve("model", config.model.name, models.MODELS)  # as an unknown model, before the data loads
        self.tx, self.lr = optim.make(config.optim, config.train.steps)
        if image_shape is None:
            quality.check_ready(config)  # the Inception weights, before the data loads
            self.train, self.validation, self.test = data.load_splits(config.data)
            self.image_shape, images = self.train.shape, self.train.image
            if self.num_classes:
                data.check_class_labels(self.num_classes, self.train, self.validation, self.test, model="VAE",
                                        untrained="its decoder learns nothing for them")
        else:  # a placeholder for output_bias='data_mean' and vamp_init='data': the restored params replace it
            self.train = self.validation = self.test = None
            rows = config.model.vamp_components if config.model.get("prior", "normal") == "vamp" else 1
            self.image_shape, images = tuple(image_shape), np.full((rows, *image_shape), 128, np.uint8)
            if latent_mixture.uses_mixture(config):  # the train split alone, which the mixture is fit to
                self.train = _train_for_mixture(config)
        if latent_mixture.uses_mixture(config):
            latent_mixture.check_ready(config.sample, len(self.train))  # before any training, not at the first fit
        if training and self.train is not None and len(self.train) < config.train.batch_size:
            raise ValueError(f"train split has {len(self.train)} examples, fewer than train.batch_size="
                             f"{config.train.batch_size}; lower the batch size"
                             + parallel.at_most(len(self.train), self.mesh.size))
        if config.data.binarize == "dynamic" and self.image_shape[-1] == 3:
            log.warning("data.binarize='dynamic' on colour images binarizes each channel of %s; for colour data set "
                        "--config.data.binarize=none --config.objective.likelihood=discretized_logistic",
                        config.data.name)
        self.model = models.build(config.model, self.image_shape, train_images=images,
                                  likelihood=config.objective.likelihood)
        # Jitted once here: the shapes below, the restore's target and a fresh state all come from one trace of it.
        self.create = jax.jit(functools.partial(state_lib.create, self.model, self.tx, self.image_shape, config.seed,
                                                config.train.ema_half_life > 0),
                              out_shardings=parallel.replicated(self.mesh))
        params, x = jax.eval_shape(self.create)["params"], jax.ShapeDtypeStruct((2, *self.image_shape), jnp.float32)
        # A model, likelihood or objective of the user's that breaks its contract fails here, naming it (a
        # class-conditional model with labels bound, as the step binds them).
        probe = vae_models.bind_labels(self.model, jnp.zeros((2,), jnp.int32))
        vae_obj.check_model(probe, params, x, cfg=config.objective)
        if config.data.name in data_lib.FACTORS and not self.scores_mig:
            log.warning("%s has known factors, but MIG compares the two latents most informative of each: with "
                        "model.latent_dim=%d the evaluations leave it out (--config.model.latent_dim=2 or more)",
                        config.data.name, self.model.latent_dim)
        if not training:
            return
        read = objectives.check_objective(
            self.objective, config.objective.name, params, x,
            jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 2)), model=probe, cfg=config.objective)
        if config.objective.name not in objectives.OBJECTIVES:
            _warn_unread(config, read)
            log.info("The evaluation scores %s's models as every VAE's: encode as a diagonal-Gaussian posterior, the "
                     "model's prior (model.prior=%r) and objective.likelihood=%r (README, Objectives)",
                     config.objective.name, config.model.get("prior", "normal"), config.objective.likelihood)

    def describe(self) -> str:
        held = f"validation {len(self.validation)} images; " if self.validation is not None else ""
        flip = " (mirrored at random)" if self.config.data.random_flip else ""
        return (f"train {self.config.data.name} {self.train.shape}, {len(self.train)} images{flip}; {held}"
                f"test {len(self.test)} images")

    def compile_train(self):
        c = self.config
        return vae_step.compile_train(
            self.mesh, steps_per_dispatch=c.train.steps_per_dispatch, model=self.model, tx=self.tx,
            objective=self.objective, obj_cfg=c.objective, lr_schedule=self.lr, batch=c.train.batch_size,
            binarize=c.data.binarize, ema_half_life=c.train.ema_half_life, ema_rampup=c.train.ema_rampup,
            random_flip=c.data.random_flip)

    @functools.cached_property
    def eval_fn(self):
        c = self.config
        return vae_eval.compile_eval(self.mesh, model=self.model, obj_cfg=c.objective, binarize=c.data.binarize,
                                     nll_chunk=self.nll_chunk)

    @property
    def nll_chunk(self) -> int:
        """eval.nll_chunk, at most the larger NLL sample count: a chunk's draws past k are decoded and masked (the
        NLL is the same for any chunk)."""
        c = self.config.eval
        return max(1, min(c.nll_chunk, max(c.nll_k, c.final_nll_k)))

    def evaluate(self, state, final: bool, data) -> dict:
        """ELBO, NLL (eval.final_nll_k importance samples at the end, eval.nll_k before) and reconstruction on the
        first eval.num_examples images of `data` (all with 0); on a dataset with known factors, MIG on all of `data`
        and, at the end, the FactorVAE metric."""
        c = self.config
        if final:  # the final images' mixture, fit now so that eval.json records it (`eval_record`)
            self.latent_mixture(state)
        key = state_lib.eval_key(c.seed, state_lib.EVAL_NOISE)
        images = data.image[: c.eval.num_examples or len(data)]
        ev = vae_eval.evaluate(self.eval_fn, state_lib.eval_params(state), images, mesh=self.mesh,
                               key=key, binarize_key=vae_eval.binarize_key(c.eval.binarize_seed),
                               batch_size=c.eval.batch_size,
                               nll_k=c.eval.final_nll_k if final else c.eval.nll_k, nll_chunk=self.nll_chunk,
                               likelihood=c.objective.likelihood, progress=bool(c.output.progress),
                               labels=data.label[: len(images)])
        if self.scores_mig:
            ev.update(self.disentanglement(state, data))
            if final and c.eval.factor_vae_votes:
                factor_vae = self.factor_vae(state)
                ev["factor_vae_score"] = factor_vae.pop("factor_vae_score")
                ev["disentanglement"].update(factor_vae)
        return ev

    def factor_vae(self, state) -> dict:
        """The FactorVAE metric (jaxgen.evaluation.disentanglement.factor_vae_score) of the evaluated weights on
        eval.factor_vae_votes batches the dataset draws with one factor fixed (a class-conditional model's: never the
        label's factor, which it reads), from the run's seed."""
        c, known = self.config, data_lib.FACTORS[self.config.data.name]
        params = jax.device_get(state_lib.eval_params(state))
        label = known.names.index(known.label)

        def encode(images, factors):
            return self._encode(params, images, np.arange(len(images)), factors[:, label].astype(np.int32))

        kept = tuple(i for i in range(len(known.names)) if not (self.num_classes and i == label))
        return disentanglement.factor_vae_score(encode, known.sizes, known.render, seed=c.seed,
                                                votes=c.eval.factor_vae_votes, factors=kept,
                                                variance_images=min(10_000, 64 * c.eval.factor_vae_votes))

    @property
    def scores_mig(self) -> bool:
        """Whether evaluations add MIG: a dataset with known factors (data.FACTORS) and at least 2 latents."""
        return self.config.data.name in data_lib.FACTORS and self.model.latent_dim >= 2

    def disentanglement(self, state, split) -> dict:
        """MIG (jaxgen.evaluation.disentanglement) of the posterior means of the whole evaluated `split` (an
        ImageData: the test split, or during training the validation split when one is held out) against its images'
        known factors (data.FACTORS); a class-conditional model's without the factor its labels give. Computed on each
        process alike, from host copies."""
        c = self.config
        names, label = data_lib.FACTORS[c.data.name].names, data_lib.FACTORS[c.data.name].label
        factors = data_lib.split_factors(c.data, split.split)
        if len(factors) != len(split):
            raise ValueError(f"dataset {c.data.name!r}: {len(factors)} factors for the {len(split)} images of its "
                             f"{split.split!r} split")
        if self.num_classes:  # its labels give that factor to the model
            keep = [i for i, name in enumerate(names) if name != label]
            factors, names = factors[:, keep], tuple(names[i] for i in keep)
        codes = self._encode(state_lib.eval_params(state), split.image, np.arange(len(split)), split.label)
        out = disentanglement.mig(codes, factors, names)
        left = f" (not {label}: the labels condition the model on it)" if self.num_classes else ""
        return {"mig": out.pop("mig"), "disentanglement": {
            "metric": f"MIG as disentanglement_lib estimates it (Chen et al. 2018's gap; Locatello et al. 2019's "
                      f"estimator): per factor{left}, the gap between the two latents' mutual information with it "
                      f"over its entropy, from {len(split)} {split.split} images' posterior means in "
                      f"{disentanglement.BINS} equal-width bins each", **out}}

    def samples(self, state, n: int, truncation: float = 0.0, classes: tuple[int, ...] = ()) -> np.ndarray:
        """n samples (uint8 [n, H, W, C]): the likelihood's mean at z ~ N(0, I) from a fixed stream of latents (with
        sample.latents='gmm', from `latent_mixture(state)`), rounded to 0..255 as a PNG writer would. Made data-parallel
        in batches of eval.batch_size (which, like the device count, does not change them); every process gets them all.
        A class-conditional VAE's sample j is of class j % model.num_classes (`sample_labels`), or with `classes` of
        class classes[j % len(classes)]."""
        return self._sampler(state_lib.eval_params(state), n, self.config.eval.batch_size, truncation, classes,
                             self.latent_mixture(state))

    def latent_mixture(self, state) -> dict | None:
        """sample.latents='gmm': the Gaussian mixture (`latent_mixture.fit`) of the posterior means of
        sample.gmm_examples training images (a fixed random choice of the train split's, all with 0), fit once per
        checkpoint and weights (EMA or raw) on process 0 and sent to the others (so every process calls this).
        With sample.latents='prior': model.prior='vamp''s prior as a mixture (`prior.as_mixture`), else None
        (N(0, I))."""
        c = self.config
        if not latent_mixture.uses_mixture(c):
            if vae_obj.has_own_prior(self.model):  # the VampPrior: its pseudo-inputs' posteriors, equally weighted
                mu, logvar = self.model.apply(jax.device_get(state_lib.eval_params(state)), method="prior_components")
                return jax.tree.map(np.asarray, prior.as_mixture(mu, logvar))
            return None
        params = state_lib.eval_params(state)
        which = (int(jax.device_get(state["step"])), self.eval_record(state)["params"])
        first = jax.tree.leaves(params)[0]  # kept: the same step and kind of another state's weights refits
        if self._mixture is not None and self._mixture[0] == which and self._mixture[2] is first:
            return self._mixture[1]
        k, d = c.sample.gmm_components, self.model.latent_dim

        def fit():
            n = min(c.sample.gmm_examples or len(self.train), len(self.train))
            rows = np.sort(np.random.default_rng(0).permutation(len(self.train))[:n])
            codes = self._encode(params, self.train.image[rows], rows, self.train.label[rows])
            mixture, record = latent_mixture.fit(codes, k, c.seed)
            log.info("sample.latents='gmm': a %d-component Gaussian mixture fit to the posterior means of %d "
                     "training images at step %d (%s weights): mean log-density %.2f per code (under N(0, I): "
                     "%.2f)", k, n, which[0], which[1], record["log_likelihood_per_code"],
                     record["prior_log_likelihood_per_code"])
            return mixture, record

        # Process 0 fits; its failure (a diverged model's codes) stops the others, which would wait in the broadcast.
        result, error = parallel.attempt(fit) if jax.process_index() == 0 else ((None, None), None)
        parallel.stop_if_any_failed(error, "fit the latent mixture (sample.latents='gmm')")
        mixture, record = result
        mixture = latent_mixture.broadcast(mixture, (k, d))
        self._mixture, self.mixture_record = (which, mixture, first), record
        return mixture

    def _encode(self, params, images: np.ndarray, pos: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The posterior means [N, latent_dim] of uint8 images [N, ...] as the evaluation sees them (binarized by
        their positions `pos` [N], its fixed draw), given their `labels` [N] when class-conditional, in batches of
        500 on this process's device (host copies: no collective)."""
        params, bkey = jax.device_get(params), vae_eval.binarize_key(self.config.eval.binarize_seed)
        codes = []
        for lo in range(0, len(images), 500):
            part = slice(lo, lo + 500)
            x = vae_eval.eval_inputs(images[part], pos[part], bkey, self.config.data.binarize)
            codes.append(np.asarray(vae_eval.encode_mean(params, x, labels[part] if self.num_classes else None,
                                                         model=self.model)))
        return np.concatenate(codes)

    def sample_labels(self, n: int, classes: tuple[int, ...] = ()) -> np.ndarray | None:
        """The classes of `samples(state, n, classes=classes)` (int32 [n]) for a class-conditional VAE; None
        when unconditional."""
        return sampling.sample_labels(n, self.num_classes, classes)

    @functools.cached_property
    def _sampler(self):
        c = self.config
        key = state_lib.eval_key(c.seed, state_lib.SAMPLER)
        decode = functools.partial(vae_eval.sample_images, model=self.model, likelihood=c.objective.likelihood)
        return sampling.make_sampler(decode, self.mesh, key=key, dim=self.model.latent_dim, value_range=(0.0, 1.0),
                                     num_classes=self.num_classes)

    def lr_line(self, step: int) -> str:
        """The learning rate the schedule gives the update from `step`, for the log."""
        return f"lr {float(self.lr(step)):.3g}"

    def eval_line(self, ev: dict) -> str:
        mig = f" mig {ev['mig']:.3f}" if "mig" in ev else ""
        mig += f" factorvae {ev['factor_vae_score']:.3f}" if "factor_vae_score" in ev else ""
        return f"elbo {ev['elbo']:.2f} nll(k={ev['nll_k']}) {ev['nll']:.2f}{mig}"

    def eval_record(self, state) -> dict:
        """What stands beside the numbers in eval.json."""
        nats = "nats per image"
        latents = {"latents": self.config.sample.get("latents", "prior"), "prior": self._prior_name()}
        if vae_obj.has_own_prior(self.model):
            latents["kl_estimator"] = ("log q(z|x) - log p(z) at the z of rec_nll, one per image: the VampPrior's KL "
                                       "has no closed form (the test ELBO is a one-sample estimate)")
        if self._mixture is not None and self.mixture_record is not None:  # the fit these samples came from
            latents["latent_gmm"] = {**self.mixture_record, "step": self._mixture[0][0], "params": self._mixture[0][1]}
        return {"dataset": self.config.data.name, "split": self.config.data.test_split,
                "params": "ema" if "ema_params" in state else "raw", **latents,
                "nll_estimator": "the IWAE bound with nll_k importance samples from the encoder: an upper bound on "
                                 "-log p(x) in expectation, tightening as nll_k grows",
                "units": {"elbo": nats, "kl": nats, "rec_nll": nats, "recon_nll_at_mean": nats, "nll": nats,
                          "nll_bits_per_dim": "bits per dimension, H * W * C of them (see the README)",
                          "recon_mse": "squared error per pixel against x / 255 in [0, 1]"}}

    def _prior_name(self) -> str:
        m = self.config.model
        return (f"vamp ({m.vamp_components} pseudo-inputs)" if m.get("prior", "normal") == "vamp"
                else "normal (N(0, I))")

    def summary(self, final: dict) -> str:
        return (f"final test ELBO {final['elbo']:.2f}, NLL(k={self.config.eval.final_nll_k}) {final['nll']:.2f} "
                f"nats ({final['nll_bits_per_dim']:.4f} bits/dim) on {final['num_examples']} images")

    def save_images(self, state, suffix: str = "") -> None:
        """Samples, reconstructions (and at the end the latent plots) into <workdir>/images."""
        mixture = self.latent_mixture(state)  # before process 0 goes on alone: the others take part in its fit
        if jax.process_index() != 0:
            return
        # A host copy: what follows runs on this process's own device. A compiled call on the replicated state
        # would be a program over every process's devices, which process 0 must not run alone.
        c, params = self.config, jax.device_get(state_lib.eval_params(state))
        out = self.workdir / "images"
        out.mkdir(exist_ok=True)
        lik = c.objective.likelihood
        key = state_lib.eval_key(c.seed, state_lib.FIXED_NOISE)  # the same z at every eval
        n = c.output.num_samples
        # A class-conditional VAE's grid: one class per column (sample j is of class j % num_classes).
        z = (jax.random.normal(key, (n, self.model.latent_dim)) if mixture is None
             else sampling.stream_latents(key, jnp.arange(n), self.model.latent_dim, mixture=mixture))
        images.save_png(out / f"samples{suffix}.png",
                        np.asarray(vae_eval.sample_images(params, z, self.sample_labels(n), model=self.model,
                                                          likelihood=lik)),
                        ncol=images.class_columns(self.num_classes))
        bkey = vae_eval.binarize_key(c.eval.binarize_seed)

        def inputs(lo, hi):  # what the model sees at evaluation: the test set's fixed binarization
            return np.asarray(vae_eval.eval_inputs(self.test.image[lo:hi], np.arange(lo, hi), bkey, c.data.binarize))

        def labels(lo, hi):  # their classes, which a class-conditional model reads
            return self.test.label[lo:hi] if self.num_classes else None

        x = inputs(0, min(n, 32, len(self.test)))
        rec = np.asarray(vae_eval.reconstruct(params, x, labels(0, len(x)), model=self.model, likelihood=lik))
        images.save_png(out / f"reconstructions{suffix}.png", np.concatenate([x, rec]), ncol=len(x))
        if suffix or not c.output.plots:
            return
        m = min(len(self.test), 2000)
        mu = np.concatenate([np.asarray(vae_eval.encode_mean(params, inputs(i, min(i + 500, m)),
                                                             labels(i, min(i + 500, m)), model=self.model))
                             for i in range(0, m, 500)])
        plots.latent_scatter(mu, self.test.label[:m], self.workdir / "latent_scatter.png")
        dims = vae_eval.most_active(mu, min(self.model.latent_dim, 10))
        label = int(self.test.label[0]) if self.num_classes else None  # a conditional model keeps image 0's class
        trav = vae_eval.traversal(params, mu[0], label, model=self.model, likelihood=lik, dims=dims, steps=9)
        images.save_png(self.workdir / "latent_traversal.png", np.asarray(trav), ncol=9)
        plots.loss_curves(self.workdir / "metrics.jsonl", self.workdir / "loss_curves.png")


def _warn_unread(config, read: set[str]) -> None:
    """Warns about the built-in objectives' fields (objectives.BUILTIN_FIELDS) set away from their defaults that the
    user's objective did not read when traced: `--config.objective.beta=4` with an objective of one's own that has
    no beta does nothing, and config_check cannot tell (a user's function may read any field of its block)."""
    base = config_lib.vae_config().objective
    unread = [f"objective.{f}={config.objective[f]!r} (read by the built-in {objectives.BUILTIN_FIELDS[f]})"
              for f in objectives.BUILTIN_FIELDS
              if f in config.objective and config.objective[f] != base[f] and f not in read]
    # A field the config file added for the objective that the objective never reads: most likely a misspelt name
    # (`c.objective.free_bit` for `free_bits`), which would leave the objective on its own default. Unless a
    # likelihood or an extractor of the user's, which get the block (or the whole config) too, may read it.
    others = ":" in str(config.objective.likelihood) or any(":" in str(e) for e in config.eval.extractors)
    unread += [f"objective.{f}={config.objective[f]!r} (added by the config file: a misspelt name?)"
               for f in config.objective if f not in base and f not in read and not others]
    if unread:
        log.warning("These settings do nothing in this run: %s. Your objective %s did not read %s when traced "
                    "before training", "; ".join(unread), config.objective.name, "it" if len(unread) == 1 else "them")


def _train_for_mixture(config):
    """The train split alone, for sample.latents='gmm' in a command that reads no other data (--mode=sample,
    trained.load); a dataset it cannot read is an error that says why the split is read."""
    try:
        return data.load_train(config.data)[0]
    except Exception:
        log.error("sample.latents='gmm' fits its mixture to the train split's posterior means, so this command reads "
                  "that split (below, why it could not); --config.sample.latents=prior samples without the data")
        raise
