"""A wider conv VAE on CIFAR-10 with a Gaussian likelihood (pixels in [0, 1], sigma 0.1): the VAE family on
colour images. Samples are blurry, as for every Gaussian-likelihood VAE of this size. NLL is a density of x/255
in nats; bits/dim add the 8-bit bin width (ln 255 per dimension): a midpoint estimate without dequantization, not
comparable with published CIFAR-10 bits/dim (README: What lands in the workdir, eval.json).

    python launch.py --config=configs/vae_cifar10.py --workdir=runs/vae_cifar10
    python launch.py --config=configs/vae_cifar10.py:smoke --workdir=/tmp/smoke

Variants: smoke (synthetic 32x32x3 images, no download).
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
    c.objective.likelihood = "gaussian"
    c.objective.gaussian_sigma = 0.1
    c.optim.lr = 5e-4
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 500
    c.optim.clip_norm = 100.0
    c.train.batch_size = 128
    c.train.steps = 50_000
    c.checkpoint.every = 5000
    c.eval.every = 10_000
    c.eval.extractors = ("inception",)  # pytorch-fid's weights: README, Sample quality
    c.eval.num_samples = 10_000
    return with_variant(c, variant, VARIANTS)


def _smoke(c):
    c.data.name = "synthetic"
    c.data.image_shape = (32, 32, 3)
    c.data.num_examples = 256
    smoke(c)
    c.model.channels = (8, 16)
    c.model.dense = 16
    c.model.latent_dim = 8


VARIANTS = {"smoke": _smoke}
