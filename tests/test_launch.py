"""End to end through launch.py, every config's smoke variant, and every bad input's error."""

import contextlib
import glob
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jaxgen.reporting.writer import read
from jaxgen.training import evaluating, loop, modes
from tests.conftest import TEST_XLA_FLAGS, config_module

ROOT = Path(__file__).resolve().parent.parent


def _launch(*args, cwd=ROOT):
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # no faked devices: launch.py as a user runs it
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


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


def test_launch_smoke_end_to_end_then_resume(tmp_path):
    """A user's workdir through launch.py: a run and its outputs; the same command with more steps resumes and is
    stopped by SIGTERM as a scheduler stops a job; --mode=eval and --mode=sample on the step it reached."""
    wd = tmp_path / "run"
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "step/s" not in r.stderr and "\r" not in r.stderr  # stderr is no terminal here: no progress bar
    # ... so the train records' numbers are log lines, on stderr and in log.txt (there always: runtime.FILE_ONLY).
    line = r"INFO step 10/20 \(50%\): loss [\d.]+; [\d,]+ img/s; ETA \d\d:\d\d:\d\d\n"
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

    # --config.deterministic: XLA:GPU's flag, which every jaxlib accepts (a CPU run is deterministic anyway).
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--mode=eval", "--config.deterministic=True")
    assert r.returncode == 0, r.stderr[-3000:]
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

    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={wd}", "--mode=sample", "--config.sample.num=20",
                "--config.objective.likelihood=gaussian")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "--mode=sample runs with this command's config, which differs" in r.stderr
    assert "objective.likelihood: 'bernoulli' -> 'gaussian'" in r.stderr and "Repeat the training command's" in r.stderr
    assert (wd / "samples" / f"step_{step:07d}.npz").is_file()
    assert (wd / "samples" / f"step_{step:07d}_001.png").is_file()


def _load_config(path, variant):
    return config_module(path).get_config(variant)


CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "*.py")))


# The smoke variants of vae_mnist and gan_celeba train in test_launch_smoke_end_to_end_then_resume (through
# launch.py) and tests/test_gan.py's TFDS mock-data run: not twice (CI time).
SMOKE_ELSEWHERE = ("vae_mnist", "gan_celeba")


@pytest.mark.parametrize("path", [p for p in CONFIGS if Path(p).stem not in SMOKE_ELSEWHERE],
                         ids=[Path(p).stem for p in CONFIGS if Path(p).stem not in SMOKE_ELSEWHERE])
def test_every_config_has_a_smoke_variant_that_trains(path, tmp_path, one_device):
    """On one device, as a user checks an install (8 faked devices took gan_cifar10's smoke run ~20 -> ~50 s)."""
    c = _load_config(path, "smoke")
    c.unlock()
    c.output.progress = False
    c.output.plots = False
    if c.eval.every and c.eval.every % c.train.steps_per_dispatch == 0:  # one eval, the final, and one train record
        c.train.steps = min(c.train.steps, c.eval.every, c.train.log_every)  # (gan_cifar10's ResNet steps are slow)
    final = loop.train_and_evaluate(c, tmp_path)
    assert final["num_examples"] > 0
    assert all(math.isfinite(v) for v in final.values() if isinstance(v, float)), final


@pytest.mark.parametrize("path", CONFIGS, ids=[Path(p).stem for p in CONFIGS])
def test_every_config_loads_all_its_variants(path):
    mod = config_module(path)
    assert mod.get_config("").is_locked
    assert "smoke" in mod.VARIANTS
    for name in mod.VARIANTS:
        mod.get_config(name)


def test_unknown_config_field_is_an_error(tmp_path):
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.train.bacth_size=8")
    assert r.returncode != 0 and "bacth_size" in r.stderr


@pytest.mark.parametrize("override,block,fields", [
    ("train.zzzz=8", "train", "batch_size, ema_half_life, ema_rampup, log_every, steps, steps_per_dispatch\n"),
    ("objective.zzzz=8", "objective", "beta, gaussian_sigma, k, kl, kl_warmup_steps, likelihood, name; a field of your "
                                      "own (read by your function through `cfg`) is added to objective in a config"),
    ("zzzz.steps=8", "the config",
     "checkpoint, data, deterministic, eval, model, objective, optim, output, sample, seed, task, train\n"),
])
def test_unknown_config_field_names_it_and_lists_the_fields_of_its_block(tmp_path, override, block, fields):
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
    field = override.split("=")[0]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"unknown config field '{field}'; fields of {block}: {fields}" in r.stderr
    assert not any(tmp_path.iterdir())  # failed at flag parsing, before any work


@pytest.mark.parametrize("override,message", [
    ("train.steps=1e3", "config field train.steps is an integer, got '1e3': write it as one, e.g. "
                        "--config.train.steps=1000\n"),  # absl: "invalid literal for int() with base 10"
    ("train.batch-size=64", "unknown config field 'train.batch-size' (did you mean 'train.batch_size'?); fields of "
                            "train: batch_size,"),  # a raw ValueError from ml_collections' path parser, 50 lines
])
def test_overrides_researchers_type_get_one_line_that_says_what_to_write(tmp_path, override, message):
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"FATAL Flags parsing error: {message}" in r.stderr
    assert not any(tmp_path.iterdir())


