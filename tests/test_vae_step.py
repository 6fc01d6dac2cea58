"""The data-parallel train step: 8 devices equal 1, one compilation, non-finite updates refused."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxgen import data, models, objectives, parallel
from jaxgen.training import optim, vae_step
from jaxgen.training import state as state_lib


def _setup(cfg, devices, steps_per_dispatch=1, objective="elbo"):
    mesh = parallel.make_mesh(devices)
    train = data.load(cfg.data, "train")
    model = models.build(cfg.model, train.shape)
    tx, lr = optim.make(cfg.optim, 100)
    create = functools.partial(state_lib.create, model, tx, train.shape, 0, True)
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))()
    fn = vae_step.compile_train(mesh, steps_per_dispatch=steps_per_dispatch, model=model, tx=tx,
                                objective=objectives.get(objective), obj_cfg=cfg.objective, lr_schedule=lr,
                                batch=32, binarize="dynamic", ema_half_life=200.0, ema_rampup=0.0)
    fields = {"image": train.image[:256], **({"label": train.label[:256]} if cfg.model.num_classes else {})}
    return fn, state, parallel.put_replicated(fields, mesh)


def eight_and_one(cfg, steps: int, objective="elbo"):
    """`steps` steps of `objective` on 8 devices and on 1 with the same global batch: ((state, metrics) of 8,
    (state, metrics) of 1, (fn, data) of 1)."""
    fn8, s8, d8 = _setup(cfg, jax.devices(), objective=objective)
    fn1, s1, d1 = _setup(cfg, jax.devices()[:1], objective=objective)
    for _ in range(steps):
        s8, m8 = fn8(s8, d8)
        s1, m1 = fn1(s1, d1)
    return (s8, m8), (s1, m1), (fn1, d1)


def assert_same_params(a, b, atol=1e-5):
    """Every parameter within `atol` (absolute: Adam's sqrt(v) amplifies rounding in near-zero gradients)."""
    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


def test_a_fresh_state_has_no_buffer_twice_so_it_can_be_donated(smoke_config):
    """The EMA params are their own buffers, not the params' (donating one buffer twice is an error): also when
    the state is created outside jit."""
    train = data.load(smoke_config.data, "train")
    model = models.build(smoke_config.model, train.shape)
    tx, _ = optim.make(smoke_config.optim, 100)
    state = state_lib.create(model, tx, train.shape, 0, True)
    pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state)
                if not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)]
    assert len(set(pointers)) == len(pointers)


def test_eight_devices_give_the_params_of_one_with_the_same_global_batch(smoke_config):
    fn8, s8, d8 = _setup(smoke_config, jax.devices())
    fn1, s1, d1 = _setup(smoke_config, jax.devices()[:1])
    assert len(s8["params"]["params"]["up_0"]["kernel"].sharding.device_set) == 8
    for _ in range(3):
        s8, m8 = fn8(s8, d8)
        s1, m1 = fn1(s1, d1)
    # Same global batch and per-example noise; only the order of the gradient reduction differs (float32).
    # Adam divides by sqrt(v), which amplifies rounding in near-zero gradients, so the tolerance is absolute:
    # 1e-5 on every parameter after 3 steps, 1% of one Adam step at lr 1e-3.
    for a, b in zip(jax.tree.leaves(s8["params"]), jax.tree.leaves(s1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    # The gradient itself (not only Adam's scale-free update) is the global-batch mean: its norm and the
    # optimizer's moments match too. (Under shard_map's default check_vma=True they
    # would be 8x: see training/dispatch.py.)
    np.testing.assert_allclose(m8["grad_norm"], m1["grad_norm"], rtol=1e-4)
    # param_norm is the updated params' (as the GAN step logs it).
    # (jitted: outside jit the norm is a program per leaf and op, ~100 of them)
    np.testing.assert_allclose(m1["param_norm"][0], jax.jit(optax.tree.norm)(s1["params"]), rtol=1e-6)
    # Relative to each leaf's scale: a first moment near zero differs in its last bits between 8 sums and 1.
    for a, b in zip(jax.tree.leaves(s8["opt_state"]), jax.tree.leaves(s1["opt_state"])):
        a, b = np.asarray(a), np.asarray(b)
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()) if b.size else 0.0)
    assert int(s8["step"]) == 3


