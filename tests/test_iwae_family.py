"""The importance-weighted family beside `iwae`: MIWAE, CIWAE and PIWAE (Rainforth et al. 2018) against the bounds
they reduce to, and the doubly reparameterised encoder gradient (objective.estimator='dreg', Tucker et al. 2019):
the same value and decoder gradient as the standard estimator, the same expected encoder gradient with less variance,
and none at all where q is the exact posterior."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen import config_check, objectives
from jaxgen.objectives import vae as vae_obj
from tests.conftest import CONFIGS, config_module
from tests.test_objectives import _tiny
from tests.test_vae_step import assert_same_params, eight_and_one

ENCODER = ("enc_mu", "enc_lv")  # LinearGaussianVAE's encoder; "dec" is its decoder


def _value_and_grads(name, params, x, keys, model, cfg, **fields):
    cfg = cfg.copy_and_resolve_references()
    cfg.update({"m": 1, "elbo_weight": 0.5, "estimator": "standard", **fields})

    def loss(p):
        return objectives.get(name)(p, x, keys, model=model, cfg=cfg)

    (value, metrics), grads = jax.value_and_grad(loss, has_aux=True)(params)
    return value, metrics, grads["params"]


def _values_and_grads(params, x, keys, model, cfg, *runs):
    """[(value, metrics, grads)] of `_value_and_grads` for each (name, fields) of `runs`, all in one compiled
    program: run op by op each built ~30 programs."""

    @jax.jit
    def run(params, x, keys):
        return [_value_and_grads(name, params, x, keys, model, cfg, **fields) for name, fields in runs]

    return [(float(value), metrics, grads) for value, metrics, grads in jax.device_get(run(params, x, keys))]


def _assert_close(a, b, rtol=1e-5, atol=1e-6):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


def _part(grads, names):
    return {n: grads[n] for n in names}


def test_miwae_and_ciwae_reduce_to_iwae_and_to_the_elbo():
    """MIWAE with m = 1 is IWAE, with k = 1 the ELBO of m draws (Monte Carlo KL); CIWAE with elbo_weight 1 is that
    ELBO, with 0 IWAE, and in between the weighted sum of both: values and gradients under the same noise."""
    model, params, cfg, x, keys = _tiny()
    iwae, elbo, miwae_1, miwae_k1, ciwae_1, ciwae_0, mixed = _values_and_grads(
        params, x, keys, model, cfg, ("iwae", {"k": 6}), ("elbo", {"k": 6}), ("miwae", {"k": 6, "m": 1}),
        ("miwae", {"k": 1, "m": 6}), ("ciwae", {"k": 6, "elbo_weight": 1.0}), ("ciwae", {"k": 6, "elbo_weight": 0.0}),
        ("ciwae", {"k": 6, "elbo_weight": 0.3}))
    for got, want in [(miwae_1, iwae), (miwae_k1, elbo), (ciwae_1, elbo), (ciwae_0, iwae)]:
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        _assert_close(got[2], want[2])
    np.testing.assert_allclose(mixed[0], 0.3 * elbo[0] + 0.7 * iwae[0], rtol=1e-6)
    _assert_close(mixed[2], jax.tree.map(lambda e, i: 0.3 * e + 0.7 * i, elbo[2], iwae[2]))
    np.testing.assert_allclose(float(mixed[1]["elbo"]), -elbo[0], rtol=1e-6)
    np.testing.assert_allclose(float(mixed[1]["iwae_bound"]), -iwae[0], rtol=1e-6)


def test_miwae_is_the_mean_of_its_groups_iwae_bounds():
    """m = 3 groups of k = 4: the mean over the groups of each one's IWAE bound, draws 4 g ... 4 g + 3 in group g;
    the logged iwae_bound is the IWAE bound of all 12."""
    model, params, cfg, x, keys = _tiny()

    @jax.jit  # one program (op by op: ~100)
    def run(params, x, keys):
        value, metrics, _ = _value_and_grads("miwae", params, x, keys, model, cfg, k=4, m=3)
        return value, metrics, vae_obj.log_importance_weights(params, x, keys, model=model, cfg=cfg, k=12)

    value, metrics, log_w = jax.device_get(run(params, x, keys))
    log_w = np.asarray(log_w, np.float64)
    groups = log_w.reshape(len(log_w), 3, 4)
    top = groups.max(-1, keepdims=True)
    bounds = top[..., 0] + np.log(np.mean(np.exp(groups - top), -1))
    np.testing.assert_allclose(value, -bounds.mean(), rtol=1e-5)
    top = log_w.max(1, keepdims=True)
    np.testing.assert_allclose(float(metrics["iwae_bound"]),
                               np.mean(top[:, 0] + np.log(np.mean(np.exp(log_w - top), 1))), rtol=1e-5)
    assert float(metrics["iwae_bound"]) > float(metrics["miwae_bound"])  # the tighter bound of the same draws


@pytest.mark.parametrize("name,fields", [("iwae", {"k": 8}), ("miwae", {"k": 4, "m": 2}),
                                         ("ciwae", {"k": 8, "elbo_weight": 0.4}), ("elbo", {"k": 3})])
def test_dreg_keeps_the_value_and_the_decoders_gradient(name, fields):
    """Only the encoder's gradient changes: the loss's value and the decoder's gradient are the standard
    estimator's under the same noise."""
    model, params, cfg, x, keys = _tiny()
    standard, dreg = _values_and_grads(params, x, keys, model, cfg, (name, fields),
                                       (name, {"estimator": "dreg", **fields}))
    np.testing.assert_allclose(dreg[0], standard[0], rtol=1e-6)
    _assert_close(dreg[2]["dec"], standard[2]["dec"])
    assert not np.allclose(np.asarray(dreg[2]["enc_mu"]["kernel"]), np.asarray(standard[2]["enc_mu"]["kernel"]))