def test_a_config_file_that_returns_a_dict_is_one_line(tmp_path):
    (tmp_path / "mine.py").write_text("def get_config(variant=''):\n    return {'task': 'vae'}\n")
    r = _launch(f"--config={tmp_path / 'mine.py'}", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "get_config returned a dict, not an ml_collections.ConfigDict" in r.stderr
    assert not (tmp_path / "run").exists()


def test_the_parse_errors_of_a_field_and_a_config_file_name_the_fix(tmp_path):
    from jaxgen import cli, config_errors
    from jaxgen import config as config_lib
    from jaxgen.training import workdir

    said = cli._value_of_another_type
    assert said("flag --config.optim.lr=None: could not convert string to float: 'None'") == (
        "config field optim.lr is a number, got 'None': write it as one, e.g. --config.optim.lr=3e-4")
    assert said("flag --config.output.plots=no: ('Non-boolean argument to boolean flag', 'no')") == (
        "config field output.plots is true or false, got 'no': write --config.output.plots=true or "
        "--config.output.plots=false (or 1 or 0)")
    assert "e.g. --config.train.steps=20000" in said("flag --config.train.steps=2e4: invalid literal for int() "
                                                      "with base 10: '2e4'")
    assert said("flag --mode=x: something else") is None
    c = config_lib.vae_config()
    assert config_errors.unknown_field(c, "model.channels[0]") == (
        "config field model.channels is set whole, not one element: e.g. --config.model.channels='(32, 64)'")
    assert config_errors.unknown_field(c, "train.steps[0]").startswith("unknown config field 'train.steps[0]'")
    assert "(did you mean 'optim.lr'?" in config_errors.unknown_field(c, "g_optim.lr")
    assert "(did you mean 'train.steps'?)" in config_errors.unknown_field(c, "train.step")
    assert ("'optim.lr' (did you mean 'g_optim.lr'? It is a field of VAE configs; this config's task is gan.); fields "
            "of the config: augment,") in config_errors.unknown_field(config_lib.gan_config(), "optim.lr")
    d_steps = config_errors.unknown_field(c, "train.d_steps")
    assert "It is a field of GAN configs; this config's task is vae.)" in d_steps
    import types

    with pytest.raises(AttributeError) as no_function:  # the error ml_collections' loader raises
        types.ModuleType("config_config").get_config  # noqa: B018
    assert "has no function get_config(variant='')" in config_errors.missing_get_config(no_function.value)
    with pytest.raises(AttributeError) as helpers:  # a helper module of the user's file: its own traceback stays
        types.ModuleType("myhelpers").get_config  # noqa: B018
    assert config_errors.missing_get_config(helpers.value) is None
    with pytest.raises(ValueError, match=r"variants are combined with a comma: 'smoke,iwae'"):
        config_lib.with_variant(c, "smoke:iwae", {"smoke": lambda c: c, "iwae": lambda c: c})
    with pytest.raises(workdir.WorkdirError, match=r"--workdir is empty \(''\): pass the .*\(--workdir=\. for"):
        workdir.prepare("")
    from jaxgen.data import augment
    from jaxgen.evaluation import quality

    with pytest.raises(ValueError, match="no augmentation is the empty policy: --config.augment.policy="):
        augment.check_policy("none")
    with pytest.raises(ValueError, match=r"eval.extractors=\(None,\): give a tuple of extractor names"):
        quality.check_names((None,))


@pytest.mark.parametrize("override,hint", [
    ("loss=hinge", "(e.g. --config.loss.name=hinge)"),
    ("checkpoint=5", "(its fields: asynchronous, best_metric, best_mode, every, keep)"),
])
def test_a_block_given_a_value_says_to_set_one_of_its_fields(tmp_path, override, hint):
    r = _launch("--config=configs/gan_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
    block = override.split("=")[0]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (f"FATAL Flags parsing error: --config.{block} is a block of fields, not a value: set one of its fields "
            f"{hint}\n") in r.stderr


def test_fields_a_config_file_adds_are_listed_and_those_nothing_reads_warned_about(caplog):
    """Inside `with c.unlocked():` a misspelt field is a new one: the check names those that no function of the
    user's receives, with the field they may have meant."""
    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.vae_config()
    with c.unlocked():
        c.objective.bta, c.train.step, c.seeed = 0.5, 10, 1
        c.objective.name = "elbo"
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        config_check.check(c)
    assert ("added fields that nothing reads (their block's function is jaxgen's own, which reads only its known "
            "fields): objective.bta (did you mean objective.beta?); seeed (did you mean seed?); train.step (did you "
            "mean train.steps?)") in caplog.text
    caplog.clear()
    c.objective.name = "tests.test_user_functions:keyword_objective"  # a function of the user's gets the block
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        config_check.check(c)
    assert "Fields of your own, added by the config file: objective.bta\n" in caplog.text
    assert "nothing reads" in caplog.text and "objective.bta (did" not in caplog.text


def test_a_function_reading_a_field_its_block_lacks_is_named_with_the_fix():
    import ml_collections

    from jaxgen import config_errors

    def my_loss(cfg):
        return cfg.margin * 2

    with pytest.raises(AttributeError) as e:
        my_loss(ml_collections.FrozenConfigDict({"name": "x", "weight": 1.0}))
    message = config_errors.field_read_error(e.value)
    assert message.startswith(f"{__file__}:")
    assert ("(return cfg.margin * 2) reads the config field 'margin', which its block lacks (its fields: name, "
            "weight); a field of your own is added to the block in a config file") in message


def test_one_log_format_from_the_config_on_and_no_tfds_warning_before_jaxgens_message(tmp_path):
    """A variant's warning while the flags are parsed reads like every other line ('17:08:15 WARNING ...', not
    absl's 'W1129 17:08:15.123 ...'); TFDS's 'no dataset_info.json' warning of a dataset not prepared is muted, so
    jaxgen's message saying what to do is what the user reads."""
    r = _launch("--config=configs/iwae_mnist.py:k1,k50", f"--workdir={tmp_path / 'w'}", "--config.data.download=False",
                f"--config.data.data_dir={tmp_path / 'd'}")
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    warning = [line for line in lines if "config variant 'k50' overrides" in line]
    assert len(warning) == 1 and re.match(r"\d\d:\d\d:\d\d WARNING config variant 'k50' overrides", warning[0])
    assert not any(re.match(r"[IWEF]\d{4} ", line) for line in lines), r.stderr  # absl's format
    assert "dataset_info.json" not in r.stderr
    assert "FATAL DatasetUnavailableError: TFDS dataset 'mnist' is not prepared in" in r.stderr


def test_an_error_jaxgen_raises_is_one_message_and_its_traceback_lands_in_log_txt(tmp_path):
    """Bad input stops with its message on stderr (no traceback burying it); log.txt keeps the traceback, and
    --traceback prints it."""
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.data.name=mnist_6k")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "FATAL UnknownNameError: unknown dataset 'mnist_6k'; choices: " in r.stderr
    assert f"(its traceback: {tmp_path / 'log.txt'}, or rerun with --traceback)" in r.stderr
    logged = (tmp_path / "log.txt").read_text()
    assert "ERROR The run stopped: UnknownNameError: " in logged and "mnist_6k" in logged and "Traceback" in logged
    r = _launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.data.name=mnist_6k",
                "--traceback")
    assert r.returncode == 1 and "Traceback" in r.stderr and "mnist_6k" in r.stderr


def test_bad_input_leaves_no_workdir_that_the_command_created(tmp_path):
    """A misspelt name on a new --workdir: the FATAL line, and no stray workdir holding only a log and a lock file
    (the traceback is one --traceback away). A workdir that existed keeps its log (the test above)."""
    (tmp_path / "runs").mkdir()
    wd = tmp_path / "runs" / "new" / "typo"
    r = _launch("--config=configs/gan_mnist.py:smoke", f"--workdir={wd}", "--config.loss.name=hinje")
    assert r.returncode == 1 and "FATAL UnknownNameError: unknown GAN loss 'hinje'" in r.stderr, r.stderr[-3000:]
    assert r.stderr.rstrip().endswith("(its traceback: rerun with --traceback)")
    assert not (tmp_path / "runs" / "new").exists() and (tmp_path / "runs").is_dir()  # what the command created


def test_only_errors_jaxgen_raises_for_the_user_lose_their_traceback():
    import numpy as np

    from jaxgen import registry
    from jaxgen.training import workdir

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("no error")

    def a_users_check():
        raise ValueError("raised outside jaxgen")

    assert workdir.raised_on_purpose(raised(lambda: registry.resolve("dataset", "nope", {"a": 1})))
    assert not workdir.raised_on_purpose(raised(a_users_check))  # a user's code: its traceback says where
    assert not workdir.raised_on_purpose(raised(lambda: np.reshape(np.zeros(3), (2, 2))))  # raised in numpy
    assert not workdir.raised_on_purpose(raised(lambda: registry.resolve("dataset", "x", None)))  # a TypeError: a bug
    from jaxgen.training import state as state_lib

    # A ValueError of a builtin (an array's truth value) on a jaxgen line that is no `raise`: a bug, traceback kept.
    assert not workdir.raised_on_purpose(raised(lambda: state_lib.ema_rate(0, 1, np.zeros(3), rampup=np.ones(2))))
    assert not workdir.raised_on_purpose(KeyboardInterrupt())


def test_a_full_disk_is_named_with_where_and_what_to_do():
    """launch.py's FATAL line for a full disk (or quota): from an OSError of a log, image or metrics write, or from
    the text of Orbax's asynchronous checkpoint write (TensorStore's RESOURCE_EXHAUSTED, as a 1 MB tmpfs gave it),
    anywhere in the error's chain; nothing for other errors."""
    import errno

    from jaxgen.training import failures

    full = failures.disk_full(OSError(errno.ENOSPC, "No space left on device", "/runs/a/images/samples.png"))
    assert full.startswith("No space left on the device that holds /runs/a/images/samples.png. Free space there")
    assert "--config.checkpoint.keep" in full and full.endswith("a half-written one is never read, and the next "
                                                                "start removes it)")
    orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.nu.params.dec_dense.kernel/0.0" in OCDBT '
                       'database at local file "/runs/a/best/10.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
                       'ocdbt.process_0/": Failed writing: "/runs/a/best/10.orbax-checkpoint-tmp/state.orbax-'
                       'checkpoint-tmp/ocdbt.process_0/d/73fd6c2d": Failed to write 827753 bytes to file 22: No '
                       "space left on device [os_error_code='28']")
    try:
        try:
            raise orbax
        except ValueError as e:
            raise RuntimeError("a save failed") from e
    except RuntimeError as e:
        chained = e
    full = failures.disk_full(chained, mode="eval")
    assert full.startswith("No space left on the device that holds /runs/a/best/10 (a checkpoint being written).")
    assert full.endswith("then run the same command again")
    assert failures.disk_full(OSError(errno.EDQUOT, "Disk quota exceeded", "/x")).startswith("Disk quota exceeded")
    assert failures.disk_full(ValueError("no space for the latent")) is None
    assert failures.disk_full(OSError(errno.EACCES, "Permission denied", "/x")) is None


