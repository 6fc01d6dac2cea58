"""beta-TCVAE (Chen et al. 2018): its KL decomposition against numpy by hand (minibatch weighted sampling), the ELBO
at unit weights, the global batch's estimate on 8 devices, the config's checks and a run through the trainer."""

import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from jaxgen import config_check, objectives
from jaxgen.parallel import AXIS
from jaxgen.training import loop
from tests.conftest import CONFIGS, config_module
from tests.test_objectives import LinearGaussianVAE, _tiny
from tests.test_vae_step import _setup, assert_same_params, eight_and_one


def _on_axis(fn):
    """fn run where the 'data' axis is bound, as in the train step, with one device's share the whole batch."""
    return jax.tree.map(lambda a: a[0], jax.vmap(lambda _: fn(), axis_name=AXIS, axis_size=1)(jnp.zeros(1)))


def _call(name, params, x, keys, model, cfg, **kw):
    return _on_axis(lambda: objectives.get(name)(params, x, keys, model=model, cfg=cfg, **kw))


def _with_draws(name, model, cfg, latent_dim, **kw):
    """A jitted fn(params, x, keys) -> (loss, metrics, mu, logvar, eps): the objective's value and, for the numpy
    reference, the posteriors and the noise of its one draw per example (the same keys). One program: run op by op
    they built ~100. cfg is read when it first runs."""

    @jax.jit
    def run(params, x, keys):
        loss, m = _call(name, params, x, keys, model, cfg, **kw)
        mu, logvar = model.apply(params, x, method="encode")
        eps = jax.vmap(lambda key: jax.random.normal(key, (1, latent_dim)))(keys)[:, 0]
        return loss, m, mu, logvar, eps

    return run


def test_the_three_kl_terms_are_chen_et_als_minibatch_weighted_estimates():
    """mi, tc and dim_kl recomputed in float64 numpy from the same draws: log q(z_i) = logsumexp_j log q(z_i | x_j)
    - log(N M), log prod_d q(z_id) = sum_d (logsumexp_j log q(z_id | x_j) - log(N M)); the loss weights them."""
    model = LinearGaussianVAE(latent_dim=3)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 3)))
    _, _, cfg, x, keys = _tiny()
    cfg.beta, cfg.mi_weight, cfg.dim_kl_weight = 6.0, 0.5, 2.0
    loss, m, mu, logvar, eps = jax.device_get(_with_draws("beta_tcvae", model, cfg, 3, dataset_size=1000)(params, x,
                                                                                                          keys))
    mu, logvar, eps = (np.asarray(a, np.float64) for a in (mu, logvar, eps))
    z = mu + np.exp(0.5 * logvar) * eps
    m_batch = len(z)
    log_q = scipy.stats.norm.logpdf(z[:, None, :], mu[None], np.exp(0.5 * logvar)[None])  # [i, j, d]
    log_qz = scipy.special.logsumexp(log_q.sum(-1), axis=1) - math.log(1000 * m_batch)
    log_prod = (scipy.special.logsumexp(log_q, axis=1) - math.log(1000 * m_batch)).sum(-1)
    log_qzx = scipy.stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
    log_pz = scipy.stats.norm.logpdf(z).sum(-1)
    mi, tc, dim_kl = np.mean(log_qzx - log_qz), np.mean(log_qz - log_prod), np.mean(log_prod - log_pz)
    np.testing.assert_allclose([m["mi"], m["tc"], m["dim_kl"]], [mi, tc, dim_kl], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss, m["rec_nll"] + 0.5 * mi + 6.0 * tc + 2.0 * dim_kl, rtol=1e-5)
    assert float(m["loss"]) == float(loss)
    # The analytic KL beside them, as the elbo objective logs it.
    kl = 0.5 * np.sum(np.exp(logvar) + mu**2 - 1 - logvar, -1)
    np.testing.assert_allclose([m["kl"], m["elbo"]], [kl.mean(), -m["rec_nll"] - kl.mean()], rtol=1e-5)


