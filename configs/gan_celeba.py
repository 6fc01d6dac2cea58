"""DCGAN at 64x64 on CelebA: Radford et al.'s (2016) training setup (non-saturating loss, Adam(2e-4, beta1 0.5),
batch 128, weights from N(0, 0.02), BatchNorm in G and D, LeakyReLU 0.2 in D) with the pytorch/examples DCGAN's
layers (4x4 kernels, ngf = ndf = 64, G from 4x4x512, z ~ N(0, I) of 100); faces centre-cropped to 108x108, then
resized to 64x64. Not the paper's own: its Fig. 1 G starts from 4x4x1024, and the authors' code (Newmu/dcgan_code)
draws z ~ U(-1, 1) and uses 5x5 kernels.

Samples and FID come from an EMA of G's weights (half-life 50k images, BatchNorm statistics re-estimated for it),
which the paper does not use; --config.train.ema_half_life=0 evaluates the trained G itself.

    python launch.py --config=configs/gan_celeba.py --workdir=runs/celeba
    python launch.py --config=configs/gan_celeba.py --workdir=runs/celeba --config.data.path=/data/img_align_celeba
    python launch.py --config=configs/gan_celeba.py:smoke --workdir=/tmp/smoke

The data comes from TFDS `celeb_a` (prepared once into the data dir) or, when data.path is set, from that
folder of images (the `img_align_celeba` folder of 202,599 JPEGs), decoded once into a
uint8 cache in the data dir. The 108-pixel centre crop of the 178x218 aligned faces is the one of
carpedm20/DCGAN-tensorflow, the usual CelebA-64 preprocessing.

Variants: bf16 (bfloat16 compute, float32 params), smoke (synthetic 64x64x3 images, tiny widths).
"""

from jaxgen.config import bf16, gan_config, gan_smoke, with_variant


def get_config(variant: str = ""):
    c = gan_config()
    c.data.name = "celeb_a"
    c.data.resolution = 64
    c.data.crop = 108
    c.data.test_split = "test"
    c.data.test_percent = 10  # the folder fallback: hold out 10% of the files as 'test' (TFDS has its own split)
    c.model.name = "dcgan"
    c.model.g_width = 64  # ngf = ndf = 64, as pytorch/examples' DCGAN
    c.model.d_width = 64
    c.loss.name = "non_saturating"
    c.train.batch_size = 128
    c.train.steps = 20_000  # ~15.7 epochs of TFDS's 162,770 training faces (~14 of the image-folder fallback's)
    c.train.ema_half_life = 50_000
    c.train.log_every = 100
    c.checkpoint.every = 2000
    c.eval.every = 2000
    c.eval.extractors = ("inception",)  # pytorch-fid's weights: README, Sample quality
    c.eval.swd = True  # and the sliced Wasserstein distance, from the pixels alone: offline, no weights
    c.eval.num_samples = 10_000
    c.eval.num_examples = 2048
    return with_variant(c, variant, VARIANTS)


VARIANTS = {"bf16": bf16, "smoke": lambda c: gan_smoke(c, (64, 64, 3))}
