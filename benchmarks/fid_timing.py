"""Time to compute FID on N generated samples with jaxgen's Inception, against a reference already cached.

    python benchmarks/fid_timing.py --n=10000 --size=28,28,1            # MNIST-sized samples
    python benchmarks/fid_timing.py --n=10000 --size=64,64,3 --batch=500 --out=fid.json

What a training run pays at each evaluation with eval.extractors=('inception',): Inception features of N uint8
samples (resize to 299 on the device, sharded over the devices, batch by batch), their mean and covariance in
float64, and the Frechet distance to the reference statistics (eigenvalue form). The reference side is computed
once and cached, so it is not counted; it is timed here anyway (`reference_s`). With --full, KID (100 subsets of
1000), precision/recall and density/coverage too. Random weights unless --weights (or the cache) provides the
real ones: the time does not depend on the weights.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import harness


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--size", default="28,28,1", help="H,W,C of the samples")
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--reference-n", type=int, default=0, help="reference images (0 = --n); cached in training, so "
                   "fewer only shortens this benchmark")
    p.add_argument("--weights", default="", help="pytorch-fid weights (.pth or .npz); '' = random weights")
    p.add_argument("--full", action="store_true", help="also KID, precision/recall, density/coverage")
    p.add_argument("--out", default="")
    a = p.parse_args(argv)
    from jaxgen import runtime

    runtime.setup()
    import jax
    import numpy as np

    from jaxgen import parallel
    from jaxgen.evaluation import inception, sample_metrics

    mesh = parallel.make_mesh()
    variables = inception.load_params(a.weights) if a.weights else inception.random_params(0)
    fn = inception.make_extractor(variables, mesh)
    shape = tuple(int(s) for s in a.size.split(","))
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (a.reference_n or a.n, *shape), dtype=np.uint8)
    fake = rng.integers(0, 256, (a.n, *shape), dtype=np.uint8)
    batch = a.batch
    t = time.perf_counter()
    inception.extract(fn, fake[:batch], batch_size=batch, mesh=mesh, desc="compile")
    compile_s = time.perf_counter() - t

    t = time.perf_counter()
    ref = inception.extract(fn, real, batch_size=batch, mesh=mesh, desc="reference")["pool"]
    mu_r, s_r = sample_metrics.feature_statistics(ref)
    reference_s = time.perf_counter() - t

    t = time.perf_counter()
    feats = inception.extract(fn, fake, batch_size=batch, mesh=mesh, desc="samples")
    features_s = time.perf_counter() - t
    t = time.perf_counter()
    mu_g, s_g = sample_metrics.feature_statistics(feats["pool"])
    fid = sample_metrics.frechet_distance(mu_r, s_r, mu_g, s_g)
    stats_fid_s = time.perf_counter() - t
    result = {"n": a.n, "reference_n": len(real), "size": shape, "batch": batch, "compile_s": round(compile_s, 2),
              "reference_s": round(reference_s, 2), "sample_features_s": round(features_s, 2),
              "stats_and_fid_s": round(stats_fid_s, 2), "fid_total_s": round(features_s + stats_fid_s, 2),
              "img_per_s": round(a.n / features_s, 1), "fid_random_images": round(fid, 4)}
    if a.full:
        t = time.perf_counter()
        sample_metrics.kernel_inception_distance(ref, feats["pool"])
        result["kid_s"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        sample_metrics.precision_recall(ref, feats["pool"])
        sample_metrics.density_coverage(ref, feats["pool"])
        result["pr_dc_s"] = round(time.perf_counter() - t, 2)
    result.update(harness.machine(), jax=jax.__version__, devices=str(jax.devices()))
    print(json.dumps(result, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
