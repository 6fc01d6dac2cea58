"""Class-conditional GANs (model.num_classes > 0): the projection D and the conditioned G's against their
definitions, the errors, and a run that trains, evaluates (class_accuracy) and samples by class. The sharded
conditional step against one device is in test_gan.py (test_sharded_gan_step_equals_one_device)."""

import json
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check
from jaxgen.config import gan_config
from jaxgen.evaluation import quality
from jaxgen.models import gan, gan_blocks
from jaxgen.reporting import writer
from jaxgen.training import gan_task, loop, modes, trained
from tests.conftest import CONFIGS, ROOT, config_module

README = ROOT / "README.md"


def _model(name="dcgan", **kw):
    c = gan_config().model
    c.name, c.g_width, c.d_width, c.latent_dim, c.num_classes = name, 8, 8, 16, 3
    for k, v in kw.items():
        c[k] = v
    return c


def _init(module, x, labels):
    with jax.threefry_partitionable(False):  # as test_gan_models: any random init, compiled faster
        # Jitted: one program, not one per op of the init run eagerly.
        return jax.jit(lambda x, labels: module.init(jax.random.key(0), x, labels, train=False))(x, labels)


@pytest.mark.parametrize("name,shape", [("dcgan", (28, 28, 1)), ("resnet", (32, 32, 3))])
def test_the_projection_term_is_the_class_embedding_dotted_with_the_features_of_ds_last_dense(name, shape):
    """D(x, y) = w . phi(x) + <E[y], phi(x)> (Miyato and Koyama 2018, eq. 3), phi(x) the input of D's last Dense:
    found as the gradient of D(x) with respect to that Dense's kernel (w . phi is linear in it). Without the
    embedding the conditional D is the unconditional one with the same weights."""
    _, d = gan.build(_model(name, d_norm="none", d_spectral_norm=False), shape)
    _, d_plain = gan.build(_model(name, d_norm="none", d_spectral_norm=False, num_classes=0), shape)
    x = jax.random.uniform(jax.random.key(1), (4, *shape), minval=-1, maxval=1)
    y = jnp.array([0, 2, 1, 2], jnp.int32)
    v = _init(d, x, y)

    @jax.jit  # both sides in one program, not one per op run eagerly
    def class_term_and_expected(params):
        params = dict(params)
        emb = jax.random.normal(jax.random.key(2), params["class_embedding"]["embedding"].shape)
        params["class_embedding"] = {"embedding": emb}
        out = d.apply({"params": params}, x, y, train=False)
        plain_params = {k: p for k, p in params.items() if k != "class_embedding"}
        plain = d_plain.apply({"params": plain_params}, x, train=False)

        def logit(kernel, i):  # example i's logit depends on the kernel w through phi_i . w alone: its grad is phi_i
            return d_plain.apply({"params": {**plain_params, "Dense_0": {"kernel": kernel}}}, x[i : i + 1],
                                 train=False)[0]

        phi = jnp.stack([jax.grad(logit)(plain_params["Dense_0"]["kernel"], i)[:, 0] for i in range(4)])
        assert phi.shape[1] == emb.shape[1]
        return out - plain, jnp.sum(emb[y] * phi, -1)

    term, expected = class_term_and_expected(v["params"])
    np.testing.assert_allclose(term, expected, rtol=1e-4, atol=1e-4)


def test_the_dcgan_g_appends_the_one_hot_label_to_z():
    """G(z, y) of the conditional DCGAN G is the unconditional G's on [z, one_hot(y)] (a latent 3 longer)."""
    shape = (28, 28, 1)
    g, _ = gan.build(_model(), shape)
    g_plain, _ = gan.build(_model(num_classes=0, latent_dim=19), shape)
    z = jax.random.normal(jax.random.key(3), (4, 16))
    y = jnp.array([0, 1, 2, 1], jnp.int32)
    v = _init(g, z, y)

    @jax.jit  # both sides in one program, not one per op run eagerly
    def outputs(v):
        return (g.apply(v, z, y, train=False),
                g_plain.apply(v, jnp.concatenate([z, jax.nn.one_hot(y, 3)], -1), train=False),
                g.apply(v, z[1:2], jnp.array([0], jnp.int32), train=False))

    out, plain, relabelled = outputs(v)
    np.testing.assert_array_equal(out, plain)
    assert not np.allclose(out[1], relabelled[0])