def test_after_a_full_disks_fatal_line_stderr_is_quiet():
    """The FATAL line stays the last: what Orbax's writer threads print while Python shuts down goes nowhere."""
    code = ("import os, sys; from jaxgen.training import failures; sys.stderr.write('FATAL No space\\n'); "
            "failures.quiet_stderr(); sys.stderr.write('late traceback\\n'); os.write(2, b'from a thread\\n')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "FATAL No space\n", r.stderr


def test_orbax_writer_errors_are_one_line_on_the_terminal_and_their_tracebacks_go_to_the_log_file(tmp_path, capsys,
                                                                                                   monkeypatch):
    """A checkpoint write that fails (a full disk) made ~500 lines of tracebacks before the FATAL line: Orbax logs
    the error from each thread that sees it, and TensorStore's late writes raise "Event loop is closed" where only
    Python's unraisable hook sees them. In failures.writer_errors_logged: one warning line per distinct error; the
    first traceback of each kind in the log file; anything else as before."""
    import asyncio
    import threading

    from jaxgen.training import failures, workdir

    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [])  # this test's own, to its stderr and tmp_path
    workdir.setup_logging(tmp_path)
    absl = logging.getLogger("absl")

    def orbax_logs(error, message):  # as Orbax's writer thread does: absl's logging.exception
        try:
            raise error
        except ValueError:
            record = absl.makeRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/_src/futures/future.py",
                                     387, message, (), sys.exc_info())
        absl.handle(record)

    seen = []
    hook, before = sys.unraisablehook, seen.append
    sys.unraisablehook = before  # the hook in place before the block: what is not ours reaches it
    try:
        with failures.writer_errors_logged():
            full = ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device [os_error_code='28']")
            orbax_logs(full, "[thread=array_type_handler] raised an exception")
            orbax_logs(full, "[thread=MainThread][wait_until_finished] Save Finalize thread failed.")  # said once
            loop = asyncio.new_event_loop()
            loop.close()

            class LateWrite:  # TensorStore's callback into the closed loop, in a thread of its own
                def __del__(self):
                    loop.call_soon_threadsafe(print)

            class Other:
                def __del__(self):
                    raise KeyError("not a write's")

            for make in (LateWrite, LateWrite, Other):
                thread = threading.Thread(target=make)
                thread.start()
                thread.join()
        assert sys.unraisablehook is before
    finally:
        sys.unraisablehook = hook
    err = capsys.readouterr().err
    assert "WARNING Orbax reported an error: ValueError: RESOURCE_EXHAUSTED" in err
    assert len(err.strip().splitlines()) == 1, err  # that one line: no tracebacks
    text = (tmp_path / "log.txt").read_text()
    assert text.count("Orbax's error: [thread=array_type_handler]") == 1 and "Save Finalize" not in text
    assert text.count("could not report back") == 1 and "RuntimeError: Event loop is closed" in text
    assert [type(u.exc_value) for u in seen] == [KeyError]
    # Without a log file (the processes other than 0) Orbax's own record stays: its traceback has nowhere else to go.
    record = absl.makeRecord("absl", logging.ERROR, "/orbax/x.py", 1, "failed", (), (ValueError, full, None))
    assert not failures._orbax_error(set(), record)
    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [])
    assert failures._orbax_error(set(), record)


