"""InceptionV3 for FID, KID and IS: pytorch-fid's weights found, checked and read without torch, and the features of
uint8 images computed over the mesh. The network and its preprocessing are in jaxgen/evaluation/inception_net.py.

The convention followed is pytorch-fid 0.3.0's (`pytorch_fid.inception.InceptionV3` with `use_fid_inception=True`,
`resize_input=True`, `normalize_input=True`), a port of TensorFlow's `inception-2015-12-05` graph that the original
FID code (bioinf-jku/TTUR) used, with the weights `pt_inception-2015-12-05-6726825d.pth` from pytorch-fid's
`fid_weights` release (WEIGHTS_URL). Features: `pool` is the 2048-d global average pool ("pool3", what FID and KID
use); `logits` is the 1008-way fc layer on it, with its bias, as in pytorch-fid's model. The original IS code
(openai/improved-gan) and torch-fidelity's IS default use that matmul without the bias:
`logits - variables['params']['fc']['bias']`.

Weights are looked up (`load_params`) as: an explicit path (.pth or converted .npz), else $JAXGEN_INCEPTION_WEIGHTS,
else `<cache>/inception/` with <cache> = $JAXGEN_CACHE_DIR or ~/.cache/jaxgen; a .pth found there is converted once to
an .npz beside it. A download happens only with `allow_download=True`. The .pth is read by a restricted unpickler
(tensors and storages only, no code), both torch's zip format and the pre-1.6 legacy one.

CLI: `python -m jaxgen.evaluation.inception {check,convert SRC.pth [DST.npz],download}`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import sys
import urllib.request
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jaxgen import atomic, parallel
from jaxgen.evaluation.inception_net import SIZE, InceptionV3, check_images, preprocess
from jaxgen.evaluation.torch_pickle import read_torch_state_dict

WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d"
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_NAME}.pth"
# torch.hub's naming convention: the hex digits after the last '-' begin the file's sha256. That prefix is what is
# checked: pytorch-fid publishes no full digest. Public projects pin torch-fidelity's copy of these weights,
# weights-inception-2015-12-05-6726825d.pth (95,628,359 bytes), at sha256
# 6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2: the same prefix, so very likely the same bytes,
# but it could not be checked against pytorch-fid's file here (no network), so the full digest is not enforced.
SHA256_PREFIX = "6726825d"
ENV_WEIGHTS = "JAXGEN_INCEPTION_WEIGHTS"
ENV_CACHE = "JAXGEN_CACHE_DIR"
CONFIG_FIELD = "eval.inception_weights"  # the config field the trainer passes as `path`
NPZ_FORMAT = "jaxgen-inception-v1"
DOWNLOAD_TIMEOUT_S = 60  # per blocking network operation


class WeightsNotFoundError(FileNotFoundError):
    """No Inception weights where they were looked for; the message says where to put them."""


# ----------------------------------------------------------------------------------------------------- weights


@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
    """{(collection, module..., leaf): shape} of InceptionV3's variables (traced abstractly, nothing computed)."""
    tree = jax.eval_shape(InceptionV3().init, jax.random.key(0), jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), jnp.float32))
    return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def _check_structure(variables: dict, source: str) -> dict:
    got = {k: tuple(np.shape(v)) for k, v in traverse_util.flatten_dict(variables).items()}
    want = _expected_shapes()
    problems = [f"missing {'/'.join(k)}" for k in want.keys() - got.keys()]
    problems += [f"unexpected {'/'.join(k)}" for k in got.keys() - want.keys()]
    problems += [f"{'/'.join(k)} has shape {got[k]}, want {want[k]}" for k in want.keys() & got.keys()
                 if got[k] != want[k]]
    if problems:
        raise ValueError(f"{source} does not hold pytorch-fid's InceptionV3 weights: " + "; ".join(sorted(problems)[:8])
                         + (f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""))
    return variables


