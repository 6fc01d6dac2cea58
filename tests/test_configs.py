"""Every config file and its variants, and each bad config input: unknown fields, names and variants, overrides
of the wrong type, values out of range, sizes that do not divide, settings that do nothing: one line that names the
fix, before any work."""

import glob
import json
import logging
import math
import os
import sys
from pathlib import Path

import flax.linen as nn
import pytest

from jaxgen.training import loop
from tests.conftest import ROOT, config_module, launch


def _load_config(path, variant):
    return config_module(path).get_config(variant)


CONFIGS = sorted(glob.glob(str(ROOT / "configs" / "*.py")))


# The smoke variants of vae_mnist and gan_celeba train in test_launch_smoke_end_to_end_then_resume (through
# launch.py) and tests/test_gan.py's TFDS mock-data run, gan_mnist's (with its plots, classifier FID and SWD, all its
# numbers finite) in tests/test_gan.py's test_gan_outputs_land_in_the_workdir: not twice (CI time).
SMOKE_ELSEWHERE = ("vae_mnist", "gan_celeba", "gan_mnist", "vae_shapes2d")  # test_shapes2d.py runs the last


@pytest.mark.parametrize("path", [p for p in CONFIGS if Path(p).stem not in SMOKE_ELSEWHERE],
                         ids=[Path(p).stem for p in CONFIGS if Path(p).stem not in SMOKE_ELSEWHERE])
def test_every_config_has_a_smoke_variant_that_trains(path, tmp_path, one_device):
    """On one device, as a user checks an install (8 faked devices took gan_cifar10's smoke run ~20 -> ~50 s)."""
    c = _load_config(path, "smoke")
    c.unlock()
    c.output.progress = False
    c.output.plots = False
    # Two calls, one train record and one evaluation (the final): gan_cifar10's ResNet step (5 D updates) takes
    # ~1.9 CPU s at the tests' LLVM level 0, so the 5 steps trained before cost ~6 s more.
    c.train.steps = c.train.log_every = 2 * c.train.steps_per_dispatch
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
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.train.bacth_size=8")
    assert r.returncode != 0 and "bacth_size" in r.stderr


@pytest.mark.parametrize("override,block,fields", [
    ("train.zzzz=8", "train", "batch_size, ema_half_life, ema_rampup, log_every, steps, steps_per_dispatch\n"),
    ("objective.zzzz=8", "objective", "beta, capacity, capacity_steps, dim_kl_weight, elbo_weight, estimator, "
                                      "gaussian_sigma, k, kl, kl_warmup_steps, likelihood, m, mi_weight, mmd_kernel, "
                                      "mmd_weight, name, tc_estimator; a "
                                      "field of your own (read by your function through `cfg`) is added to "
                                      "objective in a config"),
    ("zzzz.steps=8", "the config",
     "checkpoint, data, deterministic, eval, model, objective, optim, output, sample, seed, task, train\n"),
])
def test_unknown_config_field_names_it_and_lists_the_fields_of_its_block(tmp_path, override, block, fields):
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
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
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert f"FATAL Flags parsing error: {message}" in r.stderr
    assert not any(tmp_path.iterdir())


def test_a_config_file_that_returns_a_dict_is_one_line(tmp_path):
    (tmp_path / "mine.py").write_text("def get_config(variant=''):\n    return {'task': 'vae'}\n")
    r = launch(f"--config={tmp_path / 'mine.py'}", f"--workdir={tmp_path / 'run'}")
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
    r = launch("--config=configs/gan_mnist.py:smoke", f"--workdir={tmp_path}", f"--config.{override}")
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