def test_a_log_file_that_cannot_be_written_is_said_once_not_with_a_traceback_per_line(capsys, monkeypatch):
    from jaxgen.training import workdir

    logger = logging.getLogger("jaxgen")
    handler = workdir.LogFile("/dev/full")  # every write fails: No space left on device
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)  # as launch.py sets it (runtime.console_logging)
    try:
        for i in range(3):
            logger.info("line %d", i)
    finally:
        with contextlib.suppress(OSError):
            handler.close()
    err = capsys.readouterr().err
    assert err.count("The log file /dev/full cannot be written (No space left on device)") == 1
    assert "Logging error" not in err and "Traceback" not in err


def test_a_checkpoint_save_that_failed_stops_the_run_at_the_next_train_record(smoke_config, tmp_path, monkeypatch,
                                                                              capfd):
    """Orbax raises an asynchronous save's error only at the next save, checkpoint.every steps later: the loop asks
    at every train record (checkpoint.check_saves) and stops there, the checkpoints written whole kept. The save of
    step 10 fails in Orbax's own thread that finishes it (as a full disk fails it); the test waits for that thread
    before the next record, so that the record finds the save ended. Called as a notebook calls it (no launch.py),
    Orbax's error records with their tracebacks become jaxgen's one warning line too."""
    import errno
    import time

    import orbax.checkpoint as ocp

    from jaxgen.training import checkpoint

    finalize = ocp.CheckpointManager._finalize_checkpoint

    def failing(self, step):
        if step == 10 and "best" not in str(self.directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "10"))
        return finalize(self, step)

    save = checkpoint.save

    def save_then_wait(mgr, state):
        started = save(mgr, state)
        while mgr.is_saving_in_progress():
            time.sleep(0.01)
        return started

    monkeypatch.setattr(ocp.CheckpointManager, "_finalize_checkpoint", failing)
    monkeypatch.setattr(checkpoint, "save", save_then_wait)
    c = smoke_config
    c.train.steps, c.train.log_every, c.checkpoint.every, c.eval.every = 40, 5, 10, 0
    with pytest.raises(OSError, match="No space left on device"):
        loop.train_and_evaluate(c, tmp_path)
    steps = [r["step"] for r in read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [5, 10, 15], steps  # stopped at the record after the save, not at step 20's save
    err = capfd.readouterr().err
    assert err.count("WARNING Orbax reported an error: OSError: [Errno 28]") == 1, err
    assert "Traceback" not in err, err  # Orbax's own records, with theirs, did not get through


def test_an_error_that_cannot_be_logged_on_a_full_disk_is_not_said_to_be_in_the_log(monkeypatch, capsys):
    """log_fatal on a log file whose disk is full (/dev/full): no logging traceback on stderr, and no log file
    named in the FATAL line."""
    import logging

    from jaxgen.training import workdir

    handler = logging.FileHandler("/dev/full")
    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [handler])
    try:
        assert workdir.log_fatal(ValueError("a bad value")) is None
    finally:
        with contextlib.suppress(OSError):  # its buffer still holds the line (logging.shutdown ignores this too)
            handler.close()
    assert "Logging error" not in capsys.readouterr().err and "handleError" not in vars(handler)