def convert_torch_state_dict(state_dict: dict[str, np.ndarray]) -> dict:
    """pytorch-fid's state dict (names as in the .pth: `Mixed_5b.branch1x1.conv.weight`, `...bn.running_var`,
    `fc.weight` ...; numpy or anything np.asarray takes) -> flax variables {'params', 'batch_stats'}.

    Conv kernels go OIHW -> HWIO, the fc weight [1008, 2048] -> kernel [2048, 1008]; `num_batches_tracked` is
    dropped. ValueError naming what is missing, unexpected or misshapen."""
    bn_leaf = {"weight": ("params", "scale"), "bias": ("params", "bias"),
               "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
    flat = {}
    for name, value in state_dict.items():
        *path, leaf = name.split(".")
        a = np.asarray(value, dtype=np.float32)
        if leaf == "num_batches_tracked":
            continue
        if path and path[-1] == "conv" and leaf == "weight" and a.ndim == 4:
            flat[("params", *path, "kernel")] = a.transpose(2, 3, 1, 0)
        elif path and path[-1] == "bn" and leaf in bn_leaf:
            collection, new = bn_leaf[leaf]
            flat[(collection, *path, new)] = a
        elif path == ["fc"] and leaf in ("weight", "bias"):
            flat[("params", "fc", "kernel" if leaf == "weight" else "bias")] = a.T if leaf == "weight" else a
        else:
            flat[("torch", name)] = a  # reported as unexpected by the structure check
    return _check_structure(traverse_util.unflatten_dict(flat), "the state dict")


def random_params(seed: int = 0) -> dict:
    """Random InceptionV3 variables for tests and smoke runs: He-scaled kernels and BatchNorm scale, bias, running
    mean and variance all drawn away from their identity values, so the inference-mode BatchNorm is exercised."""
    rng = np.random.default_rng(seed)
    flat = {}
    for key, shape in sorted(_expected_shapes().items()):
        leaf = key[-1]
        if leaf == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            a = rng.normal(0, np.sqrt((1.0 if key[1] == "fc" else 2.0) / fan_in), shape)
        elif leaf == "scale":
            a = rng.uniform(0.6, 1.4, shape)
        elif leaf in ("bias", "mean"):
            a = rng.uniform(-0.2, 0.2, shape)
        else:  # var
            a = rng.uniform(0.5, 2.0, shape)
        flat[key] = a.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def cache_dir() -> Path:
    """Where the weights are kept: $JAXGEN_CACHE_DIR/inception, else ~/.cache/jaxgen/inception."""
    return Path(os.environ.get(ENV_CACHE) or Path.home() / ".cache" / "jaxgen").expanduser() / "inception"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path | str, digest: str | None = None) -> str:
    """The sha256 of the file `path` (or `digest`, already computed of what `path` names), or ValueError if it is
    not pytorch-fid's."""
    digest = digest or sha256(path)
    if not digest.startswith(SHA256_PREFIX):
        raise ValueError(f"{path} is not pytorch-fid's {WEIGHTS_NAME}.pth: its sha256 is {digest}, expected one "
                         f"starting with {SHA256_PREFIX} (the hash in the file name, torch.hub's convention). "
                         f"Download it again from {WEIGHTS_URL}")
    return digest


def _from_pth(path: Path) -> tuple[dict, str]:
    digest = _verified(path)
    return convert_torch_state_dict(read_torch_state_dict(path)), digest


