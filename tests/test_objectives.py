"""Objectives against closed forms and brute force."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import objectives
from jaxgen.objectives import vae as vo


def test_gaussian_kl_matches_monte_carlo():
    mu = jnp.array([[0.5, -1.0, 2.0]])
    logvar = jnp.array([[-0.5, 0.3, -1.2]])

    @jax.jit  # one program (op by op: ~25)
    def both(mu, logvar):
        z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(jax.random.key(0), (400_000, 3))
        mc = jnp.mean(vo.diag_normal_log_prob(z, mu, logvar) - vo.std_normal_log_prob(z))
        return mc, vo.gaussian_kl(mu, logvar)[0]

    mc, closed = both(mu, logvar)
    # MC standard error here is ~0.003; allow 4 of them.
    assert abs(float(mc) - float(closed)) < 0.012, (mc, closed)


def test_likelihoods_match_hand_computation():
    logits = jnp.array([0.3, -2.0, 1.5, 0.0]).reshape(1, 2, 2, 1)
    x = jnp.array([1.0, 0.0, 0.0, 1.0]).reshape(1, 2, 2, 1)
    p = 1 / (1 + np.exp(-np.array([0.3, -2.0, 1.5, 0.0])))
    hand = np.sum(np.log(np.where(np.array([1, 0, 0, 1]) == 1, p, 1 - p)))
    np.testing.assert_allclose(jax.jit(vo.bernoulli_log_prob)(logits, x), [hand], rtol=1e-6)  # one program, not 10
    cfg = ml_collections.ConfigDict({"gaussian_sigma": 0.5})
    mean = jnp.full((1, 2, 2, 1), 0.25)
    hand = np.sum(-0.5 * ((np.array([1, 0, 0, 1]) - 0.25) / 0.5) ** 2 - np.log(0.5) - 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(jax.jit(functools.partial(vo.gaussian_log_prob, cfg=cfg))(mean, x), [hand], rtol=1e-6)


def _logistic_bin_probs(loc, log_scale):
    """P(u) [N, 256] of the 8-bit levels u under each discretized logistic, in float64 (both CDFs' tails taken on
    the side where they are small, so no difference of two numbers near 1)."""
    s = np.exp(np.maximum(np.asarray(log_scale, np.float64), vo.MIN_LOG_SCALE))[:, None]
    x = (np.arange(256) / 255.0)[None]
    a = np.where(x > 254.5 / 255, np.inf, (x + 0.5 / 255 - np.asarray(loc, np.float64)[:, None]) / s)
    b = np.where(x < 0.5 / 255, -np.inf, (x - 0.5 / 255 - np.asarray(loc, np.float64)[:, None]) / s)
    with np.errstate(over="ignore"):
        cdf = lambda t: 1.0 / (1.0 + np.exp(-t))  # noqa: E731
        return np.where(a + b > 0, cdf(-b) - cdf(-a), cdf(a) - cdf(b))


def _logistic_log_probs(loc, log_scale):
    """jaxgen's log P(u) [N, 256] of every 8-bit level, one pixel per example."""
    n = len(loc)
    out = jnp.stack([jnp.broadcast_to(jnp.asarray(loc)[:, None], (n, 256)),
                     jnp.broadcast_to(jnp.asarray(log_scale)[:, None], (n, 256))], -1)[:, :, None, None, :]
    x = (jnp.arange(256) / 255.0).astype(jnp.float32)[None, :, None, None, None]
    return vo.discretized_logistic_log_prob(out, x)


def test_discretized_logistic_is_a_distribution_over_the_8_bit_levels():
    """Its 256 probabilities sum to 1 for any location and scale (the end bins reach to -inf and +inf), and each
    equals the difference of the logistic's CDFs at the bin's edges, computed in float64."""
    rng = np.random.default_rng(0)
    loc = rng.uniform(-0.5, 1.5, 64).astype(np.float32)
    log_scale = rng.uniform(-9.0, 1.0, 64).astype(np.float32)  # some below the floor
    got = np.asarray(jax.jit(_logistic_log_probs)(loc, log_scale), np.float64)  # one program, not one per op
    np.testing.assert_allclose(np.log(np.sum(np.exp(got), axis=1)), 0.0, atol=1e-5)
    with np.errstate(divide="ignore"):  # float64's own tails end at exp(-745)
        want = np.log(_logistic_bin_probs(loc, log_scale))
    likely = want > -20  # float32 rounds (x - loc) / scale by ~6e-8 / scale: 1.3e-4 at the floor, times the slope
    np.testing.assert_allclose(got[likely], want[likely], atol=3e-4)
    far = (want > -650) & ~likely  # tails, relative to their size (below exp(-708) float64's own are denormal)
    np.testing.assert_allclose(got[far], want[far], rtol=1e-5)