def test_the_resnet_g_has_a_per_class_batchnorm_affine_that_starts_as_the_identity():
    """The ResNet G's block BatchNorms take a per-class scale and shift (categorical conditional BN): at init (1 and
    0 for every class) G(z, y) does not depend on y; a change to class 1's scale changes class 1's samples only
    (eval mode: each sample on its own)."""
    shape = (32, 32, 3)
    g, _ = gan.build(_model("resnet"), shape)
    z = jax.random.normal(jax.random.key(4), (3, 16))
    v = _init(g, z, jnp.zeros(3, jnp.int32))
    norm = v["params"]["_ResBlock_0"]["norm1"]
    assert norm["scale"]["embedding"].shape == (3, 32) and norm["shift"]["embedding"].shape == (3, 32)
    apply = jax.jit(lambda v, y: g.apply(v, z, y, train=False))  # one program for the 4 calls, not one per op
    outs = [apply(v, jnp.full(3, k, jnp.int32)) for k in range(3)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    np.testing.assert_allclose(outs[0], outs[2], atol=1e-6)
    params = jax.tree.map(lambda a: a, v["params"])
    params["_ResBlock_0"]["norm1"]["scale"]["embedding"] = norm["scale"]["embedding"].at[1].multiply(3.0)
    changed = apply({**v, "params": params}, jnp.array([0, 1, 2], jnp.int32))
    np.testing.assert_allclose(np.asarray(changed)[[0, 2]], np.asarray(outs[0])[[0, 2]], atol=1e-6)
    assert not np.allclose(changed[1], outs[0][1], atol=1e-3)
    # With g_norm='none' there is no BN to condition: the labels go in with z, as the DCGAN G's.
    g_none, _ = gan.build(_model("resnet", g_norm="none"), shape)
    v_none = jax.eval_shape(lambda: _init(g_none, z, jnp.zeros(3, jnp.int32)))
    assert v_none["params"]["Dense_0"]["kernel"].shape == (16 + 3, 4 * 4 * 32)


def test_conditional_and_unconditional_calls_are_checked():
    g, d = gan.build(_model(), (28, 28, 1))
    z, y = jnp.zeros((2, 16)), jnp.zeros(2, jnp.int32)
    v = jax.eval_shape(lambda: _init(g, z, y))  # the errors are raised while tracing: nothing need be compiled
    with pytest.raises(ValueError, match="num_classes=3: call it with labels int"):
        jax.eval_shape(lambda v: g.apply(v, z, train=False), v)
    g_plain, _ = gan.build(_model(num_classes=0), (28, 28, 1))
    with pytest.raises(ValueError, match="unconditional.*set model.num_classes"):
        jax.eval_shape(lambda: g_plain.init(jax.random.key(0), z, y, train=False))


class _PlainG(nn.Module):
    """A user's unconditional G: no labels argument."""

    latent_dim: int = 4

    @nn.compact
    def __call__(self, z, train=True):
        return jnp.tanh(nn.Dense(28 * 28)(z)).reshape(-1, 28, 28, 1)


class _PlainD(nn.Module):
    @nn.compact
    def __call__(self, x, train=True):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


def plain_pair(model_config, image_shape, axis_name=None):
    return _PlainG(), _PlainD()


def test_a_users_model_without_a_labels_argument_is_refused_when_conditional():
    with pytest.raises(ValueError, match=r"cannot be called as generator\(z, labels, train=...\).*labels: int \[B\] "
                                         r"in \[0, model.num_classes=3\)"):
        gan.build(_model(f"{__name__}:plain_pair"), (28, 28, 1))


def _config(variant="conditional,smoke", **over):
    c = config_module(CONFIGS / "gan_mnist.py").get_config(variant)
    c.unlock()
    c.output.progress = False
    for k, v in over.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


def test_labels_outside_the_classes_and_a_negative_count_are_refused_before_training(tmp_path, caplog):
    with pytest.raises(ValueError, match=r"model.num_classes=5, but the train split of 'mnist_5k' has labels 0..9; "
                                         r".*--config.model.num_classes=10"):
        gan_task.GANTask(_config(**{"model.num_classes": 5}), tmp_path)
    with pytest.raises(ValueError, match="model.num_classes must be >= 0"):
        config_check.check(_config(**{"model.num_classes": -1}))
    caplog.set_level("WARNING", logger="jaxgen")
    gan_task.GANTask(_config(**{"model.num_classes": 12, "eval.extractors": ()}), tmp_path)
    assert "has no example of class(es) 10, 11" in caplog.text


def test_a_conditional_gan_trains_evaluates_and_samples_by_class(tmp_path, one_device):
    """gan_mnist:conditional,smoke end to end: the classifier metric's class_accuracy in eval.json and
    metrics.jsonl (and usable as the best checkpoint's metric), --mode=sample's labels beside its images, and
    trained.load's samples and labels the same."""
    c = _config(**{"checkpoint.best_metric": "classifier/class_accuracy"})
    c.train.steps, c.eval.every = 10, 5
    loop.train_and_evaluate(c, tmp_path)
    block = json.loads((tmp_path / "eval.json").read_text())["sample_quality"]["classifier"]
    assert 0.0 <= block["class_accuracy"] <= 1.0
    assert block["intra_fid"] > block["intra_fid_train_images"] > 0  # per class against the test digits of it
    assert len(block["intra_fid_per_class"]) == 10 and sum(block["intra_fid_samples_per_class"]) == 64
    records = [r for r in writer.read(tmp_path / "metrics.jsonl") if "classifier/class_accuracy" in r]
    assert len(records) == 2  # the eval at step 5 and the final one
    assert (tmp_path / "best").is_dir() and (tmp_path / "images" / "samples.png").is_file()
    c.sample.num = 24
    path = modes.sample_checkpoint(c, tmp_path)
    saved = np.load(path)
    np.testing.assert_array_equal(saved["labels"], np.arange(24) % 10)
    run = trained.load(c, tmp_path)
    np.testing.assert_array_equal(run.samples(24), saved["images"])
    np.testing.assert_array_equal(run.sample_labels(24), saved["labels"])
    assert run.model.num_classes == 10 and run.discriminator.num_classes == 10
    # sample.classes: only the classes asked for, in turn (the same latents: sample j's z does not depend on them)
    c.sample.classes = (7, 3)
    chosen = np.load(modes.sample_checkpoint(c, tmp_path))
    np.testing.assert_array_equal(chosen["labels"], np.arange(24) % 2 * -4 + 7)  # 7, 3, 7, 3, ...
    np.testing.assert_array_equal(run.samples(24, classes=(7, 3)), chosen["images"])
    np.testing.assert_array_equal(chosen["images"][3], saved["images"][3])  # sample 3 is a 3 either way
    with pytest.raises(ValueError, match=r"sample.classes has \[10\], outside the model's classes 0..9"):
        run.samples(4, classes=(10,))
    with pytest.raises(ValueError, match="this model is unconditional"):
        config_check.check(_config("smoke", **{"sample.classes": (1,)}))
    c.sample.classes = ()
    # The README's example, as written, on this run.
    block = re.search(r"### Class-conditional GANs\n.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    call = 'trained.load(gan_mnist.get_config("conditional"), "runs/cgan_mnist")'
    assert call in block
    scope = {"CONFIG": c, "WORKDIR": tmp_path}
    exec(block.replace(call, "trained.load(CONFIG, WORKDIR)"), scope)  # noqa: S102 (the README's own code)
    assert scope["sevens"].shape == (10, 28, 28, 1) and scope["images"].shape == (20, 28, 28, 1)
    np.testing.assert_array_equal(scope["classes"], np.arange(20) % 10)


def test_class_accuracy_counts_the_samples_the_classifier_assigns_to_their_class():
    """compare's class_accuracy on probabilities given by hand: 3 of 4 samples in their asked class."""
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)

    def features(images):
        return images.reshape(len(images), -1)[:, :4].astype(np.float32), probs[: len(images)]

    e = quality.Extractor("hand", "by hand", "hand_v1", features, recommended=2, class_histograms=True)
    images = np.random.default_rng(0).integers(0, 255, (4, 2, 2, 1), dtype=np.uint8)
    ref = {"features": features(images)[0], "probs": probs, "mu": features(images)[0].mean(0),
           "sigma": np.cov(features(images)[0], rowvar=False)}
    out = quality.compare(e, ref, images, full=False, reference_name="r", labels=np.array([0, 1, 1, 1]), warn=False)
    assert out["class_accuracy"] == 0.75
    assert "class_accuracy" not in quality.compare(e, ref, images, full=False, reference_name="r", warn=False)


# --- Labels paired with their images through the train step --------------------------------------------------------
def _code(y):
    """Class y as a brightness in [-1, 1]: the toy G draws it, the toy D compares an image with it."""
    return y.astype(jnp.float32) / 9.0 * 2 - 1


class _LabelG(nn.Module):
    """G(z, y): a constant image of y's brightness (its one parameter keeps z in the graph)."""

    latent_dim: int = 4
    num_classes: int = 10

    @nn.compact
    def __call__(self, z, labels, train=True):
        w = self.param("w", nn.initializers.zeros, (self.latent_dim,))
        return jnp.broadcast_to((_code(labels) + z @ w)[:, None, None, None], (z.shape[0], 28, 28, 1))


class _LabelD(nn.Module):
    """D(x, y) = (mean(x) - code(y))^2 >= 0: 0 when x is an image of its own label's brightness (its parameter has
    no effect: D's outputs stay those of the first update, and the means below are 0 only if every term is)."""

    @nn.compact
    def __call__(self, x, labels, train=True):
        return (x.mean((1, 2, 3)) - _code(labels)) ** 2 + 0.0 * self.param("b", nn.initializers.zeros, ())


def _max_loss(d_real, d_fake):
    """Means (differentiated), and the largest of D's outputs on reals and fakes as metrics."""
    return jnp.mean(d_real) + jnp.mean(d_fake), jnp.mean(d_fake), {"max_real": jnp.max(d_real),
                                                                   "max_fake": jnp.max(d_fake)}


def _max_loss_reading_reals(d_real, d_fake):
    """A g_loss that reads d_real: the G update scores the reals again (the relativistic path)."""
    d_loss, g_loss, metrics = _max_loss(d_real, d_fake)
    return d_loss, g_loss + jnp.mean(d_real), metrics


def _max_reg(d_fn, real, fake, keys):
    real_out, fake_out = d_fn(real), d_fn(fake)
    return jnp.mean(real_out) + jnp.mean(fake_out), {"reg_max": jnp.maximum(jnp.max(real_out), jnp.max(fake_out))}


@pytest.mark.parametrize("g_batch,loss,d_steps", [(0, _max_loss, 2), (16, _max_loss_reading_reals, 1)])
def test_every_image_of_the_step_is_scored_with_its_own_label(g_batch, loss, d_steps):
    """Images whose brightness codes their label, on 8 devices with mirrored reals: D's outputs on the reals, on the
    fakes of the D updates and of the G update (fresh ones with g_batch), in the regularizer, and the reals'
    re-scoring for a loss whose g_loss reads d_real, are all 0: every image met its own label."""
    from jaxgen import parallel
    from jaxgen.training import gan_step, optim
    from jaxgen.training import state as state_lib

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 200).astype(np.int32)
    values = np.round((np.asarray(_code(jnp.asarray(labels))) + 1) * 127.5).astype(np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (200, 28, 28, 1)).copy()
    mesh = parallel.make_mesh()
    c = gan_config()
    g_tx, g_lr = optim.make(c.g_optim, 10)
    d_tx, d_lr = optim.make(c.d_optim, 10)
    state = state_lib.create_gan(_LabelG(), _LabelD(), g_tx, d_tx, (28, 28, 1), 0, ema=False, num_classes=10)
    fn = gan_step.compile_train(
        mesh, steps_per_dispatch=1, generator=_LabelG(), discriminator=_LabelD(), g_tx=g_tx, d_tx=d_tx, loss_fn=loss,
        reg_fn=_max_reg, reg_weight=1.0, reg_interval=1, d_steps=d_steps, batch=16, augment_policy="",
        ema_half_life=0.0, ema_rampup=0.0, g_lr=g_lr, d_lr=d_lr, g_batch=g_batch, random_flip=True, num_classes=10)
    _, m = fn(jax.device_put(state, parallel.replicated(mesh)),
              parallel.put_replicated({"image": images, "label": labels}, mesh))
    m = jax.device_get(m)
    tolerance = (1 / 255) ** 2  # uint8 rounding of the brightness
    for name in ("max_real", "max_fake", "reg_max", "d_fake_after"):
        assert abs(float(m[name][0])) <= tolerance, (name, m[name])
    if loss is _max_loss_reading_reals:  # g_loss = mean D(fake) + mean D(real) after D's update: both 0
        assert abs(float(m["g_loss"][0])) <= tolerance


