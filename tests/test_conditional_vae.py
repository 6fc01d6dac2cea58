"""Class-conditional VAEs (model.num_classes > 0, Sohn et al. 2015): the models read the labels given or bound, the
objectives train them unchanged, 8 devices equal 1, and a run trains, evaluates (class accuracy, intra-FID on
p(x | y)), samples by class and loads in Python; bad labels and models are errors that name the fix."""

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import config_check, data, models, objectives, parallel
from jaxgen.config import vae_config
from jaxgen.evaluation import vae as vae_eval
from jaxgen.models import vae as vae_models
from jaxgen.objectives import vae as vo
from jaxgen.training import loop, modes, run_record, trained
from tests.conftest import CONFIGS, config_module
from tests.test_vae_step import assert_same_params, eight_and_one


def _model(name, num_classes=3, **kw):
    c = vae_config().model
    c.name, c.num_classes, c.latent_dim = name, num_classes, 4
    for k, v in kw.items():
        c[k] = v
    return models.build(c, (28, 28, 1))


def _params(model):
    bound = vae_models.bind_labels(model, jnp.zeros((1,), jnp.int32))
    # Jitted: one program, not one per op of the init run eagerly.
    return jax.jit(lambda: bound.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), jnp.zeros((1, model.latent_dim))))()


@pytest.mark.parametrize("name", ["conv_vae", "mlp_vae"])
def test_the_labels_given_or_bound_condition_the_encoder_and_the_decoder(name):
    model = _model(name)
    params = _params(model)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    bound = vae_models.bind_labels(model, y)

    @jax.jit  # every output below in one program, not one per op run eagerly
    def outputs(params):
        x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1))
        z = jax.random.normal(jax.random.key(2), (6, 4))
        zk = jax.random.normal(jax.random.key(3), (6 * 5, 4))
        return {"given": model.apply(params, x, y, method="encode")[0],
                "bound": bound.apply(params, x, method="encode")[0],
                "other": model.apply(params, x, (y + 1) % 3, method="encode")[0],
                "decoded": model.apply(params, z, y, method="decode"),
                "decoded_bound": bound.apply(params, z, method="decode"),
                "decoded_other": model.apply(params, z, (y + 1) % 3, method="decode"),
                "repeated": vo.repeat_labels(bound, 5).apply(params, zk, method="decode"),
                "repeated_given": model.apply(params, zk, jnp.repeat(y, 5), method="decode")}

    out = outputs(params)
    np.testing.assert_array_equal(out["bound"], out["given"])
    np.testing.assert_array_equal(out["decoded_bound"], out["decoded"])
    # The label matters: the same image or latent under another class gives other outputs.
    assert not np.allclose(out["other"], out["given"])
    assert not np.allclose(out["decoded_other"], out["decoded"])
    # B labels for B x k latents (the IWAE bound's and the NLL's k draws per example, example-major) are an error:
    # repeat_labels repeats each k times, as the built-in objectives do; any other layout is the caller's to match.
    # (Raised while tracing: jax.eval_shape compiles nothing.)
    zk = jax.ShapeDtypeStruct((6 * 5, 4), jnp.float32)
    with pytest.raises(ValueError, match=r"labels \(6,\) for 30 rows; give one label per row .*repeat_labels"):
        jax.eval_shape(functools.partial(bound.apply, method="decode"), params, zk)
    np.testing.assert_allclose(out["repeated"], out["repeated_given"], rtol=1e-6)
    assert vo.repeat_labels(model, 5) is model  # nothing bound


def test_a_conditional_model_without_labels_and_an_unconditional_one_with_them_are_errors():
    """(Traced only, with jax.eval_shape: the errors are raised while tracing, and nothing is compiled.)"""
    model = _model("conv_vae")
    params = jax.eval_shape(lambda: _params(model))
    x = jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)
    encode = functools.partial(model.apply, method="encode")
    with pytest.raises(ValueError, match=r"ConvVAE is class-conditional \(num_classes=3\): call encode\(x, labels\) "
                                         r"and decode\(z, labels\).*model.clone\(labels=labels\)"):
        jax.eval_shape(encode, params, x)
    with pytest.raises(ValueError, match=r"labels \(3,\) for 2 rows; give one label per row"):
        jax.eval_shape(encode, params, x, jnp.zeros(3, jnp.int32))
    plain = _model("conv_vae", num_classes=0)
    plain_params = jax.eval_shape(plain.init, jax.random.key(0), x, jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"ConvVAE is unconditional \(num_classes=0\) but was given labels"):
        jax.eval_shape(functools.partial(plain.apply, method="encode"), plain_params, x, jnp.zeros(2, jnp.int32))
    assert vae_models.bind_labels(plain, jnp.zeros(2, jnp.int32)) is plain  # nothing to bind