def save_npz(variables: dict, path, source_sha256: str) -> Path:
    """Writes converted variables (flat 'params/Mixed_5b/...' names) and the source file's sha256, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}
    atomic.write_npz(path, **flat, __format__=np.array(NPZ_FORMAT), __source_sha256__=np.array(source_sha256))
    return path


def _from_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        meta = {k: str(z[k]) for k in ("__format__", "__source_sha256__") if k in z.files}
        flat = {tuple(k.split("/")): z[k] for k in z.files if not k.startswith("__")}
    if meta.get("__format__") != NPZ_FORMAT or not meta.get("__source_sha256__", "").startswith(SHA256_PREFIX):
        raise ValueError(f"{path} is not a conversion of pytorch-fid's weights by this module (format "
                         f"{meta.get('__format__')!r}, source sha256 {meta.get('__source_sha256__')!r}); convert "
                         f"{WEIGHTS_NAME}.pth with `python -m jaxgen.evaluation.inception convert SRC.pth`")
    return _check_structure(traverse_util.unflatten_dict(flat), str(path))


def _missing_message(problem: str, offer_download: bool = True) -> str:
    d = cache_dir()
    npz, pth = d / f"{WEIGHTS_NAME}.npz", d / f"{WEIGHTS_NAME}.pth"
    return (f"Inception weights (pytorch-fid's, for FID/KID/IS) not found: {problem}\n"
            f"Looked at, in order: a path given as `{CONFIG_FIELD}`, ${ENV_WEIGHTS} "
            f"({os.environ.get(ENV_WEIGHTS) or 'not set'}), {npz}, {pth}.\n"
            f"Either download {WEIGHTS_URL} (about 96 MB) to {pth} (the cache dir is "
            f"${ENV_CACHE}/inception, by default ~/.cache/jaxgen/inception),\n"
            f"or set `{CONFIG_FIELD}` or ${ENV_WEIGHTS} to that .pth or to an .npz converted from it"
            + (",\nor let jaxgen fetch it: `python -m jaxgen.evaluation.inception download` (training does so "
               "itself with --config.eval.inception_download=True, the default, on a machine with a network).\n"
               if offer_download else ".\n")
            + "To train without Inception metrics instead: --config.eval.extractors=\"()\" (or \"('classifier',)\" "
            "on a labelled dataset).")


def _download(dst: Path) -> None:
    """WEIGHTS_URL to `dst`, hashed while it streams; `dst` appears only whole and verified (atomic.write_with)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {WEIGHTS_URL} to {dst}", file=sys.stderr)

    def fetch(f):
        h = hashlib.sha256()
        try:
            with urllib.request.urlopen(WEIGHTS_URL, timeout=DOWNLOAD_TIMEOUT_S) as r:
                for block in iter(lambda: r.read(1 << 20), b""):
                    h.update(block)
                    f.write(block)
        except OSError as e:  # URLError, timeouts, refused connections: offline machines fail here, fast
            raise WeightsNotFoundError(_missing_message(f"the download failed ({e}).", offer_download=False)) from e
        _verified(f"the file downloaded from {WEIGHTS_URL}", h.hexdigest())

    atomic.write_with(dst, fetch, suffix=".part")


def weights_file(path=None, *, allow_download: bool = False) -> Path:
    """The file `load_params` reads: `path` (a .pth or a converted .npz), else $JAXGEN_INCEPTION_WEIGHTS, else the
    cache dir's .npz, else its .pth, downloaded into it first if missing and `allow_download`.
    WeightsNotFoundError (a FileNotFoundError) says where to put the file. Cheap where the file is there: runs
    check it before they load any data (a first run on a large image folder would decode it all first)."""
    explicit = path or os.environ.get(ENV_WEIGHTS)
    if explicit:
        file = Path(explicit).expanduser()
        if not file.is_file():
            raise WeightsNotFoundError(_missing_message(f"{file} does not exist."))
        return file
    npz, pth = cache_dir() / f"{WEIGHTS_NAME}.npz", cache_dir() / f"{WEIGHTS_NAME}.pth"
    if npz.is_file():
        return npz
    if not pth.is_file():
        if not allow_download:
            raise WeightsNotFoundError(_missing_message("nothing in the cache dir, and no download was asked for."))
        _download(pth)
    return pth


def load_params(path=None, *, allow_download: bool = False) -> dict:
    """pytorch-fid's InceptionV3 weights as flax variables {'params', 'batch_stats'}, from `weights_file`'s file; a
    .pth in the cache dir is converted once to an .npz beside it. ValueError when a file's sha256 or contents are
    wrong. torch is not needed."""
    file = weights_file(path, allow_download=allow_download)
    if file.suffix == ".npz":
        return _from_npz(file)
    variables, digest = _from_pth(file)
    if file.parent == cache_dir():  # the cache dir's .pth: its conversion is cached beside it
        npz = file.with_name(f"{WEIGHTS_NAME}.npz")
        try:
            save_npz(variables, npz, digest)
        except OSError as e:
            print(f"Could not cache the converted Inception weights at {npz} ({e}); the .pth is read each time",
                  file=sys.stderr)
    return variables


# -------------------------------------------------------------------------------------------- feature extraction


