"""VAE objectives as plain functions: `fn(params, x, keys, *, model, cfg) -> (loss, metrics)`.

x: float images [B, H, W, C] (binarized or in [0, 1]); keys: one PRNG key per example [B], so an example's noise
depends on the example, not on the device it lands on; cfg: the `objective` config block. Log densities are in
nats, summed over pixels and latent dimensions, averaged over the batch.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax
from jax import lax

from jaxgen import registry
from jaxgen.parallel import AXIS

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl(mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """KL(N(mu, diag exp(logvar)) || N(0, I)), summed over the last axis."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu**2 - 1.0 - logvar, axis=-1)


def std_normal_log_prob(z: jax.Array) -> jax.Array:
    """log N(z; 0, I), summed over the last axis."""
    return -0.5 * jnp.sum(z**2 + LOG_2PI, axis=-1)


def has_own_prior(model) -> bool:
    """Whether `model` has a prior of its own (a `prior_log_prob` method: model.prior='vamp'), else N(0, I)."""
    return callable(getattr(type(model), "prior_log_prob", None))


def prior_log_prob(params, z: jax.Array, model) -> jax.Array:
    """log p(z) of latents z [..., D], summed over the last axis: the model's own prior where it has one (a
    `prior_log_prob` method: `model.prior='vamp'`'s VampPrior, which reads `params`), else N(0, I). An objective of
    yours that takes a KL against the prior calls this to train with either."""
    if has_own_prior(model):
        return model.apply(params, z, method="prior_log_prob")
    return std_normal_log_prob(z)


