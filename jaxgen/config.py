"""The base config every file in `configs/` extends, and the variants they share (their checks:
jaxgen/config_check.py).

Every field a run reads exists here with a default, so a typo in a config file or in `--config.<field>=value`
fails loudly (the ConfigDict is locked) instead of being silently ignored.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping

import ml_collections

log = logging.getLogger("jaxgen")


def base_config() -> ml_collections.ConfigDict:
    """The blocks every jaxgen run shares (seed, data, train, checkpoint, eval, output). `vae_config()` and
    `gan_config()` extend it with their model, objective and optimizer blocks; config files extend those."""
    c = ml_collections.ConfigDict()
    c.task = "vae"  # 'vae' or 'gan': which trainer runs the config
    c.seed = 0
    # GPUs: XLA's deterministic kernels and no autotuning (--xla_gpu_deterministic_ops), so that a run and its
    # resume repeat bit for bit; slower. CPU runs repeat without it (README, Reproducibility).
    c.deterministic = False

    c.data = ml_collections.ConfigDict()
    c.data.name = "mnist_5k"  # jaxgen.data.DATASETS, or 'package.module:function'
    c.data.data_dir = ""  # TFDS data dir and jaxgen's cache; '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.data.train_split = "train"
    c.data.test_split = "test"
    c.data.binarize = "dynamic"  # 'dynamic' (Bernoulli draw per step), 'none' (pixels in [0, 1])
    # Mirror (left-right) each training example with probability 1/2 at every step: the train split doubled by its
    # mirror images (StyleGAN's --mirror); the reals only, never the evaluation's images. For faces, not digits.
    c.data.random_flip = False
    c.data.num_examples = 0  # synthetic: examples per split; others: keep the first N (0 = all)
    # Hold out this many train examples (a fixed random choice, whatever the seed) as the validation split: the
    # evaluations during training and the best checkpoint use it, the final eval the test split. 0 = none: they
    # use the test split, and the best checkpoint's test numbers are an optimistic estimate.
    c.data.validation_examples = 0
    c.data.image_shape = (28, 28, 1)  # synthetic only
    c.data.download = True  # TFDS: download and prepare when missing
    c.data.path = ""  # image_folder: the folder of images (celeb_a: read instead of TFDS when set)
    c.data.resolution = 0  # image_folder, celeb_a: square side after crop and resize; 0 = keep the size (image_folder
    # with images of mixed sizes: the smallest side found)
    c.data.crop = 0  # centre crop (square side, source pixels) before the resize; 0 = the largest centred square
    c.data.test_percent = 0  # image_folder: % of files held out as 'test' (by a hash of the path); 0 = test is train

    c.train = ml_collections.ConfigDict()
    c.train.batch_size = 128  # global, over all devices of all hosts
    c.train.steps = 10_000
    c.train.steps_per_dispatch = 1  # >1 fuses that many steps into one compiled call (lax.scan)
    c.train.log_every = 100

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 1000  # steps; a checkpoint is also written at the end
    c.checkpoint.keep = 3
    c.checkpoint.asynchronous = True
    # Also keep the best checkpoint (in <workdir>/best) by an eval metric: 'auto' = the FID of the first of
    # eval.extractors (else 'swd/swd' with eval.swd, else none), '' = off, or a metric of every eval such as
    # 'classifier/fid' or 'nll' (jaxgen.evaluation.quality.TASK_METRICS and PER_EVAL; another name is refused before
    # any work).
    # VAEs default to 'elbo', GANs to 'auto'.
    c.checkpoint.best_metric = "auto"
    c.checkpoint.best_mode = "auto"  # 'auto' (lower FID/NLL, higher ELBO/IS ... is better), 'min' or 'max'

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 2000  # steps; 0 = only at the end
    c.eval.batch_size = 200
    c.eval.num_examples = 0  # examples per eval (of the validation split during training, if any); 0 = all
    # Sample quality (jaxgen.evaluation.quality): feature extractors, 'inception' (pytorch-fid's weights, see
    # README) and/or 'classifier' (trained on the dataset's labels, offline). FID (+ IS) at every eval; KID,
    # precision/recall and density/coverage too at the final eval and in --mode=eval.
    c.eval.extractors = ()
    # The sliced Wasserstein distance of the samples' Laplacian pyramids against the reference images (Karras et al.
    # 2018; jaxgen.evaluation.swd) at every sample-quality eval: no network, no labels, offline on any images.
    c.eval.swd = False
    c.eval.num_samples = 10_000  # generated samples per sample-quality evaluation
    c.eval.reference_split = ""  # real images the samples are compared with; '' = the split evaluated (test; during
    # training the validation split when data.validation_examples holds one out)
    c.eval.inception_weights = ""  # path to pt_inception-2015-12-05-6726825d.pth or its .npz; '' = the cache
    c.eval.inception_download = True  # weights not in the cache: download them once (sha256-checked) into it
    c.eval.classifier_steps = 1500  # training steps of the metric classifier (cached in the data dir)
    c.eval.checkpoint = "newest"  # what --mode=eval and --mode=sample use: 'newest' or 'best' (<workdir>/best)

    c.sample = ml_collections.ConfigDict()  # --mode=sample
    c.sample.num = 1000  # samples written as <workdir>/samples/step_<step>.npz (uint8) and PNG grids
    c.sample.per_grid = 100  # images per PNG grid
    # 0 = off; t > 0: each latent coordinate drawn from N(0, 1) truncated to [-t, t] (BigGAN's truncation trick:
    # less variety, more typical samples), for --mode=sample and trained.load's samples; evaluations never truncate
    c.sample.truncation = 0.0
    c.sample.classes = ()  # a class-conditional model's classes, drawn in turn (e.g. (7,): only 7s); () = every class

    c.output = ml_collections.ConfigDict()
    c.output.num_samples = 64  # images in the sample grids
    c.output.plots = True  # latent plots, interpolations and loss curves
    c.output.progress = True  # progress bar on the terminal
    return c


def optim_block(lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999) -> ml_collections.ConfigDict:
    """An optimizer block (jaxgen.training.optim.make reads it)."""
    o = ml_collections.ConfigDict()
    o.name = "adam"  # adam, adamw, or 'package.module:function' (README, Objectives)
    o.lr = lr
    o.b1 = b1
    o.b2 = b2
    o.eps = 1e-8
    o.weight_decay = 0.0  # adamw only
    o.schedule = "constant"  # 'constant', 'cosine' or 'linear' (decay to lr * end_lr_ratio), after a linear warmup
    o.warmup_steps = 0
    o.end_lr_ratio = 0.0  # cosine, linear: lr * end_lr_ratio is reached just after the last update
    o.clip_norm = 0.0  # global gradient-norm clipping; 0 = off
    return o


def vae_config() -> ml_collections.ConfigDict:
    """Defaults of a VAE run: the base blocks plus model, objective, optim and the likelihood evaluation."""
    c = base_config()
    c.task = "vae"
    c.model = ml_collections.ConfigDict()
    c.model.name = "conv_vae"  # jaxgen.models.MODELS, or 'package.module:ModuleClass'
    c.model.latent_dim = 10
    c.model.channels = (32, 64)  # conv_vae: encoder widths (the decoder mirrors them)
    c.model.dense = 16  # conv_vae: the dense bottleneck before the latent
    c.model.hidden = (200, 200)  # mlp_vae: hidden widths
    c.model.activation = "relu"  # relu, tanh, gelu, silu, elu
    c.model.output_bias = "zero"  # 'zero' or 'data_mean': the decoder starts at the training pixels' mean
    c.model.conv_impl = "auto"  # conv_vae's transposed convs: 'auto' (per backend), 'phase' or 'xla' (models/layers.py)
    c.model.num_classes = 0  # > 0: a class-conditional VAE (encoder and decoder read the labels 0..N-1); 0: off
    # p(z): 'normal' (N(0, I)) or 'vamp' (the VampPrior, Tomczak and Welling 2018: a mixture of the encoder's
    # posteriors at vamp_components learned pseudo-inputs; its KL is a Monte Carlo one: objective.kl='mc', or iwae)
    c.model.prior = "normal"
    c.model.vamp_components = 500
    c.model.vamp_init = "noise"  # vamp: the pseudo-inputs start at N(0.05, 0.01) pixels ('noise') or training images

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "elbo"  # jaxgen.objectives.OBJECTIVES, or 'package.module:function'
    # 'bernoulli' (decoder gives logits), 'gaussian' (means) or 'discretized_logistic' (8-bit pixels: locations and
    # log-scales), or 'package.module:function'
    c.objective.likelihood = "bernoulli"
    c.objective.gaussian_sigma = 0.1  # std of the Gaussian likelihood, pixels in [0, 1]
    c.objective.beta = 1.0  # weight of the KL term (beta-VAE, info_vae; 1 is the ELBO); beta_tcvae: the TC's
    c.objective.kl_warmup_steps = 0  # elbo: the KL's weight rises linearly from 0 to beta over this many steps; 0 = off
    c.objective.k = 1  # latent samples per example (IWAE's k); miwae, piwae: per bound, m k in all
    c.objective.m = 1  # miwae, piwae: independent IWAE bounds of k draws each (Rainforth et al.'s M)
    c.objective.elbo_weight = 0.5  # ciwae: the bound is elbo_weight ELBO + (1 - elbo_weight) IWAE (their beta)
    # elbo (kl='mc'), iwae, miwae, ciwae, piwae: the encoder's gradient, 'standard' (autodiff through the draws) or
    # 'dreg' (doubly reparameterised, Tucker et al. 2019: no score term; elbo's is sticking the landing)
    c.objective.estimator = "standard"
    c.objective.kl = "analytic"  # elbo: 'analytic' or 'mc' (single-sample estimate)
    c.objective.mi_weight = 1.0  # beta_tcvae: the weight of the index-code mutual information I(x; z)
    c.objective.tc_estimator = "mws"  # beta_tcvae: q(z)'s estimate, 'mws' (weighted) or 'mss' (stratified sampling)
    c.objective.dim_kl_weight = 1.0  # beta_tcvae: the weight of the dimension-wise KL sum_d KL(q(z_d) || p(z_d))
    c.objective.mmd_weight = 0.0  # info_vae: the weight of MMD^2(q(z), p(z)) over the global batch
    c.objective.mmd_kernel = "imq"  # info_vae: 'imq' (inverse multiquadratic, WAE's) or 'rbf'
    c.objective.capacity = 25.0  # capacity_vae: the KL capacity C (nats) reached after capacity_steps
    c.objective.capacity_steps = 10_000  # capacity_vae: train steps over which C rises linearly from 0

    c.optim = optim_block()
    c.train.ema_half_life = 0.0  # images; > 0 keeps an EMA of the params (evaluation, samples) halving its memory
    # every this many images, whatever the batch size; 0 = off
    c.train.ema_rampup = 0.05  # the half-life is at most this times the images seen so far (StyleGAN2-ADA's); 0 = off
    c.eval.nll_k = 100  # importance samples for the NLL at intermediate evals
    c.eval.final_nll_k = 1000  # importance samples for the NLL at the final eval
    c.eval.nll_chunk = 50  # importance samples per pass: batch_size * nll_chunk decodes (on a CPU, in pieces)
    # The test set's stochastic binarization ('dynamic'): one fixed draw from this seed, whatever the run's seed,
    # so that runs and models are compared on the same binary test set (as Burda et al.'s code does).
    c.eval.binarize_seed = 0
    # On a dataset with known factors (shapes2d): the FactorVAE metric's votes at the final evaluation, 64 rendered
    # images each (disentanglement_lib takes 15,000; 1500 cost ~100k encodes); 0 = off. MIG needs nothing more.
    c.eval.factor_vae_votes = 1500
    # The best checkpoint of a VAE: the highest ELBO of the evaluations during training (measured alike at every
    # eval: the validation split's with data.validation_examples, else the test split's, the final one included).
    c.checkpoint.best_metric = "elbo"
    # Where the latents of the samples (evaluations' FID, image grids, --mode=sample, trained.load) come from:
    # 'prior' (z ~ N(0, I)) or 'gmm' (ex-post density estimation, Ghosh et al. 2020: a full-covariance Gaussian
    # mixture of gmm_components components fit to the posterior means of gmm_examples training images, 0 = all;
    # refit for each checkpoint evaluated)
    c.sample.latents = "prior"
    c.sample.gmm_components = 10
    c.sample.gmm_examples = 10_000
    c.lock()  # config files and variants set these fields; a misspelt one is an error, not a new field
    return c


def gan_config() -> ml_collections.ConfigDict:
    """Defaults of a GAN run: DCGAN shapes and Radford et al.'s optimizer; config files change what differs."""
    c = base_config()
    c.task = "gan"
    c.data.binarize = "none"
    c.model = ml_collections.ConfigDict()
    c.model.name = "dcgan"  # jaxgen.models.gan.GANS ('dcgan', 'resnet') or 'package.module:function'
    c.model.latent_dim = 100
    c.model.g_width = 64  # generator width at the highest resolution (doubles per level down)
    c.model.d_width = 64
    c.model.g_norm = "batch"  # 'batch' (synchronised over devices) or 'none'
    c.model.d_norm = "batch"
    c.model.g_spectral_norm = False
    c.model.d_spectral_norm = False
    c.model.dtype = "float32"  # compute dtype: 'float32' or 'bfloat16' (params stay float32)
    c.model.conv_impl = "auto"  # DCGAN's strided convs: 'auto' (per backend), 'phase' or 'xla' (models/layers.py)
    c.model.norm_impl = "auto"  # BatchNorm: 'auto' (per backend), 'fused' (jaxgen's) or 'flax' (models/batch_norm.py)
    # 0 = unconditional; N = class-conditional on the dataset's labels 0..N-1: G(z, y), a projection D(x, y)
    # (README: "Class-conditional GANs")
    c.model.num_classes = 0
    # A class-conditional D's use of the labels: 'projection' (Miyato and Koyama 2018) or 'ac', an auxiliary classifier
    # head trained with loss.ac_weight x its cross-entropy on reals and fakes, and G on its fakes' (ACGAN, Odena et al.
    # 2017)
    c.model.d_conditioning = "projection"

    c.loss = ml_collections.ConfigDict()
    c.loss.name = "non_saturating"  # jaxgen.objectives.gan.LOSSES or 'package.module:function'
    # Top-k training (Sinha et al. 2020): > 0 = the G update learns from the k fakes of its batch D rates most real,
    # k = max(topk_gamma^e B, topk_nu B) after e passes over the training data; 0 = off (every fake)
    c.loss.topk_nu = 0.0
    c.loss.topk_gamma = 0.99  # k's decay per pass over the training data
    c.loss.ac_weight = 1.0  # model.d_conditioning='ac': the weight of the auxiliary classifier's cross-entropies
    c.reg = ml_collections.ConfigDict()
    c.reg.name = "none"  # 'none', 'r1', 'gp' (WGAN-GP), 'cr', 'bcr' (consistency) or 'package.module:function'
    # r1: gamma in gamma/2 E|grad D(x)|^2; gp: lambda in lambda E(|grad D(x_hat)| - 1)^2; cr, bcr: lambda in
    # lambda E(D(x) - D(T(x)))^2 (bcr: on reals and on fakes, the same lambda)
    c.reg.weight = 10.0
    c.reg.interval = 1  # lazy regularization: every N D steps, weight scaled by N (StyleGAN2's 16 for R1); the
    # logged 'reg' (and the regularizer's own metrics) are then means over the D updates that ran it
    # With augment.policy: False = the penalty at the augmented images D sees (DiffAugment's ns_r1_DiffAugment);
    # True = at the clean images, D seeing them augmented (the same draw): the input gradient goes back through the
    # augmentation (StyleGAN2-ADA's R1).
    c.reg.through_augment = False
    # cr, bcr: the augmentations T of D's inputs (jaxgen.data.augment names): the papers' flips and small shifts
    c.reg.cr_policy = "flip,translation"
    # LeCam regularization (Tseng et al. 2021), beside reg.name's: > 0 adds this weight times
    # E relu(D(x) - a_F)^2 + E relu(a_R - D(G(z)))^2 to D's loss, a_R and a_F moving averages of D's mean outputs on
    # reals and fakes (the authors' BigGAN CIFAR runs: 0.3); 0 = off
    c.reg.lecam_weight = 0.0
    c.reg.lecam_decay = 0.99  # the moving averages' decay per D update (theirs: 0.99)

    c.g_optim = optim_block(2e-4, 0.5, 0.999)
    c.d_optim = optim_block(2e-4, 0.5, 0.999)
    c.train.d_steps = 1  # D updates per G update (a train step = d_steps D updates + 1 G update)
    # Fakes of the G update: 0 = the last D update's (one G forward per step, as PyTorch's DCGAN); N = N fresh ones
    # (the official SNGAN code: 128 beside a batch of 64), a multiple of the device count; -1 = fresh ones, as many
    # as train.batch_size (WGAN-GP's Algorithm 1), whatever the batch size is set to.
    c.train.g_batch_size = 0
    # images (train.batch_size per train step); the EMA of G's weights halves its memory every this many; 0 = off
    c.train.ema_half_life = 10_000.0
    c.train.ema_rampup = 0.05  # the half-life is at most this times the images seen so far (StyleGAN2-ADA's); 0 = off

    c.augment = ml_collections.ConfigDict()
    c.augment.policy = ""  # comma-separated jaxgen.data.augment names, applied to reals and fakes for D; '' = off
    c.augment.probability = 1.0  # each augmentation of the policy applies to an example with this probability
    # Adaptive augmentation (StyleGAN2-ADA, Karras et al. 2020): > 0 = the probability starts at 0 and moves so that
    # the mean sign of D's outputs on the reals stays at this target (their 0.6); augment.probability is then unread
    c.augment.ada_target = 0.0
    c.augment.ada_interval = 4  # train steps between the probability's adjustments (theirs: 4 minibatches)
    c.augment.ada_kimg = 500.0  # thousands of images over which the probability can move from 0 to 1 (theirs: 500)
    c.eval.every = 1000
    c.eval.batch_size = 256
    c.lock()  # config files and variants set these fields; a misspelt one is an error, not a new field
    return c
