"""Sample quality as training and --mode=eval compute it: extractors by name (a user's own too), reference features
cached per dataset, split and extractor, metrics equal to sample_metrics on the same features, the best-checkpoint
keeper, and the errors for bad names and bad images."""

import json
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from jaxgen import config as config_lib
from jaxgen import config_check
from jaxgen.evaluation import quality, sample_metrics, sampling
from jaxgen.registry import UnknownNameError
from jaxgen.reporting import images
from jaxgen.training import best_checkpoint, loop
from tests.conftest import started_together

CALLS = []


def pixel_extractor(config, mesh, train_data):
    """A user's extractor (loaded by import path below): the flattened pixels of an 8x8 average-pooled image."""

    def features(images):
        CALLS.append(len(images))
        x = images.astype(np.float64).reshape(len(images), 8, images.shape[1] // 8, 8, images.shape[2] // 8, -1)
        return x.mean((2, 4)).reshape(len(images), -1), None

    return quality.Extractor("pixels", "8x8 mean-pooled pixels", "pixels_v1", features, recommended=64)


NAME = "tests.test_quality:pixel_extractor"


def strided_pixels(config, mesh, train_data):
    """A user's extractor for any image size: every 16th pixel, no class probabilities."""
    return quality.Extractor("strided", "every 16th pixel", "strided_v1",
                             lambda images: (images.reshape(len(images), -1)[:, ::16].astype(np.float64), None), 16)


def _config(tmp_path, extractors=(NAME,)):
    c = config_lib.gan_config()
    c.data.name = "mnist_5k"
    c.data.data_dir = str(tmp_path / "data")
    c.eval.extractors = extractors
    c.eval.num_samples = 300
    return c


def _images(n, seed, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 40, (n, 16, 16, 1)), 0, 255).astype(np.uint8)


def test_a_users_extractor_gives_sample_metrics_numbers_and_the_reference_is_cached(tmp_path):
    c = _config(tmp_path)
    real = ml_collections.ConfigDict({"image": _images(400, 0), "label": np.zeros(400, np.int32)})
    CALLS.clear()
    sq = quality.SampleQuality(c, None, real, {"test": real.image})
    sq2 = quality.SampleQuality(c, None, real, {"test": real.image})  # the second run reads the cached reference
    assert CALLS == [400]
    np.testing.assert_array_equal(sq.refs["test"][NAME]["features"], sq2.refs["test"][NAME]["features"])
    fake = _images(300, 1, shift=20)
    block = sq.evaluate(fake, full=True)[NAME]  # keyed as in eval.extractors
    pixels = pixel_extractor(None, None, None).features
    r, f = pixels(real.image)[0], pixels(fake)[0]
    fid = sample_metrics.frechet_distance(*sample_metrics.feature_statistics(r), *sample_metrics.feature_statistics(f))
    np.testing.assert_allclose(block["fid"], fid, rtol=1e-5)
    np.testing.assert_allclose(block["kid_mean"], sample_metrics.kernel_inception_distance(r, f)[0], rtol=1e-4)
    assert (block["precision"], block["recall"]) == pytest.approx(sample_metrics.precision_recall(r, f), abs=1e-6)
    assert block["num_samples"] == 300 and block["num_reference"] == 400 and block["reference"] == "mnist_5k test"
    assert block["extractor"] == "8x8 mean-pooled pixels"
    # The final evaluation's FID of as many real training images, drawn by the seed: what real data scores there.
    chosen = np.sort(np.random.default_rng(c.seed).permutation(400)[:300])
    t = pixels(real.image[chosen])[0]
    assert block["num_train_images"] == 300
    np.testing.assert_allclose(block["fid_train_images"], sample_metrics.frechet_distance(
        *sample_metrics.feature_statistics(r), *sample_metrics.feature_statistics(t)), rtol=1e-5)
    assert 0 < block["fid_train_images"] < block["fid"] / 5
    same = sq.evaluate(_images(300, 2), full=False)[NAME]
    assert same["fid"] < block["fid"] / 5 and "kid_mean" not in same  # only FID (and IS) at intermediate evals
    assert "fid_train_images" not in same
    # Not against the training split itself (eval.reference_split='train'): the draw would be a part of it.
    against_train = quality.SampleQuality(c, None, real, {"train": real.image})
    assert "fid_train_images" not in against_train.evaluate(fake, full=True)[NAME]
    flat = quality.flatten({NAME: same})
    assert flat == {f"{NAME}/fid": same["fid"], f"{NAME}/num_reference": 400, f"{NAME}/num_samples": 300}
    assert quality.best_metric(c) in flat  # 'auto': the first extractor's FID, under the name it was given


