"""The GAN train step: D updates and a G update, module-level pure functions written per device.

A train step is `d_steps` calls of `d_update` then one `g_update`, over the two parameter pytrees and the two optax
states of the GAN state (jaxgen.training.state). Each runs on one device's share of the global batch and averages
its gradients over the 'data' axis with `lax.pmean`; BatchNorm inside G and D synchronises its batch statistics over
the same axis, and the loss sees D's outputs gathered over it (`on_global_batch`). Random draws come from
per-example keys (the example's position in the global batch folded into the step's key), so a step draws the same
numbers on any device count and after a resume.

By default G's forward pass is done once per step: the last D update's fakes and their VJP are kept and the G
update pulls D's gradient back through them (as PyTorch's DCGAN reuses `fake` for both updates), so the G update
costs one D forward and backward plus G's backward. With `g_batch` > 0 the G update draws `g_batch` fresh
latents instead (the official SNGAN code: 128 for a D batch of 64) and pays one more G forward.

A class-conditional GAN (num_classes > 0) calls G(z, labels) and D(x, labels). A D update's fakes take the labels of
its reals, so real and fake batches hold the same classes (the data's class frequencies), and a regularizer's
`d_fn` scores its inputs (reals, fakes, or their interpolations) with those labels; the G update's own fakes
(g_batch > 0) take the labels of training examples drawn at random.
"""

from __future__ import annotations

import functools

import jax
import jax.extend.core as jex_core
import jax.numpy as jnp
import optax
from jax import lax

from jaxgen import registry
from jaxgen.data import augment
from jaxgen.data import device as dev
from jaxgen.models.gan import apply_model, apply_with_class_logits
from jaxgen.objectives import gan as gan_obj
from jaxgen.parallel import AXIS
from jaxgen.training import dispatch
from jaxgen.training import state as state_lib
from jaxgen.training.state import DATA_STREAM, STEP_STREAM

# Per-example key streams within a step (_Z_G: the G update's own latents, when it draws them; _FLIP: the reals'
# mirror draws with random_flip; _Y_G: the labels of the G update's own fakes, class-conditional).
_Z, _AUG_REAL, _AUG_FAKE, _AUG_G, _REG, _Z_G, _FLIP, _Y_G = range(8)


def _generate(generator, g_vars, z, labels, params):
    """G(z) (G(z, labels) with labels) in train mode with `params` (differentiated) and G's other collections:
    (images, new variables)."""
    return apply_model(generator, {**g_vars, "params": params}, z, True, labels)


def _lazy(cond_on, fn):
    """fn() when cond_on (a traced bool) else zeros of the same structure, without computing fn."""
    fn = jax.jit(fn)  # the zeros' shapes and the branch from one trace of it (R1's double backward), not two
    zeros = lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn))
    return lax.cond(cond_on, fn, zeros)


def on_global_batch(loss_fn):
    """`loss_fn` called on D's outputs over the whole global batch (gathered over the 'data' axis, in the order of
    the global batch) on every device, so that a loss whose terms depend on the batch (a relativistic loss's mean
    of D's outputs on the fakes) is the same on any device count. The gradient stays that of one loss on the global
    batch: all_gather's transpose sums the devices' identical cotangents (n x each device's part) and the
    gradients' pmean divides by n again."""

    def loss(d_real, d_fake):
        gather = lambda v: lax.all_gather(v, AXIS, axis=0, tiled=True)
        return loss_fn(gather(d_real), gather(d_fake))

    return loss


