"""`shapes2d` (jaxgen.data.shapes2d: dSprites' factor grid drawn by jaxgen) and MIG (jaxgen.evaluation.
disentanglement): the drawing against exact pixel counts and positions, the splits and their factors, MIG against a
hand computation and on codes of known disentanglement, and configs/vae_shapes2d.py:smoke end to end."""

import json
import math

import numpy as np
import pytest

from jaxgen import config_check, data
from jaxgen.data import shapes2d
from jaxgen.evaluation import disentanglement
from jaxgen.training import loop
from tests.conftest import CONFIGS, config_module


def test_the_drawing_puts_each_factor_where_it_says():
    # A square at orientation 0 covers exactly (2 x 10 x scale)^2 pixels; x and y run over 15..49 px.
    square = shapes2d.render(np.array([[0, 5, 0, 0, 0], [0, 0, 0, 0, 0], [0, 5, 0, 31, 0], [0, 5, 0, 0, 31]]))
    assert square.shape == (4, 64, 64, 1) and square.dtype == np.uint8 and set(np.unique(square)) == {0, 255}
    assert [int(np.count_nonzero(im)) for im in square] == [400, 100, 400, 400]

    def centre(im):
        rows, cols = np.nonzero(im[..., 0])
        return rows.mean() + 0.5, cols.mean() + 0.5  # pixel i's centre is at i + 0.5

    assert centre(square[0]) == pytest.approx((15.0, 15.0))  # pixel centres i + 0.5 around 15.0
    assert centre(square[2]) == pytest.approx((15.0, 49.0)) and centre(square[3]) == pytest.approx((49.0, 15.0))
    # Every shape at its largest and every orientation stays inside the frame, at the corners too.
    corners = np.array([[s, 5, o, x, y] for s in range(3) for o in range(0, 40, 3) for x in (0, 31) for y in (0, 31)])
    edges = shapes2d.render(corners)
    border = np.concatenate([edges[:, 0], edges[:, -1], edges[:, :, 0], edges[:, :, -1]], axis=1)
    assert not border.any()
    # The three shapes differ in area at one size (square 400, ellipse ~ pi 13 6.5, heart 273), and turning the
    # ellipse by a quarter turn (orientation index 10 of 39 steps of 2 pi / 39: 92 degrees) swaps its extents.
    three = shapes2d.render(np.array([[s, 5, 0, 15, 15] for s in range(3)] + [[1, 5, 10, 15, 15]]))
    areas = [int(np.count_nonzero(im)) for im in three]
    assert areas[0] == 400 and abs(areas[1] - math.pi * 13 * 6.5) < 12 and 200 < areas[2] < 400
    assert len({im.tobytes() for im in three[:3]}) == 3
    extent = [(np.ptp(np.nonzero(im[..., 0])[0]), np.ptp(np.nonzero(im[..., 0])[1])) for im in three[[1, 3]]]
    assert extent[0][1] > 2 * extent[0][0] - 2 and extent[1][0] > 2 * extent[1][1] - 2
    # Turning a shape keeps its centre where x and y put it: the heart's centroid stays within half a pixel.
    hearts = shapes2d.render(np.array([[2, 5, o, 15, 15] for o in range(0, 40, 5)]))
    for im in hearts:
        assert centre(im) == pytest.approx((15 + 34 * 15 / 31,) * 2, abs=0.5)  # x, y index 15 of 0..31