def test_the_built_in_objectives_train_a_bound_model_as_if_the_labels_were_passed():
    """The trainer binds the step's labels: elbo and iwae (written for unconditional models) then score p(x | y)."""
    model = _model("mlp_vae", hidden=(16,))
    params = _params(model)
    cfg = vae_config().objective
    cfg.k = 3
    y = jnp.array([2, 0, 1, 2])

    @jax.jit  # both objectives and their hand computations in one program, not one per op run eagerly
    def losses_and_expected(params):
        x = jax.random.bernoulli(jax.random.key(1), 0.3, (4, 28, 28, 1)).astype(jnp.float32)
        keys = jax.random.split(jax.random.key(2), 4)
        out = {}
        for name in ("elbo", "iwae"):
            loss, _ = objectives.get(name)(params, x, keys, model=vae_models.bind_labels(model, y), cfg=cfg)
            mu, logvar = model.apply(params, x, y, method="encode")
            z = mu[:, None] + jnp.exp(0.5 * logvar)[:, None] * jax.vmap(lambda k: jax.random.normal(k, (3, 4)))(keys)
            logits = model.apply(params, z.reshape(12, 4), jnp.repeat(y, 3), method="decode").reshape(4, 3, 28, 28, 1)
            rec = -jnp.sum(jnp.logaddexp(0.0, logits) - x[:, None] * logits, axis=(2, 3, 4))
            if name == "elbo":
                kl = 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1 - logvar, -1)
                expected = -jnp.mean(jnp.mean(rec, 1) - kl)
            else:
                eps = (z - mu[:, None]) / jnp.exp(0.5 * logvar)[:, None]
                log_w = rec - 0.5 * jnp.sum(z**2, -1) + 0.5 * jnp.sum(eps**2 + logvar[:, None], -1)
                expected = -jnp.mean(jax.nn.logsumexp(log_w, 1) - jnp.log(3.0))
            out[name] = (loss, expected)
        return out

    for name, (loss, expected) in losses_and_expected(params).items():
        np.testing.assert_allclose(loss, expected, rtol=1e-5, err_msg=name)


def test_eight_devices_give_one_devices_conditional_step(smoke_config):
    """The step draws each example's label with its image (the same rows on any device count)."""
    smoke_config.model.num_classes = 10
    (s8, m8), (s1, m1), (fn1, d1) = eight_and_one(smoke_config, 3)
    width = 7 * 7 * smoke_config.model.channels[-1] + 10  # the flattened conv features and the one-hot label
    assert "label" in d1 and s8["params"]["params"]["enc_dense"]["kernel"].shape[0] == width
    assert_same_params(s8, s1)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)
    # The labels reach the step: with every label moved by one the loss differs.
    shifted = dict(d1, label=(d1["label"] + 1) % 10)
    _, moved = fn1(jax.tree.map(jnp.copy, s1), shifted)  # the state is donated: each call gets its own copy
    _, same = fn1(s1, d1)
    assert float(moved["loss"][0]) != float(same["loss"][0])


class NoLabels(nn.Module):
    """A user's VAE class with no num_classes or labels field."""

    image_shape: tuple
    latent_dim: int

    def encode(self, x):
        return x, x

    def decode(self, z):
        return z

    def __call__(self, x, z):
        return x


class OwnClasses(NoLabels):
    """A user's VAE class whose num_classes defaults to 10 (the config's model.num_classes must agree)."""

    num_classes: int = 10
    labels: jax.Array | None = None


def test_labels_outside_the_classes_and_a_model_that_cannot_take_them_are_errors(tmp_path):
    c = config_module(CONFIGS / "vae_mnist.py").get_config("conditional,smoke")
    c.model.num_classes = 5
    with pytest.raises(ValueError, match=r"model.num_classes=5, but the train split of 'mnist_5k' has labels 0..9; "
                                         r"a class-conditional VAE needs labels 0..num_classes-1: set "
                                         r"--config.model.num_classes=10"):
        loop.build_task(c, tmp_path)
    c.model.num_classes, c.model.name = 10, "tests.test_conditional_vae:NoLabels"
    with pytest.raises(ValueError, match=r"model.num_classes > 0 makes a class-conditional VAE, whose module has "
                                         r"the fields `num_classes: int` and `labels`.*NoLabels has no num_classes "
                                         r"or labels"):
        models.build(c.model, (28, 28, 1))
    c.model.name, c.model.num_classes = "tests.test_conditional_vae:OwnClasses", 0
    with pytest.raises(ValueError, match=r"its module has num_classes=10 \(the class's own default\), but "
                                         r"model.num_classes=0; they must agree"):
        models.build(c.model, (28, 28, 1))
    assert "num_classes" in run_record._model_reads({"name": "tests.test_conditional_vae:OwnClasses"})
    c.model.name, c.model.num_classes = "conv_vae", 10
    c.sample.classes = (10,)
    with pytest.raises(ValueError, match=r"sample.classes has \[10\], outside the model's classes 0..9"):
        config_check.check(c)