def test_discretized_logistic_is_finite_far_in_its_tails():
    """Where both CDFs round to the same float (a pixel many scales from the location) the direct
    log(sigmoid(a) - sigmoid(b)) is -inf with a NaN gradient; jaxgen's form stays finite and right."""
    loc, log_scale, x = jnp.array([-50.0, 60.0]), jnp.array([-7.0, -3.0]), jnp.array([0.5, 0.2])
    out = jnp.stack([loc, log_scale], -1)[:, None, None, :]
    f = lambda o: vo.discretized_logistic_log_prob(o, x[:, None, None, None])  # noqa: E731
    wide = jnp.array([[[[0.5, 200.0]]], [[[0.0, 200.0]]]])  # a log-scale past float32's exp range: clipped at 10

    @jax.jit  # one program (op by op: ~50)
    def values_and_grads(out, wide):
        return f(out), jax.grad(lambda o: jnp.sum(f(o)))(out), jax.grad(lambda o: jnp.sum(f(o)))(wide)

    got, grad, wide_grad = values_and_grads(out, wide)
    s = np.exp(np.asarray(log_scale, np.float64))
    a = (np.asarray(x, np.float64) + 0.5 / 255 - np.asarray(loc, np.float64)) / s
    b = a - 1 / 255 / s
    # Far right of loc -50: P = sigmoid(-b) - sigmoid(-a) ~ exp(-b) - exp(-a); far left of loc 60: exp(a) - exp(b).
    want = [-b[0] + np.log1p(-np.exp(b[0] - a[0])), a[1] + np.log1p(-np.exp(b[1] - a[1]))]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    naive = jnp.log(jax.nn.sigmoid(a[1]) - jax.nn.sigmoid(b[1]))
    assert not np.isfinite(float(naive))  # why the form matters
    assert np.all(np.isfinite(np.asarray(grad)))
    assert np.all(np.isfinite(np.asarray(wide_grad)))


class LinearGaussianVAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = N(W z + b, sigma^2 I): log p(x) is exact (x ~ N(b, W W^T + sigma^2 I))."""

    latent_dim: int = 2

    def setup(self):
        self.dec = nn.Dense(4, kernel_init=nn.initializers.normal(1.0), bias_init=nn.initializers.normal(0.5))
        self.enc_mu = nn.Dense(self.latent_dim)
        self.enc_lv = nn.Dense(self.latent_dim, bias_init=nn.initializers.constant(-0.5))

    def encode(self, x):
        h = x.reshape(x.shape[0], -1)
        return self.enc_mu(h), self.enc_lv(h)

    def decode(self, z):
        return self.dec(z).reshape(z.shape[0], 2, 2, 1)

    def __call__(self, x, z):
        return self.encode(x), self.decode(z)


def _tiny(sigma=0.7):
    model = LinearGaussianVAE()
    params = model.init(jax.random.key(0), jnp.zeros((1, 2, 2, 1)), jnp.zeros((1, 2)))
    cfg = ml_collections.ConfigDict({"likelihood": "gaussian", "gaussian_sigma": sigma, "k": 1, "beta": 1.0,
                                     "kl": "mc"})
    x = jax.random.normal(jax.random.key(1), (64, 2, 2, 1))
    keys = jax.random.split(jax.random.key(2), 64)
    return model, params, cfg, x, keys


def test_iwae_k1_equals_elbo_under_same_noise():
    model, params, cfg, x, keys = _tiny()
    loss_elbo, loss_iwae = jax.jit(lambda p: (objectives.get("elbo")(p, x, keys, model=model, cfg=cfg)[0],
                                              objectives.get("iwae")(p, x, keys, model=model, cfg=cfg)[0]))(params)
    np.testing.assert_allclose(loss_iwae, loss_elbo, rtol=1e-6)


def test_iwae_with_k_samples_is_the_log_mean_of_the_importance_weights():
    """k=10: -mean_b log (1/k sum_j w_bj), with the weights recomputed here by hand (numpy, float64) from the same
    draws; and its ESS metric, 1 / sum_j (w_bj / sum w_b)^2 averaged over the batch."""
    model, params, cfg, x, keys = _tiny()
    cfg.k = 10

    @jax.jit  # one program (op by op: ~30)
    def run(params, x, keys):
        loss, metrics = objectives.get("iwae")(params, x, keys, model=model, cfg=cfg)
        mu, logvar = model.apply(params, x, method="encode")
        return loss, metrics, mu, logvar, jax.vmap(lambda key: jax.random.normal(key, (10, 2)))(keys)

    loss, metrics, mu, logvar, eps = run(params, x, keys)
    mu, logvar, eps = (np.asarray(a, np.float64) for a in (mu, logvar, eps))  # eps: [B, k, D]
    z = mu[:, None] + np.exp(0.5 * logvar)[:, None] * eps
    w, b = (np.asarray(a, np.float64) for a in (params["params"]["dec"]["kernel"], params["params"]["dec"]["bias"]))
    mean = z @ w + b  # [B, k, 4]
    xs = np.asarray(x, np.float64).reshape(64, 1, 4)
    log2pi = math.log(2 * math.pi)
    log_px = np.sum(-0.5 * ((xs - mean) / cfg.gaussian_sigma) ** 2 - math.log(cfg.gaussian_sigma) - 0.5 * log2pi, -1)
    log_pz = np.sum(-0.5 * z**2 - 0.5 * log2pi, -1)
    log_qz = np.sum(-0.5 * eps**2 - 0.5 * logvar[:, None] - 0.5 * log2pi, -1)
    log_w = log_px + log_pz - log_qz  # [B, k]
    top = log_w.max(1, keepdims=True)
    bound = top[:, 0] + np.log(np.mean(np.exp(log_w - top), 1))
    np.testing.assert_allclose(float(loss), -bound.mean(), rtol=1e-5)
    norm = np.exp(log_w - top) / np.exp(log_w - top).sum(1, keepdims=True)
    np.testing.assert_allclose(float(metrics["ess"]), np.mean(1 / np.sum(norm**2, 1)), rtol=1e-4)
    # Tighter than the ELBO of the same draws' mean log weight (Jensen), by a margin the test model shows.
    assert -bound.mean() < -log_w.mean() - 0.01


def test_the_analytic_elbo_is_the_reconstruction_term_minus_the_closed_form_kl():
    """The default objective.kl='analytic': loss = -(mean log p(x|z) - KL(q || p)), and its expectation is the MC
    form's (whose k=1 value is IWAE's): both agree to within MC error at large k."""
    model, params, cfg, x, keys = _tiny()
    cfg.kl = "analytic"
    many = cfg.copy_and_resolve_references()
    many.k = 2000
    many_mc = many.copy_and_resolve_references()
    many_mc.kl = "mc"

    @jax.jit  # one program (op by op: ~30)
    def run(params, x, keys):
        loss, metrics = objectives.get("elbo")(params, x, keys, model=model, cfg=cfg)
        mu, logvar = model.apply(params, x, method="encode")
        return (loss, metrics, jnp.mean(vo.gaussian_kl(mu, logvar)),
                objectives.get("elbo")(params, x, keys, model=model, cfg=many)[0],
                objectives.get("elbo")(params, x, keys, model=model, cfg=many_mc)[0])

    loss, metrics, mean_kl, analytic, mc = jax.device_get(run(params, x, keys))
    np.testing.assert_allclose(float(metrics["kl"]), float(mean_kl), rtol=1e-6)
    np.testing.assert_allclose(float(loss), float(metrics["rec_nll"] + mean_kl), rtol=1e-6)
    analytic, mc = float(analytic), float(mc)
    assert abs(analytic - mc) < 0.02 * abs(analytic), (analytic, mc)


def test_iwae_bound_tightens_with_k_towards_exact_log_likelihood():
    model, params, cfg, x, keys = _tiny()
    w = np.asarray(params["params"]["dec"]["kernel"], np.float64).T  # [4, 2]
    b = np.asarray(params["params"]["dec"]["bias"], np.float64)
    cov = w @ w.T + cfg.gaussian_sigma**2 * np.eye(4)
    d = np.asarray(x, np.float64).reshape(64, 4) - b
    exact = -0.5 * (np.einsum("bi,ij,bj->b", d, np.linalg.inv(cov), d) + np.linalg.slogdet(cov)[1]
                    + 4 * math.log(2 * math.pi))
    # The four estimates in one program (importance_nll runs op by op: ~100 programs).
    nlls = jax.jit(lambda p: [vo.importance_nll(p, x, keys, model=model, cfg=cfg, k=k, chunk=500)
                              for k in (1, 10, 100, 2000)])(params)
    bounds = [float(np.mean(-np.asarray(nll))) for nll in nlls]
    assert all(a < b for a, b in zip(bounds, bounds[1:])), bounds  # tighter with k
    assert bounds[-1] <= exact.mean() + 0.01  # still a lower bound on log p(x) (MC slack 0.01)
    assert exact.mean() - bounds[-1] < 0.05 * (exact.mean() - bounds[0]), (bounds, exact.mean())


def test_importance_nll_in_chunks_is_the_k_sample_estimate():
    """k=10 in chunks of 7 (the second counts only its first 3 draws) is the 10-sample estimate whatever the chunk
    size: draw j of an example comes from fold_in(its key, j)."""
    model, params, cfg, x, keys = _tiny()
    nll = functools.partial(vo.importance_nll, model=model, cfg=cfg, k=10)
    lse = functools.partial(vo.chunk_logsumexp, model=model, cfg=cfg, chunk=8)

    @jax.jit  # every estimate in one program (op by op they built ~130)
    def run(params, x, keys):
        per_draw = jax.vmap(lambda key: jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(10)))(keys)
        lw = vo.log_importance_weights(params, x, per_draw, model=model, cfg=cfg, k=10)
        want = -(jax.nn.logsumexp(lw, axis=1) - math.log(10))
        chunked = {chunk: nll(params, x, keys, chunk=chunk) for chunk in (7, 1, 4, 10)}
        pieces = {(valid, n): lse(params, x, keys, 1, valid=valid, pieces=n) for valid in (8, 3) for n in (1, 2, 4, 8)}
        return want, chunked, pieces

    want, chunked, pieces = run(params, x, keys)
    got = chunked[7]
    for chunk in (1, 4, 10):
        np.testing.assert_allclose(chunked[chunk], got, rtol=1e-5)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # A chunk decoded in pieces (XLA:CPU's faster way, lax.map): the same draws, a partial chunk's too.
    for valid in (8, 3):
        whole = pieces[valid, 1]
        for n in (2, 4, 8):
            np.testing.assert_allclose(pieces[valid, n], whole, rtol=1e-6)


def test_the_cpu_decodes_a_chunk_in_pieces_of_at_least_128():
    from jaxgen.evaluation.vae import decode_pieces

    assert decode_pieces(200, 50, "cpu") == 50  # 200 decodes a piece (the quickstart's eval: 2x faster)
    assert decode_pieces(25, 50, "cpu") == 5  # 10 pieces of 125 would be too few: 5 of 250 (10 draws of 25)
    assert decode_pieces(16, 8, "cpu") == 1 and decode_pieces(200, 50, "gpu") == 1


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "discretized_logistic"])
def test_bits_per_dim_are_those_of_8_bit_pixels(likelihood):
    """Bernoulli and discretized logistic (probabilities): nll / (D ln 2). Gaussian (a density of x / 255): the
    8-bit pixels' bits, (nll + D ln 255) / (D ln 2)."""
    from jaxgen import parallel
    from jaxgen.evaluation import vae as vae_eval

    mesh = parallel.make_mesh()
    n = mesh.size
    fake_eval = lambda params, key, bkey, image, label, pos, mask, c, count: (  # noqa: E731 (every image: log p(x) = -5 nats)
        {"count": jnp.sum(mask).astype(jnp.float32)}, jnp.full(mask.shape, -5.0))
    images = np.zeros((2 * n, 4, 4, 3), np.uint8)
    out = vae_eval.evaluate(fake_eval, None, images, mesh=mesh, key=jax.random.key(0),
                            binarize_key=jax.random.key(1), batch_size=n, nll_k=1,
                            nll_chunk=1, likelihood=likelihood)
    dims = 4 * 4 * 3
    assert out["nll"] == pytest.approx(5.0)
    want = (5.0 + (dims * math.log(255) if likelihood == "gaussian" else 0.0)) / (dims * math.log(2))
    assert out["nll_bits_per_dim"] == pytest.approx(want, rel=1e-6)