def d_update(state: dict, real, fake, keys, it, labels=None, *, discriminator, d_tx, loss_fn, reg_fn,
             reg_weight: float, reg_interval: int, augment_policy: str, reg_through_augment: bool = False,
             augment_p=None, lecam: tuple[float, float] | None = None, ac_weight: float = 0.0):
    """One D update on reals [B, H, W, C] and (constant) fakes, both in [-1, 1], both of the classes `labels` int
    [B] when conditional (None: unconditional). Returns (state, d_real, metrics).

    `it` counts D updates over the run (it selects the lazy regularizer's steps); d_real are D's outputs on the
    reals (for the G update's loss call). With an augmentation policy the regularizer sees the augmented images D
    sees (DiffAugment's R1), or with `reg_through_augment` the clean ones and D after their augmentation (the same
    draw), so that its input gradient goes back through the augmentation (StyleGAN2-ADA's R1). augment_p: each
    augmentation's probability (None: always). lecam = (weight, decay): LeCam regularization (gan_obj.lecam) with
    the state's moving averages 'lecam', updated with this update's outputs first (`lecam_anchors`), as the
    authors' code does. ac_weight > 0: an auxiliary-classifier D (ACGAN, Odena et al. 2017): `ac_weight` times the
    cross-entropy of its class logits against `labels`, on the reals and on the fakes, is added to D's loss
    (`ac_terms`).
    """
    real_aug = augment.per_example(augment_policy, dev.substream(keys, _AUG_REAL), real, augment_p)
    fake_aug = augment.per_example(augment_policy, dev.substream(keys, _AUG_FAKE), fake, augment_p)

    def loss(params):
        variables = {**state["d"], "params": params}
        if ac_weight:
            d_real, variables, logits_real = apply_with_class_logits(discriminator, variables, real_aug, True, labels)
            d_fake, variables, logits_fake = apply_with_class_logits(discriminator, variables, fake_aug, True, labels)
        else:
            d_real, variables = apply_model(discriminator, variables, real_aug, True, labels)
            d_fake, variables = apply_model(discriminator, variables, fake_aug, True, labels)
        d_loss, _, metrics = loss_fn(d_real, d_fake)
        metrics = {"d_loss": d_loss, "d_real": jnp.mean(d_real), "d_fake": jnp.mean(d_fake), **metrics}
        total = d_loss
        if ac_weight:
            ac = ac_terms(logits_real, labels, "ac_real") | ac_terms(logits_fake, labels, "ac_fake")
            total = total + ac_weight * (ac["ac_real"] + ac["ac_fake"])
            metrics = {**metrics, **ac}
        if reg_fn is not None:
            def d_fn(x):  # a conditional D scores x with the reals' labels
                if labels is not None:
                    gan_obj.check_labelled_batch(labels.shape[0], x.shape[0])
                return apply_model(discriminator, variables, x, True, labels)[0]

            reg_args, outputs = (d_fn, real_aug, fake_aug), {"d_real": d_real, "d_fake": d_fake}
            if reg_through_augment and augment_policy:
                real_keys = dev.substream(keys, _AUG_REAL)

                def d_fn_through(x):  # D after the reals' augmentation draws: example i with real i's draw
                    gan_obj.check_through_augment_batch(real.shape[0], x.shape[0])
                    return d_fn(augment.per_example(augment_policy, real_keys, x, augment_p))

                reg_args, outputs = (d_fn_through, real, fake), {}  # D saw other images than these
            # D's outputs on the images it was given, to a regularizer that takes them (gan_obj: saves a D forward)
            outputs = {k: v for k, v in outputs.items() if registry.accepts(reg_fn, k, positional=4)}
            penalty = lambda: reg_fn(*reg_args, dev.substream(keys, _REG), **outputs)
            lazy = {}
            if reg_interval > 1:
                value, reg_metrics = _lazy(it % reg_interval == 0, penalty)
                lazy = {"reg_ran": (it % reg_interval == 0).astype(jnp.float32)}  # weighs them in the means
            else:
                value, reg_metrics = penalty()
            total = total + reg_weight * reg_interval * value
            metrics = {**metrics, "reg": value, **reg_metrics, **lazy}
        averages = state.get("lecam")
        if lecam is not None:  # the anchors from the whole global batch's means, constants for the gradient
            weight, decay = lecam
            means = lax.pmean(lax.stop_gradient(jnp.stack([jnp.mean(d_real), jnp.mean(d_fake)])), AXIS)
            averages, anchor_real, anchor_fake = lecam_anchors(averages, means[0], means[1], decay)
            value = gan_obj.lecam(d_real, d_fake, anchor_real, anchor_fake)
            total = total + weight * value
            metrics = {**metrics, "lecam": value, "lecam_real": anchor_real, "lecam_fake": anchor_fake}
        return total, (variables, d_real, metrics, averages)

    grad_fn = jax.value_and_grad(loss, has_aux=True)
    (_, (variables, d_real, metrics, averages)), grads = grad_fn(state["d"]["params"])
    grads = lax.pmean(grads, AXIS)
    metrics = lax.pmean(metrics, AXIS)
    stats = lax.pmean({k: v for k, v in variables.items() if k != "params"}, AXIS)  # equal already with sync BN
    updates, d_opt = d_tx.update(grads, state["d_opt"], state["d"]["params"])
    params = optax.apply_updates(state["d"]["params"], updates)
    metrics["d_grad_norm"] = optax.tree.norm(grads)
    state = {**state, "d": {**stats, "params": params}, "d_opt": d_opt}
    if lecam is not None:
        state["lecam"] = averages
    return state, d_real, metrics