def test_a_conditional_vae_trains_evaluates_and_samples_by_class(tmp_path, one_device):
    """vae_mnist:conditional,smoke end to end: p(x | y)'s ELBO and NLL, the classifier's class accuracy and the
    intra-FID in eval.json, --mode=sample's labels beside its images, trained.load's samples the same, and a
    digit's images decoded from one class."""
    c = config_module(CONFIGS / "vae_mnist.py").get_config("conditional,smoke")
    c.train.steps, c.eval.every = 10, 0  # the final evaluation only (an eval during training has the same programs)
    loop.train_and_evaluate(c, tmp_path)
    ev = json.loads((tmp_path / "eval.json").read_text())
    block = ev["sample_quality"]["classifier"]
    assert ev["nll"] > 0 and 0.0 <= block["class_accuracy"] <= 1.0
    assert block["intra_fid"] > 0 and len(block["intra_fid_per_class"]) == 10
    assert (tmp_path / "latent_traversal.png").is_file() and (tmp_path / "images" / "samples.png").is_file()
    c.sample.num = 24
    saved = np.load(modes.sample_checkpoint(c, tmp_path))
    np.testing.assert_array_equal(saved["labels"], np.arange(24) % 10)
    run = trained.load(c, tmp_path)
    np.testing.assert_array_equal(run.samples(24), saved["images"])
    np.testing.assert_array_equal(run.sample_labels(24), saved["labels"])
    sevens = run.samples(4, classes=(7,))
    np.testing.assert_array_equal(sevens[0], np.asarray(run.samples(8, classes=(7, 3)))[0])  # the same z, class 7
    # Jitted: one program, not one per op of the decoder run eagerly.
    decode = jax.jit(lambda v: run.model.apply(v, jax.random.normal(jax.random.key(0), (3, run.model.latent_dim)),
                                               jnp.full(3, 7), method=run.model.decode))
    out = decode(run.variables)
    assert out.shape == (3, 28, 28, 1)



def test_the_evaluation_scores_each_image_with_its_own_label_on_8_devices_with_a_padded_batch(smoke_config):
    """The sharded evaluation's KL and reconstruction at the posterior mean (both free of noise) equal q(z | x, y)'s
    and p(x | mu, y)'s computed here in one call with each image's own label, over 70 images in batches of 64 (the
    second one padded); with every label moved by one they differ."""
    smoke_config.model.num_classes = 10
    train = data.load(smoke_config.data, "train")
    model = models.build(smoke_config.model, train.shape)
    params = _params(model)
    mesh = parallel.make_mesh(jax.devices())
    eval_fn = vae_eval.compile_eval(mesh, model=model, obj_cfg=smoke_config.objective, binarize="dynamic",
                                    nll_chunk=2)
    images, labels, bkey = train.image[:70], train.label[:70], jax.random.key(1)
    kw = dict(mesh=mesh, key=jax.random.key(0), binarize_key=bkey, batch_size=64, nll_k=2, nll_chunk=2,
              likelihood="bernoulli")
    out = vae_eval.evaluate(eval_fn, params, images, labels=labels, **kw)

    @jax.jit  # the reference in one program, not one per op run eagerly
    def kl_and_recon_nll(params):
        x = vae_eval.eval_inputs(images, np.arange(70), bkey, "dynamic")
        mu, logvar = model.apply(params, x, labels, method="encode")
        rec = vo.bernoulli_log_prob(model.apply(params, mu, labels, method="decode"), x)
        return jnp.mean(vo.gaussian_kl(mu, logvar)), -jnp.mean(rec)

    kl, recon_nll = kl_and_recon_nll(params)
    np.testing.assert_allclose(out["kl"], float(kl), rtol=1e-4)
    np.testing.assert_allclose(out["recon_nll_at_mean"], float(recon_nll), rtol=1e-4)
    moved = vae_eval.evaluate(eval_fn, params, images, labels=(labels + 1) % 10, **kw)
    assert abs(moved["kl"] - out["kl"]) > 1e-4