def test_too_few_samples_for_fid_is_said_at_the_first_evaluation_of_a_run_only(tmp_path, caplog):
    """Every smoke run evaluates 64 samples: the warning that FID is biased there came at every evaluation."""
    c = _config(tmp_path)
    real = ml_collections.ConfigDict({"image": _images(100, 0), "label": np.zeros(100, np.int32)})
    sq = quality.SampleQuality(c, None, real, {"test": real.image})
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        for seed in (1, 2, 3):
            sq.evaluate(_images(40, seed), full=False)  # 40 < the extractor's recommended 64
    assert caplog.text.count("FID statistics of the samples") == 1


def test_a_users_extractor_names_its_metrics_as_given_and_as_tensorboard_accepts(tmp_path, caplog):
    """'pkg.mod:fn/fid' stays so in metrics.jsonl; TensorBoard gets 'pkg.mod_fn/fid' without a complaint a line."""
    from jaxgen.reporting.writer import MetricWriter, read, tensorboard_tag

    w = MetricWriter(tmp_path, enabled=True)
    with caplog.at_level(logging.INFO):
        w.write(10, "eval", {f"{NAME}/fid": 1.5, "elbo": -2.0})
    w.close()
    assert "illegal" not in caplog.text
    assert read(tmp_path / "metrics.jsonl")[0][f"{NAME}/fid"] == 1.5
    assert tensorboard_tag(f"eval/{NAME}/fid") == "eval/tests.test_quality_pixel_extractor/fid"
    assert tensorboard_tag("eval/elbo") == "eval/elbo"


def test_unknown_extractor_lists_the_choices_before_any_work(tmp_path):
    c = _config(tmp_path, ("inceptoin",))
    with pytest.raises(UnknownNameError, match="'inceptoin'; choices: classifier, inception"):
        config_check.check(c)


def test_the_classifier_extractor_needs_labels(tmp_path):
    c = _config(tmp_path, ("classifier",))
    data = ml_collections.ConfigDict({"image": _images(40, 0), "label": np.zeros(40, np.int32)})
    with pytest.raises(ValueError, match="trains on the dataset's labels.*1 label value"):
        quality.build("classifier", c, None, data)


def test_images_of_the_wrong_kind_are_refused_with_the_conversion():
    with pytest.raises(ValueError, match=r"uint8 images \[N, H, W, C\].*np.clip\(np.round"):
        quality.check_images(np.zeros((2, 8, 8, 3), np.float32), "generated samples")
    with pytest.raises(ValueError, match="C = 1 or 3"):
        quality.check_images(np.zeros((2, 8, 8, 2), np.uint8), "generated samples")
    assert sampling.to_uint8(np.array([-1.0, 0.0, 1.0]), (-1.0, 1.0)).tolist() == [0, 128, 255]
    # One rounding for everything written or measured (PNG grids, the history, samples in a compiled sampler).
    x = np.array([-0.1, 0.0, 0.5 / 255, 1.5 / 255, 0.5, 1.0, 1.2], np.float32)
    assert images.quantize(x).tolist() == [0, 0, 0, 2, 128, 255, 255]  # halves to even, as np.round
    assert np.asarray(jax.jit(images.quantize)(x)).tolist() == images.quantize(x).tolist()


def test_best_metric_auto_is_the_first_extractors_fid():
    c = config_lib.gan_config()
    assert quality.best_metric(c) is None
    c.eval.extractors = ("classifier", "inception")
    assert quality.best_metric(c) == "classifier/fid"
    c.checkpoint.best_metric = "d_real"
    assert quality.best_metric(c) == "d_real"
    c.checkpoint.best_metric = ""
    assert quality.best_metric(c) is None


