"""Adaptive augmentation (StyleGAN2-ADA, augment.ada_target > 0) and augment.probability: the probability's update
rule by hand, augmentations applied with a probability, and a run whose logged probability follows the rule from the
logged signs of D."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check
from jaxgen.data import augment
from jaxgen.reporting import writer
from jaxgen.training import gan_step, loop
from tests.conftest import CONFIGS, config_module, gan_mnist_config


def _ada(p=0.5, signs=0.0):
    return {"p": jnp.float32(p), "signs": jnp.float32(signs)}


def test_the_probability_moves_by_the_images_seen_every_interval_towards_the_target():
    """Every `interval` steps p moves by sign(r_t - target) * batch * interval / (kimg * 1000), r_t the mean of the
    signs summed since the last move; in between it only sums them. Clipped to [0, 1]."""
    step = 0.064 * 4 / 1.0  # batch 64, interval 4, kimg 1: 0.256 per move
    a = gan_step.ada_update(_ada(), jnp.float32(0.9), 0, 64, 0.6, 4, 1.0)  # step 0 of an interval of 4: a sum
    assert float(a["p"]) == 0.5 and float(a["signs"]) == pytest.approx(0.9)
    a = gan_step.ada_update(_ada(signs=1.0), jnp.float32(1.0), 3, 64, 0.5, 4, 1.0)  # r_t = target: no move
    assert float(a["p"]) == 0.5 and float(a["signs"]) == 0
    a = gan_step.ada_update(_ada(signs=2.7), jnp.float32(0.9), 3, 64, 0.6, 4, 1.0)  # r_t = 0.9 > 0.6
    assert float(a["p"]) == pytest.approx(0.5 + step) and float(a["signs"]) == 0
    a = gan_step.ada_update(_ada(signs=0.3), jnp.float32(0.1), 7, 64, 0.6, 4, 1.0)  # r_t = 0.1 < 0.6
    assert float(a["p"]) == pytest.approx(0.5 - step)
    assert float(gan_step.ada_update(_ada(p=0.1, signs=-3.0), jnp.float32(-1.0), 3, 64, 0.6, 4, 1.0)["p"]) == 0.0
    assert float(gan_step.ada_update(_ada(p=0.9, signs=3.0), jnp.float32(1.0), 3, 64, 0.6, 4, 1.0)["p"]) == 1.0


def test_an_augmentation_applies_to_each_example_with_the_probability():
    x = jax.random.uniform(jax.random.key(0), (64, 8, 8, 1), minval=-1, maxval=1)
    key = jax.random.key(1)

    @jax.jit  # one program: outside jit each of the augmentations' ops is one (85 of them)
    def run(x, one):
        grad = jax.grad(lambda v: jnp.sum(augment.apply("color", key, v, 0.5) ** 2))(x)
        return (augment.apply("translation,cutout", key, x), augment.apply("translation,cutout", key, x, one),
                augment.apply("translation,cutout", key, x, 0.0), augment.apply("cutout", key, x, 0.5),
                augment.apply("cutout", key, x), grad)

    always, p1, p0, half, cut, grad = map(np.asarray, run(x, jnp.float32(1.0)))  # p an array, as a traced one
    np.testing.assert_array_equal(p1, always)
    np.testing.assert_array_equal(p0, x)
    changed = np.any(half != np.asarray(x), axis=(1, 2, 3))
    assert 16 < changed.sum() < 48  # about half of the 64 examples cut out
    np.testing.assert_array_equal(half[changed], cut[changed])  # those that are, as always would
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)  # differentiable either way


def _config(**over):
    return gan_mnist_config("ada,smoke", **over)


def test_the_logged_probability_follows_the_rule_from_the_logged_signs(tmp_path, one_device):
    """gan_mnist:ada,smoke for 12 steps, every step logged, p moving every 2 steps by 0.032 * 2 / 0.25 (ada_kimg
    0.25): each step's logged augment_p is what ada_update gives from the earlier steps' d_real_sign, and the last one
    is the checkpoint's."""
    c = _config(**{"train.steps": 12, "train.log_every": 1, "train.steps_per_dispatch": 1, "eval.every": 0,
                   "checkpoint.every": 12, "augment.ada_interval": 2, "augment.ada_kimg": 0.25})
    loop.train_and_evaluate(c, tmp_path)
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == list(range(1, 13))
    ada = _ada(p=0.0)
    for i, r in enumerate(records):
        assert r["augment_p"] == pytest.approx(float(ada["p"]), abs=1e-6), i
        ada = gan_step.ada_update(ada, jnp.float32(r["d_real_sign"]), i, c.train.batch_size, 0.6, 2, 0.25)
    assert any(r["augment_p"] > 0 for r in records)  # D overfits the smoke run's few digits: p rose
    mgr, state = loop.restore(loop.build_task(c, tmp_path))
    mgr.close()
    assert float(state["ada"]["p"]) == pytest.approx(float(ada["p"]), abs=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["augment_p"] == pytest.approx(float(ada["p"]), abs=1e-6)


def test_bad_augmentation_settings_are_refused():
    with pytest.raises(ValueError, match="augment.probability must be in"):
        config_check.check(_config(**{"augment.probability": 1.5}))
    with pytest.raises(ValueError, match="augment.ada_target must be in"):
        config_check.check(_config(**{"augment.ada_target": 1.0}))
    with pytest.raises(ValueError, match="augment.policy, which is empty"):
        config_check.check(_config(**{"augment.policy": ""}))
    with pytest.raises(ValueError, match="augment.ada_interval must be >= 1"):
        config_check.check(_config(**{"augment.ada_interval": 0}))


def test_eval_and_sample_read_the_adaptive_state_whatever_their_config_says(tmp_path, one_device):
    """augment.* is training's alone: trained.load (as --mode=eval and sample) of an ADA run with a config without
    ADA, and of a run without ADA with one that has it, both read the checkpoint."""
    from jaxgen.training import trained

    for name, variant in (("ada_run", "ada,smoke"), ("plain_run", "smoke")):
        c = config_module(CONFIGS / "gan_mnist.py").get_config(variant)
        c.unlock()
        c.output.progress = c.output.plots = False
        c.eval.extractors = ()
        c.train.steps, c.eval.every, c.checkpoint.every = 2, 0, 2
        loop.train_and_evaluate(c, tmp_path / name)
        # The finished run's log file is detached: trained.load's lines below are not the run's.
        assert not [h for h in logging.getLogger("jaxgen").handlers if isinstance(h, logging.FileHandler)]
        other = config_module(CONFIGS / "gan_mnist.py").get_config("smoke" if variant == "ada,smoke" else "ada,smoke")
        run = trained.load(other, tmp_path / name)
        assert run.step == 2 and ("ada" in run.state) == (variant == "ada,smoke")
        assert run.samples(4).shape == (4, 28, 28, 1)


def test_a_loss_whose_d_outputs_the_sign_heuristic_cannot_read_is_warned_about(caplog):
    caplog.set_level("WARNING", logger="jaxgen")
    config_check.check(_config(**{"loss.name": "least_squares"}))
    assert "augment.ada_target with loss.name=least_squares" in caplog.text
    caplog.clear()
    config_check.check(_config(**{"loss.name": "hinge"}))
    assert "augment.ada_target with" not in caplog.text


def test_the_augmentations_draws_with_a_probability_do_not_depend_on_the_device_count():
    """gan_step's per-example augmentation with p = 1/2 under shard_map: 8 devices and 1 give the same images, bit
    for bit (each example's draws come from its own key, its position in the global batch)."""
    from jax.sharding import PartitionSpec as P

    from jaxgen import parallel
    from jaxgen.data import device as dev

    x = jax.random.uniform(jax.random.key(0), (32, 8, 8, 1), minval=-1, maxval=1)
    outs = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = parallel.make_mesh(devices)

        def body(x):
            keys = dev.example_keys(jax.random.key(1), dev.local_positions(32, parallel.AXIS))
            return augment.per_example("translation,cutout,color", keys, x, jnp.float32(0.5))

        f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=P(parallel.AXIS), out_specs=P(parallel.AXIS)))
        outs.append(np.asarray(f(x)))
    np.testing.assert_array_equal(outs[0], outs[1])
    assert 0 < np.mean(np.any(outs[0] != np.asarray(x), axis=(1, 2, 3))) < 1