def diag_normal_log_prob(z: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """log N(z; mu, diag exp(logvar)), summed over the last axis."""
    return -0.5 * jnp.sum((z - mu) ** 2 * jnp.exp(-logvar) + logvar + LOG_2PI, axis=-1)


def bernoulli_log_prob(logits: jax.Array, x: jax.Array, cfg=None) -> jax.Array:
    """log Bernoulli(x; sigmoid(logits)), summed over the last three (pixel) axes."""
    del cfg
    return -jnp.sum(optax.sigmoid_binary_cross_entropy(logits, x), axis=(-3, -2, -1))


def gaussian_log_prob(mean: jax.Array, x: jax.Array, cfg) -> jax.Array:
    """log N(x; mean, cfg.gaussian_sigma^2 I), summed over the last three (pixel) axes."""
    sigma = cfg.gaussian_sigma
    return jnp.sum(-0.5 * ((x - mean) / sigma) ** 2 - math.log(sigma) - 0.5 * LOG_2PI, axis=(-3, -2, -1))


# The discretized logistic's log-scale bounds, pixels in [0, 1]. The floor is PixelCNN++'s -7 on [-1, 1] in these
# units (-7 - ln 2: a scale of 0.00046, which puts 97.3% of a centred logistic's mass in its 8-bit bin); the ceiling
# keeps the standardised bin width above float32's zero (an unbounded log-scale above ~87 gave -inf and NaN gradients).
MIN_LOG_SCALE = -7.0 - math.log(2.0)
MAX_LOG_SCALE = 10.0


def discretized_logistic_log_prob(out: jax.Array, x: jax.Array, cfg=None) -> jax.Array:
    """log P(x) of 8-bit pixels x = u / 255 under a logistic with location out[..., :C] and log-scale out[..., C:]
    (clipped to [MIN_LOG_SCALE, MAX_LOG_SCALE]), discretized to the 256 bins [x - 1/510, x + 1/510], the end bins
    extended to -inf and +inf (Salimans et al. 2017, PixelCNN++, with one component; Kingma et al. 2016, IAF).
    Summed over the last three (pixel) axes. A probability, not a density: -log P is a code length, its bits/dim
    NLL / (D ln 2).

    log(sigmoid(a) - sigmoid(b)) for the bin's standardised edges a > b is computed as
    (a + b) / 2 + log(2 sinh((a - b) / 2)) - softplus(a) - softplus(b): exact, with no difference of two CDFs that
    rounds to 0 in a tail (where the direct form gives -inf and a NaN gradient).
    """
    del cfg
    c = x.shape[-1]
    loc, log_scale = out[..., :c], jnp.clip(out[..., c:], MIN_LOG_SCALE, MAX_LOG_SCALE)
    inv_scale = jnp.exp(-log_scale)
    centred = (x - loc) * inv_scale
    half = (0.5 / 255.0) * inv_scale  # half the bin width, standardised
    upper, lower = centred + half, centred - half
    inner = centred + half + jnp.log(-jnp.expm1(-2.0 * half)) - jax.nn.softplus(upper) - jax.nn.softplus(lower)
    first = -jax.nn.softplus(-upper)  # u = 0: log sigmoid(upper), the bin extended to -inf
    last = -jax.nn.softplus(lower)  # u = 255: log(1 - sigmoid(lower)), extended to +inf
    logp = jnp.where(x < 0.5 / 255.0, first, jnp.where(x > 254.5 / 255.0, last, inner))
    return jnp.sum(logp, axis=(-3, -2, -1))


LIKELIHOODS = {"bernoulli": bernoulli_log_prob, "gaussian": gaussian_log_prob,
               "discretized_logistic": discretized_logistic_log_prob}

# The decoder's outputs per image channel, per built-in likelihood (1 where it is missing here).
PARAMS_PER_CHANNEL = {"discretized_logistic": 2}

# The decoder's output as an image in [0, 1] (the likelihood's mean), per likelihood. The discretized logistic's:
# its location (its mean up to the end bins' mass).
MEANS = {"bernoulli": jax.nn.sigmoid, "gaussian": lambda m: jnp.clip(m, 0.0, 1.0),
         "discretized_logistic": lambda m: jnp.clip(m[..., : m.shape[-1] // 2], 0.0, 1.0)}


def output_channels(likelihood_name: str, image_channels: int) -> int:
    """The channels a built-in decoder gives for `likelihood_name` (a user's likelihood: the image's)."""
    return image_channels * PARAMS_PER_CHANNEL.get(likelihood_name, 1)


def likelihood(cfg):
    return registry.resolve("likelihood", cfg.likelihood, LIKELIHOODS)


def check_model(model, params, x, *, cfg) -> None:
    """Checks, by tracing once (no computation), what the objectives and the evaluation need of a VAE model and
    its likelihood: encode(x [B, H, W, C]) -> (mu, logvar), each [B, model.latent_dim]; decode(z) -> [B, H, W, C']
    (C' = C for the built-in likelihoods, 2C for discretized_logistic); the likelihood of x under it -> one
    log p(x | z) per image. A model or a likelihood of the user's that breaks this fails here, naming what it
    returned, instead of broadcasting into a meaningless loss (a likelihood not summed over pixels trains) or failing
    at the first evaluation."""
    b, image = x.shape[0], tuple(x.shape[1:])
    enc = jax.eval_shape(lambda p, v: model.apply(p, v, method="encode"), params, x)
    d = getattr(model, "latent_dim", None)
    if not (isinstance(enc, tuple) and len(enc) == 2 and all(getattr(a, "shape", None) == (b, d) for a in enc)):
        got = [getattr(a, "shape", type(a).__name__) for a in enc] if isinstance(enc, tuple) else \
            registry.describe(enc)
        raise ValueError(f"model {type(model).__name__}: encode(x) of images {[b, *image]} must return (mu, logvar), "
                         f"each [{b}, latent_dim={d}]; it returned {got}")
    z = jax.ShapeDtypeStruct((b, d), jnp.float32)
    out = jax.eval_shape(lambda p, v: model.apply(p, v, method="decode"), params, z)
    shape = tuple(getattr(out, "shape", ()))
    builtin = cfg.likelihood in LIKELIHOODS
    want_shape = (b, *image[:2], output_channels(cfg.likelihood, image[2]))
    if shape[:3] != (b, *image[:2]) or len(shape) != 4 or (builtin and shape != want_shape):
        want = f"[{b}, {', '.join(map(str, want_shape[1:]))}]" if builtin else \
            f"[{b}, {image[0]}, {image[1]}, channels]"
        raise ValueError(f"model {type(model).__name__}: decode(z) must return the likelihood's parameters {want} "
                         f"for images {[b, *image]}" + (f" (objective.likelihood={cfg.likelihood!r})" if builtin
                                                        else "") + f"; it returned {registry.describe(out)}")
    o, v = jax.ShapeDtypeStruct((b, 1, *shape[1:]), out.dtype), jax.ShapeDtypeStruct((b, 1, *image), x.dtype)
    registry.check_call(f"objective.likelihood={cfg.likelihood!r}", likelihood(cfg), "fn(out, x, cfg) -> log p(x | z)",
                        o, v, cfg)
    logp = jax.eval_shape(lambda o, v: likelihood(cfg)(o, v, cfg), o, v)
    if getattr(logp, "shape", None) != (b, 1):
        raise ValueError(f"objective.likelihood={cfg.likelihood!r} must return log p(x | z) summed over the last "
                         f"three (pixel) axes: for out {[b, 1, *shape[1:]]} and x {[b, 1, *image]}, shape "
                         f"[{b}, 1]; it returned {registry.describe(logp)}")
    shown = jax.eval_shape(mean_image(cfg.likelihood), out)  # what samples, reconstructions and sample metrics see
    if getattr(shown, "shape", None) != (b, *image):
        fn = cfg.likelihood.rsplit(":", 1)[-1]
        what = f"{fn}.mean(decode(z))" if hasattr(likelihood(cfg), "mean") else \
            f"decode(z) clipped to [0, 1] ({fn} has no attribute `mean`)"
        raise ValueError(
            f"objective.likelihood={cfg.likelihood!r}: the image that samples and reconstructions show, {what}, must "
            f"be [{b}, {', '.join(map(str, image))}] like the images; it is {registry.describe(shown)}. Give {fn} a "
            f"`mean` that maps decode(z) to that image in [0, 1], e.g. `{fn}.mean = lambda out: "
            f"jnp.clip(out[..., :{image[-1]}], 0, 1)` where the channels start with the means (README, Objectives)")


def mean_image(name: str):
    """decoder output -> the image in [0, 1] that samples and reconstructions show (the likelihood's mean). A
    user's likelihood gives it as an attribute `mean` of its function; without one, the output clipped to [0, 1]."""
    if name in MEANS:
        return MEANS[name]
    return getattr(registry.resolve("likelihood", name, LIKELIHOODS), "mean", MEANS["gaussian"])


def draw_latents(mu, logvar, keys, k: int):
    """(z, eps) [B, k, D] with z = mu + sigma * eps: with keys [B], k draws from each example's key; with keys
    [B, k], one draw from each key. Typed keys (jax.random.key) or legacy uint32 ones ([B, 2], [B, k, 2])."""
    batch_dims = keys.ndim if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) else keys.ndim - 1
    if batch_dims == 2:
        eps = jax.vmap(jax.vmap(lambda key: jax.random.normal(key, (mu.shape[-1],), mu.dtype)))(keys)
    else:
        eps = jax.vmap(lambda key: jax.random.normal(key, (k, mu.shape[-1]), mu.dtype))(keys)
    return mu[:, None] + jnp.exp(0.5 * logvar)[:, None] * eps, eps


def sample_latents(mu, logvar, keys, k: int):
    """z [B, k, D] of `draw_latents`."""
    return draw_latents(mu, logvar, keys, k)[0]


def posterior_log_prob(eps, logvar):
    """log q(z | x) [B, k] of z = mu + sigma * eps, from the noise: -1/2 sum(eps^2 + logvar + log 2 pi), exact at
    any variance. (Recomputing (z - mu)^2 / sigma^2 from z loses eps once sigma is below float32's resolution of mu,
    e.g. off by 0.7 nats at logvar = -34, and gives NaN at |logvar| near 89.) Same value and, under the
    reparameterisation, the same gradients as `diag_normal_log_prob(z, mu, logvar)`."""
    return -0.5 * jnp.sum(eps**2 + logvar[:, None] + LOG_2PI, axis=-1)


def repeat_labels(model, k: int):
    """`model` with its bound labels (a class-conditional VAE's, int [B]) repeated k times each, for decoding the
    B k latents of [B, k, D].reshape(B * k, D), example-major; `model` itself when it has none bound."""
    labels = getattr(model, "labels", None)
    if labels is None or k == 1:
        return model
    return model.clone(labels=jnp.repeat(labels, k, total_repeat_length=labels.shape[0] * k))


def _decode_log_prob(params, x, z, *, model, cfg):
    """log p(x | z) [B, k] for z [B, k, D] (a class-conditional model's bound labels repeated for the k draws)."""
    b, k, d = z.shape
    out = repeat_labels(model, k).apply(params, z.reshape(b * k, d), method="decode")
    out = out.reshape(b, k, *out.shape[1:])
    return likelihood(cfg)(out, x[:, None], cfg)


def log_importance_weights(params, x, keys, *, model, cfg, k: int, posterior=None) -> jax.Array:
    """log w = log p(x|z) + log p(z) - log q(z|x) for k draws z ~ q(z|x) per example: [B, k] (keys as for
    `sample_latents`). posterior: (mu, logvar) of x when the caller has them (else x is encoded here)."""
    mu, logvar = model.apply(params, x, method="encode") if posterior is None else posterior
    z, eps = draw_latents(mu, logvar, keys, k)
    log_px = _decode_log_prob(params, x, z, model=model, cfg=cfg)
    return log_px + prior_log_prob(params, z, model) - posterior_log_prob(eps, logvar)


OWN_PRIOR_OBJECTIVES = "train it with objective.name=elbo (objective.kl=mc) or iwae (or miwae, ciwae, piwae)"


def check_normal_prior(model, what: str, fix: str) -> None:
    """Refuses a model with a prior of its own (model.prior='vamp') where `what` assumes the N(0, I) prior."""
    if has_own_prior(model):
        raise ValueError(f"{what} assumes the N(0, I) prior; this model has model.prior='vamp': {fix}, or "
                         "--config.model.prior=normal")


def elbo(params, x, keys, *, model, cfg, step=None):
    """The negative (beta-weighted) ELBO, averaged over the batch and over cfg.k latent draws per example.

    cfg.kl = 'analytic' uses the closed-form Gaussian KL; 'mc' the single-sample estimate log q(z|x) - log p(z)
    (the form whose k=1 value equals IWAE's under the same noise). With cfg.kl_warmup_steps = W > 0 the KL's weight
    rises linearly from 0 to beta over the first W train steps (KL annealing: Bowman et al. 2016, Sonderby et al.
    2016), logged as kl_weight; the logged elbo is always the unweighted bound. cfg.estimator = 'dreg' (with 'mc'):
    the encoder's gradient leaves out the score term of log q(z|x), whose expectation is 0 ("sticking the landing",
    Roeder et al. 2017; the k-draw ELBO's case of DReG): the same expected gradient, with no variance left where q
    is the exact posterior.
    """
    mu, logvar = model.apply(params, x, method="encode")
    z, eps = draw_latents(mu, logvar, keys, cfg.k)
    rec = jnp.mean(_decode_log_prob(params, x, z, model=model, cfg=cfg), axis=1)  # [B]
    stl = estimator(cfg) == "dreg"
    if cfg.kl == "analytic":
        check_normal_prior(model, "objective.kl='analytic' (the closed-form KL to N(0, I))",
                           "--config.objective.kl=mc")
        if stl:
            raise ValueError(STL_NEEDS_MC)
        kl = gaussian_kl(mu, logvar)
    elif cfg.kl == "mc":
        log_q = path_posterior_log_prob(z, eps, logvar) if stl else posterior_log_prob(eps, logvar)
        kl = jnp.mean(log_q - prior_log_prob(params, z, model), axis=1)
    else:
        raise ValueError(f"objective.kl must be 'analytic' or 'mc', got {cfg.kl!r}")
    weight, extra = cfg.beta, {}
    # Read only with a step: a user's objective that calls elbo without passing its step gets no warm-up, and the
    # field, unread, is named in the warning on settings that do nothing.
    warmup = cfg.get("kl_warmup_steps", 0) if step is not None else 0
    if warmup:
        weight = cfg.beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup)
        extra = {"kl_weight": weight}
    loss = -jnp.mean(rec - weight * kl)
    return loss, {"loss": loss, "elbo": jnp.mean(rec - kl), "rec_nll": -jnp.mean(rec), "kl": jnp.mean(kl), **extra}


ESTIMATORS = ("standard", "dreg")  # objective.estimator


def estimator(cfg) -> str:
    """cfg.estimator, checked: 'standard' (autodiff of the bound through the reparameterised draws) or 'dreg'."""
    name = cfg.get("estimator", "standard")
    if name not in ESTIMATORS:
        raise ValueError(f"unknown objective.estimator {name!r}; choices: {', '.join(ESTIMATORS)} ('dreg': doubly "
                         "reparameterised encoder gradients, Tucker et al. 2019; for elbo, sticking the landing)")
    return name


def path_posterior_log_prob(z, eps, logvar):
    """log q(z | x) [B, k] of z = mu + sigma * eps with q's parameters held fixed: `posterior_log_prob`'s value,
    whose gradient reaches z alone (d/dz = -eps / sigma), not mu and logvar. Its derivative through z is the path
    derivative of Roeder et al. (2017): the score term E[d log q / d phi] = 0 left out."""
    value = lax.stop_gradient(posterior_log_prob(eps, logvar))
    slope = lax.stop_gradient(-eps * jnp.exp(-0.5 * logvar)[:, None])
    return value + jnp.sum(slope * (z - lax.stop_gradient(z)), axis=-1)


def _split_log_weights(params, x, keys, *, model, cfg, k: int, path_only: bool):
    """The log importance weights [B, k] twice, for gradients that weigh the draws differently for the generative
    model (theta: decoder and prior) and for the encoder (phi): `for_theta` with the draws held fixed (its gradient
    reaches the decoder and the prior, a VampPrior's pseudo-inputs and the encoder they pass through included),
    `for_phi` with the decoder and the prior held fixed (its gradient reaches the encoder, through the draws and
    log q; through the draws alone when path_only). Equal values; XLA merges the two forward passes (checked on
    the MLP's compiled step)."""
    mu, logvar = model.apply(params, x, method="encode")
    z, eps = draw_latents(mu, logvar, keys, k)
    log_q = posterior_log_prob(eps, logvar)
    fixed_z, fixed = lax.stop_gradient(z), lax.stop_gradient(params)
    for_theta = _decode_log_prob(params, x, fixed_z, model=model, cfg=cfg) + prior_log_prob(params, fixed_z, model) \
        - lax.stop_gradient(log_q)
    log_q = path_posterior_log_prob(z, eps, logvar) if path_only else log_q
    for_phi = _decode_log_prob(fixed, x, z, model=model, cfg=cfg) + prior_log_prob(fixed, z, model) - log_q
    return for_theta, for_phi


def _surrogate_loss(value, for_theta, theta_weights, for_phi, phi_weights):
    """A loss whose value is `value` and whose gradient is that of -mean_B sum_j (a_j lw_j + b_j lw'_j), the
    weights a (theta's) and b (phi's) [B, k] held fixed."""
    surrogate = -jnp.mean(jnp.sum(lax.stop_gradient(theta_weights) * for_theta
                                  + lax.stop_gradient(phi_weights) * for_phi, axis=1))
    return lax.stop_gradient(value) + surrogate - lax.stop_gradient(surrogate)


def _groups(log_w, m: int):
    """log w [B, m k] as m groups of k draws [B, m, k] (draw j of an example in group j // k)."""
    return log_w.reshape(log_w.shape[0], m, log_w.shape[1] // m)


def _multi_bound(log_w, m: int):
    """The mean over m groups of the IWAE bound of each group's k draws [B] (m = 1: the IWAE bound)."""
    g = _groups(log_w, m)
    return jnp.mean(jax.nn.logsumexp(g, axis=-1), axis=-1) - math.log(g.shape[-1])


def _group_weights(log_w, m: int, power: int = 1):
    """d(mean of the groups' IWAE bounds) / d log w [B, m k]: each group's normalised weights / m, or, power 2, their
    squares / m (DReG's weights for the encoder)."""
    w = jax.nn.softmax(_groups(log_w, m), axis=-1) ** power / m
    return w.reshape(log_w.shape)


def _ess(log_w):
    """The effective sample size 1 / sum_j w_j^2 of the normalised weights [B, k], averaged over the batch."""
    w = jax.nn.softmax(log_w, axis=1)
    return jnp.mean(1.0 / jnp.sum(w**2, axis=1))


def iwae(params, x, keys, *, model, cfg):
    """The negative importance-weighted bound (Burda et al. 2016) with cfg.k samples per example.

    cfg.estimator = 'dreg': the encoder's gradient is the doubly reparameterised one (Tucker et al. 2019, "Doubly
    Reparameterized Gradient Estimators for Monte Carlo Objectives"), sum_j w_j^2 d log w_j / d z_j dz_j / d phi with
    w the normalised weights: unbiased for the same gradient, without the score term whose noise grows with k (the
    encoder's signal-to-noise ratio falls as k grows under the standard estimator: Rainforth et al. 2018). The
    decoder's gradient and the loss's value are the standard ones."""
    if estimator(cfg) == "dreg":
        return _miwae_dreg(params, x, keys, model=model, cfg=cfg, m=1, name="iwae_bound")
    log_w = log_importance_weights(params, x, keys, model=model, cfg=cfg, k=cfg.k)
    bound = jax.nn.logsumexp(log_w, axis=1) - math.log(cfg.k)
    loss = -jnp.mean(bound)
    # The effective sample size of the normalised weights says how much the k samples help.
    return loss, {"loss": loss, "iwae_bound": -loss, "ess": _ess(log_w)}


def _miwae_dreg(params, x, keys, *, model, cfg, m: int, name: str):
    for_theta, for_phi = _split_log_weights(params, x, keys, model=model, cfg=cfg, k=m * cfg.k, path_only=True)
    log_w = lax.stop_gradient(for_theta)
    bound = jnp.mean(_multi_bound(log_w, m))
    loss = _surrogate_loss(-bound, for_theta, _group_weights(log_w, m), for_phi, _group_weights(log_w, m, 2))
    extra = {"iwae_bound": jnp.mean(_multi_bound(log_w, 1))} if m > 1 else {}
    return loss, {"loss": loss, name: bound, **extra, "ess": _ess(_groups(log_w, m).reshape(-1, cfg.k))}


def bound_groups(cfg) -> int:
    """cfg.m, checked: miwae's and piwae's number of IWAE bounds (1 when the block has no `m`)."""
    m = cfg.get("m", 1)
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"objective.m must be an int >= 1 (miwae's and piwae's independent IWAE bounds of "
                         f"objective.k draws each), got {m!r}")
    return m


def elbo_weight(cfg) -> float:
    """cfg.elbo_weight, checked: ciwae's weight of the ELBO, in [0, 1] (0.5 when the block has none)."""
    beta = cfg.get("elbo_weight", 0.5)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"objective.elbo_weight must be in [0, 1] (ciwae's weight of the ELBO against the IWAE bound: "
                         f"1 is the ELBO, 0 the IWAE bound), got {beta}")
    return beta


STL_NEEDS_MC = ("objective.estimator='dreg' with elbo drops the score term of the Monte Carlo KL (sticking the "
                "landing); the closed-form KL has none: set --config.objective.kl=mc")


def miwae(params, x, keys, *, model, cfg):
    """The negative MIWAE bound (Rainforth et al. 2018, "Tighter Variational Bounds are Not Necessarily Better"): the
    mean of cfg.m independent IWAE bounds of cfg.k draws each, m k draws per example. m = 1 is `iwae`, k = 1 the ELBO
    of m draws (Monte Carlo KL). At a fixed m k, a larger m gives the encoder a less noisy gradient and a looser
    bound. cfg.estimator = 'dreg' as for `iwae`, within each group. Logs `miwae_bound`, `iwae_bound` (the IWAE bound of
    all m k draws, which the same draws give) and `ess` (per group of k)."""
    m = bound_groups(cfg)
    if estimator(cfg) == "dreg":
        return _miwae_dreg(params, x, keys, model=model, cfg=cfg, m=m, name="miwae_bound")
    log_w = log_importance_weights(params, x, keys, model=model, cfg=cfg, k=m * cfg.k)
    bound = jnp.mean(_multi_bound(log_w, m))
    loss = -bound
    return loss, {"loss": loss, "miwae_bound": bound, "iwae_bound": jnp.mean(_multi_bound(log_w, 1)),
                  "ess": _ess(_groups(log_w, m).reshape(-1, cfg.k))}


def ciwae(params, x, keys, *, model, cfg):
    """The negative CIWAE bound (Rainforth et al. 2018): beta ELBO + (1 - beta) IWAE over the same cfg.k draws, beta
    = cfg.elbo_weight (1: the ELBO with a Monte Carlo KL, 0: `iwae`). cfg.estimator = 'dreg': the encoder's gradient
    is beta times the ELBO's path derivative (sticking the landing) plus 1 - beta times IWAE's doubly reparameterised
    one, each unbiased for its term's. Logs `ciwae_bound`, `elbo` (the mean log weight) and `iwae_bound`."""
    beta, k, dreg = elbo_weight(cfg), cfg.k, estimator(cfg) == "dreg"
    if dreg:
        for_theta, for_phi = _split_log_weights(params, x, keys, model=model, cfg=cfg, k=k, path_only=True)
        log_w = lax.stop_gradient(for_theta)
    else:
        log_w = log_importance_weights(params, x, keys, model=model, cfg=cfg, k=k)
    elbo_value, iwae_value = jnp.mean(log_w), jnp.mean(_multi_bound(log_w, 1))
    bound = beta * elbo_value + (1.0 - beta) * iwae_value
    if dreg:
        uniform = jnp.full_like(log_w, 1.0 / k)
        loss = _surrogate_loss(-bound, for_theta, beta * uniform + (1.0 - beta) * _group_weights(log_w, 1),
                               for_phi, beta * uniform + (1.0 - beta) * _group_weights(log_w, 1, 2))
    else:
        loss = -bound
    return loss, {"loss": loss, "ciwae_bound": bound, "elbo": elbo_value, "iwae_bound": iwae_value,
                  "ess": _ess(log_w)}


def piwae(params, x, keys, *, model, cfg):
    """The PIWAE objective (Rainforth et al. 2018): the generative model (decoder and prior) trained on the IWAE bound
    of all cfg.m cfg.k draws, the encoder on the MIWAE bound of the same draws in cfg.m groups of cfg.k, so that the
    decoder gets the tighter bound and the encoder the less noisy gradient. The loss's value is the negative IWAE
    bound; its gradient is each part's. cfg.estimator = 'dreg': the encoder's MIWAE gradient doubly reparameterised.
    A VampPrior's pseudo-inputs, and the encoder as they pass through it, are the generative model's. Logs
    `iwae_bound` and `miwae_bound`. The decoder runs twice under differentiation (once per part's gradient)."""
    m = bound_groups(cfg)
    dreg = estimator(cfg) == "dreg"
    for_theta, for_phi = _split_log_weights(params, x, keys, model=model, cfg=cfg, k=m * cfg.k, path_only=dreg)
    log_w = lax.stop_gradient(for_theta)
    iwae_value, miwae_value = jnp.mean(_multi_bound(log_w, 1)), jnp.mean(_multi_bound(log_w, m))
    loss = _surrogate_loss(-iwae_value, for_theta, _group_weights(log_w, 1), for_phi,
                           _group_weights(log_w, m, 2 if dreg else 1))
    return loss, {"loss": loss, "iwae_bound": iwae_value, "miwae_bound": miwae_value,
                  "ess": _ess(_groups(log_w, m).reshape(-1, cfg.k))}


def beta_tcvae(params, x, keys, *, model, cfg, dataset_size: int):
    """The negative beta-TCVAE objective (Chen et al. 2018, "Isolating Sources of Disentanglement in VAEs"): the
    reconstruction term and the KL's three parts, each weighted,
    -E log p(x|z) + cfg.mi_weight * I(x; z) + cfg.beta * TC(z) + cfg.dim_kl_weight * sum_d KL(q(z_d) || p(z_d)),
    with one z ~ q(z|x) per example. With all three weights 1 it is the negative ELBO (its Monte Carlo KL).

    The aggregate posterior q(z) and its marginals q(z_d) are estimated from the M posteriors of the global batch,
    N the training set's size (`dataset_size`, which the trainer passes), by cfg.tc_estimator:
    - 'mws', minibatch weighted sampling (the paper's eq. 7): log q(z_i) ~ logsumexp_j log q(z_i | x_j) - log(N M);
    - 'mss', stratified sampling after the paper's appendix C.2: z_i's own posterior weighted 1/N and the other M - 1
      alike, (N - 1) / (N (M - 1)) each, weights that sum to 1: the batch stands for the rest of the data. Unbiased,
      and exactly q(z) at M = N; needs M >= 2. The authors' weights give one of the others (N - M + 1) / (N (M - 1))
      and the rest 1 / (M - 1) (their released code sets the wrong entries: rtqichen/beta-tcvae pull request 1);
      the two differ by O(M / N), so little at N >> M, and its logged terms need not match other libraries' 'mss'.
    The batch's posteriors are gathered from every device (lax.all_gather over the 'data' axis), so the estimate is
    the global batch's on any device count; the function therefore runs inside the train step's shard_map (or another
    context that binds that axis).

    Logged: the three parts (`mi`, `tc`, `dim_kl`, unweighted: their sum is the batch's Monte Carlo KL), `elbo` and
    `kl` with the analytic KL (as the `elbo` objective logs them), `rec_nll`.
    """
    check_normal_prior(model,
                       "objective.name='beta_tcvae' (its dimension-wise KL to N(0, 1))", OWN_PRIOR_OBJECTIVES)
    mu, logvar = model.apply(params, x, method="encode")
    z, eps = draw_latents(mu, logvar, keys, 1)
    rec = _decode_log_prob(params, x, z, model=model, cfg=cfg)[:, 0]  # [B]
    z, eps = z[:, 0], eps[:, 0]
    mu_all = lax.all_gather(mu, AXIS, axis=0, tiled=True)  # [M, D], the global batch's
    logvar_all = lax.all_gather(logvar, AXIS, axis=0, tiled=True)
    # log q(z_id | x_j) for this device's z_i against every posterior j of the global batch: [B, M, D].
    log_q = -0.5 * ((z[:, None] - mu_all[None]) ** 2 * jnp.exp(-logvar_all[None]) + logvar_all[None] + LOG_2PI)
    log_w = _tc_log_weights(cfg.get("tc_estimator", "mws"), z.shape[0], mu_all.shape[0], dataset_size)  # [B, M]
    log_qz = jax.nn.logsumexp(jnp.sum(log_q, axis=-1) + log_w, axis=1)  # [B]
    log_prod_qzd = jnp.sum(jax.nn.logsumexp(log_q + log_w[..., None], axis=1), axis=-1)  # [B]
    log_qzx = posterior_log_prob(eps[:, None], logvar)[:, 0]  # [B]
    mi = jnp.mean(log_qzx - log_qz)
    tc = jnp.mean(log_qz - log_prod_qzd)
    dim_kl = jnp.mean(log_prod_qzd - std_normal_log_prob(z))
    loss = -jnp.mean(rec) + cfg.mi_weight * mi + cfg.beta * tc + cfg.dim_kl_weight * dim_kl
    kl = gaussian_kl(mu, logvar)
    return loss, {"loss": loss, "elbo": jnp.mean(rec - kl), "rec_nll": -jnp.mean(rec), "kl": jnp.mean(kl),
                  "mi": mi, "tc": tc, "dim_kl": dim_kl}


TC_ESTIMATORS = ("mws", "mss")  # objective.tc_estimator


def _tc_log_weights(estimator: str, local: int, batch: int, dataset_size: int) -> jax.Array:
    """log w [local, batch]: the weight of posterior j of the global batch in this device's estimate of q(z_i)
    (`beta_tcvae`). This device's examples are rows axis_index * local ... of the gathered batch."""
    n, m = dataset_size, batch
    if estimator == "mws":
        return jnp.full((local, m), -math.log(n * m))
    if estimator != "mss":
        raise ValueError(f"unknown objective.tc_estimator {estimator!r}; choices: {', '.join(TC_ESTIMATORS)}")
    if m < 2:
        raise ValueError("objective.tc_estimator='mss' weighs each example's own posterior apart from the rest of the "
                         "batch, which needs a global batch of at least 2")
    own = lax.axis_index(AXIS) * local + jnp.arange(local)
    other = math.log(n - 1) - math.log(n) - math.log(m - 1) if n > 1 else -jnp.inf
    return jnp.where(jnp.arange(m)[None] == own[:, None], -math.log(n), other)


def mmd_kernel(name: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """The kernel matrix [len(a), len(b)] of latents a [N, D] and b [M, D]: 'imq', the inverse multiquadratic
    C / (C + |a - b|^2) of WAE (Tolstikhin et al. 2018) with C = 2 D (their choice for a N(0, I) prior); 'rbf',
    exp(-|a - b|^2 / (2 D)), the Gaussian kernel at the same scale."""
    d = a.shape[-1]
    sq = jnp.sum((a[:, None] - b[None]) ** 2, axis=-1)
    if name == "imq":
        return 2.0 * d / (2.0 * d + sq)
    if name == "rbf":
        return jnp.exp(-sq / (2.0 * d))
    raise ValueError(f"objective.mmd_kernel must be 'imq' or 'rbf', got {name!r}")


def mmd(name: str, x: jax.Array, y: jax.Array) -> jax.Array:
    """The unbiased estimate of MMD^2 between the samples x [N, D] and y [M, D] under the kernel `name`: the mean
    kernel within each set over distinct pairs, minus twice the mean across them (Gretton et al. 2012, eq. 3)."""
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = mmd_kernel(name, x, x), mmd_kernel(name, y, y), mmd_kernel(name, x, y)
    within_x = (jnp.sum(kxx) - jnp.trace(kxx)) / (n * (n - 1))
    within_y = (jnp.sum(kyy) - jnp.trace(kyy)) / (m * (m - 1))
    return within_x + within_y - 2.0 * jnp.mean(kxy)


def info_vae(params, x, keys, *, model, cfg):
    """The negative InfoVAE objective (Zhao et al. 2019) with the MMD divergence:
    -E log p(x|z) + cfg.beta * KL(q(z|x) || p(z)) + cfg.mmd_weight * MMD^2(q(z), p(z)), one z ~ q(z|x) per example.

    Zhao et al.'s alpha and lambda are beta = 1 - alpha and mmd_weight = alpha + lambda - 1; beta = 0 is their MMD-VAE
    (alpha = 1), and with the MMD alone on a deterministic encoder it is WAE-MMD's penalty (Tolstikhin et al. 2018).
    MMD^2 (`mmd`, kernel cfg.mmd_kernel) compares the posterior draws of the global batch with as many draws from
    the prior N(0, I), each example's from its own key: both sets are gathered from every device (lax.all_gather over
    the 'data' axis), so the estimate is the global batch's on any device count, and the function runs inside the
    train step's shard_map (or another context that binds that axis). Logged: `mmd` beside `elbo`, `kl` (analytic)
    and `rec_nll`."""
    check_normal_prior(model,
                       "objective.name='info_vae' (its MMD against draws from N(0, I))", OWN_PRIOR_OBJECTIVES)
    mu, logvar = model.apply(params, x, method="encode")
    z, _ = draw_latents(mu, logvar, keys, 1)
    rec = _decode_log_prob(params, x, z, model=model, cfg=cfg)[:, 0]  # [B]
    prior = jax.vmap(lambda key: jax.random.normal(jax.random.fold_in(key, 1), (mu.shape[-1],), mu.dtype))(keys)
    q_all = lax.all_gather(z[:, 0], AXIS, axis=0, tiled=True)  # [M, D], the global batch's
    p_all = lax.all_gather(prior, AXIS, axis=0, tiled=True)
    divergence = mmd(cfg.mmd_kernel, q_all, p_all)
    kl = gaussian_kl(mu, logvar)
    loss = -jnp.mean(rec) + cfg.beta * jnp.mean(kl) + cfg.mmd_weight * divergence
    return loss, {"loss": loss, "elbo": jnp.mean(rec - kl), "rec_nll": -jnp.mean(rec), "kl": jnp.mean(kl),
                  "mmd": divergence}


def capacity_vae(params, x, keys, *, model, cfg, step):
    """The negative ELBO with a controlled KL capacity (Burgess et al. 2018, "Understanding disentangling in
    beta-VAE"): -E log p(x|z) + cfg.beta * |KL - C|, KL the analytic KL averaged over the global batch and
    C = cfg.capacity * min(1, step / cfg.capacity_steps) nats, raised linearly from 0 over training so that the code
    may carry more information step by step; beta (their gamma) holds the KL at C. One z ~ q(z|x) per example.

    The batch's KL is gathered from every device (lax.all_gather over the 'data' axis): |mean KL - C| is the global
    batch's on any device count, and the function runs inside the train step's shard_map (or another context that
    binds that axis). Logged: `capacity` (C) beside `elbo`, `kl` and `rec_nll`."""
    check_normal_prior(model,
                       "objective.name='capacity_vae' (its closed-form KL to N(0, I))", OWN_PRIOR_OBJECTIVES)
    mu, logvar = model.apply(params, x, method="encode")
    z, _ = draw_latents(mu, logvar, keys, 1)
    rec = _decode_log_prob(params, x, z, model=model, cfg=cfg)[:, 0]  # [B]
    kl = gaussian_kl(mu, logvar)
    kl_global = jnp.mean(lax.all_gather(kl, AXIS, axis=0, tiled=True))
    ramp = jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / max(cfg.capacity_steps, 1))
    capacity = cfg.capacity * ramp
    loss = -jnp.mean(rec) + cfg.beta * jnp.abs(kl_global - capacity)
    return loss, {"loss": loss, "elbo": jnp.mean(rec - kl), "rec_nll": -jnp.mean(rec), "kl": jnp.mean(kl),
                  "capacity": capacity}


def chunk_logsumexp(params, x, keys, c, *, model, cfg, chunk: int, valid, pieces: int = 1) -> jax.Array:
    """logsumexp of the log importance weights of chunk `c` [B]: draws c * chunk ... c * chunk + chunk - 1, of which
    the first `valid` count (the last chunk of k samples may be partial). Draw j of an example comes from
    fold_in(its key, j), so the estimate does not depend on the chunk size.

    pieces (dividing chunk): the chunk's draws decoded `chunk // pieces` per example at a time, in a loop
    (lax.map), x encoded once: on XLA:CPU a few hundred decodes at once run ~2.5x faster per decode than ten thousand
    (`evaluation.vae.decode_pieces`). The same draws; the sum of their weights rounds differently."""
    posterior = model.apply(params, x, method="encode")

    def piece(p, size, first):
        draws = p * size + jnp.arange(size)
        ck = jax.vmap(lambda key: jax.vmap(lambda j: jax.random.fold_in(key, j))(draws))(keys)  # [B, size]
        lw = log_importance_weights(params, x, ck, model=model, cfg=cfg, k=size, posterior=posterior)
        lw = jnp.where(first + jnp.arange(size)[None] < valid, lw, -jnp.inf)
        return jax.nn.logsumexp(lw, axis=1)

    if pieces == 1:
        return piece(c, chunk, 0)
    size = chunk // pieces
    lse = jax.lax.map(lambda i: piece(c * pieces + i, size, i * size), jnp.arange(pieces))  # [pieces, B]
    return jax.nn.logsumexp(lse, axis=0)


def importance_nll(params, x, keys, *, model, cfg, k: int, chunk: int) -> jax.Array:
    """Per-example NLL estimate -log (1/k sum_i w_i) in nats [B], k importance samples drawn `chunk` at a time.

    The estimate is the IWAE bound with k samples: in expectation an upper bound on -log p(x) (Jensen; a single
    draw can fall below), tightening as k grows. The
    chunks are a Python loop (XLA:CPU runs convolutions inside a rolled loop many times slower); for large k
    call `chunk_logsumexp` from the host per chunk, as jaxgen.evaluation does.
    """
    chunk = min(chunk, k)
    acc = None
    for c in range(-(-k // chunk)):
        lse = chunk_logsumexp(params, x, keys, c, model=model, cfg=cfg, chunk=chunk, valid=min(chunk, k - c * chunk))
        acc = lse if acc is None else jnp.logaddexp(acc, lse)
    return -(acc - math.log(k))