@pytest.mark.parametrize("n", [None, 1000])
def test_stratified_sampling_weighs_the_own_posterior_1_over_n_and_is_exact_on_the_whole_data(n):
    """tc_estimator='mss' (Chen et al.'s appendix C.2): log q(z_i) = logsumexp_j (log q(z_i | x_j) + log w_ij) with
    w_ii = 1/N and w_ij = (N - 1) / (N (M - 1)), recomputed in float64 numpy. With N = M (n None: the batch is the
    whole data) it is the exact aggregate posterior (1/N) sum_j q(z_i | x_j), where MWS's is log N lower."""
    model = LinearGaussianVAE(latent_dim=3)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 3)))
    _, _, cfg, x, keys = _tiny()
    m_batch = x.shape[0]
    n = n or m_batch
    cfg.mi_weight = cfg.dim_kl_weight = 1.0
    cfg.tc_estimator = "mss"
    _, m, mu, logvar, eps = jax.device_get(_with_draws("beta_tcvae", model, cfg, 3, dataset_size=n)(params, x, keys))
    mu, logvar, eps = (np.asarray(a, np.float64) for a in (mu, logvar, eps))
    z = mu + np.exp(0.5 * logvar) * eps
    log_q = scipy.stats.norm.logpdf(z[:, None, :], mu[None], np.exp(0.5 * logvar)[None])  # [i, j, d]
    w = np.full((m_batch, m_batch), (n - 1) / (n * (m_batch - 1)))
    np.fill_diagonal(w, 1.0 / n)
    log_qz = scipy.special.logsumexp(log_q.sum(-1) + np.log(w), axis=1)
    log_prod = scipy.special.logsumexp(log_q + np.log(w)[..., None], axis=1).sum(-1)
    log_qzx = scipy.stats.norm.logpdf(z, mu, np.exp(0.5 * logvar)).sum(-1)
    log_pz = scipy.stats.norm.logpdf(z).sum(-1)
    np.testing.assert_allclose([m["mi"], m["tc"], m["dim_kl"]],
                               [np.mean(log_qzx - log_qz), np.mean(log_qz - log_prod), np.mean(log_prod - log_pz)],
                               rtol=1e-4, atol=1e-4)
    if n == m_batch:  # the exact aggregate posterior; MWS's mi is log N higher
        exact = scipy.special.logsumexp(log_q.sum(-1), axis=1) - math.log(n)
        np.testing.assert_allclose(m["mi"], np.mean(log_qzx - exact), rtol=1e-4, atol=1e-4)
        cfg.tc_estimator = "mws"
        _, weighted = jax.device_get(jax.jit(lambda p: _call("beta_tcvae", p, x, keys, model, cfg, dataset_size=n))(
            params))
        np.testing.assert_allclose(weighted["mi"] - m["mi"], math.log(n), rtol=1e-4)


