"""sample.latents='gmm' (jaxgen.evaluation.latent_mixture): the mixture fit against a known one and sklearn's own
densities, its draws against its moments, and a trained VAE's samples from it in --mode=sample, trained.load and
--mode=eval, with the config's checks."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from jaxgen import config_check
from jaxgen.evaluation import latent_mixture
from jaxgen.training import modes, trained


def _known(n: int, seed: int = 0):
    """n codes [n, 2] from three well-separated components of weights 0.5, 0.3, 0.2."""
    rng = np.random.default_rng(seed)
    means = np.array([[-4.0, 0.0], [4.0, 1.0], [0.0, 5.0]])
    scales = np.array([[[1.0, 0.0], [0.5, 0.6]], [[0.4, 0.0], [0.0, 0.8]], [[0.7, 0.0], [-0.3, 0.5]]])
    k = rng.choice(3, size=n, p=[0.5, 0.3, 0.2])
    return means[k] + np.einsum("nij,nj->ni", scales[k], rng.normal(size=(n, 2))), means, scales


def test_the_fit_finds_a_known_mixture_and_its_draws_and_densities_follow_it():
    codes, means, scales = _known(6000)
    mixture, record = latent_mixture.fit(codes, 3, seed=0)
    order = np.argmin(np.linalg.norm(means[:, None] - mixture["means"][None], axis=-1), axis=1)  # as in `means`
    assert sorted(order) == [0, 1, 2]
    np.testing.assert_allclose(mixture["means"][order], means, atol=0.1)
    np.testing.assert_allclose(np.exp(mixture["log_weights"][order]), [0.5, 0.3, 0.2], atol=0.02)
    covariances = mixture["scale_tril"] @ np.swapaxes(mixture["scale_tril"], -1, -2)
    np.testing.assert_allclose(covariances[order], scales @ np.swapaxes(scales, -1, -2), atol=0.1)
    assert record["components"] == 3 and record["examples"] == 6000 and record["converged"]
    assert record["log_likelihood_per_code"] > record["prior_log_likelihood_per_code"]
    # log q(z) as sklearn's own fit computes it (same seed: the same mixture, in float64 there)
    reference = GaussianMixture(3, covariance_type="full", random_state=0).fit(codes)
    # (jitted here and below: outside jit the density and the vmapped draws are a program per op, ~90 in all)
    np.testing.assert_allclose(jax.jit(latent_mixture.log_density)(mixture, jnp.asarray(codes[:200], jnp.float32)),
                               reference.score_samples(codes[:200]), rtol=1e-4)
    assert record["log_likelihood_per_code"] == pytest.approx(reference.score(codes))
    # Draws: the mixture's mean and covariance (the law of total covariance over the components)
    z = np.asarray(jax.jit(jax.vmap(lambda j: latent_mixture.draw(mixture, jax.random.fold_in(jax.random.key(0), j),
                                                                  2)))(jnp.arange(40_000)))
    w = np.exp(mixture["log_weights"])
    mean = w @ mixture["means"]
    centred = mixture["means"] - mean
    cov = np.einsum("k,kij->ij", w, covariances) + np.einsum("k,ki,kj->ij", w, centred, centred)
    np.testing.assert_allclose(z.mean(0), mean, atol=0.06)
    np.testing.assert_allclose(np.cov(z.T), cov, atol=0.25)
    # truncation bounds each component's noise: every draw within t of its nearest component's scale
    t = np.asarray(jax.jit(jax.vmap(lambda j: latent_mixture.draw(mixture, jax.random.fold_in(jax.random.key(1), j),
                                                                  2, truncation=0.5)))(jnp.arange(2000)))
    assert np.max(np.min(np.linalg.norm(t[:, None] - mixture["means"][None], axis=-1), axis=1)) < 0.5 * 2 * 1.2
    with pytest.raises(ValueError, match="2 training images for sample.gmm_components=3"):
        latent_mixture.fit(codes[:2], 3, seed=0)
    with pytest.raises(ValueError, match="1 of the 6000 posterior means are not finite"):
        latent_mixture.fit(np.concatenate([codes[:-1], [[np.nan, 0.0]]]), 3, seed=0)


def test_a_vaes_samples_from_the_mixture_in_mode_sample_trained_load_and_mode_eval(trained_vae, monkeypatch,
                                                                                   one_device):
    """--mode=sample reads the train split alone (no data with sample.latents='prior') and records 'gmm'; its
    samples are the decoder's means at the mixture's draws; trained.load gives the same, with any eval.batch_size;
    --mode=eval puts the fit beside the numbers and leaves the run's (prior's) image grids as they are."""
    from jaxgen import data
    from jaxgen.evaluation import sampling
    from jaxgen.evaluation import vae as vae_eval
    from jaxgen.reporting.images import quantize
    from jaxgen.training import state as state_lib

    c, workdir = trained_vae
    c.sample.num = 8
    reads = []
    monkeypatch.setattr(data, "load", lambda cfg, split, load=data.load: reads.append(split) or load(cfg, split))
    prior = np.load(modes.sample_checkpoint(c, workdir))
    assert reads == []
    c.sample.latents, c.sample.gmm_components, c.sample.gmm_examples = "gmm", 3, 300
    written = np.load(modes.sample_checkpoint(c, workdir))
    assert reads == ["train"]
    assert str(written["latents"]) == "gmm" and str(prior["latents"]) == "prior"
    assert written["images"].shape == prior["images"].shape and not np.array_equal(written["images"], prior["images"])
    run = trained.load(c, workdir)
    np.testing.assert_array_equal(run.samples(8), written["images"])
    mixture = run.latent_mixture()

    @jax.jit  # one program: outside jit the key, the mixture's draws and the quantization are a program per op
    def direct_samples(variables):
        z = sampling.stream_latents(state_lib.eval_key(c.seed, state_lib.SAMPLER), jnp.arange(8), run.model.latent_dim,
                                    mixture=mixture)
        return quantize(vae_eval.sample_images(variables, z, model=run.model, likelihood=c.objective.likelihood))

    direct = direct_samples(run.variables)
    assert np.mean(np.asarray(direct) != written["images"]) < 0.01  # up to rounding at a few pixels' .5
    c.eval.batch_size = 16
    np.testing.assert_array_equal(trained.load(c, workdir).samples(8), written["images"])
    grids = {p.name: p.read_bytes() for p in (workdir / "images").glob("*.png")}
    c.eval.final_nll_k, c.eval.num_examples = 4, 32
    modes.evaluate_checkpoint(c, workdir)
    record = json.loads((workdir / "eval.json").read_text())
    assert record["latents"] == "gmm"
    fit = record["latent_gmm"]
    assert (fit["components"], fit["examples"], fit["step"], fit["params"]) == (3, 300, 10, "raw")
    assert {p.name: p.read_bytes() for p in (workdir / "images").glob("*.png")} == grids


def test_the_config_checks_the_sampler(smoke_config):
    c = smoke_config
    c.sample.latents = "mixture"
    with pytest.raises(ValueError, match=r"unknown sample.latents 'mixture'; choices: prior, gmm"):
        config_check.check(c)
    c.sample.latents, c.sample.gmm_components = "gmm", 0
    with pytest.raises(ValueError, match=r"sample.gmm_components must be an int >= 1"):
        config_check.check(c)
    c.sample.gmm_components, c.sample.gmm_examples = 10, 5
    with pytest.raises(ValueError, match=r"sample.gmm_examples=5 is fewer than sample.gmm_components=10"):
        config_check.check(c)
    c.sample.gmm_examples = 0  # all
    config_check.check(c)