def ac_terms(logits, labels, name: str) -> dict:
    """{name: the mean cross-entropy of class logits [B, K] against labels int [B], name + '_acc': the fraction
    classified right}: ACGAN's auxiliary classifier terms."""
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
    return {name: ce, f"{name}_acc": jnp.mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32))}


def lecam_anchors(averages: dict, mean_real, mean_fake, decay: float) -> tuple[dict, jax.Array, jax.Array]:
    """LeCam's moving averages {'real', 'fake', 'norm'} after a D update whose outputs had the means `mean_real` and
    `mean_fake` over the global batch, and the anchors (a_R, a_F) they give: each average divided by the sum of its
    weights 'norm' (1 - decay^n after n updates; TensorFlow's zero_debias, as in the authors' StyleGAN2 code), so
    the first update's anchors are its own means, with no pull towards the zeros the averages start from."""
    new = {"real": decay * averages["real"] + (1.0 - decay) * mean_real,
           "fake": decay * averages["fake"] + (1.0 - decay) * mean_fake,
           "norm": decay * averages["norm"] + (1.0 - decay)}
    return new, new["real"] / new["norm"], new["fake"] / new["norm"]


def reads_d_real(loss_fn, batch: int) -> bool:
    """Whether `loss_fn`'s g_loss depends on d_real (a relativistic loss does; the built-in ones do not): found by
    tracing it once on [batch] inputs and following g_loss's dependencies back (a nested call counts as reading
    all of its inputs), so it costs nothing at run time."""
    closed = jax.make_jaxpr(lambda r, f: loss_fn(r, f)[1])(jnp.zeros(batch), jnp.zeros(batch))
    jaxpr = closed.jaxpr
    needed = {v for v in jaxpr.outvars if isinstance(v, jex_core.Var)}
    for eqn in reversed(jaxpr.eqns):
        if needed.intersection(eqn.outvars):
            needed.update(v for v in eqn.invars if isinstance(v, jex_core.Var))
    return jaxpr.invars[0] in needed


def g_update(state: dict, fake, g_vjp, d_real, keys, *, discriminator, g_tx, loss_fn, augment_policy: str,
             real=None, real_keys=None, labels=None, real_labels=None, augment_p=None, ac_weight: float = 0.0):
    """One G update through the fakes [B', H, W, C] that G made this step (`g_vjp` pulls back their gradient);
    `keys` are the fakes' per-example keys. B' is the D batch B when the fakes are the last D update's, or the
    G update's own batch; `real_keys` are the reals' keys (the last D update's; default `keys`). Conditional:
    `labels` are the fakes' classes [B'], `real_labels` the reals' [B] (default `labels`).

    d_real: D's outputs on the step's reals before D's update, used as a constant. With `real` (the reals
    [B, H, W, C], given when the loss's g_loss reads d_real, see `reads_d_real`) D is run on them again after
    its update, so that g_loss compares the updated D's outputs on reals and fakes. ac_weight > 0 (ACGAN): G's loss
    adds `ac_weight` times the cross-entropy of D's class logits on the fakes against the classes they were made of.
    """
    if real is not None:  # the last D update's augmentation of its reals
        reals_keys = dev.substream(keys if real_keys is None else real_keys, _AUG_REAL)
        x = augment.per_example(augment_policy, reals_keys, real, augment_p)
        d_real, _ = apply_model(discriminator, state["d"], x, True, labels if real_labels is None else real_labels)

    def loss(fake):
        x = augment.per_example(augment_policy, dev.substream(keys, _AUG_G), fake, augment_p)
        if ac_weight:  # D's statistics are not updated here
            d_fake, _, logits = apply_with_class_logits(discriminator, state["d"], x, True, labels)
        else:
            d_fake, _ = apply_model(discriminator, state["d"], x, True, labels)
        _, g_loss, _ = loss_fn(lax.stop_gradient(d_real), d_fake)
        extra = ac_terms(logits, labels, "ac_g") if ac_weight else {}
        total = g_loss + ac_weight * extra["ac_g"] if ac_weight else g_loss
        return total, (g_loss, d_fake, extra)

    (_, (g_loss, d_fake, extra)), d_fake_grad = jax.value_and_grad(loss, has_aux=True)(fake)
    (grads,) = g_vjp(d_fake_grad)
    grads = lax.pmean(grads, AXIS)
    metrics = lax.pmean({"g_loss": g_loss, "d_fake_after": jnp.mean(d_fake), **extra}, AXIS)
    updates, g_opt = g_tx.update(grads, state["g_opt"], state["g"]["params"])
    params = optax.apply_updates(state["g"]["params"], updates)
    metrics["g_grad_norm"] = optax.tree.norm(grads)
    return {**state, "g": {**state["g"], "params": params}, "g_opt": g_opt}, metrics


