"""data.validation_examples: a split held out of train that the evaluations during training and the best
checkpoint use, while the final evaluation (eval.json, eval_best.json) reports the test split."""

import json
import shutil

import ml_collections
import numpy as np
import pytest

from jaxgen import config_check, data
from jaxgen.evaluation import quality
from jaxgen.reporting import plots
from jaxgen.reporting.writer import read
from jaxgen.training import best_checkpoint, checkpoint, evaluating, loop, modes
from tests.conftest import CONFIGS, config_module

# On one device: the held-out split and the best checkpoint do not depend on the device count, and 8 faked devices
# on 2 cores cost ~15% more (their evaluation's sharded path: tests/test_vae_step.py and tests/test_quality.py).
pytestmark = pytest.mark.usefixtures("one_device")


def pooled_pixels(config, mesh, train_data):
    """A user's extractor (loaded by import path below): the pixels of 28x28 images mean-pooled to 7x7."""

    def features(images):
        return images.astype(np.float64).reshape(len(images), 7, 4, 7, 4).mean((2, 4)).reshape(len(images), -1), None

    return quality.Extractor("pooled", "7x7 mean-pooled pixels", "pooled_v1", features, recommended=49)


EXTRACTOR = "tests.test_validation:pooled_pixels"


def _data_config(n, **kw):
    c = ml_collections.ConfigDict({"name": "mnist_5k", "data_dir": "", "num_examples": 0, "train_split": "train",
                                   "validation_examples": n})
    c.update(kw)
    return c


def _keys(d):
    return [bytes(x) for x in d.image.reshape(len(d), -1)]


def _rows(d):
    return set(_keys(d))


def test_the_held_out_examples_are_a_fixed_choice_disjoint_from_what_is_trained_on():
    full, none = data.load_train(_data_config(0))
    assert none is None and len(full) == 4000
    train, val = data.load_train(_data_config(500))
    assert (len(train), len(val), val.split, train.split) == (3500, 500, "validation", "train")
    assert not _rows(train) & _rows(val) and _rows(train) | _rows(val) == _rows(full)
    assert 20 < np.bincount(val.label, minlength=10).min()  # a random choice, not the first (sorted) examples
    again, val2 = data.load_train(_data_config(500))  # the same for every run (not the run's seed)
    np.testing.assert_array_equal(val2.image, val.image)
    np.testing.assert_array_equal(again.label, train.label)
    val_rows = _rows(val)
    held = np.array([row in val_rows for row in _keys(full)])
    np.testing.assert_array_equal(train.image, full.image[~held])  # the rest keep their order
    small, _ = data.load_train(_data_config(100, num_examples=1000))  # held out of the first data.num_examples
    assert len(small) == 900


@pytest.mark.parametrize("n", [4000, 5000])
def test_holding_out_every_train_example_is_refused_naming_the_count(n):
    with pytest.raises(ValueError, match=f"data.validation_examples={n} must be >= 0 and leave training examples: "
                                         "the 'train' split of 'mnist_5k' has 4000"):
        data.load_train(_data_config(n))


