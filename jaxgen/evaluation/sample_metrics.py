"""Sample-quality metrics on feature vectors: FID, KID, Inception Score, precision/recall, density/coverage.

Plain float64 numpy over features a feature extractor produced (real [N, D], generated [M, D]); which extractor
and how many samples stand beside every number a caller reports. Definitions and their sources:

- FID (Heusel et al. 2017): |mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r S_g)^(1/2)). The trace of the square
  root is computed from eigenvalues (as torch-fidelity does): sqrt(S_r) S_g sqrt(S_r) is symmetric positive
  semi-definite with the eigenvalues of S_r S_g, so no complex sqrtm and no eps retry are needed.
- KID (Binkowski et al. 2018): the unbiased MMD^2 with the kernel k(x, y) = (x.y / D + 1)^3, averaged over random
  subsets (torch-fidelity's and clean-fid's defaults: 100 subsets of 1000).
- Inception Score (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) per split, mean and std over 10 splits. Split i
  holds samples i * N // 10 .. (i + 1) * N // 10 - 1 in their order, as openai/improved-gan (torch-fidelity takes
  the same boundaries after shuffling the samples); the std is np.std's, ddof 0, as both.
- Precision and recall (Kynkaanniemi et al. 2019): the share of generated samples inside the union of the real
  samples' k-nearest-neighbour balls (k = 3), and the reverse.
- Density and coverage (Naeem et al. 2020): density counts how many real k-NN balls (k = 5) hold each generated
  sample, divided by k; coverage is the share of real balls that hold at least one generated sample.
- Intra-FID (Miyato and Koyama 2018, for class-conditional models): the FID of each class's generated samples
  against that class's real ones, averaged over the classes. It sees what FID over all classes misses: a model that
  draws the right images for the wrong labels, or too little variety within a class.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("jaxgen")

# pytorch-fid's recommendation for Inception's 2048-d features. A covariance from N samples has rank <= N - 1, so it
# is singular unless N exceeds the feature dimension; FID from fewer samples is biased upwards.
FID_RECOMMENDED_SAMPLES = 2048


def feature_statistics(features: np.ndarray, recommended: int = FID_RECOMMENDED_SAMPLES, what: str = "features",
                       *, warn: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], covariance [D, D]) of features [N, D] in float64 (covariance with N - 1). With `warn`, warns below
    `recommended` samples (2048 for 2048-d Inception features; the classifier extractor passes 256 for its 128-d),
    naming `what` ('the reference', 'the samples')."""
    f = _features(features, f"the features of {what}" if what != "features" else what)
    if f.shape[0] < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {f.shape[0]}; FID wants >= {recommended} "
                         f"for {f.shape[1]}-d features")
    if warn and f.shape[0] < recommended:
        log.warning("FID statistics of %s from %d images (< %d for %d-d features): the covariance is poorly "
                    "estimated and FID is biased upwards; compare only numbers computed with the same counts",
                    what, f.shape[0], recommended, f.shape[1])
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (FID on Inception statistics)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise ValueError(f"statistics do not match: means {mu1.shape} and {mu2.shape}, "
                         f"covariances {s1.shape} and {s2.shape}")
    # S1 = V W V^T. The non-zero eigenvalues of sqrt(S1) S2 sqrt(S1) are those of the k x k matrix A^T S2 A, with
    # A = V_k sqrt(W_k) over S1's k eigenvalues above numpy's rank tolerance (matrix_rank's: largest * D * eps):
    # one D x D x k product, not three D^3 ones. A covariance of N < D samples has k <= N - 1 (intra-FID's classes,
    # a smoke run's few images): with 2048-d statistics of 12 samples 2.6 -> 1.5 s on 2 cores, of 500 1.8 -> 1.2 s.
    w, v = np.linalg.eigh(s1)
    keep = w > max(w[-1], 0.0) * w.size * np.finfo(np.float64).eps
    a = v[:, keep] * np.sqrt(w[keep])
    m = a.T @ s2 @ a
    eig = np.linalg.eigvalsh((m + m.T) / 2.0) if keep.any() else np.zeros(0)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def kernel_inception_distance(real, fake, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, std) over random subsets of the unbiased MMD^2 with the cubic polynomial kernel."""
    r, f = _features(real, "real"), _features(fake, "fake")
    _same_dim(r, f)
    m = min(subset_size, r.shape[0], f.shape[0])
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated samples, got {r.shape[0]} and {f.shape[0]}")
    rng = np.random.default_rng(seed)
    d = r.shape[1]
    values = []
    for _ in range(num_subsets):
        x = r[rng.choice(r.shape[0], m, replace=False)]
        y = f[rng.choice(f.shape[0], m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3)
        off = lambda k: (k.sum() - np.trace(k)) / (m * (m - 1))
        values.append(off(kxx) + off(kyy) - 2.0 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


def inception_score(probs, splits: int = 10) -> tuple[float, float]:
    """(mean, std) over `splits` splits of exp(E KL(p(y|x) || p(y))); probs [N, classes] rows sum to 1.

    Split i is probs[i * N // splits : (i + 1) * N // splits] (openai/improved-gan's boundaries), no shuffle; std
    with ddof 0.
    """
    p = _features(probs, "class probabilities")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-4):
        raise ValueError("inception_score wants class probabilities (softmax of the logits): rows >= 0 summing to 1")
    if p.shape[0] < splits:
        raise ValueError(f"inception_score: {p.shape[0]} samples for {splits} splits")
    scores = []
    n = p.shape[0]
    for part in (p[i * n // splits : (i + 1) * n // splits] for i in range(splits)):
        py = part.mean(0, keepdims=True)
        kl = np.sum(part * (np.log(np.clip(part, 1e-30, None)) - np.log(np.clip(py, 1e-30, None))), axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


class NoClassToScore(ValueError):
    """No class has the 2 real and 2 generated samples a covariance needs: there is no intra-FID."""


def intra_fid(real, real_labels, fake, fake_labels, num_classes: int, recommended: int = FID_RECOMMENDED_SAMPLES,
              *, warn: bool = True) -> dict:
    """Intra-FID of features with class labels (real [N, D] with real_labels int [N]; fake [M, D] with the classes
    they were drawn for, fake_labels int [M]; classes 0..num_classes-1).

    Returns {'intra_fid': the mean of the per-class FIDs over the classes with at least 2 real and 2 generated
    samples, 'per_class': [FID, or None for a class without], 'real_per_class': counts, 'fake_per_class': counts}.
    A class with fewer than 2 of either cannot have a covariance and is left out of the mean (None); with no class
    left, there is no intra-FID and this is an error. With `warn`, one warning when a class has fewer samples than
    `recommended` (each class's FID is biased upwards as its own count falls, so the mean is comparable only at the
    same counts per class)."""
    r, f = _features(real, "real"), _features(fake, "fake")
    _same_dim(r, f)
    counts = []
    for x, y, what in ((r, real_labels, "real"), (f, fake_labels, "generated")):
        y = np.asarray(y)
        if y.shape != (x.shape[0],) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"intra-FID: the {what} labels must be integers [{x.shape[0]}] (one per feature row), "
                             f"got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"intra-FID: {what} labels outside 0..{num_classes - 1} (num_classes={num_classes}): "
                             f"min {y.min()}, max {y.max()}")
        counts.append(np.bincount(y, minlength=num_classes))
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    per_class: list[float | None] = []
    for c in range(num_classes):
        if min(counts[0][c], counts[1][c]) < 2:
            per_class.append(None)
            continue
        mu_r, s_r = r[real_labels == c].mean(0), np.cov(r[real_labels == c], rowvar=False)
        mu_f, s_f = f[fake_labels == c].mean(0), np.cov(f[fake_labels == c], rowvar=False)
        per_class.append(frechet_distance(mu_r, s_r, mu_f, s_f))
    scored = [v for v in per_class if v is not None]
    if not scored:
        raise NoClassToScore(f"intra-FID needs a class with at least 2 real and 2 generated samples; per class, real "
                         f"{counts[0].tolist()}, generated {counts[1].tolist()}")
    fewest = int(min(min(counts[0][c], counts[1][c]) for c, v in enumerate(per_class) if v is not None))
    if warn and fewest < recommended:
        log.warning("Intra-FID from as few as %d images in a class (< %d for %d-d features): each class's FID is "
                    "biased upwards; compare only intra-FIDs computed with the same counts per class",
                    fewest, recommended, r.shape[1])
    return {"intra_fid": float(np.mean(scored)), "per_class": per_class,
            "real_per_class": counts[0].tolist(), "fake_per_class": counts[1].tolist()}


def _kth_neighbour_radii(x: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Distance [N] from each row of x to its k-th nearest other row."""
    radii = np.empty(x.shape[0])
    for s in range(0, x.shape[0], chunk):
        d = _distances(x[s : s + chunk], x)
        radii[s : s + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)
    return radii


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    sq = np.sum(a**2, 1)[:, None] + np.sum(b**2, 1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.clip(sq, 0.0, None))


def _inside_counts(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, chunk: int = 1024,
                   strict: bool = False) -> np.ndarray:
    """[len(points)]: how many balls (centres, radii) hold each point (closed balls, open if `strict`)."""
    inside = np.less if strict else np.less_equal
    counts = np.empty(points.shape[0], np.int64)
    for s in range(0, points.shape[0], chunk):
        counts[s : s + chunk] = np.sum(inside(_distances(points[s : s + chunk], centres), radii[None, :]), axis=1)
    return counts


def precision_recall(real, fake, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.'s improved precision and recall with k-NN balls (closed, `<=`, as in their code)."""
    r, f = _features(real, "real"), _features(fake, "fake")
    _same_dim(r, f)
    _enough(r, f, k)
    precision = np.mean(_inside_counts(f, r, _kth_neighbour_radii(r, k)) > 0)
    recall = np.mean(_inside_counts(r, f, _kth_neighbour_radii(f, k)) > 0)
    return float(precision), float(recall)


def density_coverage(real, fake, k: int = 5) -> tuple[float, float]:
    """Naeem et al.'s density and coverage with the real samples' k-NN balls (open, `<`, as in their prdc code:
    a real point with k exact duplicates has a ball of radius 0 that holds nothing)."""
    r, f = _features(real, "real"), _features(fake, "fake")
    _same_dim(r, f)
    _enough(r, f, k)
    radii = _kth_neighbour_radii(r, k)
    density = _inside_counts(f, r, radii, strict=True).sum() / (k * f.shape[0])
    covered = np.zeros(r.shape[0], bool)
    for s in range(0, r.shape[0], 1024):
        covered[s : s + 1024] = np.min(_distances(r[s : s + 1024], f), axis=1) < radii[s : s + 1024]
    return float(density), float(covered.mean())


def _features(x, what: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array [samples, feature dim], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = int(np.sum(~np.all(np.isfinite(a), axis=tuple(range(1, a.ndim)))))
        raise ValueError(f"{what}: {bad} of {len(a)} rows contain NaN or Inf")
    return a


def _same_dim(r: np.ndarray, f: np.ndarray) -> None:
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and generated features differ in dimension: {r.shape[1]} vs {f.shape[1]}")


def _enough(r: np.ndarray, f: np.ndarray, k: int) -> None:
    if min(r.shape[0], f.shape[0]) <= k:
        raise ValueError(f"k-NN metrics with k={k} need more than {k} real and generated samples, got "
                         f"{r.shape[0]} and {f.shape[0]}")