def gan_step(state: dict, data: dict, *, generator, discriminator, g_tx, d_tx, loss_fn, reg_fn, reg_weight: float,
             reg_interval: int, d_steps: int, batch: int, augment_policy: str, ema_half_life: float,
             ema_rampup: float, g_lr, d_lr, g_batch: int = 0, random_flip: bool = False,
             reg_through_augment: bool = False, lazy_metrics: tuple[str, ...] = (), num_classes: int = 0,
             augment_probability: float = 1.0, ada: tuple[float, int, float] | None = None,
             lecam: tuple[float, float] | None = None, topk: tuple[float, float] | None = None,
             ac_weight: float = 0.0):
    """One train step (d_steps D updates, then one G update) on one device's share of the global batch `batch`.

    g_batch: 0 = the G update goes through the last D update's `batch` fakes; > 0 = it draws `g_batch` (global)
    fresh latents of its own. random_flip: mirror each real with probability 1/2 (data.random_flip; the fakes are
    G's own, as with StyleGAN's --mirror).

    num_classes > 0: class-conditional (module docstring); data then also holds 'label', int32 [N].
    augment_probability: each augmentation's probability per example (1: always, DiffAugment's). ada = (target,
    interval, kimg): adaptive augmentation (StyleGAN2-ADA, Karras et al. 2020; the state then keeps 'ada', see
    `ada_update`): the probability is the state's, and moves so that the mean sign of D's outputs on the reals
    stays at `target`; its metrics 'augment_p' and 'd_real_sign'. lecam = (weight, decay): LeCam regularization
    (Tseng et al. 2021; `d_update`), its moving averages in the state's 'lecam', its metrics 'lecam' (the penalty)
    and the anchors 'lecam_real', 'lecam_fake'. topk = (gamma, nu): top-k training (Sinha et al. 2020): the G update
    learns from the `top_k_count` fakes of its global batch that D rates most real (gan_obj.top_k_fakes), logged as
    the fraction 'topk'. ac_weight > 0: ACGAN's auxiliary classifier terms (`ac_terms`) in both updates, logged as
    'ac_real', 'ac_fake', 'ac_g' and their accuracies.

    data: {'image': uint8 [N, H, W, C]}, the whole training split, replicated. Returns (state, metrics): D's
    metrics averaged over its updates, G's from its update, and 'finite' (0: nothing of this step was applied).
    G's EMA, when the state keeps one, has the half-life `ema_half_life` images, ramped up by `ema_rampup`
    (state.ema_rate). lazy_metrics: with reg_interval > 1, the metrics of the regularizer ('reg' and its own),
    averaged over the D updates that ran it, and 'reg_ran' counts those (the host's weights across steps).
    """
    old = state
    step = state["step"]
    # A user's loss or regularizer that takes `step` gets the train step (G updates so far).
    loss_fn, reg_fn = registry.with_step(loss_fn, step, positional=2), registry.with_step(reg_fn, step, positional=4)
    g_loss_fn, loss_fn = loss_fn, on_global_batch(loss_fn)
    n = data["image"].shape[0]
    pos = dev.local_positions(batch, AXIS)
    data_key = jax.random.fold_in(state["key"], DATA_STREAM)
    step_key = jax.random.fold_in(state["key"], STEP_STREAM)
    augment_p = state["ada"]["p"] if ada else (None if augment_probability >= 1 else augment_probability)
    d_kw = dict(discriminator=discriminator, d_tx=d_tx, loss_fn=loss_fn, reg_fn=reg_fn, reg_weight=reg_weight,
                reg_interval=reg_interval, augment_policy=augment_policy, reg_through_augment=reg_through_augment,
                augment_p=augment_p, lecam=lecam, ac_weight=ac_weight)
    latents = lambda keys: jax.vmap(lambda k: jax.random.normal(k, (generator.latent_dim,)))(keys)

    def d_iteration(state, it, keep_g_vjp: bool = False):
        """D update number `it` of the run, on its own batch and fresh fakes. keep_g_vjp: the last D update's fakes
        also serve the G update (g_batch 0): their VJP and G's new statistics come back too."""
        keys = dev.example_keys(jax.random.fold_in(step_key, it), pos)
        idx = dev.batch_indices(data_key, it, n, batch, pos)
        image = data["image"][idx]
        labels = data["label"][idx] if num_classes else None
        if random_flip:
            image = dev.random_flip(image, dev.substream(keys, _FLIP))
        real = dev.preprocess(image, None, "none") * 2.0 - 1.0
        make = functools.partial(_generate, generator, state["g"], latents(dev.substream(keys, _Z)), labels)
        if keep_g_vjp:
            fake, g_vjp, g_vars = jax.vjp(make, state["g"]["params"], has_aux=True)
        else:
            (fake, _), g_vjp, g_vars = make(state["g"]["params"]), None, None
        state, d_real, m = d_update(state, real, lax.stop_gradient(fake), keys, it, labels, **d_kw)
        m["d_lr"] = jnp.asarray(d_lr(it), jnp.float32)
        if ada:  # StyleGAN2-ADA's overfitting heuristic r_t: the mean sign of D's outputs on the (augmented) reals
            m["d_real_sign"] = lax.pmean(jnp.mean(jnp.sign(d_real)), AXIS)
        return state, m, (keys, labels, real, d_real), (fake, g_vjp, g_vars)

    # The D updates that keep no VJP are one function, traced and lowered once and called where needed; XLA inlines
    # the calls, so the compiled step is the same (configs/gan_cifar10.py:smoke: 2982 fusions either way). SNGAN's
    # 5 D updates were traced 5 times: its step's tracing and lowering took 5.5-8.5 CPU s on 2 cores (8 faked
    # devices), now 2.3-4.1.
    plain_d_iteration = jax.jit(d_iteration)
    d_metrics = []
    for i in range(d_steps):
        it = step * d_steps + i
        if g_batch or i < d_steps - 1:
            state, m, (keys, labels, real, d_real), _ = plain_d_iteration(state, it)
        else:
            state, m, (keys, labels, real, d_real), (fake, g_vjp, g_vars) = d_iteration(state, it, keep_g_vjp=True)
        d_metrics.append(m)
    d_keys, d_labels = keys, labels
    if g_batch:  # the G update's own latents: keys by position in its global batch, a stream of the last D update's
        keys = dev.example_keys(jax.random.fold_in(step_key, it), dev.local_positions(g_batch, AXIS))
        if num_classes:  # the classes of training examples drawn at random: the data's class frequencies
            draw = jax.vmap(lambda k: jax.random.randint(k, (), 0, n))(dev.substream(keys, _Y_G))
            labels = data["label"][draw]
        make = functools.partial(_generate, generator, state["g"], latents(dev.substream(keys, _Z_G)), labels)
        fake, g_vjp, g_vars = jax.vjp(make, state["g"]["params"], has_aux=True)
    g_stats = lax.pmean({k: v for k, v in g_vars.items() if k != "params"}, AXIS)
    state = {**state, "g": {**state["g"], **g_stats}}
    g_global = g_batch or batch
    if topk:
        k = top_k_count(step, g_global, batch * d_steps, n, *topk)
        g_loss_fn = on_global_batch(gan_obj.top_k_fakes(g_loss_fn, k))
    else:
        g_loss_fn = loss_fn
    state, g_metrics = g_update(state, fake, g_vjp, d_real, keys, discriminator=discriminator, g_tx=g_tx,
                                loss_fn=g_loss_fn, augment_policy=augment_policy,
                                real=real if reads_d_real(loss_fn, d_real.shape[0]) else None, real_keys=d_keys,
                                labels=labels, real_labels=d_labels, augment_p=augment_p, ac_weight=ac_weight)
    state["step"] = step + 1
    if "ema_g" in state:
        rate = state_lib.ema_rate(step, batch, ema_half_life, ema_rampup)
        ema_params = optax.incremental_update(state["g"]["params"], state["ema_g"]["params"], rate)
        state["ema_g"] = {**state["g"], "params": ema_params}  # statistics are copied, params averaged
    metrics = {**jax.tree.map(lambda *v: jnp.mean(jnp.stack(v)), *d_metrics), **g_metrics}
    if topk:
        metrics["topk"] = k.astype(jnp.float32) / g_global
    if ada:
        metrics["augment_p"] = augment_p
        state["ada"] = ada_update(state["ada"], metrics["d_real_sign"], step, batch, *ada)
    if "reg_ran" in d_metrics[0]:  # a lazy regularizer: its metrics are means over the D updates that ran it
        ran = jnp.stack([m["reg_ran"] for m in d_metrics])
        for name in lazy_metrics:
            values = jnp.stack([m[name] for m in d_metrics])
            metrics[name] = jnp.sum(values * ran) / jnp.maximum(jnp.sum(ran), 1.0)
        metrics["reg_ran"] = jnp.sum(ran)  # how many of this step's D updates ran it: the host's weights
    # The new params' norms: checked (finite gradients can still overflow an update) and logged.
    norms = {f"{net}_param_norm": optax.tree.norm(state[net]["params"]) for net in ("g", "d")}
    state, finite = dispatch.keep_if_finite(state, old, (metrics, norms))
    metrics.update(norms, g_lr=jnp.asarray(g_lr(step), jnp.float32), finite=finite.astype(jnp.float32), step=step)
    return state, metrics