def test_fused_steps_draw_the_batches_and_noise_of_single_steps(smoke_config):
    """steps_per_dispatch changes how steps are dispatched, not what they draw: 2 calls of 2 fused steps give the
    per-step losses and the params of 4 calls of 1 (the batch and the noise of step s come from s alone)."""
    fn1, s1, d = _setup(smoke_config, jax.devices())
    fn2, s2, _ = _setup(smoke_config, jax.devices(), steps_per_dispatch=2)
    single, fused = [], []
    for _ in range(4):
        s1, m = fn1(s1, d)
        single.append(float(m["loss"][0]))
    for _ in range(2):
        s2, m = fn2(s2, d)
        fused += [float(v) for v in m["loss"]]
    np.testing.assert_allclose(fused, single, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s2["params"]), jax.tree.leaves(s1["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)


def left_minus_right(params, x, keys, *, model, cfg):
    """An objective that learns nothing and reports how much brighter the inputs' left half is than the right."""
    del keys, model, cfg
    w = x.shape[2] // 2
    loss = 0.0 * sum(jnp.sum(p) for p in jax.tree.leaves(params))
    return loss, {"left_minus_right": jnp.mean(x[:, :, :w] - x[:, :, w:])}


def test_random_flip_mirrors_about_half_of_the_training_inputs(smoke_config):
    """Left half white: without data.random_flip the left half is 1 brighter at every step; with it, about as often
    the right half is, drawn afresh at every step."""
    images = np.zeros((64, 28, 28, 1), np.uint8)
    images[:, :, :14] = 255  # left half white
    mesh = parallel.make_mesh()
    model = models.build(smoke_config.model, (28, 28, 1))
    tx, lr = optim.make(smoke_config.optim, 100)
    state = jax.jit(functools.partial(state_lib.create, model, tx, (28, 28, 1), 0, False),
                    out_shardings=parallel.replicated(mesh))()
    fn = vae_step.compile_train(mesh, steps_per_dispatch=1, model=model, tx=tx, objective=left_minus_right,
                                obj_cfg=smoke_config.objective, lr_schedule=lr, batch=32, binarize="none",
                                ema_half_life=0.0, ema_rampup=0.0, random_flip=True)
    data = parallel.put_replicated({"image": images}, mesh)
    seen = []
    for _ in range(4):
        state, metrics = fn(state, data)
        seen.append(float(metrics["left_minus_right"][0]))
    assert abs(np.mean(seen)) < 0.25 and len(set(seen)) > 1
    assert all(abs(v) < 1 for v in seen)  # each example its own draw: no batch mirrored (or kept) as a whole


@chex.assert_max_traces(n=1)
def counting_objective(params, x, keys, *, model, cfg, step):
    """The ELBO, failing when traced twice (chex counts its calls with tracers: Python runs only while JAX traces,
    i.e. compiles), and reporting the train step it gets (an objective that names a `step` parameter gets it: a KL
    warm-up of one's own)."""
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss, {**metrics, "seen_step": step.astype(jnp.float32)}


def test_the_step_compiles_once_over_many_steps(smoke_config):
    chex.clear_trace_counter()
    fn, state, d = _setup(smoke_config, jax.devices(), steps_per_dispatch=2,
                          objective="tests.test_vae_step:counting_objective")
    for _ in range(6):
        state, metrics = fn(state, d)
    # counting_objective raised on a second trace: scan traces its body once (then unrolls it), later calls reuse it
    own = {"loss", "elbo", "rec_nll", "kl", "seen_step"}  # the objective's metrics; the step adds exactly these:
    assert set(metrics) - own == set(objectives.STEP_METRICS)
    assert int(state["step"]) == 12 and metrics["loss"].shape == (2,)
    np.testing.assert_array_equal(metrics["step"], [10, 11])
    np.testing.assert_array_equal(metrics["seen_step"], [10.0, 11.0])


def nan_objective(params, x, keys, *, model, cfg):
    """An objective whose loss is NaN: what a diverged run looks like to the step."""
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss * jnp.nan, {**metrics, "loss": loss * jnp.nan}


def nan_metric_objective(params, x, keys, *, model, cfg):
    """A finite loss beside a NaN metric: the GAN step and the VAE step both refuse such a step."""
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss, {**metrics, "my_ratio": jnp.float32(jnp.nan)}


@pytest.mark.parametrize("objective", ["nan_objective", "nan_metric_objective"])
def test_a_non_finite_update_is_not_applied_and_is_reported(smoke_config, objective):
    fn, state, d = _setup(smoke_config, jax.devices(), objective=f"tests.test_vae_step:{objective}")
    before = jax.tree.map(np.asarray, state["params"])
    state, metrics = fn(state, d)
    assert float(metrics["finite"][0]) == 0.0 and int(metrics["step"][0]) == 0
    assert int(state["step"]) == 0
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(state["params"])):
        np.testing.assert_array_equal(a, b)


def test_put_batch_places_each_row_on_the_device_the_mesh_gives_it():
    """Rows go where the mesh's order puts them, also for a mesh not in jax.devices() order (on a pod a process's
    devices need not form one block of the mesh)."""
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    for devices in (jax.devices(), jax.devices()[::-1], jax.devices()[1::2] + jax.devices()[::2]):
        mesh = parallel.make_mesh(devices)
        placed = parallel.put_batch({"x": x}, mesh)["x"]
        np.testing.assert_array_equal(np.asarray(placed), x)
        for shard in placed.addressable_shards:
            i = devices.index(shard.device)
            np.testing.assert_array_equal(np.asarray(shard.data), x[2 * i : 2 * i + 2])


def test_processes_that_disagree_are_a_clear_error(monkeypatch):
    """What a pod's processes must share (the resumed step, the data) is compared; a difference names each
    process's value and the fix."""
    from jax.experimental import multihost_utils

    parallel.check_same_on_every_process("x", 3, "fix")  # one process: nothing to compare
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(parallel, "check_equal_device_counts", lambda: None)  # this process holds all 8
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda v: np.stack([v, v]))
    parallel.check_same_on_every_process("the step", 7, "share the workdir")
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda v: np.stack([v, v + 1]))
    expected = r"disagree on the data \(process 0: \[4, 2, \d+\]; process 1: \[5, 3, \d+\]\)\. same files"
    with pytest.raises(parallel.ProcessesDisagreeError, match=expected):
        parallel.check_same_on_every_process("the data", parallel.fingerprint(np.zeros((4, 2), np.uint8)),
                                             "same files")