def with_variant(
    config: ml_collections.ConfigDict,
    variant: str,
    variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
) -> ml_collections.ConfigDict:
    """Applies the named variants (comma-separated) to `config` in place, left to right, so a later variant wins
    where two set the same field (logged as a warning naming both); unknown names list the choices."""
    names = [v.strip() for v in (variant or "").split(",") if v.strip()]  # 'iwae, smoke' as 'iwae,smoke'
    for name in names:
        if name not in variants:
            several = (f" (variants are combined with a comma: {re.sub(r'[:;+ ]+', ',', name)!r})"
                       if re.search(r"[:;+ ]", name) else "")
            raise ValueError(f"unknown config variant {name!r}; choices: {', '.join(sorted(variants))}{several}")
    set_by: dict[str, tuple[str, object]] = {}  # field -> (the variant that set it, its value)
    for name in names:
        before = flat_fields(config)
        variants[name](config)
        after = flat_fields(config)
        overridden: dict[str, list[str]] = {}  # earlier variant -> 'field: its value -> this one's'
        for field in sorted(k for k in after if before.get(k, _MISSING) != after[k]):
            if field in set_by and set_by[field][1] != after[field]:
                earlier, value = set_by[field]
                overridden.setdefault(earlier, []).append(f"{field}: {value!r} -> {after[field]!r}")
            set_by[field] = (name, after[field])
        for earlier, fields in overridden.items():
            log.warning("config variant %r overrides what the earlier variant %r set (variants apply left to right, "
                        "the later one wins): %s", name, earlier, ", ".join(fields))
    config.lock()
    return config