def top_k_count(step, g_batch: int, reals_per_step: int, n: int, gamma: float, nu: float) -> jax.Array:
    """The number of fakes the G update of train step `step` learns from under top-k training: its global batch
    `g_batch`, decayed by `gamma` per pass over the `n` training examples (D reads `reals_per_step` reals per step,
    so pass e = step * reals_per_step // n), and at least nu * g_batch (Sinha et al. 2020's schedule:
    k = max(gamma^e B, nu B)). An int32 scalar in [1, g_batch]."""
    passes = jnp.floor(jnp.asarray(step, jnp.float32) * (reals_per_step / n))  # float: no int32 overflow
    decayed = jnp.floor(g_batch * jnp.power(jnp.float32(gamma), passes))
    k = jnp.maximum(decayed, jnp.ceil(jnp.float32(nu) * g_batch))
    return jnp.clip(k, 1, g_batch).astype(jnp.int32)


def ada_update(ada: dict, sign: jax.Array, step, batch: int, target: float, interval: int, kimg: float) -> dict:
    """The adaptive augmentation's state {'p', 'signs'} after train step `step`, whose D updates saw the mean sign
    `sign` of their outputs on the reals (StyleGAN2-ADA's r_t, Karras et al. 2020, sec. 3): the signs are summed, and
    after every `interval` steps p moves by sign(r_t - target) * batch * interval / (kimg * 1000), r_t their mean
    (the sum over the interval's steps / interval), so that p can cross from 0 to 1 in `kimg` thousand images;
    clipped to [0, 1]."""
    signs = ada["signs"] + sign
    due = (step + 1) % interval == 0
    moved = jnp.clip(ada["p"] + jnp.sign(signs / interval - target) * (batch * interval / (kimg * 1000.0)), 0.0, 1.0)
    return {"p": jnp.where(due, moved, ada["p"]), "signs": jnp.where(due, 0.0, signs)}


def compile_train(mesh, *, steps_per_dispatch: int, **step_kwargs):
    """The jitted, data-parallel GAN train function `(state, data) -> (state, metrics [steps_per_dispatch])` of
    `gan_step` with `step_kwargs`, state donated (jaxgen.training.dispatch)."""
    return dispatch.compile_train(mesh, functools.partial(gan_step, **step_kwargs), steps_per_dispatch)