def _init(m):
    """m's params at key 0, initialised in one program (outside jit each op of the init is one: 160 for the four
    models below)."""
    return jax.jit(m.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, m.latent_dim)))["params"]


def test_the_decoder_can_start_at_the_training_mean():
    """model.output_bias='data_mean' (Burda et al.'s IWAE code): the Bernoulli decoder's logits start at the
    logit of each pixel's mean grey value (per channel for conv_vae); other choices are listed."""
    from jaxgen.config import vae_config

    images = np.zeros((4, 28, 28, 1), np.uint8)
    images[:2, 10:18] = 255  # rows 10-17 are white in half the images
    c = vae_config()
    c.model.name, c.model.output_bias = "mlp_vae", "data_mean"
    m = models.build(c.model, (28, 28, 1), train_images=images)
    params = _init(m)
    kernel = params["enc_0"]["kernel"]
    assert float(np.std(kernel)) == pytest.approx(np.sqrt(2 / (784 + 200)), rel=0.05)  # Glorot uniform, 784 -> 200
    bias = np.asarray(params["out"]["bias"]).reshape(28, 28)
    np.testing.assert_allclose(bias[12], 0.0, atol=1e-6)  # p = 0.5
    np.testing.assert_allclose(bias[0], np.log(0.001 / 0.999), rtol=1e-5)  # p = 0, clipped at 0.001
    c.model.name = "conv_vae"
    m = models.build(c.model, (28, 28, 1), train_images=images, likelihood="gaussian")
    params = _init(m)
    np.testing.assert_allclose(params["out"]["bias"], [8 * 28 * 2 / (28 * 28 * 4)], rtol=1e-5)  # the mean pixel
    # The discretized logistic: 2 outputs a channel, the mean, then the log of the logistic scale with the pixels'
    # standard deviation (floored: a pixel that is always black has none).
    m = models.build(c.model, (28, 28, 1), train_images=images, likelihood="discretized_logistic")
    params = _init(m)
    p = 8 * 28 * 2 / (28 * 28 * 4)
    np.testing.assert_allclose(params["out"]["bias"], [p, np.log(np.sqrt(p - p * p) * np.sqrt(3) / np.pi)], rtol=1e-5)
    c.model.name = "mlp_vae"
    m = models.build(c.model, (28, 28, 1), train_images=images, likelihood="discretized_logistic")
    params = _init(m)
    bias = np.asarray(params["out"]["bias"]).reshape(28, 28, 2)  # the decoder output's layout
    np.testing.assert_allclose(bias[12, 3], [0.5, np.log(0.5 * np.sqrt(3) / np.pi)], rtol=1e-5)
    np.testing.assert_allclose(bias[0, 3], [0.0, -7.0 - np.log(2)], rtol=1e-6)
    decode = functools.partial(m.apply, method="decode")
    assert jax.eval_shape(decode, {"params": params}, jnp.zeros((2, m.latent_dim))).shape == (2, 28, 28, 2)
    c.model.output_bias = "mean"
    with pytest.raises(ValueError, match="unknown model.output_bias 'mean'; choices: zero, data_mean"):
        models.build(c.model, (28, 28, 1), train_images=images)


