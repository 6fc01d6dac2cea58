"""A researcher's own loss, regularizer, objective, augmentation or dataset that breaks its contract fails before
training, with an error naming the config field, what came back and what was expected."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import data, objectives, registry
from jaxgen.config import gan_config
from jaxgen.data import augment
from jaxgen.objectives import gan as gan_obj


def per_example_loss(d_real, d_fake):
    return jax.nn.softplus(-d_real) + jax.nn.softplus(d_fake), jax.nn.softplus(-d_fake), {}


def clashing_loss(d_real, d_fake):
    d, g, _ = gan_obj.non_saturating(d_real, d_fake)
    return d, g, {"d_real": jnp.mean(jax.nn.sigmoid(d_real))}  # would replace the step's raw D output


def two_value_loss(d_real, d_fake):
    return jnp.mean(d_real), jnp.mean(d_fake)


def four_argument_loss(a, b, c, d):
    return jnp.mean(a), jnp.mean(b), {}


def two_argument_penalty(d_fn, real):
    return jnp.mean(d_fn(real) ** 2), {}


def penalty_only(d_fn, real, fake, keys):
    return jnp.mean(d_fn(real) ** 2)


def vector_metric_penalty(d_fn, real, fake, keys):
    return jnp.mean(d_fn(real) ** 2), {"per_example": d_fn(real)}


def nested_metric_loss(d_real, d_fake):
    d, g, _ = gan_obj.non_saturating(d_real, d_fake)
    return d, g, {"parts": {"real": jnp.mean(d_real)}}


def crop(key, x):
    return x[:, 2:-2, 2:-2]


def one_argument_augmentation(x):
    return -x


def images_only(data_config, split):
    return np.zeros((4, 8, 8, 1), np.uint8)


def no_loss_metric_objective(params, x, keys, *, model, cfg):
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss, {k: v for k, v in metrics.items() if k != "loss"}


def nested_metric_objective(params, x, keys, *, model, cfg):
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return loss, {**metrics, "parts": {"kl": metrics["kl"]}}


def per_example_objective(params, x, keys, *, model, cfg):
    loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
    return jnp.broadcast_to(loss, (x.shape[0],)), metrics


@pytest.mark.parametrize("name, message", [
    ("per_example_loss", r"returned d_loss of shape \(4,\) \(traced on a batch of 4 before training\); it must be a "
                         r"scalar: the mean over the batch"),
    ("nested_metric_loss", r"metric 'parts' is a dict; metrics are a flat dict of scalars"),
    ("clashing_loss", r"metric name\(s\) \['d_real'\] are the trainer's own.*rename them"),
    ("two_value_loss", r"returned tuple of 2; expected loss\(d_real \[B\], d_fake \[B\].*\) -> \(d_loss, g_loss, "),
    ("four_argument_loss", r"takes \(a, b, c, d\) and cannot be called as loss\(d_real \[B\], d_fake \[B\]"
                           r".*missing a required argument: 'c'"),
])
def test_a_gan_loss_that_breaks_its_contract_is_named(name, message):
    path = f"tests.test_user_functions:{name}"
    with pytest.raises(ValueError, match=f"loss.name='{path}':? " + message):
        gan_obj.check_loss(gan_obj.get_loss(path), path)
    for built_in in gan_obj.LOSSES:
        gan_obj.check_loss(gan_obj.get_loss(built_in), built_in)


@pytest.mark.parametrize("name, message", [
    ("penalty_only", r"returned an array of shape \(\); expected reg\(d_fn, real"),
    ("two_argument_penalty", r"takes \(d_fn, real\) and cannot be called as reg\(d_fn, real .*too many positional"),
    ("vector_metric_penalty", r"metric 'per_example' has shape \(2,\) \(traced on a batch of 2 before training\); "
                              r"metrics are scalars"),
])
def test_a_regularizer_that_breaks_its_contract_is_named(name, message):
    path = f"tests.test_user_functions:{name}"
    with pytest.raises(ValueError, match=f"reg.name='{path}':? {message}"):
        gan_obj.check_regularizer(gan_obj.get_regularizer(path), path, (8, 8, 1))
    for built_in in ("r1", "gp", "none"):
        gan_obj.check_regularizer(gan_obj.get_regularizer(built_in), built_in, (8, 8, 1))


def test_an_augmentation_that_changes_the_shape_is_named():
    x = jnp.zeros((2, 8, 8, 1))
    with pytest.raises(ValueError, match=r"augmentation 'tests.test_user_functions:crop' .* returned images of shape "
                                         r"\(2, 4, 4, 1\) for \(2, 8, 8, 1\)"):
        augment.apply("flip,tests.test_user_functions:crop", jax.random.key(0), x)


def test_an_augmentation_with_another_signature_is_named_before_any_work():
    with pytest.raises(ValueError, match=r"augmentation 'tests.test_user_functions:one_argument_augmentation' "
                                         r"\(augment.policy='flip, tests.test_user_functions:one_argument_augmentation'"
                                         r"\) takes \(x\) and cannot be called as fn\(key, x \[B, H, W, C\] in "
                                         r"\[-1, 1\]\) -> x: too many positional arguments"):
        augment.check_policy("flip, tests.test_user_functions:one_argument_augmentation")
    augment.check_policy(",".join(augment.AUGMENTATIONS))


def split_sized(data_config, split):
    side = 8 if split == "train" else 16
    return np.zeros((4, side, side, 1), np.uint8), np.zeros(4, np.int32)


def test_a_dataset_whose_test_images_have_another_shape_is_refused_at_load():
    cfg = gan_config().data
    cfg.name = "tests.test_user_functions:split_sized"
    with pytest.raises(ValueError, match=r"dataset 'tests.test_user_functions:split_sized': the 'test' split's images "
                                         r"are \[16, 16, 1\], the 'train' split's \[8, 8, 1\]; every split must"):
        data.load_splits(cfg)


def test_a_dataset_that_returns_only_images_names_the_pair():
    cfg = gan_config().data
    cfg.name = "tests.test_user_functions:images_only"
    with pytest.raises(ValueError, match=r"returned an array of shape \(4, 8, 8, 1\); a dataset function returns the "
                                         r"pair \(images uint8"):
        data.load(cfg, "train")


def test_a_vae_objective_returning_per_example_losses_fails_at_build(tmp_path):
    from jaxgen.training import loop
    from tests.conftest import CONFIGS, config_module

    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.unlock()
    c.objective.name = "tests.test_user_functions:per_example_objective"
    with pytest.raises(ValueError, match=r"objective '.*per_example_objective' returned loss of shape \(2,\) "
                                         r"\(traced on a batch of 2 before training\); it must be a scalar"):
        loop.build_task(c, tmp_path)
    c.objective.name = "tests.test_user_functions:no_loss_metric_objective"
    with pytest.raises(ValueError, match=r"its metrics have no 'loss' .* add metrics\['loss'\] = loss"):
        loop.build_task(c, tmp_path)
    c.objective.name = "tests.test_user_functions:nested_metric_objective"
    with pytest.raises(ValueError, match=r"metric 'parts' is a dict; metrics are a flat dict of scalars"):
        loop.build_task(c, tmp_path)


def warmed_elbo(params, x, keys, *, model, cfg, step):
    """A user's objective that reads the built-in kl_warmup_steps (and, through vae.likelihood, the likelihood), but
    neither beta nor k."""
    from jaxgen.objectives import vae

    mu, logvar = model.apply(params, x, method="encode")
    z = vae.sample_latents(mu, logvar, keys, 1)[:, 0]
    rec = vae.likelihood(cfg)(model.apply(params, z, method="decode"), x, cfg)
    kl = jnp.sum(0.5 * (jnp.exp(logvar) + mu**2 - 1.0 - logvar), axis=-1)
    loss = -jnp.mean(rec - jnp.minimum(1.0, step / max(cfg.kl_warmup_steps, 1)) * kl)
    if "free_bits" in cfg:  # a field of the user's own
        loss = loss + cfg.free_bits
    return loss, {"loss": loss}


def test_built_in_objective_fields_a_users_objective_does_not_read_are_warned_about(tmp_path, caplog, monkeypatch):
    """--config.objective.beta=4 with an objective of one's own that has no beta did nothing, silently: the trace
    before training records the fields it reads."""
    import logging

    from jaxgen.training import loop
    from tests.conftest import CONFIGS, config_module

    monkeypatch.setattr(logging.getLogger("jaxgen"), "propagate", True)
    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.unlock()
    c.objective.name = "tests.test_user_functions:warmed_elbo"
    c.objective.beta, c.objective.k, c.objective.kl_warmup_steps = 4.0, 2, 10
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        loop.build_task(c, tmp_path)
    assert ("These settings do nothing in this run: objective.beta=4.0 (read by the built-in elbo, beta_tcvae, "
            "info_vae and capacity_vae); objective.k=2 (read by the built-in elbo, iwae, miwae, ciwae and piwae). "
            "Your objective tests.test_user_functions:warmed_elbo did not read them when traced before training") \
        in caplog.text
    assert "kl_warmup_steps" not in caplog.text
    caplog.clear()
    c.objective.beta, c.objective.k = 1.0, 1  # the defaults: nothing to say
    c.objective.free_bits = 0.5  # a field of its own that it reads
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        loop.build_task(c, tmp_path)
    assert "do nothing" not in caplog.text
    c.objective.free_bit = 0.5  # misspelt: the objective never reads it
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        loop.build_task(c, tmp_path)
    assert ("These settings do nothing in this run: objective.free_bit=0.5 (added by the config file: a misspelt "
            "name?)") in caplog.text
    caplog.clear()
    c.eval.extractors = ("tests.test_quality:pixel_extractor",)  # one of its own gets the whole config
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        loop.build_task(c, tmp_path)
    assert "free_bit" not in caplog.text


def elbo_plus_l2(params, x, keys, *, model, cfg):
    """A user's objective around the built-in elbo, without a step: the KL warm-up cannot apply."""
    from jaxgen.objectives import vae

    loss, metrics = vae.elbo(params, x, keys, model=model, cfg=cfg)
    return loss + 1e-3 * jnp.mean(model.apply(params, x, method="encode")[0] ** 2), metrics