@pytest.mark.parametrize("every", [10, 0])
def test_a_best_nll_takes_the_last_step_into_account(smoke_config, tmp_path, every):
    """The final eval's NLL takes eval.final_nll_k samples, so it does not compete for the best (whose NLLs take
    eval.nll_k): the last step was never a candidate, and with eval.every=0 no best checkpoint was kept."""
    c = smoke_config
    c.checkpoint.best_metric, c.eval.every = "nll", every
    final = loop.train_and_evaluate(c, tmp_path)
    evals = [r for r in read(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert [r["step"] for r in evals] == ([10, 20] if every else [20])  # step 20's: the final eval's record
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["metric"] == "nll" and best["step"] == 20  # the NLL falls over these steps
    assert best["value"] != final["nll"]  # not the final eval's (k=16) but one with eval.nll_k=8 samples
    if every:
        assert best["value"] < evals[0]["nll"]


def test_during_training_the_validation_split_is_evaluated_and_chooses_the_best_the_test_split_at_the_end(
        smoke_config, tmp_path):
    c = smoke_config
    c.data.validation_examples = 96
    loop.train_and_evaluate(c, tmp_path)
    records = read(tmp_path / "metrics.jsonl")
    val = [r for r in records if r["split"] == "validation"]
    assert [r["step"] for r in val] == [10, 20]  # every eval.every, and the last step
    assert [r["step"] for r in records if r["split"] == "eval"] == [20]  # the test split: the final eval only
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["split"] == "validation" and best["value"] == max(r["elbo"] for r in val)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["split"] == "test" and ev["num_examples"] == 64 and ev["elbo"] != val[-1]["elbo"]
    assert {label for label, *_ in plots.loss_series(records)} >= {"validation -elbo", "eval -elbo"}

    c.train.steps = 30  # resumed: the validation record and the best go on as before
    loop.train_and_evaluate(c, tmp_path)
    val = [r for r in read(tmp_path / "metrics.jsonl") if r["split"] == "validation"]
    assert [r["step"] for r in val] == [10, 20, 30]
    best = json.loads((tmp_path / "best" / "best.json").read_text())
    assert best["value"] == max(r["elbo"] for r in val)

    c.train.steps, c.data.validation_examples = 40, 50  # a resumed run cannot change what it holds out
    with pytest.raises(ValueError, match=r"data.validation_examples is 50, but the run resumed from step 30 in .* "
                                         r"held out 96: .* Keep --config.data.validation_examples=96"):
        loop.train_and_evaluate(c, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["data"]["validation_examples"] == 96
    c.data.validation_examples, c.seed = 96, 1  # nor its seed: training would go on from the checkpoint's key
    with pytest.raises(ValueError, match=r"seed is 1, but the run resumed from step 30 .* trained with seed 0: .* "
                                         r"Keep --config.seed=0, or start a new --workdir"):
        loop.train_and_evaluate(c, tmp_path)
    c.seed = 0

    c.eval.checkpoint = "best"
    for held in (96, 0):  # the override forgotten in --mode=eval: a warning about the config, the same record
        c.data.validation_examples = held
        modes.evaluate_checkpoint(c, tmp_path)
        record = json.loads((tmp_path / "eval_best.json").read_text())
        assert "on the 'validation' split (examples held out of 'train'" in record["selected_by"]
        assert "'test' numbers here are unbiased" in record["selected_by"] and record["step"] == best["step"]

    c.eval.checkpoint, c.train.ema_half_life = "newest", 100.0  # sampling a run without an EMA as if it had one
    broken = tmp_path / "checkpoints" / "40"  # an unreadable newest checkpoint: reported once, and no older one
    shutil.copytree(tmp_path / "checkpoints" / "30", broken)  # stands in for it
    for f in broken.rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.UnreadableCheckpointsError, match="step 40; .*the one at step 30 does not stand"):
        modes.sample_checkpoint(c, tmp_path)
    assert (tmp_path / "log_sample.txt").read_text().count("Checkpoint at step 40 cannot be read") == 1
    shutil.rmtree(broken)
    with np.load(modes.sample_checkpoint(c, tmp_path)) as z:
        assert int(z["step"]) == 30
    assert "The checkpoint keeps no EMA of the weights" in (tmp_path / "log_sample.txt").read_text()
    c.model.latent_dim += 1  # the model differs from training's: named before the checkpoint is read
    with pytest.raises(ValueError, match="this command's model differs .* in: model.latent_dim: 10 -> 11"):
        modes.sample_checkpoint(c, tmp_path)
    (tmp_path / "config.json").unlink()  # without the training config: the state's layout, worded for evaluating
    with pytest.raises(checkpoint.CheckpointMismatchError, match="(?s)params/.*To evaluate or sample it, give the "):
        modes.sample_checkpoint(c, tmp_path)


def test_a_best_record_chosen_on_another_split_is_ignored(tmp_path, caplog):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 10, "metric": "elbo", "mode": "max",
                                                              "value": -90.0, "split": "test"}))
    keeper = best_checkpoint.BestKeeper(tmp_path, "elbo", "max", resume_step=20, split="validation")
    assert keeper.record is None and "chosen on the 'test' split, this run chooses on 'validation'" in caplog.text
    older = {"step": 10, "metric": "elbo", "mode": "max", "value": -90.0}  # written before records named a split
    (tmp_path / "best" / "best.json").write_text(json.dumps(older))
    assert best_checkpoint.BestKeeper(tmp_path, "elbo", "max", resume_step=20, split="test",
                                 unnamed_split="test").record == older
    caplog.clear()
    assert best_checkpoint.BestKeeper(tmp_path, "elbo", "max", resume_step=20, split="validation",
                                 unnamed_split="test").record is None
    assert "chosen on the 'test' split, this run chooses on 'validation'" in caplog.text


def test_a_held_out_split_cannot_share_its_name_with_the_test_or_reference_split(smoke_config):
    c = smoke_config
    c.data.validation_examples, c.data.test_split = 100, "validation"
    with pytest.raises(ValueError, match="which data.test_split names too: to evaluate on the dataset's own "
                                         "'validation' split, set --config.data.validation_examples=0"):
        config_check.check(c)
    c.data.test_split, c.eval.reference_split = "test", "validation"
    with pytest.raises(ValueError, match="which eval.reference_split names too"):
        config_check.check(c)
    c.data.validation_examples = -1
    with pytest.raises(ValueError, match="data.validation_examples must be >= 0"):
        config_check.check(c)


def test_a_gan_scores_d_and_compares_samples_on_the_validation_split_during_training(tmp_path):
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    c.data.validation_examples, c.eval.batch_size, c.eval.num_examples = 128, 64, 0
    c.eval.extractors = (EXTRACTOR,)
    c.data.data_dir = str(tmp_path / "data")
    task = loop.build_task(c, tmp_path)
    state = task.create()
    sq = evaluating.sample_quality(task)
    assert set(sq.refs) == {"validation", "test"}
    during, final = evaluating.evaluate(task, state, False, sq), evaluating.evaluate(task, state, True, sq)
    assert during["num_examples"] == 128 and final["num_examples"] == 1000
    block = during["sample_quality"][EXTRACTOR]
    assert block["reference"] == "mnist_5k validation" and block["num_reference"] == 128
    assert final["sample_quality"][EXTRACTOR]["reference"] == "mnist_5k test"
    assert set(evaluating.sample_quality(task, training=False).refs) == {"test"}  # --mode=eval: the final's only

    c.data.validation_examples = 32  # fewer than one eval batch: refused before any training, with the fix
    with pytest.raises(ValueError, match=r"the validation split has 32; .* or hold out more "
                                         r"\(data.validation_examples\)"):
        loop.build_task(c, tmp_path)
