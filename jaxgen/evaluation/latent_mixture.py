"""Ex-post density estimation for a VAE's samples (`sample.latents='gmm'`): a Gaussian mixture fit to the posterior
means of training images, from which the decoder's latents are drawn instead of the N(0, I) prior.

A VAE's aggregate posterior rarely fills its prior: latents drawn from N(0, I) fall in regions no training image
encodes to, and decode to blurry or implausible images. Ghosh et al. 2020 ("From Variational to Deterministic
Autoencoders", ICLR; Table 1) fit a 10-component full-covariance mixture to the training codes and sample from
it, which lowered the FID of every autoencoder they tried, the VAE's included; pythae's GaussianMixtureSampler
does the same. The fit is scikit-learn's GaussianMixture (EM from k-means, float64), made on process 0 and sent to
the others, so every process draws from one mixture.
"""

from __future__ import annotations

import logging
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("jaxgen")

LATENTS = ("prior", "gmm")  # sample.latents


def check(sample_config) -> None:
    """sample.latents and, for 'gmm', sample.gmm_components and sample.gmm_examples."""
    latents = sample_config.get("latents", "prior")
    if latents not in LATENTS:
        raise ValueError(f"unknown sample.latents {latents!r}; choices: {', '.join(LATENTS)} ('prior': z ~ N(0, I); "
                         "'gmm': a Gaussian mixture fit to the posterior means of training images)")
    components, examples = sample_config.get("gmm_components", 10), sample_config.get("gmm_examples", 0)
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise ValueError(f"sample.gmm_components must be an int >= 1 (Ghosh et al. 2020 used 10), got {components!r}")
    if isinstance(examples, bool) or not isinstance(examples, int) or examples < 0:
        raise ValueError(f"sample.gmm_examples must be an int >= 0 (the training images the mixture is fit to; "
                         f"0 = all), got {examples!r}")
    if examples and examples < components:
        raise ValueError(f"sample.gmm_examples={examples} is fewer than sample.gmm_components={components}: each "
                         f"component needs images; fit to more (0 = all) or use fewer components")


def check_ready(sample_config, train_examples: int) -> None:
    """Before any work: scikit-learn importable, and enough training images for sample.gmm_components."""
    try:
        import sklearn.mixture  # noqa: F401, PLC0415
    except ImportError as e:
        raise ImportError(f"sample.latents='gmm' fits its mixture with scikit-learn, which does not import here "
                          f"({e}): pip install scikit-learn (a dependency of jaxgen), or use "
                          f"--config.sample.latents=prior") from e
    k = sample_config.gmm_components
    n = min(sample_config.gmm_examples or train_examples, train_examples)
    if n < k:
        raise ValueError(f"sample.latents='gmm': {n} training images for sample.gmm_components={k}; use fewer "
                         f"components, or more images (sample.gmm_examples, 0 = all {train_examples})")


def uses_mixture(config) -> bool:
    """Whether the run's samples come from the fitted mixture (a VAE with sample.latents='gmm'); such a command
    reads the train split, --mode=sample and trained.load included."""
    return config.get("task") == "vae" and config.sample.get("latents", "prior") == "gmm"


