"""DCGAN (Radford et al. 2016) at 28x28 on the MNIST digits that ship with jaxgen: offline, minutes on a CPU.

    python launch.py --config=configs/gan_mnist.py --workdir=runs/gan_mnist            # shipped mnist_5k
    python launch.py --config=configs/gan_mnist.py:mnist --workdir=runs/gan_mnist_full # TFDS mnist, 60k digits
    python launch.py --config=configs/gan_mnist.py:smoke --workdir=/tmp/smoke          # < 1 minute
    python launch.py --config=configs/gan_mnist.py:conditional --workdir=runs/cgan_mnist  # one digit per column

Variants (comma-separated, applied in order): mnist, conditional, acgan, hinge, wgan_gp, r1, dragan, diffaugment,
ada, lecam, topk, bf16, smoke.
"""

from jaxgen.config import ada, bf16, diffaugment, gan_config, gan_smoke, lecam, topk, with_variant


def get_config(variant: str = ""):
    c = gan_config()
    c.data.name = "mnist_5k"
    c.model.name = "dcgan"
    c.model.g_width = 64  # G: 7x7x128 -> 14x14x64 -> 28x28x1; D mirrors it
    c.model.d_width = 64
    c.loss.name = "non_saturating"
    c.train.batch_size = 64
    c.train.steps = 3000
    c.train.steps_per_dispatch = 10
    c.train.ema_half_life = 10_000
    c.train.log_every = 100
    c.checkpoint.every = 1000
    c.eval.every = 500
    c.eval.batch_size = 200  # the 1000 test digits in 5 batches
    c.eval.extractors = ("classifier",)  # add "inception" once its weights are in place (README: Sample quality)
    c.eval.num_samples = 1000  # as many as the test digits
    return with_variant(c, variant, VARIANTS)


def _mnist(c):
    c.data.name = "mnist"
    c.eval.num_samples = 10_000
    c.train.steps = 10_000


def _conditional(c):
    """Class-conditional on the 10 digit labels: G(z, y) with the one-hot y appended to z (Mirza and Osindero 2014),
    a projection D (Miyato and Koyama 2018); the classifier metric adds class_accuracy (README: Class-conditional
    GANs)."""
    c.model.num_classes = 10


def _acgan(c):
    """ACGAN (Odena et al. 2017) on the 10 digits: G as in `conditional`, D with an auxiliary classifier head instead of
    the projection, its cross-entropy weighted 1 in both updates."""
    c.model.num_classes = 10
    c.model.d_conditioning = "ac"


def _hinge(c):
    c.loss.name = "hinge"


def _wgan_gp(c):
    """WGAN-GP (Gulrajani et al. 2017): Wasserstein loss, gradient penalty 10, 5 critic steps, Adam(1e-4, 0, 0.9),
    no BatchNorm in the critic; the G update draws a fresh batch of latents, as the paper's Algorithm 1."""
    c.loss.name = "wasserstein"
    c.reg.name = "gp"
    c.reg.weight = 10.0
    c.model.d_norm = "none"
    c.train.d_steps = 5
    c.train.g_batch_size = -1  # fresh latents, as many as train.batch_size
    for o in (c.g_optim, c.d_optim):
        o.lr, o.b1, o.b2 = 1e-4, 0.0, 0.9


def _dragan(c):
    """DRAGAN's penalty (Kodali et al. 2017) around the reals, lambda 10, with the non-saturating loss; D without BN
    (the penalty's input gradients are per example). On mnist_5k it lowered the classifier FID at seeds 0-2 from
    135.8/127.2/114.6 (the same D, no penalty) to 99.1/120.4/112.0
    (benchmarks/results/gan_losses_relativistic_dragan_mnist_cpu_zen5_2026-12-01.json)."""
    c.reg.name = "dragan"
    c.reg.weight = 10.0
    c.model.d_norm = "none"


def _r1(c):
    """R1 on reals, gamma 10, lazily every 4 D steps (R1: Mescheder et al. 2018; lazy regularization: Karras et al.
    2020, who use 16; 4 is jaxgen's choice); D without BN, so the penalty's input gradients are per example."""
    c.reg.name = "r1"
    c.model.d_norm = "none"
    c.reg.weight = 10.0
    c.reg.interval = 4


def _smoke(c):
    c.data.name = "mnist_5k"
    gan_smoke(c)


VARIANTS = {"mnist": _mnist, "conditional": _conditional, "acgan": _acgan, "hinge": _hinge, "wgan_gp": _wgan_gp,
            "r1": _r1, "dragan": _dragan, "diffaugment": diffaugment, "ada": ada, "lecam": lecam, "topk": topk,
            "bf16": bf16, "smoke": _smoke}
