"""GAN losses and regularizers against hand computations and finite differences; the sharded GAN step against
one device; bitwise resume of the whole GAN state; a user's own loss by import path; a NaN stops the run."""

import json
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import parallel
from jaxgen.evaluation import quality
from jaxgen.models import gan as gan_models
from jaxgen.objectives import gan as gan_obj
from jaxgen.reporting import writer
from jaxgen.training import gan_step, loop, modes, optim
from jaxgen.training import state as state_lib
from tests.conftest import CONFIGS, config_module

R = np.array([1.0, -2.0], np.float32)  # D(x)
F = np.array([0.5, 3.0], np.float32)  # D(G(z))
sp = lambda v: np.log1p(np.exp(v))  # softplus, by hand


@pytest.mark.parametrize("name,d_loss,g_loss", [
    ("minimax", np.mean(sp(-R)) + np.mean(sp(F)), -np.mean(sp(F))),
    ("non_saturating", np.mean(sp(-R)) + np.mean(sp(F)), np.mean(sp(-F))),
    ("hinge", (0 + 3) / 2 + (1.5 + 4) / 2, -(0.5 + 3) / 2),
    ("wasserstein", (0.5 + 3) / 2 - (1 - 2) / 2, -(0.5 + 3) / 2),
    ("least_squares", 0.5 * (0 + 9) / 2 + 0.5 * (0.25 + 9) / 2, 0.5 * (0.25 + 4) / 2),
    # Pairs: R - F = (0.5, -5). Averages: E F = 1.75, E R = -0.5: r = R - 1.75 = (-0.75, -3.75), f = F + 0.5 = (1, 3.5).
    ("relativistic", np.mean(sp(np.array([-0.5, 5.0]))), np.mean(sp(np.array([0.5, -5.0])))),
    ("relativistic_average", np.mean(sp(np.array([0.75, 3.75]))) + np.mean(sp(np.array([1.0, 3.5]))),
     np.mean(sp(np.array([-1.0, -3.5]))) + np.mean(sp(np.array([-0.75, -3.75])))),
    ("relativistic_average_hinge", (1.75 + 4.75) / 2 + (2 + 4.5) / 2, (0 + 0) / 2 + (0.25 + 0) / 2),
])
def test_losses_match_a_hand_computation(name, d_loss, g_loss):
    d, g, metrics = gan_obj.get_loss(name)(jnp.asarray(R), jnp.asarray(F))
    np.testing.assert_allclose([float(d), float(g)], [d_loss, g_loss], rtol=1e-6)
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_the_pairwise_relativistic_loss_refuses_fresh_fakes_of_another_count_and_the_averaged_ones_take_them():
    with pytest.raises(ValueError, match="cannot take d_real and d_fake of different lengths"):
        gan_obj.check_loss(gan_obj.get_loss("relativistic"), "relativistic", batch=4, g_batch=8)
    with pytest.raises(ValueError, match="pairs each real with a fake: D's outputs on 4 reals and 1 fakes"):
        gan_obj.check_loss(gan_obj.get_loss("relativistic"), "relativistic", batch=4, g_batch=1)  # would broadcast
    gan_obj.check_loss(gan_obj.get_loss("relativistic_average"), "relativistic_average", batch=4, g_batch=8)
    assert gan_step.reads_d_real(gan_obj.get_loss("relativistic_average"), 4)  # G's loss reads D on the reals
    assert not gan_step.reads_d_real(gan_obj.get_loss("hinge"), 4)


def test_unknown_loss_and_regularizer_list_the_choices():
    with pytest.raises(ValueError, match="unknown GAN loss 'hing'; choices: hinge, least_squares, minimax"):
        gan_obj.get_loss("hing")
    with pytest.raises(ValueError, match="unknown regularizer 'r2'; choices: bcr, cr, dragan, gp, none, r1"):
        gan_obj.get_regularizer("r2")


def test_binarize_is_refused_for_a_gan():
    from jaxgen import config_check

    c = _smoke(**{"data.binarize": "dynamic"})
    with pytest.raises(ValueError, match="data.binarize='dynamic' is for VAEs.*--config.data.binarize=none"):
        config_check.check(c)


# A small nonlinear critic whose input gradient we can take by finite differences in float64 numpy.
W = np.random.default_rng(0).normal(size=(2 * 3 * 1, 4)).astype(np.float32) * 0.7


def _d_np(x):  # x [B, 2, 3, 1] -> [B]
    return np.tanh(x.reshape(len(x), -1) @ W.astype(np.float64)).sum(-1) + 0.3 * (x.reshape(len(x), -1) ** 2).sum(-1)


def _d_jax(x):
    return jnp.tanh(x.reshape(x.shape[0], -1) @ W).sum(-1) + 0.3 * jnp.sum(jnp.square(x.reshape(x.shape[0], -1)), -1)


def _fd_grad_norms(x, h=1e-6):
    x = x.astype(np.float64)
    g = np.zeros_like(x)
    for idx in np.ndindex(*x.shape[1:]):
        e = np.zeros_like(x)
        e[(slice(None), *idx)] = h
        g[(slice(None), *idx)] = (_d_np(x + e) - _d_np(x - e)) / (2 * h)
    return np.sqrt((g.reshape(len(x), -1) ** 2).sum(-1))


def test_r1_matches_finite_differences():
    x = np.random.default_rng(1).normal(size=(5, 2, 3, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), 5)
    penalty, _ = jax.jit(lambda x, keys: gan_obj.r1(_d_jax, x, None, keys))(jnp.asarray(x), keys)  # one program
    np.testing.assert_allclose(float(penalty), 0.5 * np.mean(_fd_grad_norms(x) ** 2), rtol=1e-4)


