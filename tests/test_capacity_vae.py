"""capacity_vae (Burgess et al. 2018): -E log p(x|z) + beta |KL - C(step)| with C rising linearly, against the formula
written out (value and gradient), the ELBO at C = 0 and beta 1, the global batch's KL on 8 devices, and the
config's checks."""

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


@pytest.mark.parametrize("step,capacity", [(0, 0.0), (50, 1.5), (100, 3.0), (400, 3.0)])
def test_the_kl_is_held_at_a_capacity_that_rises_linearly(step, capacity):
    model, params, cfg, x, keys = _tiny()
    cfg.kl, cfg.beta, cfg.capacity, cfg.capacity_steps = "analytic", 30.0, 3.0, 100

    def direct(p):
        mu, logvar = model.apply(p, x, method="encode")
        z = mu + jnp.exp(0.5 * logvar) * jax.vmap(lambda k: jax.random.normal(k, (1, 2)))(keys)[:, 0]
        rec = vo.gaussian_log_prob(model.apply(p, z, method="decode"), x, cfg)
        return -jnp.mean(rec) + 30.0 * jnp.abs(jnp.mean(vo.gaussian_kl(mu, logvar)) - capacity)

    step = jnp.int32(step)

    @jax.jit  # one program: op by op, the objective, the formula and their gradients were ~200 (3.8 CPU s)
    def computed_and_direct(p):
        loss, m = _call("capacity_vae", p, x, keys, model, cfg, step=step)
        grad = _on_axis(lambda: jax.grad(lambda q: objectives.get("capacity_vae")(q, x, keys, model=model, cfg=cfg,
                                                                                 step=step)[0])(p))
        return loss, m["capacity"], grad, direct(p), jax.grad(direct)(p)

    loss, got_capacity, grad, want, want_grad = computed_and_direct(params)
    np.testing.assert_allclose(got_capacity, capacity, rtol=1e-6)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(want_grad)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_at_capacity_zero_and_beta_one_it_is_the_negative_elbo():
    model, params, cfg, x, keys = _tiny()
    cfg.kl, cfg.beta, cfg.capacity, cfg.capacity_steps = "analytic", 1.0, 25.0, 100
    loss, elbo = jax.jit(lambda p: (_call("capacity_vae", p, x, keys, model, cfg, step=jnp.int32(0))[0],  # one
                                    objectives.get("elbo")(p, x, keys, model=model, cfg=cfg)[0]))(params)  # program
    np.testing.assert_allclose(loss, elbo, rtol=1e-6)


def test_eight_devices_hold_the_global_batchs_kl_as_one_device_does(smoke_config):
    smoke_config.objective.beta, smoke_config.objective.capacity = 100.0, 5.0
    smoke_config.objective.capacity_steps = 4
    (s8, m8), (s1, m1), _ = eight_and_one(smoke_config, 3, objective="capacity_vae")
    for k in ("loss", "kl", "capacity", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=2e-4, err_msg=k)
    np.testing.assert_allclose(m1["capacity"], [2.5], rtol=1e-6)  # the third step's, step 2 of 4: half of 5 nats
    assert_same_params(s8, s1)


def test_the_config_checks_the_capacity_and_names_it_where_unread(caplog):
    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.objective.capacity = 10.0
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(c)
    assert "objective.capacity=10.0 (read by objective.name=capacity_vae; this run's is elbo)" in caplog.text
    c.objective.name, c.objective.capacity = "capacity_vae", -1.0
    with pytest.raises(ValueError, match=r"objective.capacity \(nats\) and objective.capacity_steps must be >= 0"):
        config_check.check(c)