def test_at_unit_weights_it_is_the_negative_elbo_with_the_monte_carlo_kl():
    """mi + tc + dim_kl = E[log q(z|x) - log p(z)] exactly, whatever N: the elbo objective's loss (kl='mc', k=1)
    under the same noise, and the same gradient."""
    model, params, cfg, x, keys = _tiny()
    cfg.mi_weight = cfg.dim_kl_weight = cfg.beta = 1.0

    # Both objectives, for both N, and both gradients in one program: run op by op they built ~250.
    @jax.jit
    def both(params, x, keys):
        values = [(_call("beta_tcvae", params, x, keys, model, cfg, dataset_size=n),
                   objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)) for n in (64, 60_000)]
        g = _on_axis(lambda: jax.grad(lambda p: objectives.get("beta_tcvae")(p, x, keys, model=model, cfg=cfg,
                                                                              dataset_size=64)[0])(params))
        g_ref = jax.grad(lambda p: objectives.get("elbo")(p, x, keys, model=model, cfg=cfg)[0])(params)
        return values, g, g_ref

    values, g, g_ref = jax.device_get(both(params, x, keys))
    for (loss, m), (ref, _) in values:
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        np.testing.assert_allclose(m["mi"] + m["tc"] + m["dim_kl"], float(ref) - float(m["rec_nll"]), rtol=1e-4)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("estimator", ["mws", "mss"])
def test_eight_devices_estimate_the_aggregate_posterior_over_the_global_batch(smoke_config, estimator):
    """The posteriors are gathered over the devices: the loss, the three terms and the gradient on 8 devices are
    those of 1 with the same global batch (each device's own 4 examples alone would give another TC; with 'mss' each
    example's own posterior is found by its place in the global batch). The step passes the training split's size."""
    smoke_config.objective.name = "beta_tcvae"
    smoke_config.objective.beta = 6.0
    smoke_config.objective.tc_estimator = estimator
    (s8, m8), (s1, m1), _ = eight_and_one(smoke_config, 2, objective="beta_tcvae")
    for k in ("loss", "mi", "tc", "dim_kl", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
    assert float(m1["tc"][0]) != 0.0
    assert_same_params(s8, s1)


def sized_elbo(params, x, keys, *, model, cfg, dataset_size):
    """The elbo, logging the dataset_size the step passes."""
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss, {**metrics, "dataset_size": jnp.asarray(dataset_size, jnp.float32)}


def test_the_step_passes_the_training_splits_size_to_an_objective_that_names_it(smoke_config):
    fn, state, train = _setup(smoke_config, jax.devices()[:1], objective="tests.test_beta_tcvae:sized_elbo")
    _, m = fn(state, train)
    assert float(m["dataset_size"][0]) == train["image"].shape[0] == 256  # the rows on the device, not the batch


def test_the_config_checks_its_weights_and_warns_about_fields_it_does_not_read(caplog):
    c = config_module(CONFIGS / "vae_mnist.py").get_config("btcvae,smoke")
    assert (c.objective.name, c.objective.beta) == ("beta_tcvae", 6.0)
    c.objective.k, c.objective.kl_warmup_steps = 5, 100
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(c)
    assert "objective.k=5 (read by objective.name=elbo or iwae or miwae or ciwae or piwae; this run's is " \
           "beta_tcvae)" in caplog.text
    assert "objective.kl_warmup_steps=100 (read by objective.name=elbo; this run's is beta_tcvae)" in caplog.text
    caplog.clear()
    e = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    e.objective.mi_weight = 0.0
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(e)
    assert "objective.mi_weight=0.0 (read by objective.name=beta_tcvae; this run's is elbo)" in caplog.text
    c.objective.dim_kl_weight = -1.0
    with pytest.raises(ValueError, match=r"objective.dim_kl_weight must be >= 0 .* got -1.0"):
        config_check.check(c)
    c.objective.dim_kl_weight, c.objective.tc_estimator = 1.0, "mwss"
    with pytest.raises(ValueError, match=r"unknown objective.tc_estimator 'mwss'; choices: mws, mss"):
        config_check.check(c)
    c.objective.tc_estimator, c.train.batch_size = "mss", 1
    with pytest.raises(ValueError, match=r"tc_estimator='mss' .* needs at least 2 examples; train.batch_size=1"):
        config_check.check(c)


def test_vae_mnist_btcvae_trains_and_logs_the_three_terms(tmp_path, one_device):
    c = config_module(CONFIGS / "vae_mnist.py").get_config("btcvae,smoke")
    c.train.steps, c.train.log_every, c.eval.extractors = 10, 5, ()
    loop.train_and_evaluate(c, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("split") == "train"]
    assert train and all(np.isfinite(r[k]) for r in train for k in ("mi", "tc", "dim_kl", "elbo"))
    assert json.loads((tmp_path / "eval.json").read_text())["elbo"] < 0