def test_the_splits_are_disjoint_and_their_factors_draw_their_images():
    cfg = config_module(CONFIGS / "vae_shapes2d.py").get_config("smoke").data
    cfg.unlock()
    cfg.num_examples = 300
    train, test = data.load(cfg, "train"), data.load(cfg, "test")
    assert len(train) == len(test) == 300 and train.shape == (64, 64, 1)
    f_train, f_test = shapes2d.factors(cfg, "train"), shapes2d.factors(cfg, "test")
    np.testing.assert_array_equal(shapes2d.render(f_train), train.image)
    np.testing.assert_array_equal(f_train[:, 0], train.label)
    cfg.num_examples = 0
    whole_test = shapes2d.factors(cfg, "test")
    assert len(whole_test) == shapes2d.TEST_SIZE and len(shapes2d.factors(cfg, "train")) == 737_280 - 10_000
    np.testing.assert_array_equal(whole_test[:300], f_test)
    index = lambda f: set(np.ravel_multi_index(f.T, shapes2d.SIZES).tolist())  # noqa: E731
    whole_train = shapes2d.factors(cfg, "train")
    assert not index(whole_test) & index(whole_train) and len(index(whole_test)) == shapes2d.TEST_SIZE
    assert len(index(whole_test) | index(whole_train)) == 737_280
    # With a validation split held out of train, the factors of each split follow its images.
    cfg.num_examples, cfg.validation_examples = 300, 40
    train, validation, test = data.load_splits(cfg)
    for split in (train, validation, test):
        np.testing.assert_array_equal(shapes2d.render(data.split_factors(cfg, split.split)), split.image)
    assert len(validation) == 40 and len(train) == 260
    assert np.bincount(whole_test[:, 0]).min() > 3000  # each shape about a third of the test split
    with pytest.raises(ValueError, match="a 'validation' split is held out of 'train' by data.validation_examples"):
        shapes2d.factors(cfg, "validation")


def _mi_by_hand(a: np.ndarray, b: np.ndarray) -> float:
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])))


def test_mig_is_the_normalised_gap_of_the_mutual_information():
    rng = np.random.default_rng(0)
    n = 4000
    factors = np.stack([rng.integers(0, 3, n), rng.integers(0, 8, n)], axis=1)
    noise = rng.normal(size=(n, 3))
    # latent 0 is factor 0, latent 1 factor 1 (each with a little noise), latent 2 noise: MIG near 1
    codes = np.stack([factors[:, 0] + 0.01 * noise[:, 0], factors[:, 1] + 0.01 * noise[:, 1], noise[:, 2]], axis=1)
    out = disentanglement.mig(codes, factors, ("a", "b"))
    z = disentanglement.discretize(codes)
    for j in range(3):  # disentanglement_lib's binning: digitize(x, histogram(x, 20)[1][:-1]), from 1
        np.testing.assert_array_equal(z[:, j] + 1, np.digitize(codes[:, j], np.histogram(codes[:, j], 20)[1][:-1]))
    mi = np.array([[_mi_by_hand(factors[:, k], z[:, j]) for k in range(2)] for j in range(3)])
    np.testing.assert_allclose(out["mutual_information"], mi, rtol=1e-10, atol=1e-12)
    entropy = [_mi_by_hand(factors[:, k], factors[:, k]) for k in range(2)]
    gaps = [(np.sort(mi[:, k])[-1] - np.sort(mi[:, k])[-2]) / entropy[k] for k in range(2)]
    assert out["mig_per_factor"] == pytest.approx(dict(zip(("a", "b"), gaps, strict=True)))
    assert out["mig"] == pytest.approx(np.mean(gaps)) and out["mig"] > 0.9
    assert out["mig_latent_per_factor"] == {"a": 0, "b": 1}
    # the same factor in two latents: no gap; a rotation that mixes the two factors: a smaller gap
    copies = np.stack([codes[:, 0], codes[:, 0] + 0.01 * noise[:, 2], codes[:, 1]], axis=1)
    assert disentanglement.mig(copies, factors, ("a", "b"))["mig_per_factor"]["a"] < 0.05
    mixed = np.stack([codes[:, 0] + codes[:, 1], codes[:, 0] - codes[:, 1], noise[:, 2]], axis=1)
    assert disentanglement.mig(mixed, factors, ("a", "b"))["mig"] < 0.5 * out["mig"]
    with pytest.raises(ValueError, match="MIG compares the two latents most informative of each factor"):
        disentanglement.mig(codes[:, :1], factors, ("a", "b"))
    assert np.isnan(disentanglement.mig(np.where(codes > 2, np.nan, codes), factors, ("a", "b"))["mig"])


