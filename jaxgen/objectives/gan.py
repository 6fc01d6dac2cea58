"""GAN losses and regularizers: plain functions a researcher can swap from the config.

A loss maps the discriminator's raw outputs to both players' losses:

    loss(d_real [B], d_fake [B]) -> (d_loss, g_loss, metrics)

d_real = D(x) on (augmented) reals, d_fake = D(G(z)) on (augmented) fakes, both float32 logits or critic scores
of the whole global batch (gathered from every device: a loss of batch statistics, such as a relativistic loss's
means, is the same on any device count); the losses are means over it.
In the D update the fakes are constants. In the G update d_real is a constant: when the G loss reads it (a
relativistic loss), it is the updated D's output on the step's (augmented) reals, found
once by tracing the loss. In the G update d_fake has the G update's own length when `train.g_batch_size` draws
fresh fakes for it (e.g. 128 beside 64 reals), so a loss reduces each side on its own. A user's loss is named
`loss.name='package.module:function'` with this signature.

A regularizer penalises D: its input gradient (R1, the gradient penalty) or its inconsistency under augmentation
(CR, bCR):

    reg(d_fn, real [B, H, W, C], fake [B, H, W, C], keys [B]) -> (penalty, metrics)

d_fn(x) -> [B] is D with its current parameters (differentiable in them and in x); keys has one PRNG key per
example. A regularizer that names keyword parameters `d_real` and/or `d_fake` gets D's outputs on `real` and `fake`
as the D loss computed them (differentiable; not with reg.through_augment, whose images D did not see as given),
which saves it a D forward (the consistency regularizers). A class-conditional D (model.num_classes > 0) scores x
with the reals' labels, which the fakes share: x must then hold B images (reals, fakes or their interpolations, not
both concatenated). With augmentation on, `real` and `fake` are the augmented images D saw, so R1 and the gradient
penalty are taken at D's augmented inputs (as DiffAugment's `ns_r1_DiffAugment`), and CR compares D on them with D
on a further augmentation of them (reg.cr_policy); `reg.through_augment=True` passes the un-augmented images
instead, with a d_fn that augments its input with the reals' draws, so that the penalty differentiates through the
augmentation (StyleGAN2-ADA's R1). The trainer adds reg.weight * penalty to D's loss (times reg.interval when the
regularizer runs lazily every reg.interval D steps). A user's regularizer is `reg.name='package.module:function'`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxgen import parallel, registry
from jaxgen.data import augment
from jaxgen.objectives import check_scalars


def minimax(d_real, d_fake):
    """The original, saturating game (Goodfellow et al. 2014): D maximises log D(x) + log(1 - D(G(z))), G
    minimises log(1 - D(G(z))). With logits l, log D = -softplus(-l) and log(1 - D) = -softplus(l)."""
    d_loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
    g_loss = -jnp.mean(jax.nn.softplus(d_fake))
    return d_loss, g_loss, _probabilities(d_real, d_fake)


def non_saturating(d_real, d_fake):
    """Goodfellow et al.'s non-saturating G loss, -log D(G(z)), with the minimax D loss (DCGAN's setup)."""
    d_loss = jnp.mean(jax.nn.softplus(-d_real)) + jnp.mean(jax.nn.softplus(d_fake))
    g_loss = jnp.mean(jax.nn.softplus(-d_fake))
    return d_loss, g_loss, _probabilities(d_real, d_fake)


def hinge(d_real, d_fake):
    """Hinge loss (Lim & Ye 2017; SNGAN, Miyato et al. 2018): D: E relu(1 - D(x)) + E relu(1 + D(G(z))),
    G: -E D(G(z))."""
    d_loss = jnp.mean(jax.nn.relu(1.0 - d_real)) + jnp.mean(jax.nn.relu(1.0 + d_fake))
    return d_loss, -jnp.mean(d_fake), {}


def wasserstein(d_real, d_fake):
    """WGAN (Arjovsky et al. 2017): the critic maximises E D(x) - E D(G(z)); G minimises -E D(G(z)).
    Needs a Lipschitz constraint: reg.name='gp' (WGAN-GP) or spectral norm."""
    d_loss = jnp.mean(d_fake) - jnp.mean(d_real)
    return d_loss, -jnp.mean(d_fake), {"wasserstein_estimate": -d_loss}


def least_squares(d_real, d_fake):
    """LSGAN (Mao et al. 2017) with targets a=0 (fake), b=1 (real), c=1 (G's target for fakes), each term 1/2."""
    d_loss = 0.5 * jnp.mean((d_real - 1.0) ** 2) + 0.5 * jnp.mean(d_fake**2)
    g_loss = 0.5 * jnp.mean((d_fake - 1.0) ** 2)
    return d_loss, g_loss, {}


def relativistic(d_real, d_fake):
    """The relativistic standard GAN, RSGAN (Jolicoeur-Martineau 2019, "The relativistic discriminator: a key element
    missing from standard GAN", ICLR): D scores how much more real a real looks than a fake, pair by pair,
    D: E softplus(-(D(x_i) - D(G(z_i)))); G the same with the roles swapped, E softplus(-(D(G(z_i)) - D(x_i))). Pairs
    example i of the reals with example i of the fakes, so it cannot take train.g_batch_size fresh fakes of another
    count."""
    if d_real.shape != d_fake.shape:  # one fake would broadcast against every real
        raise ValueError(f"loss.name='relativistic' pairs each real with a fake: D's outputs on {d_real.shape[0]} "
                         f"reals and {d_fake.shape[0]} fakes")
    gap = d_real - d_fake
    d_loss = jnp.mean(jax.nn.softplus(-gap))
    return d_loss, jnp.mean(jax.nn.softplus(gap)), {"rel_gap": jnp.mean(gap)}


def relativistic_average(d_real, d_fake):
    """The relativistic average standard GAN, RaSGAN (Jolicoeur-Martineau 2019): each output is taken relative to the
    other side's mean over the global batch, r = D(x) - E D(G(z)) and f = D(G(z)) - E D(x); D: -E log sigmoid(r)
    - E log(1 - sigmoid(f)), G the same with the roles swapped: -E log sigmoid(f) - E log(1 - sigmoid(r)). G's loss
    reads D on the reals too (an extra D forward per G update). Logs `rel_gap`, E D(x) - E D(G(z))."""
    r, f = d_real - jnp.mean(d_fake), d_fake - jnp.mean(d_real)
    d_loss = jnp.mean(jax.nn.softplus(-r)) + jnp.mean(jax.nn.softplus(f))
    g_loss = jnp.mean(jax.nn.softplus(-f)) + jnp.mean(jax.nn.softplus(r))
    return d_loss, g_loss, {"rel_gap": jnp.mean(d_real) - jnp.mean(d_fake)}


def relativistic_average_hinge(d_real, d_fake):
    """RaHingeGAN (Jolicoeur-Martineau 2019): the hinge loss on RaSGAN's relative outputs r and f (see
    `relativistic_average`); D: E relu(1 - r) + E relu(1 + f), G: E relu(1 - f) + E relu(1 + r)."""
    r, f = d_real - jnp.mean(d_fake), d_fake - jnp.mean(d_real)
    d_loss = jnp.mean(jax.nn.relu(1.0 - r)) + jnp.mean(jax.nn.relu(1.0 + f))
    g_loss = jnp.mean(jax.nn.relu(1.0 - f)) + jnp.mean(jax.nn.relu(1.0 + r))
    return d_loss, g_loss, {"rel_gap": jnp.mean(d_real) - jnp.mean(d_fake)}


def _probabilities(d_real, d_fake):
    return {"p_real": jnp.mean(jax.nn.sigmoid(d_real)), "p_fake": jnp.mean(jax.nn.sigmoid(d_fake))}


LOSSES: dict[str, Callable] = {
    "minimax": minimax,
    "non_saturating": non_saturating,
    "hinge": hinge,
    "wasserstein": wasserstein,
    "least_squares": least_squares,
    "relativistic": relativistic,
    "relativistic_average": relativistic_average,
    "relativistic_average_hinge": relativistic_average_hinge,
}


def _input_grad_norms(d_fn, x):
    """Per-example L2 norms [B] of d D(x_i) / d x_i (D's outputs summed: each depends on its own input only
    when D has no batch-coupled layers; with BatchNorm in train mode this is the usual approximation)."""
    g = jax.grad(lambda x: jnp.sum(d_fn(x)))(x)
    return jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32)), axis=tuple(range(1, g.ndim))) + 1e-12)


