"""Sample-quality metrics against reference computations: FID against pytorch-fid's formula (scipy's sqrtm),
KID, precision/recall and density/coverage against brute-force loops, IS against a hand computation."""

import itertools
import logging

import numpy as np
import pytest
import scipy.linalg

from jaxgen.evaluation import sample_metrics as sm
from tests.conftest import pytorch_fid

RNG = np.random.default_rng(0)


def _pytorch_fid_formula(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance (its published formula): scipy's sqrtm of the product."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_fid_equals_pytorch_fids_formula():
    a = RNG.normal(size=(500, 16))
    b = RNG.normal(size=(400, 16)) @ RNG.normal(size=(16, 16)) * 0.5 + 0.3
    mu1, s1 = np.mean(a, 0), np.cov(a, rowvar=False)
    mu2, s2 = np.mean(b, 0), np.cov(b, rowvar=False)
    assert sm.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(_pytorch_fid_formula(mu1, s1, mu2, s2), rel=1e-6)
    assert abs(sm.frechet_distance(mu1, s1, mu1, s1)) < 1e-8


def test_fid_equals_the_pytorch_fid_packages_own_function():
    _, fid_score = pytorch_fid("fid_score")  # in the test extra
    a = RNG.normal(size=(300, 24))
    b = RNG.normal(size=(300, 24)) @ RNG.normal(size=(24, 24)) * 0.3 - 0.2
    stats = [sm.feature_statistics(x, recommended=2) for x in (a, b)]
    expected = fid_score.calculate_frechet_distance(*stats[0], *stats[1])
    assert sm.frechet_distance(*stats[0], *stats[1]) == pytest.approx(expected, rel=1e-6)


def test_fid_of_rank_deficient_statistics_is_real_and_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        mu1, s1 = sm.feature_statistics(RNG.normal(size=(10, 32)))  # 10 samples, 32 dims
    assert "poorly estimated" in caplog.text
    mu2, s2 = sm.feature_statistics(RNG.normal(size=(10, 32)) + 1.0)
    fid = sm.frechet_distance(mu1, s1, mu2, s2)
    assert np.isfinite(fid) and fid > 0
    # frechet_distance keeps S1's 9 non-zero eigenvalues (a 9 x 9 problem): the same as the whole 32 x 32 one,
    # sqrt(S1) S2 sqrt(S1) with every eigenvalue, to 1e-7 (its 23 zero eigenvalues come out as ~1e-16: their square
    # roots add ~1e-8 each)
    w, v = np.linalg.eigh(s1)
    root = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    trace_sqrt = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s2 @ root), 0.0, None)))
    diff = mu1 - mu2
    assert fid == pytest.approx(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt, rel=1e-7)
    # a covariance of identical samples (no non-zero eigenvalue): the means' distance and the other's trace
    assert sm.frechet_distance(mu1, np.zeros_like(s1), mu2, s2) == pytest.approx(diff @ diff + np.trace(s2))


def test_too_few_samples_and_bad_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        sm.feature_statistics(np.zeros((1, 4)))
    with pytest.raises(ValueError, match=r"expected a 2-D array \[samples, feature dim\]"):
        sm.feature_statistics(np.zeros((4,)))
    with pytest.raises(ValueError, match="differ in dimension: 4 vs 5"):
        sm.precision_recall(np.zeros((10, 4)), np.zeros((10, 5)))
    with pytest.raises(ValueError, match="need more than 3"):
        sm.precision_recall(np.zeros((3, 4)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="class probabilities"):
        sm.inception_score(np.ones((20, 3)))


def test_kid_equals_brute_force_unbiased_mmd():
    x, y = RNG.normal(size=(12, 5)), RNG.normal(size=(12, 5)) + 0.5
    k = lambda a, b: (a @ b / 5 + 1) ** 3
    m = 12
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = sm.kernel_inception_distance(x, y, num_subsets=3, subset_size=m)  # whole sets: same every subset
    assert mean == pytest.approx(xx + yy - 2 * xy, rel=1e-10) and std == pytest.approx(0.0, abs=1e-12)


def test_kid_from_subsets_is_unbiased_and_its_std_is_their_spread():
    """Subsets smaller than the sets (the usual 100 x 1000 of 10k samples): each subset's MMD^2 is unbiased, so
    their mean lands near the whole sets' value, and std is the spread of the subset values (not 0)."""
    x, y = RNG.normal(size=(400, 6)), RNG.normal(size=(400, 6)) * 1.2 + 0.3
    whole, _ = sm.kernel_inception_distance(x, y, num_subsets=1, subset_size=400)
    mean, std = sm.kernel_inception_distance(x, y, num_subsets=200, subset_size=50, seed=3)
    assert std > 0.05 * whole
    assert abs(mean - whole) < 4 * std / np.sqrt(200)


def test_inception_score_equals_a_hand_computation():
    # Split 1: two confident, different classes -> IS 2. Split 2: uniform -> IS 1.
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [0.5, 0.5]])
    mean, std = sm.inception_score(p, splits=2)
    assert mean == pytest.approx(1.5) and std == pytest.approx(0.5)
    # 5 samples in 2 splits: improved-gan's boundaries i * 5 // 2 give splits of 2 and 3 (np.array_split: 3 and 2).
    p = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    mean, _ = sm.inception_score(p, splits=2)
    assert mean == pytest.approx((2.0 + 1.0) / 2)  # the second split, all one class, scores 1


def _brute_knn_radius(x, i, k):
    return sorted(np.linalg.norm(x[i] - x[j]) for j in range(len(x)) if j != i)[k - 1]


def test_precision_recall_density_coverage_equal_brute_force():
    r, f = RNG.normal(size=(30, 4)), RNG.normal(size=(25, 4)) * 1.3 + 0.4
    for k in (3, 5):
        rr = [_brute_knn_radius(r, i, k) for i in range(len(r))]
        fr = [_brute_knn_radius(f, j, k) for j in range(len(f))]
        dist = np.array([[np.linalg.norm(f[j] - r[i]) for i in range(len(r))] for j in range(len(f))])
        precision = np.mean((dist <= np.array(rr)).any(1))  # closed balls (Kynkaanniemi et al.)
        recall = np.mean([any(dist[j, i] <= fr[j] for j in range(len(f))) for i in range(len(r))])
        assert sm.precision_recall(r, f, k=k) == pytest.approx((precision, recall))
        inside = dist < np.array(rr)  # open balls (Naeem et al.'s prdc)
        density, coverage = inside.sum() / (k * len(f)), np.mean(inside.any(0))
        assert sm.density_coverage(r, f, k=k) == pytest.approx((density, coverage))


def test_balls_of_duplicates_follow_the_reference_codes():
    """Six copies of one real point: their 5-NN balls have radius 0. Fakes on that point are inside them for
    precision (closed balls, Kynkaanniemi et al.'s code) but not for density or coverage (open balls, prdc)."""
    r = np.concatenate([np.zeros((6, 2)), RNG.normal(size=(10, 2)) + 5.0])
    f = np.zeros((6, 2))
    assert sm.precision_recall(r, f, k=5)[0] == 1.0
    assert sm.density_coverage(r, f, k=5) == (0.0, 0.0)