def test_the_evaluation_gives_the_same_numbers_with_either_conv_impl(smoke_config, tmp_path):
    """model.conv_impl='xla' (XLA's own transposed convolution) in the sharded evaluation, as in training: the
    same numbers as the phase forms, up to float32 rounding (it crashed at the first evaluation)."""
    from jaxgen.training import loop

    c = smoke_config
    c.eval.num_examples, c.eval.batch_size, c.eval.nll_k, c.eval.nll_chunk = 16, 16, 2, 2
    got = {}
    for impl in ("phase", "xla"):
        c.model.conv_impl = impl
        task = loop.build_task(c, tmp_path)
        state = task.create()
        got[impl] = task.evaluate(state, final=False, data=task.test)
    for key in ("elbo", "nll", "recon_mse"):
        assert got["xla"][key] == pytest.approx(got["phase"][key], rel=1e-5), key


def test_the_traversal_moves_the_most_active_latents():
    """latent_traversal.png showed the first 10 latents, often collapsed ones (a 128-d CIFAR VAE, a beta-VAE)."""
    from jaxgen.evaluation import vae as vae_eval
    from jaxgen.models.vae import MLPVAE

    mu = np.random.default_rng(0).normal(size=(100, 4)) * np.array([0.01, 2.0, 0.0, 1.0])
    assert vae_eval.most_active(mu, 3) == (1, 3, 0)
    model = MLPVAE((4, 4, 1), 4, (8,), "tanh")
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4)))  # one program
    trav = vae_eval.traversal(params, jnp.zeros(4), model=model, likelihood="bernoulli", dims=(3, 1),
                              steps=5)
    assert trav.shape == (10, 4, 4, 1)
    z = np.zeros((5, 4))
    z[:, 3] = np.linspace(-3, 3, 5)  # the first row moves latent 3
    decoded = jax.jit(lambda params, z: jax.nn.sigmoid(model.apply(params, z, method="decode")))
    np.testing.assert_allclose(trav[:5], decoded(params, jnp.asarray(z)), rtol=1e-6)