def test_dreg_of_one_draw_is_sticking_the_landing():
    """With k = 1 the IWAE bound is the ELBO, and DReG's weights (w^2 = 1) give the ELBO's path derivative."""
    model, params, cfg, x, keys = _tiny()
    iwae, stl = _values_and_grads(params, x, keys, model, cfg, ("iwae", {"k": 1, "estimator": "dreg"}),
                                  ("elbo", {"k": 1, "estimator": "dreg"}))
    np.testing.assert_allclose(iwae[0], stl[0], rtol=1e-6)
    _assert_close(iwae[2], stl[2])


def _exact_posterior(params, sigma):
    """The linear Gaussian VAE's encoder set to its exact posterior: the decoder's kernel rows made orthogonal, so
    that the posterior covariance (I + K K^T / sigma^2)^-1 is diagonal, as q's."""
    p = jax.tree.map(np.asarray, params)["params"]
    kernel = np.array([[1.0, 0.5, 0.0, 0.3], [-0.5, 1.0, 0.3, 0.0]], np.float32)  # rows orthogonal
    bias = np.asarray(p["dec"]["bias"])
    cov = 1.0 / (1.0 + np.sum(kernel**2, 1) / sigma**2)  # [2]
    gain = kernel.T * cov[None] / sigma**2  # [4, 2]: mean = (x - b) @ gain
    new = {"dec": {"kernel": kernel, "bias": bias},
           "enc_mu": {"kernel": gain, "bias": -bias @ gain},
           "enc_lv": {"kernel": np.zeros((4, 2), np.float32), "bias": np.log(cov).astype(np.float32)}}
    return {"params": jax.tree.map(jnp.asarray, new)}


@pytest.mark.parametrize("name,fields", [("iwae", {"k": 8}), ("miwae", {"k": 4, "m": 2}),
                                         ("ciwae", {"k": 8}), ("piwae", {"k": 4, "m": 2}), ("elbo", {"k": 2})])
def test_at_the_exact_posterior_the_dreg_encoder_gradient_vanishes(name, fields):
    """Where q(z|x) is the exact posterior every log weight is log p(x), whatever z: the path derivative is 0 for
    every draw, so DReG's encoder gradient is 0, while the standard estimator's carries the score term's noise."""
    model, params, cfg, x, keys = _tiny()
    params = _exact_posterior(params, cfg.gaussian_sigma)
    dreg, standard = _values_and_grads(params, x, keys, model, cfg, (name, {"estimator": "dreg", **fields}),
                                       (name, fields))
    for leaf in jax.tree.leaves(_part(dreg[2], ENCODER)):
        np.testing.assert_allclose(np.asarray(leaf), 0.0, atol=2e-5)
    assert max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(_part(standard[2], ENCODER))) > 1e-2