def r1(d_fn, real, fake, keys):
    """R1 (Mescheder et al. 2018): 1/2 E_x |grad_x D(x)|^2 on reals; reg.weight is the paper's gamma."""
    del fake, keys
    sq = jnp.square(_input_grad_norms(d_fn, real))
    return 0.5 * jnp.mean(sq), {"r1_grad_sq": jnp.mean(sq)}


def gradient_penalty(d_fn, real, fake, keys):
    """WGAN-GP (Gulrajani et al. 2017): E (|grad D(x_hat)| - 1)^2 at x_hat = e x + (1 - e) G(z), e ~ U(0, 1)
    per example; reg.weight is the paper's lambda (10)."""
    eps = jax.vmap(lambda k: jax.random.uniform(k, (1,) * (real.ndim - 1), real.dtype))(keys)
    x_hat = eps * real + (1.0 - eps) * jax.lax.stop_gradient(fake)
    norms = _input_grad_norms(d_fn, x_hat)
    return jnp.mean(jnp.square(norms - 1.0)), {"gp_grad_norm": jnp.mean(norms)}


def dragan(d_fn, real, fake, keys):
    """DRAGAN's penalty (Kodali et al. 2017, "On Convergence and Stability of GANs"): E (|grad D(x_hat)| - 1)^2 at
    x_hat = x + a * 0.5 * std(x) * u around the reals, u ~ U(0, 1) per pixel and a ~ U(0, 1) per example, std the
    standard deviation of every pixel of the global batch's reals (gathered over the devices, so 8 devices draw as 1
    does), as the authors' code and StudioGAN's DRA; reg.weight is their lambda (10). It keeps D's gradient near 1
    in a neighbourhood of the data, where WGAN-GP (`gp`) takes it between the data and G's samples."""
    del fake
    mean = jax.lax.pmean(jnp.mean(real), parallel.AXIS)
    std = jnp.sqrt(jnp.maximum(jax.lax.pmean(jnp.mean(jnp.square(real)), parallel.AXIS) - mean**2, 0.0))
    shape = (1,) * (real.ndim - 1)
    a = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 0), shape, real.dtype))(keys)
    u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, 1), real.shape[1:], real.dtype))(keys)
    norms = _input_grad_norms(d_fn, real + a * 0.5 * jax.lax.stop_gradient(std) * u)
    return jnp.mean(jnp.square(norms - 1.0)), {"dragan_grad_norm": jnp.mean(norms)}


