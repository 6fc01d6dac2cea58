"""The Inception feature extractor against pytorch-fid's own model (same random weights, resize included), the
torch-free .pth reader, the weight lookup (hash check, missing-file message, cache, download switch) and bad input.

Nothing here downloads: the download path is exercised with a file:// URL."""

import hashlib
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jaxgen import parallel
from jaxgen.evaluation import inception, inception_net
from tests.conftest import pytorch_fid

RNG = np.random.default_rng(0)


def _pytorch_fid():
    return pytorch_fid("inception")


def _to_torch(variables) -> dict[str, np.ndarray]:
    """flax variables -> a state dict named and laid out as pytorch-fid's .pth (num_batches_tracked included)."""
    sd = {}
    for (*mods, leaf), a in traverse_util.flatten_dict(variables["params"]).items():
        a, name = np.asarray(a), ".".join(mods)
        if mods == ["fc"]:
            sd[f"fc.{'weight' if leaf == 'kernel' else 'bias'}"] = a.T if leaf == "kernel" else a
        elif leaf == "kernel":
            sd[f"{name}.weight"] = a.transpose(3, 2, 0, 1)
        else:
            sd[f"{name}.{'weight' if leaf == 'scale' else 'bias'}"] = a
    for (*mods, leaf), a in traverse_util.flatten_dict(variables["batch_stats"]).items():
        name = ".".join(mods)
        sd[f"{name}.running_{leaf}"] = np.asarray(a)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)
    return sd


@pytest.fixture(scope="module")
def weights():
    variables = inception.random_params(1)
    return variables, _to_torch(variables)


@pytest.fixture(scope="module")
def reference(weights):
    """pytorch-fid's InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True) holding the
    random weights: its weight download is replaced by the state dict (loaded strictly, so every name must match)."""
    torch, fid = _pytorch_fid()
    sd = {k: torch.from_numpy(v.copy()) for k, v in weights[1].items()}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fid, "load_state_dict_from_url", lambda *a, **k: sd)
        model = fid.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=True).eval()

    def run(images):
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1) / 255  # PIL's convert('RGB')
        with torch.no_grad():
            pool = model(x)[0][:, :, 0, 0]
            logits = torch.nn.functional.linear(pool, sd["fc.weight"], sd["fc.bias"])  # pytorch-fid's fc
        return {"pool": pool.numpy(), "logits": logits.numpy()}

    return run


@pytest.fixture(scope="module")
def extractor(weights):
    mesh = parallel.make_mesh()
    return inception.make_extractor(weights[0], mesh), mesh


def _rel(ours, ref):
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def test_the_state_dict_converts_to_the_flax_variables(weights):
    variables, sd = weights
    got = traverse_util.flatten_dict(inception.convert_torch_state_dict(sd))
    want = traverse_util.flatten_dict(variables)
    assert got.keys() == want.keys() and len(sd) == 566  # 94 conv+bn blocks (6 entries each) and the fc
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    with pytest.raises(ValueError, match="missing params/Mixed_7c/branch_pool/conv/kernel"):
        inception.convert_torch_state_dict({k: v for k, v in sd.items() if k != "Mixed_7c.branch_pool.conv.weight"})


@pytest.mark.parametrize("shape", [(2, 28, 28, 1), (1, 320, 320, 3), (1, 512, 384, 3), (1, 299, 299, 3)])
def test_preprocess_is_torch_bilinear_without_antialias(shape):
    torch = pytest.importorskip("torch")
    images = RNG.integers(0, 256, shape, dtype=np.uint8)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().expand(-1, 3, -1, -1) / 255
    ref = 2 * torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False) - 1
    ours = np.asarray(jax.jit(inception_net.preprocess)(images))
    assert ours.shape == (shape[0], 299, 299, 3)
    np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), rtol=0, atol=2e-6)


@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (2, 320, 320, 3)], ids=["upsample", "downsample"])
def test_features_equal_pytorch_fids(shape, reference, extractor):
    images = RNG.integers(0, 256, shape, dtype=np.uint8)
    fn, mesh = extractor
    ours = inception.extract(fn, images, batch_size=8, mesh=mesh)
    ref = reference(images)
    assert ours["pool"].shape == (shape[0], 2048) and ours["logits"].shape == (shape[0], 1008)
    assert ours["pool"].dtype == ours["logits"].dtype == np.float32
    errors = {k: _rel(ours[k], ref[k]) for k in ("pool", "logits")}
    print(f"max relative error vs pytorch-fid, {shape}: {errors}")
    assert errors["pool"] < 1e-4 and errors["logits"] < 1e-4
    assert np.abs(ref["pool"]).max() > 0.1 and np.std(ref["logits"]) > 0.05  # the random net is not degenerate


