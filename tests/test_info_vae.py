"""InfoVAE with the MMD (Zhao et al. 2019): the kernels and the unbiased MMD^2 against numpy, the objective's terms from
the same draws, the ELBO at beta 1 and weight 0, the global batch's MMD on 8 devices, and the config's checks."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check, objectives
from jaxgen.objectives import vae as vo
from tests.conftest import CONFIGS, config_module
from tests.test_beta_tcvae import _call, _on_axis
from tests.test_objectives import _tiny
from tests.test_vae_step import assert_same_params, eight_and_one


def _numpy_mmd(kernel, x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]

    def k(a, b):
        sq = ((a[:, None] - b[None]) ** 2).sum(-1)
        return 2 * d / (2 * d + sq) if kernel == "imq" else np.exp(-sq / (2 * d))

    n, m = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * k(x, y).mean())


@pytest.mark.parametrize("kernel", ["imq", "rbf"])
def test_mmd_is_the_unbiased_estimate_and_tells_a_shifted_sample_from_the_prior(kernel):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
    mmd = jax.jit(vo.mmd, static_argnums=0)  # one program for the three calls (op by op: one per op)
    np.testing.assert_allclose(mmd(kernel, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)),
                               _numpy_mmd(kernel, a, b), rtol=1e-4, atol=1e-6)
    same = float(mmd(kernel, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
    shifted = float(mmd(kernel, jnp.asarray(a + 1.0, jnp.float32), jnp.asarray(b, jnp.float32)))
    assert abs(same) < 0.01 < shifted  # unbiased: near 0 (either sign) for two samples of one distribution
    latents = jax.ShapeDtypeStruct((2, 2), jnp.float32)  # the error is raised while tracing: nothing to compile
    with pytest.raises(ValueError, match="objective.mmd_kernel must be 'imq' or 'rbf', got 'gauss'"):
        jax.eval_shape(functools.partial(vo.mmd_kernel, "gauss"), latents, latents)


def test_the_objective_weighs_the_kl_and_the_mmd_of_its_own_draws():
    """loss = rec_nll + beta KL + mmd_weight MMD^2(z, prior draws), the draws recomputed here from the same keys;
    at beta 1 and weight 0 it is the elbo objective's loss (analytic KL, one draw)."""
    model, params, cfg, x, keys = _tiny()
    cfg.kl, cfg.beta, cfg.mmd_weight, cfg.mmd_kernel = "analytic", 0.25, 50.0, "imq"

    @jax.jit  # one program: op by op the objective and the draws built ~100
    def run(params, x, keys):
        loss, m = _call("info_vae", params, x, keys, model, cfg)
        mu, logvar = model.apply(params, x, method="encode")
        z = mu + jnp.exp(0.5 * logvar) * jax.vmap(lambda k: jax.random.normal(k, (1, 2)))(keys)[:, 0]
        prior = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (2,)))(keys)
        return loss, m, z, prior

    loss, m, z, prior = jax.device_get(run(params, x, keys))
    expected_mmd = _numpy_mmd("imq", z, prior)
    np.testing.assert_allclose(m["mmd"], expected_mmd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, m["rec_nll"] + 0.25 * m["kl"] + 50.0 * expected_mmd, rtol=1e-5)
    cfg.beta, cfg.mmd_weight = 1.0, 0.0
    info, elbo = jax.jit(lambda p: (_call("info_vae", p, x, keys, model, cfg)[0],
                                    objectives.get("elbo")(p, x, keys, model=model, cfg=cfg)[0]))(params)
    np.testing.assert_allclose(info, elbo, rtol=1e-6)


def test_eight_devices_compare_the_global_batch_with_the_prior(smoke_config):
    """The posterior and prior draws are gathered over the devices: the MMD, the loss and the gradient on 8 devices
    are 1's (each device's 4 examples alone would give another, noisier MMD)."""
    smoke_config.objective.beta, smoke_config.objective.mmd_weight = 0.0, 100.0
    (s8, m8), (s1, m1), _ = eight_and_one(smoke_config, 2, objective="info_vae")
    for k in ("loss", "mmd", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
    assert float(m1["mmd"][0]) > 0.0
    assert_same_params(s8, s1)


def test_the_mmd_trains_the_encoder_with_the_gradient_of_the_whole_objective():
    """The gradient with respect to the params equals jax.grad of -rec + beta KL + w MMD^2 written out here (the
    posterior draws differentiated through the reparameterisation, the prior draws constants); with weight 0 it
    is another gradient."""
    model, params, cfg, x, keys = _tiny()
    cfg.kl, cfg.beta, cfg.mmd_weight, cfg.mmd_kernel = "analytic", 0.0, 100.0, "rbf"

    def direct(p):
        mu, logvar = model.apply(p, x, method="encode")
        z = mu + jnp.exp(0.5 * logvar) * jax.vmap(lambda k: jax.random.normal(k, (1, 2)))(keys)[:, 0]
        prior = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), (2,)))(keys)
        rec = vo.gaussian_log_prob(model.apply(p, z, method="decode"), x, cfg)
        return -jnp.mean(rec) + 100.0 * vo.mmd("rbf", z, prior)

    def objective_grad(p):  # reads cfg when it traces
        return _on_axis(lambda: jax.grad(lambda p: objectives.get("info_vae")(p, x, keys, model=model, cfg=cfg)[0])(p))

    # Both gradients in one program (op by op they built ~200).
    grad, want = jax.device_get(jax.jit(lambda p: (objective_grad(p), jax.grad(direct)(p)))(params))
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    cfg.mmd_weight = 0.0
    plain = jax.device_get(jax.jit(objective_grad)(params))
    enc = [k for k in grad["params"] if k.startswith("enc")]
    assert any(not np.allclose(grad["params"][k]["kernel"], plain["params"][k]["kernel"]) for k in enc)


def test_the_config_checks_the_mmd_fields_and_names_them_where_unread(caplog):
    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.objective.mmd_weight = 10.0
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(c)
    assert "objective.mmd_weight=10.0 (read by objective.name=info_vae; this run's is elbo)" in caplog.text
    c.objective.name = "info_vae"
    c.objective.mmd_kernel = "gauss"
    with pytest.raises(ValueError, match="objective.mmd_kernel must be 'imq' or 'rbf', got 'gauss'"):
        config_check.check(c)
    c.objective.mmd_kernel, c.objective.mmd_weight = "rbf", -1.0
    with pytest.raises(ValueError, match=r"objective.mmd_weight must be >= 0 .* got -1.0"):
        config_check.check(c)
