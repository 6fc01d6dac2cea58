"""Datasets: the shipped digits offline, the TFDS path under tfds.testing.mock_data, the on-device batches."""

import time
from pathlib import Path
from urllib.parse import urlsplit

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import data
from jaxgen.data import device as dev
from jaxgen.data import tfds_source
from tests.conftest import started_together


def _cfg(**kw):
    c = ml_collections.ConfigDict({"name": "mnist_5k", "data_dir": "", "num_examples": 0, "image_shape": (28, 28, 1),
                                   "download": True})
    c.update(kw)
    return c


def test_mnist_5k_offline_shapes_labels_balance_and_fixed_split():
    train, test = data.load(_cfg(), "train"), data.load(_cfg(), "test")
    assert train.image.shape == (4000, 28, 28, 1) and train.image.dtype == np.uint8
    assert test.image.shape == (1000, 28, 28, 1)
    assert np.all(np.bincount(train.label) == 400) and np.all(np.bincount(test.label) == 100)
    assert train.image.max() == 255 and train.image.min() == 0
    # Real digits: about a fifth of the pixels are ink, and the mean digit differs by class.
    assert 0.1 < np.mean(train.image > 127) < 0.3
    # Disjoint and deterministic.
    flat = lambda d: {bytes(x) for x in d.image.reshape(len(d), -1)}  # noqa: E731
    assert not flat(train) & flat(test)
    np.testing.assert_array_equal(data.load(_cfg(), "train").image, train.image)
    with pytest.raises(ValueError, match="splits 'train' and 'test', not 'validation'; a 'validation' split is held "
                                         "out of 'train' by data.validation_examples=N"):
        data.load(_cfg(), "validation")


def test_unknown_dataset_lists_the_choices():
    choices = "celeb_a, cifar10, fashion_mnist, image_folder, mnist, mnist_5k"
    with pytest.raises(ValueError, match=f"unknown dataset 'mnsit'; choices: {choices}"):
        data.load(_cfg(name="mnsit"), "train")


def test_images_in_the_wrong_layout_or_range_are_named(caplog):
    import logging

    label = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"C = 1 \(grey\) or 3 \(RGB\), got \(4, 1, 28, 28\); channels-first images "
                                         r"\[N, C, H, W\] need np.transpose\(images, \(0, 2, 3, 1\)\)"):
        data.ImageData(np.zeros((4, 1, 28, 28), np.uint8), label, "mine", "train")
    with pytest.raises(ValueError, match="drop the alpha channel"):
        data.ImageData(np.zeros((4, 8, 8, 4), np.uint8), label, "mine", "train")
    with pytest.raises(ValueError, match=r"got uint8 \(4, 8, 8\); grey images \[N, H, W\] need a channel axis"):
        data.ImageData(np.zeros((4, 8, 8), np.uint8), label, "mine", "train")
    with pytest.raises(ValueError, match=r"got int64 .* need images\.astype\(np\.uint8\)"):
        data.ImageData(np.zeros((4, 8, 8, 1), np.int64), label, "mine", "train")
    with pytest.raises(ValueError, match=r"got float32 .* need np\.round\(images \* 255\)\.astype\(np\.uint8\)"):
        data.ImageData(np.zeros((4, 8, 8, 1), np.float32), label, "mine", "train")
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        data.ImageData(np.ones((4, 8, 8, 1), np.uint8), label, "mine", "train")
    assert "pixels of its first images are all 0 or 1, where jaxgen expects 0-255" in caplog.text


def test_tfds_path_under_mock_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "can_reach", lambda host, port=443: pytest.fail("no network in tests"))
    monkeypatch.setattr(tfds_source, "has_tensorflow", lambda: True)
    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOSTS", {})
    with tfds.testing.mock_data(num_examples=24):
        d = data.load(_cfg(name="mnist", data_dir=str(tmp_path)), "train")
        c = data.load(_cfg(name="cifar10", data_dir=str(tmp_path)), "test")
    assert d.image.shape == (24, 28, 28, 1) and d.image.dtype == np.uint8 and d.label.shape == (24,)
    assert c.image.shape == (24, 32, 32, 3)
    # mock_data's random records are not cached: a later real run would have read them as MNIST.
    assert not (tmp_path / "jaxgen_cache" / "mnist" / "train.npz").exists()