def test_best_mode_auto_follows_the_metric_and_a_contradicting_mode_is_refused():
    c = config_lib.vae_config()
    assert quality.best_mode(c) == "max"  # elbo
    for metric, mode in (("nll", "min"), ("recon_mse", "min")):
        c.checkpoint.best_metric = metric
        assert quality.best_mode(c) == mode
    c.eval.extractors = ("classifier",)
    c.checkpoint.best_metric = "classifier/fid"
    assert quality.best_mode(c) == "min"
    c.checkpoint.best_metric = "classifier/class_coverage"
    assert quality.best_mode(c) == "max"
    c.checkpoint.best_metric, c.checkpoint.best_mode = "nll", "max"
    with pytest.raises(ValueError, match="better when lower.*would keep the worst checkpoint; use 'auto' or 'min'"):
        config_check.check(c)
    c.checkpoint.best_metric, c.checkpoint.best_mode = "my.extractor:fn/fid", "auto"
    c.eval.extractors = ("my.extractor:fn",)
    assert quality.best_mode(c) == "min"  # a user's extractor's FID
    c.checkpoint.best_metric, c.eval.extractors = "d_real", ()
    c.task = "gan"
    with pytest.raises(ValueError, match="set --config.checkpoint.best_mode=min or =max"):
        config_check.check(c)
    c.checkpoint.best_mode = "max"
    assert quality.best_mode(c) == "max"  # a metric without a known direction: the user's
    c.task, c.checkpoint.best_metric = "vae", "elbo"
    c.checkpoint.best_mode = "largest"
    with pytest.raises(ValueError, match="'auto', 'min' or 'max'"):
        config_check.check(c)


def test_the_best_keeper_keeps_the_best_and_remembers_it_across_runs(tmp_path):
    state = lambda step: {"step": jnp.asarray(step), "w": jnp.full((3,), float(step))}
    keeper = best_checkpoint.BestKeeper(tmp_path, "x/fid", "min")
    assert keeper.update(state(10), {"x/fid": 5.0})
    assert not keeper.update(state(20), {"x/fid": 7.0})
    assert not keeper.update(state(25), {"x/fid": float("nan")})
    assert keeper.update(state(30), {"x/fid": 4.0})
    keeper.close()
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == ["30", "best.json"]  # one kept at a time
    resumed = best_checkpoint.BestKeeper(tmp_path, "x/fid", "min")  # a resumed run compares with the stored best
    assert not resumed.update(state(40), {"x/fid": 4.5})
    with pytest.raises(ValueError, match="'y/fid' is not an eval metric; choices: x/fid"):
        best_checkpoint.BestKeeper(tmp_path, "y/fid", "min").update(state(50), {"x/fid": 1.0})
    assert json.loads((tmp_path / "best" / "best.json").read_text())["step"] == 30
    resumed.close()


def test_a_stale_or_differently_kept_best_record_is_ignored_and_not_final_metrics_skip_the_final_eval(tmp_path):
    state = {"step": jnp.asarray(10), "w": jnp.zeros(2)}
    keeper = best_checkpoint.BestKeeper(tmp_path, "x/fid", "min")
    keeper.update(state, {"x/fid": 1.0})
    keeper.close()
    assert best_checkpoint.BestKeeper(tmp_path, "x/fid", "min", fresh=True).record is None  # a new run in the same dir
    assert best_checkpoint.BestKeeper(tmp_path, "x/fid", "max").record is None
    assert best_checkpoint.BestKeeper(tmp_path, "x/fid", "min").record["value"] == 1.0
    nll = best_checkpoint.BestKeeper(tmp_path / "vae", "nll", "min", not_final=("nll",))
    assert not nll.update(state, {"nll": 80.0}, final=True)  # the final NLL uses more importance samples
    assert nll.update(state, {"nll": 90.0})
    nll.close()
    elbo = best_checkpoint.BestKeeper(tmp_path / "vae2", "elbo", "max", not_final=("nll",))
    assert elbo.update(state, {"elbo": -90.0}, final=True)  # measured alike at the final eval: it takes part
    elbo.close()


