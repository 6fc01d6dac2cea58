"""Intra-FID (Miyato and Koyama 2018): each class's FID, averaged over the classes, against an independent computation
(scipy's sqrtm); what it sees that FID over all classes does not; the classes it leaves out; its errors; and where
the final evaluation of a class-conditional model puts it, beside its floor on real training images."""

import logging

import ml_collections
import numpy as np
import pytest
import scipy.linalg

from jaxgen import config as config_lib
from jaxgen.evaluation import quality, sample_metrics


def _scipy_fid(a, b):
    """FID the textbook way (pytorch-fid's formula with scipy's complex sqrtm), independent of sample_metrics."""
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _classes(n_per_class, means, seed, scale=1.0):
    """Features of len(means) Gaussian classes: n_per_class rows each, N(means[c], scale^2 I), with their labels."""
    rng = np.random.default_rng(seed)
    x = np.concatenate([m + scale * rng.normal(size=(n_per_class, len(m))) for m in means])
    return x, np.repeat(np.arange(len(means)), n_per_class)


MEANS = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])


def test_intra_fid_is_the_mean_of_each_classs_fid_as_scipy_computes_it():
    real, yr = _classes(60, MEANS, seed=0)
    fake, yf = _classes(50, MEANS + 0.5, seed=1, scale=1.3)
    out = sample_metrics.intra_fid(real, yr, fake, yf, num_classes=3, warn=False)
    per_class = [_scipy_fid(real[yr == c], fake[yf == c]) for c in range(3)]
    np.testing.assert_allclose(out["per_class"], per_class, rtol=1e-6)
    np.testing.assert_allclose(out["intra_fid"], np.mean(per_class), rtol=1e-6)
    assert out["real_per_class"] == [60, 60, 60] and out["fake_per_class"] == [50, 50, 50]


def test_intra_fid_sees_images_drawn_for_the_wrong_class_which_fid_does_not():
    """A generator that draws every class's images well but for the wrong labels: the same features, so the same
    FID as one with the right labels, but an intra-FID many times larger."""
    real, yr = _classes(200, MEANS, seed=0)
    fake, yf = _classes(200, MEANS, seed=1)
    right = sample_metrics.intra_fid(real, yr, fake, yf, 3, warn=False)["intra_fid"]
    wrong = sample_metrics.intra_fid(real, yr, fake, (yf + 1) % 3, 3, warn=False)["intra_fid"]
    assert right < 0.5 and wrong > 20 * right  # each class's means 4 apart: |d mu|^2 = 16 or 32
    np.testing.assert_allclose(wrong, np.mean([16.0, 32.0, 16.0]), rtol=0.1)


def test_a_class_without_two_of_each_is_left_out_and_the_counts_are_said(caplog):
    real, yr = _classes(10, MEANS, seed=0)
    fake, yf = _classes(10, MEANS, seed=1)
    yf[yf == 2] = 0  # no generated sample of class 2; class 0 has 20
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        out = sample_metrics.intra_fid(real, yr, fake, yf, 4, recommended=64)
    assert out["per_class"][2] is None and out["per_class"][3] is None  # class 3: no real image either
    assert out["intra_fid"] == pytest.approx(np.mean(out["per_class"][:2]))
    assert out["real_per_class"] == [10, 10, 10, 0] and out["fake_per_class"] == [20, 10, 0, 0]
    assert "Intra-FID from as few as 10 images in a class (< 64 for 4-d features)" in caplog.text
    with pytest.raises(ValueError, match=r"needs a class with at least 2 real and 2 generated samples; per class, "
                                         r"real \[10, 10, 0\], generated \[0, 0, 30\]"):
        sample_metrics.intra_fid(real[yr < 2], yr[yr < 2], fake, np.full(30, 2), 3, warn=False)


def test_labels_that_do_not_fit_the_features_or_the_classes_are_errors():
    real, yr = _classes(5, MEANS, seed=0)
    with pytest.raises(ValueError, match=r"the generated labels must be integers \[15\].*got float64 \(15,\)"):
        sample_metrics.intra_fid(real, yr, real, yr.astype(float), 3)
    with pytest.raises(ValueError, match=r"the real labels must be integers \[15\].*\(14,\)"):
        sample_metrics.intra_fid(real, yr[:14], real, yr, 3)
    with pytest.raises(ValueError, match=r"real labels outside 0..1 \(num_classes=2\): min 0, max 2"):
        sample_metrics.intra_fid(real, yr, real, yr % 2, 2)