def test_a_kl_warmup_an_objective_calling_elbo_without_its_step_cannot_apply_is_warned_about(tmp_path, caplog,
                                                                                              monkeypatch):
    import logging

    from jaxgen.training import loop
    from tests.conftest import CONFIGS, config_module

    monkeypatch.setattr(logging.getLogger("jaxgen"), "propagate", True)
    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.unlock()
    c.objective.name, c.objective.kl_warmup_steps = "tests.test_user_functions:elbo_plus_l2", 10
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        loop.build_task(c, tmp_path)
    assert "These settings do nothing in this run: objective.kl_warmup_steps=10 (read by the built-in elbo" in \
        caplog.text


@pytest.mark.parametrize("n", [1, 3])
def test_a_metric_given_as_a_python_number_is_logged_like_an_array(n):
    """A step's metrics may hold plain numbers ({"beta": 2.0}): one step per call (every smoke variant) stacks them
    like the fused steps' scan does."""
    from jaxgen.training import dispatch

    def step(state, data):
        return state + 1, {"loss": jnp.mean(data), "beta": 2.0, "n": 3}

    state, metrics = jax.jit(lambda s, d: dispatch.fused_steps(s, d, n=n, step_fn=step))(jnp.int32(0), jnp.ones(4))
    assert int(state) == n
    assert {k: v.shape for k, v in metrics.items()} == {"loss": (n,), "beta": (n,), "n": (n,)}
    np.testing.assert_array_equal(metrics["beta"], np.full(n, 2.0))