_MISSING = object()


def flat_fields(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    """{'block.field': value} of every leaf field."""
    out = {}
    for k, v in config.items():
        if isinstance(v, ml_collections.ConfigDict):
            out.update(flat_fields(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def eval_checkpoint(config: ml_collections.ConfigDict) -> str:
    """config.eval.checkpoint, 'newest' or 'best' (what --mode=eval/sample read); another value is a ValueError."""
    if config.eval.checkpoint not in ("newest", "best"):
        raise ValueError(f"eval.checkpoint must be 'newest' or 'best', got {config.eval.checkpoint!r}")
    return config.eval.checkpoint


def smoke(config: ml_collections.ConfigDict) -> None:
    """The tiny-size settings every `smoke` variant shares: same model, objective and step, seconds to run."""
    if config.task == "gan" and config.train.g_batch_size > 0:  # G's fresh fakes keep their ratio to the batch
        ratio = config.train.g_batch_size / config.train.batch_size
        config.train.g_batch_size = max(8, round(32 * ratio / 8) * 8)
    config.train.batch_size = 32
    config.train.steps = 20
    config.train.steps_per_dispatch = 1
    config.train.log_every = 5
    config.checkpoint.every = 10
    config.eval.every = 10
    config.eval.batch_size = 64
    config.eval.num_examples = 64
    config.output.num_samples = 16
    config.eval.num_samples = 64
    config.eval.classifier_steps = 30
    # Inception's weights are a download a fresh install may not have: smoke checks run without them.
    config.eval.extractors = tuple(e for e in config.eval.extractors if e != "inception")
    config.sample.num = 32
    config.sample.per_grid = 16
    for block in ("optim", "g_optim", "d_optim"):  # a warmup longer than the run would leave the lr near zero
        if block in config:
            config[block].warmup_steps = min(config[block].warmup_steps, updates(config, block) // 4)
    if config.task == "vae":
        config.eval.nll_k = 8
        config.eval.final_nll_k = 16
        config.eval.nll_chunk = 8


def gan_smoke(config: ml_collections.ConfigDict, image_shape: tuple[int, int, int] | None = None) -> None:
    """smoke() for a GAN config: tiny widths, and synthetic images of `image_shape` when given."""
    if image_shape:
        config.data.name = "synthetic"
        config.data.image_shape = image_shape
        config.data.num_examples = 128
        base = gan_config().data
        for field in ("path", "resolution", "crop", "test_percent"):  # the real dataset's, which synthetic ignores
            config.data[field] = base[field]
    smoke(config)
    config.model.g_width = config.model.d_width = 8


def bf16(config: ml_collections.ConfigDict) -> None:
    """GAN variant: bfloat16 compute, float32 params and optimizer state."""
    config.model.dtype = "bfloat16"


def diffaugment(config: ml_collections.ConfigDict) -> None:
    """GAN variant: DiffAugment's colour, translation and cutout on reals and fakes (Zhao et al. 2020)."""
    config.augment.policy = "color,translation,cutout"


def ada(config: ml_collections.ConfigDict) -> None:
    """GAN variant: adaptive augmentation (StyleGAN2-ADA, Karras et al. 2020) of translations, rotations, zooms and
    colour, each applied to reals and fakes with a probability that starts at 0 and follows D's overfitting (the
    mean sign of its outputs on the reals, kept at their target 0.6). Their pipeline has more transforms (90-degree
    rotations, anisotropic scaling, hue); flips are left out here: data.random_flip mirrors the dataset instead."""
    config.augment.policy = "translation,rotation,scale,color"
    config.augment.ada_target = 0.6


def bcr(config: ml_collections.ConfigDict) -> None:
    """GAN variant: balanced consistency regularization (bCR; Zhao et al. 2021) with their lambda 10 on reals and
    fakes, T a random flip and shift (reg.cr_policy), for a D without BatchNorm as theirs (SNGAN's, BigGAN's).
    gan_mnist has no such variant: on its DCGAN it made FID worse at every weight tried (README)."""
    config.reg.name = "bcr"
    config.reg.weight = 10.0


def lecam(config: ml_collections.ConfigDict) -> None:
    """GAN variant: LeCam regularization (Tseng et al. 2021) at the weight of the authors' BigGAN CIFAR-10 runs, 0.3
    (google/lecam-gan's scripts), for small training sets; it combines with DiffAugment or ADA ('ada,lecam')."""
    config.reg.lecam_weight = 0.3


def topk(config: ml_collections.ConfigDict) -> None:
    """GAN variant: top-k training (Sinha et al. 2020): the G update learns from the fakes D rates most real, their
    share decaying by 0.99 per pass over the data to half the batch."""
    config.loss.topk_nu = 0.5


def g_batch_size(config: ml_collections.ConfigDict) -> int:
    """How many fresh latents a GAN's G update draws: 0 (it reuses the last D update's fakes) or a global batch."""
    n = config.train.g_batch_size
    return config.train.batch_size if n == -1 else n


def updates(config, block: str) -> int:
    """How many updates the optimizer `block` makes in the run (D: train.d_steps per step)."""
    return config.train.steps * (config.train.d_steps if block == "d_optim" else 1)


def recording(cfg) -> tuple[ml_collections.ConfigDict, set[str]]:
    """(a copy of the config block `cfg` that records which of its fields are read, the set they go into): a trace
    of a user's function with it says which fields the function reads. Attribute access, `[...]` and `.get` record
    the field; what hands on the whole block (`.items()`, `.values()`, iteration, `.to_dict()`, a copy, a
    FrozenConfigDict of it) records them all. It is a ConfigDict like `cfg` (locked alike)."""
    reads: set[str] = set()

    def all_read(method):
        def wrapped(self, *args, **kwargs):
            reads.update(self._fields)
            return method(self, *args, **kwargs)

        return wrapped

    class Recording(ml_collections.ConfigDict):
        def __getitem__(self, key):
            if not str(key).startswith("__"):  # not a field: Python's protocol lookups (copy's __deepcopy__ ...)
                reads.add(str(key).split(".")[0])
            return super().__getitem__(key)

        def __deepcopy__(self, memo):
            return ml_collections.ConfigDict(self.to_dict())  # to_dict records every field

    for name in ("items", "values", "__iter__", "to_dict", "to_json", "to_json_best_effort",
                 "copy_and_resolve_references", "get_ref", "iteritems", "itervalues"):
        if hasattr(ml_collections.ConfigDict, name):
            setattr(Recording, name, all_read(getattr(ml_collections.ConfigDict, name)))

    copy = Recording(cfg)
    reads.clear()  # what copying read
    return copy, reads
