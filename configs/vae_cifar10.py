"""A wider conv VAE on CIFAR-10 with a discretized logistic likelihood (the 8-bit pixels' probabilities, a location
and a log-scale per pixel and channel, as PixelCNN++ with one component): the VAE family on colour images, with
bits/dim comparable with published CIFAR-10 numbers (an upper bound in expectation, the IWAE bound with
eval.final_nll_k samples). Samples show the decoder's locations: blurry, as for every VAE of this size.

    python launch.py --config=configs/vae_cifar10.py --workdir=runs/vae_cifar10
    python launch.py --config=configs/vae_cifar10.py:gaussian --workdir=runs/vae_cifar10_gaussian
    python launch.py --config=configs/vae_cifar10.py:smoke --workdir=/tmp/smoke

Variants: gaussian (a Gaussian likelihood with sigma 0.1 on pixels in [0, 1], this config's before 2026-12-01: its
NLL is a density of x/255, its bits/dim a midpoint estimate, not comparable with published ones; README: What lands
in the workdir, eval.json), smoke (synthetic 32x32x3 images, no download).
"""

from jaxgen.config import smoke, vae_config, with_variant


def get_config(variant: str = ""):
    c = vae_config()
    c.data.name = "cifar10"
    c.data.binarize = "none"
    c.model.name = "conv_vae"
    c.model.channels = (64, 128)
    c.model.dense = 256
    c.model.latent_dim = 128
    c.objective.name = "elbo"
    c.objective.likelihood = "discretized_logistic"
    c.optim.lr = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.clip_norm = 100.0
    c.train.batch_size = 128
    c.train.steps = 50_000
    c.checkpoint.every = 5000
    c.eval.every = 10_000
    c.eval.extractors = ("inception",)  # pytorch-fid's weights: README, Sample quality
    c.eval.swd = True  # and the sliced Wasserstein distance, from the pixels alone: offline, no weights
    c.eval.num_samples = 10_000
    return with_variant(c, variant, VARIANTS)


def _gaussian(c):
    c.objective.likelihood = "gaussian"
    c.objective.gaussian_sigma = 0.1


def _smoke(c):
    c.data.name = "synthetic"
    c.data.image_shape = (32, 32, 3)
    c.data.num_examples = 256
    smoke(c)
    c.model.channels = (8, 16)
    c.model.dense = 16
    c.model.latent_dim = 8


VARIANTS = {"gaussian": _gaussian, "smoke": _smoke}