def test_a_module_whose_own_import_fails_is_not_blamed_on_pythonpath(tmp_path, monkeypatch):
    (tmp_path / "mylosses.py").write_text("import nonexistent_pkg_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.UnknownNameError, match="importing module 'mylosses' failed: ModuleNotFoundError: "
                                                        "No module named 'nonexistent_pkg_xyz'") as e:
        gan_obj.get_loss("mylosses:loss")
    assert "PYTHONPATH" not in str(e.value)
    with pytest.raises(registry.UnknownNameError, match="cannot import module 'not_there.sub'.*PYTHONPATH"):
        gan_obj.get_loss("not_there.sub:loss")


def test_a_misspelt_function_name_is_told_the_closest_ones_or_what_the_module_defines(tmp_path, monkeypatch):
    (tmp_path / "mylosses2.py").write_text(
        "import functools, math\nfrom jax.numpy import mean\n\n"
        "def relativistic_average(d_real, d_fake):\n    return 0\n\n"
        "margin_loss = functools.partial(relativistic_average)\n\n"
        "def hinge_like(d_real, d_fake):\n    return 0\n\nclass _Private:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(registry.UnknownNameError, match=r"has no attribute 'relativistic_avg'; did you mean "
                                                        r"'relativistic_average'\?$"):
        gan_obj.get_loss("mylosses2:relativistic_avg")
    # Nothing close: the module's own functions and classes (not what it imports, not private ones).
    with pytest.raises(registry.UnknownNameError, match=r"has no attribute 'xyz'; it defines hinge_like, "
                                                        r"margin_loss, relativistic_average$"):
        gan_obj.get_loss("mylosses2:xyz")


