"""model.prior='vamp': the VampPrior's density against brute force and the exact marginal of a linear Gaussian VAE,
its objectives, the sampler's mixture, 8 devices against 1, the config's errors, and a run end to end."""

import functools
import json
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from jaxgen import config_check, models, objectives
from jaxgen.evaluation import latent_mixture
from jaxgen.models import prior
from jaxgen.objectives import vae as vae_obj
from tests.test_objectives import LinearGaussianVAE, _tiny
from tests.test_vae_step import assert_same_params, eight_and_one


def _vamp(cfg):
    cfg.model.prior, cfg.model.vamp_components, cfg.objective.kl = "vamp", 6, "mc"
    return cfg


def _brute_force(z, mu, logvar):
    """log (1/K) sum_k N(z; mu_k, diag exp(logvar_k)), float64, one component at a time."""
    z, mu, logvar = (np.asarray(a, np.float64) for a in (z, mu, logvar))
    comp = np.stack([np.sum(-0.5 * ((z - m) ** 2 / np.exp(lv) + lv + math.log(2 * math.pi)), -1)
                     for m, lv in zip(mu, logvar)], -1)
    return logsumexp(comp, -1) - math.log(len(mu))


def test_the_mixture_density_equals_brute_force_also_for_narrow_components():
    """In blocks of components (70 here: 3 blocks of 32, the last padded), within 1e-3 nats of float64 brute force
    at D = 50 for posteriors as narrow as logvar -14 (sd 0.0009), means spread over N(0, 5^2) and latents drawn
    from the components themselves (where the expanded square was off by up to 162 nats); z of any leading shape."""

    @jax.jit  # the draws and the density in one program (op by op: ~45)
    def draw_and_density():
        k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
        mu = 5.0 * jax.random.normal(k1, (70, 50))
        logvar = jax.random.uniform(k2, (70, 50), minval=-14.0, maxval=1.0)
        pick = jax.random.randint(k3, (12,), 0, 70)
        z = mu[pick] + jnp.exp(0.5 * logvar[pick]) * jax.random.normal(k4, (12, 50))
        return z, mu, logvar, prior.mixture_log_prob(z.reshape(3, 4, 50), mu, logvar)

    z, mu, logvar, got = draw_and_density()
    assert got.shape == (3, 4)
    np.testing.assert_allclose(np.asarray(got).reshape(-1), _brute_force(z, mu, logvar), rtol=1e-6, atol=1e-3)


@functools.cache
def _linear_vamp_init(k):
    """The model of `_linear_vamp` and its params' init, jitted: one program, built once (op by op: ~25)."""
    model = prior.VampPrior(LinearGaussianVAE(), (2, 2, 1), k)

    @jax.jit
    def init():
        params = model.init(jax.random.key(3), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2)))
        params["params"]["pseudo_inputs"] = jax.random.uniform(jax.random.key(4), (k, 2, 2, 1))
        params["params"]["vae"]["enc_mu"]["kernel"] = 2.0 * params["params"]["vae"]["enc_mu"]["kernel"]
        return params

    return model, init


def _linear_vamp(k=3):
    """The tiny linear Gaussian VAE of test_objectives (2x2 images, 2 latents) under a VampPrior of k pseudo-inputs,
    its params spread so the components differ, and test_objectives' batch, keys and config."""
    _, _, cfg, x, keys = _tiny(sigma=0.7)
    model, init = _linear_vamp_init(k)
    return model, init(), cfg, x, keys


def _broad_proposals(params):
    """The encoder's posteriors made wide (variance e^1.5, whatever x): importance sampling from them covers every
    mode of the true posterior, which a mixture prior makes multimodal."""
    lv = params["params"]["vae"]["enc_lv"]
    params["params"]["vae"]["enc_lv"] = {"kernel": jnp.zeros_like(lv["kernel"]), "bias": jnp.full_like(lv["bias"], 1.5)}
    return params


def test_the_vamp_prior_is_the_mixture_of_the_encoders_posteriors_at_the_clipped_pseudo_inputs():
    model, params, _, _, _ = _linear_vamp()
    assert set(params["params"]) == {"vae", "pseudo_inputs"} and model.latent_dim == 2

    @jax.jit  # one program (op by op: ~70)
    def densities(params):
        u = params["params"]["pseudo_inputs"].at[0, 0, 0, 0].set(1.7)  # clipped to 1 before the encoder sees it
        params["params"]["pseudo_inputs"] = u
        mu, logvar = LinearGaussianVAE().apply({"params": params["params"]["vae"]}, jnp.clip(u, 0, 1),
                                               method="encode")
        z = jax.random.normal(jax.random.key(5), (11, 2))
        # What the samplers draw from (a VAE's latent_mixture) has the same density.
        mixture = prior.as_mixture(*model.apply(params, method="prior_components"))
        return z, mu, logvar, model.apply(params, z, method="prior_log_prob"), latent_mixture.log_density(mixture, z)

    z, mu, logvar, log_prior, log_mixture = densities(params)
    np.testing.assert_allclose(log_prior, _brute_force(z, mu, logvar), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(log_mixture, _brute_force(z, mu, logvar), atol=1e-4)
    # A fresh model's pseudo-inputs start at N(0.05, 0.01) per pixel, as Tomczak and Welling's code.
    fresh = np.asarray(jax.jit(prior.VampPrior(LinearGaussianVAE(), (2, 2, 1), 500).init)(
        jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2)))["params"]["pseudo_inputs"])
    assert fresh.shape == (500, 2, 2, 1) and abs(float(fresh.mean()) - 0.05) < 1e-3
    assert abs(float(fresh.std()) - 0.01) < 1e-3