def features(images):
    """A user's extractor's features: 8x8 mean-pooled pixels."""
    x = images.astype(np.float64).reshape(len(images), 8, images.shape[1] // 8, 8, images.shape[2] // 8, -1)
    return x.mean((2, 4)).reshape(len(images), -1), None


def pooled(config, mesh, train_data):
    return quality.Extractor("pooled", "8x8 mean-pooled pixels", "pooled_v1", features, recommended=8)


NAME = "tests.test_intra_fid:pooled"


def _labelled_images(n_per_class, num_classes, seed):
    """Images whose brightness follows their class (class c around 40 + 50 c), and their labels."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes), n_per_class)
    x = np.clip(rng.normal(40 + 50 * y[:, None, None, None], 20, (len(y), 16, 16, 1)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int32)


@pytest.mark.parametrize("num_classes", [0, 4])
def test_the_final_evaluation_of_a_conditional_model_gives_its_intra_fid_and_that_of_real_images(tmp_path,
                                                                                                 num_classes):
    c = config_lib.gan_config()
    c.data.name, c.data.data_dir, c.eval.extractors = "mnist_5k", str(tmp_path / "data"), (NAME,)
    c.model.num_classes = num_classes
    train_x, train_y = _labelled_images(40, 4, seed=0)
    test_x, test_y = _labelled_images(30, 4, seed=1)
    train = ml_collections.ConfigDict({"image": train_x, "label": train_y})
    sq = quality.SampleQuality(c, None, train, {"test": test_x}, {"test": test_y})
    samples, asked = _labelled_images(25, 4, seed=2)
    labels = (asked + 1) % 4  # drawn for the wrong class: a large intra-FID
    block = sq.evaluate(samples, full=True, labels=labels if num_classes else None)[NAME]
    if not num_classes:  # an unconditional model: no labels, no intra-FID, the training images drawn at random
        assert not any(k.startswith("intra_fid") for k in block)
        return
    assert "intra_fid" not in sq.evaluate(samples, full=False, labels=labels)[NAME]  # the final evaluation's only
    ref, fake = features(test_x)[0], features(samples)[0]
    expected = sample_metrics.intra_fid(ref, test_y, fake, labels, 4, warn=False)
    assert block["intra_fid"] == pytest.approx(expected["intra_fid"], rel=1e-6)
    assert block["intra_fid_samples_per_class"] == [25] * 4 and block["intra_fid_reference_per_class"] == [30] * 4
    assert block["intra_fid_per_class"] == pytest.approx(expected["per_class"], rel=1e-4)
    # The floor: 25 training images of each class (as many as samples of it), drawn by the seed, scored the same way.
    rng = np.random.default_rng(c.seed)
    chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(train_y == k))[:25] for k in range(4)]))
    floor = sample_metrics.intra_fid(ref, test_y, features(train_x[chosen])[0], train_y[chosen], 4, warn=False)
    assert block["intra_fid_train_images"] == pytest.approx(floor["intra_fid"], rel=1e-6)
    assert block["num_train_images"] == 100
    assert block["intra_fid_train_images"] < block["intra_fid"] / 10
    flat = quality.flatten({NAME: block})
    assert f"{NAME}/intra_fid" in flat and f"{NAME}/intra_fid_per_class" not in flat  # numbers only


def test_a_final_evaluation_with_too_few_samples_per_class_warns_and_keeps_the_other_numbers(tmp_path, caplog):
    """6 samples over 8 classes: no class has 2, so there is no intra-FID, said in a warning; FID and the rest stand
    (the run keeps what it trained)."""
    c = config_lib.gan_config()
    c.data.name, c.data.data_dir, c.eval.extractors = "mnist_5k", str(tmp_path / "data"), (NAME,)
    c.model.num_classes = 8
    train_x, train_y = _labelled_images(10, 8, seed=0)
    test_x, test_y = _labelled_images(10, 8, seed=1)
    sq = quality.SampleQuality(c, None, ml_collections.ConfigDict({"image": train_x, "label": train_y}),
                               {"test": test_x}, {"test": test_y})
    samples, _ = _labelled_images(1, 8, seed=2)
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        block = sq.evaluate(samples[:6], full=True, labels=np.arange(6) % 8)[NAME]
    assert "intra_fid" not in block and block["fid"] > 0 and "kid_mean" in block
    assert "No intra-FID for pooled (mnist_5k test): intra-FID needs a class with at least 2" in caplog.text