def test_an_accelerator_out_of_memory_names_the_sizes_to_lower_with_their_values():
    """XLA's allocation failures on GPUs and TPUs (as jax raises them, text only) become one FATAL line naming the
    config's sizes; other RESOURCE_EXHAUSTED errors (a full disk) and other errors are not taken for them."""
    from jaxgen.training import failures

    c = config_module(ROOT / "configs" / "gan_celeba.py").get_config()
    for xla in ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4770354232 bytes.\nBufferAssignment "
                "OOM Debugging.\nBufferAssignment stats:",
                "RESOURCE_EXHAUSTED: Failed to allocate request for 176.00MiB (184549376B) on device ordinal 0"):
        oom = failures.out_of_memory(RuntimeError(xla), c)
        assert oom.startswith(f"The accelerator ran out of memory ({xla.splitlines()[0]}). Lower train.batch_size "
                              f"(now {c.train.batch_size}), eval.batch_size")
        assert "--config.model.dtype=bfloat16" in oom and "BufferAssignment" not in oom
        assert oom.endswith("run the same command with that change: it resumes from the newest checkpoint "
                            "written whole")
    xla = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")
    oom = failures.out_of_memory(xla, c, "sample")  # a GAN's sampling: the EMA G's passes, not the train batch
    assert "Lower eval.batch_size (now" in oom and "train.batch_size (now 128: the passes that re-estimate" in oom
    v = config_module(ROOT / "configs" / "vae_mnist.py").get_config()
    oom = failures.out_of_memory(ValueError("x"), v, "eval") or failures.out_of_memory(xla, v, "eval")
    assert "eval.nll_chunk (now 50" in oom and "dtype" not in oom and "train." not in oom
    assert oom.endswith("run the same command with that change again")
    assert failures.out_of_memory(ValueError('RESOURCE_EXHAUSTED: Failed writing: "/a": No space left on device'),
                                  v) is None
    assert failures.out_of_memory(ValueError("out of memory"), v) is None