def test_gradient_penalty_matches_finite_differences():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(5, 2, 3, 1)).astype(np.float32)
    fake = rng.normal(size=(5, 2, 3, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(3), 5)
    penalty, _ = jax.jit(lambda real, fake, keys: gan_obj.gradient_penalty(_d_jax, real, fake, keys))(
        jnp.asarray(real), jnp.asarray(fake), keys)  # one program
    eps = np.asarray(jax.vmap(lambda k: jax.random.uniform(k, (1, 1, 1)))(keys))  # the draw the penalty makes
    x_hat = eps * real + (1 - eps) * fake
    np.testing.assert_allclose(float(penalty), np.mean((_fd_grad_norms(x_hat) - 1) ** 2), rtol=1e-4)


def test_dragan_matches_finite_differences_around_the_reals_with_the_global_batchs_std():
    """On 8 devices (one real each) as on 1: the std is the global batch's, the draws each example's own."""
    from jax.sharding import PartitionSpec as P

    real = np.random.default_rng(4).normal(1.0, 2.0, size=(8, 2, 3, 1)).astype(np.float32)
    keys = jax.random.split(jax.random.key(5), 8)
    got = {}
    for n in (1, 8):
        mesh = parallel.make_mesh(jax.devices()[:n])
        fn = jax.shard_map(lambda r, k: jax.lax.pmean(gan_obj.dragan(_d_jax, r, None, k)[0], parallel.AXIS), mesh=mesh,
                           in_specs=(P(parallel.AXIS), P(parallel.AXIS)), out_specs=P(), check_vma=False)
        got[n] = float(jax.jit(fn)(jnp.asarray(real), keys))
    a = np.asarray(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), (1, 1, 1)))(keys))
    u = np.asarray(jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (2, 3, 1)))(keys))
    x_hat = real + a * 0.5 * real.std() * u  # every pixel of the batch
    np.testing.assert_allclose(got[1], np.mean((_fd_grad_norms(x_hat) - 1) ** 2), rtol=1e-4)
    np.testing.assert_allclose(got[8], got[1], rtol=1e-5)


def _gan_setup(mesh, g_batch=0, random_flip=False, augment_probability=1.0, **over):
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    for k, v in over.items():
        section, name = k.split(".")
        c[section][name] = v
    G, D = gan_models.build(c.model, (28, 28, 1), axis_name=parallel.AXIS)
    g_tx, g_lr = optim.make(c.g_optim, 100)
    d_tx, d_lr = optim.make(c.d_optim, 100)
    lecam = (c.reg.lecam_weight, c.reg.lecam_decay) if c.reg.lecam_weight > 0 else None
    topk = (c.loss.topk_gamma, c.loss.topk_nu) if c.loss.topk_nu > 0 else None
    ac_weight = c.loss.ac_weight if c.model.d_conditioning == "ac" else 0.0
    state = state_lib.create_gan(G, D, g_tx, d_tx, (28, 28, 1), 0, ema=True, num_classes=c.model.num_classes,
                                 lecam=lecam is not None)
    fn = gan_step.compile_train(
        mesh, steps_per_dispatch=1, generator=G, discriminator=D, g_tx=g_tx, d_tx=d_tx,
        loss_fn=gan_obj.get_loss(c.loss.name), reg_fn=gan_obj.get_regularizer(c.reg.name, c.reg),
        reg_weight=c.reg.weight, reg_interval=c.reg.interval, d_steps=c.train.d_steps, batch=32,
        augment_policy=c.augment.policy,
        ema_half_life=200.0, ema_rampup=0.0, g_lr=g_lr, d_lr=d_lr, g_batch=g_batch, random_flip=random_flip,
        reg_through_augment=c.reg.through_augment, num_classes=c.model.num_classes,
        augment_probability=augment_probability, lecam=lecam, topk=topk, ac_weight=ac_weight)
    return state, fn


def test_r1_through_the_augmentation_takes_the_gradient_at_the_clean_reals():
    """reg.through_augment: R1 of D(T(x)) with respect to x (StyleGAN2-ADA) instead of D at the augmented T(x)
    (DiffAugment). 'color' scales the reals (contrast, saturation), so the input gradients and R1 differ; D's
    outputs, and so its loss, are the same."""
    mesh = parallel.make_mesh(jax.devices()[:1])
    images = (np.random.default_rng(0).random((64, 28, 28, 1)) * 255).astype(np.uint8)
    seen = []
    for through in (False, True):
        state, fn = _gan_setup(mesh, **{"reg.name": "r1", "augment.policy": "color", "reg.through_augment": through})
        _, metrics = fn(jax.device_put(state, parallel.replicated(mesh)), parallel.put_replicated({"image": images},
                                                                                                      mesh))
        seen.append(jax.device_get(metrics))
    np.testing.assert_allclose(seen[0]["d_real"], seen[1]["d_real"], rtol=1e-5)
    assert abs(float(seen[0]["r1_grad_sq"][0]) / float(seen[1]["r1_grad_sq"][0]) - 1) > 0.01


@chex.assert_max_traces(n=1)  # once per trace of the step (one D update): the step compiles once
def left_minus_right(d_fn, real, fake, keys):
    """A regularizer that penalises nothing and reports how much brighter the reals' left half is than the right."""
    del d_fn, fake, keys
    w = real.shape[2] // 2
    return jnp.zeros(()), {"left_minus_right": jnp.mean(real[:, :, :w] - real[:, :, w:])}


def test_random_flip_mirrors_about_half_of_the_reals():
    """data.random_flip: D sees each real mirrored with probability 1/2 (left half white, right half black here):
    without it the left half would be 2 brighter in [-1, 1] at every step; with it, about as often the right."""
    images = np.zeros((64, 28, 28, 1), np.uint8)
    images[:, :, :14] = 255
    mesh = parallel.make_mesh()
    chex.clear_trace_counter()  # left_minus_right fails if the step is traced again over the 4 calls
    state, fn = _gan_setup(mesh, random_flip=True, **{"reg.name": "tests.test_gan:left_minus_right"})
    state = jax.device_put(state, parallel.replicated(mesh))
    data = parallel.put_replicated({"image": images}, mesh)
    seen = []
    for _ in range(4):
        state, metrics = fn(state, data)
        seen.append(float(metrics["left_minus_right"][0]))
    assert abs(np.mean(seen)) < 0.5 and len(set(seen)) > 1  # a fresh draw each step
    assert all(abs(v) < 2 for v in seen)  # each real its own draw: no batch mirrored (or kept) as a whole
    # What the step logs besides the loss's and the regularizer's own metrics: exactly the names reserved for it.
    d = jax.ShapeDtypeStruct((4,), jnp.float32)
    own = {"left_minus_right", *jax.eval_shape(gan_obj.get_loss("non_saturating"), d, d)[2]}
    # reg_ran: with reg.interval > 1 only; augment_p and d_real_sign: with adaptive augmentation only (test_ada.py);
    # lecam*: with LeCam regularization only (test_lecam.py); topk: with top-k training only (test_topk.py); ac_*:
    # with an auxiliary-classifier D only (test_acgan.py)
    assert set(metrics) - own == set(gan_obj.STEP_METRICS) - {"reg_ran", "augment_p", "d_real_sign", "lecam",
                                                              "lecam_real", "lecam_fake", "topk", "ac_real",
                                                              "ac_real_acc", "ac_fake", "ac_fake_acc", "ac_g",
                                                              "ac_g_acc"}


