"""SNGAN (Miyato et al. 2018) on CIFAR-10: the ResNet G and D of the paper's appendix, hinge loss, spectral norm
on every D layer (no BatchNorm in D), 5 D steps per G step, Adam(2e-4, betas (0, 0.9)) decayed linearly to 0,
batch 64, and 128 fresh fakes for each G update, as the official code (pfnet-research/sngan_projection,
configs/sn_cifar10_unconditional.yml: n_gen_samples 128).

    python launch.py --config=configs/gan_cifar10.py --workdir=runs/sngan_cifar10
    python launch.py --config=configs/gan_cifar10.py:smoke --workdir=/tmp/smoke
    python launch.py --config=configs/gan_cifar10.py:conditional --workdir=runs/sngan_projection_cifar10

Reference: the paper (Miyato et al., 2018) reports IS 8.22 and FID 21.7 for this unconditional setup, without
an EMA of G; this config evaluates G's EMA (half-life 50k images), so its numbers are not a like-for-like
comparison (--config.train.ema_half_life=0 evaluates the raw G, as the paper did).
Departures from the official code, negligible: it updates G before the 5 D steps of an iteration, jaxgen after
them; its D learning rate decays per iteration, jaxgen's per D update (the same line); Chainer advances D's
spectral-norm vector in the G update's pass too (11 power iterations per iteration, jaxgen 10); G's BatchNorm
running averages move in every pass of G in Chainer (6 per iteration), in jaxgen's G update only (1), which
matters only for the raw G (ema_half_life=0): an EMA G's statistics are estimated again before it samples.
Variants: conditional (the class-conditional SNGAN of Miyato and Koyama 2018: conditional BatchNorm in G, a
projection D, on CIFAR-10's 10 labels), diffaugment (color, translation, cutout on reals and fakes), ada
(StyleGAN2-ADA's adaptive augmentation), bcr (balanced consistency regularization, Zhao et al. 2021, lambda 10,
flips and translations), lecam (LeCam regularization, Tseng et al. 2021), topk (top-k training, Sinha et al. 2020),
bf16, smoke (synthetic 32x32x3).
"""

from jaxgen.config import ada, bcr, bf16, diffaugment, gan_config, gan_smoke, lecam, topk, with_variant


def get_config(variant: str = ""):
    c = gan_config()
    c.data.name = "cifar10"
    c.model.name = "resnet"
    c.model.latent_dim = 128  # SNGAN's
    c.model.g_width = 64  # ResNet G blocks 256 wide at 32x32 (4 * g_width), D 128 (2 * d_width)
    c.model.d_width = 64
    c.model.g_norm = "batch"
    c.model.d_norm = "none"
    c.model.d_spectral_norm = True
    c.loss.name = "hinge"
    for o in (c.g_optim, c.d_optim):
        o.lr, o.b1, o.b2 = 2e-4, 0.0, 0.9
        o.schedule = "linear"  # to 0 over the run, as the official SNGAN code (pfnet-research/sngan_projection)
    c.train.d_steps = 5
    c.train.batch_size = 64
    c.train.g_batch_size = 128  # the official code's n_gen_samples; 0 reuses the last D step's 64 (cheaper)
    c.train.steps = 50_000  # G updates
    c.train.ema_half_life = 50_000
    c.checkpoint.every = 5000
    c.eval.every = 5000
    c.eval.extractors = ("inception",)  # pytorch-fid's weights: README, Sample quality
    c.eval.swd = True  # and the sliced Wasserstein distance, from the pixels alone: offline, no weights
    c.eval.num_samples = 10_000
    c.eval.num_examples = 2048
    return with_variant(c, variant, VARIANTS)


def _smoke(c):
    gan_smoke(c, (32, 32, 3))  # the same 5 D steps per G step: about 50 s on 2 CPU cores (README: "Configs")


def _conditional(c):
    """Miyato and Koyama (2018), "cGANs with projection discriminator": the same networks with categorical
    conditional BatchNorm in G's blocks and the projection term in D, the same optimizer, 5 D steps per G step and
    50k G updates, as the official code's conditional CIFAR-10 config."""
    c.model.num_classes = 10


VARIANTS = {"conditional": _conditional, "diffaugment": diffaugment, "ada": ada, "bcr": bcr, "lecam": lecam,
            "topk": topk, "bf16": bf16, "smoke": _smoke}
