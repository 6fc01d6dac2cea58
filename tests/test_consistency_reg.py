"""The consistency regularizers (reg.name='cr', 'bcr'): D's squared change under a random augmentation of its
inputs, against a closed form for a linear D; their draws; their config checks."""

import functools
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen import config_check
from jaxgen.data import augment
from jaxgen.objectives import gan as gan_obj
from jaxgen.reporting import writer
from jaxgen.training import loop
from tests.conftest import gan_mnist_config


def _linear_d(w):
    return lambda x: jnp.sum(x * w, axis=(1, 2, 3))


@functools.partial(jax.jit, static_argnums=0)
def _draw(policy, keys, x, i, stream):
    """T(x_i): example i on its own (a batch of 1) augmented with fold_in(keys[i], stream). Jitted: one program for
    every example and stream of a policy and shape, not one per op run eagerly."""
    return augment.apply(policy, jax.random.fold_in(keys[i], stream), x[i][None])[0]


def _draws(policy, keys, x, stream):
    """T(x): example i augmented with fold_in(keys[i], stream), as the regularizers draw it."""
    return np.stack([_draw(policy, keys, x, i, stream) for i in range(len(x))])


def test_cr_is_the_mean_squared_change_of_d_and_its_gradient_reaches_both_outputs():
    """For a linear D(x) = <w, x>, CR = mean_i <w, x_i - T(x_i)>^2 and its gradient in w is
    mean_i 2 <w, x_i - T(x_i)> (x_i - T(x_i)): D is pulled on both the image and its augmentation."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(-1, 1, (8, 12, 12, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(12, 12, 1)), jnp.float32)
    keys = jax.random.split(jax.random.key(1), 8)
    cfg = ml_collections.FrozenConfigDict({"cr_policy": "flip,translation"})
    flips = ml_collections.FrozenConfigDict({"cr_policy": "flip"})
    augmented = _draws("flip,translation", keys, x, 0)

    @jax.jit  # every value below and its reference in one program, not one per op run eagerly
    def values(x, w, augmented):
        diff = x - augmented
        per = jnp.sum(diff * w, axis=(1, 2, 3))
        value, metrics = gan_obj.consistency(_linear_d(w), x, x * 0, keys, cfg=cfg)
        grad = jax.grad(lambda w: gan_obj.consistency(_linear_d(w), x, x * 0, keys, cfg=cfg)[0])(w)
        want = jnp.mean(2 * per[:, None, None, None] * diff, axis=0)
        # Flips alone: left-right symmetric images leave D unchanged (penalty 0), the others do not.
        sym = (x + x[:, :, ::-1]) / 2
        return {"value": value, "expected": jnp.mean(per**2), "cr_real": metrics["cr_real"], "grad": grad,
                "want": want, "flips_sym": gan_obj.consistency(_linear_d(w), sym, sym, keys, cfg=flips)[0],
                "flips": gan_obj.consistency(_linear_d(w), x, x, keys, cfg=flips)[0]}

    v = values(x, w, augmented)
    assert float(v["value"]) == pytest.approx(float(v["expected"]), rel=1e-5) and float(v["value"]) > 0
    assert float(v["cr_real"]) == pytest.approx(float(v["value"]))
    np.testing.assert_allclose(np.asarray(v["grad"]), np.asarray(v["want"]), rtol=1e-4, atol=1e-5)
    assert float(v["flips_sym"]) == 0.0
    assert float(v["flips"]) > 0


def test_d_outputs_given_stand_in_for_d_on_the_images():
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 8, 1)), jnp.float32)

    @jax.jit  # both in one program, not one per op run eagerly
    def computed_and_given(x, w):
        d, keys = _linear_d(w), jax.random.split(jax.random.key(4), 4)
        return (gan_obj.balanced_consistency(d, x, -x, keys),
                gan_obj.balanced_consistency(d, x, -x, keys, d_real=d(x), d_fake=d(-x)))

    computed, given = computed_and_given(x, w)
    np.testing.assert_allclose(jax.tree.leaves(computed), jax.tree.leaves(given), rtol=1e-6)


def outputs_seen(d_fn, real, fake, keys, *, d_real, d_fake):
    """A regularizer that penalises nothing and reports the means of the D outputs the step gave it."""
    del d_fn, real, fake, keys
    return jnp.zeros((), jnp.float32), {"seen_d_real": jnp.mean(d_real), "seen_d_fake": jnp.mean(d_fake)}


def test_the_step_gives_a_regularizer_that_takes_them_the_d_losss_outputs(tmp_path, one_device):
    """The outputs a regularizer naming d_real and d_fake gets are those of the step's D loss (logged d_real and
    d_fake), on the augmented images D saw."""
    c = _config(**{"reg.name": "tests.test_consistency_reg:outputs_seen", "augment.policy": "translation",
                   "train.steps": 2, "train.log_every": 1, "train.steps_per_dispatch": 1, "checkpoint.every": 2,
                   "eval.every": 0})
    loop.train_and_evaluate(c, tmp_path)
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(records) == 2
    for r in records:
        assert r["seen_d_real"] == pytest.approx(r["d_real"], rel=1e-6)
        assert r["seen_d_fake"] == pytest.approx(r["d_fake"], rel=1e-6)


def test_bcr_adds_the_same_penalty_on_the_fakes_with_draws_of_their_own():
    rng = np.random.default_rng(1)
    real = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 3)), jnp.float32)
    fake = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(8, 8, 3)), jnp.float32)
    keys = jax.random.split(jax.random.key(2), 6)
    own_draws, reals_draws = _draws(gan_obj.CR_POLICY, keys, fake, 1), _draws(gan_obj.CR_POLICY, keys, fake, 0)

    @jax.jit  # every value below and its reference in one program, not one per op run eagerly
    def values(real, fake, w, own_draws, reals_draws):
        d = _linear_d(w)
        value, metrics = gan_obj.balanced_consistency(d, real, fake, keys)  # cfg None: the default policy
        return {"value": value, "metrics": metrics, "cr": gan_obj.consistency(d, real, fake, keys)[0],
                "on_fake": jnp.mean((d(fake) - d(own_draws)) ** 2),
                "same_draws": jnp.mean((d(fake) - d(reals_draws)) ** 2)}

    v = values(real, fake, w, own_draws, reals_draws)
    value, metrics, on_fake = v["value"], v["metrics"], v["on_fake"]
    assert float(metrics["cr_fake"]) == pytest.approx(float(on_fake), rel=1e-5)
    assert float(metrics["cr_real"]) == pytest.approx(float(v["cr"]), rel=1e-6)
    assert float(value) == pytest.approx(float(metrics["cr_real"] + metrics["cr_fake"]), rel=1e-6)
    assert float(on_fake) != pytest.approx(float(v["same_draws"]), rel=1e-3)  # the fakes' draws are not the reals'


def _config(variant="smoke", **over):
    """gan_mnist:smoke with bCR, weight 10, shifts only (reg.cr_policy=translation), unless `over` says otherwise."""
    return gan_mnist_config(variant, **{"reg.name": "bcr", "reg.weight": 10.0, "reg.cr_policy": "translation", **over})


def test_bad_consistency_policies_are_refused_and_an_unread_one_is_reported(tmp_path, caplog):
    for empty in ("", "none"):
        with pytest.raises(ValueError, match=f"reg.cr_policy='{empty}' has none: set some"):
            loop.build_task(_config(**{"reg.cr_policy": empty}), tmp_path)
    with pytest.raises(ValueError, match="reg.cr_policy='translation,flop': unknown augmentation 'flop'; choices: "):
        loop.build_task(_config(**{"reg.cr_policy": "translation,flop"}), tmp_path)
    caplog.set_level(logging.WARNING, logger="jaxgen")
    task = loop.build_task(_config(), tmp_path)  # gan_mnist's D has BatchNorm: no input-gradient warning for CR
    assert "BatchNorm in D" not in caplog.text
    assert task.reg_fn.keywords["cfg"].cr_policy == "translation"  # the config's reaches the regularizer
    task = loop.build_task(_config(**{"augment.policy": "translation", "reg.through_augment": True}), tmp_path)
    assert "reg.through_augment=True does nothing with reg.name=bcr" in caplog.text
    assert not task.reg_through_augment  # the regularizer gets the augmented images D saw
    unread = config_check.ignored_settings(_config(**{"reg.name": "none", "reg.cr_policy": "flip"}),
                                           config_lib.gan_config())
    assert any(s.startswith("reg.cr_policy='flip' (read by the consistency regularizers") for s in unread)
    users = _config(**{"reg.name": "tests.test_gan:r2_penalty", "reg.cr_policy": "flip"})  # it gets the reg block
    assert not [s for s in config_check.ignored_settings(users, config_lib.gan_config()) if "cr_policy" in s]


def test_a_run_with_bcr_logs_both_terms(tmp_path, one_device):
    c = _config(**{"train.steps": 4, "train.log_every": 2, "checkpoint.every": 4, "eval.every": 0})
    loop.train_and_evaluate(c, tmp_path)
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(records) == 2 and all(r["cr_real"] > 0 and r["cr_fake"] > 0 and r["reg"] > 0 for r in records)
    assert all(r["reg"] == pytest.approx(r["cr_real"] + r["cr_fake"], rel=1e-5) for r in records)