@pytest.mark.parametrize("over", [
    # LeCam's anchors from the global batch's means, moved by both D updates of a step
    {"train.d_steps": 2, "reg.name": "r1", "reg.interval": 2, "augment.policy": "translation,flip",
     "reg.lecam_weight": 0.3},
    # The G update on fresh fakes of its own, 48 beside D's 32, and a loss of batch means (nothing else: CI time)
    {"g_batch": 48, "loss.name": "relativistic_average"},
    # Class-conditional: the reals' labels gathered per device, fresh fakes' labels drawn, R1 of D(x, y) at the clean
    # reals through their augmentation
    {"model.num_classes": 10, "g_batch": 48, "reg.name": "r1", "augment.policy": "translation",
     "reg.through_augment": True},
    # bCR: its per-example draws of T and the D loss's outputs handed to it, per device
    {"reg.name": "bcr", "reg.weight": 10.0, "reg.cr_policy": "translation", "augment.policy": "color"},
    # ACGAN: the auxiliary classifier's cross-entropies, per device, in both updates, on fresh fakes
    {"model.num_classes": 10, "model.d_conditioning": "ac", "g_batch": 48},
], ids=["reused_fakes", "fresh_fakes_relativistic", "conditional", "bcr", "acgan"])
def test_sharded_gan_step_equals_one_device(over):
    """8 devices give the params of 1 device with the same global batch (sync BatchNorm; in the first case also
    per-device R1 and augmentation, in the second the G update's own fresh fakes and a relativistic loss, whose
    means of D's outputs are over the global batch: before, over each device's share): within 2e-5 absolute after 3
    steps (float32 reduction order differs). Adam's eps is raised to 1e-3 here: with the default 1e-8 an element whose
    gradient is reduction-order noise moves by +-lr either way (1.8e-4 apart seen without AVX-512)."""
    rng = np.random.default_rng(0)
    arrays = {"image": (rng.random((256, 28, 28, 1)) * 255).astype(np.uint8)}
    if "model.num_classes" in over:
        arrays["label"] = rng.integers(0, 10, 256).astype(np.int32)
    results, first_seen, metrics_seen = [], [], []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = parallel.make_mesh(devices)
        state, fn = _gan_setup(mesh, **over, **{"g_optim.eps": 1e-3, "d_optim.eps": 1e-3})
        state = jax.device_put(state, parallel.replicated(mesh))
        data = parallel.put_replicated(arrays, mesh)
        for i in range(3):
            state, metrics = fn(state, data)
            if i == 0:
                first_seen.append(jax.device_get(metrics))
        assert float(metrics["finite"][0]) == 1.0
        results.append(jax.device_get(state))
        metrics_seen.append(jax.device_get(metrics))
    # The gradients themselves are the global-batch means (Adam's update alone would hide a scale error, which
    # would be a factor of 8 or more here): tightly at the first step, from the same params; at the third, after
    # two updates whose params already differ in the last digits, within 1e-3 (1.7e-4 seen without AVX-512).
    names = ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm", "g_param_norm", "d_param_norm",
             *(("reg",) if "reg.name" in over else ()),
             *(("lecam", "lecam_real", "lecam_fake") if "reg.lecam_weight" in over else ()),
             *(("ac_real", "ac_fake", "ac_g") if "model.d_conditioning" in over else ()))
    for name in names:
        np.testing.assert_allclose(first_seen[0][name], first_seen[1][name], rtol=2e-5, err_msg=name)
        np.testing.assert_allclose(metrics_seen[0][name], metrics_seen[1][name], rtol=1e-3, err_msg=name)
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            continue
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), atol=2e-5, rtol=1e-4)


def test_a_critic_without_a_lipschitz_constraint_is_warned_about(caplog):
    import logging

    from jaxgen import config_check

    def warnings(**over):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="jaxgen"):
            config_check.check(_smoke(**over))
        return caplog.text

    assert "wasserstein without a Lipschitz constraint" in warnings(**{"loss.name": "wasserstein"})
    assert "Lipschitz" not in warnings(**{"loss.name": "wasserstein", "reg.name": "gp", "reg.weight": 10.0})
    assert "Lipschitz" not in warnings(**{"loss.name": "wasserstein", "model.d_spectral_norm": True})
    assert "Lipschitz" in warnings(**{"loss.name": "wasserstein", "reg.name": "bcr"})  # bounds no gradient
    with pytest.raises(ValueError, match="reg.weight must be >= 0, got -1.0"):
        config_check.check(_smoke(**{"reg.name": "r1", "reg.weight": -1.0}))


def r1_on_both(d_fn, real, fake, keys):
    """A user's regularizer that calls d_fn once on reals and fakes together (2B images)."""
    g = jax.grad(lambda v: jnp.sum(d_fn(v)))(jnp.concatenate([real, fake]))
    return 0.5 * jnp.mean(jnp.sum(jnp.square(g), axis=(1, 2, 3))), {}


def test_d_fn_through_the_augmentation_names_the_batch_it_takes(tmp_path):
    """With reg.through_augment, d_fn augments with the reals' draws: a batch of another size failed deep in vmap."""
    c = _smoke(**{"reg.name": "tests.test_gan:r1_on_both", "augment.policy": "translation",
                  "reg.through_augment": True, "eval.every": 0})
    with pytest.raises(ValueError, match=r"reg.through_augment=True: the regularizer's d_fn\(x\) augments x with "
                                         r"the reals' draws .* as `real` \(4\); it got 8\. Call d_fn on reals and "
                                         r"fakes separately"):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before training: no stray workdir
    gan_obj.check_through_augment_batch(4, 4)
    with pytest.raises(ValueError, match=r"as many images as `real` \(4\); it got 8"):  # the step's own check
        gan_obj.check_through_augment_batch(4, 8)


def _smoke(**over):
    """gan_mnist:smoke without progress bar, plots and (unless asked) sample-quality metrics."""
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.output.progress = False
    c.output.plots = False
    c.eval.extractors = ()
    for k, v in over.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