CR_POLICY = "flip,translation"  # without a config block; config.gan_config's reg.cr_policy is the same


def _consistency(d_fn, x, keys, stream: int, policy: str, d_x=None):
    """Per-example squared differences [B] between D's outputs on x (`d_x` where given) and on T(x), T the
    augmentations `policy` drawn per example from fold_in(keys, stream) (the same on any device count);
    differentiable in D's parameters through both."""
    tx = augment.per_example(policy, jax.vmap(lambda k: jax.random.fold_in(k, stream))(keys), x, field="reg.cr_policy")
    d_x = d_fn(x) if d_x is None else d_x
    return jnp.square(d_x.astype(jnp.float32) - d_fn(tx).astype(jnp.float32))


def consistency(d_fn, real, fake, keys, cfg=None, *, d_real=None):
    """Consistency regularization (CR; Zhang, Zhang, Odena and Lee 2020): E (D(x) - D(T(x)))^2 on the reals, T a
    random flip and translation (reg.cr_policy); reg.weight is the paper's lambda (10). d_real: D's outputs on
    `real` where the caller has them (the trainer passes its D loss's), else computed."""
    del fake
    policy = CR_POLICY if cfg is None else cfg.cr_policy
    sq = _consistency(d_fn, real, keys, 0, policy, d_real)
    return jnp.mean(sq), {"cr_real": jnp.mean(sq)}


def balanced_consistency(d_fn, real, fake, keys, cfg=None, *, d_real=None, d_fake=None):
    """Balanced consistency regularization (bCR; Zhao, Zhang, Chen, Singh and Zhang 2021): CR on the reals plus the
    same on the fakes, E (D(G(z)) - D(T(G(z))))^2, so that D is not consistent on reals alone (whose augmentations
    could then leak into G's samples). reg.weight is their lambda_real = lambda_fake (10). d_real, d_fake: as
    `consistency`'s."""
    policy = CR_POLICY if cfg is None else cfg.cr_policy
    on_real = _consistency(d_fn, real, keys, 0, policy, d_real)
    on_fake = _consistency(d_fn, fake, keys, 1, policy, d_fake)
    return jnp.mean(on_real) + jnp.mean(on_fake), {"cr_real": jnp.mean(on_real), "cr_fake": jnp.mean(on_fake)}