def test_cfg_and_step_are_passed_only_to_functions_that_name_them():
    """A catch-all **kwargs does not count: a user's function forwarding its keywords elsewhere is not surprised."""
    from jaxgen import registry

    def named(d_real, d_fake, *, cfg):
        return cfg

    assert registry.accepts(named, "cfg") and not registry.accepts(named, "step")
    assert not registry.accepts(lambda d_real, d_fake, **kw: kw, "cfg")
    assert registry.with_config(named, "block", positional=2)(1, 2) == "block"
    plain = lambda d_real, d_fake: 0  # noqa: E731
    assert registry.with_config(plain, "block", positional=2) is plain


def wide_mlp(model_config, image_shape):
    """A user's VAE model factory: its widths come from a field of its own in the model block."""
    from jaxgen.models.vae import MLPVAE

    return MLPVAE(image_shape, model_config.latent_dim, (model_config.width,) * 2, "tanh")


def not_a_module(model_config, image_shape):
    return "a string"


def test_a_vae_model_factory_gets_the_model_block():
    from jaxgen import models
    from jaxgen.config import vae_config

    m = vae_config().model
    with m.unlocked():
        m.name, m.width, m.latent_dim = "tests.test_user_functions:wide_mlp", 32, 4
    model = models.build(m, (28, 28, 1))
    assert (model.hidden, model.latent_dim, model.image_shape) == ((32, 32), 4, (28, 28, 1))
    m.name = "tests.test_user_functions:not_a_module"
    with pytest.raises(ValueError, match="must return a Linen module with an int field latent_dim.*got str"):
        models.build(m, (28, 28, 1))


def test_cfg_is_bound_frozen_and_never_over_a_users_own_binding_or_a_positional_slot():
    import functools

    import ml_collections

    from jaxgen import registry

    block = ml_collections.ConfigDict({"margin": 0.5})

    @functools.partial(jax.jit, static_argnames="cfg")
    def jitted(d_real, d_fake, cfg=None):  # a jitted loss takes its block as a static (hashable) argument
        return jnp.mean(d_real) - cfg.margin, jnp.mean(d_fake), {}

    assert float(registry.with_config(jitted, block, positional=2)(jnp.ones(2), jnp.ones(2))[0]) == 0.5

    def loss(d_real, d_fake, cfg=None):
        return cfg

    mine = functools.partial(loss, cfg="mine")
    assert registry.with_config(mine, block, positional=2)(1, 2) == "mine"  # the user's own binding stays
    first = lambda cfg, d_real, d_fake: cfg  # noqa: E731 (cfg in a slot the trainer fills positionally)
    assert registry.with_config(first, block, positional=2) is first


def test_a_partial_of_a_model_class_is_built_as_a_class():
    import functools

    import tests.test_user_functions as me
    from jaxgen import models
    from jaxgen.config import vae_config
    from jaxgen.models.vae import MLPVAE

    m = vae_config().model
    m.name = "tests.test_user_functions:small_mlp_class"
    me.small_mlp_class = functools.partial(MLPVAE, hidden=(16,), activation="tanh")
    model = models.build(m, (28, 28, 1))
    assert isinstance(model, MLPVAE) and model.hidden == (16,) and model.latent_dim == m.latent_dim