def test_a_lazy_regularizers_metrics_are_means_over_the_updates_that_ran_it(tmp_path, one_device):
    """With reg.interval=N the skipped D updates' zeros were averaged in: the logged R1 was 1/N of it, or swung
    with the record window. Records with no such update leave the metrics out."""
    from jaxgen.reporting.writer import read

    c = _smoke(**{"reg.name": "r1", "reg.interval": 2, "train.log_every": 1, "train.steps": 5,
                  "train.steps_per_dispatch": 1, "eval.every": 0, "checkpoint.every": 5})
    loop.train_and_evaluate(c, tmp_path)
    train = [r for r in read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    ran = [r["step"] for r in train if "r1_grad_sq" in r]
    assert ran == [1, 3, 5]  # D updates 0, 2 and 4 ran it (a record's step counts the steps done)
    assert all(r["r1_grad_sq"] > 0 and r["reg"] > 0 for r in train if "reg" in r)
    assert all("reg" not in r and "reg_ran" not in r for r in train if r["step"] in (2, 4))


def test_a_resume_with_another_d_steps_is_refused(tmp_path, one_device):
    """D's schedule and batches count D updates as step x train.d_steps, its optimizer the updates it made: a resume
    with another d_steps logged one learning rate and applied another, and skipped batches."""
    import json

    c = _smoke(**{"eval.every": 0, "train.steps": 10, "checkpoint.every": 10})
    loop.train_and_evaluate(c, tmp_path)
    c.train.steps, c.train.d_steps = 20, 2
    with pytest.raises(ValueError, match=r"train.d_steps is 2, but the run resumed from step 10 in .* made 1 D "
                                         r"update\(s\) per step: .* Keep --config.train.d_steps=1"):
        loop.train_and_evaluate(c, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["train"]["d_steps"] == 1
    assert "Resumed from" not in (tmp_path / "log.txt").read_text().split("Done")[-1]  # no line on a refused resume
    c.train.steps = 10  # nothing left to train: a re-evaluation, which d_steps does not change
    loop.train_and_evaluate(c, tmp_path)


def test_gan_resume_is_bitwise_for_the_whole_state(tmp_path, one_device):
    # R1 at every 3rd D update, 2 a step: the resume at step 4 (D update 8) lands between two of them (6 and 9)
    c = _smoke(**{"eval.every": 0, "checkpoint.every": 4, "train.steps": 8, "reg.name": "r1",
                  "reg.interval": 3, "train.d_steps": 2, "reg.lecam_weight": 0.3})
    loop.train_and_evaluate(c, tmp_path / "straight")
    c.train.steps = 4
    loop.train_and_evaluate(c, tmp_path / "resumed")
    c.train.steps = 8
    loop.train_and_evaluate(c, tmp_path / "resumed")
    log = (tmp_path / "resumed" / "log.txt").read_text()  # resumed, not trained again from step 0 (same bits)
    assert "Resumed from the checkpoint at step 4" in log and "Done: 4 steps this invocation" in log
    states = []
    for d in ("straight", "resumed"):
        mgr, s = loop.restore(loop.build_task(c, tmp_path / d))
        mgr.close()
        states.append(jax.device_get(s))
    a, b = states
    assert set(a) == {"step", "g", "d", "g_opt", "d_opt", "key", "ema_g", "lecam"}
    assert int(a["step"]) == 8
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def relativistic_loss(d_real, d_fake, *, cfg, step=None):
    """A user's loss (relativistic average, Jolicoeur-Martineau 2018), loaded by import path in the test below,
    with a hyperparameter of its own in the `loss` block (cfg), and the train step it is called at."""
    rd = d_real - jnp.mean(d_fake) - cfg.margin
    fd = d_fake - jnp.mean(d_real)
    d_loss = jnp.mean(jax.nn.softplus(-rd)) + jnp.mean(jax.nn.softplus(fd))
    g_loss = jnp.mean(jax.nn.softplus(rd)) + jnp.mean(jax.nn.softplus(-fd))
    seen = {} if step is None else {"loss_step": jnp.float32(step)}
    return d_loss, g_loss, {"relativistic_gap": jnp.mean(rd), "margin": jnp.float32(cfg.margin), **seen}


def r2_penalty(d_fn, real, fake, keys, cfg, *, step):
    """A user's regularizer (R2, Mescheder et al. 2018: R1 on the fakes), loaded by import path below; `cfg` is the
    `reg` block, with a field of its own; `step` the train step."""
    del real, keys
    g = jax.grad(lambda x: jnp.sum(d_fn(x)))(fake)
    sq = jnp.sum(jnp.square(g), axis=(1, 2, 3))
    return cfg.half * jnp.mean(sq), {"r2_grad_sq": jnp.mean(sq), "reg_step": jnp.float32(step)}


def nan_loss(d_real, d_fake):
    return jnp.mean(d_real) * jnp.nan, jnp.mean(d_fake), {}


def test_a_users_loss_and_regularizer_load_by_import_path_and_train(tmp_path, one_device):
    """A relativistic loss (it reads d_real in the G update) with augmentation and fresh fakes of another length:
    the reals keep the last D update's keys. Both functions take `cfg`, their config block, with fields of their
    own (a config file adds them to the block, see the README)."""
    c = _smoke(**{"loss.name": "tests.test_gan:relativistic_loss", "reg.name": "tests.test_gan:r2_penalty",
                  "reg.weight": 10.0, "eval.every": 0, "augment.policy": "flip", "train.g_batch_size": 48,
                  "loss.margin": 0.25, "reg.half": 0.5})
    loop.train_and_evaluate(c, tmp_path)
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert records and all("relativistic_gap" in r and np.isfinite(r["g_loss"]) for r in records)
    assert all(r["margin"] == 0.25 for r in records)
    assert all(r["r2_grad_sq"] > 0 and r["reg"] == pytest.approx(0.5 * r["r2_grad_sq"], rel=1e-4) for r in records)
    # Both took the train step: each record averages steps step-5 ... step-1 (train.log_every=5).
    assert all(r["loss_step"] == r["reg_step"] == r["step"] - 3 for r in records)


def test_a_nan_stops_the_gan_run_and_keeps_the_last_good_checkpoint(tmp_path, one_device):
    c = _smoke(**{"eval.every": 0, "train.steps": 10})
    loop.train_and_evaluate(c, tmp_path)
    c.train.steps = 20
    c.loss.name = "tests.test_gan:nan_loss"
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite d_loss.* in the update from step 10 to 11: "
                                                 r".*step 10\) is kept.* Lower the learning rate or set gradient "
                                                 r"clipping \(g_optim.clip_norm, d_optim.clip_norm\), or check the "
                                                 r"loss function \(d_loss, g_loss came out non-finite from finite "
                                                 r"params\)"):
        loop.train_and_evaluate(c, tmp_path)
    c.g_optim.clip_norm = c.d_optim.clip_norm = 1.0  # clipping on already: not suggested again
    with pytest.raises(loop.NonFiniteLossError, match=r"Lower the learning rate \(gradient clipping is on: "
                                                 r"g_optim.clip_norm=1, d_optim.clip_norm=1\), or check the loss"):
        loop.train_and_evaluate(c, tmp_path)
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [10]
    c.loss.name = "non_saturating"
    mgr, state = loop.restore(loop.build_task(c, tmp_path))  # the kept checkpoint reads, its params finite
    mgr.close()
    assert int(state["step"]) == 10
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((state["g"]["params"], state["d"]["params"])))