def test_the_nll_does_not_depend_on_the_chunk_and_a_chunk_past_k_is_cut(smoke_config, tmp_path):
    """The NLL's importance samples are drawn per sample index, so any eval.nll_chunk gives the same NLL; a chunk
    larger than both sample counts decoded draws only to mask them (up to 10x the work), so it is cut to k."""
    from jaxgen.training import loop

    c = smoke_config
    c.eval.num_examples, c.eval.batch_size, c.eval.nll_k, c.eval.final_nll_k = 16, 16, 5, 6
    got = {}
    for chunk in (2, 50):
        c.eval.nll_chunk = chunk
        task = loop.build_task(c, tmp_path)
        state = task.create()
        got[chunk] = task.evaluate(state, final=False, data=task.test)["nll"]
        assert task.nll_chunk == min(chunk, 6)
    assert got[2] == got[50]


def test_the_test_set_binarization_is_the_same_for_every_seed(smoke_config, tmp_path, one_device):
    """Runs with different seeds are scored on one binarized test set (eval.binarize_seed): the reconstruction NLL
    at the posterior mean, which has no noise, depends only on the params and that set."""
    from jaxgen.training import loop

    c = smoke_config
    c.eval.num_examples, c.eval.nll_k, c.eval.nll_chunk = 64, 2, 2
    task = loop.build_task(c, tmp_path)
    state = task.create()
    got = {}
    for seed, binarize_seed in ((0, 0), (5, 0), (0, 7)):
        task.config.seed, task.config.eval.binarize_seed = seed, binarize_seed
        got[seed, binarize_seed] = task.evaluate(state, final=False, data=task.test)
    assert got[5, 0]["recon_nll_at_mean"] == got[0, 0]["recon_nll_at_mean"]
    assert got[5, 0]["elbo"] != got[0, 0]["elbo"]  # the latent noise is the run's own
    assert got[0, 7]["recon_nll_at_mean"] != got[0, 0]["recon_nll_at_mean"]
    # recon_mse: the reconstruction's mean (from the binarized input) against the intensities x / 255
    from jaxgen.data import device as dev
    from jaxgen.evaluation import vae as vae_eval

    images = task.test.image[:64]
    pos = np.arange(len(images))
    before = dev.preprocess(images, dev.substream(dev.example_keys(  # the key of seed 0 before binarize_seed existed
        jax.random.fold_in(jax.random.key(0), state_lib.EVAL_STREAM), pos), 0), "dynamic")
    np.testing.assert_array_equal(vae_eval.eval_inputs(images, pos, vae_eval.binarize_key(0), "dynamic"), before)
    x = vae_eval.eval_inputs(images, np.arange(len(images)), vae_eval.binarize_key(7), "dynamic")
    rec = vae_eval.reconstruct(state["params"], x, model=task.model, likelihood="bernoulli")
    want = float(jnp.mean((rec - images / 255.0) ** 2))
    assert got[0, 7]["recon_mse"] == pytest.approx(want, rel=1e-5)