def test_the_factor_vae_score_finds_which_latent_each_factor_owns():
    """Codes that are the factors (latent d = factor d, a third latent noise, a fourth collapsed) score 1; the same
    factors rotated into each other, less; random codes, about chance (1 / K)."""
    sizes = (4, 5)
    rng = np.random.default_rng(0)

    def score(code_of, **kw):
        return disentanglement.factor_vae_score(lambda images, f: code_of(f), sizes, lambda f: f, seed=1, votes=600,
                                                **kw)

    def aligned(f):
        return np.stack([f[:, 0], f[:, 1], rng.normal(size=len(f)), np.zeros(len(f))], 1).astype(float)

    out = score(aligned)
    assert out["factor_vae_score"] == 1.0 and out["factor_vae"]["active_latents"] == 3
    assert out["factor_vae"]["train_votes"] == 400 and np.sum(out["factor_vae"]["votes_per_latent_and_factor"]) == 600
    mixed = score(lambda f: aligned(f) @ np.array([[1, 1, 0, 0], [1, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert mixed["factor_vae_score"] < 0.9
    chance = score(lambda f: rng.normal(size=(len(f), 3)))
    assert 0.3 < chance["factor_vae_score"] < 0.7  # K = 2
    only = score(aligned, factors=(1,))  # votes only for factor 1: its latent is the only one voted for
    assert np.asarray(only["factor_vae"]["votes_per_latent_and_factor"])[:, 0].sum() == 0
    assert only["factor_vae_score"] == 1.0  # and no latent is classified as the factor never voted for
    assert np.isnan(score(lambda f: np.where(f[:, :1] > 2, np.nan, aligned(f)))["factor_vae_score"])  # diverged


def test_vae_shapes2d_smoke_trains_and_its_evaluations_give_mig(tmp_path, one_device):
    """The final evaluation's MIG and FactorVAE score, after 10 steps; the evaluation during training (the same
    programs on other params) is left out: it took 4-6 s of the test's ~33 s on 2 cores, and steps 11-20 ~3 s."""
    c = config_module(CONFIGS / "vae_shapes2d.py").get_config("smoke")
    c.unlock()
    c.output.progress = c.output.plots = False
    c.eval.every, c.train.steps = 0, 10
    final = loop.train_and_evaluate(c, tmp_path)
    assert 0 <= final["mig"] <= 1
    record = json.loads((tmp_path / "eval.json").read_text())
    block = record["disentanglement"]
    assert set(block["mig_per_factor"]) == set(shapes2d.FACTORS)
    assert "MIG as disentanglement_lib estimates it" in block["metric"]
    assert 0 <= final["factor_vae_score"] <= 1 and block["factor_vae"]["votes"] == c.eval.factor_vae_votes == 30
    assert np.asarray(block["mutual_information"]).shape == (c.model.latent_dim, 5)
    assert any("mig" in json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines())
    assert json.loads((tmp_path / "best" / "best.json").read_text())["metric"] == "elbo"  # MIG would be supervised


def test_best_metric_mig_needs_a_vae_with_two_latents_on_a_dataset_with_factors(smoke_config):
    smoke_config.checkpoint.best_metric = "mig"
    with pytest.raises(ValueError, match=r"best_metric='mig' scores the latents against the dataset's known "
                                         r"generative factors, which only shapes2d has \(data.name='mnist_5k'\)"):
        config_check.check(smoke_config)
    c = config_module(CONFIGS / "vae_shapes2d.py").get_config("smoke")
    c.unlock()
    c.checkpoint.best_metric = "mig"
    config_check.check(c)
    c.model.latent_dim = 1
    with pytest.raises(ValueError, match=r"model.latent_dim=1 has fewer: set --config.model.latent_dim=2 or more"):
        config_check.check(c)
    g = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    g.unlock()
    g.checkpoint.best_metric = "mig"
    with pytest.raises(ValueError, match=r"a GAN has no encoder: keep its best checkpoint by FID"):
        config_check.check(g)


def test_a_conditional_vae_is_scored_without_the_factor_its_labels_give(tmp_path, one_device):
    """model.num_classes=3 conditions on the shape (the labels): MIG leaves that factor out, and says so."""
    c = config_module(CONFIGS / "vae_shapes2d.py").get_config("smoke")
    c.unlock()
    c.output.progress = c.output.plots = False
    c.model.num_classes, c.train.steps, c.eval.every = 3, 10, 0
    loop.train_and_evaluate(c, tmp_path)
    block = json.loads((tmp_path / "eval.json").read_text())["disentanglement"]
    assert set(block["mig_per_factor"]) == {"scale", "orientation", "x", "y"}
    assert np.asarray(block["factor_vae"]["votes_per_latent_and_factor"])[:, 0].sum() == 0  # no vote fixes the shape
    assert "(not shape: the labels condition the model on it)" in block["metric"]
