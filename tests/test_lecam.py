"""LeCam regularization (reg.lecam_weight > 0, Tseng et al. 2021): the penalty and its bias-corrected moving
averages by hand, D's update as the gradient of its loss plus the weighted penalty, and a run whose logged anchors
are the moving averages of its logged D outputs. The 8-vs-1-device step and the bitwise resume with LeCam are cases
of tests/test_gan.py's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check, parallel
from jaxgen.models import gan as gan_models
from jaxgen.objectives import gan as gan_obj
from jaxgen.reporting import writer
from jaxgen.training import gan_step, loop
from jaxgen.training import state as state_lib
from tests.conftest import CONFIGS, config_module, gan_mnist_config


def test_the_penalty_matches_a_hand_computation():
    """relu(D(x) - a_F)^2 over the reals plus relu(a_R - D(G(z)))^2 over the fakes, each a mean over its own side
    (3 reals, 2 fakes): one-sided, as the authors' code."""
    d_real, d_fake = jnp.array([1.0, -1.0, 2.0]), jnp.array([0.0, -2.0])
    want = (0.8**2 + 0.0 + 1.8**2) / 3 + (0.5**2 + 2.5**2) / 2  # a_R = 0.5, a_F = 0.2
    assert float(gan_obj.lecam(d_real, d_fake, 0.5, 0.2)) == pytest.approx(want, rel=1e-6)
    assert float(gan_obj.lecam(jnp.array([-1.0]), jnp.array([3.0]), 0.5, 0.2)) == 0.0  # inside the anchors: 0


def test_the_anchors_are_moving_averages_corrected_for_their_zero_start():
    """After n updates the anchor is sum_k d^(n-k) (1-d) m_k / (1 - d^n): the first is the first means exactly, a
    constant mean stays that constant, and the state keeps the uncorrected averages and their weights' sum."""
    decay, rng = 0.9, np.random.default_rng(0)
    means = rng.normal(size=(7, 2)).astype(np.float32)
    averages = state_lib.fresh_lecam()
    for n in range(1, len(means) + 1):
        averages, a_real, a_fake = gan_step.lecam_anchors(averages, means[n - 1, 0], means[n - 1, 1], decay)
        w = (1 - decay) * decay ** np.arange(n - 1, -1, -1)
        want = w @ means[:n].astype(np.float64) / (1 - decay**n)
        np.testing.assert_allclose([float(a_real), float(a_fake)], want, rtol=1e-5)
        assert float(averages["norm"]) == pytest.approx(1 - decay**n, rel=1e-6)
    averages = state_lib.fresh_lecam()
    for _ in range(3):
        averages, a_real, a_fake = gan_step.lecam_anchors(averages, jnp.float32(0.25), jnp.float32(-2.0), 0.99)
        assert float(a_real) == pytest.approx(0.25, rel=1e-5) and float(a_fake) == pytest.approx(-2.0, rel=1e-5)


def test_d_update_is_the_gradient_of_the_d_loss_plus_the_weighted_penalty_at_the_updated_anchors():
    """D's update (SGD with rate 1) is jax.grad of d_loss + weight * lecam(D(reals), D(fakes), a_R, a_F), the
    anchors the state's averages moved by this update's (constant) means first; the state keeps the moved averages.
    Catches reals and fakes swapped, a lost weight, anchors from before the update and a gradient through them."""
    import optax
    from jax.sharding import PartitionSpec as P

    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    G, D = gan_models.build(c.model, (28, 28, 1), axis_name=parallel.AXIS)
    sgd = optax.sgd(1.0)
    state = state_lib.create_gan(G, D, sgd, sgd, (28, 28, 1), 0, ema=False, lecam=True)
    state["lecam"] = {"real": jnp.float32(0.3), "fake": jnp.float32(-0.2), "norm": jnp.float32(0.5)}
    real = jax.random.uniform(jax.random.key(4), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    fake = jax.random.uniform(jax.random.key(5), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.key(3), 16)
    loss_fn, weight, decay = gan_obj.get_loss("non_saturating"), 3.0, 0.8

    def body(state, real, fake, keys):
        new, _, metrics = gan_step.d_update(state, real, fake, keys, jnp.int32(0), discriminator=D, d_tx=sgd,
                                            loss_fn=loss_fn, reg_fn=None, reg_weight=0.0, reg_interval=1,
                                            augment_policy="", lecam=(weight, decay))

        def outputs(p):
            variables = {**state["d"], "params": p}
            d_real, variables = gan_step.apply_model(D, variables, real, True)
            return d_real, gan_step.apply_model(D, variables, fake, True)[0]

        d_real, d_fake = outputs(state["d"]["params"])
        moved = {"real": decay * 0.3 + (1 - decay) * jnp.mean(d_real),
                 "fake": decay * -0.2 + (1 - decay) * jnp.mean(d_fake), "norm": decay * 0.5 + (1 - decay)}
        a_real, a_fake = moved["real"] / moved["norm"], moved["fake"] / moved["norm"]

        def direct(p):
            r, f = outputs(p)
            return loss_fn(r, f)[0] + weight * gan_obj.lecam(r, f, a_real, a_fake)

        return new["d"]["params"], new["lecam"], metrics, jax.grad(direct)(state["d"]["params"]), moved

    mesh = parallel.make_mesh(jax.devices()[:1])
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(),) * 4, out_specs=P(), check_vma=False))
    new, averages, metrics, grad, moved = f(state, real, fake, keys)
    for p0, p1, g in zip(jax.tree.leaves(state["d"]["params"]), jax.tree.leaves(new), jax.tree.leaves(grad)):
        np.testing.assert_allclose(np.asarray(p0 - p1), np.asarray(g), rtol=1e-4, atol=1e-6)
    for name in ("real", "fake", "norm"):
        assert float(averages[name]) == pytest.approx(float(moved[name]), rel=1e-5)
    assert float(metrics["lecam_real"]) == pytest.approx(float(moved["real"] / moved["norm"]), rel=1e-5)
    assert float(metrics["lecam"]) > 0


