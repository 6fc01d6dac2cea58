"""The offline classifier metric tells real digits from noise and from a generator that draws only one class."""

import numpy as np
import pytest

from jaxgen import data
from jaxgen.config import vae_config
from jaxgen.evaluation import classifier


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cfg = vae_config()
    cfg.data.data_dir = str(tmp_path_factory.mktemp("data"))
    train, test = data.load(cfg.data, "train"), data.load(cfg.data, "test")
    params = classifier.load_or_train(cfg.data, train.image, train.label, steps=300)
    return cfg, train, test, params


def test_the_classifier_is_cached_and_reloaded(digits):
    cfg, train, _, params = digits
    again = classifier.load_or_train(cfg.data, train.image, train.label, steps=300)
    np.testing.assert_array_equal(np.asarray(again["params"]["Dense_1"]["kernel"]),
                                  np.asarray(params["params"]["Dense_1"]["kernel"]))


def test_real_digits_beat_noise_and_a_one_class_generator(digits):
    _, train, test, params = digits
    real, held_out = train.image[:1000], test.image[:1000]
    noise = np.random.default_rng(0).random((1000, 28, 28, 1)).astype(np.float32)
    one_class = train.image[train.label == 1][:400]
    good = classifier.compare(params, real, held_out)
    bad_noise = classifier.compare(params, real, noise)
    bad_mode = classifier.compare(params, real, one_class)
    assert good["classifier_fid"] < 0.2 * bad_noise["classifier_fid"]
    assert good["classifier_fid"] < 0.5 * bad_mode["classifier_fid"]
    assert good["class_coverage"] == 1.0 and good["class_tv"] < 0.1
    assert bad_mode["class_coverage"] <= 0.2 and bad_mode["class_tv"] > 0.8


def test_images_out_of_range_are_an_error(digits):
    *_, params = digits
    with pytest.raises(ValueError, match=r"uint8 or floats in \[0, 1\]"):
        classifier.embed(params, np.full((2, 28, 28, 1), -1.0, np.float32))