REGULARIZERS: dict[str, Callable | None] = {"none": None, "r1": r1, "gp": gradient_penalty, "dragan": dragan,
                                            "cr": consistency, "bcr": balanced_consistency}


def lecam(d_real, d_fake, anchor_real, anchor_fake):
    """LeCam regularization (Tseng et al. 2021, "Regularizing Generative Adversarial Networks under Limited Data"):
    E relu(D(x) - a_F)^2 + E relu(a_R - D(G(z)))^2, where a_R and a_F are moving averages of D's mean outputs on reals
    and fakes (constants here; the train step keeps them, `gan_step.lecam_anchors`). It pulls D's outputs on the
    reals down towards its past outputs on the fakes and those on the fakes up towards the reals', so D cannot push
    them apart for ever on a small training set. One-sided (relu), as the authors' code (google/lecam-gan, BigGAN and
    StyleGAN2 alike); their paper's eq. 3 writes the squares without it. Added to D's loss, times reg.lecam_weight,
    beside reg.name's regularizer."""
    penalty = jnp.mean(jnp.square(jax.nn.relu(d_real - anchor_fake)))
    return penalty + jnp.mean(jnp.square(jax.nn.relu(anchor_real - d_fake)))


def top_k_fakes(loss_fn: Callable, k) -> Callable:
    """`loss_fn` whose G loss learns from the k fakes D rates most real alone (top-k training, Sinha et al. 2020:
    "zero out the gradient contributions from the elements of the batch that the critic scores as least realistic").

    The fakes outside the top k (by D's output, higher = more real, as for every built-in loss) pass D's outputs as
    constants; those inside pass them with their gradient scaled by B / (their count), so that a loss that is a mean
    over the fakes (every built-in one) gets the gradient of its mean over the kept fakes. The values, and so the
    logged losses, are those of the whole batch. k: an int or a traced int32 scalar (1 <= k <= B); fakes tied with
    the k-th are all kept. Call it on the global batch's outputs (the step gathers them first)."""

    def loss(d_real, d_fake):
        b = d_fake.shape[0]
        const = jax.lax.stop_gradient(d_fake)
        threshold = jnp.sort(const)[::-1][jnp.clip(k - 1, 0, b - 1)]
        keep = const >= threshold
        scale = b / jnp.sum(keep)
        return loss_fn(d_real, const + (d_fake - const) * jnp.where(keep, scale, 0.0))

    return loss


def get_loss(name: str, cfg=None) -> Callable:
    """The loss `name`; with `cfg` (the `loss` config block), bound as `cfg=` when the function takes it."""
    return registry.with_config(registry.resolve("GAN loss", name, LOSSES), cfg, positional=2)


def get_regularizer(name: str, cfg=None) -> Callable | None:
    """The regularizer `name` (None for 'none'); with `cfg` (the `reg` block), bound as for `get_loss`."""
    fn = registry.resolve("regularizer", name, REGULARIZERS)
    return None if fn is None else registry.with_config(fn, cfg, positional=4)


# Metrics the GAN step logs itself: a loss's or regularizer's metrics must not reuse these names.
STEP_METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "d_fake_after", "reg", "d_grad_norm", "g_grad_norm",
                "d_param_norm", "g_param_norm", "d_lr", "g_lr", "finite", "step", "reg_ran", "augment_p",
                "d_real_sign", "lecam", "lecam_real", "lecam_fake", "topk", "ac_real", "ac_real_acc", "ac_fake",
                "ac_fake_acc", "ac_g", "ac_g_acc")


