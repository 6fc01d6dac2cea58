"""The optimizer from the `optim` config block: adam, adamw or a user's `package.module:function`; linear warmup
then constant, cosine or linear decay; global-norm clipping."""

from __future__ import annotations

import optax

from jaxgen import registry


def _adam(cfg, lr):
    return optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)


def _adamw(cfg, lr):
    return optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)


OPTIMIZERS = {"adam": _adam, "adamw": _adamw}
SCHEDULES = ("constant", "cosine", "linear")


def schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning rate per step: linear warmup over cfg.warmup_steps, then 'constant', 'cosine' or 'linear' (to
    lr * end_lr_ratio at the last step; SNGAN's official decay to 0) to the end."""
    warm = int(cfg.warmup_steps)
    if cfg.schedule == "constant":
        if not warm:
            return optax.constant_schedule(cfg.lr)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, cfg.lr, warm), optax.constant_schedule(cfg.lr)], [warm]
        )
    if cfg.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, cfg.lr, warm, max(total_steps, warm + 1), end_value=cfg.lr * cfg.end_lr_ratio
        )
    if cfg.schedule == "linear":
        decay = optax.linear_schedule(cfg.lr, cfg.lr * cfg.end_lr_ratio, max(total_steps - warm, 1))
        if not warm:
            return decay
        return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warm), decay], [warm])
    raise ValueError(f"unknown schedule {cfg.schedule!r}; choices: {', '.join(SCHEDULES)}")


def make(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """(optimizer, its learning-rate schedule) for the `optim` config block.

    Always `chain(clip or identity, optimizer)`: both have empty states, so turning optim.clip_norm on or off keeps
    the optimizer state's tree, and a run resumes from its checkpoint after the change (what the NaN error advises).
    """
    lr = schedule(cfg, total_steps)
    contract = "fn(cfg, lr) -> optax.GradientTransformation"
    fn = registry.resolve("optimizer", cfg.name, OPTIMIZERS)
    tx = registry.call(f"optimizer {cfg.name!r}", fn, contract, cfg, lr)
    if not (callable(getattr(tx, "init", None)) and callable(getattr(tx, "update", None))):
        raise ValueError(f"optimizer {cfg.name!r} returned {registry.describe(tx)}, not an optax "
                         f"GradientTransformation (with init and update); expected {contract}")
    clip = optax.clip_by_global_norm(cfg.clip_norm) if cfg.clip_norm else optax.identity()
    return optax.chain(clip, tx), lr