def test_nll_keeps_at_most_two_chunks_in_flight():
    """The evaluation waits for each NLL chunk before it queues the one after next, so no single wait of the host's
    is long and a signal's handler (SIGTERM, Ctrl-C) runs between chunks, not after all of a batch's chunks."""
    import time

    from jaxgen import parallel
    from jaxgen.evaluation import vae as vae_eval

    mesh = parallel.make_mesh()

    def slow():
        time.sleep(0.05)
        return np.full(mesh.size, -5.0, np.float32)

    slow_lse = jax.jit(lambda: jax.pure_callback(slow, jax.ShapeDtypeStruct((mesh.size,), jnp.float32)),
                       out_shardings=jax.sharding.NamedSharding(mesh, jax.P(parallel.AXIS)))
    outs = []

    def fake_eval(params, key, bkey, image, label, pos, mask, c, count):
        assert all(o.is_ready() for o in outs[:-1]), f"chunk {int(c)} queued with {len(outs)} unfinished before it"
        outs.append(slow_lse())
        return {"count": jnp.sum(mask).astype(jnp.float32)}, outs[-1]

    out = vae_eval.evaluate(fake_eval, None, np.zeros((mesh.size, 4, 4, 1), np.uint8), mesh=mesh,
                            key=jax.random.key(0), binarize_key=jax.random.key(1), batch_size=mesh.size, nll_k=8,
                            nll_chunk=1, likelihood="bernoulli")
    assert len(outs) == 8 and out["nll"] == pytest.approx(5.0)