NOT_A_FUNCTION = 0.5


def keyword_objective(params, x, *, model, cfg):  # forgot `keys`
    return objectives.get("elbo")(params, x, None, model=model, cfg=cfg)


def schedule_optimizer(cfg, lr):
    return lr  # forgot to wrap it in an optax optimizer


def unsummed_likelihood(out, x, cfg):
    return -optax_bce(out, x)  # per pixel: forgot the sum over the last three axes


def optax_bce(logits, x):
    import optax

    return optax.sigmoid_binary_cross_entropy(logits, x)


def test_a_functions_signature_and_return_are_checked_before_any_work():
    """A wrong signature says how the function is called (not a TypeError from inside a trace); a name that is not
    a function says so; an optimizer returning its schedule is named."""
    from jaxgen.config import vae_config
    from jaxgen.models.vae import MLPVAE
    from jaxgen.training import optim

    with pytest.raises(registry.UnknownNameError, match=r"'tests.test_user_functions:NOT_A_FUNCTION' is float 0.5, "
                                                        r"not a function or class"):
        gan_obj.get_loss("tests.test_user_functions:NOT_A_FUNCTION")
    model = MLPVAE((8, 8, 1), 2, (8,), "tanh")
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 2))))
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), 2))
    with pytest.raises(ValueError, match=r"objective 'mine' takes \(params, x, \*, model, cfg\) and cannot be called "
                                         r"as fn\(params, x, keys, \*, model, cfg\[, step\]\[, dataset_size\]\)"):
        objectives.check_objective(keyword_objective, "mine", params, x, keys, model=model, cfg=vae_config().objective)
    cfg = vae_config().optim
    cfg.name = "tests.test_user_functions:schedule_optimizer"
    with pytest.raises(ValueError, match=r"returned function, not an optax GradientTransformation"):
        optim.make(cfg, 100)


def test_a_vae_model_or_likelihood_of_the_wrong_shape_is_refused_before_training():
    """A likelihood not summed over pixels would broadcast against the KL [B] into a meaningless loss that trains;
    a decoder that returns flat vectors would fail inside the step. Both fail at build, naming the shapes."""
    from jaxgen.config import vae_config
    from jaxgen.models.vae import MLPVAE, ConvVAE
    from jaxgen.objectives import vae as vae_obj

    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    cfg = vae_config().objective

    def params(model):
        return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros((2, 2))))

    for model in (MLPVAE((8, 8, 1), 2, (8,), "tanh"), ConvVAE((8, 8, 1), 2, (4, 4), 8, "relu")):
        for likelihood in ("bernoulli", "gaussian"):
            cfg.likelihood = likelihood
            vae_obj.check_model(model, params(model), x, cfg=cfg)
    cfg.likelihood = "discretized_logistic"  # a location and a log-scale a channel: a model built for one fails
    with pytest.raises(ValueError, match=r"decode\(z\) must return the likelihood's parameters \[2, 8, 8, 2\] for "
                                         r"images \[2, 8, 8, 1\] \(objective.likelihood='discretized_logistic'\)"):
        vae_obj.check_model(model, params(model), x, cfg=cfg)
    model = MLPVAE((8, 8, 1), 2, (8,), "tanh", out_channels=2)
    vae_obj.check_model(model, params(model), x, cfg=cfg)
    model = MLPVAE((8, 8, 1), 2, (8,), "tanh")
    cfg.likelihood = "tests.test_user_functions:unsummed_likelihood"
    with pytest.raises(ValueError, match=r"must return log p\(x \| z\) summed over the last three \(pixel\) axes: "
                                         r"for out \[2, 1, 8, 8, 1\] .* shape \[2, 1\]; it returned an array of shape "
                                         r"\(2, 1, 8, 8, 1\)"):
        vae_obj.check_model(model, params(model), x, cfg=cfg)
    cfg.likelihood = "bernoulli"
    flat = FlatDecoder((8, 8, 1), 2, (8,), "tanh")
    with pytest.raises(ValueError, match=r"decode\(z\) must return the likelihood's parameters \[2, 8, 8, 1\] for "
                                         r"images \[2, 8, 8, 1\] \(objective.likelihood='bernoulli'\); it returned "
                                         r"an array of shape \(2, 64\)"):
        vae_obj.check_model(flat, params(flat), x, cfg=cfg)


