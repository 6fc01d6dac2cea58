"""Disentanglement of a VAE's latents against a dataset's known generative factors (`shapes2d`'s): the mutual
information gap, MIG (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", NeurIPS).

For each factor v_k, the mutual information I(z_j; v_k) with every latent j, its two largest values' gap, divided by
the factor's entropy H(v_k): near 1 when one latent alone carries the factor, 0 when none or several carry it alike.
MIG is the mean over the factors. As disentanglement_lib (Locatello et al. 2019) estimates it, not as Chen et al. do
(from the whole posterior q(z|x)): the latents are the posterior means of the images, each discretized into `bins`
equal-width bins over its range, and the mutual information is that of the discrete pairs (scikit-learn's
mutual_info_score, in nats). With 20 bins a factor of more values cannot reach 1: a latent that is exactly a factor of
40 equally likely values carries at most log 20 of its log 40 nats (0.81).
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger("jaxgen")

BINS = 20  # disentanglement_lib's default for MIG


def discretize(codes: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Each column of codes [N, D] as bin indices int [N, D] of `bins` equal-width bins over its range (a constant
    column: all in one bin)."""
    codes = np.asarray(codes, np.float64)
    out = np.zeros(codes.shape, np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins)
        out[:, j] = np.digitize(codes[:, j], edges[1:-1])
    return out


def mutual_information(codes: np.ndarray, factors: np.ndarray, bins: int = BINS) -> np.ndarray:
    """I(z_j; v_k) in nats, [D, K], of the discretized codes [N, D] and the factors' indices int [N, K]."""
    from sklearn.metrics import mutual_info_score  # noqa: PLC0415 (jaxgen's import stays light)

    z = discretize(codes, bins)
    return np.array([[mutual_info_score(factors[:, k], z[:, j]) for k in range(factors.shape[1])]
                     for j in range(z.shape[1])])


def mig(codes: np.ndarray, factors: np.ndarray, names: tuple[str, ...], bins: int = BINS) -> dict:
    """{'mig': the mean gap, 'mig_per_factor': {name: gap}, 'mig_latent_per_factor': {name: the latent carrying it
    most}, 'mutual_information': [D][K] nats, 'factor_entropy': {name: nats}} of the posterior means codes [N, D]
    against factors int [N, K] (their names in `names`). A factor with one value has no entropy and is left out."""
    from sklearn.metrics import mutual_info_score  # noqa: PLC0415

    codes, factors = np.asarray(codes), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors) or factors.shape[1] != len(names):
        raise ValueError(f"MIG takes codes [N, D] and factors [N, K] with K names; got {codes.shape}, "
                         f"{factors.shape} and {len(names)} names")
    if codes.shape[1] < 2:
        raise ValueError(f"MIG compares the two latents most informative of each factor; this model has "
                         f"{codes.shape[1]} latent")
    if not np.all(np.isfinite(codes)):  # a diverged model: no number, and the evaluation's other numbers stand
        log.warning("MIG: %d of the %d posterior means are not finite (the model has diverged): MIG is NaN",
                    int(np.sum(~np.isfinite(codes).all(-1))), len(codes))
        return {"mig": float("nan")}
    mi = mutual_information(codes, factors, bins)
    entropy = np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(factors.shape[1])])
    top = np.sort(mi, axis=0)[::-1]
    kept = entropy > 0
    gaps = np.where(kept, (top[0] - top[1]) / np.where(kept, entropy, 1.0), np.nan)
    return {"mig": float(np.mean(gaps[kept])),
            "mig_per_factor": {n: float(g) for n, g, k in zip(names, gaps, kept, strict=True) if k},
            "mig_latent_per_factor": {n: int(j) for n, j, k in zip(names, np.argmax(mi, axis=0), kept, strict=True)
                                      if k},
            "mutual_information": mi.tolist(), "factor_entropy": dict(zip(names, entropy.tolist(), strict=True))}