def test_gan_outputs_land_in_the_workdir(tmp_path, one_device):
    """gan_mnist:smoke as a user runs it (plots, the classifier's FID), and the SWD: tests/test_configs.py's smoke
    check of every config leaves gan_mnist to this test."""
    c = _smoke(**{"output.plots": True, "eval.extractors": ("classifier",), "eval.swd": True})
    final = loop.train_and_evaluate(c, tmp_path)
    assert final["num_examples"] > 0
    assert all(np.isfinite(v) for v in final.values() if isinstance(v, float)), final
    train_log = (tmp_path / "log.txt").read_text()
    done = [line for line in train_log.splitlines() if " Done: " in line]  # the final FID in the closing line
    q, s = final["sample_quality"]["classifier"], final["sample_quality"]["swd"]
    assert len(done) == 1 and (f"; classifier FID {q['fid']:.2f} (64 samples; real training images: "
                               f"{q['fid_train_images']:.2f}); SWD {s['swd']:.2f} (64 images each; real "
                               f"training images: {s['swd_train_images']:.2f}); outputs in") in done[0]
    # The SWD beside the extractors' blocks: one level at 28x28, as many reference images as samples.
    assert s["swd_resolutions"] == [28] and s["swd_images"] == 64 and 0 < s["swd_train_images"] < s["swd"]
    assert s["num_reference"] == 1000 and s["num_samples"] == 64  # the test digits, of which it keeps a draw of 64
    assert q["num_train_images"] == 64 and 0 < q["fid_train_images"] < q["fid"]
    assert final["num_examples"] == 64 and np.isfinite(final["d_real"])
    for name in ("images/samples.png", "images/samples_0000010.png", "images/samples_0000020.png",
                 "interpolations.png", "samples_over_time.png",
                 "gan_curves.png", "eval.json", "config.json", "log.txt"):
        assert (tmp_path / name).is_file(), name
    with np.load(tmp_path / "images" / "fixed_noise_history.npz") as h:
        assert list(h["steps"]) == [10, 20]
    # The final step's grid under its step's name too: a run extended later keeps every eval's grid.
    out = tmp_path / "images"
    assert (out / "samples_0000020.png").read_bytes() == (out / "samples.png").read_bytes()
    assert set(quality.TASK_METRICS["gan"]) <= set(final)  # what checkpoint.best_metric may name
    again = modes.evaluate_checkpoint(c, tmp_path)  # --mode=eval on the finished run gives the same numbers
    np.testing.assert_allclose([again["d_real"], again["d_fake"]], [final["d_real"], final["d_fake"]], rtol=1e-5)
    with np.load(tmp_path / "images" / "fixed_noise_history.npz") as h:
        row = h["images"][-1].astype(int)
    c.output.num_samples = 4  # fewer than the history's 8 columns (--mode=eval may change output.*): the same row
    modes.evaluate_checkpoint(c, tmp_path)
    with np.load(tmp_path / "images" / "fixed_noise_history.npz") as h:
        assert list(h["steps"]) == [10, 20] and np.abs(h["images"][-1] - row).max() <= 1
    c.output.num_samples = 16
    # A workdir whose history has rows of 4 (trained with output.num_samples=4 before rows kept 8 columns): the
    # next row appends, the old ones padded on the right.
    from jaxgen.reporting import images

    path = tmp_path / "images" / "fixed_noise_history.npz"
    with np.load(path) as h:
        narrow = h["images"][:, :4]
    np.savez(path, images=narrow, steps=np.asarray([10, 20]))
    images.append_history(path, 30, np.zeros((8, 28, 28, 1), np.float32))
    with np.load(path) as h:
        assert h["images"].shape == (3, 8, 28, 28, 1) and list(h["steps"]) == [10, 20, 30]
        np.testing.assert_array_equal(h["images"][:2, :4], narrow)
        assert not h["images"][:2, 4:].any()
    # Sample quality on the classifier's features, with what stands beside the numbers; the best checkpoint.
    q = final["sample_quality"]["classifier"]
    assert q["num_samples"] == 64 and q["num_reference"] == 1000 and q["reference"] == "mnist_5k test"
    # Which classifier: the images it trained on and its weights (another train split trains another one).
    assert re.fullmatch(r"jaxgen's metric classifier trained \d+ steps on the labels of 4000 mnist_5k train images "
                        r"\(128-d features; weights [0-9a-f]{12}\)", q["extractor"]), q["extractor"]
    for name in ("fid", "kid_mean", "kid_std", "precision", "recall", "density", "coverage", "class_coverage"):
        assert np.isfinite(q[name]), name
    np.testing.assert_allclose(again["sample_quality"]["classifier"]["fid"], q["fid"], rtol=1e-6)
    np.testing.assert_allclose(again["sample_quality"]["swd"]["swd"], s["swd"], rtol=1e-6)
    assert json.loads((tmp_path / "eval.json").read_text())["sample_quality"]["classifier"]["fid"] == q["fid"]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["metric"] == "classifier/fid" and best["step"] in (10, 20)
    assert (tmp_path / "best" / str(best["step"])).is_dir()
    evals = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    # --mode=eval's record stands beside the final eval's (the history of the run keeps what training evaluated)
    assert [(r["step"], r.get("by")) for r in evals] == [(10, None), (20, None), (20, "--mode=eval")]
    assert evals[1]["classifier/fid"] == q["fid"] and evals[1]["swd/swd"] == s["swd"]
    assert evals[2]["classifier/fid"] == pytest.approx(q["fid"], rel=1e-6)
    assert min(r["classifier/fid"] for r in evals) == pytest.approx(best["value"], rel=1e-6)
    c.eval.checkpoint = "best"  # --mode=eval on the best checkpoint: eval_best.json; eval.json, metrics untouched
    history = (tmp_path / "metrics.jsonl").read_text()
    modes.evaluate_checkpoint(c, tmp_path)
    evb = json.loads((tmp_path / "eval_best.json").read_text())
    assert evb["step"] == best["step"]
    assert evb["selected_by"].startswith(f"the lowest classifier/fid ({best['value']:.6g}) of the run's evaluations on "
                                         f"the 'test' split: an optimistic estimate")
    assert "hold out a validation split (data.validation_examples) for unbiased ones" in evb["selected_by"]
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == 20
    assert (tmp_path / "metrics.jsonl").read_text() == history
    c.eval.checkpoint = "newest"
    # --mode=sample: N samples as a uint8 .npz and PNG grids.
    path = modes.sample_checkpoint(c, tmp_path)
    with np.load(path) as z:
        assert z["images"].shape == (32, 28, 28, 1) and z["images"].dtype == np.uint8 and int(z["step"]) == 20
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000020_000.png",
                                                                             "step_0000020_001.png"]
    c.sample.num = 16  # again with fewer: the earlier call's grids of that step are gone
    modes.sample_checkpoint(c, tmp_path)
    assert sorted(p.name for p in (tmp_path / "samples").glob("*.png")) == ["step_0000020_000.png"]
    # --mode=eval with train.ema_half_life=0 evaluates the raw G of a run that keeps an EMA (train.* may differ).
    c.train.ema_half_life = 0.0
    raw = modes.evaluate_checkpoint(c, tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["params"] == "raw" and raw["d_fake"] != again["d_fake"]
    # --mode=eval and --mode=sample log into files of their own (they may run beside a training run).
    assert (tmp_path / "log.txt").read_text() == train_log
    evals_log = (tmp_path / "log_eval.txt").read_text()
    assert "--mode=eval on the newest checkpoint: step 20" in evals_log
    assert "--mode=eval on the best checkpoint" in evals_log
    assert "train.ema_half_life=0: evaluating the checkpoint's raw weights, not the EMA it keeps" in evals_log
    assert "--mode=sample on the newest checkpoint: step 20" in (tmp_path / "log_sample.txt").read_text()


def test_gan_celeba_runs_end_to_end_under_tfds_mock_data(tmp_path, monkeypatch, one_device):
    import tensorflow_datasets as tfds

    from jaxgen.data import tfds_source

    monkeypatch.setattr(tfds_source, "can_reach", lambda host: pytest.fail("no network in tests"))
    monkeypatch.setattr(tfds_source, "has_tensorflow", lambda: True)  # mock_data stands in for preparing
    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOSTS", {})
    c = config_module(CONFIGS / "gan_celeba.py").get_config("smoke")  # its smoke variant, on TFDS celeb_a
    c.unlock()
    c.data.name, c.data.num_examples, c.data.data_dir = "celeb_a", 0, str(tmp_path / "tfds")
    full = config_module(CONFIGS / "gan_celeba.py").get_config().data  # smoke's synthetic data resets these
    c.data.resolution, c.data.crop, c.data.test_percent = full.resolution, full.crop, full.test_percent
    c.output.progress = False
    with tfds.testing.mock_data(num_examples=64):
        final = loop.train_and_evaluate(c, tmp_path / "run")
    assert final["num_examples"] == 64 and np.isfinite(final["d_real"]) and np.isfinite(final["d_fake"])
    assert not list((tmp_path / "tfds").rglob("*.npz"))  # mock_data's records are never cached
    for name in ("images/samples.png", "interpolations.png", "gan_curves.png", "eval.json", "checkpoints/20"):
        assert (tmp_path / "run" / name).exists(), name


@pytest.mark.parametrize("loss_name", ["non_saturating", "tests.test_gan:relativistic_loss"])
def test_g_update_through_the_reused_fakes_equals_the_direct_gradient(loss_name):
    """G's gradient pulled back through the VJP of the D step's fakes equals jax.grad of g_loss(D(x), D(G(z)))
    with the current D; a loss whose g_loss reads D(x) (relativistic) gets D's outputs on the reals afresh."""
    import optax
    from jax.sharding import PartitionSpec as P

    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    G, D = gan_models.build(c.model, (28, 28, 1), axis_name=parallel.AXIS)
    sgd = optax.sgd(1.0)  # new params = params - grad
    state = state_lib.create_gan(G, D, sgd, sgd, (28, 28, 1), 0, ema=False)
    z = jax.random.normal(jax.random.key(1), (16, G.latent_dim))
    stale = jax.random.normal(jax.random.key(2), (16,))  # D(x) before D's update: what g_loss must not read
    real = jax.random.uniform(jax.random.key(4), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.key(3), 16)
    loss_fn = gan_obj.get_loss(loss_name, ml_collections.ConfigDict({"margin": 0.1}))
    assert gan_step.reads_d_real(loss_fn, 16) == (loss_name != "non_saturating")

    def body(state, z, real, keys):
        gen = lambda p: gan_step.apply_model(G, {**state["g"], "params": p}, z, True)
        fake, vjp, _ = jax.vjp(gen, state["g"]["params"], has_aux=True)
        new, _ = gan_step.g_update(state, fake, vjp, stale, keys, discriminator=D, g_tx=sgd, loss_fn=loss_fn,
                                   augment_policy="", real=real if gan_step.reads_d_real(loss_fn, 16) else None)
        d_real = gan_step.apply_model(D, state["d"], real, True)[0]

        def direct(p):
            d_fake = gan_step.apply_model(D, state["d"], gen(p)[0], True)[0]
            return loss_fn(d_real, d_fake)[1]

        return new["g"]["params"], jax.grad(direct)(state["g"]["params"])

    mesh = parallel.make_mesh(jax.devices()[:1])
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(), P()),
                              check_vma=False))
    new, grad = f(state, z, real, keys)
    for p0, p1, g in zip(jax.tree.leaves(state["g"]["params"]), jax.tree.leaves(new), jax.tree.leaves(grad)):
        np.testing.assert_allclose(np.asarray(p0 - p1), np.asarray(g), rtol=1e-4, atol=1e-7)