def test_an_unknown_variant_is_one_line_listing_the_choices(tmp_path):
    r = _launch("--config=configs/vae_mnist.py:smok", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "FATAL Flags parsing error: unknown config variant 'smok'; choices: fashion, iwae, mnist_5k, smoke\n" \
        in r.stderr


def test_a_config_path_that_does_not_exist_fails_before_any_work(tmp_path):
    r = _launch("--config=configs/vae_mnst.py:smoke", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "FATAL Flags parsing error: cannot load the --config file (" in r.stderr and "vae_mnst.py" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_file_that_sets_a_missing_field_names_the_line_and_the_fields(tmp_path):
    cfg = tmp_path / "my_config.py"
    cfg.write_text("from jaxgen.config import vae_config\n\n\ndef get_config(variant=''):\n    c = vae_config()\n"
                   "    c.model.latent_dims = 4\n    return c\n")
    r = _launch(f"--config={cfg}", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert (f"FATAL Flags parsing error: {cfg}:6 (c.model.latent_dims = 4): the config has no field 'latent_dims' "
            f"there (did you mean 'latent_dim'?); the fields of that block: activation, channels") in r.stderr


@pytest.mark.parametrize("line,message", [
    ("c.optimizer.lr = 1", "'optimizer' to read there; the fields of that block: checkpoint, data, deterministic"),
    ("c.train.steps = c.train.step * 2", "'step' to read there (did you mean 'steps'?); the fields of that block: "
                                         "batch_size, ema_half_life"),
    ("c.model['latent_dims'] += 1", "'latent_dims' to read there (did you mean 'latent_dim'?); the fields of that "
                                   "block: activation, channels"),
])
def test_a_config_file_that_reads_a_missing_field_names_the_line_and_the_fields(tmp_path, line, message):
    """As for a field it sets (above), in process: launch.py prints config_file_error's message as one FATAL line."""
    import importlib.util

    from jaxgen import config_errors

    cfg = tmp_path / "my_config.py"
    cfg.write_text("from jaxgen.config import vae_config\n\n\ndef get_config(variant=''):\n    c = vae_config()\n"
                   f"    {line}\n    return c\n")
    spec = importlib.util.spec_from_file_location("my_config", cfg)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises((AttributeError, KeyError)) as e:
        module.get_config()
    assert config_errors.config_file_error(e.value).startswith(f"{cfg}:6 ({line}): the config has no field {message}")
    # Any other AttributeError or KeyError is not taken for a config mistake.
    with pytest.raises(KeyError) as e:
        {}["x"]
    assert config_errors.config_file_error(e.value) is None


def test_unknown_variant_lists_the_choices():
    with pytest.raises(ValueError, match="unknown config variant 'smok'; choices: fashion, iwae, mnist_5k, smoke"):
        _load_config(str(ROOT / "configs" / "vae_mnist.py"), "smok")
    spaced = _load_config(str(ROOT / "configs" / "vae_mnist.py"), "iwae, smoke")  # as written in a shell script
    assert spaced.to_dict() == _load_config(str(ROOT / "configs" / "vae_mnist.py"), "iwae,smoke").to_dict()


def test_a_variant_that_overrides_an_earlier_ones_fields_says_so(caplog):
    """Variants apply left to right: `fashion,smoke` trains smoke's shipped digits, not Fashion-MNIST; the log says
    which fields the later variant took over."""
    import logging

    path = str(ROOT / "configs" / "vae_mnist.py")
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        c = _load_config(path, "fashion,smoke")
    assert c.data.name == "mnist_5k"
    assert ("config variant 'smoke' overrides what the earlier variant 'fashion' set (variants apply left to right, "
            "the later one wins): data.name: 'fashion_mnist' -> 'mnist_5k'") in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        _load_config(path, "iwae,mnist_5k")
    assert "overrides" not in caplog.text


@pytest.mark.parametrize("field,value,message", [
    ("model.name", "conv_vea", "unknown model 'conv_vea'; choices: conv_vae, mlp_vae"),
    ("objective.name", "elbow", "unknown objective 'elbow'; choices: elbo, iwae"),
    ("objective.likelihood", "poisson", "unknown likelihood 'poisson'; choices: bernoulli, gaussian"),
    ("data.name", "imagenet", "unknown dataset 'imagenet'; choices: celeb_a, cifar10"),
    ("optim.name", "adamm", "unknown optimizer 'adamm'; choices: adam, adamw"),
    ("train.batch_size", 30, "train.batch_size=30 is not divisible by the 8 devices; use a multiple of 8"),
    ("eval.batch_size", 20, "eval.batch_size=20 is not divisible by the 8 devices"),
    ("train.steps_per_dispatch", 3, "must be multiples of train.steps_per_dispatch=3"),
    ("eval.nll_chunk", 0, "eval.nll_chunk must be >= 1"),
    ("objective.kl_warmup_steps", -5, "objective.kl_warmup_steps must be >= 0"),
    ("optim.eps", 0.0, "optim.eps must be > 0 (Adam's denominator), got 0.0"),
    ("optim.weight_decay", -0.1, "optim.weight_decay must be >= 0 and finite, got -0.1"),
])
def test_bad_config_values_fail_before_any_work_with_the_choices(smoke_config, tmp_path, field, value, message):
    section, name = field.split(".")
    smoke_config[section][name] = value
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loop.train_and_evaluate(smoke_config, tmp_path)
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


@pytest.mark.parametrize("field,value", [("model.name", "conv_vea"), ("optim.name", "adamm"),
                                         ("objective.name", "elbow"), ("objective.likelihood", "poisson")])
def test_unknown_names_fail_before_the_data_loads(smoke_config, tmp_path, monkeypatch, field, value):
    from jaxgen import data

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before the names were checked"))
    section, name = field.split(".")
    smoke_config[section][name] = value
    with pytest.raises(ValueError, match=f"unknown .*'{value}'; choices"):
        loop.train_and_evaluate(smoke_config, tmp_path)


def test_an_unknown_schedule_names_its_block():
    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.gan_config()
    c.d_optim.schedule = "cosin"
    with pytest.raises(ValueError, match="unknown d_optim.schedule 'cosin'; choices: constant, cosine, linear"):
        config_check.check(c)


def test_every_batch_size_that_does_not_divide_is_named_at_once(smoke_config, tmp_path):
    smoke_config.train.batch_size, smoke_config.eval.batch_size = 30, 20
    with pytest.raises(ValueError, match=r"train.batch_size=30 is not divisible .*; and eval.batch_size=20 is not"):
        loop.train_and_evaluate(smoke_config, tmp_path)


def test_steps_not_a_multiple_of_steps_per_dispatch_fails_in_the_config_check(smoke_config, tmp_path, monkeypatch):
    from jaxgen import config_check, data

    monkeypatch.setattr(data, "load", lambda *a, **k: pytest.fail("data loaded before the config check"))
    c = smoke_config
    c.train.steps_per_dispatch, c.train.steps = 5, 22  # log, checkpoint and eval intervals (5, 10, 10) are fine
    message = r"train.steps=22 must be a multiple of train.steps_per_dispatch=5"
    with pytest.raises(ValueError, match=message):
        config_check.check(c)
    with pytest.raises(ValueError, match=message):
        loop.train_and_evaluate(c, tmp_path)
    c.train.steps = 20
    config_check.check(c)
    c.train.steps_per_dispatch, c.train.steps = 4, 22  # every interval off the grid is named at once
    with pytest.raises(ValueError, match=r"train.steps=22 and train.log_every=5 and checkpoint.every=10 and "
                                         r"eval.every=10 must be multiples of train.steps_per_dispatch=4"):
        config_check.check(c)


@pytest.mark.parametrize("fields, message", [
    ({"objective.likelihood": "gaussian", "data.binarize": "none", "objective.gaussian_sigma": 0.0},
     "objective.gaussian_sigma must be > 0"),
    ({"objective.beta": -1.0}, "objective.beta must be >= 0"),
    ({"model.latent_dim": 0}, "model.latent_dim must be >= 1, got 0"),
    # Each of these passed the check and failed later: at the final evaluation, at the first one, or never (keep=0
    # kept no checkpoint to resume from; a negative lr climbs the loss).
    ({"seed": -1}, "seed must be >= 0, got -1"),
    ({"checkpoint.keep": 0}, r"checkpoint.keep must be >= 1 \(the newest checkpoints kept"),
    ({"eval.batch_size": 0}, "eval.batch_size must be >= 1, got 0"),
    ({"output.num_samples": 0}, "output.num_samples must be >= 1, got 0"),
    ({"optim.lr": -1e-3}, "optim.lr must be >= 0 and finite, got -0.001"),
    ({"optim.lr": float("nan")}, "optim.lr must be >= 0 and finite, got nan"),
    ({"optim.b1": 1.5}, "optim.b1 must be >= 0 and < 1, got 1.5"),
    ({"optim.warmup_steps": -5}, "optim.warmup_steps must be >= 0 and finite, got -5"),
    ({"model.channels": ()}, r"model.channels must be a non-empty tuple of positive integers, got \(\)"),
    ({"model.channels": (16.0, 48)}, "model.channels must be a non-empty tuple of positive integers"),
    ({"data.name": "synthetic", "data.image_shape": (32, 32)},
     r"data.image_shape must be a tuple of 3 positive integers, got \(32, 32\): e.g. "),
    ({"model.dense": 0}, "model.dense must be a positive integer, got 0"),
])
def test_values_outside_their_range_fail_in_the_config_check(fields, message):
    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.vae_config()
    for field, value in fields.items():
        if "." not in field:
            c[field] = value
            continue
        block, name = field.split(".")
        c[block][name] = value
    with pytest.raises(ValueError, match=message):
        config_check.check(c)


def test_sizes_a_run_does_not_read_are_not_checked_and_an_mlp_vae_may_be_linear():
    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.vae_config()
    c.model.name, c.model.hidden, c.model.channels = "mlp_vae", (), ()  # channels: a conv_vae's, unread here
    config_check.check(c)


def test_settings_that_do_nothing_in_the_run_are_named_with_what_reads_them(caplog):
    import logging

    from jaxgen import config as config_lib
    from jaxgen import config_check

    c = config_lib.vae_config()
    c.model.name, c.model.channels, c.optim.weight_decay, c.optim.end_lr_ratio = "mlp_vae", (8, 16), 0.5, 0.1
    c.objective.name, c.objective.kl, c.objective.gaussian_sigma = "iwae", "mc", 0.2
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        config_check.check(c)
    assert "objective.gaussian_sigma=0.2 (read by objective.likelihood=gaussian; this run's is bernoulli)" in \
        caplog.text
    assert ("These settings do nothing in this run: model.channels=(8, 16) (read by model.name=conv_vae; this run's "
            "is mlp_vae); optim.weight_decay=0.5 (read by optim.name=adamw; this run's is adam); optim.end_lr_ratio="
            "0.1 (read by optim.schedule=cosine or linear; this run's is constant)") in caplog.text
    assert "objective.kl='mc' (read by objective.name=elbo; this run's is iwae)" in caplog.text
    assert "objective.beta" not in caplog.text  # left at its default
    g = config_lib.gan_config()
    g.model.name, g.model.conv_impl, g.reg.weight, g.reg.interval = "resnet", "xla", 1.0, 4
    assert config_check.ignored_settings(g, config_lib.gan_config()) == [
        "model.conv_impl='xla' (read by model.name=dcgan; this run's is resnet)",
        "reg.weight=1.0 (read by a regularizer: reg.name=r1, gp or your own)",
        "reg.interval=4 (read by a regularizer: reg.name=r1, gp or your own)"]
    g.model.name, g.reg.name, g.d_optim.name = "myproject.models:pair", "r1", "myproject.optim:sgd"
    g.d_optim.weight_decay = 0.1  # a user's optimizer may read it
    assert config_check.ignored_settings(g, config_lib.gan_config()) == []
    c.eval.extractors = ("myproject.extract:pooled",)  # a user's extractor gets the whole config: it may read any
    assert config_check.ignored_settings(c, config_lib.vae_config()) == []
    for path in CONFIGS:  # no shipped config or variant sets one
        module = config_module(path)
        for variant in ("", *module.VARIANTS):
            c = module.get_config(variant)
            base = {"vae": config_lib.vae_config, "gan": config_lib.gan_config}[c.task]()
            assert config_check.ignored_settings(c, base) == [], (path, variant)


def test_unwritable_workdir_is_a_clear_error(smoke_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(loop.wd.WorkdirError, match="is not writable .*pass a --workdir you can write to"):
        loop.train_and_evaluate(smoke_config, blocker / "run")
    with pytest.raises(loop.wd.WorkdirError, match="is a URL.*mount the bucket"):
        loop.train_and_evaluate(smoke_config, "gs://bucket/run")
    with pytest.raises(loop.wd.WorkdirError, match="a_file exists and is not a directory"):
        loop.train_and_evaluate(smoke_config, blocker)


def test_eval_and_sample_modes_need_an_existing_workdir_and_do_not_create_one(smoke_config, tmp_path):
    for fn in (modes.evaluate_checkpoint, modes.sample_checkpoint):
        with pytest.raises(loop.wd.WorkdirError, match="runz does not exist; this mode reads a trained workdir"):
            fn(smoke_config, tmp_path / "runz")
    assert not (tmp_path / "runz").exists()


def test_sampling_on_another_device_count_needs_no_train_batch_that_divides_it(trained_vae, first_devices):
    """A VAE trained with train.batch_size=32 on 8 devices samples on 3: only eval.batch_size must divide there
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


def test_eval_modes_refuse_a_config_of_another_task(tmp_path):
    from jaxgen import config as config_lib

    (tmp_path / "config.json").write_text(config_lib.gan_config().to_json_best_effort(sort_keys=True))
    with pytest.raises(ValueError, match=r"--mode=sample: the workdir .* was trained with a gan config \(.*"
                                         r"config.json\), this one is a vae config: give the training command's"):
        loop.wd.warn_config_drift(config_lib.vae_config(), tmp_path, "sample")


def test_eval_modes_warn_only_about_fields_that_change_the_model_or_its_numbers(tmp_path, caplog):
    """--mode=eval/sample: how the model is computed (conv_impl, norm_impl), checkpointing and train.* are not
    drift; another seed is a note (other samples of the same model); a GAN's train.batch_size is drift where the
    EMA generator's BatchNorm statistics are re-estimated in batches of it; a model's width is drift."""
    import logging

    from jaxgen import config as config_lib

    trained = config_lib.gan_config()
    (tmp_path / "config.json").write_text(trained.to_json_best_effort(sort_keys=True))
    now = config_lib.gan_config()
    now.model.conv_impl, now.model.norm_impl, now.checkpoint.keep, now.train.steps = "xla", "flax", 1, 7
    now.seed, now.loss.name, now.reg.name, now.g_optim.lr = 1, "hinge", "r1", 0.1  # what only training reads
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        assert loop.wd.warn_config_drift(now, tmp_path, "sample") == []
    assert ("--mode=sample with seed 1 (training's: 0): other samples and evaluation noise of the same model"
            in caplog.text)
    now.train.batch_size, now.model.g_width = 32, 16
    changed = loop.wd.warn_config_drift(now, tmp_path, "eval")
    assert [c.split(":")[0] for c in changed] == ["model.g_width", "train.batch_size"]
    assert "BatchNorm statistics are re-estimated in batches of train.batch_size" in changed[1]
    now.train.ema_half_life = 0  # the raw G: its own running statistics, whatever the batch
    assert [c.split(":")[0] for c in loop.wd.warn_config_drift(now, tmp_path, "eval")] == ["model.g_width"]
    now.data.name = "image_folder"  # drift, unless --mode=sample reads no data (data.json)
    assert [c.split(":")[0] for c in loop.wd.warn_config_drift(now, tmp_path, "sample")] == ["data.name",
                                                                                             "model.g_width"]
    assert [c.split(":")[0] for c in loop.wd.warn_config_drift(now, tmp_path, "sample", data_read=False)] == [
        "model.g_width"]
    vae = config_lib.vae_config()  # a VAE is evaluated by its ELBO and NLL whatever objective trained it
    (tmp_path / "config.json").write_text(vae.to_json_best_effort(sort_keys=True))
    vae.objective.name, vae.objective.beta, vae.objective.k, vae.optim.lr = "iwae", 4.0, 5, 0.1
    assert loop.wd.warn_config_drift(vae, tmp_path, "eval") == []
    vae.objective.likelihood, vae.optim.name = "gaussian", "adamw"  # adamw's state is another tree: named
    assert [c.split(":")[0] for c in loop.wd.warn_config_drift(vae, tmp_path, "eval")] == ["objective.likelihood",
                                                                                          "optim.name"]


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


@pytest.mark.parametrize("fields,warning", [
    ({"data.binarize": "none"}, "on grey values the Bernoulli is not a normalised density"),
    ({"objective.likelihood": "gaussian"}, "the bits/dim assume 8-bit pixels, these are binary"),
    ({"objective.likelihood": "gaussian", "data.binarize": "none", "objective.gaussian_sigma": 1e-3},
     "the reported bits/dim can be negative"),
    ({"objective.name": "iwae", "objective.beta": 4.0}, "objective.beta=4.0 (read by objective.name=elbo"),
    ({"optim.warmup_steps": 20}, "optim.warmup_steps=20 >= the run's 20 updates: the learning rate never reaches"),
    ({"checkpoint.every": 7}, "checkpoint.every=7 is not a multiple of train.log_every=5: a run killed and resumed"),
    ({"model.latent_dim": 50}, "model.latent_dim=50 > model.dense=16: conv_vae's encoder and decoder pass through"),
])
def test_settings_whose_numbers_mean_less_than_their_names_are_warned_about(smoke_config, fields, warning, caplog,
                                                                            monkeypatch):
    import logging

    from jaxgen import config_check

    monkeypatch.setattr(logging.getLogger("jaxgen"), "propagate", True)  # to caplog, after any run's setup_logging

    for key, value in fields.items():
        section, name = key.split(".")
        smoke_config[section][name] = value
    config_check.check(smoke_config)
    assert warning in caplog.text


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
    """The img/s (and ETA) of a train record after an evaluation or a checkpoint save leaves their time out: here
    the loop's clock jumps 1000 s during the evaluation at step 10, which would pull the next record's rate (160
    images) below 1 img/s."""
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
    c.train.steps, c.train.log_every, c.eval.every, c.checkpoint.every = 20, 5, 10, 10
    during = evaluating.Evals.during_training

    def slow(self, *args, **kwargs):
        clock.offset += 1000.0
        return during(self, *args, **kwargs)

    monkeypatch.setattr(evaluating.Evals, "during_training", slow)
    loop.train_and_evaluate(c, tmp_path)
    rates = {r["step"]: r["img_per_s"] for r in read(tmp_path / "metrics.jsonl") if r["split"] == "train"}
    assert sorted(rates) == [5, 10, 15, 20] and rates[15] > 1, rates


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
    MetricWriter(tmp_path / "w", tb_run="mode_eval").close()
    assert (tmp_path / "w" / "tb" / "mode_eval").is_dir()


def test_mode_eval_with_another_seed_leaves_the_runs_images(trained_vae):
    """The run's samples are of its fixed noise (the seed's): --mode=eval with another seed overwrote them."""
    c, workdir = trained_vae
    before = {p.name: p.read_bytes() for p in (workdir / "images").iterdir()}
    c.seed = 1
    modes.evaluate_checkpoint(c, workdir)
    assert {p.name: p.read_bytes() for p in (workdir / "images").iterdir()} == before
    assert "--mode=eval with another seed than training: the run's images" in (workdir / "log_eval.txt").read_text()