def test_the_data_start_puts_the_pseudo_inputs_at_training_images(smoke_config):
    images = np.random.default_rng(1).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    smoke_config = _vamp(smoke_config)
    smoke_config.model.vamp_init = "data"
    model = models.build(smoke_config.model, (28, 28, 1), train_images=images)
    u = np.asarray(jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                       jnp.zeros((1, 10)))["params"]["pseudo_inputs"])
    rows = np.sort(np.random.default_rng(0).permutation(40)[:6])  # a fixed random choice
    np.testing.assert_allclose(u, images[rows] / 255.0, atol=0.06)  # + N(0, 0.01) per pixel
    assert 0.005 < float(np.std(u - images[rows] / 255.0)) < 0.015
    with pytest.raises(ValueError, match=r"train split has 4: set --config.model.vamp_components=4 or fewer"):
        models.build(smoke_config.model, (28, 28, 1), train_images=images[:4])


def test_the_iwae_bound_under_the_vamp_prior_reaches_the_exact_log_likelihood_and_k1_is_the_elbo():
    """A linear Gaussian decoder under a mixture prior has a closed-form marginal, p(x) = 1/K sum_k N(x; W mu_k +
    b, W S_k W^T + sigma^2 I): the importance-sampled estimate with 4000 draws from broad proposals lands on it (0.006
    nats apart over 64 examples, each within 0.2), and the ELBO (objective.kl='mc') below it; k = 1 gives the ELBO's
    value under the same noise."""
    model, params, cfg, x, keys = _linear_vamp()

    @jax.jit  # one program (op by op, the objectives and the 4 chunks of importance_nll built ~120)
    def run(params, x, keys):
        params = _broad_proposals(params)
        loss_elbo, m = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
        loss_iwae, _ = objectives.get("iwae")(params, x, keys, model=model, cfg=cfg)
        nll = vae_obj.importance_nll(params, x, keys, model=model, cfg=cfg, k=4000, chunk=1000)
        return loss_elbo, m, loss_iwae, model.apply(params, method="prior_components"), nll

    loss_elbo, m, loss_iwae, (mu, logvar), nll = run(params, x, keys)
    np.testing.assert_allclose(loss_iwae, loss_elbo, rtol=1e-6)
    w, b = (np.asarray(params["params"]["vae"]["dec"][n], np.float64) for n in ("kernel", "bias"))
    xs = np.asarray(x, np.float64).reshape(len(x), 4)
    mu, var = np.asarray(mu, np.float64), np.exp(np.asarray(logvar, np.float64))
    dens = [multivariate_normal(m_ @ w + b, w.T @ np.diag(v) @ w + cfg.gaussian_sigma**2 * np.eye(4))
            for m_, v in zip(mu, var)]
    exact = logsumexp(np.stack([d.logpdf(xs) for d in dens], -1), -1) - math.log(len(dens))
    error = np.asarray(nll, np.float64) + exact  # Monte Carlo's: 0.12 nats sd per example at k=1000, 0.034 at 16000
    assert abs(error.mean()) < 0.03 and error.std() < 0.1 and np.abs(error).max() < 0.3, error
    assert float(m["elbo"]) < exact.mean() - 0.05


def test_the_objectives_that_assume_the_normal_prior_refuse_a_vamp_model():
    model, params, cfg, x, keys = _linear_vamp()
    cfg.kl = "analytic"
    # Raised while tracing: jax.eval_shape compiles nothing (the objectives run op by op before they raise).
    with pytest.raises(ValueError, match=r"kl='analytic'.*--config.objective.kl=mc"):
        jax.eval_shape(functools.partial(objectives.get("elbo"), model=model, cfg=cfg), params, x, keys)
    with pytest.raises(ValueError, match=r"capacity_vae.*objective.name=elbo \(objective.kl=mc\) or iwae"):
        jax.eval_shape(functools.partial(vae_obj.capacity_vae, model=model, cfg=cfg, step=0), params, x, keys)


