"""Conv-VAE train-step throughput: jaxgen's bare step, jaxgen's whole loop, and the PyTorch reference.

    python benchmarks/vae_throughput.py                       # batches 128 and 1024, this machine
    python benchmarks/vae_throughput.py --batches=128 --fused=1,10 --seconds=20 --out=results.json

Measures, in images per second, on data already on the device:
  jax_bare   the jitted objective gradient + Adam update on a fixed, pre-binarized batch (no draw, no metrics);
  jax_loop   jaxgen's compiled train function as training runs it: batch drawn on the device from the uint8
             dataset, dynamic binarization, metrics, the finite guard, plus the host loop's one-behind check;
             with train.steps_per_dispatch steps fused per call;
  torch      ../shared/reference/torch_reference.py's VAE with its own train step (eager, and torch.compile
             when --torch-compile), same shapes and optimizer; timed first (it takes seconds).
Each figure is the best of --repeats timed windows of about --seconds/--repeats seconds after a warm-up, each
window closed by one wait for the device; every side keeps at most two steps (or calls) queued. Each row is written
to --out as soon as it is measured, so a run cut by a time limit keeps what it finished.
"""

from __future__ import annotations

import argparse
import functools
import json

import harness


def bench_jax(rec, batches, fused, seconds, repeats, impls=("auto",)):
    """Rows into `rec`, most wanted first: the bare step at every batch, then the whole loop at 1 step per call at
    every batch, then each further --fused value in turn (its compile time grows with the steps fused)."""
    from jaxgen import runtime

    runtime.setup()
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from jaxgen import config as config_lib
    from jaxgen import models, objectives, parallel
    from jaxgen.models import layers
    from jaxgen.training import optim, vae_step
    from jaxgen.training import state as state_lib

    rec.env.update(harness.jax_info())
    cfg = config_lib.vae_config()
    cfg.optim.lr = 1e-3
    mesh = parallel.make_mesh()
    tx, lr = optim.make(cfg.optim, 10**6)
    rng = np.random.default_rng(0)
    images = (rng.random((60_000, 28, 28, 1)) * 255).astype(np.uint8)  # MNIST-sized uint8 dataset
    data = parallel.put_replicated({"image": images}, mesh)
    for impl in impls:
        cfg.model.conv_impl = impl
        model = models.build(cfg.model, (28, 28, 1))
        tag = {"conv_impl": impl, "resolved_impl": layers.resolve_impl(impl)}
        create = functools.partial(state_lib.create, model, tx, (28, 28, 1), 0, False)

        @functools.partial(jax.jit, donate_argnums=(0,))
        def bare(state, x, keys):
            loss, grads = jax.value_and_grad(lambda p: objectives.elbo(p, x, keys, model=model, cfg=cfg.objective)[0])(
                state["params"])
            updates, opt = tx.update(grads, state["opt_state"], state["params"])
            return {**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt}, loss

        for batch in batches:
            # Bare step: gradient + update on a fixed binarized batch, nothing else.
            x = jnp.asarray(rng.random((batch, 28, 28, 1)) < 0.5, jnp.float32)
            keys = jax.random.split(jax.random.key(1), batch)
            holder = {"s": jax.jit(create)(), "prev": None}

            def run_bare():
                holder["s"], loss = bare(holder["s"], x, keys)
                if holder["prev"] is not None:  # one step behind, as the loop: at most two steps queued
                    jax.block_until_ready(holder["prev"])
                holder["prev"] = loss

            rate = harness.best_rate(run_bare, batch, seconds, repeats,
                                     sync=lambda: jax.block_until_ready(holder["s"]))
            rec.add({"who": "jaxgen", "what": "bare_step", **tag, "batch": batch, "img_per_s": round(rate, 1)})
        for k in fused:
            for batch in batches:
                fn = vae_step.compile_train(mesh, steps_per_dispatch=k, model=model, tx=tx,
                                            objective=objectives.get("elbo"), obj_cfg=cfg.objective, lr_schedule=lr,
                                            batch=batch, binarize="dynamic", ema_half_life=0.0, ema_rampup=0.0)
                rate, compile_s = harness.time_train_fn(fn, create, mesh, data, steps_per_call=k, batch=batch,
                                                        seconds=seconds, repeats=repeats)
                rec.add({"who": "jaxgen", "what": "whole_loop", **tag, "steps_per_dispatch": k, "batch": batch,
                         "compile_s": round(compile_s, 1), "img_per_s": round(rate, 1)})


def bench_torch(rec, batches, seconds, repeats, compile_too):
    ref = harness.torch_side(rec)
    if ref is None:
        return
    torch = ref.torch
    for mode in ["eager"] + (["compile"] if compile_too else []):
        for batch in batches:
            torch.manual_seed(0)
            m = ref.VAE().to(ref.dev)
            if mode == "compile":
                m = torch.compile(m)
            opt = torch.optim.Adam(m.parameters(), 1e-3)
            x = torch.rand(batch, 1, 28, 28, device=ref.dev).round()
            queue = harness.TorchQueue(torch, ref.dev)

            def vstep():  # the reference's own step
                loss = m(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                queue.after_step()

            rate = harness.best_rate(vstep, batch, seconds, repeats, sync=queue.sync)
            rec.add({"who": "torch", "what": mode, "batch": batch, "img_per_s": round(rate, 1)})


def summarize(results, batches):
    summary = {}
    for b in batches:
        get = lambda who, what, k=None: max([r["img_per_s"] for r in results if r["who"] == who  # noqa: E731
                                             and r["what"] == what and r["batch"] == b
                                             and (k is None or r.get("steps_per_dispatch") == k)] or [0])
        bare, loop1 = get("jaxgen", "bare_step"), get("jaxgen", "whole_loop", 1)
        best_loop = get("jaxgen", "whole_loop")
        torch_best = max(get("torch", "eager"), get("torch", "compile"))
        summary[b] = {"loop_1_over_bare": round(loop1 / bare, 3) if bare and loop1 else None,
                      "best_loop_over_torch_best": round(best_loop / torch_best, 2) if torch_best and best_loop
                      else None}
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--fused", default="1,10", help="steps_per_dispatch values for the whole loop")
    p.add_argument("--conv-impls", default="auto", help="model.conv_impl values: auto,phase,xla")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--out", default="", help="a JSON file, rewritten after each row")
    a = p.parse_args(argv)
    if not a.skip_torch:
        harness.check_reference()
    batches = [int(b) for b in a.batches.split(",")]
    fused = [int(k) for k in a.fused.split(",")]
    rec = harness.Recorder(a.out, harness.machine(), lambda results: summarize(results, batches))
    if not a.skip_torch:  # first: seconds, where the longest fused compiles may not finish within a time limit
        harness.time_torch(rec, bench_torch, batches, a.seconds, a.repeats, a.torch_compile)
    bench_jax(rec, batches, fused, a.seconds, a.repeats, a.conv_impls.split(","))
    rec.write()
    print(json.dumps({"summary": rec.summary(), "env": rec.env}, indent=1))


if __name__ == "__main__":
    main()