def test_the_loss_curves_draw_one_nll_curve_per_number_of_importance_samples():
    """The final eval's NLL takes more importance samples than the ones before: a curve of its own. A --mode=eval
    record of an earlier step is no point of the run's history."""
    from jaxgen.reporting import plots

    records = [{"step": s, "split": "train", "loss": 100.0 - s} for s in (5, 10)]
    records += [{"step": 10, "split": "eval", "elbo": -95.0, "nll": 92.0, "nll_k": 100},
                {"step": 20, "split": "eval", "elbo": -94.0, "nll": 92.5, "nll_k": 100},
                {"step": 20, "split": "eval", "elbo": -94.0, "nll": 90.5, "nll_k": 1000},
                {"step": 10, "split": "eval", "by": "--mode=eval", "elbo": -95.0, "nll": 91.0, "nll_k": 1000}]
    series = {label: (steps, values) for label, steps, values, _ in plots.loss_series(records)}
    assert series == {"train loss": ([5, 10], [95.0, 90.0]), "eval -elbo": ([10, 20, 20], [95.0, 94.0, 94.0]),
                      "eval nll (k=100)": ([10, 20], [92.0, 92.5]), "eval nll (k=1000)": ([20], [90.5])}


@pytest.mark.parametrize("classes", [1, 10, 40])
def test_the_latent_scatter_gives_each_class_one_colour_with_a_legend_up_to_20_classes(classes, tmp_path,
                                                                                        monkeypatch):
    """One colour per class (tab10's, in class order) with a legend; none for a dataset without labels (all 0); a
    colour scale beyond 20 classes, where colours would repeat."""
    import matplotlib.figure

    from jaxgen.reporting import plots

    figures = []
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig))
    labels = np.arange(200) % classes
    plots.latent_scatter(np.random.default_rng(0).normal(size=(200, 5)), labels, tmp_path / "s.png")
    ax = figures[0].axes[0]
    legend = ax.get_legend()
    if classes == 40:
        assert legend is None and len(figures[0].axes) == 2  # the colour bar's
        return
    assert len(ax.collections) == classes and len(figures[0].axes) == 1
    colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert len(set(colours)) == classes
    assert (legend is None) == (classes == 1)
    if legend is not None:
        assert [t.get_text() for t in legend.get_texts()] == [str(k) for k in range(classes)]


def centred_elbo(params, x, keys, *, model, cfg):
    """The ELBO plus a batch statistic (the squared mean of the posterior means, weighted 100) over the global
    batch: the means gathered from every device, as the README's Objectives section shows."""
    from jaxgen.objectives import vae as vae_objectives

    loss, metrics = vae_objectives.elbo(params, x, keys, model=model, cfg=cfg)
    mu, _ = model.apply(params, x, method="encode")
    pen = jnp.sum(jnp.square(jnp.mean(jax.lax.all_gather(mu, parallel.AXIS, axis=0, tiled=True), axis=0)))
    return loss + 100.0 * pen, {**metrics, "loss": loss + 100.0 * pen, "centre_pen": pen}


def test_an_objective_with_a_batch_statistic_gathers_it_and_gives_one_devices_numbers_on_eight(smoke_config):
    """An objective runs on each device's share of the global batch; a batch statistic in it (an MMD's, a total
    correlation's) is the global batch's when it gathers what it needs over parallel.AXIS: the loss, the statistic
    and the gradient on 8 devices are those of 1 (all_gather's transpose sums the devices' identical cotangents and
    the gradients' pmean divides by 8 again). The one-trace check of the objective binds that axis."""
    name = "tests.test_vae_step:centred_elbo"
    train = data.load(smoke_config.data, "train")
    model = models.build(smoke_config.model, train.shape)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, *train.shape)),
                                               jnp.zeros((2, model.latent_dim))))
    objectives.check_objective(objectives.get(name), name, params, jax.ShapeDtypeStruct((2, *train.shape),
                               jnp.float32), jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 2)),
                               model=model, cfg=smoke_config.objective)
    fn8, s8, d8 = _setup(smoke_config, jax.devices(), objective=name)
    fn1, s1, d1 = _setup(smoke_config, jax.devices()[:1], objective=name)
    _, m8 = fn8(s8, d8)
    _, m1 = fn1(s1, d1)
    for k in ("loss", "centre_pen", "grad_norm"):
        np.testing.assert_allclose(m8[k], m1[k], rtol=1e-4, err_msg=k)
    assert float(m1["centre_pen"][0]) > 1e-4  # the statistic matters to the loss
