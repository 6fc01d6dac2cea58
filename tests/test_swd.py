"""The sliced Wasserstein distance (jaxgen.evaluation.swd): the pyramid against scipy and its own inverse, the 1-D
distance by hand, and the metric's response to what it should see."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from jaxgen.evaluation import swd


def test_the_blur_is_the_binomial_kernel_with_mirrored_edges_and_the_pyramid_inverts():
    x = np.random.default_rng(0).normal(size=(2, 20, 18, 3)).astype(np.float32)
    kernel = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0
    want = np.stack([scipy.ndimage.convolve(x[..., c].astype(np.float64), kernel[None], mode="mirror")
                     for c in range(3)], -1)

    @jax.jit  # one program: outside jit each op of the blurs and resamplings is one (~40)
    def blur_pyramid_and_collapse(x):
        pyramid = swd.laplacian_pyramid(x, 3)
        image = pyramid[-1]  # collapse it: each band plus the coarser image brought back up
        for band in reversed(pyramid[:-1]):
            image = band + swd._up(image, band.shape)
        return swd._blur(x), pyramid, image

    blurred, pyramid, image = blur_pyramid_and_collapse(x)
    np.testing.assert_allclose(np.asarray(blurred), want, atol=1e-5)
    assert [p.shape[1:3] for p in pyramid] == [(20, 18), (10, 9), (5, 5)]
    np.testing.assert_allclose(np.asarray(image), x, atol=1e-5)
    assert [swd.levels(s) for s in (28, 32, 64, 128)] == [1, 2, 3, 4]


def test_the_host_and_device_sorts_give_one_distance():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 12)).astype(np.float32), rng.standard_t(3, size=(300, 12)).astype(np.float32)
    dirs = swd.directions(jax.random.key(1), 12)
    assert dirs.shape == (4, 12, 128) and np.allclose(np.linalg.norm(dirs, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(swd._sliced_numpy(a, b, np.asarray(dirs)), float(swd._sliced_jax(a, b, dirs)),
                               rtol=1e-5)


def test_the_sliced_distance_of_a_shift_along_one_axis_is_the_shift():
    a = np.random.default_rng(1).normal(size=(500, 1)).astype(np.float32)
    key = jax.random.key(0)
    assert float(swd.sliced_wasserstein(a, a[::-1].copy(), key)) == pytest.approx(0.0, abs=1e-6)  # order: none
    assert float(swd.sliced_wasserstein(a, a + 0.3, key)) == pytest.approx(0.3, rel=1e-5)  # directions are +-1


def _rectangles(rng, n):
    """n 32x32 images of one white axis-aligned rectangle each, at random, on black."""
    x = np.zeros((n, 32, 32, 1), np.uint8)
    for image in x:
        (top, bottom), (left, right) = sorted(rng.integers(0, 33, 2)), sorted(rng.integers(0, 33, 2))
        image[top : bottom + 1, left : right + 1] = 255
    return x


def test_the_metric_tells_real_images_from_blurred_and_noisy_ones_and_is_seeded():
    """Against another draw of the same rectangles (the estimate's floor at 128 images): the same images blurred
    lose their sharp edges (the fine band's distance 4x the floor's) but keep their layout (the coarse one's below
    it); noise is far off at every level."""
    rng = np.random.default_rng(2)
    real, other = _rectangles(rng, 128), _rectangles(rng, 128)
    blurred = scipy.ndimage.uniform_filter(real.astype(np.float32), size=(1, 3, 3, 1)).round().astype(np.uint8)
    same, blur = swd.swd(real, other, seed=0), swd.swd(real, blurred, seed=0)
    noise = swd.swd(real, rng.integers(0, 256, real.shape, dtype=np.uint8), seed=0)
    assert same["swd_resolutions"] == [32, 16] and same["swd_images"] == 128
    assert blur["swd_levels"][0] > 3 * same["swd_levels"][0] and blur["swd_levels"][1] < same["swd_levels"][1]
    assert min(noise["swd_levels"]) > 5 * max(same["swd_levels"])
    assert swd.swd(real, other, seed=0) == same
    assert swd.swd(real, other[:100], seed=0)["swd_images"] == 100  # the larger set cut to the smaller's count
    with pytest.raises(ValueError, match="SWD compares images of one shape"):
        swd.swd(real, real[:, :16], seed=0)


def test_eval_swd_keeps_the_best_checkpoint_by_it_without_extractors_and_bad_settings_name_the_fix():
    from jaxgen.evaluation import quality
    from tests.conftest import gan_mnist_config

    c = gan_mnist_config(**{"eval.extractors": (), "eval.swd": True})
    assert quality.best_metric(c) == "swd/swd" and quality.best_mode(c) == "min"
    c.eval.extractors = ("classifier",)
    assert quality.best_metric(c) == "classifier/fid"  # the first extractor's FID, as without SWD
    c.checkpoint.best_metric = "swd/fid"
    with pytest.raises(ValueError, match="the SWD's metric is 'swd/swd'"):
        quality.best_metric(c)
    c.checkpoint.best_metric, c.eval.swd = "swd/swd", False
    with pytest.raises(ValueError, match="computed with --config.eval.swd=True"):
        quality.best_metric(c)
    c.eval.swd, c.eval.extractors, c.eval.num_samples = True, (), 1
    from jaxgen import config_check

    with pytest.raises(ValueError, match="eval.swd compares eval.num_samples samples with as many real images"):
        config_check.check(c)
    with pytest.raises(ValueError, match="these images are 5x6: set --config.eval.swd=False"):
        quality.SampleQuality(c, None, None, {"test": np.zeros((4, 5, 6, 1), np.uint8)})