def test_a_best_measured_with_another_likelihood_or_data_is_not_compared(smoke_config, tmp_path, caplog):
    """A resume that changes the likelihood (a Gaussian ELBO can be positive, a Bernoulli one never is), the dataset
    or the sample count measures on another scale: the best kept so far is replaced, not compared with."""
    measured_with, BestKeeper = best_checkpoint.measured_with, best_checkpoint.BestKeeper
    state = {"step": jnp.asarray(10), "w": jnp.zeros(2)}
    c = smoke_config
    measured = measured_with(c, "elbo")
    assert measured["objective.likelihood"] == "bernoulli" and measured["data.name"] == "mnist_5k"
    assert "eval.num_samples" not in measured and "eval.nll_k" not in measured
    assert "eval.num_samples" in measured_with(c, "classifier/fid")
    assert "objective.likelihood" not in measured_with(c, "classifier/fid")
    assert "eval.nll_k" in measured_with(c, "nll")
    # Not what does not change the value: sigma with a Bernoulli, the classifier for Inception, where files are.
    assert not {"objective.gaussian_sigma", "data.path", "data.data_dir"} & set(measured)
    assert "eval.classifier_steps" in measured_with(c, "classifier/fid")
    assert "eval.classifier_steps" not in measured_with(c, "inception/fid")
    # The images themselves (data.path may point at another folder under the same data.name): shape and CRC-32.
    images = np.zeros((4, 8, 8, 1), np.uint8)
    other = images.copy()
    other[0, 0, 0, 0] = 1
    assert measured_with(c, "elbo", images)["data.images"][:4] == [4, 8, 8, 1]
    assert measured_with(c, "elbo", images) != measured_with(c, "elbo", other)
    keeper = BestKeeper(tmp_path, "elbo", "max", measured_with=measured)
    keeper.update(state, {"elbo": -90.0})
    keeper.close()
    assert json.loads((tmp_path / "best" / "best.json").read_text())["measured_with"] == measured
    assert BestKeeper(tmp_path, "elbo", "max", measured_with=measured).record["value"] == -90.0
    c.eval.num_samples = 5  # a field the ELBO does not depend on
    assert BestKeeper(tmp_path, "elbo", "max", measured_with=measured_with(c, "elbo")).record
    c.objective.likelihood = "gaussian"
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        assert BestKeeper(tmp_path, "elbo", "max", measured_with=measured_with(c, "elbo")).record is None
    assert "measured with other settings (objective.likelihood: 'bernoulli' -> 'gaussian')" in caplog.text
    record = json.loads((tmp_path / "best" / "best.json").read_text())
    del record["measured_with"]  # written before records had it: still compared
    (tmp_path / "best" / "best.json").write_text(json.dumps(record))
    assert BestKeeper(tmp_path, "elbo", "max", measured_with=measured_with(c, "elbo")).record


def test_a_best_metric_a_users_extractor_does_not_give_fails_before_any_training(tmp_path):
    """Which per-eval metrics a user's extractor gives shows once it is built (IS or class coverage need class
    probabilities): a best_metric it does not give failed at the first evaluation, losing eval.every steps."""
    real = ml_collections.ConfigDict({"image": _images(400, 0), "label": np.zeros(400, np.int32)})
    sq = quality.SampleQuality(_config(tmp_path), None, real, {"test": real.image})
    assert sq.per_eval(NAME) == ("fid",)
    sq.check_best_metric(f"{NAME}/fid")
    with pytest.raises(ValueError, match=rf"best_metric='{NAME}/is_mean': the extractor '{NAME}' does not give "
                                         rf"'is_mean' at every eval .*; choices: {NAME}/fid$"):
        sq.check_best_metric(f"{NAME}/is_mean")
    from jaxgen.training import loop
    from tests.conftest import CONFIGS, config_module

    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.output.progress, c.output.plots = False, False
    name = "tests.test_quality:strided_pixels"
    c.eval.extractors, c.checkpoint.best_metric = (name,), f"{name}/class_tv"
    with pytest.raises(ValueError, match="does not give 'class_tv' at every eval"):
        loop.train_and_evaluate(c, tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))  # no step trained