def _concatenating_r1(d_fn, real, fake, keys):
    """A regularizer of a user's that scores reals and fakes in one call (2B images)."""
    x = jnp.concatenate([real, fake])
    g = jax.grad(lambda v: jnp.sum(d_fn(v)))(x)
    return jnp.mean(jnp.sum(g * g, axis=(1, 2, 3))), {}


def test_a_regularizer_that_scores_2b_images_at_once_is_refused_when_conditional(tmp_path):
    c = _config(**{"reg.name": f"{__name__}:_concatenating_r1", "eval.extractors": ()})
    with pytest.raises(ValueError, match=r"scores x with the reals' labels .* as many images as `real` \(4\); it got "
                                         r"8\. Call d_fn on reals, fakes or their interpolations separately"):
        gan_task.GANTask(c, tmp_path)
    gan_task.GANTask(_config("smoke", **{"reg.name": f"{__name__}:_concatenating_r1", "eval.extractors": ()}),
                     tmp_path)  # unconditional: fine


def test_conditional_batchnorm_is_the_same_with_jaxgens_and_flaxs_batchnorm():
    """ConditionalBatchNorm over the fused BatchNorm without an affine of its own (use_scale/use_bias False) equals
    it over flax's: outputs, running averages and gradients, in train mode."""
    y = jnp.array([0, 1, 2, 0, 1, 2], jnp.int32)

    @jax.jit  # both implementations in one program, not one per op run eagerly
    def both_implementations():
        x = jax.random.normal(jax.random.key(5), (6, 4, 4, 8)) * 2 + 1
        results = []
        for impl in ("fused", "flax"):
            m = gan_blocks.ConditionalBatchNorm(3, None, "float32", True, impl)
            v = m.init(jax.random.key(0), x, y)
            assert set(v["params"]) == {"scale", "shift"}  # the BN itself has no scale or bias
            params = jax.tree.map(lambda a: a + 0.1 * jnp.arange(a.size).reshape(a.shape) / a.size, v["params"])

            def loss(p, x, m=m, v=v):
                out, upd = m.apply({**v, "params": p}, x, y, mutable=["batch_stats"])
                return jnp.sum(jnp.sin(out)), upd

            (value, upd), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
            results.append((value, upd, grads))
        return results

    results = both_implementations()
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[1])):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