def test_dreg_is_unbiased_for_the_encoder_gradient_with_less_variance():
    """Over 2000 draws of the noise (k = 16, q near the posterior but not it), the mean of the difference between
    DReG's and the standard estimator's encoder gradients is within 5 standard errors of 0 in every coordinate, and
    DReG's variance is the smaller one (summed over the encoder's parameters)."""
    model, params, cfg, x, keys = _tiny()
    x = x[:4]
    params = _exact_posterior(params, cfg.gaussian_sigma)
    noise = jax.random.split(jax.random.key(3), 4)
    for i, (name, leaf) in enumerate([(n, f) for n in ENCODER for f in ("kernel", "bias")]):
        value = params["params"][name][leaf]
        params["params"][name][leaf] = value + 0.2 * jax.random.normal(noise[i], value.shape)
    cfg = cfg.copy_and_resolve_references()
    cfg.update({"k": 16, "m": 1, "elbo_weight": 0.5})

    def encoder_grad(key, est):
        c = cfg.copy_and_resolve_references()
        c.estimator = est
        g = jax.grad(lambda p: objectives.get("iwae")(p, x, jax.random.split(key, 4), model=model, cfg=c)[0])(params)
        return jnp.concatenate([leaf.ravel() for leaf in jax.tree.leaves(_part(g["params"], ENCODER))])

    draws = jax.random.split(jax.random.key(7), 2000)
    standard = np.asarray(jax.jit(jax.vmap(lambda k: encoder_grad(k, "standard")))(draws), np.float64)
    dreg = np.asarray(jax.jit(jax.vmap(lambda k: encoder_grad(k, "dreg")))(draws), np.float64)
    diff = dreg - standard
    stderr = diff.std(0) / np.sqrt(len(diff))
    assert np.all(np.abs(diff.mean(0)) < 5 * stderr + 1e-6), (diff.mean(0), stderr)
    assert dreg.var(0).sum() < 0.5 * standard.var(0).sum(), (dreg.var(0).sum(), standard.var(0).sum())


@pytest.mark.parametrize("estimator", ["standard", "dreg"])
def test_piwae_trains_the_decoder_on_iwae_and_the_encoder_on_miwae(estimator):
    """m = 3 groups of k = 4: the decoder's gradient is that of the IWAE bound of all 12 draws, the encoder's that of
    the MIWAE bound (with the same estimator); the value is the negative IWAE bound."""
    model, params, cfg, x, keys = _tiny()
    piwae, iwae, miwae = _values_and_grads(params, x, keys, model, cfg,
                                           ("piwae", {"k": 4, "m": 3, "estimator": estimator}), ("iwae", {"k": 12}),
                                           ("miwae", {"k": 4, "m": 3, "estimator": estimator}))
    np.testing.assert_allclose(piwae[0], iwae[0], rtol=1e-6)
    np.testing.assert_allclose(float(piwae[1]["miwae_bound"]), -miwae[0], rtol=1e-6)
    _assert_close(piwae[2]["dec"], iwae[2]["dec"])
    _assert_close(_part(piwae[2], ENCODER), _part(miwae[2], ENCODER))


@pytest.mark.parametrize("override,message", [
    ({"objective.estimator": "reinforce"}, "unknown objective.estimator 'reinforce'; choices: standard, dreg"),
    ({"objective.estimator": "dreg", "objective.kl": "analytic"},
     "the closed-form KL has none: set --config.objective.kl=mc"),
    ({"objective.name": "miwae", "objective.m": 0}, "objective.m must be an int >= 1"),
    ({"objective.name": "ciwae", "objective.elbo_weight": 1.5}, "objective.elbo_weight must be in [0, 1]"),
])
def test_importance_fields_that_cannot_train_are_errors_naming_the_fix(smoke_config, override, message):
    for field, value in override.items():
        block, name = field.split(".")
        smoke_config[block][name] = value
    with pytest.raises(ValueError) as e:
        config_check.check(smoke_config)
    assert message in str(e.value)


def test_importance_fields_an_objective_does_not_read_are_reported(smoke_config, caplog):
    smoke_config.objective.name, smoke_config.objective.m = "iwae", 4
    smoke_config.objective.estimator = "dreg"
    assert config_check.ignored_settings(smoke_config, config_lib.vae_config()) == [
        "objective.m=4 (read by objective.name=miwae or piwae; this run's is iwae)"]
    smoke_config.objective.name = "beta_tcvae"
    assert "objective.estimator='dreg' (read by objective.name=elbo or iwae or miwae or ciwae or piwae; this run's " \
           "is beta_tcvae)" in config_check.ignored_settings(smoke_config, config_lib.vae_config())
    smoke_config.objective.name, smoke_config.objective.m, smoke_config.objective.k = "piwae", 1, 5
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(smoke_config)
    assert "objective.name='piwae' with objective.m=1 is the IWAE bound of objective.k=5 draws" in caplog.text


def test_eight_devices_give_the_params_of_one_with_piwae_and_dreg():
    """Per-example objectives: the trainer's mean over devices is the global batch's, the two decoder passes
    included (iwae_mnist's MLP)."""
    c = config_module(CONFIGS / "iwae_mnist.py").get_config("smoke,piwae,dreg")
    c.unlock()
    c.model.output_bias = "zero"  # the step alone, built without the training images
    c.objective.update({"k": 2, "m": 2})
    (s8, m8), (s1, m1), _ = eight_and_one(c, steps=2, objective="piwae")
    assert_same_params(s8, s1)
    np.testing.assert_allclose(m8["miwae_bound"], m1["miwae_bound"], rtol=1e-5)