def test_unknown_objective_lists_the_choices():
    with pytest.raises(ValueError, match="unknown objective 'elbow'; choices: beta_tcvae, capacity_vae, ciwae, "
                                         "elbo, info_vae, iwae, miwae, piwae"):
        objectives.get("elbow")


def test_objective_by_import_path():
    assert objectives.get("jaxgen.objectives.vae:iwae") is vo.iwae


def test_legacy_uint32_keys_draw_what_typed_keys_draw():
    """A researcher's code may pass jax.random.PRNGKey-style keys; they give the same latents as typed ones."""
    mu, logvar = jnp.zeros((4, 3)), jnp.zeros((4, 3))
    typed = jax.random.split(jax.random.key(0), 4)
    legacy = jax.random.key_data(typed)
    np.testing.assert_array_equal(vo.sample_latents(mu, logvar, legacy, 5), vo.sample_latents(mu, logvar, typed, 5))
    per_draw = jax.vmap(lambda k: jax.random.split(k, 5))(typed)  # [B, k]: one draw from each key
    np.testing.assert_array_equal(vo.sample_latents(mu, logvar, jax.random.key_data(per_draw), 5),
                                  vo.sample_latents(mu, logvar, per_draw, 5))


def test_posterior_log_prob_from_the_noise_is_exact_at_extreme_variances():
    """log q(z|x) is computed from the reparameterisation's noise: the same value and gradients as the density at z
    where both are accurate, and still exact where sigma is below float32's resolution of mu (the density
    recomputed from z was off by 0.7 nats at logvar = -34 and NaN at -90)."""
    keys = jax.random.split(jax.random.key(1), 3)
    mu = jnp.array([[0.5, -1.0], [2.0, 0.1], [0.0, 0.3]])

    def both(mu, logvar):
        z, eps = vo.draw_latents(mu, logvar, keys, 4)
        return vo.posterior_log_prob(eps, logvar), vo.diag_normal_log_prob(z, mu[:, None], logvar[:, None])

    @jax.jit  # the values and both gradients in one program (op by op: ~40)
    def values_and_grads(mu, logvar):
        return both(mu, logvar), [jax.grad(lambda m, lv, i=i: jnp.sum(both(m, lv)[i]), argnums=(0, 1))(mu, logvar)
                                  for i in (0, 1)]

    logvar = jnp.array([[-0.5, 0.3], [-1.2, 0.0], [1.0, -2.0]])
    (new, old), grads = values_and_grads(mu, logvar)
    np.testing.assert_allclose(new, old, rtol=1e-5)
    for a, b in zip(*grads):  # under the reparameterisation: d/dmu = 0, d/dlogvar = -1/2 per draw
        np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(grads[0][1], np.full(logvar.shape, -0.5 * 4))

    @jax.jit  # one program for the three variances
    def noise_and_log_prob(extreme):
        lv = jnp.full(mu.shape, extreme)
        _, eps = vo.draw_latents(mu, lv, keys, 4)
        return eps, vo.posterior_log_prob(eps, lv)

    for extreme in (-60.0, -90.0, 80.0):
        eps, log_q = noise_and_log_prob(extreme)
        exact = -0.5 * np.sum(np.asarray(eps, np.float64) ** 2 + extreme + math.log(2 * math.pi), axis=-1)
        np.testing.assert_allclose(log_q, exact, rtol=1e-6)