def test_the_best_metric_choices_name_class_accuracy_for_a_conditional_gan():
    c = _config(**{"checkpoint.best_metric": "accuracy"})
    with pytest.raises(ValueError, match="classifier/class_accuracy"):
        quality.best_metric(c)


def test_the_conditional_sngan_config_builds(tmp_path):
    """gan_cifar10:conditional (conditional BN in the ResNet G, a spectrally normalised projection D) traces."""
    c = config_module(CONFIGS / "gan_cifar10.py").get_config("conditional,smoke")
    task = gan_task.GANTask(c, tmp_path)
    shapes = jax.eval_shape(task.create)
    assert shapes["d"]["params"]["class_embedding"]["embedding"].shape == (10, 2 * c.model.d_width)  # pooled
    assert "scale" in shapes["g"]["params"]["_ResBlock_0"]["norm1"]


def one_label(data_config, split):
    """A dataset function of a user's without labels: the synthetic images, every label 0."""
    from jaxgen.data import synthetic

    images, labels = synthetic.synthetic(data_config, split)
    return images, np.zeros_like(labels)


def test_unlabelled_data_and_class_accuracy_without_classes_say_what_to_set(tmp_path):
    """Every train label the same (an unlabelled dataset's 0s) with num_classes > 1 stops before training; asking
    for class_accuracy of an unconditional GAN names num_classes."""
    c = _config(**{"data.name": f"{__name__}:one_label", "eval.extractors": ()})
    c.data.image_shape = (28, 28, 1)
    with pytest.raises(ValueError, match=r"every example of the train split .* has the label 0: unlabelled data .*"
                                         r"--config.model.num_classes=0"):
        gan_task.GANTask(c, tmp_path)
    with pytest.raises(ValueError, match=r"class_accuracy is a class-conditional model's: set "
                                         r"--config.model.num_classes=N"):
        quality.best_metric(_config("smoke", **{"checkpoint.best_metric": "classifier/class_accuracy"}))


def test_grids_of_several_classes_put_one_class_per_column():
    from jaxgen.reporting import images

    assert images.class_columns(10) == 10 and images.class_columns(2) == 2
    assert images.class_columns(1) is None and images.class_columns(0) is None  # one class or none: square grids
    assert images.class_columns(images.MAX_CLASS_COLUMNS + 1) is None