@pytest.mark.parametrize("override,message", [
    ({"model.prior": "vampp"}, "unknown model.prior 'vampp'; choices: normal, vamp"),
    ({"model.vamp_components": 0}, "model.vamp_components must be an int >= 1"),
    ({"model.vamp_init": "zeros"}, "unknown model.vamp_init 'zeros'; choices: noise, data"),
    ({"objective.kl": "analytic"}, "model.prior='vamp' has no closed-form KL: set --config.objective.kl=mc"),
    ({"objective.name": "beta_tcvae"}, "objective.name='beta_tcvae' assumes the N(0, I) prior"),
    ({"model.num_classes": 10}, "a class-conditional VAE (model.num_classes=10) would need a label for each"),
])
def test_a_vamp_config_that_cannot_train_is_an_error_naming_the_fix(smoke_config, override, message):
    c = _vamp(smoke_config)
    for field, value in override.items():
        block, name = field.split(".")
        c[block][name] = value
    with pytest.raises(ValueError, match=None) as e:
        config_check.check(c)
    assert message in str(e.value)


def test_vamp_components_without_the_vamp_prior_is_a_setting_that_does_nothing(smoke_config, caplog):
    from jaxgen import config as config_lib

    smoke_config.model.vamp_components, smoke_config.model.vamp_init = 50, "data"
    found = config_check.ignored_settings(smoke_config, config_lib.vae_config())
    assert found == ["model.vamp_components=50 (read by model.prior=vamp; this run's is normal)",
                     "model.vamp_init='data' (read by model.prior=vamp; this run's is normal)"]


def test_eight_devices_give_the_params_of_one_with_the_vamp_prior(smoke_config):
    """The prior's pseudo-inputs are encoded on every device alike and their gradient is the global batch's."""
    (s8, m8), (s1, m1), _ = eight_and_one(_vamp(smoke_config), steps=2)
    assert s8["params"]["params"]["pseudo_inputs"].shape == (6, 28, 28, 1)
    assert_same_params(s8, s1)
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5)


def test_a_vamp_run_trains_evaluates_and_samples_from_its_prior(smoke_config, tmp_path, caplog, one_device):
    """From the training images (model.vamp_init='data'): trained.load builds the model without them."""
    from jaxgen.training import loop, trained

    c = _vamp(smoke_config)
    c.model.vamp_init = "data"
    c.train.steps, c.eval.every = 4, 0
    c.eval.extractors = ("classifier",)
    with caplog.at_level(logging.WARNING, "jaxgen"):
        final = loop.train_and_evaluate(c, tmp_path)
    assert all(math.isfinite(final[k]) for k in ("elbo", "kl", "nll"))
    assert final["nll"] < -final["elbo"] + 1.0  # the IWAE bound with final_nll_k draws is the tighter one
    record = json.loads((tmp_path / "eval.json").read_text())
    assert record["prior"] == "vamp (6 pseudo-inputs)" and record["latents"] == "prior"
    run = trained.load(c, tmp_path)  # the samplers draw from the restored pseudo-inputs' posteriors
    mixture = run.latent_mixture()
    mu, logvar = run.model.apply(jax.device_get(run.variables), method="prior_components")
    np.testing.assert_allclose(mixture["means"], mu, rtol=1e-6)
    np.testing.assert_allclose(np.diagonal(mixture["scale_tril"], axis1=1, axis2=2), np.exp(0.5 * logvar), rtol=1e-6)
    assert np.isfinite(run.samples(8)).all()


def test_eval_modes_stop_on_another_prior_but_not_on_how_it_started_or_on_unread_vamp_fields(tmp_path):
    from jaxgen import config as config_lib
    from jaxgen.training import run_record

    (tmp_path / "config.json").write_text(config_lib.vae_config().to_json_best_effort(sort_keys=True))
    now = config_lib.vae_config()
    now.model.vamp_components, now.model.vamp_init = 50, "data"  # unread with the normal prior it trained with
    assert run_record.warn_config_drift(now, tmp_path, "eval") == []
    trained = _vamp(config_lib.vae_config())
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(sort_keys=True))
    now = _vamp(config_lib.vae_config())
    now.model.vamp_init = "data"  # how the pseudo-inputs started: the checkpoint holds where they went
    assert run_record.warn_config_drift(now, tmp_path, "eval") == []
    for field, value in (("vamp_components", 50), ("prior", "normal")):
        other = _vamp(config_lib.vae_config())
        other.model[field] = value
        with pytest.raises(ValueError, match=rf"this command's model differs .* in: model.{field}: "):
            run_record.warn_config_drift(other, tmp_path, "eval")


def test_an_objective_of_yours_with_the_vamp_prior_is_told_to_take_log_p_z_from_it(smoke_config, caplog):
    c = _vamp(smoke_config)
    c.objective.name = "tests.test_vae_step:nan_objective"
    with caplog.at_level(logging.WARNING, "jaxgen"):
        config_check.check(c)
    assert "it must take log p(z) from jaxgen.objectives.vae.prior_log_prob(params, z, model)" in caplog.text
