"""DCGAN-64 train-step throughput: jaxgen's compiled GAN step against the PyTorch reference.

    python benchmarks/gan_throughput.py                              # batches 128 and 1024, this machine
    python benchmarks/gan_throughput.py --batches=128 --dtypes=float32,bfloat16 --out=results.json

Same networks on both sides: the pytorch/examples DCGAN at 64x64 (nz 100, ngf = ndf = 64, BatchNorm, no biases),
non-saturating loss, Adam(2e-4, 0.5, 0.999), one D update then one G update per step, on images already on the
device. Measured, in images per second:
  jaxgen   jaxgen's train function as `launch.py` runs it (gan_step: a batch of uint8 reals drawn and scaled on
           the device, G forward once, D update on reals and fakes, G update through the same fakes, EMA of G,
           metrics and the finite guard), `--fused` steps per call, compute dtype per `--dtypes`;
  torch    ../shared/reference/torch_reference.py's G, D and gan_step_fn (eager fp32, and bf16 autocast with
           --torch-amp), the reference's own step.
Each figure is the best of --repeats timed windows of about --seconds/--repeats seconds after a warm-up, each
window closed by one wait for the device; every side keeps at most two steps (or calls) queued. PyTorch is timed
first; each row is written to --out as soon as it is measured.
"""

from __future__ import annotations

import argparse
import json

import harness


def bench_jax(rec, batches, dtypes, fused, seconds, repeats, impls=("auto",), norm_impls=("auto",)):
    from jaxgen import runtime

    runtime.setup()
    import numpy as np

    from jaxgen import config as config_lib
    from jaxgen import parallel
    from jaxgen.models import batch_norm, layers

    rec.env.update(harness.jax_info())
    mesh = parallel.make_mesh()
    rng = np.random.default_rng(0)
    images = (rng.random((4096, 64, 64, 3)) * 255).astype(np.uint8)  # 50 MB of 64x64 RGB, uint8 on the device
    data = parallel.put_replicated({"image": images}, mesh)

    def measure(dtype, impl, batch, k, norm_impl="auto"):
        c = config_lib.gan_config()
        c.model.dtype = dtype
        c.model.conv_impl = impl
        c.model.norm_impl = norm_impl
        fn, create = harness.dcgan64_step(c, mesh, batch=batch, steps_per_dispatch=k)
        rate, compile_s = harness.time_train_fn(fn, create, mesh, data, steps_per_call=k, batch=batch,
                                                seconds=seconds, repeats=repeats, warmup=1)
        rec.add({"who": "jaxgen", "what": dtype, "conv_impl": impl, "resolved_impl": layers.resolve_impl(impl),
                 "norm_impl": batch_norm.resolve_norm_impl(norm_impl), "steps_per_dispatch": k, "batch": batch,
                 "compile_s": round(compile_s, 1), "img_per_s": round(rate, 1)})
        return rate

    for dtype in dtypes:
        for batch in batches:
            # Every conv impl at the first --fused value; further values with the fastest of them.
            rates = {impl: measure(dtype, impl, batch, fused[0], norm_impls[0]) for impl in impls}
            best = max(rates, key=rates.get)
            for norm_impl in norm_impls[1:]:  # further BatchNorm impls with the fastest conv impl
                measure(dtype, best, batch, fused[0], norm_impl)
            for k in fused[1:]:
                measure(dtype, best, batch, k, norm_impls[0])


def bench_torch(rec, batches, seconds, repeats, amp_too):
    ref = harness.torch_side(rec)
    if ref is None:
        return
    torch = ref.torch
    for mode in ["eager"] + (["amp"] if amp_too else []):
        for batch in batches:
            torch.manual_seed(0)
            g, d = ref.G().to(ref.dev), ref.D().to(ref.dev)
            if ref.dev == "cuda":
                g, d = g.to(memory_format=torch.channels_last), d.to(memory_format=torch.channels_last)
            og = torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999))
            od = torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999))
            step = ref.gan_step_fn(g, d, og, od, mode == "amp")
            real = torch.randn(batch, 3, 64, 64, device=ref.dev).tanh()
            queue = harness.TorchQueue(torch, ref.dev)

            def run():
                step(real, torch.randn(batch, 100, 1, 1, device=ref.dev))
                queue.after_step()

            rate = harness.best_rate(run, batch, seconds, repeats, warmup=1, sync=queue.sync)
            rec.add({"who": "torch", "what": mode, "batch": batch, "img_per_s": round(rate, 1)})


def summarize(results, batches):
    summary = {}
    for b in batches:
        best = lambda who: max([r["img_per_s"] for r in results if r["who"] == who and r["batch"] == b] or [0])  # noqa: E731
        summary[b] = {"jaxgen_best": best("jaxgen"), "torch_best": best("torch"),
                      "ratio": round(best("jaxgen") / best("torch"), 2) if best("torch") and best("jaxgen") else None}
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", default="128,1024")
    p.add_argument("--dtypes", default="float32", help="jaxgen compute dtypes: float32,bfloat16")
    p.add_argument("--fused", default="1", help="steps_per_dispatch values")
    p.add_argument("--conv-impls", default="auto",
                   help="model.conv_impl values (auto,phase,xla), each timed at the first --fused value; the other "
                        "--fused values are timed with the fastest")
    p.add_argument("--norm-impls", default="auto",
                   help="model.norm_impl values (auto,fused,flax): the first with every conv impl, the others with "
                        "the fastest conv impl")
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per measurement")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--skip-torch", action="store_true")
    p.add_argument("--torch-amp", action="store_true", help="also time the reference with bf16 autocast")
    p.add_argument("--out", default="", help="a JSON file, rewritten after each row")
    a = p.parse_args(argv)
    if not a.skip_torch:
        harness.check_reference()
    batches = [int(b) for b in a.batches.split(",")]
    rec = harness.Recorder(a.out, harness.machine(), lambda results: summarize(results, batches))
    if not a.skip_torch:  # first: it takes seconds, and its rows are the yardstick
        harness.time_torch(rec, bench_torch, batches, a.seconds, a.repeats, a.torch_amp)
    bench_jax(rec, batches, a.dtypes.split(","), [int(k) for k in a.fused.split(",")], a.seconds, a.repeats,
              a.conv_impls.split(","), a.norm_impls.split(","))
    rec.write()
    print(json.dumps({"summary": rec.summary(), "env": rec.env}, indent=1))


if __name__ == "__main__":
    main()