def test_d_update_is_the_gradient_of_the_d_loss_plus_the_lazily_scaled_regularizer():
    """D's update (SGD with rate 1: new = old - grad) is jax.grad of d_loss(D(reals), D(fakes)) plus, at a D update
    the lazy regularizer runs (it % reg.interval == 0), reg.weight * reg.interval * R1; without it otherwise. Catches
    reals and fakes swapped and a lost interval factor, which the 8-vs-1-device test cannot (both sides alike)."""
    import optax
    from jax.sharding import PartitionSpec as P

    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    G, D = gan_models.build(c.model, (28, 28, 1), axis_name=parallel.AXIS)
    sgd = optax.sgd(1.0)
    state = state_lib.create_gan(G, D, sgd, sgd, (28, 28, 1), 0, ema=False)
    real = jax.random.uniform(jax.random.key(4), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    fake = jax.random.uniform(jax.random.key(5), (16, 28, 28, 1), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.key(3), 16)
    loss_fn, weight, interval = gan_obj.get_loss("non_saturating"), 0.5, 3

    def body(state, real, fake, keys, it):
        new, _, _ = gan_step.d_update(state, real, fake, keys, it, discriminator=D, d_tx=sgd, loss_fn=loss_fn,
                                      reg_fn=gan_obj.r1, reg_weight=weight, reg_interval=interval,
                                      augment_policy="")

        def direct(p, with_reg):
            variables = {**state["d"], "params": p}
            d_real, variables = gan_step.apply_model(D, variables, real, True)
            d_fake, variables = gan_step.apply_model(D, variables, fake, True)
            total = loss_fn(d_real, d_fake)[0]
            if with_reg:
                d_fn = lambda x: gan_step.apply_model(D, variables, x, True)[0]  # noqa: E731
                total = total + weight * interval * gan_obj.r1(d_fn, real, fake, keys)[0]
            return total

        p = state["d"]["params"]
        return new["d"]["params"], jax.grad(direct)(p, True), jax.grad(direct)(p, False)

    mesh = parallel.make_mesh(jax.devices()[:1])
    f = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(),) * 5, out_specs=(P(), P(), P()), check_vma=False))
    for it, runs in ((0, True), (1, False), (3, True)):
        new, with_reg, without = f(state, real, fake, keys, jnp.int32(it))
        want = with_reg if runs else without
        for p0, p1, g in zip(jax.tree.leaves(state["d"]["params"]), jax.tree.leaves(new), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(p0 - p1), np.asarray(g), rtol=1e-4, atol=1e-6)
    assert not all(np.allclose(a, b, rtol=1e-3) for a, b in zip(jax.tree.leaves(with_reg), jax.tree.leaves(without)))


