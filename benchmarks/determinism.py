"""Does a train run repeat bit for bit, with and without `--config.deterministic=True`, and what does it cost?

    python benchmarks/determinism.py --out=det.json                 # DCGAN-64 with DiffAugment, this machine
    python benchmarks/determinism.py --batch=8 --steps=3            # a dry run on a CPU

For each setting (XLA's defaults; `deterministic`, which adds `--xla_gpu_deterministic_ops=true` to XLA_FLAGS the
way `jaxgen.runtime.setup` does for launch.py) two fresh processes build the same DCGAN-64 state from the same seed
and run `--steps` compiled GAN steps (non-saturating loss, DiffAugment color,translation,cutout on reals and fakes:
its gathers' gradients are scatter-adds, the kind of op GPUs run with atomics), then print the state's
fingerprint (`jaxgen.training.checkpoint.fingerprint`, a checksum of every array's bits). The run repeats when the
two processes' fingerprints are equal. Images per second are timed over the steps after the first call.
Each process compiles for itself, so autotuning (XLA:GPU's choice of convolution algorithms by timing) is redone
in each, as in a resumed run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import harness


def child(batch: int, steps: int, dtype: str, deterministic: bool) -> dict:
    from jaxgen import runtime

    runtime.setup(deterministic=deterministic)

    import jax
    import numpy as np

    from jaxgen import config as config_lib
    from jaxgen import parallel
    from jaxgen.training import checkpoint

    mesh = parallel.make_mesh()
    images = (np.random.default_rng(0).random((1024, 64, 64, 3)) * 255).astype(np.uint8)
    data = parallel.put_replicated({"image": images}, mesh)
    c = config_lib.gan_config()
    c.model.dtype = dtype
    fn, create = harness.dcgan64_step(c, mesh, batch=batch, augment_policy="color,translation,cutout")
    state = jax.jit(create, out_shardings=parallel.replicated(mesh))()
    t0 = time.perf_counter()
    state, _ = fn(state, data)  # compiles (and on a GPU autotunes)
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps - 1):
        state, m = fn(state, data)
    jax.block_until_ready(state)
    dt = time.perf_counter() - t0
    assert float(np.asarray(jax.device_get(m["finite"])).min()) == 1.0
    fp = checkpoint.fingerprint(state)
    return {"fingerprint": fp, "first_call_s": round(compile_s, 2),
            "img_per_s": round((steps - 1) * batch / dt, 1) if steps > 1 else None,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "devices": str(jax.devices())}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="")
    p.add_argument("--child", choices=["default", "deterministic"], help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.steps < 2:
        p.error("--steps must be at least 2: the first call compiles, the others are timed")
    if a.child:
        print("RESULT " + json.dumps(child(a.batch, a.steps, a.dtype, a.child == "deterministic")), flush=True)
        return
    here = Path(__file__).resolve()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(here.parent.parent),
                                                                       os.environ.get("PYTHONPATH", "")]))}
    rec = harness.Recorder(a.out, harness.machine())
    for setting in ("default", "deterministic"):
        runs = []
        for _ in range(2):
            r = subprocess.run([sys.executable, str(here), f"--child={setting}", f"--batch={a.batch}",
                                f"--steps={a.steps}", f"--dtype={a.dtype}"], capture_output=True, text=True, env=env)
            line = [x for x in r.stdout.splitlines() if x.startswith("RESULT ")]
            if r.returncode or not line:
                sys.exit(f"the {setting} process failed (status {r.returncode}):\n{r.stderr[-3000:]}")
            runs.append(json.loads(line[0][len("RESULT "):]))
        fps = [run.pop("fingerprint") for run in runs]
        differ = sum(x != y for x, y in zip(*fps))
        rec.add({"setting": setting, "batch": a.batch, "steps": a.steps, "dtype": a.dtype,
                 "repeats_bitwise": differ == 0, "arrays_that_differ": differ, "arrays": len(fps[0]), "runs": runs})


if __name__ == "__main__":
    main()