def mean_logvar_likelihood(out, x, cfg):
    """A user's Gaussian with a learned variance: decode(z) gives the means, then the log-variances."""
    c = x.shape[-1]
    mean, logvar = out[..., :c], out[..., c:]
    return jnp.sum(-0.5 * ((x - mean) ** 2 / jnp.exp(logvar) + logvar + jnp.log(2 * jnp.pi)), axis=(-3, -2, -1))


def mean_logvar_likelihood_with_mean(out, x, cfg):
    return mean_logvar_likelihood(out, x, cfg)


mean_logvar_likelihood_with_mean.mean = lambda out: jnp.clip(out[..., :1], 0, 1)


def test_a_likelihood_with_more_channels_than_the_image_needs_a_mean():
    """Without `mean`, the shown image was the whole output clipped: 2 channels, which crashed the first eval."""
    from jaxgen.config import vae_config
    from jaxgen.models.vae import MLPVAE
    from jaxgen.objectives import vae as vae_obj

    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    model = MLPVAE((8, 8, 2), 2, (8,), "tanh")  # encodes [.., 8, 8, 1] (flattened), decodes 2 channels
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros((2, 2))))
    cfg = vae_config().objective
    cfg.likelihood = "tests.test_user_functions:mean_logvar_likelihood"
    with pytest.raises(ValueError, match=r"the image that samples and reconstructions show, decode\(z\) clipped to "
                                         r"\[0, 1\] \(mean_logvar_likelihood has no attribute `mean`\), must be "
                                         r"\[2, 8, 8, 1\] .* it is an array of shape \(2, 8, 8, 2\)\. Give "
                                         r"mean_logvar_likelihood a `mean`"):
        vae_obj.check_model(model, params, x, cfg=cfg)
    cfg.likelihood = "tests.test_user_functions:mean_logvar_likelihood_with_mean"
    vae_obj.check_model(model, params, x, cfg=cfg)


def _flat_decoder():
    from jaxgen.models.vae import MLPVAE

    class Flat(MLPVAE):
        def decode(self, z):
            return super().decode(z).reshape(z.shape[0], -1)

    return Flat


FlatDecoder = _flat_decoder()


def test_an_encoder_returning_only_mu_is_named_with_its_shape():
    from jaxgen.config import vae_config
    from jaxgen.models.vae import MLPVAE
    from jaxgen.objectives import vae as vae_obj

    class MuOnly(MLPVAE):
        def encode(self, x):
            return super().encode(x)[0]

    model = MuOnly((8, 8, 1), 2, (8,), "tanh")
    x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(x.shape), jnp.zeros((2, 2))))
    with pytest.raises(ValueError, match=r"encode\(x\) of images \[2, 8, 8, 1\] must return \(mu, logvar\), each "
                                         r"\[2, latent_dim=2\]; it returned an array of shape \(2, 2\)"):
        vae_obj.check_model(model, params, x, cfg=vae_config().objective)


def test_a_gan_pair_of_the_wrong_shapes_is_refused_before_training():
    from jaxgen.models import gan as gan_models

    cfg = gan_config().model
    g, d = gan_models.build(cfg, (28, 28, 1))
    g_vars = jax.eval_shape(lambda: g.init(jax.random.key(0), jnp.zeros((2, g.latent_dim)), train=False))
    d_vars = jax.eval_shape(lambda: d.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False))
    gan_models.check_pair("dcgan", g, d, g_vars, d_vars, (28, 28, 1))
    with pytest.raises(ValueError, match=r"G\(z\) of z \[2, 100\] returned an array of shape \(2, 28, 28, 1\); it "
                                         r"must return images \[2, 32, 32, 1\]"):
        gan_models.check_pair("dcgan", g, d, g_vars, d_vars, (32, 32, 1))
    square = lambda v, x, train: d.apply(v, x, train=train)[:, None]  # noqa: E731 (a D that returns [B, 1])

    class Wrapped:
        apply = staticmethod(square)

    with pytest.raises(ValueError, match=r"D\(x\) of images \[2, 28, 28, 1\] returned an array of shape \(2, 1\); "
                                         r"it must return one score per image, \[2\] \(squeeze its last axis"):
        gan_models.check_pair("mine", g, Wrapped(), g_vars, d_vars, (28, 28, 1))