def test_kl_warmup_weights_the_kl_by_the_step_and_leaves_the_logged_elbo_unweighted():
    model, params, cfg, x, keys = _tiny()
    cfg.beta, cfg.kl_warmup_steps = 2.0, 10
    elbo = jax.jit(lambda p, step: vo.elbo(p, x, keys, model=model, cfg=cfg, step=step))  # one program for 4 steps
    for step, weight in ((0, 0.0), (5, 1.0), (10, 2.0), (30, 2.0)):
        loss, m = jax.device_get(elbo(params, jnp.int32(step)))
        assert float(m["kl_weight"]) == weight
        np.testing.assert_allclose(loss, m["rec_nll"] + weight * m["kl"], rtol=1e-6)
        np.testing.assert_allclose(m["elbo"], -m["rec_nll"] - m["kl"], rtol=1e-6)
    # No step (a direct call): beta, as without warm-up.
    loss, m = jax.device_get(jax.jit(lambda p: vo.elbo(p, x, keys, model=model, cfg=cfg))(params))
    assert "kl_weight" not in m
    np.testing.assert_allclose(loss, m["rec_nll"] + 2.0 * m["kl"], rtol=1e-6)


def test_the_discretized_logistics_image_is_its_locations_and_data_mean_lays_out_locations_then_log_scales():
    """Samples and reconstructions show the locations (the first C channels), clipped to [0, 1]; data_mean's
    per-pixel bias follows the decoder output's [H, W, 2C] order, each pixel's C locations then its C log-scales."""
    from jaxgen.models.vae import data_mean_output

    out = jnp.concatenate([jnp.array([-0.2, 0.5, 1.3]), jnp.array([-1.0, -2.0, -3.0])]).reshape(1, 1, 1, 6)
    np.testing.assert_allclose(vo.mean_image("discretized_logistic")(out).reshape(-1), [0.0, 0.5, 1.0])
    images = np.zeros((2, 2, 2, 3), np.uint8)
    images[0, ..., 1] = 255  # channel 1: half the images white; channels 0 and 2 always black
    bias = data_mean_output(images, "discretized_logistic", per_pixel=True).reshape(2, 2, 6)
    floor, spread = vo.MIN_LOG_SCALE, np.log(0.5 * np.sqrt(3) / np.pi)
    np.testing.assert_allclose(bias[1, 0], [0.0, 0.5, 0.0, floor, spread, floor], rtol=1e-5)
    per_channel = data_mean_output(images, "discretized_logistic", per_pixel=False)
    np.testing.assert_allclose(per_channel, [0.0, 0.5, 0.0, floor, spread, floor], rtol=1e-5)
