"""Conv-VAE train-step throughput: jaxgen's bare step, jaxgen's whole loop, and the PyTorch reference.

    python benchmarks/vae_throughput.py                       # batches 128 and 1024, this machine
    python benchmarks/vae_throughput.py --batches=128 --fused=1,10 --seconds=20 --out=results.json

Measures, in images per second, on data already on the device:
  jax_bare   the jitted objective gradient + Adam update on a fixed, pre-binarized batch (no draw, no metrics);
  jax_loop   jaxgen's compiled train function as training runs it: batch drawn on the device from the uint8
             dataset, dynamic binarization, metrics, the finite guard, plus the host loop's one-behind check;
             with train.steps_per_dispatch steps fused per call;
  torch      ../shared/reference/torch_reference.py's VAE with its own train step (eager, and torch.compile
             when --torch-compile), same shapes and optimizer.
Each figure is the best of --repeats timed windows of about --seconds/--repeats seconds after a warm-up.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from pathlib import Path

import harness


def bench_jax(batches, fused, seconds, repeats, impls=("auto",)):
    from jaxgen import runtime

    runtime.setup()
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    import optax

    from jaxgen import config as config_lib
    from jaxgen import models, objectives, parallel
    from jaxgen.models import layers
    from jaxgen.training import optim, vae_step
    from jaxgen.training import state as state_lib

    cfg = config_lib.vae_config()
    cfg.optim.lr = 1e-3
    mesh = parallel.make_mesh()
    tx, lr = optim.make(cfg.optim, 10**6)
    rng = np.random.default_rng(0)
    images = (rng.random((60_000, 28, 28, 1)) * 255).astype(np.uint8)  # MNIST-sized uint8 dataset
    data = parallel.put_replicated({"image": images}, mesh)
    results = []
    for impl, batch in [(i, b) for i in impls for b in batches]:
        cfg.model.conv_impl = impl
        model = models.build(cfg.model, (28, 28, 1))
        tag = {"conv_impl": impl, "resolved_impl": layers.resolve_impl(impl)}
        create = functools.partial(state_lib.create, model, tx, (28, 28, 1), 0, False)
        # Bare step: gradient + update on a fixed binarized batch, nothing else.
        x = jnp.asarray(rng.random((batch, 28, 28, 1)) < 0.5, jnp.float32)
        keys = jax.random.split(jax.random.key(1), batch)

        @functools.partial(jax.jit, donate_argnums=(0,))
        def bare(state, x, keys):
            grads = jax.grad(lambda p: objectives.elbo(p, x, keys, model=model, cfg=cfg.objective)[0])(
                state["params"])
            updates, opt = tx.update(grads, state["opt_state"], state["params"])
            return {**state, "params": optax.apply_updates(state["params"], updates), "opt_state": opt}

        holder = {"s": jax.jit(create)()}

        def run_bare():
            holder["s"] = bare(holder["s"], x, keys)
            jax.block_until_ready(holder["s"]["params"])

        results.append({"who": "jaxgen", "what": "bare_step", **tag, "batch": batch,
                        "img_per_s": round(harness.best_rate(run_bare, batch, seconds, repeats), 1)})
        for k in fused:
            fn = vae_step.compile_train(mesh, steps_per_dispatch=k, model=model, tx=tx,
                                        objective=objectives.get("elbo"), obj_cfg=cfg.objective, lr_schedule=lr,
                                        batch=batch, binarize="dynamic", ema_half_life=0.0, ema_rampup=0.0)
            calls = max(1, 4 // k)
            run_loop = harness.train_loop(fn, jax.jit(create, out_shardings=parallel.replicated(mesh))(), data,
                                          calls)

            results.append({"who": "jaxgen", "what": "whole_loop", **tag, "steps_per_dispatch": k, "batch": batch,
                            "img_per_s": round(harness.best_rate(run_loop, calls * k * batch, seconds, repeats), 1)})
        print("\n".join(json.dumps(r) for r in results[-1 - len(fused):]), flush=True)
    del ml_collections
    return results, {"jax": jax.__version__, "devices": str(jax.devices()), "xla_flags": os.environ.get("XLA_FLAGS")}


def bench_torch(batches, seconds, repeats, compile_too):
    ref = harness.load_reference()
    import torch

    results = []
    for mode in ["eager"] + (["compile"] if compile_too else []):
        for batch in batches:
            torch.manual_seed(0)
            m = ref.VAE().to(ref.dev)
            if mode == "compile":
                m = torch.compile(m)
            opt = torch.optim.Adam(m.parameters(), 1e-3)
            x = torch.rand(batch, 1, 28, 28, device=ref.dev).round()

            def vstep():  # the reference's own step
                loss = m(x)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ref.dev == "cuda":
                    torch.cuda.synchronize()

            results.append({"who": "torch", "what": mode, "batch": batch,
                            "img_per_s": round(harness.best_rate(vstep, batch, seconds, repeats), 1)})
            print(json.dumps(results[-1]), flush=True)
    return results, {"torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--fused", default="1,10", help="steps_per_dispatch values for the whole loop")
    p.add_argument("--conv-impls", default="auto", help="model.conv_impl values: auto,phase,xla")
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-compile", action="store_true")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    if not a.skip_torch:
        harness.check_reference()
    batches = [int(b) for b in a.batches.split(",")]
    fused = [int(k) for k in a.fused.split(",")]
    env = harness.machine()
    results, info = bench_jax(batches, fused, a.seconds, a.repeats, a.conv_impls.split(","))
    env.update(info)
    if not a.skip_torch:
        tr, info = bench_torch(batches, a.seconds, a.repeats, a.torch_compile)
        results += tr
        env.update(info)
    summary = {}
    for b in batches:
        get = lambda who, what, k=None: max([r["img_per_s"] for r in results if r["who"] == who  # noqa: E731
                                             and r["what"] == what and r["batch"] == b
                                             and (k is None or r.get("steps_per_dispatch") == k)] or [0])
        bare = get("jaxgen", "bare_step")
        loop1 = get("jaxgen", "whole_loop", 1)
        best_loop = get("jaxgen", "whole_loop")
        torch_best = max(get("torch", "eager"), get("torch", "compile"))
        summary[b] = {"loop_1_over_bare": round(loop1 / bare, 3) if bare else None,
                      "best_loop_over_torch_best": round(best_loop / torch_best, 2) if torch_best else None}
    out = {"env": env, "results": results, "summary": summary}
    print(json.dumps({"summary": summary, "env": env}, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