def test_extract_batches_pads_and_keeps_order():
    mesh = parallel.make_mesh()
    calls = []

    def fake(images):  # row i's features are its first pixel: checks order, padding and shapes without Inception
        calls.append(images.shape)
        v = jnp.asarray(images[:, 0, 0, 0], jnp.float32)
        return {"pool": jnp.tile(v[:, None], (1, 2048)), "logits": jnp.tile(v[:, None], (1, 1008))}

    images = np.zeros((21, 4, 4, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(1, 22)
    out = inception.extract(fake, images, batch_size=10, mesh=mesh)
    n = jax.device_count()
    b = -(-10 // n) * n
    assert calls == [(b, 4, 4, 1)] * -(-21 // b)  # one batch shape, so one compilation
    np.testing.assert_array_equal(out["pool"][:, 0], np.arange(1, 22))
    assert out["logits"].shape == (21, 1008)
    assert inception.extract(fake, images[:0], batch_size=10, mesh=mesh)["pool"].shape == (0, 2048)


@pytest.mark.parametrize("bad, match", [
    (np.zeros((28, 28, 1), np.uint8), r"uint8 images \[N, H, W, C\].*got shape \(28, 28, 1\)"),
    (np.zeros((2, 28, 28, 4), np.uint8), "got 4 channels"),
    (np.zeros((2, 28, 28, 3), np.float32), r"got dtype float32.*np.clip\(np.round\(x \* 255\), 0, 255\)"),
])
def test_bad_images_are_a_clear_error(bad, match, extractor):
    fn, mesh = extractor
    with pytest.raises(ValueError, match=match):
        inception_net.preprocess(bad)
    with pytest.raises(ValueError, match=match):
        inception.extract(fn, bad, batch_size=8, mesh=mesh)


def _save(torch, sd, path, **kw):
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path, **kw)
    return path


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_pth_reader_reads_what_torch_saved(zip_format, tmp_path):
    torch = pytest.importorskip("torch")
    base = torch.randn(6, 4, dtype=torch.float64)
    sd = {"w": torch.randn(3, 2, 5, 5), "t": base.t(), "slice": base[2:4], "steps": torch.tensor(12),
          "mask": torch.rand(7) > 0.5, "half": torch.randn(3).half(), "bf16": torch.randn(4).bfloat16()}
    path = tmp_path / "sd.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    got = inception.read_torch_state_dict(path)
    assert got.keys() == sd.keys()
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k].astype(np.float64), v.double().numpy(), err_msg=k)
        assert got[k].shape == tuple(v.shape)
    assert got["steps"].dtype == np.int64 and got["mask"].dtype == np.bool_ and got["half"].dtype == np.float16


def test_pth_reader_runs_no_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return os.system, ("echo pwned",)

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        inception.read_torch_state_dict(path)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(inception.ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    return tmp_path / "cache" / "inception"


def test_missing_weights_say_where_to_put_them(cache):
    with pytest.raises(inception.WeightsNotFoundError) as e:
        inception.load_params()
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    for needed in (str(cache / f"{inception.WEIGHTS_NAME}.pth"), inception.WEIGHTS_URL, inception.ENV_WEIGHTS,
                   inception.CONFIG_FIELD, "python -m jaxgen.evaluation.inception download",
                   "--config.eval.inception_download=True"):
        assert needed in msg
    assert not cache.exists()  # no download was tried
    with pytest.raises(inception.WeightsNotFoundError, match="nowhere.pth does not exist"):
        inception.load_params(cache / "nowhere.pth")


@pytest.mark.parametrize("config", ["gan_mnist", "vae_mnist"])
def test_a_run_checks_for_the_weights_before_it_loads_any_data(cache, config, tmp_path, monkeypatch):
    """eval.extractors with 'inception' and no weights: the run stops before reading its dataset (a first run on a
    large image folder decoded all of it, then stopped), and downloads nothing when inception_download is off."""
    from jaxgen import data
    from jaxgen.training import loop
    from tests.conftest import CONFIGS, config_module

    c = config_module(CONFIGS / f"{config}.py").get_config("smoke")
    c.unlock()
    c.eval.extractors, c.eval.inception_download = ("inception",), False
    monkeypatch.setattr(data, "load_splits", lambda *a: pytest.fail("the data loaded before the weights' check"))
    with pytest.raises(inception.WeightsNotFoundError, match="no download was asked for"):
        loop.build_task(c, tmp_path / "run")
    c.eval.inception_weights = str(tmp_path / "mine.pth")
    with pytest.raises(inception.WeightsNotFoundError, match="mine.pth does not exist"):
        loop.build_task(c, tmp_path / "run")
    assert not cache.exists()


def test_a_file_with_the_wrong_hash_is_refused(cache, weights):
    torch = pytest.importorskip("torch")
    cache.mkdir(parents=True)
    path = _save(torch, weights[1], cache / "other.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match=f"sha256 is {digest}, expected one starting with {inception.SHA256_PREFIX}"):
        inception.load_params(path)


def test_weights_are_converted_once_and_reused(cache, weights, monkeypatch, capsys):
    torch = pytest.importorskip("torch")
    variables, sd = weights
    cache.mkdir(parents=True)
    pth = _save(torch, sd, cache / f"{inception.WEIGHTS_NAME}.pth")
    monkeypatch.setattr(inception, "SHA256_PREFIX", hashlib.sha256(pth.read_bytes()).hexdigest()[:8])

    def same(v):
        a, b = traverse_util.flatten_dict(v), traverse_util.flatten_dict(variables)
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    assert same(inception.load_params())  # from the .pth, written to the .npz
    npz = cache / f"{inception.WEIGHTS_NAME}.npz"
    pth.unlink()
    assert npz.is_file() and same(inception.load_params()) and same(inception.load_params(npz))
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(npz))
    assert same(inception.load_params())
    assert inception.main(["check"]) == 0 and "Weights found and valid" in capsys.readouterr().out
    other = cache.parent / "x.npz"
    inception.save_npz(variables, other, "0" * 64)  # not converted from the pinned file
    with pytest.raises(ValueError, match="is not a conversion of pytorch-fid's weights"):
        inception.load_params(other)


def test_cli_convert_and_the_download_switch(cache, weights, monkeypatch, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    src = _save(torch, weights[1], tmp_path / "served.pth")
    monkeypatch.setattr(inception, "WEIGHTS_URL", src.as_uri())  # a local "download": no network in tests
    assert inception.main(["convert", str(src), str(tmp_path / "out.npz")]) == 1  # the message, no traceback
    err = capsys.readouterr().err
    assert err.startswith("convert failed: ") and "expected one starting with" in err
    assert inception.main(["convert", str(tmp_path / "missing.pth")]) == 1
    assert "No such file" in capsys.readouterr().err
    with pytest.raises(ValueError, match="expected one starting with"):
        inception.load_params(allow_download=True)
    assert list(cache.iterdir()) == []  # the refused download left nothing behind
    monkeypatch.setattr(inception, "SHA256_PREFIX", hashlib.sha256(src.read_bytes()).hexdigest()[:8])
    assert inception.main(["convert", str(src), str(tmp_path / "out.npz")]) == 0
    assert (tmp_path / "out.npz").is_file()
    inception.load_params(allow_download=True)
    assert sorted(p.name for p in cache.iterdir()) == [f"{inception.WEIGHTS_NAME}.npz", f"{inception.WEIGHTS_NAME}.pth"]


def test_a_failed_download_is_a_clear_error_that_leaves_nothing(cache, monkeypatch, tmp_path):
    monkeypatch.setattr(inception, "WEIGHTS_URL", (tmp_path / "nowhere.pth").as_uri())  # fails like an offline host
    with pytest.raises(inception.WeightsNotFoundError, match=r"(?s)the download failed .*eval.extractors"):
        inception.load_params(allow_download=True)
    assert list(cache.iterdir()) == []


def test_the_feature_bar_writes_nothing_into_a_log_that_is_not_a_terminal(capfd):
    """extract's tqdm bar only on a terminal: its redraws (\\r) would fill a log file under nohup or a scheduler."""
    def fn(chunk):
        return {"pool": np.zeros((len(chunk), 2048), np.float32), "logits": np.zeros((len(chunk), 1008), np.float32)}

    images = np.zeros((10, 8, 8, 3), np.uint8)
    out = inception.extract(fn, images, batch_size=4, mesh=parallel.make_mesh(jax.devices()[:1]), progress=True)
    assert out["pool"].shape == (10, 2048)
    err = capfd.readouterr().err
    assert "\r" not in err and "features" not in err
