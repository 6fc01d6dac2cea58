"""A small conv VAE (two stride-2 convs, dense 16, latent 10; the one benchmarks/ times against PyTorch) on MNIST,
Bernoulli likelihood.

    python launch.py --config=configs/vae_mnist.py --workdir=runs/vae_mnist            # TFDS mnist, 60k digits
    python launch.py --config=configs/vae_mnist.py:mnist_5k --workdir=runs/quickstart  # shipped digits, offline
    python launch.py --config=configs/vae_mnist.py:smoke --workdir=/tmp/smoke          # < 1 minute on a CPU

Variants (comma-separated, applied in order): mnist_5k, fashion, iwae, conditional, btcvae, infovae, vamp, smoke.
"""

from jaxgen.config import smoke, vae_config, with_variant


def get_config(variant: str = ""):
    c = vae_config()
    c.data.name = "mnist"
    c.model.name = "conv_vae"
    c.model.latent_dim = 10
    c.objective.name = "elbo"
    c.optim.lr = 1e-3
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 200
    c.optim.end_lr_ratio = 0.1
    c.train.batch_size = 128
    c.train.steps = 20_000
    c.train.steps_per_dispatch = 10  # 10 steps per compiled call: 1.5x the images/s on a CPU, 2.1x on an H200
    c.train.log_every = 100
    c.checkpoint.every = 2000
    c.eval.every = 5000
    c.eval.extractors = ("classifier",)  # add "inception" once its weights are in place (README: Sample quality)
    c.eval.num_samples = 10_000
    return with_variant(c, variant, VARIANTS)


def _mnist_5k(c):
    """The quickstart: the 4000 shipped training digits, offline, a few minutes on 2 CPU cores."""
    c.data.name = "mnist_5k"
    c.train.steps = 3000
    c.optim.warmup_steps = 100
    c.checkpoint.every = 1000
    c.eval.every = 1000
    c.eval.nll_k = 100
    c.eval.num_samples = 1000  # as many as the test digits


def _fashion(c):
    c.data.name = "fashion_mnist"


def _iwae(c):
    """IWAE with k=5 on the same model (Burda et al. 2016)."""
    c.objective.name = "iwae"
    c.objective.k = 5


def _conditional(c):
    """A conditional VAE (Sohn et al. 2015): encoder and decoder read the digit's label; samples come by class."""
    c.model.num_classes = 10


def _btcvae(c):
    """beta-TCVAE (Chen et al. 2018): the KL's total-correlation part weighted 6, its other two parts 1."""
    c.objective.name = "beta_tcvae"
    c.objective.beta = 6.0


def _infovae(c):
    """The MMD-VAE of InfoVAE (Zhao et al. 2019): no per-example KL, MMD^2(q(z), N(0, I)) weighted 100."""
    c.objective.name = "info_vae"
    c.objective.beta = 0.0
    c.objective.mmd_weight = 100.0


def _vamp(c):
    """The VampPrior (Tomczak and Welling 2018): p(z) a mixture of the encoder's posteriors at 500 learned
    pseudo-inputs. Its KL is a Monte Carlo one, so the ELBO takes objective.kl='mc' (iwae needs nothing more:
    `iwae,vamp`)."""
    c.model.prior = "vamp"
    c.model.vamp_components = 500
    if c.objective.name == "elbo":
        c.objective.kl = "mc"


def _smoke(c):
    c.data.name = "mnist_5k"
    smoke(c)


VARIANTS = {"mnist_5k": _mnist_5k, "fashion": _fashion, "iwae": _iwae, "conditional": _conditional, "btcvae": _btcvae,
            "infovae": _infovae, "vamp": _vamp, "smoke": _smoke}