class _NoLatentG(nn.Module):
    @nn.compact
    def __call__(self, z, train: bool = True):
        return jnp.tanh(nn.Dense(64)(z)).reshape(z.shape[0], 8, 8, 1)


class _NoTrainD(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


class _ScoreOnlyD(nn.Module):
    @nn.compact
    def score(self, x):
        return nn.Dense(1)(x.reshape(x.shape[0], -1))[:, 0]


def no_call_pair(model_config, image_shape, axis_name):
    from jaxgen.models import gan as gan_models

    return gan_models.dcgan(model_config, image_shape, axis_name)[0], _ScoreOnlyD()


def numpy_latent_pair(model_config, image_shape, axis_name):
    from jaxgen.models import gan as gan_models

    g, d = gan_models.dcgan(model_config, image_shape, axis_name)
    return g.clone(latent_dim=np.int64(g.latent_dim)), d


def g_only(model_config, image_shape, axis_name):
    from jaxgen.models import gan as gan_models

    return gan_models.dcgan(model_config, image_shape, axis_name)[0]


def no_latent_pair(model_config, image_shape, axis_name):
    from jaxgen.models import gan as gan_models

    return _NoLatentG(), gan_models.dcgan(model_config, image_shape, axis_name)[1]


def no_train_pair(model_config, image_shape, axis_name):
    from jaxgen.models import gan as gan_models

    return gan_models.dcgan(model_config, image_shape, axis_name)[0], _NoTrainD()


class _NoFieldsVAE(nn.Module):
    def encode(self, x):
        return x, x

    def decode(self, z):
        return z

    def __call__(self, x, z):
        return self.decode(z)


class _NoCallVAE(nn.Module):
    image_shape: tuple = (8, 8, 1)
    latent_dim: int = 2

    def encode(self, x):
        return x, x

    def decode(self, z):
        return z


@pytest.mark.parametrize("task, name, message", [
    ("gan", "g_only", r"returned DCGANGenerator; expected fn\(model_config, image_shape, axis_name\) -> "
                      r"\(generator, discriminator\)"),
    ("gan", "no_latent_pair", r"its generator _NoLatentG has no int field latent_dim"),
    ("gan", "no_train_pair", r"its discriminator _NoTrainD takes \(x\) and cannot be called as "
                             r"discriminator\(x, train=\.\.\.\).*unexpected keyword argument 'train'"),
    ("gan", "_NoTrainD", r"is a class; a GAN's model.name names a function"),
    ("gan", "no_call_pair", r"its discriminator _ScoreOnlyD has no __call__; the trainer calls it as "
                            r"discriminator\(x, train=\.\.\.\)"),
    ("vae", "_NoFieldsVAE", r"the trainer builds a model class as _NoFieldsVAE\(image_shape=\(H, W, C\), "
                            r"latent_dim=model.latent_dim\); it has no field image_shape or latent_dim"),
    ("vae", "_NoCallVAE", r"_NoCallVAE has no __call__; a VAE module has encode\(x\) -> \(mu, logvar\)"),
])
def test_a_model_of_yours_that_breaks_its_contract_is_named_before_it_is_traced(task, name, message):
    from jaxgen import models
    from jaxgen.config import vae_config
    from jaxgen.models import gan as gan_models

    cfg = (gan_config() if task == "gan" else vae_config()).model
    cfg.name = f"tests.test_user_functions:{name}"
    what, build = ("GAN model", gan_models.build) if task == "gan" else ("model", models.build)
    with pytest.raises(ValueError, match=rf"{what} '{cfg.name}'[: ].*{message}"):
        build(cfg, (28, 28, 1))
    if task == "gan":  # a NumPy integer is an int field
        cfg.name = "tests.test_user_functions:numpy_latent_pair"
        build(cfg, (28, 28, 1))