def fit(codes: np.ndarray, components: int, seed: int) -> tuple[dict, dict]:
    """(mixture, record) of a full-covariance Gaussian mixture with `components` components fit to `codes`
    [N, D] (float64 EM from a k-means start, seeded by `seed`). mixture: float32 arrays `log_weights` [K],
    `means` [K, D] and `scale_tril` [K, D, D] (each covariance's Cholesky factor), what `draw` takes. record:
    what eval.json and the log say about the fit (components, examples, its mean log-likelihood per code, whether
    EM converged, the iterations)."""
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415 (jaxgen's import stays light)
    from sklearn.mixture import GaussianMixture  # noqa: PLC0415

    codes = np.asarray(codes, np.float64)
    if len(codes) < components:
        raise ValueError(f"sample.latents='gmm': {len(codes)} training images for sample.gmm_components="
                         f"{components}; fit to more images or use fewer components")
    if not np.all(np.isfinite(codes)):
        raise ValueError(f"sample.latents='gmm': {int(np.sum(~np.isfinite(codes).all(-1)))} of the {len(codes)} "
                         "posterior means are not finite: the model has diverged. Evaluate an earlier checkpoint "
                         "(--config.eval.checkpoint=best), or sample from the prior (--config.sample.latents=prior)")
    gmm = GaussianMixture(components, covariance_type="full", random_state=seed)
    with warnings.catch_warnings():  # k-means' and EM's: what matters is said below
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(codes)
    if not gmm.converged_:
        log.warning("sample.latents='gmm': EM did not converge in %d iterations on %d posterior means; the mixture "
                    "of its last iteration is used", gmm.n_iter_, len(codes))
    mixture = {"log_weights": np.log(gmm.weights_).astype(np.float32), "means": gmm.means_.astype(np.float32),
               "scale_tril": np.linalg.cholesky(gmm.covariances_).astype(np.float32)}
    record = {"components": int(components), "examples": len(codes), "converged": bool(gmm.converged_),
              "iterations": int(gmm.n_iter_), "log_likelihood_per_code": float(gmm.score(codes)),
              "prior_log_likelihood_per_code": float(np.mean(_standard_normal_logpdf(codes)))}
    return mixture, record


def _standard_normal_logpdf(codes: np.ndarray) -> np.ndarray:
    return -0.5 * np.sum(codes**2, axis=-1) - 0.5 * codes.shape[-1] * math.log(2 * math.pi)


def draw(mixture: dict, key: jax.Array, dim: int, truncation: float = 0.0) -> jax.Array:
    """One latent [dim] from `mixture` (`fit`'s): a component by its weight, then its mean plus its covariance's
    Cholesky factor times eps ~ N(0, I) (with `truncation` t > 0, eps's coordinates truncated to [-t, t])."""
    mixture = jax.tree.map(jnp.asarray, mixture)
    pick, noise = jax.random.split(key)
    k = jax.random.categorical(pick, mixture["log_weights"])
    eps = (jax.random.truncated_normal(noise, -truncation, truncation, (dim,)) if truncation > 0
           else jax.random.normal(noise, (dim,)))
    return mixture["means"][k] + mixture["scale_tril"][k] @ eps


def broadcast(mixture: dict | None, shapes: tuple[int, int]) -> dict:
    """Process 0's `mixture` on every process (the others pass None); `shapes` is (K, D)."""
    if jax.process_count() == 1:
        return mixture
    from jax.experimental import multihost_utils  # noqa: PLC0415

    k, d = shapes
    like = {"log_weights": np.zeros((k,), np.float32), "means": np.zeros((k, d), np.float32),
            "scale_tril": np.zeros((k, d, d), np.float32)}
    return jax.tree.map(np.asarray, multihost_utils.broadcast_one_to_all(
        mixture if jax.process_index() == 0 else like, is_source=jax.process_index() == 0))


def log_density(mixture: dict, z: jax.Array) -> jax.Array:
    """log q(z) [N] of latents z [N, D] under `mixture` (for tests and analysis)."""
    diff = z[:, None, :] - mixture["means"][None]  # [N, K, D]
    sol = jax.scipy.linalg.solve_triangular(mixture["scale_tril"][None], diff[..., None], lower=True)[..., 0]
    log_det = jnp.sum(jnp.log(jnp.diagonal(mixture["scale_tril"], axis1=-2, axis2=-1)), -1)
    d = z.shape[-1]
    comp = -0.5 * jnp.sum(sol**2, -1) - log_det[None] - 0.5 * d * math.log(2 * math.pi)
    return jax.nn.logsumexp(comp + mixture["log_weights"][None], axis=-1)