@pytest.mark.parametrize("variant", ["hinge", "wgan_gp", "r1", "dragan", "diffaugment", "bf16"])
def test_gan_mnist_variants_train_end_to_end(variant, tmp_path, one_device):
    """Every loss / regularizer / augmentation / dtype variant of the shipped GAN config runs a few steps (on one
    device and without sample-quality metrics, which other tests cover: CI time)."""
    c = config_module(CONFIGS / "gan_mnist.py").get_config(f"{variant},smoke")
    c.unlock()
    c.train.steps, c.train.log_every, c.checkpoint.every, c.eval.every = 4, 2, 4, 0
    c.output.progress = c.output.plots = False
    c.eval.extractors = ()
    final = loop.train_and_evaluate(c, tmp_path)
    assert np.isfinite(final["d_real"]) and np.isfinite(final["d_fake"])
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert len(records) == 2 and all(np.isfinite(r["d_loss"]) and np.isfinite(r["g_loss"]) for r in records)


def test_too_few_test_images_for_one_eval_batch_fail_before_any_training(tmp_path):
    c = _smoke()
    c.eval.num_examples = 8
    with pytest.raises(ValueError, match=r"eval needs at least eval.batch_size=\d+ images, the test split has "
                                         r"\d+ \(eval.num_examples=8 of them are scored\); lower eval.batch_size to "
                                         r"at most 8 \(a multiple of the device count, 8\) or raise "
                                         r"eval.num_examples$"):
        loop.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "checkpoints").exists()
    c.data.num_examples = 16  # a small dataset: every size it cannot fill is named at once
    with pytest.raises(ValueError, match=r"train split has 16 examples, fewer than train.batch_size=32; lower the "
                                         r"batch size to at most 16 \(a multiple of the device count, 8\); and eval "
                                         r"needs at least eval.batch_size"):
        loop.train_and_evaluate(c, tmp_path)
    c.eval.num_examples = 0  # the split itself is short: the size that fits is named
    with pytest.raises(ValueError, match=r"the test split has 16; lower eval.batch_size to at most 16 \(a multiple "
                                         r"of the device count, 8\)$"):
        loop.train_and_evaluate(c, tmp_path)


def test_the_ema_follows_a_half_life_in_images_and_ramps_up():
    """Decay 0.5 ** (batch / half-life): the EMA halves its memory every half-life images at any batch size. With a
    ramp-up r (StyleGAN2-ADA's ema_rampup) the half-life is at most r x the images seen, so the first step copies
    G (step size 1) and the random initial weights fade early. The step size keeps its precision when tiny."""
    beta = lambda step, batch, rampup, h=10_000: 1.0 - float(state_lib.ema_rate(step, batch, h, rampup))
    assert beta(0, 64, 0.0) == pytest.approx(0.5 ** (64 / 10_000))
    assert beta(7, 64, 0.0) ** 4 == pytest.approx(beta(7, 256, 0.0), rel=1e-6)
    assert beta(0, 64, 0.05) == 0.0  # nothing seen yet: the EMA starts as G
    assert beta(100, 64, 0.05) == pytest.approx(0.5 ** (64 / (100 * 64 * 0.05)))  # half-life 320 images
    assert beta(10**6, 64, 0.05) == pytest.approx(0.5 ** (64 / 10_000))  # ramped up: the configured half-life
    assert float(state_lib.ema_rate(0, 1, 1e7)) == pytest.approx(np.log(2) / 1e7, rel=1e-5)


