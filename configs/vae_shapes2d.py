"""A conv VAE for disentanglement on `shapes2d`: dSprites' grid of five generative factors (shape, scale, orientation,
x, y; 737,280 binary 64x64 images), drawn by jaxgen, so no download. The model has the sizes of the dSprites conv VAE
of Higgins et al. 2017 as disentanglement_lib (Locatello et al. 2019) trains it (four stride-2 convs of 32, 32, 64, 64
channels, dense 256, latent 10; 3x3 kernels here, 4x4 there), and every evaluation adds MIG against the factors. The
best checkpoint is kept by the ELBO, not by MIG: choosing by the true factors would not be unsupervised
(--config.checkpoint.best_metric=mig does, knowingly). The whole grid is 3 GB of uint8 in host memory and on each
device: a GPU's job; `cpu` trains on 50,000 images.

    python launch.py --config=configs/vae_shapes2d.py --workdir=runs/shapes2d             # 100k steps: a GPU's job
    python launch.py --config=configs/vae_shapes2d.py:btcvae --workdir=runs/shapes2d_tc   # beta-TCVAE, beta 6
    python launch.py --config=configs/vae_shapes2d.py:cpu --workdir=runs/shapes2d_cpu     # 50k images, 3000 steps
    python launch.py --config=configs/vae_shapes2d.py:smoke --workdir=/tmp/smoke          # < 1 minute on a CPU

Variants (comma-separated, applied in order): btcvae, betavae, cpu, smoke.
"""

from jaxgen.config import smoke, vae_config, with_variant


def get_config(variant: str = ""):
    c = vae_config()
    c.data.name = "shapes2d"
    # Its pixels are 0 or 255: the dynamic binarization (the Bernoulli likelihood's) leaves them as they are.
    c.data.binarize = "dynamic"
    c.model.name = "conv_vae"
    c.model.channels = (32, 32, 64, 64)
    c.model.dense = 256
    c.model.latent_dim = 10
    c.objective.name = "elbo"
    c.optim.lr = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.end_lr_ratio = 0.1
    c.train.batch_size = 64
    c.train.steps = 100_000
    c.train.steps_per_dispatch = 10
    c.train.log_every = 500
    c.checkpoint.every = 10_000
    c.eval.every = 10_000
    c.eval.num_examples = 1000  # of the 10,000 test images for the ELBO and NLL; MIG takes all 10,000
    c.eval.nll_k = 20
    c.eval.final_nll_k = 200
    c.eval.extractors = ()  # FID has no features for these shapes; MIG is the point
    return with_variant(c, variant, VARIANTS)


def _btcvae(c):
    """beta-TCVAE (Chen et al. 2018): the total correlation weighted 6, as their dSprites runs. They trained at batch
    2048: the minibatch-weighted estimate of the total correlation is biased at small batches (here 64)."""
    c.objective.name = "beta_tcvae"
    c.objective.beta = 6.0


def _betavae(c):
    """beta-VAE (Higgins et al. 2017): the whole KL weighted 4, their dSprites setting."""
    c.objective.beta = 4.0


def _cpu(c):
    """A size for 2 CPU cores: the first 50,000 training images and 3000 steps (minutes, not the paper's scale)."""
    c.data.num_examples = 50_000
    c.train.steps = 3000
    c.optim.warmup_steps = 200
    c.checkpoint.every = 1000
    c.eval.every = 1000
    c.eval.final_nll_k = 50


def _smoke(c):
    smoke(c)
    c.data.num_examples = 256
    c.eval.factor_vae_votes = 30


VARIANTS = {"btcvae": _btcvae, "betavae": _betavae, "cpu": _cpu, "smoke": _smoke}