def test_an_unknown_variant_is_one_line_listing_the_choices(tmp_path):
    r = launch("--config=configs/vae_mnist.py:smok", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert ("FATAL Flags parsing error: unknown config variant 'smok'; choices: btcvae, conditional, fashion, "
            "infovae, iwae, mnist_5k, smoke, vamp\n") in r.stderr


def test_a_flagfile_that_cannot_be_read_is_one_line_and_one_that_can_is_read(tmp_path):
    outer = tmp_path / "run.flags"
    outer.write_text(f"--workdir={tmp_path / 'run'}\n--flagfile={tmp_path / 'missing.flags'}\n")
    for flagfile, missing in ((tmp_path / "nope.flags", "nope.flags"), (outer, "missing.flags")):  # nested too
        r = launch(f"--flagfile={flagfile}")
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert r.stderr.startswith("FATAL Flags parsing error: Unable to open flagfile: ") and missing in r.stderr
    r = launch("--flagfile")
    assert r.returncode == 1 and r.stderr == "FATAL Flags parsing error: --flagfile with no argument\n", r.stderr
    outer.write_text(f"--workdir={tmp_path / 'run'}\n--config=configs/vae_mnist.py:smok\n")
    r = launch(f"--flagfile={outer}")  # its --config is read: the variant's error
    assert r.returncode == 1 and "FATAL Flags parsing error: unknown config variant 'smok'" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_path_that_does_not_exist_fails_before_any_work(tmp_path):
    r = launch("--config=configs/vae_mnst.py:smoke", f"--workdir={tmp_path / 'run'}")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "FATAL Flags parsing error: cannot load the --config file (" in r.stderr and "vae_mnst.py" in r.stderr
    assert not (tmp_path / "run").exists()


def test_a_command_without_config_merges_the_workdirs_training_command_with_its_overrides(tmp_path, monkeypatch,
                                                                                          caplog):
    """launch.py with --workdir and no --config: the config and overrides of the workdir's last training command
    (command.json), then this command's, which win; a tuple field's value replaces the recorded one (absl joins a
    tuple given twice). What a training run so started records: the merged command."""
    from absl import flags
    from ml_collections import config_flags

    from jaxgen import cli, command_record

    monkeypatch.setattr(command_record, "_replayed", [])  # this process's replay, undone after the test
    (tmp_path / "command.json").write_text(json.dumps({
        "config": f"{ROOT / 'configs' / 'vae_mnist.py'}:smoke",
        "overrides": ["--config.train.steps=10", "--config.model.channels=(16, 48)", "--config.output.plots=false"]}))
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True)
    flags.DEFINE_string("workdir", None, "", flag_values=fv)
    argv = ["launch.py", f"--workdir={tmp_path}", "--config.model.channels=(8,4)", "--config.train.steps", "30",
            "--noconfig.output.progress"]
    monkeypatch.setattr(sys, "argv", list(argv))
    cli.parse_flags(fv, argv)
    c = fv.config
    assert (c.train.steps, c.model.channels, c.output.plots, c.output.progress) == (30, (8, 4), False, False)
    monkeypatch.setenv("PYTHONPATH", "/my/project")
    record = command_record.launch_command(fv, sys.argv)
    assert record["overrides"] == [
        "--config.output.plots=false", "--config.model.channels=(8, 4)", "--config.train.steps=30",
        "--config.output.progress=false"]
    assert record["pythonpath"] == "/my/project" and record["cwd"] == os.getcwd()
    assert command_record.replayed() == str(tmp_path / "command.json")  # drift messages say where the config came from
    # A relative path among the recorded overrides, and this command runs elsewhere than training, with another
    # PYTHONPATH: said.
    (tmp_path / "command.json").write_text(json.dumps({
        "config": f"{ROOT / 'configs' / 'vae_mnist.py'}:smoke", "cwd": "/elsewhere", "pythonpath": "/elsewhere/src",
        "overrides": ["--config.data.data_dir=data/tfds", "--config.data.path=/abs/images"]}))
    monkeypatch.setattr(sys, "argv", [argv[0], argv[1]])
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        command_record.config_of_workdir(fv, sys.argv)
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == [
        "--config.data.data_dir=data/tfds: relative to /elsewhere, where the run trained; here they may name other "
        "files or none: run this command there, or give them again as absolute paths"]
    assert ("The training command ran with PYTHONPATH=/elsewhere/src (this one: '/my/project'): a model, likelihood, "
            "optimizer or extractor of yours is imported from it") in caplog.messages
    # --workdir=~/...: no shell expands a '~' after '=' (jaxgen does, for the workdir and for its record).
    monkeypatch.setenv("HOME", str(tmp_path.parent))
    monkeypatch.setattr(sys, "argv", [argv[0], f"--workdir=~/{tmp_path.name}"])
    assert command_record.config_of_workdir(fv, sys.argv)[1] == f"--config={ROOT / 'configs' / 'vae_mnist.py'}:smoke"


def test_a_command_without_config_says_what_to_give(tmp_path):
    """No --config and nothing recorded in the workdir, a record that cannot be read, or one naming a config file
    that is gone: one line that says what to give, before any work."""
    for overrides in ([], ["--config.sample.num=10"]):  # absl alone would call an override an unknown flag
        r = launch(f"--workdir={tmp_path}", "--mode=eval", *overrides)
        assert r.returncode == 1 and r.stderr.startswith(
            f"FATAL Flags parsing error: --config is required: give --config=configs/<file>.py[:variant] (a command "
            f"without it takes the config and overrides of the workdir's last training command, which {tmp_path} has "
            f"no record of: no command.json there;"), r.stderr
    (tmp_path / "command.json").write_text('{"config": ')
    r = launch(f"--workdir={tmp_path}")
    assert r.returncode == 1 and f"no --config, and {tmp_path / 'command.json'}, which records the config of the " \
        "workdir's last training command, cannot be read (JSONDecodeError" in r.stderr, r.stderr
    (tmp_path / "command.json").write_text(json.dumps({"config": "/gone/vae_mnist.py:smoke", "overrides": []}))
    r = launch(f"--workdir={tmp_path}", "--mode=sample")
    assert r.returncode == 1 and f"the config file that trained {tmp_path} is not at /gone/vae_mnist.py any more" \
        in r.stderr, r.stderr
    (tmp_path / "command.json").write_text(json.dumps({"config": "/gone/vae_mnist.py", "overrides": ["--noconfig.x"]}))
    r = launch(f"--workdir={tmp_path}", "--mode=sample")
    assert r.returncode == 1 and "cannot be read (ValueError: overrides ['--noconfig.x'] are not of the form " \
        "--config.<field>=<value>)" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["command.json"]
    r = launch(f"--workdir={tmp_path / 'typo'}", "--mode=eval")  # a mistyped workdir is named as such
    assert r.returncode == 1 and r.stderr.startswith(f"FATAL Flags parsing error: --config is required: the workdir "
                                                     f"{tmp_path / 'typo'} does not exist (check the path)"), r.stderr
    # One process of a multi-process job that cannot read the record stops before the job starts: it says that
    # every process reads the workdir (it stops here, before jax.distributed, so this test starts no job).
    r = launch(f"--workdir={tmp_path / 'typo'}", "--mode=eval", "--jax_distributed")
    assert r.returncode == 1 and "with --jax_distributed every process reads the workdir's command.json itself: " \
        "give --workdir a folder every host shares" in r.stderr, r.stderr


