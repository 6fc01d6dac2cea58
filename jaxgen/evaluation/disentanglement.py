"""Disentanglement of a VAE's latents against a dataset's known generative factors (`shapes2d`'s): the mutual
information gap, MIG (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs", NeurIPS), and the FactorVAE
metric (Kim and Mnih 2018; `factor_vae_score`).

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
from collections.abc import Callable

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


def factor_vae_score(encode: Callable, sizes: tuple[int, ...], render: Callable, *, seed: int, votes: int,
                     batch: int = 64, variance_images: int = 10_000, factors: tuple[int, ...] | None = None,
                     threshold: float = 0.05) -> dict:
    """The FactorVAE metric (Kim and Mnih 2018, "Disentangling by Factorising", section 4): the accuracy of a
    majority-vote classifier that tells which factor was held fixed from the latent that varies least.

    The latents' scale: the std of the posterior means of `variance_images` random images; latents below `threshold`
    have collapsed to the prior and are left out. A vote: one factor k (of `factors`, default all) at one random value,
    the others random, in `batch` images (`render` draws them); their means, divided by the scale, vary least along
    latent d: the vote (d, k). Two thirds of the `votes` train the classifier (each latent's most voted factor), the
    others score it: `factor_vae_score` is that held-out accuracy, 1 when each factor owns a latent, 1 / K by chance
    (K the factors voted for: those of `factors` with more than one value). Non-finite codes: NaN.
    encode(images uint8 [N, ...], factors int [N, K]) -> posterior means [N, D] (the factors: for a model that reads
    the labels). Deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    kept = tuple(k for k in (range(len(sizes)) if factors is None else factors) if sizes[k] > 1)  # one value: no vote

    def draw(n):
        return np.stack([rng.integers(0, s, n) for s in sizes], axis=1)

    def diverged(codes):
        if np.all(np.isfinite(codes)):
            return None
        log.warning("FactorVAE metric: %d of %d posterior means are not finite (the model has diverged): the score is "
                    "NaN", int(np.sum(~np.isfinite(codes).all(-1))), len(codes))
        return {"factor_vae_score": float("nan"), "factor_vae": {"diverged": True}}

    f = draw(variance_images)
    codes = encode(render(f), f)
    if (out := diverged(codes)) is not None:
        return out
    scale = np.std(codes, axis=0, ddof=1)
    active = scale >= threshold
    counts = np.zeros((len(scale), len(sizes)), np.int64)  # [latent, factor]: the training votes
    held_out = np.zeros_like(counts)
    train_votes = 2 * votes // 3
    record = {"active_latents": int(active.sum()), "votes": int(votes), "train_votes": int(train_votes),
              "batch": int(batch), "variance_images": int(variance_images)}
    if not active.any():  # every latent collapsed: nothing tells the factors apart
        log.warning("FactorVAE metric: no latent's posterior mean varies by %g or more over the data: score 0",
                    threshold)
        return {"factor_vae_score": 0.0, "factor_vae": {**record, "votes_per_latent_and_factor": counts.tolist()}}
    scale = np.where(active, scale, 1.0)
    for lo in range(0, votes, 100):
        n = min(100, votes - lo)
        k = rng.choice(kept, size=n)
        f = draw(n * batch).reshape(n, batch, len(sizes))
        f[np.arange(n), :, k] = f[np.arange(n), 0, k][:, None]  # the vote's factor at one value in its batch
        flat = f.reshape(n * batch, len(sizes))
        codes = encode(render(flat), flat)
        if (out := diverged(codes)) is not None:
            return out
        codes = codes.reshape(n, batch, -1) / scale
        variance = np.where(active, np.var(codes, axis=1, ddof=1), np.inf)
        least = np.argmin(variance, axis=1)
        for i, (d, factor) in enumerate(zip(least, k, strict=True)):
            (counts if lo + i < train_votes else held_out)[d, factor] += 1
    voted = np.asarray(kept)
    classifier = voted[np.argmax(counts[:, voted], axis=1)]  # each latent's majority factor (ties: the first)
    accuracy = float(np.sum(held_out[np.arange(len(scale)), classifier]) / max(1, held_out.sum()))
    train_accuracy = float(np.sum(counts.max(axis=1)) / max(1, counts.sum()))
    return {"factor_vae_score": accuracy, "factor_vae": {
        **record, "train_accuracy": train_accuracy, "votes_per_latent_and_factor": (counts + held_out).tolist()}}
