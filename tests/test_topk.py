"""Top-k training (Sinha et al. 2020, loss.topk_nu): the G loss's gradient comes from the k fakes D rates most real
(scaled as a mean over them), the schedule of k, 8 devices picking the global batch's top k as 1 does, and the
config's checks."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check, parallel
from jaxgen.objectives import gan as gan_obj
from jaxgen.training import gan_step
from tests.test_gan import _gan_setup, _smoke


@pytest.mark.parametrize("name", ["non_saturating", "hinge", "least_squares", "wasserstein"])
def test_the_g_loss_learns_from_the_top_k_fakes_as_a_mean_over_them(name):
    """The gradient with respect to D's outputs on the fakes: that of the loss on the 3 highest of 8 alone (zero for
    the other 5); the value stays the whole batch's."""
    loss = gan_obj.get_loss(name)
    d_real = jnp.array([0.5, 1.0, -0.2, 0.3, 0.8, 0.1, 0.0, 0.9])
    d_fake = jnp.array([-1.0, 0.7, -0.3, 1.5, -2.0, 0.2, 0.6, -0.5])
    top = jnp.array([3, 1, 6])  # the 3 highest outputs: 1.5, 0.7, 0.6
    tied = jnp.array([1.0, 1.0, 1.0, 0.0])
    wrapped = gan_obj.top_k_fakes(loss, 3)

    @jax.jit  # one program: outside jit each op of the losses and their gradients is one (~70 a loss)
    def both_sides(d_real, d_fake, tied):
        return {
            "grad": jax.grad(lambda f: wrapped(d_real, f)[1])(d_fake),
            "expected": jnp.zeros(8).at[top].set(jax.grad(lambda f: loss(d_real, f)[1])(d_fake[top])),
            "wrapped": wrapped(d_real, d_fake)[:2], "plain": loss(d_real, d_fake)[:2],
            "all_k": jax.grad(lambda f: gan_obj.top_k_fakes(loss, 8)(d_real, f)[1])(d_fake),
            "all_plain": jax.grad(lambda f: loss(d_real, f)[1])(d_fake),
            "tied": jax.grad(lambda f: gan_obj.top_k_fakes(loss, 2)(d_real[:4], f)[1])(tied),
            "tied_plain": jax.grad(lambda f: loss(d_real[:4], f)[1])(tied[:3]),
        }

    got = both_sides(d_real, d_fake, tied)
    np.testing.assert_allclose(got["grad"], got["expected"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["wrapped"][1], got["plain"][1], rtol=1e-6)
    # D's loss, its metrics and the wrapped loss's D side are untouched
    np.testing.assert_allclose(got["wrapped"][0], got["plain"][0], rtol=1e-6)
    # k = B: every fake, the plain gradient; ties with the k-th are all kept
    np.testing.assert_allclose(got["all_k"], got["all_plain"], rtol=1e-6)
    g = got["tied"]
    np.testing.assert_allclose(g[:3], got["tied_plain"], rtol=1e-6)
    assert float(g[3]) == 0.0


def test_k_decays_by_gamma_per_pass_over_the_data_down_to_nu_times_the_batch():
    count = lambda step, **kw: int(gan_step.top_k_count(jnp.int32(step), **kw))  # noqa: E731
    kw = dict(g_batch=64, reals_per_step=64, n=640, gamma=0.99, nu=0.5)
    assert [count(s, **kw) for s in (0, 9, 10, 20)] == [64, 64, 63, 62]  # floor(64 * 0.99^e), e = step // 10
    assert count(10_000, **kw) == 32  # the floor: nu * B
    assert count(10, **{**kw, "reals_per_step": 320}) == 60  # 5 D steps of 64 per train step: 5 passes at step 10
    assert count(1_000_000_000, **{**kw, "nu": 0.01}) == 1  # at least one fake; no overflow of the step count


def test_eight_devices_keep_the_global_batchs_top_k_as_one_device_does():
    """32 training images, batch 32: each step is one pass, so with gamma 0.5 and nu 0.25 k is 32, 16 and 8 over
    three steps; the fakes kept are the global batch's top k (per device they would be another set), so 8 devices
    give one device's params."""
    rng = np.random.default_rng(0)
    arrays = {"image": (rng.random((32, 28, 28, 1)) * 255).astype(np.uint8)}
    results, fractions = [], []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = parallel.make_mesh(devices)
        state, fn = _gan_setup(mesh, **{"loss.topk_nu": 0.25, "loss.topk_gamma": 0.5, "g_optim.eps": 1e-3,
                                        "d_optim.eps": 1e-3})
        state = jax.device_put(state, parallel.replicated(mesh))
        data = parallel.put_replicated(arrays, mesh)
        seen = []
        for _ in range(3):
            state, metrics = fn(state, data)
            seen.append(float(metrics["topk"][0]))
        fractions.append(seen)
        results.append(jax.device_get(state))
    assert fractions[0] == fractions[1] == [1.0, 0.5, 0.25]
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            continue
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=2e-5, rtol=1e-4)


def test_the_config_checks_topk_and_names_gamma_when_it_is_off(caplog):
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(_smoke(**{"loss.topk_gamma": 0.9}))
    assert "loss.topk_gamma=0.9 (read by top-k training, loss.topk_nu > 0; this run's is 0)" in caplog.text
    with pytest.raises(ValueError, match=r"loss.topk_nu must be in \[0, 1\) .* got 1.0"):
        config_check.check(_smoke(**{"loss.topk_nu": 1.0}))
    with pytest.raises(ValueError, match=r"loss.topk_gamma must be in \(0, 1\] .* got 0.0"):
        config_check.check(_smoke(**{"loss.topk_nu": 0.5, "loss.topk_gamma": 0.0}))