def check_loss(loss_fn: Callable, name: str, batch: int = 4, g_batch: int = 0) -> None:
    """Checks, by tracing it once on [batch] inputs (no computation), that a loss returns
    (scalar d_loss, scalar g_loss, dict of scalar metrics) whose metric names are not the step's own; with g_batch,
    that it also takes d_real [batch] beside d_fake [g_batch] (the G update's call with train.g_batch_size)."""
    contract = "loss(d_real [B], d_fake [B][, *, cfg, step]) -> (d_loss, g_loss, metrics)"
    d = jax.ShapeDtypeStruct((batch,), jnp.float32)
    step = {"step": jnp.zeros((), jnp.int32)} if registry.accepts(loss_fn, "step", positional=2) else {}
    registry.check_call(f"loss.name={name!r}", loss_fn, contract, d, d, **step)
    loss_fn = registry.with_step(loss_fn, step.get("step"), positional=2)
    out = jax.eval_shape(loss_fn, d, d)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise ValueError(f"loss.name={name!r} returned {registry.describe(out)}; expected {contract}")
    check_scalars(f"loss.name={name!r}", {"d_loss": out[0], "g_loss": out[1]}, out[2], contract=contract,
                  reserved=STEP_METRICS, batch=batch)
    if g_batch and g_batch != batch:
        try:
            jax.eval_shape(loss_fn, d, jax.ShapeDtypeStruct((g_batch,), jnp.float32))
        except (TypeError, ValueError) as e:
            raise ValueError(f"loss.name={name!r} cannot take d_real and d_fake of different lengths (train.batch_size="
                             f"{batch} reals beside train.g_batch_size={g_batch} fresh fakes in the G update; does it "
                             f"pair reals with fakes example by example?): set train.g_batch_size=0 or -1, or make "
                             f"the loss reduce each side on its own. The error: {e}") from e


def check_through_augment_batch(n_real: int, n_x: int) -> None:
    """With reg.through_augment, d_fn(x) augments example i of x with real i's draw: x must hold as many images."""
    if n_x != n_real:
        raise ValueError(f"reg.through_augment=True: the regularizer's d_fn(x) augments x with the reals' draws (one "
                         f"per real), so x must hold as many images as `real` ({n_real}); it got {n_x}. Call d_fn "
                         f"on reals and fakes separately, or set --config.reg.through_augment=False")


def check_labelled_batch(n_real: int, n_x: int) -> None:
    """A class-conditional D scores d_fn(x) with the reals' labels: x must hold as many images as the reals."""
    if n_x != n_real:
        raise ValueError(f"model.num_classes > 0: the regularizer's d_fn(x) scores x with the reals' labels (one per "
                         f"real; the fakes have the same ones), so x must hold as many images as `real` ({n_real}); "
                         f"it got {n_x}. Call d_fn on reals, fakes or their interpolations separately")


def check_regularizer(reg_fn: Callable | None, name: str, image_shape, batch: int = 2,
                      through_augment: bool = False, conditional: bool = False) -> tuple[str, ...]:
    """Checks, by tracing it once with a stand-in D (no computation), that a regularizer returns
    (scalar penalty, dict of scalar metrics) whose metric names are not the step's own; with `through_augment`
    (check_through_augment_batch) or `conditional` (check_labelled_batch), that it calls d_fn on batches of the
    reals' size. Returns its metrics' names."""
    if reg_fn is None:
        return ()
    contract = "reg(d_fn, real [B, H, W, C], fake [B, H, W, C], keys [B][, *, cfg, step]) -> (penalty, metrics)"
    x = jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)
    keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), batch))
    def d_fn(v):  # D's contract: [B, H, W, C] -> [B]
        if through_augment:
            check_through_augment_batch(batch, v.shape[0])
        if conditional:
            check_labelled_batch(batch, v.shape[0])
        return jnp.sum(v, axis=tuple(range(1, v.ndim)))

    step = {"step": jnp.zeros((), jnp.int32)} if registry.accepts(reg_fn, "step", positional=4) else {}
    outputs = {k: jax.ShapeDtypeStruct((batch,), jnp.float32) for k in ("d_real", "d_fake")
               if not through_augment and registry.accepts(reg_fn, k, positional=4)}  # as gan_step.d_update passes them
    registry.check_call(f"reg.name={name!r}", reg_fn, contract, d_fn, x, x, keys, **step, **outputs)
    reg_fn = registry.with_step(reg_fn, step.get("step"), positional=4)
    out = parallel.eval_shape_on_axis(lambda r, f, k, o: reg_fn(d_fn, r, f, k, **o), x, x, keys, outputs)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"reg.name={name!r} returned {registry.describe(out)}; expected {contract}")
    check_scalars(f"reg.name={name!r}", {"penalty": out[0]}, out[1], contract=contract, reserved=STEP_METRICS,
                  batch=batch)
    return tuple(out[1])