def test_a_best_metric_of_an_unused_extractor_or_of_the_final_eval_only_fails_before_any_work(tmp_path):
    c = _config(tmp_path, ("classifier",))
    for mode in ("auto", "max"):  # a misspelt one, whatever the mode: before any work, not at the first eval
        c.checkpoint.best_metric, c.checkpoint.best_mode = "elbow", mode
        with pytest.raises(ValueError, match="'elbow' is not a metric of every gan eval; choices: d_real, d_fake, "
                                             "classifier/fid, classifier/class_tv, classifier/class_coverage$"):
            config_check.check(c)
    c.checkpoint.best_mode = "auto"
    c.checkpoint.best_metric = "inception/fid"
    with pytest.raises(ValueError, match="'inception', which is not in eval.extractors"):
        config_check.check(c)
    c.checkpoint.best_metric = "classifier/kid_mean"
    with pytest.raises(ValueError, match="not computed at every eval of the classifier extractor; choices: "
                                         "classifier/fid"):
        config_check.check(c)
    c.checkpoint.best_metric = "classifier/is_mean"  # the classifier gives no IS: refused now, not at the first eval
    with pytest.raises(ValueError, match="'is_mean' is not computed at every eval of the classifier extractor; "
                                         "choices: classifier/fid, classifier/class_tv, classifier/class_coverage"):
        config_check.check(c)
    c.checkpoint.best_metric = "classifier/class_coverage"
    config_check.check(c)
    c.eval.num_samples = 5  # the final evaluation's density and coverage need more than 5
    with pytest.raises(ValueError, match="eval.num_samples must be > 5 with eval.extractors"):
        config_check.check(c)
    c.eval.num_samples = 6
    config_check.check(c)
    c.eval.extractors = ("classifier,inception",)
    with pytest.raises(ValueError, match="give a tuple"):
        config_check.check(c)


def test_a_corrupt_reference_cache_is_recomputed(tmp_path):
    c = _config(tmp_path)
    real = ml_collections.ConfigDict({"image": _images(100, 0), "label": np.zeros(100, np.int32)})
    sq = quality.SampleQuality(c, None, real, {"test": real.image})
    (path,) = (tmp_path / "data" / "jaxgen_cache" / "reference").glob("*.npz")
    path.write_bytes(b"PK\x03\x04 torn")
    CALLS.clear()
    again = quality.SampleQuality(c, None, real, {"test": real.image})
    assert CALLS == [100]
    np.testing.assert_array_equal(again.refs["test"][NAME]["features"], sq.refs["test"][NAME]["features"])


def test_jobs_started_together_compute_the_reference_features_once(tmp_path, caplog):
    """A sweep's jobs on a new data dir: the first computes the features, the others wait for it and read them (each
    computed them, as each trained the metric classifier; the cache files were whole either way)."""
    import time

    calls = []

    def slow_features(images):
        calls.append(len(images))
        time.sleep(0.5)
        return np.asarray(images, np.float32).reshape(len(images), -1)[:, :8], None

    extractor = quality.Extractor("slow", "a test's", "slow_v1", slow_features, recommended=2)
    data_config = ml_collections.ConfigDict({"name": "synthetic", "data_dir": str(tmp_path)})
    images = _images(20, 0)
    with caplog.at_level(logging.INFO, logger="jaxgen"):  # threads: each open() of the lock file is its own flock
        out = started_together(lambda: quality.reference(extractor, images, data_config=data_config, split="test",
                                                          warn=False), jobs=3)
    assert calls == [20] and len(out) == 3
    for ref in out[1:]:
        np.testing.assert_array_equal(ref["features"], out[0]["features"])
    waited = [r for r in caplog.records if r.getMessage().startswith("Another process is computing the reference")]
    assert len(waited) == 2


def test_the_torch_reader_refuses_tensor_views_outside_their_storage():
    import pickle

    from jaxgen.evaluation.torch_pickle import _rebuild_tensor

    storage = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(_rebuild_tensor(storage, 2, (2, 2), (2, 1)), [[2, 3], [4, 5]])
    for offset, size, stride in ((3, (2, 2), (2, 1)), (-1, (2,), (1,)), (0, (2,), (-1,)), (6, (), ())):
        with pytest.raises(pickle.UnpicklingError):
            _rebuild_tensor(storage, offset, size, stride)