def test_the_first_step_with_a_ramp_up_leaves_the_ema_equal_to_g(tmp_path, one_device):
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.train.ema_rampup, c.train.steps_per_dispatch = 0.05, 1
    task = loop.build_task(c, tmp_path)
    state = task.create()
    state, _ = task.compile_train()(state, parallel.put_replicated({"image": task.train.image}, task.mesh))
    for a, b in zip(jax.tree.leaves(state["ema_g"]["params"]), jax.tree.leaves(state["g"]["params"])):
        np.testing.assert_array_equal(a, b)


def test_the_in_training_scores_use_fixed_keyed_latents_whatever_the_eval_batch_size(tmp_path):
    """D(x) and D(G(z)) at an evaluation come from latents drawn from the seed's keys, each test image's partner the
    same at every eval.batch_size (with a D without BatchNorm, whose outputs do not depend on the batch). A batch
    size that does not divide the images still scores each once: the last batch reaches back (16 into 40)."""
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.model.d_norm, c.eval.num_examples, c.eval.batch_size = "none", 40, 8
    task = loop.build_task(c, tmp_path)
    state = task.create()
    got = []
    for bs in (8, 40, 16):
        task.config.eval.batch_size = bs
        got.append(task.evaluate(state, final=False, data=task.test))
    assert [ev["num_examples"] for ev in got] == [40, 40, 40]
    for ev in got[1:]:
        assert ev["d_real"] == pytest.approx(got[0]["d_real"], rel=1e-5)
        assert ev["d_fake"] == pytest.approx(got[0]["d_fake"], rel=1e-5)
    other = task.evaluate(state, final=False, data=task.test)
    assert other == got[-1]  # the same latents at every evaluation


def paired_loss(d_real, d_fake):
    """A user's loss that pairs each real with a fake: it cannot take the G update's longer batch of fresh fakes."""
    d_loss = jnp.mean(jax.nn.softplus(d_fake - d_real))
    return d_loss, jnp.mean(jax.nn.softplus(d_real - d_fake)), {}


def test_a_loss_that_cannot_take_fresh_fakes_for_the_g_update_is_refused(tmp_path):
    """(gan_mnist:wgan_gp trains with fresh fakes: test_gan_mnist_variants_train_end_to_end.)"""
    c = _smoke(**{"eval.every": 0, "train.steps": 4, "checkpoint.every": 4, "train.g_batch_size": 48})
    c.loss.name = "tests.test_gan:paired_loss"
    with pytest.raises(ValueError, match=r"cannot take d_real and d_fake of different lengths \(train.batch_size=32 "
                                         r"reals beside train.g_batch_size=48 .*set train.g_batch_size=0 or -1"):
        loop.train_and_evaluate(c, tmp_path / "paired")
    c.train.g_batch_size = 12
    with pytest.raises(ValueError, match=r"train.g_batch_size=12 is not divisible by the 8 devices"):
        loop.train_and_evaluate(c, tmp_path / "odd")
    c.train.g_batch_size = -1  # as many as the batch: a paired loss runs
    assert loop.build_task(c, tmp_path / "same").g_batch == 32


def test_the_interpolation_grid_follows_great_circles_from_each_first_latent_to_its_second():
    """gan_eval.slerp_paths: each row starts at its pair's first latent and ends at its second; between them the
    angle to the first grows evenly, and latents of equal norm keep it (a straight line would shrink it)."""
    from jaxgen.evaluation import gan as gan_eval

    z = jax.random.normal(jax.random.key(0), (3, 2, 16))
    z = z / jnp.linalg.norm(z, axis=-1, keepdims=True) * 4.0
    path = np.asarray(gan_eval.slerp_paths(z, 5)).reshape(3, 5, 16)
    np.testing.assert_allclose(path[:, 0], z[:, 0], atol=1e-5)
    np.testing.assert_allclose(path[:, -1], z[:, 1], atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 4.0, rtol=1e-5)
    a = np.asarray(z[:, 0])
    cos = np.sum(path.astype(np.float64) * a[:, None], -1) / 16.0  # |a| |p| = 16
    angle = np.arccos(np.clip(cos, -1, 1))  # float32's rounding near cos 1 is ~4e-4 of an angle
    np.testing.assert_allclose(np.diff(angle, axis=1), np.broadcast_to(angle[:, -1:] / 4, (3, 4)), atol=1e-3)


def gathered_r1(d_fn, real, fake, keys):
    """R1 whose penalty is a mean over the whole global batch (gathered over the devices, as the README's
    regularizer contract shows), with a metric that reads the device's index."""
    del fake, keys
    g = jax.grad(lambda x: jnp.sum(d_fn(x)))(real)
    sq = jax.lax.all_gather(jnp.sum(jnp.square(g), axis=(1, 2, 3)), parallel.AXIS, axis=0, tiled=True)
    return 0.5 * jnp.mean(sq), {"device_index": jax.lax.axis_index(parallel.AXIS).astype(jnp.float32)}


def test_a_regularizer_with_collectives_over_the_devices_passes_its_check_before_training():
    """The one-trace check runs outside the step's shard_map: it binds the 'data' axis (size 1), so a gather or
    an axis_index there is not an unbound-axis NameError."""
    assert gan_obj.check_regularizer(gathered_r1, "tests.test_gan:gathered_r1", (28, 28, 1)) == ("device_index",)


def test_the_samples_over_time_picture_keeps_at_most_64_rows_and_the_npz_every_eval(tmp_path):
    """A long run's every eval made a PNG too tall to open (gan_celeba, 1M steps: 500 rows, 65,000 px)."""
    from PIL import Image

    from jaxgen.reporting import images

    assert list(images.history_rows(3)) == [0, 1, 2]
    rows = images.history_rows(500)
    assert len(rows) == 64 and rows[0] == 0 and rows[-1] == 499 and np.all(np.diff(rows) >= 7)
    history = tmp_path / "fixed_noise_history.npz"
    for step in range(1, 101):
        images.append_history(history, step, np.full((2, 4, 4, 1), step / 100, np.float32))
    with np.load(history) as h:
        assert list(h["steps"]) == list(range(1, 101))
    png = images.save_history(history, tmp_path / "samples_over_time.png")
    with Image.open(png) as im:
        assert im.size == (2 * (2 * 5 + 1), 2 * (64 * 5 + 1))  # 2 columns, 64 rows of 4 px + 1 px pads, scale 2
        last = np.asarray(im)[-3, 2]  # inside the last row's first image: the last step's value
    assert last == 255
