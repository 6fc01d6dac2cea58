"""Where a DCGAN-64 train step spends its time: G and D alone, and each strided conv layer, forward + backward.

    python benchmarks/dcgan_layers.py --batch=1024 --dtypes=float32,bfloat16 --out=layers.json

For every compute dtype, conv impl (`model.conv_impl`) and matmul precision ('default' and 'tensorfloat32', i.e.
`jax.default_matmul_precision`), times in milliseconds per call:
  G, D       the whole network's forward and backward (gradients of a sum of its outputs w.r.t. params and input);
  layer i    one ConvTranspose2x (G) or ConvDown2x (D) layer at its place in the network, alone;
and the TFLOP/s each reaches (XLA's cost analysis), so a layer that misses the tensor cores stands out.
Built to answer benchmarks/README.md's open question (float32 DCGAN at ~61 TFLOP/s on an H200).
"""

from __future__ import annotations

import argparse
import time

import harness


def _time(fn, *args, repeats: int = 20) -> float:
    import jax

    jax.block_until_ready(fn(*args))  # compile
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(repeats):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t) / repeats)
    return best * 1e3


def _flops(fn, *args) -> float:
    try:
        cost = fn.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost.get("flops", 0.0))
    except Exception:  # noqa: BLE001 (cost analysis is best effort)
        return 0.0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--impls", default="phase,xla")
    p.add_argument("--precisions", default="default,tensorfloat32")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--out", default="", help="a JSON file (env, results), rewritten after each row")
    a = p.parse_args(argv)
    from jaxgen import runtime

    runtime.setup()
    import jax
    import jax.numpy as jnp

    from jaxgen import config as config_lib
    from jaxgen.models import gan as gan_models
    from jaxgen.models.layers import ConvDown2x, ConvTranspose2x

    rec = harness.Recorder(a.out, {**harness.machine(), **harness.jax_info()})

    def record(what, fn, *args, **tags):
        ms = _time(fn, *args, repeats=a.repeats)
        flops = _flops(fn, *args)
        rec.add({**tags, "what": what, "ms": round(ms, 3), "tflops": round(flops / ms / 1e9, 1) if ms else 0})

    b, key = a.batch, jax.random.key(0)
    for dtype in a.dtypes.split(","):
        dt = jnp.dtype(dtype)
        for impl in a.impls.split(","):
            # The matmul precision changes float32 convolutions only: bfloat16 ones are timed once.
            for prec in a.precisions.split(",") if dtype == "float32" else ["default"]:
                tags = {"dtype": dtype, "impl": impl, "precision": prec, "batch": b}
                with jax.default_matmul_precision(None if prec == "default" else prec):
                    c = config_lib.gan_config()
                    c.model.dtype, c.model.conv_impl = dtype, impl
                    G, D = gan_models.build(c.model, (64, 64, 3))
                    z = jax.random.normal(key, (b, 100))
                    x = jax.random.normal(key, (b, 64, 64, 3))
                    gv, dv = G.init(key, z[:2]), D.init(key, x[:2])

                    def net_grad(m, v, inp):
                        f = lambda p, i: jnp.sum(m.apply({**v, "params": p}, i, mutable=["batch_stats"])[0])
                        return jax.grad(f, (0, 1))(v["params"], inp)

                    record("G", jax.jit(lambda v, i: net_grad(G, v, i)), gv, z, **tags)
                    record("D", jax.jit(lambda v, i: net_grad(D, v, i)), dv, x, **tags)
                    # G's transposed convs 4->8 (512->256) ... 32->64 (64->3); D's strided convs mirror them.
                    layers = [("G", ConvTranspose2x, h, 2 * h, cin, cout) for h, cin, cout in
                              [(4, 512, 256), (8, 256, 128), (16, 128, 64), (32, 64, 3)]]
                    layers += [("D", ConvDown2x, h, h // 2, cin, cout) for h, cin, cout in
                               [(64, 3, 64), (32, 64, 128), (16, 128, 256), (8, 256, 512)]]
                    for i, (net, cls, h, h_out, cin, cout) in enumerate(layers):
                        m = cls(cout, 4, 1, use_bias=False, dtype=dt, impl=impl)
                        inp = jax.random.normal(key, (b, h, h, cin), dt)
                        loss = lambda p, q, m=m: jnp.sum(m.apply({"params": p}, q).astype(jnp.float32))
                        fn = jax.jit(lambda v, q, loss=loss: jax.grad(loss, (0, 1))(v["params"], q))
                        record(f"{net} layer {i % 4} {h}->{h_out} {cin}->{cout}", fn, m.init(key, inp[:2]), inp,
                               **tags)
    rec.write()


if __name__ == "__main__":
    main()