def test_a_config_file_that_sets_a_missing_field_names_the_line_and_the_fields(tmp_path):
    cfg = tmp_path / "my_config.py"
    cfg.write_text("from jaxgen.config import vae_config\n\n\ndef get_config(variant=''):\n    c = vae_config()\n"
                   "    c.model.latent_dims = 4\n    return c\n")
    r = launch(f"--config={cfg}", f"--workdir={tmp_path / 'run'}")
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
    with pytest.raises(ValueError, match="unknown config variant 'smok'; choices: btcvae, conditional, fashion, "
                                         "infovae, iwae, mnist_5k, smoke, vamp"):
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
    ("objective.name", "elbow", "unknown objective 'elbow'; choices: beta_tcvae, capacity_vae, ciwae, elbo, "
                                "info_vae, iwae, miwae, piwae"),
    ("objective.likelihood", "poisson",
     "unknown likelihood 'poisson'; choices: bernoulli, discretized_logistic, gaussian"),
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


def test_eval_modes_do_not_check_the_best_metric_only_training_keeps(smoke_config):
    """--mode=eval with other eval.extractors than training (Inception FID of a run kept by its classifier FID)
    need not change checkpoint.best_metric to match: only training keeps a best checkpoint."""
    from jaxgen import config_check

    smoke_config.checkpoint.best_metric = "classifier/fid"  # the fixture's eval.extractors is ()
    with pytest.raises(ValueError, match=r"names the extractor 'classifier', which is not in eval.extractors=\(\)"):
        config_check.check(smoke_config)
    config_check.check(smoke_config, training=False)


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


class UsersVAE(nn.Module):
    image_shape: tuple
    latent_dim: int


def users_vae_factory(model_config, image_shape):
    return UsersVAE(image_shape, model_config.latent_dim)


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
        "reg.weight=1.0 (read by a regularizer: reg.name=r1, gp, cr, bcr or your own)",
        "reg.interval=4 (read by a regularizer: reg.name=r1, gp, cr, bcr or your own)"]
    g.model.name, g.reg.name, g.d_optim.name = "myproject.models:pair", "r1", "myproject.optim:sgd"
    g.d_optim.weight_decay = 0.1  # a user's optimizer may read it
    assert config_check.ignored_settings(g, config_lib.gan_config()) == []
    c.eval.extractors = ("myproject.extract:pooled",)  # a user's extractor gets the whole config: it may read any
    assert config_check.ignored_settings(c, config_lib.vae_config()) == []
    # A user's VAE class is built with image_shape and latent_dim alone; a factory gets the whole model block.
    v = config_lib.vae_config()
    v.model.name, v.model.channels, v.model.latent_dim = "tests.test_configs:UsersVAE", (8, 16), 4
    assert config_check.ignored_settings(v, config_lib.vae_config()) == [
        "model.channels=(8, 16) (read by the built-in models and by a model factory, fn(model_config, image_shape); "
        "the class tests.test_configs:UsersVAE is built with image_shape, latent_dim and num_classes alone)"]
    for name in ("tests.test_configs:users_vae_factory", "tests.test_configs:not_there", "nowhere.at_all:Model"):
        v.model.name = name  # a factory may read any field; an unknown name is reported where the model is built
        assert config_check.ignored_settings(v, config_lib.vae_config()) == []
    for path in CONFIGS:  # no shipped config or variant sets one
        module = config_module(path)
        for variant in ("", *module.VARIANTS):
            c = module.get_config(variant)
            base = {"vae": config_lib.vae_config, "gan": config_lib.gan_config}[c.task]()
            assert config_check.ignored_settings(c, base) == [], (path, variant)


@pytest.mark.parametrize("fields,warning", [
    ({"data.binarize": "none"}, "on grey values the Bernoulli is not a normalised density"),
    ({"objective.likelihood": "gaussian"}, "the bits/dim assume 8-bit pixels, these are binary"),
    ({"objective.likelihood": "discretized_logistic"}, "the bits/dim assume 8-bit pixels, these are binary"),
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
