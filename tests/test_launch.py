"""End to end through launch.py: a run, its resume and its outputs; the workdir's guards; --mode=eval and
--mode=sample on a trained workdir."""

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from jaxgen.reporting.writer import read
from jaxgen.training import evaluating, loop, modes, run_record
from tests.conftest import ROOT, TEST_XLA_FLAGS, config_module, launch

# The runs tests here make in this process are on one device, as launch.py's processes here are (8 faked devices on
# 2 cores cost ~15% more); the tests of sampling on another device count set theirs.
pytestmark = pytest.mark.usefixtures("one_device")


def _launch_until(ready, *args, timeout=240):
    """launch.py started in the background, returned once `ready()` (it must not end before). Python's
    faulthandler is on in it: `_stopped` has it print every thread's stack if the process hangs."""
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(ROOT / "launch.py"), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.communicate()[1][-3000:])
        time.sleep(0.2)
    return proc


def _stopped(proc, timeout=120) -> str:
    """The stderr of `proc` once it has ended after a signal. One still running after `timeout` s fails the test
    with every thread's stack (SIGABRT: faulthandler prints them, then the process ends), so that a hang says where
    it is (as it showed the one seen in CI: a SIGTERM swallowed in JAX's gc callback, see stopping.sigterm_raises)."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            err = proc.communicate(timeout=30)[1]
        finally:
            proc.kill()
        raise AssertionError(f"still running {timeout} s after the signal; its stacks:\n{err[-12000:]}") from None


def test_the_processes_tests_start_compile_as_the_tests_do():
    """launch() and the multi-host tests' processes get the XLA flags of the tests' own processes (the level, and
    the user's, here or in an xdist worker). Under xdist they once got none: LLVM's full optimisation, 2-3x their
    CPU time."""
    from tests import conftest

    own = os.environ["XLA_FLAGS"].split()
    assert any(f.startswith("--xla_backend_optimization_level=") for f in TEST_XLA_FLAGS.split())
    assert set(TEST_XLA_FLAGS.split()) <= set(own) and "device_count" not in TEST_XLA_FLAGS
    assert set(conftest._user_flags.split()) <= set(own)


def test_launch_smoke_end_to_end_then_resume(tmp_path):
    """A user's workdir through launch.py: a run and its outputs; the same command with more steps resumes and is
    stopped by SIGTERM as a scheduler stops a job; --mode=eval and --mode=sample on the step it reached."""
    wd = tmp_path / "run"
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", env={"MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step/s" not in r.stderr and "\r" not in r.stderr  # stderr is no terminal here: no progress bar
    # A library's INFO lines stay off (absl's app.run sets the root logger to INFO): matplotlib's first plot with no
    # font cache said "I1201 04:53:45.462983 140162124475264 font_manager.py:1848] generated new fontManager".
    assert "fontManager" not in r.stderr, r.stderr
    # ... so the train records' numbers are log lines, on stderr and in log.txt (there always: runtime.FILE_ONLY).
    line = r"INFO step 10/20 \(50%\): loss [\d.]+; [\d,]+ img/s; ETA \d\d:\d\d:\d\d( \+ evals)? \+ final eval\n"
    assert re.search(line, r.stderr) and re.search(line, (wd / "log.txt").read_text())
    records = [json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()]
    assert {"train", "eval"} == {r["split"] for r in records}
    assert [r["step"] for r in records if r["split"] == "train"] == [5, 10, 15, 20]
    for name in ("images/samples.png", "images/reconstructions.png", "images/samples_0000010.png",
                 "images/samples_0000020.png", "images/reconstructions_0000020.png",
                 "latent_scatter.png", "latent_traversal.png", "loss_curves.png", "eval.json", "config.json",
                 "log.txt"):
        assert (wd / name).is_file(), name
    assert sorted(p.name for p in (wd / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
    assert list((wd / "tb").glob("events.out.tfevents.*"))
    # Reconstructions: the top row is the input as the evaluation binarizes it (0 or 255; white padding), then the
    # decoder's grey means.
    rec = np.asarray(Image.open(wd / "images" / "reconstructions.png"))
    band = 2 * (28 + 1)  # each pixel 2x2, one padding pixel above each row
    assert set(np.unique(rec[:band]).tolist()) <= {0, 255} and len(np.unique(rec[band:])) > 2
    ev = json.loads((wd / "eval.json").read_text())
    assert ev["step"] == 20 and ev["nll_k"] == 16 and ev["nll"] < 784 * 0.7  # better than uniform pixels
    from jaxgen.evaluation import quality

    assert set(quality.TASK_METRICS["vae"]) <= set(ev)  # what checkpoint.best_metric may name
    assert ev["units"]["nll"] == "nats per image" and "x / 255" in ev["units"]["recon_mse"]
    assert ev["nll_estimator"].startswith("the IWAE bound")
    assert json.loads((wd / "config.json").read_text())["train"]["steps"] == 20
    command = json.loads((wd / "command.json").read_text())  # for a later command without --config
    assert command["config"] == f"{ROOT / 'configs' / 'vae_mnist.py'}:smoke" and command["overrides"] == []
    best = json.loads((wd / "best" / "best.json").read_text())  # a VAE keeps its best test ELBO, final eval included
    assert best["metric"] == "elbo" and best["value"] == max(r["elbo"] for r in records if r["split"] == "eval")

    # The same command with more steps resumes, then a scheduler stops it: SIGTERM ends it after the call under way,
    # with that step checkpointed, said in log.txt and exit status 143 (tests/test_resume.py: such a run resumes
    # bitwise).
    stop = _launch_until(lambda: any(r["split"] == "train" and r["step"] > 20 for r in read(wd / "metrics.jsonl")),
                         "--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--config.train.steps=2000")
    stop.send_signal(signal.SIGTERM)
    err = _stopped(stop)
    assert stop.returncode == 143, err[-3000:]
    # The changed field is named, and the learning rate the schedule over the new length gives.
    assert re.search(r"Resumed from the checkpoint at step 20 \(lr [\d.e-]+ by the schedule over train.steps=2000\)",
                     err)
    assert "train.steps: 20 -> 2000" in err
    history = [json.loads(line) for line in (wd / "config_history.jsonl").read_text().splitlines()]
    assert len(history) == 1 and history[0]["config"]["train"]["steps"] == 20
    assert history[0]["changes"] == ["train.steps: 20 -> 2000"]
    step = max(int(p.name) for p in (wd / "checkpoints").iterdir() if p.name.isdigit())
    assert 20 < step < 2000 and f"Stopped by SIGTERM at step {step}" in (wd / "log.txt").read_text()

    # --config.deterministic: XLA:GPU's flag, which every jaxlib accepts (a CPU run is deterministic anyway). No
    # --config: the workdir's last training command's (the stopped one's), from another directory.
    assert json.loads((wd / "command.json").read_text())["overrides"] == ["--config.train.steps=2000"]
    r = launch(f"--workdir={wd}", "--mode=eval", "--config.deterministic=True", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (f"No --config: the config of the workdir's last training command, as {wd / 'command.json'} records it "
            f"(the file as it is now: edits to it since training apply): --config={ROOT / 'configs' / 'vae_mnist.py'}"
            f":smoke --config.train.steps=2000\n") in r.stderr
    assert f"The run trained in {ROOT}; this command runs in {tmp_path}" in r.stderr
    assert "deterministic: XLA_FLAGS has --xla_gpu_deterministic_ops=true" in r.stderr
    assert f"eval of step {step}" in r.stderr and "classifier FID" in r.stderr
    assert "differs from the one the workdir was trained" not in r.stderr  # train.* and output.* may differ
    ev = json.loads((wd / "eval.json").read_text())
    q = ev["sample_quality"]["classifier"]
    assert ev["step"] == step and q["num_samples"] == 64 and q["reference"] == "mnist_5k test"
    assert math.isfinite(q["fid"])

    # A SIGTERM outside the training loop (here --mode=eval's long final NLL) stops it at once with one line, the
    # traceback in the mode's log file and the status the signal would give.
    log_eval = wd / "log_eval.txt"
    said = log_eval.read_text()
    stop = _launch_until(lambda: log_eval.read_text().count("--mode=eval on the newest") > said.count("--mode=eval on"),
                         "--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--mode=eval",
                         "--config.eval.final_nll_k=1000000")
    stop.send_signal(signal.SIGTERM)
    err = _stopped(stop)
    assert stop.returncode == 143, err[-3000:]
    assert err.rstrip().endswith(f"Stopped by SIGTERM during --mode=eval; the same command runs it again (where it "
                                 f"stopped: {log_eval})")
    assert "The run stopped: Terminated: stopped by SIGTERM outside the training loop" in log_eval.read_text()
    assert json.loads((wd / "eval.json").read_text())["step"] == step  # the last eval's, untouched

    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--mode=sample", "--config.sample.num=20",
                "--config.objective.likelihood=gaussian")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--mode=sample runs with this command's config, which differs" in r.stderr
    assert "objective.likelihood: 'bernoulli' -> 'gaussian'" in r.stderr and "Repeat the training command's" in r.stderr
    assert (wd / "samples" / f"step_{step:07d}.npz").is_file()
    assert (wd / "samples" / f"step_{step:07d}_001.png").is_file()


def test_unwritable_workdir_is_a_clear_error(smoke_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(loop.wd.WorkdirError, match="is not writable .*pass a --workdir you can write to"):
        loop.train_and_evaluate(smoke_config, blocker / "run")
    with pytest.raises(loop.wd.WorkdirError, match="is a URL.*mount the bucket"):
        loop.train_and_evaluate(smoke_config, "gs://bucket/run")
    with pytest.raises(loop.wd.WorkdirError, match="a_file exists and is not a directory"):
        loop.train_and_evaluate(smoke_config, blocker)


def test_eval_modes_neither_import_nor_check_what_only_training_runs(smoke_config, tmp_path):
    """--mode=eval/sample without the PYTHONPATH of a training run that used an objective, loss, regularizer or
    augmentation of the user's: none of them is imported or traced there (the evaluation does not run them), so
    the command works; training with the same config still names the one it cannot import."""
    from jaxgen.registry import UnknownNameError

    smoke_config.objective.name = "myproject_gone.losses:free_bits_elbo"
    assert loop.build_task(smoke_config, tmp_path, training=False).objective is None
    with pytest.raises(UnknownNameError, match="myproject_gone.losses"):
        loop.build_task(smoke_config, tmp_path)
    gan = config_module(ROOT / "configs" / "gan_mnist.py").get_config("smoke")
    gan.unlock()
    gan.loss.name, gan.reg.name = "myproject_gone.gan_losses:relativistic", "myproject_gone.regs:r2"
    gan.augment.policy = "myproject_gone.aug:jitter"
    task = loop.build_task(gan, tmp_path, training=False)
    assert task.loss_fn is None and task.reg_fn is None


def test_eval_and_sample_modes_need_an_existing_workdir_and_do_not_create_one(smoke_config, tmp_path):
    for fn in (modes.evaluate_checkpoint, modes.sample_checkpoint):
        with pytest.raises(loop.wd.WorkdirError, match="runz does not exist; this mode reads a trained workdir"):
            fn(smoke_config, tmp_path / "runz")
    assert not (tmp_path / "runz").exists()


def test_sampling_on_another_device_count_needs_no_train_batch_that_divides_it(trained_vae, first_devices):
    """A VAE trained with train.batch_size=32 on one device samples on 3: only eval.batch_size must divide there
    (train.batch_size is no batch outside training; a GAN's sizes the EMA generator's BatchNorm passes)."""
    c, workdir = trained_vae
    first_devices(3)
    c.eval.batch_size, c.sample.num = 63, 5
    with np.load(modes.sample_checkpoint(c, workdir)) as z:
        assert z["images"].shape == (5, 28, 28, 1) and int(z["step"]) == 10
    with pytest.raises(ValueError, match="train.batch_size=32 is not divisible by the 3 devices"):
        loop.build_task(c, workdir)  # training on 3 devices


@pytest.mark.parametrize("config", ["vae_mnist", "gan_mnist"])
def test_sampling_reads_the_image_shape_from_data_json_not_the_dataset(config, trained_vae, tmp_path, monkeypatch,
                                                                       first_devices):
    """Training writes data.json (dataset, image shape, split sizes); --mode=sample builds the model from it and
    never reads the dataset (a host without it, or CelebA's 2 GB, samples all the same), with the samples it
    draws when it reads the dataset. A workdir without data.json (older runs) reads the dataset as before."""
    from jaxgen import data

    if config == "vae_mnist":
        c, tmp_path = trained_vae
    else:
        c = config_module(ROOT / "configs" / f"{config}.py").get_config("smoke")
        c.unlock()
        c.output.progress, c.output.plots, c.eval.extractors = False, False, ()
        c.train.steps, c.eval.every, c.checkpoint.every = 10, 0, 10
        loop.train_and_evaluate(c, tmp_path)
    record = json.loads((tmp_path / "data.json").read_text())
    assert record == {"dataset": "mnist_5k", "image_shape": [28, 28, 1], "examples": {"train": 4000, "test": 1000}}
    with np.load(modes.sample_checkpoint(c, tmp_path)) as z:
        with_data = z["images"]
    monkeypatch.setattr(data, "load", lambda *a: pytest.fail("--mode=sample read the dataset"))
    with np.load(modes.sample_checkpoint(c, tmp_path)) as z:
        np.testing.assert_array_equal(z["images"], with_data)
    assert ("--mode=sample: the model for the images the run trained on, (28, 28, 1) (data.json)"
            in (tmp_path / "log_sample.txt").read_text())
    if config == "gan_mnist":  # its EMA generator's BatchNorm passes split train.batch_size over the devices
        first_devices(3)
        c.eval.batch_size = 63
        with pytest.raises(ValueError, match=r"train.batch_size=32 is not divisible by the 3 devices; use a multiple "
                                             r"of 3 \(e.g. 30 or 33\); the EMA generator's BatchNorm statistics are "
                                             r"estimated again before it samples"):
            modes.sample_checkpoint(c, tmp_path)
        first_devices(8)
        c.eval.batch_size = 64
    (tmp_path / "data.json").unlink()
    with pytest.raises(pytest.fail.Exception, match="read the dataset"):
        modes.sample_checkpoint(c, tmp_path)


def test_a_second_training_run_on_a_workdir_in_use_stops_at_once_naming_the_first(smoke_config, tmp_path):
    """The lock is the kernel's (flock): held by a live run, gone with its process however it ends. A refused run
    writes nothing into the workdir, not even into the live run's log.txt. --mode=eval of the newest checkpoint
    writes the run's own files, so it is refused too."""
    import os

    (tmp_path / "checkpoints").mkdir()  # as the training run's checkpoint manager makes it
    with loop.wd.training_lock(tmp_path, "training run"):
        with pytest.raises(loop.wd.WorkdirError, match=rf"is in use \(training run: pid {os.getpid()} on "
                                                       r".*\); wait for it to finish or stop it"):
            loop.train_and_evaluate(smoke_config, tmp_path)
        with pytest.raises(loop.wd.WorkdirError, match=r"is in use \(training run: .*--mode=sample, and --mode=eval "
                                                       r"with --config.eval.checkpoint=best, may run beside"):
            modes.evaluate_checkpoint(smoke_config, tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints", "train.lock"]
    assert (tmp_path / "train.lock").read_text() == ""  # a finished run names no holder
    with loop.wd.training_lock(tmp_path):  # released: free again
        pass


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the lr that makes the overflow
def test_a_non_finite_update_stops_the_run_naming_it_and_no_checkpoint_holds_it(smoke_config, tmp_path):
    """A learning rate past float32's range: the first update leaves non-finite params while the loss and gradients
    are finite. The step's guard checks the new state too, so that update is refused (before, it was applied and
    checkpointed), the error names it and the fix. (A NaN loss with a good checkpoint kept: tests/test_gan.py and
    tests/test_vae_step.py.)"""
    c = smoke_config
    c.eval.every, c.train.steps, c.checkpoint.every = 0, 10, 1
    c.optim.lr = 1e39  # Inf in float32
    with pytest.raises(loop.NonFiniteLossError, match=r"non-finite .* in the update from step 0 to 1: training "
                                                      r"stopped and that update was not applied; no checkpoint had "
                                                      r"been written yet. .*optim.clip_norm.*starts the run again"):
        loop.train_and_evaluate(c, tmp_path)
    task = loop.build_task(c, tmp_path)
    mgr, state = loop.restore(task)
    mgr.close()
    assert state is None


def test_python_warnings_reach_the_workdirs_log(tmp_path):
    """A library's RuntimeWarning (here JAX's, casting an lr past float32's range) was on the terminal only, not in
    log.txt, where the FATAL line sends the user."""
    wd = tmp_path / "run"
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--config.optim.lr=1e39",
               "--config.train.steps=10", "--config.eval.every=0")
    assert r.returncode == 1 and "FATAL NonFiniteLossError" in r.stderr, r.stderr[-3000:]
    assert re.search(r"\d\d:\d\d:\d\d WARNING .*RuntimeWarning: overflow encountered in cast", r.stderr)
    assert "RuntimeWarning: overflow encountered in cast" in (wd / "log.txt").read_text()


def test_eval_modes_refuse_a_config_of_another_task(tmp_path):
    from jaxgen import config as config_lib

    (tmp_path / "config.json").write_text(config_lib.gan_config().to_json_best_effort(sort_keys=True))
    with pytest.raises(ValueError, match=r"--mode=sample: the workdir .* was trained with a gan config \(.*"
                                         r"config.json\), this one is a vae config: give the training command's"):
        run_record.warn_config_drift(config_lib.vae_config(), tmp_path, "sample")


def test_eval_modes_warn_only_about_fields_that_change_the_model_or_its_numbers(tmp_path, caplog, monkeypatch):
    """--mode=eval/sample: how the model is computed (conv_impl, norm_impl), checkpointing and train.* are not
    drift; another seed is a note (other samples of the same model); a GAN's train.batch_size is drift where the
    EMA generator's BatchNorm statistics are re-estimated in batches of it; a model's width is drift."""

    from jaxgen import config as config_lib

    trained = config_lib.gan_config()
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(sort_keys=True))
    now = config_lib.gan_config()
    now.model.conv_impl, now.model.norm_impl, now.checkpoint.keep, now.train.steps = "xla", "flax", 1, 7
    now.seed, now.loss.name, now.reg.name, now.g_optim.lr = 1, "hinge", "r1", 0.1  # what only training reads
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        assert run_record.warn_config_drift(now, tmp_path, "sample") == []
    assert ("--mode=sample with seed 1 (training's: 0): other samples and evaluation noise of the same model"
            in caplog.text)
    now.model.dtype = "bfloat16"  # how it computes
    assert run_record.warn_config_drift(now, tmp_path, "eval") == []
    now.train.batch_size, now.data.num_examples = 32, 100
    changed = run_record.warn_config_drift(now, tmp_path, "eval")
    assert [c.split(":")[0] for c in changed] == ["data.num_examples", "train.batch_size"]
    assert "BatchNorm statistics are re-estimated in batches of train.batch_size" in changed[1]
    now.train.ema_half_life = 0  # the raw G: its own running statistics, whatever the batch
    assert [c.split(":")[0] for c in run_record.warn_config_drift(now, tmp_path, "eval")] == ["data.num_examples"]
    now.data.name = "image_folder"  # drift, unless --mode=sample reads no data (data.json)
    assert [c.split(":")[0] for c in run_record.warn_config_drift(now, tmp_path, "sample")] == ["data.name",
                                                                                             "data.num_examples"]
    assert run_record.warn_config_drift(now, tmp_path, "sample", data_read=False) == []
    # The model itself: the checkpoint's weights would run in another network (the same shapes: no layout check
    # would catch it).
    now.model.g_width = 16
    with pytest.raises(ValueError, match=r"--mode=eval: this command's model differs from the one the workdir was "
                                         r"trained with .* in: model.g_width: 64 -> 16. The checkpoint holds the "
                                         r"trained model's weights: repeat the training command's overrides$"):
        run_record.warn_config_drift(now, tmp_path, "eval")
    # A config replayed from command.json (no --config): the difference is an edited file or this command's own.
    from jaxgen import command_record

    monkeypatch.setattr(command_record, "_replayed", [str(tmp_path / "command.json")])
    with pytest.raises(ValueError, match=r"overrides \(this command took the training command's config and overrides "
                                         r"from .*command.json: the difference comes from edits to the config file "
                                         r"since training, or from this command's own overrides\)$"):
        run_record.warn_config_drift(now, tmp_path, "eval")
    vae = config_lib.vae_config()  # a VAE is evaluated by its ELBO and NLL whatever objective trained it
    (tmp_path / "config.json").write_text(vae.to_json_best_effort(sort_keys=True))
    vae.objective.name, vae.objective.beta, vae.objective.k, vae.optim.lr = "iwae", 4.0, 5, 0.1
    vae.model.output_bias = "data_mean"  # how the decoder's last bias started
    assert run_record.warn_config_drift(vae, tmp_path, "eval") == []
    vae.objective.likelihood, vae.optim.name = "gaussian", "adamw"  # adamw's state is another tree: named
    assert [c.split(":")[0] for c in run_record.warn_config_drift(vae, tmp_path, "eval")] == ["objective.likelihood",
                                                                                          "optim.name"]
    # Fields a config file of the user's added: in `objective` read by its training objective alone, unless a
    # likelihood or extractor of the user's may read them; a model factory's: drift, fixed by giving that file.
    factory = "tests.test_configs:users_vae_factory"
    trained = config_lib.vae_config()
    trained.model.name = factory
    with trained.objective.unlocked(), trained.model.unlocked():
        trained.objective.free_bits, trained.model.my_hidden = 0.25, 64
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(sort_keys=True))
    now = config_lib.vae_config()
    now.model.name = factory
    with pytest.raises(ValueError, match=r"in: model.my_hidden: 64 -> None. .*give the training command's config "
                                         r"file \(it added model.my_hidden\) and repeat its overrides"):
        run_record.warn_config_drift(now, tmp_path, "eval")
    with trained.model.unlocked():
        del trained.model["my_hidden"]
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(sort_keys=True))
    assert run_record.warn_config_drift(now, tmp_path, "eval") == []  # only training reads free_bits
    now.objective.likelihood = "myproject.lik:laplace"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        assert [c.split(":")[0] for c in run_record.warn_config_drift(now, tmp_path, "eval")] == [
            "objective.free_bits", "objective.likelihood"]
    assert ("Give the training command's config file (it added objective.free_bits, which this config lacks) and "
            "repeat its overrides to evaluate the model as it was trained" in caplog.text)
    now.objective.likelihood, now.eval.extractors = "bernoulli", ("myproject.extract:pooled",)
    assert [c.split(":")[0] for c in run_record.warn_config_drift(now, tmp_path, "eval")] == [
        "objective.free_bits"]  # an extractor of the user's may read it (eval.* may differ)
    # Not drift: a field the trained config.json lacks (a later jaxgen's, with a default that keeps what runs did),
    # where a host finds its files, a model field the trained model does not read (mlp_vae's hidden on conv_vae).
    trained = json.loads(config_lib.vae_config().to_json_best_effort(sort_keys=True))
    del trained["data"]["random_flip"], trained["data"]["validation_examples"]
    (tmp_path / "config.json").write_text(json.dumps(trained))
    now = config_lib.vae_config()
    now.data.path, now.model.hidden = "/elsewhere", (512,)
    assert run_record.warn_config_drift(now, tmp_path, "eval") == []
    now.model.activation = "tanh"  # read by conv_vae
    with pytest.raises(ValueError, match=r"in: model.activation: 'relu' -> 'tanh'\. "):
        run_record.warn_config_drift(now, tmp_path, "eval")


