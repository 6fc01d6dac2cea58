"""What both benchmark scripts share: the timing loop, the PyTorch reference module, the machine description."""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ../shared/reference/torch_reference.py beside the checkout, or the file JAXGEN_TORCH_REFERENCE names (a machine
# that gets only the repository, such as the lent GPU machine, carries a copy).
REFERENCE = Path(os.environ.get("JAXGEN_TORCH_REFERENCE", ROOT.parent / "shared" / "reference" / "torch_reference.py"))


def best_rate(fn, images_per_call: int, seconds: float, repeats: int, warmup: int = 2) -> float:
    """Images per second: the best of `repeats` windows of about seconds / repeats each (at least one call),
    after `warmup` untimed calls (compilation)."""
    for _ in range(warmup):
        fn()
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt > seconds / repeats:
                break
        best = max(best, n * images_per_call / dt)
    return best


def train_loop(fn, state, data, calls: int):
    """A no-argument function running `calls` calls of a compiled train function as jaxgen.training.loop runs them:
    dispatch, then check the previous call's finite flags (one call behind); the state is blocked on at the end."""
    import jax
    import numpy as np

    holder = {"s": state, "prev": None}

    def run():
        for _ in range(calls):
            holder["s"], m = fn(holder["s"], data)
            if holder["prev"] is not None:
                assert np.all(jax.device_get(holder["prev"]["finite"]) == 1)
            holder["prev"] = m
        jax.block_until_ready(holder["s"])

    return run


def dcgan64_step(c, mesh, *, batch: int, steps_per_dispatch: int = 1, augment_policy: str = ""):
    """(compiled train function, state creator) of the DCGAN-64 GAN step both GAN scripts time: the model of the
    config `c` (gan_config with its model fields set), non-saturating loss, Adam(2e-4, 0.5), one D update per step,
    G's EMA."""
    import functools

    from jaxgen import parallel
    from jaxgen.models import gan as gan_models
    from jaxgen.objectives import gan as gan_obj
    from jaxgen.training import gan_step, optim
    from jaxgen.training import state as state_lib

    G, D = gan_models.build(c.model, (64, 64, 3), axis_name=parallel.AXIS)
    g_tx, g_lr = optim.make(c.g_optim, 10**6)
    d_tx, d_lr = optim.make(c.d_optim, 10**6)
    create = functools.partial(state_lib.create_gan, G, D, g_tx, d_tx, (64, 64, 3), 0, True)
    fn = gan_step.compile_train(
        mesh, steps_per_dispatch=steps_per_dispatch, generator=G, discriminator=D, g_tx=g_tx, d_tx=d_tx,
        loss_fn=gan_obj.get_loss("non_saturating"), reg_fn=None, reg_weight=0.0, reg_interval=1, d_steps=1,
        batch=batch, augment_policy=augment_policy, ema_half_life=10_000, ema_rampup=0.05, g_lr=g_lr, d_lr=d_lr)
    return fn, create


def check_reference() -> None:
    """Exits with a message naming the fixes unless the PyTorch reference file exists: called before any timing,
    so a run without it does not lose the jaxgen numbers it measured first."""
    if not REFERENCE.is_file():
        sys.exit(f"The PyTorch reference {REFERENCE} does not exist: point JAXGEN_TORCH_REFERENCE at a copy of "
                 f"torch_reference.py (benchmarks/README.md), or time jaxgen alone with --skip-torch")


def load_reference():
    """../shared/reference/torch_reference.py as a module (its models and steps; an instrument, not jaxgen code)."""
    check_reference()
    spec = importlib.util.spec_from_file_location("torch_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}