def _stand_in_mnist(tfds):
    """A builder named mnist that prepares 12 train and 5 test digits of its own (array_record, no TensorFlow):
    the real read path, offline."""
    with tfds.core.registered.skip_registration():
        class Mnist(tfds.core.GeneratorBasedBuilder):
            VERSION = tfds.core.Version("3.0.1")
            name = "mnist"

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                    "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10)}))

            def _split_generators(self, dl_manager):
                return {"train": self._generate_examples(12), "test": self._generate_examples(5)}

            def _generate_examples(self, n):
                for i in range(n):
                    yield i, {"image": np.full((28, 28, 1), i, np.uint8), "label": i % 10}
    return Mnist


def test_a_prepared_tfds_split_is_cached_and_a_torn_cache_is_read_again(tmp_path, monkeypatch, caplog):
    import logging

    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOSTS", {})
    monkeypatch.setattr(tfds_source, "has_tensorflow", lambda: True)
    mnist = _stand_in_mnist(tfds)
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None, file_format=None: mnist(
        data_dir=data_dir, file_format=file_format))
    cfg = _cfg(name="mnist", data_dir=str(tmp_path))
    d = data.load(cfg, "train")
    assert d.image.shape == (12, 28, 28, 1) and sorted(d.image[:, 0, 0, 0].tolist()) == list(range(12))
    cache = tmp_path / "jaxgen_cache" / "mnist" / "train.npz"
    assert cache.exists()
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: pytest.fail("the cache is read without TFDS"))
    np.testing.assert_array_equal(data.load(cfg, "train").image, d.image)
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])  # a copy cut short
    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None, file_format=None: mnist(
        data_dir=data_dir, file_format=file_format))
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        np.testing.assert_array_equal(data.load(cfg, "train").image, d.image)
    assert "cannot be read" in caplog.text and "reading the dataset again" in caplog.text
    with np.load(cache) as z:  # written whole again
        np.testing.assert_array_equal(z["image"], d.image)
    cache.unlink()  # mock_data where the dataset is prepared: its random records are not cached either
    with tfds.testing.mock_data(num_examples=3, data_dir=str(tmp_path)):  # its metadata: the prepared dataset's
        assert len(data.load(cfg, "train")) == 3
    assert not cache.exists()