def test_the_inception_extractor_in_training_gives_fid_and_is_from_the_biasless_logits(tmp_path, monkeypatch):
    """quality's 'inception' path end to end (random weights stand in for pytorch-fid's: none are shipped)."""
    import jax

    from jaxgen import parallel
    from jaxgen.evaluation import inception

    variables = inception.random_params(0)
    monkeypatch.setattr(inception, "load_params", lambda path=None, **kw: variables)
    # The images quality extracts from and their features, kept: an extraction of the test's own took ~1/3 of its time.
    extracted, inputs = [], []
    extract = inception.extract

    def spy(fn, images, **kw):
        inputs.append(np.asarray(images))
        extracted.append(extract(fn, images, **kw))
        return extracted[-1]

    monkeypatch.setattr(inception, "extract", spy)
    c = _config(tmp_path, ("inception",))
    c.eval.batch_size = 12  # 3 x 12 images through InceptionV3 at 299x299: most of the time
    c.output.progress = False
    mesh = parallel.make_mesh(jax.devices()[:1])  # Inception over 8 faked devices on 2 cores: ~2x the time
    real = ml_collections.ConfigDict({"image": _images(12, 0), "label": np.zeros(12, np.int32)})
    sq = quality.SampleQuality(c, mesh, real, {"test": real.image})
    fake = _images(12, 1, shift=30)  # IS takes 10 splits: at least 10
    block = sq.evaluate(fake, full=True)["inception"]
    assert block["num_samples"] == 12 and block["num_reference"] == 12 and "InceptionV3" in block["extractor"]
    assert len(extracted) == 3  # the reference's, the samples', then the real training images' (here the same)
    np.testing.assert_array_equal(inputs[0], real.image)
    np.testing.assert_array_equal(inputs[1], fake)
    np.testing.assert_array_equal(inputs[2], real.image)
    assert block["num_train_images"] == 12 and abs(block["fid_train_images"]) < 1e-6 * block["fid"]
    assert block["fid"] > 0
    out = extracted[1]
    logits = out["logits"].astype(np.float64) - np.asarray(variables["params"]["fc"]["bias"], np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    expected_is = sample_metrics.inception_score(probs / probs.sum(1, keepdims=True), splits=10)
    assert (block["is_mean"], block["is_std"]) == pytest.approx(expected_is, rel=1e-5)
    ref = sq.refs["test"]["inception"]["features"]
    fid = sample_metrics.frechet_distance(*sample_metrics.feature_statistics(ref),
                                          *sample_metrics.feature_statistics(out["pool"]))
    assert block["fid"] == pytest.approx(fid, rel=1e-5)
    assert np.isfinite([block["kid_mean"], block["precision"], block["coverage"]]).all()


@pytest.mark.parametrize("config", ["vae_mnist", "gan_mnist"])
def test_the_evaluated_samples_depend_neither_on_the_batch_size_nor_on_the_devices(config, tmp_path):
    """Sample j of the evaluation stream comes from its own key: FID/KID/IS of a checkpoint do not move when
    eval.batch_size or the device count does. The 8 devices each make their share of every batch; one device making
    them all, in one call outside the mesh, gives the same images."""
    import jax
    import jax.numpy as jnp

    from jaxgen.evaluation import vae as vae_eval
    from jaxgen.training import state as state_lib
    from tests.conftest import CONFIGS, config_module

    c = config_module(CONFIGS / f"{config}.py").get_config("smoke")
    c.unlock()
    task = loop.build_task(c, tmp_path)
    assert task.mesh.size == 8
    state = task.create()
    got = []
    for bs in (8, 24):
        task.config.eval.batch_size = bs
        got.append(task.samples(state, 40))
    assert got[0].shape[0] == 40 and got[0].dtype == np.uint8
    np.testing.assert_array_equal(got[0], got[1])

    key = state_lib.eval_key(c.seed, state_lib.SAMPLER)
    variables = jax.device_get(task.sampling_g(state) if config == "gan_mnist" else state_lib.eval_params(state))
    if config == "gan_mnist":
        z = sampling.stream_latents(key, jnp.arange(40), task.generator.latent_dim)
        one = sampling.to_uint8(task._generate(variables, z), (-1.0, 1.0))
    else:
        z = sampling.stream_latents(key, jnp.arange(40), task.model.latent_dim)
        one = sampling.to_uint8(vae_eval.sample_images(variables, z, model=task.model,
                                                      likelihood=c.objective.likelihood), (0.0, 1.0))
    diff = np.abs(one.astype(int) - got[0].astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # rounding at a .5 boundary may flip a pixel by one


def test_the_sampler_counts_non_finite_pixels_and_writes_them_as_zero(caplog):
    import jax
    import jax.numpy as jnp

    from jaxgen import parallel

    mesh = parallel.make_mesh()

    def sample_fn(scale, z):  # pixel 0 of every sample NaN, pixel 1 +inf, the rest z[:, 0] * scale
        x = jnp.broadcast_to((z[:, :1] * scale)[:, :, None, None], (len(z), 2, 2, 1))
        return x.at[:, 0, 0, 0].set(jnp.nan).at[:, 0, 1, 0].set(jnp.inf)

    sampler = sampling.make_sampler(sample_fn, mesh, key=jax.random.key(0), dim=3, value_range=(-1.0, 1.0))
    with caplog.at_level("WARNING", logger="jaxgen"):
        out = sampler(np.float32(0.0), 20, 16)
    assert out.shape == (20, 2, 2, 1) and out.dtype == np.uint8
    assert (out[:, 0, 0, 0] == 0).all() and (out[:, 0, 1, 0] == 255).all() and (out[:, 1] == 128).all()
    assert "40 non-finite pixel values" in caplog.text  # 2 in each of the 20 samples (not the 12 made past them)
    with pytest.raises(ValueError, match="eval.batch_size=12 is not divisible by the 8 devices"):
        sampler(np.float32(0.0), 20, 12)


def test_one_behind_dispatches_the_next_batch_before_fetching_the_last():
    from jaxgen import parallel

    events = []

    def jobs():
        for i in range(3):
            events.append(f"dispatch {i}")
            yield i

    parallel.one_behind(jobs(), lambda i: events.append(f"fetch {i}"))
    assert events == ["dispatch 0", "dispatch 1", "fetch 0", "dispatch 2", "fetch 1", "fetch 2"]
    parallel.one_behind(iter(()), events.append)  # nothing to do
    assert len(events) == 6


def test_the_references_fid_statistics_are_computed_once_per_run(tmp_path, monkeypatch):
    c = _config(tmp_path)
    real = ml_collections.ConfigDict({"image": _images(400, 0), "label": np.zeros(400, np.int32)})
    sq = quality.SampleQuality(c, None, real, {"test": real.image})
    calls = []
    statistics = sample_metrics.feature_statistics
    monkeypatch.setattr(sample_metrics, "feature_statistics",
                        lambda f, *a, **k: calls.append(len(f)) or statistics(f, *a, **k))
    for seed in (1, 2):
        sq.evaluate(_images(300, seed), full=False)
    assert calls == [300, 300]  # the samples' at each evaluation; the reference's were computed when it loaded


def test_non_finite_features_are_named_with_whose_and_how_many():
    f = np.ones((5, 3))
    f[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"the features of the samples \(pixels\): 1 of 5 rows contain NaN or Inf"):
        sample_metrics.feature_statistics(f, 2, "the samples (pixels)")


def test_truncated_latents_lie_within_the_bound_and_no_truncation_is_the_plain_draw():
    key = jax.random.key(0)
    index = jnp.arange(64)
    plain = sampling.stream_latents(key, index, 16)
    np.testing.assert_array_equal(plain, sampling.stream_latents(key, index, 16, 0.0))
    truncated = np.asarray(sampling.stream_latents(key, index, 16, 0.5))
    assert np.abs(truncated).max() <= 0.5 and np.abs(plain).max() > 1.5 and truncated.std() > 0.2
    for bad in (-1.0, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match="sample.truncation must be 0 \\(off\\) or a bound > 0"):
            sampling.check_truncation(bad)