def test_the_averages_move_once_per_d_update():
    """With 2 D updates per train step the averages move twice a step: their weights' sum after one step is
    1 - decay^2, after two 1 - decay^4."""
    from tests.test_gan import _gan_setup

    mesh = parallel.make_mesh(jax.devices()[:1])
    state, fn = _gan_setup(mesh, **{"train.d_steps": 2, "reg.lecam_weight": 0.3, "reg.lecam_decay": 0.5})
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) * 255).astype(np.uint8)
    state = jax.device_put(state, parallel.replicated(mesh))
    data = parallel.put_replicated({"image": images}, mesh)
    for n in (2, 4):
        state, _ = fn(state, data)
        assert float(state["lecam"]["norm"]) == pytest.approx(1 - 0.5**n, rel=1e-6)


def _config(variant="lecam,smoke", **over):
    return gan_mnist_config(variant, **over)


def test_the_logged_anchors_are_the_moving_averages_of_the_logged_d_outputs(tmp_path, one_device):
    """gan_mnist:lecam,smoke for 12 steps, every step logged (1 D update per step): each step's lecam_real and
    lecam_fake are the bias-corrected moving averages (decay 0.9) of the d_real and d_fake logged up to that step,
    the checkpoint keeps the averages, and --mode=eval and sample (trained.load) read it with a config without
    LeCam, as they read a run without LeCam with a config that has it."""
    from jaxgen.training import trained

    c = _config(**{"train.steps": 12, "train.log_every": 1, "train.steps_per_dispatch": 1, "eval.every": 0,
                   "checkpoint.every": 12, "reg.lecam_decay": 0.9})
    loop.train_and_evaluate(c, tmp_path)
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 13))
    averages = state_lib.fresh_lecam()
    for i, r in enumerate(records):
        averages, a_real, a_fake = gan_step.lecam_anchors(averages, r["d_real"], r["d_fake"], 0.9)
        assert r["lecam_real"] == pytest.approx(float(a_real), rel=1e-5, abs=1e-6), i
        assert r["lecam_fake"] == pytest.approx(float(a_fake), rel=1e-5, abs=1e-6), i
        assert r["lecam"] >= 0
    assert any(r["lecam"] > 0 for r in records)
    mgr, state = loop.restore(loop.build_task(c, tmp_path))
    mgr.close()
    for name in ("real", "fake", "norm"):
        assert float(state["lecam"][name]) == pytest.approx(float(averages[name]), rel=1e-5, abs=1e-6)
    run = trained.load(_config("smoke"), tmp_path)
    assert run.step == 12 and "lecam" in run.state and run.samples(4).shape == (4, 28, 28, 1)
    plain = tmp_path / "plain"  # and the other way: a run without LeCam read with a config that has it
    loop.train_and_evaluate(_config("smoke", **{"train.steps": 2, "eval.every": 0, "checkpoint.every": 2}), plain)
    run = trained.load(_config(), plain)
    assert run.step == 2 and "lecam" not in run.state and run.samples(4).shape == (4, 28, 28, 1)


def test_bad_lecam_settings_are_refused_and_an_unread_decay_is_reported():
    with pytest.raises(ValueError, match="reg.lecam_weight must be >= 0"):
        config_check.check(_config(**{"reg.lecam_weight": -0.1}))
    with pytest.raises(ValueError, match=r"reg.lecam_decay must be in \[0, 1\)"):
        config_check.check(_config(**{"reg.lecam_decay": 1.0}))
    c = _config("smoke", **{"reg.lecam_decay": 0.9})
    from jaxgen import config as config_lib

    unread = config_check.ignored_settings(c, config_lib.gan_config())
    assert any(s.startswith("reg.lecam_decay=0.9 (read by LeCam regularization") for s in unread)