def test_jobs_started_together_on_a_new_data_dir_prepare_a_tfds_dataset_once(tmp_path, monkeypatch, caplog):
    """A sweep started on a data dir without the dataset: the first job prepares it under a lock, the others wait
    for it (TFDS alone would download it in every job)."""
    import logging
    import time

    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds_source, "DOWNLOAD_HOSTS", {})
    monkeypatch.setattr(tfds_source, "has_tensorflow", lambda: True)
    mnist, prepared = _stand_in_mnist(tfds), []

    class Slow(mnist):
        def download_and_prepare(self, **kwargs):
            prepared.append(1)
            time.sleep(0.5)  # long enough for the other job to find the lock taken
            return super().download_and_prepare(**kwargs)

    monkeypatch.setattr(tfds, "builder", lambda name, data_dir=None, file_format=None: Slow(
        data_dir=data_dir, file_format=file_format))
    cfg = _cfg(name="mnist", data_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        got = started_together(lambda: data.load(cfg, "train"))
    assert len(prepared) == 1 and len(got) == 2 and "Another process is preparing TFDS mnist" in caplog.text
    np.testing.assert_array_equal(got[0].image, got[1].image)


def test_a_dataset_prepared_as_tfrecord_names_the_conversion(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def builder(name, data_dir=None, file_format=None):
        raise ValueError(f'Failed to construct dataset "{name}": File format is already set to FileFormat.TFRECORD. '
                         f'Got FileFormat.ARRAY_RECORD')

    monkeypatch.setattr(tfds, "builder", builder)
    with pytest.raises(tfds_source.DatasetUnavailableError, match=r"(?s)'mnist' is prepared in .* in another file "
                                                                  r"format than the array_record jaxgen reads.*"
                                                                  r"tfds convert_format --dataset_version_dir=.*/mnist/"
                                                                  r"<version> --out_file_format=array_record "
                                                                  r"--out_dir=NEWDIR/mnist/<version>\n  then run with "
                                                                  r"--config.data.data_dir=NEWDIR"):
        data.load(_cfg(name="mnist", data_dir=str(tmp_path)), "train")


def test_the_offline_probe_goes_through_a_proxy(monkeypatch):
    """TFDS downloads through $HTTPS_PROXY: probing the host directly refused downloads that would work."""
    tried = []

    class Connection:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(tfds_source.socket, "create_connection",
                        lambda addr, timeout: tried.append(addr) or Connection())
    for name in ("https_proxy", "NO_PROXY", "no_proxy"):  # lowercase wins over HTTPS_PROXY where set
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert tfds_source.can_reach("storage.googleapis.com", 443)
    monkeypatch.delenv("HTTPS_PROXY")
    monkeypatch.delenv("https_proxy", raising=False)
    assert tfds_source.can_reach("storage.googleapis.com", 443)
    assert tried == [("proxy.example", 3128), ("storage.googleapis.com", 443)]


def test_tfds_offline_fails_fast_naming_the_dataset_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "can_reach", lambda host, port=443: False)
    t = time.perf_counter()
    with pytest.raises(tfds_source.DatasetUnavailableError) as e:
        data.load(_cfg(name="mnist", data_dir=str(tmp_path)), "train")
    assert time.perf_counter() - t < 30
    msg = str(e.value)
    assert "'mnist' is not prepared in" in msg and "download_and_prepare" in msg and "mnist_5k" in msg
    with pytest.raises(tfds_source.DatasetUnavailableError) as e:  # colour 32x32: not the shipped digits
        data.load(_cfg(name="cifar10", data_dir=str(tmp_path)), "train")
    assert "mnist_5k" not in str(e.value) and "--config.data.name=synthetic --config.data.image_shape='(32, 32, 3)'" \
        in str(e.value)


def test_data_dir_none_is_refused_naming_the_default(tmp_path, monkeypatch):
    """--config.data.data_dir=None sets the string 'None': without the check, caches land in a folder 'None'."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"data\.data_dir='None' would be a folder.*--config\.data\.data_dir=''"):
        data.load(_cfg(name="mnist", data_dir="None"), "train")
    assert not (tmp_path / "None").exists()


def test_a_url_data_dir_is_refused_naming_where_it_came_from(tmp_path, monkeypatch):
    """Path('gs://b/d') is the relative path 'gs:/b/d': without the check, TFDS would prepare under the cwd."""
    with pytest.raises(ValueError, match=r"data\.data_dir=gs://bucket/tfds is a URL.*mount the bucket"):
        data.load(_cfg(name="mnist", data_dir="gs://bucket/tfds"), "train")
    monkeypatch.setenv("TFDS_DATA_DIR", "gs://bucket/env")
    with pytest.raises(ValueError, match=r"\$TFDS_DATA_DIR=gs://bucket/env is a URL"):
        data.load(_cfg(name="mnist"), "train")
    assert not Path("gs:").exists()
    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.vae_config()  # the shipped mnist_5k reads no data dir, but jaxgen's caches live there
    with pytest.raises(ValueError, match=r"\$TFDS_DATA_DIR=gs://bucket/env is a URL"):
        config_check.check(c)  # at the config check, before any work (it came after the run had started)


def test_download_probe_uses_each_datasets_host_and_port(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    probed = []
    monkeypatch.setattr(tfds_source, "can_reach", lambda host, port=443: probed.append((host, port)) or False)
    with pytest.raises(tfds_source.DatasetUnavailableError, match=r"no connection to fashion-mnist\..*\.com:80\)"):
        data.load(_cfg(name="fashion_mnist", data_dir=str(tmp_path)), "train")
    assert probed == [("fashion-mnist.s3-website.eu-central-1.amazonaws.com", 80)]  # S3 website: http only
    # The table matches the URLs the installed TFDS downloads from (read from its checksum files, no network).
    for name, (host, port) in tfds_source.DOWNLOAD_HOSTS.items():
        urls = {urlsplit(u) for u in tfds.builder_cls(name).url_infos}
        assert {(u.hostname, {"http": 80, "https": 443}[u.scheme]) for u in urls} == {(host, port)}, name


@pytest.mark.parametrize("n", [1, 2, 5, 100, 1000, 4097, 60000])
def test_random_bijection_is_a_permutation(n):
    # one program: outside jit each op of the rounds is one (~20 for each n)
    perm = np.asarray(jax.jit(lambda key: dev.random_bijection(key, jnp.arange(n), n))(jax.random.key(3)))
    assert sorted(perm) == list(range(n))
    if n >= 100:  # and a shuffle: few fixed points, no long runs of the identity
        assert np.mean(perm == np.arange(n)) < 0.05
        assert abs(np.corrcoef(perm, np.arange(n))[0, 1]) < 4 / np.sqrt(n)  # 4 sigma of a random permutation


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_random_bijection_draws_every_permutation_of_a_small_n_alike(n):
    """Swap-or-not mixes slowly at small n (3 rounds at n = 2 swapped 44% of the time): at least MIN_ROUNDS rounds.
    Over 6000 keys each of the n! permutations appears as often as a uniform draw allows (chi-square)."""
    import itertools

    from scipy import stats

    keys = jax.random.split(jax.random.key(0), 6000)
    perms = np.asarray(jax.jit(jax.vmap(lambda k: dev.random_bijection(k, jnp.arange(n), n)))(keys))  # one program
    index = {p: i for i, p in enumerate(itertools.permutations(range(n)))}
    counts = np.bincount([index[tuple(p)] for p in perms], minlength=len(index))
    assert stats.chisquare(counts).pvalue > 1e-3, counts


def test_random_flip_mirrors_each_example_with_its_own_key():
    x = jnp.asarray(np.random.default_rng(0).integers(0, 256, (400, 5, 7, 1), np.uint8))
    keys = jax.random.split(jax.random.key(1), 400)
    out = np.asarray(dev.random_flip(x, keys))
    mirrored = np.array([np.array_equal(o, np.asarray(xi)[:, ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, np.asarray(xi)) for o, xi in zip(out, x)])
    assert (mirrored | kept).all() and 160 < mirrored.sum() < 240  # about half, each a whole mirror image
    np.testing.assert_array_equal(dev.random_flip(x, keys), out)  # the key decides


def test_the_batch_draw_has_no_data_dependent_loop():
    """On GPUs XLA reads a while loop's condition back to the host on every iteration (a stall each step)."""
    jaxpr = str(jax.make_jaxpr(lambda k, s: dev.batch_indices(k, s, 60000, 128, jnp.arange(128)))(jax.random.key(0), 3))
    assert "while" not in jaxpr


def test_on_a_cpu_the_gather_of_the_batch_does_not_compute_its_indices_again_for_every_pixel():
    """XLA:CPU fused the bijection's rounds into the gather that reads the batch, and its elemental emitters without
    LLVM's optimisation (the tests' flags) ran them for every pixel: 32 CIFAR-10 images 7.7 ms a step, 0.25 ms with
    the indices computed once (benchmarks/batch_gather.py)."""
    import re

    if jax.default_backend() != "cpu":
        pytest.skip("GPUs keep the fused form, which their benchmarks measured")
    draw = jax.jit(lambda images, key, step: images[dev.batch_indices(key, step, 256, 32, jnp.arange(32))])
    hlo = draw.lower(jnp.zeros((256, 4, 4, 3), jnp.uint8), jax.random.key(0), 3).compile().as_text()
    gathers = [c for c in re.split(r"\n(?=\S)", hlo) if " gather(" in c]  # the computations that gather
    assert gathers and not any(" xor(" in c for c in gathers)  # each round of the bijection xors


def test_batches_are_epochs_of_permutations():
    key = jax.random.key(0)
    n, b = 105, 20  # 5 steps an epoch, 5 examples dropped
    pos = jnp.arange(b)
    # the step traced, as in the train step: one program a positions' shape (outside jit, one per op and step)
    batch_indices = jax.jit(dev.batch_indices, static_argnums=(2, 3))
    seen = np.concatenate([np.asarray(batch_indices(key, s, n, b, pos)) for s in range(5)])
    assert len(set(seen)) == 100 and seen.max() < n  # one epoch = each example at most once
    nxt = np.concatenate([np.asarray(batch_indices(key, s, n, b, pos)) for s in range(5, 10)])
    assert len(set(nxt)) == 100 and not np.array_equal(seen, nxt)  # reshuffled next epoch
    np.testing.assert_array_equal(batch_indices(key, 3, n, b, pos), batch_indices(key, 3, n, b, pos))
    # A device that holds positions 10..19 gets exactly the second half of the global batch.
    np.testing.assert_array_equal(batch_indices(key, 3, n, b, pos[10:]), batch_indices(key, 3, n, b, pos)[10:])


def test_dynamic_binarization_happens_on_device_from_uint8():
    img = np.full((2, 4, 4, 1), 128, np.uint8)
    keys = jax.random.split(jax.random.key(0), 2)
    x = np.asarray(dev.preprocess(img, keys, "dynamic"))
    assert set(np.unique(x)) <= {0.0, 1.0}
    np.testing.assert_allclose(np.asarray(dev.preprocess(img, keys, "none")), 128 / 255, rtol=1e-6)


def test_importing_jaxgen_and_writing_metrics_import_neither_tensorflow_nor_tfds_nor_torch(tmp_path):
    """TensorFlow and TFDS load only where data is prepared or read (scikit-learn only where a latent mixture is
    fit). tensorboardX imports torch wherever it is installed (2 s per run); the metric writer keeps it out, and a
    torch imported afterwards still loads."""
    import subprocess
    import sys

    code = ("import sys, importlib.util, jaxgen, jaxgen.training.loop, jaxgen.data\n"
            "from jaxgen.reporting.writer import MetricWriter\n"
            f"w = MetricWriter({str(tmp_path)!r}, enabled=True)\n"
            "w.write(1, 'train', {'loss': 1.0}); w.close()\n"
            "print(sorted(m for m in ('tensorflow', 'tensorflow_datasets', 'torch', 'sklearn') if m in sys.modules))\n"
            "if importlib.util.find_spec('torch'):\n"
            "    import torch; torch.zeros(1)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_a_data_field_the_dataset_does_not_read_is_a_warning_and_no_shipped_config_sets_one(caplog):
    """--config.data.path=... on mnist_5k trains on mnist_5k: the config check says so, naming the datasets that
    read the field. A user's own dataset may read any field; every shipped config and variant sets only fields its
    dataset reads."""
    import glob
    import logging

    from jaxgen import config as config_lib
    from jaxgen import config_check
    from tests.conftest import config_module

    c = config_lib.gan_config()
    c.data.path, c.data.resolution = "/data/faces", 32
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(c)
    assert ("The dataset 'mnist_5k' does not read data.path='/data/faces' (read by image_folder, celeb_a); "
            "data.resolution=32 (read by image_folder, celeb_a): the run uses mnist_5k as it is (a folder of images: "
            "--config.data.name=image_folder)") in caplog.text
    c.data.name = "image_folder"
    assert data.unread_fields(c.data, config_lib.gan_config().data) == []
    c.data.name, c.data.image_shape = "myproject.faces:load", (8, 8, 3)
    assert data.unread_fields(c.data, config_lib.gan_config().data) == []
    c.data.name = "image_folder"  # gan_celeba.py:smoke's image_shape, with a folder named instead of its synthetic
    assert data.unread_fields(c.data, config_lib.gan_config().data) == [
        "data.image_shape=(8, 8, 3) (read by synthetic, for which the smoke variants set it)"]
    for path in sorted(glob.glob(str(Path(__file__).resolve().parent.parent / "configs" / "*.py"))):
        module = config_module(path)
        for variant in ("", *module.VARIANTS):
            c = module.get_config(variant)
            base = {"vae": config_lib.vae_config, "gan": config_lib.gan_config}[c.task]().data
            assert data.unread_fields(c.data, base) == [], (path, variant)


def test_synthetic_labels_are_brightness_deciles_so_the_classifier_has_something_to_learn():
    """With labels drawn apart from the images, the classifier extractor learned nothing on `synthetic`, and every
    model's classifier FID there was ~0.05."""
    cfg = _cfg(name="synthetic", num_examples=200, image_shape=(8, 8, 1))
    d = data.load(cfg, "train")
    brightness = d.image.reshape(len(d), -1).mean(1)
    assert np.bincount(d.label).tolist() == [20] * 10
    for k in range(9):  # each decile's images are darker than the next one's
        assert brightness[d.label == k].max() <= brightness[d.label == k + 1].min()
