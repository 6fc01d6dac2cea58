"""The batch draw inside a train step on a CPU: the gather of a step's examples from the dataset on the device, with
its indices (jaxgen.data.device.batch_indices) computed once, against XLA's fusion of the bijection into the gather.

    python benchmarks/batch_gather.py                      # LLVM level 0 (the tests' emitters: benchmarks/README.md)
    python benchmarks/batch_gather.py --level=2 --n=60000  # as users compile

Both columns gather the same examples (checked). 'fused' is batch_indices without its sort, whose indices XLA:CPU
fuses into the gather so that every pixel computes its example's index again; 'jaxgen' is batch_indices, whose
indices go through a sort on CPUs, which XLA does not fuse.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", type=int, default=0, help="XLA's --xla_backend_optimization_level")
    p.add_argument("--n", type=int, default=256, help="examples in the dataset")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", default="32,32,3", help="H,W,C")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out", default="", help="a file to keep the JSON line in")
    a = p.parse_args(argv)
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level={a.level}"
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxgen.data import device as dev

    shape = tuple(int(s) for s in a.size.split(","))
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (a.n, *shape), dtype=np.uint8))
    key, positions = jax.random.key(0), jnp.arange(a.batch)

    def draw(images, step):
        return images[dev.batch_indices(key, step, a.n, a.batch, positions)].astype(jnp.float32) / 255.0

    out = {"backend": jax.default_backend(), "level": a.level, "n": a.n, "batch": a.batch, "size": shape}
    results, unfused = {}, dev._unfused
    for name in ("fused", "jaxgen"):
        fn = jax.jit(lambda images, step: draw(images, step))  # a function of its own: traced again
        dev._unfused = (lambda idx: idx) if name == "fused" else unfused  # read while the first call traces
        try:
            results[name] = np.asarray(fn(images, jnp.int32(3)))
        finally:
            dev._unfused = unfused
        times = []
        for _ in range(3):  # the best of three rounds of `repeats` calls
            t = time.perf_counter()
            for s in range(a.repeats):
                x = fn(images, jnp.int32(s))
            x.block_until_ready()
            times.append((time.perf_counter() - t) / a.repeats)
        out[f"{name}_ms"] = round(min(times) * 1e3, 4)
    assert np.array_equal(results["fused"], results["jaxgen"]), "the two draws differ"
    line = json.dumps(out)
    print(line)
    if a.out:
        Path(a.out).write_text(line + "\n")


if __name__ == "__main__":
    main()