def test_eval_mode_without_a_checkpoint_says_train_first(smoke_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="no readable checkpoint .* train first"):
        modes.evaluate_checkpoint(smoke_config, tmp_path)
    with pytest.raises(FileNotFoundError, match="no readable checkpoint .* train first"):
        modes.sample_checkpoint(smoke_config, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written into it, not even a lock file
    smoke_config.eval.checkpoint = "best"
    with pytest.raises(FileNotFoundError, match=r"best; the best checkpoint by elbo is kept at the run's evaluations "
                                                r"\(every eval.every=10 steps, and at the last step\); none has been"):
        modes.evaluate_checkpoint(smoke_config, tmp_path)
    smoke_config.eval.checkpoint = "bset"  # the config's own error, not "no checkpoint in .../best"
    with pytest.raises(ValueError, match="eval.checkpoint must be 'newest' or 'best', got 'bset'"):
        modes.sample_checkpoint(smoke_config, tmp_path)


def laplace_log_prob(out, x, cfg):
    """A user's likelihood: Laplace(x; sigmoid(out), 0.1) summed over the pixels, its mean image given as `.mean`."""
    import jax
    import jax.numpy as jnp

    b = 0.1
    return jnp.sum(-jnp.abs(x - jax.nn.sigmoid(out)) / b - jnp.log(2 * b), axis=(-3, -2, -1))


def _sigmoid(out):
    import jax

    return jax.nn.sigmoid(out)


laplace_log_prob.mean = _sigmoid


def test_a_users_likelihood_trains_evaluates_and_draws_its_mean(smoke_config, tmp_path):
    c = smoke_config
    c.objective.likelihood = "tests.test_launch:laplace_log_prob"
    c.data.binarize = "none"
    c.eval.every = 0
    final = loop.train_and_evaluate(c, tmp_path)
    assert math.isfinite(final["nll"]) and math.isfinite(final["elbo"])
    assert (tmp_path / "images" / "samples.png").is_file() and (tmp_path / "images" / "reconstructions.png").is_file()


def test_with_a_progress_bar_the_train_lines_go_to_log_txt_only(smoke_config, tmp_path, capsys, monkeypatch):
    """On a terminal the bar shows the train records' numbers: their log lines go to log.txt, not above the bar
    (through tqdm's stand-in for the console handler, which must get the same filter)."""
    from jaxgen.training import loop

    smoke_config.output.progress, smoke_config.train.steps, smoke_config.eval.every = True, 10, 0
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    loop.train_and_evaluate(smoke_config, tmp_path)
    out = "".join(capsys.readouterr())
    assert "10/10" in out and "Final evaluation of step 10" in out  # the bar, and the other log lines
    assert "step 10/10 (100%)" not in out
    assert "step 10/10 (100%): loss" in (tmp_path / "log.txt").read_text()


def test_a_train_records_rate_counts_training_time_only(smoke_config, tmp_path, monkeypatch):
    """The img/s of a train record after an evaluation or a checkpoint save leaves their time out: here the loop's
    clock jumps 1000 s during each evaluation (steps 10 and 20), which would pull the next record's rate (160
    images) below 1 img/s. The ETA adds the evaluations still to come at their mean time: 1000 s at steps 15 and
    20 (the one at step 20, which runs after that step's record), none at step 25 (the final evaluation is not
    counted)."""
    from jaxgen.reporting.writer import read
    from jaxgen.training import loop

    class Clock:  # the loop's `time` module, with perf_counter offset
        offset = 0.0

        def perf_counter(self):
            return time.perf_counter() + self.offset

        def __getattr__(self, name):
            return getattr(time, name)

    clock = Clock()
    monkeypatch.setattr(loop, "time", clock)
    c = smoke_config
    c.train.steps, c.train.log_every, c.eval.every, c.checkpoint.every = 30, 5, 10, 10
    during = evaluating.Evals.during_training

    def slow(self, *args, **kwargs):
        clock.offset += 1000.0
        return during(self, *args, **kwargs)

    monkeypatch.setattr(evaluating.Evals, "during_training", slow)
    loop.train_and_evaluate(c, tmp_path)
    rates = {r["step"]: r["img_per_s"] for r in read(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert sorted(rates) == [5, 10, 15, 20, 25, 30] and rates[15] > 1 and rates[25] > 1, rates
    log_txt = (tmp_path / "log.txt").read_text()
    eta = {int(m[1]): 3600 * int(m[2]) + 60 * int(m[3]) + int(m[4])
           for m in re.finditer(r"step (\d+)/30 .*; ETA (\d\d):(\d\d):(\d\d)", log_txt)}
    assert 1000 <= eta[15] < 1100 and 1000 <= eta[20] < 1100 and eta[25] < 100, eta  # at 20: its own eval
    untimed = dict(re.findall(r"step (\d+)/30 .*; ETA \d\d:\d\d:\d\d(.*)", log_txt))  # what the ETA leaves out
    assert untimed == {**{s: " + evals + final eval" for s in ("5", "10")},  # step 10's record comes before its eval
                       **{s: " + final eval" for s in ("15", "20", "25", "30")}}


def test_tensorboard_points_are_flushed_before_each_checkpoint_and_not_doubled(smoke_config, tmp_path, monkeypatch):
    """A run killed after a checkpoint lost the buffered TensorBoard points before it for good (its resume does not
    write them again); a finished run run again, and --mode=eval, added second points at the last step."""
    import struct

    from tensorboardX.proto import event_pb2

    from jaxgen.reporting.writer import MetricWriter
    from jaxgen.training import checkpoint

    def steps_on_disk(tag):
        """The steps of `tag`'s points in the events files (TFRecords: length, its CRC, the event, its CRC)."""
        found = []
        for path in (tmp_path / "run" / "tb").glob("events.out.tfevents.*"):
            data, at = path.read_bytes(), 0
            while at + 12 <= len(data):
                (n,) = struct.unpack("<Q", data[at:at + 8])
                event = event_pb2.Event.FromString(data[at + 12:at + 12 + n])
                found += [event.step for v in event.summary.value if v.tag == tag]
                at += 12 + n + 4
        return found

    save = checkpoint.save
    seen = []

    def save_and_look(mgr, state):
        seen.append((int(state["step"]), steps_on_disk("train/loss")))
        return save(mgr, state)

    monkeypatch.setattr(checkpoint, "save", save_and_look)
    smoke_config.checkpoint.every, smoke_config.train.log_every = 10, 5
    loop.train_and_evaluate(smoke_config, tmp_path / "run")
    # At each checkpoint, its own step's train point is on disk already (tensorboardX queues them for a thread).
    assert [(step, step in on_disk) for step, on_disk in seen] == [(10, True), (20, True)]

    points = []
    writer = MetricWriter(tmp_path / "w", resume_step=0)
    monkeypatch.setattr(writer._tb, "add_scalar", lambda tag, value, step: points.append((tag, value, step)))
    writer.write(20, "eval", {"elbo": -1.0})
    writer.write(20, "eval", {"elbo": -2.0})  # a re-evaluation replaces the record, not the point
    writer.close()
    assert points == [("eval/elbo", -1.0, 20)]
    assert [r["elbo"] for r in read(tmp_path / "w" / "metrics.jsonl")] == [-2.0]
    # The NLL of the evaluations during training (eval.nll_k) and of the final one (eval.final_nll_k): two curves.
    writer = MetricWriter(tmp_path / "w", resume_step=20)
    monkeypatch.setattr(writer._tb, "add_scalar", lambda tag, value, step: points.append((tag, value, step)))
    writer.write(30, "eval", {"nll": 90.0, "nll_k": 100, "elbo": -95.0})
    writer.write(40, "eval", {"nll": 88.0, "nll_bits_per_dim": 0.16, "nll_k": 1000})
    writer.close()
    assert points[1:] == [("eval/nll_k100", 90.0, 30), ("eval/nll_k", 100, 30), ("eval/elbo", -95.0, 30),
                          ("eval/nll_k1000", 88.0, 40), ("eval/nll_bits_per_dim_k1000", 0.16, 40),
                          ("eval/nll_k", 1000, 40)]
    assert [r.get("nll") for r in read(tmp_path / "w" / "metrics.jsonl")] == [None, 90.0, 88.0]  # names as they are
    # A new writer (a finished run run again) replaces its step's record; --mode=eval's ("by") stands beside it.
    writer = MetricWriter(tmp_path / "w", tb_run="mode_eval")
    writer.write(40, "eval", {"nll": 87.0}, by="--mode=eval")
    writer.write(40, "eval", {"nll": 86.0}, by="--mode=eval")
    writer.close()
    writer = MetricWriter(tmp_path / "w")
    writer.write(40, "eval", {"nll": 85.0})
    writer.close()
    assert [(r.get("nll"), r.get("by")) for r in read(tmp_path / "w" / "metrics.jsonl")] == [
        (None, None), (90.0, None), (86.0, "--mode=eval"), (85.0, None)]
    assert (tmp_path / "w" / "tb" / "mode_eval").is_dir()


def test_mode_eval_with_another_seed_or_config_leaves_the_runs_images(trained_vae):
    """The run's samples are of its fixed noise (the seed's): --mode=eval with another seed overwrote them."""
    c, workdir = trained_vae
    before = {p.name: p.read_bytes() for p in (workdir / "images").iterdir()}
    c.seed = 1
    modes.evaluate_checkpoint(c, workdir)
    assert {p.name: p.read_bytes() for p in (workdir / "images").iterdir()} == before
    assert "--mode=eval with another seed than training: the run's images" in (workdir / "log_eval.txt").read_text()
    assert "config_differs_from_training" not in json.loads((workdir / "eval.json").read_text())  # seed: a note
    # Another config than training's (here the test set's binarization): its numbers say so, the images stay.
    c.seed, c.data.binarize = 0, "none"
    modes.evaluate_checkpoint(c, workdir)
    assert {p.name: p.read_bytes() for p in (workdir / "images").iterdir()} == before
    assert json.loads((workdir / "eval.json").read_text())["config_differs_from_training"] == [
        "data.binarize: 'dynamic' -> 'none'"]
    c.data.binarize = "dynamic"
    path = modes.sample_checkpoint(c, workdir)
    with np.load(path) as saved:
        assert (int(saved["seed"]), str(saved["checkpoint"]), str(saved["params"])) == (0, "newest", "raw")
