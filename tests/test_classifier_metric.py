"""The offline classifier metric tells real digits from noise and from a generator that draws only one class."""

import numpy as np
import pytest

from jaxgen import data, parallel
from jaxgen.config import vae_config
from jaxgen.evaluation import classifier, quality
from tests.conftest import started_together


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cfg = vae_config()
    cfg.data.data_dir = str(tmp_path_factory.mktemp("data"))
    train, test = data.load(cfg.data, "train"), data.load(cfg.data, "test")
    params = classifier.load_or_train(cfg.data, train.image, train.label, steps=120)
    return cfg, train, test, params


def test_the_classifier_is_cached_and_reloaded(digits):
    cfg, train, _, params = digits
    again = classifier.load_or_train(cfg.data, train.image, train.label, steps=120)
    np.testing.assert_array_equal(np.asarray(again["params"]["Dense_1"]["kernel"]),
                                  np.asarray(params["params"]["Dense_1"]["kernel"]))


def test_jobs_started_together_train_the_classifier_once(tmp_path, monkeypatch, caplog):
    """A sweep's jobs on a new data dir: the first trains it, the others wait and read its cache (each trained it)."""
    import logging
    import time

    calls = []

    def slow_train(images, labels, *, steps):
        calls.append(steps)
        time.sleep(0.5)
        return {"params": {"Dense_1": {"bias": np.zeros(10, np.float32)}}}

    monkeypatch.setattr(classifier, "train", slow_train)
    cfg = vae_config()
    cfg.data.data_dir = str(tmp_path)
    images, labels = np.zeros((10, 28, 28, 1), np.uint8), np.arange(10)
    with caplog.at_level(logging.INFO, logger="jaxgen"):  # threads: each open() of the lock file is its own flock
        out = started_together(lambda: classifier.load_or_train(cfg.data, images, labels, steps=7), jobs=3)
    assert calls == [7] and len(out) == 3
    assert sum(r.getMessage().startswith("Another process is training the metric classifier") for r in caplog.records) \
        == 2


def test_real_digits_beat_noise_and_a_one_class_generator(digits):
    cfg, train, test, _ = digits
    cfg.eval.classifier_steps = 120  # the cached classifier of the fixture
    extractor = quality.build("classifier", cfg, parallel.make_mesh(), train)
    real, held_out = train.image[:1000], test.image[:1000]
    ref = quality.reference(extractor, real, data_config=cfg.data, split="train")
    noise = np.random.default_rng(0).integers(0, 256, (1000, 28, 28, 1), dtype=np.uint8)
    one_class = train.image[train.label == 1][:400]
    good, bad_noise, bad_mode = (quality.compare(extractor, ref, x, full=False, reference_name="train")
                                 for x in (held_out, noise, one_class))
    assert good["fid"] < 0.2 * bad_noise["fid"]
    assert good["fid"] < 0.5 * bad_mode["fid"]
    assert good["class_coverage"] == 1.0 and good["class_tv"] < 0.1
    assert bad_mode["class_coverage"] <= 0.2 and bad_mode["class_tv"] > 0.8


def test_embedding_pads_the_last_batch_and_compiles_once(digits):
    *_, test, params = digits
    whole, _ = classifier.embed(params, test.image[:70], batch=70)
    sizes = classifier._apply._cache_size()
    for n in (70, 65, 1):
        f, p = classifier.embed(params, test.image[:n], batch=32)
        assert f.shape == (n, 128) and p.shape == (n, 10)
        np.testing.assert_allclose(f, whole[:n], rtol=1e-5, atol=1e-5)
    assert classifier._apply._cache_size() == sizes + 1  # batch 32: one more program, whatever n


def test_images_out_of_range_are_an_error(digits):
    *_, params = digits
    with pytest.raises(ValueError, match=r"uint8 or floats in \[0, 1\]"):
        classifier.embed(params, np.full((2, 28, 28, 1), -1.0, np.float32))


def test_the_classifier_step_takes_the_dataset_as_an_argument_not_a_constant():
    """A step closing over the images would copy them into its compiled program (its size growing with the
    dataset's); as arguments, one program serves every dataset of that shape."""
    import jax
    import jax.numpy as jnp

    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4000, 28, 28, 1), np.uint8))  # 3.1 MB
    labels = jnp.zeros((4000,), jnp.int32)
    params = classifier.DigitClassifier(10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    opt = classifier._optimizer().init(params)
    text = classifier._train_step.lower(params, opt, images, labels, np.int32(0), np.int32(0),
                                        num_classes=10).as_text()
    assert len(text) < 1_000_000