def make_extractor(variables, mesh: jax.sharding.Mesh):
    """fn(uint8 images [B, H, W, 1 or 3]) -> {'pool': [B, 2048], 'logits': [B, 1008]} float32 jax arrays.

    B must divide by the mesh's device count; a host array is sharded over the 'data' axis (`parallel.put_batch`),
    a jax.Array is taken as it is. Preprocessing compiles per image shape, the network once per B; the outputs are
    replicated, so every process can read them."""
    model = InceptionV3()
    on_mesh = parallel.put_replicated(variables, mesh)
    prep = jax.jit(preprocess, out_shardings=NamedSharding(mesh, P(parallel.AXIS)))

    @functools.partial(jax.jit, out_shardings=parallel.replicated(mesh))
    def net(v, x):
        pool, logits = model.apply(v, x)
        return {"pool": pool, "logits": logits}

    def fn(images):
        check_images(images)
        if not isinstance(images, jax.Array):
            parallel.check_batch(images.shape[0], mesh, "the Inception batch")
            images = parallel.put_batch(np.asarray(images), mesh)
        return net(on_mesh, prep(images))

    return fn


def extract(fn, images: np.ndarray, *, batch_size: int, mesh, desc: str = "features",
            progress: bool = True) -> dict[str, np.ndarray]:
    """Features of host uint8 images [N, H, W, 1 or 3]: {'pool': [N, 2048], 'logits': [N, 1008]} float32 numpy.

    Runs `fn` (from make_extractor) over batches of `batch_size` rounded up to a multiple of the device count; the
    last batch is padded to the same size (one compilation) and the padding dropped. A tqdm bar on process 0 when
    `progress` and stderr is a terminal (as the training bar: tqdm's redraws, \r, would bury a log file under nohup
    or a scheduler)."""
    check_images(images)
    n, devices = len(images), mesh.size
    out = {"pool": [np.zeros((0, 2048), np.float32)], "logits": [np.zeros((0, 1008), np.float32)]}
    b = -(-min(batch_size, max(n, 1)) // devices) * devices
    with tqdm(total=n, desc=desc, unit="img", leave=False,
              disable=not (progress and sys.stderr.isatty()) or jax.process_index() != 0) as bar:

        def batch(start):
            chunk = np.asarray(images[start:start + b])
            k = len(chunk)
            if k < b:
                chunk = np.concatenate([chunk, np.zeros((b - k, *chunk.shape[1:]), np.uint8)])
            return fn(chunk), k

        def collect(job):
            res, k = job
            for name in out:
                out[name].append(np.asarray(res[name])[:k])
            bar.update(k)

        parallel.one_behind((batch(start) for start in range(0, n, b)), collect)
    return {name: np.concatenate(parts) for name, parts in out.items()}


# ---------------------------------------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxgen.evaluation.inception", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="where the weights are looked for, and whether they are found")
    conv = sub.add_parser("convert", help="convert pytorch-fid's .pth to jaxgen's .npz once (torch not needed)")
    conv.add_argument("src", help=f"{WEIGHTS_NAME}.pth")
    conv.add_argument("dst", nargs="?", help=f"the .npz to write (default: {cache_dir() / (WEIGHTS_NAME + '.npz')})")
    sub.add_parser("download", help=f"download the .pth into {cache_dir()} (checks its sha256) and convert it")
    args = parser.parse_args(argv)
    if args.command in ("convert", "download"):
        try:
            if args.command == "convert":
                variables, digest = _from_pth(Path(args.src))
                dst = save_npz(variables, args.dst or cache_dir() / f"{WEIGHTS_NAME}.npz", digest)
                print(f"{args.src} (sha256 {digest}) -> {dst}")
            else:
                load_params(allow_download=True)
                print(f"Inception weights ready in {cache_dir()}")
        except (OSError, ValueError) as e:  # a missing, unreadable or wrong file; no network: the message says it
            print(f"{args.command} failed: {e}", file=sys.stderr)
            return 1
        return 0
    print(f"Lookup order: the explicit path (config `{CONFIG_FIELD}`), ${ENV_WEIGHTS} = "
          f"{os.environ.get(ENV_WEIGHTS) or '(not set)'}, then the cache dir {cache_dir()} "
          f"(${ENV_CACHE} = {os.environ.get(ENV_CACHE) or '(not set)'}):")
    for p in (cache_dir() / f"{WEIGHTS_NAME}.npz", cache_dir() / f"{WEIGHTS_NAME}.pth"):
        print(f"  {p}: {'present' if p.is_file() else 'missing'}")
    try:
        load_params()
    except (FileNotFoundError, ValueError) as e:
        print(f"Not usable: {e}")
        return 1
    print("Weights found and valid.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
