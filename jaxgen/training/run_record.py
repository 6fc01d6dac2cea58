"""The run's records in its workdir: the resolved config (config.json, its history, what changed on a resume), the
training command's config and overrides (command.json), the dataset it trains on (data.json), and the checks of a
config against them: a resume that changes what it cannot, --mode=eval/sample under another config than training's,
and processes of one run with different configs."""

from __future__ import annotations

import json
import logging
import time
import zlib
from pathlib import Path

import jax

from jaxgen import atomic, command_record, parallel
from jaxgen import config as config_lib

log = logging.getLogger("jaxgen")


def save_config(config, workdir: Path, step: int = 0) -> None:
    """Writes the resolved config to <workdir>/config.json; reports the fields changed since the last run, whose
    config becomes config.previous.json and is appended to config_history.jsonl (every config the workdir was
    run with, oldest first, each with the time it was replaced and what changed). `step` is the step the run
    resumes from: a warning then (the run continues under another config), a plain note at 0 (the last run left
    no checkpoint, e.g. it stopped on a bad setting this one fixes: nothing trained under the old config)."""
    if jax.process_index() != 0:
        return
    path = workdir / "config.json"
    now = json.loads(config.to_json_best_effort(sort_keys=True))
    before = _read_json(path)
    if before is not None:
        changed = _changes(before, now)
        if changed and step:
            log.warning("Config differs from the one this workdir was run with, resumed at step %d: %s", step,
                        ", ".join(changed))
        elif changed:
            log.info("The last run on this workdir left no checkpoint; this one starts afresh with another config "
                     "(the last run's is kept as config.previous.json): %s", ", ".join(changed))
        if changed:
            record = {"replaced": time.strftime("%Y-%m-%dT%H:%M:%S"), "changes": changed, "config": before}
            atomic.append_line(workdir / "config_history.jsonl", json.dumps(record, sort_keys=True))
            # Copied, not moved: a run killed here still finds config.json (the old one) next time.
            atomic.write_text(workdir / "config.previous.json", path.read_text())
    atomic.write_text(path, json.dumps(now, indent=2, sort_keys=True) + "\n")


def save_command(command: dict | None, workdir: Path) -> None:
    """Writes the --config and overrides of launch.py's training command (`command_record.launch_command`) to
    <workdir>/command.json, which a later command on the workdir without --config takes (`--mode=eval`, a resume);
    None (a run started from Python) removes an older one, which would not give this run's config."""
    if jax.process_index() != 0:
        return
    path = workdir / "command.json"
    if command is None:
        path.unlink(missing_ok=True)
        return
    atomic.write_text(path, json.dumps(command, indent=2) + "\n")


def config_changes(config, workdir: Path) -> list[str]:
    """'field: saved -> now' for each field in which `config` differs from <workdir>/config.json, outside the blocks
    that never change the train state (eval, sample, output, checkpoint, deterministic); [] without that file."""
    before = _read_json(workdir / "config.json")
    if before is None:
        return []
    now = json.loads(config.to_json_best_effort(sort_keys=True))
    return [d for d in _changes(before, now)
            if d.split(":")[0].split(".")[0] not in ("eval", "sample", "output", "checkpoint", "deterministic")]


def _changes(before: dict, now: dict) -> list[str]:
    """'field: before -> now' for each field that differs, sorted, less the fields a later jaxgen added (absent from
    `before`) that are still at their default: the run did not change them (a workdir from before
    model.num_classes resumes without a word about it)."""
    defaults = {"vae": config_lib.vae_config, "gan": config_lib.gan_config}.get(now.get("task"))
    base = json.loads(defaults().to_json_best_effort(sort_keys=True)) if defaults else {}

    def new_default(field: str) -> bool:
        return _absent(before, field) and not _absent(base, field) and _get(base, field) == _get(now, field)

    return sorted(d for d in _diff(before, now) if not new_default(d.split(":")[0]))


def _get(config: dict, field: str):
    for key in field.split("."):
        config = config[key]
    return config


def check_resumed_holdout(config, workdir: Path, step: int) -> None:
    """Refuses a run that resumes (from `step` > 0) with another data.validation_examples than config.json's: the
    images held out now were trained on before, or the other way round, and the validation numbers would mislead;
    a GAN that trains on with another train.d_steps, whose D updates are counted as step x d_steps; and another
    seed, which the resumed training would not follow (it goes on from the checkpoint's key) while its evaluations'
    fixed latents and image grids would."""
    before = _read_json(workdir / "config.json") if step else None
    if before is None:
        return
    if "seed" in before and before["seed"] != config.seed:
        raise ValueError(f"seed is {config.seed}, but the run resumed from step {step} in {workdir} was trained with "
                         f"seed {before['seed']}: it goes on from its checkpoint's key, and only its evaluations and "
                         f"image grids would follow the new seed, mixing two. Keep --config.seed={before['seed']}, or "
                         f"start a new --workdir for another seed (--mode=eval/sample take another seed).")
    was, now = int(before.get("data", {}).get("validation_examples", 0)), int(config.data.validation_examples)
    if was != now:
        raise ValueError(f"data.validation_examples is {now}, but the run resumed from step {step} in {workdir} "
                         f"held out {was}: the validation split would hold images it trained on, or leave out ones "
                         f"it did. Keep --config.data.validation_examples={was}, or start a new --workdir.")
    was = before.get("train", {}).get("batch_size")
    if was is not None and was != config.train.batch_size and step < config.train.steps:
        log.warning("train.batch_size is %d, but the run resumed from step %d trained with %d: the steps it trained "
                    "now count as steps of %d images, for the data order (which examples step s draws from its "
                    "epoch) and for the EMA's rampup (the images seen); the run goes on, but is not the run it would "
                    "have been at either size", config.train.batch_size, step, was, config.train.batch_size)
    was, now = before.get("train", {}).get("d_steps"), config.train.get("d_steps")
    if was is not None and now is not None and was != now and step < config.train.steps:  # a GAN that trains on
        raise ValueError(f"train.d_steps is {now}, but the run resumed from step {step} in {workdir} made {was} D "
                         f"update(s) per step: D's learning-rate schedule and its batches count D updates as step x "
                         f"train.d_steps, and its optimizer has counted {step} x {was}. Keep "
                         f"--config.train.d_steps={was}, or start a new --workdir.")


# Blocks (and top-level fields) a --mode=eval or --mode=sample command may set differently from training without
# changing the model, and fields that choose only how the same model is computed (float rounding apart).
EVAL_ONLY_BLOCKS = ("eval", "sample", "output", "deterministic", "train", "checkpoint")
SAME_MODEL_FIELDS = ("model.conv_impl", "model.norm_impl", "model.dtype")
# What only training reads: a GAN's loss, regularizer and augmentation, a VAE's training objective (the evaluation
# scores every VAE by its ELBO and NLL under objective.likelihood) and the optimizers' settings (not their names:
# adam's and adamw's states differ, and the checkpoint restores the optimizer state too).
TRAINING_ONLY_BLOCKS = ("loss", "reg", "augment")
TRAINING_ONLY_FIELDS = ("objective.name", "objective.beta", "objective.k", "objective.m", "objective.elbo_weight",
                        "objective.estimator", "objective.kl", "objective.kl_warmup_steps",
                        "objective.mi_weight", "objective.dim_kl_weight", "objective.tc_estimator",
                        "objective.mmd_weight", "objective.mmd_kernel", "objective.capacity",
                        "objective.capacity_steps",
                        "model.output_bias",  # how a built-in decoder's last bias starts
                        "model.vamp_init",  # how the VampPrior's pseudo-inputs start
                        *(f"{block}.{field}" for block in ("optim", "g_optim", "d_optim")
                          for field in ("lr", "b1", "b2", "eps", "weight_decay", "schedule", "warmup_steps",
                                        "end_lr_ratio", "clip_norm")))


def warn_config_drift(config, workdir: Path, mode: str, data_read: bool = True) -> list[str]:
    """Logs (and returns) the fields, outside EVAL_ONLY_BLOCKS, SAME_MODEL_FIELDS and what only training reads, in which
    `config` differs from the config.json the workdir was trained with: --mode=eval/sample evaluate with this
    command's config. Exceptions: `seed` (other samples and evaluation noise of the same model: a note), and a
    GAN's train.batch_size where G's EMA weights have BatchNorm (its statistics are re-estimated in batches of
    that size). data_read=False (--mode=sample with data.json: no data is read): data.* is not drift either.
    Not drift either: fields the trained config lacks (added by a later jaxgen), where a host finds its files
    (HOST_FIELDS), and model fields the trained model does not read. A ValueError instead for another task (a VAE
    config on a GAN's workdir) and for a model field the trained model reads, with another value (`model.activation`:
    the checkpoint's weights would run in another network than they were trained in) or lacking here (a model
    factory's, added by a config file)."""
    path = workdir / "config.json"
    # mode 'load': jaxgen.training.trained.load, a Python call with its config
    who, this = (f"--mode={mode}", "this command's") if mode != "load" else ("trained.load", "the given")
    now = json.loads(config.to_json_best_effort(sort_keys=True))
    trained = _read_json(path) or now  # missing or unreadable: nothing to compare (every process gets here)
    other = trained.get("task", now["task"]) != now["task"]
    parallel.stop_if_any_failed(  # a collective: a process that raised alone would leave the others waiting
        ValueError(f"{who}: the workdir {workdir} was trained with a {trained['task']} config ({path}), this "
                   f"one is a {now['task']} config: give the training command's --config and overrides")
        if other else None, "check the workdir's config")
    diffs = {d.split(":")[0]: d for d in _diff(trained, now)}
    ignored = (*EVAL_ONLY_BLOCKS, *TRAINING_ONLY_BLOCKS, "seed") + (() if data_read else ("data",))
    # Not drift: a field a later jaxgen added (the trained config.json lacks it; its default keeps what runs did
    # before), where a host finds its files, and a model field the trained model does not read.
    reads = _model_reads(trained.get("model", {}))
    vamp = trained.get("model", {}).get("prior", "normal") == "vamp"  # else the VampPrior's fields are unread
    same = {f for f in diffs if _absent(trained, f) or f in HOST_FIELDS
            or (f.startswith("model.") and reads is not None and f.split(".", 1)[1] not in reads)
            or (f in ("model.vamp_components", "model.vamp_init") and not vamp)}
    # Fields the training run's config file added that this command's config lacks. In `objective` only the training
    # objective reads them, unless a likelihood or extractor of the user's (which may read them) is set.
    added = {f for f in diffs if _absent(now, f)}
    users_reader = any(":" in str(name) for name in (now.get("objective", {}).get("likelihood", ""),
                                                      *now.get("eval", {}).get("extractors", ())))
    training_only = {f for f in added if f.startswith("objective.") and not users_reader}
    changed = sorted(d for field, d in diffs.items()
                     if field.split(".")[0] not in ignored and field not in SAME_MODEL_FIELDS + TRAINING_ONLY_FIELDS
                     and field not in training_only and field not in same)
    if (now["task"] == "gan" and "train.batch_size" in diffs and now["train"]["ema_half_life"] > 0
            and now["model"].get("g_norm") == "batch"):
        changed.append(diffs["train.batch_size"] + " (the EMA generator's BatchNorm statistics are re-estimated in "
                       "batches of train.batch_size: the samples and numbers differ slightly)")
    lacking = sorted(f for f in added if diffs[f] in changed)
    model = sorted(d for f, d in diffs.items() if d in changed and f.startswith("model."))
    added_to_model = [f for f in lacking if f.startswith("model.")]
    parallel.stop_if_any_failed(ValueError(
        f"{who}: {this} model differs from the one the workdir was trained with ({path}) in: "
        f"{'; '.join(model)}. The checkpoint holds the trained model's weights: "
        + (f"give the training command's config file (it added {', '.join(added_to_model)}) and repeat its "
           f"overrides" if added_to_model else "repeat the training command's overrides") + _replay_note())
        if model else None,
        "check the workdir's config")
    if "seed" in diffs:
        log.info("%s with seed %s (training's: %s): other samples and evaluation noise of the same model",
                 who, now.get("seed"), trained.get("seed"))
    if changed:
        fix = (f"Give the training command's config file (it added {', '.join(lacking)}, which this config lacks) "
               "and repeat its overrides" if lacking else "Repeat the training command's overrides")
        log.warning("%s runs with %s config, which differs from the one the workdir was trained with (%s) in: %s. "
                    "%s to %s the model as it was trained%s.", who, this, path, "; ".join(changed), fix,
                    {"eval": "evaluate", "sample": "sample"}.get(mode, "use"), _replay_note())
    return changed


def _replay_note() -> str:
    """Where this command's config came from, for a drift message: from the workdir's command.json (no --config),
    whose overrides are the training command's, so the drift is the config file's edits or this command's overrides;
    '' for a --config given on the command line."""
    record = command_record.replayed()
    return (f" (this command took the training command's config and overrides from {record}: the difference comes "
            f"from edits to the config file since training, or from this command's own overrides)") if record else ""


def _model_reads(model: dict) -> tuple[str, ...] | None:
    """The fields of the `model` block (a config.json's) that its model reads: a built-in's, a user's class's
    (name, latent_dim and num_classes), or None for a user's factory (it gets the whole block)."""
    from jaxgen import config_check  # noqa: PLC0415 (a user's model module is imported only here)

    name = str(model.get("name", ""))
    if name in config_check.MODEL_READS:
        return ("name", *config_check.MODEL_READS[name])
    return config_check.CLASS_MODEL_READS if config_check.built_as_class(name) else None


def _absent(config: dict, field: str) -> bool:
    """Whether the dotted `field` is missing from the config dict (not merely None)."""
    node = config
    for key in field.split("."):
        if not isinstance(node, dict) or key not in node:
            return True
        node = node[key]
    return False


def save_data_record(task, workdir: Path) -> None:
    """<workdir>/data.json: the dataset the run trains on, its image shape and split sizes (process 0). --mode=sample
    builds the model from that shape without reading the dataset, which the host sampling may lack."""
    if jax.process_index() != 0:
        return
    splits = {"train": task.train, "validation": task.validation, "test": task.test}
    record = {"dataset": task.config.data.name, "image_shape": list(task.image_shape),
              "examples": {name: len(split) for name, split in splits.items() if split is not None}}
    atomic.write_text(workdir / "data.json", json.dumps(record, indent=2) + "\n")


# Fields that may differ between the processes of one run: where each host finds its files (the data's CRC-32 is
# compared once loaded), and its terminal.
HOST_FIELDS = ("data.data_dir", "data.path", "eval.inception_weights", "output.progress")


def check_same_config(config) -> None:
    """Raises ProcessesDisagreeError naming the fields in which the processes' configs differ (a multi-host run;
    nothing with one process): each process builds its own initial state from its own seed and runs its own
    schedule of steps and evaluations, so a host started with another seed trained silently apart, and one with
    another train.steps or eval.every waited for ever in a collective the others never reached. A collective."""
    if jax.process_count() == 1:
        return
    flat = _flatten(json.loads(config.to_json_best_effort(sort_keys=True)))
    fields = sorted(f for f in flat if f not in HOST_FIELDS)
    mine = [zlib.crc32(json.dumps(flat[f], sort_keys=True).encode()) & 0x7FFFFFFF for f in fields]
    every = parallel.allgather_ints([len(fields), zlib.crc32(" ".join(fields).encode()) & 0x7FFFFFFF])
    record = command_record.replayed()
    hosts = (f" (this process took its config from {record}: the hosts read different command.json files, or "
             f"one changed between their reads; give every process the same --config, or a workdir all hosts share)"
             if record else "")
    if (every != every[0]).any():
        raise parallel.ProcessesDisagreeError(
            "the processes of this run were started with configs of different fields (another config file, or "
            "another jaxgen). Start every process with the same command" + hosts)
    every = parallel.allgather_ints(mine)
    differ = [f"{f} (here {flat[f]!r})" for f, column in zip(fields, every.T) if (column != column[0]).any()]
    if differ:
        raise parallel.ProcessesDisagreeError(
            f"the processes of this run were started with different configs: {', '.join(differ)} differ. Start every "
            f"process with the same command (only {', '.join(HOST_FIELDS)} may differ by host){hosts}")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def trained_image_shape(workdir: Path) -> tuple[int, int, int] | None:
    """The image shape data.json records (None where a workdir from before data.json has none, or it cannot be
    read), the same on every process (a collective: all of them then build the task the same way)."""
    record = _read_json(workdir / "data.json") or {}
    shape = record.get("image_shape")
    valid = isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape)
    parallel.check_same_on_every_process(
        "the image shape in data.json", list(shape) if valid else [0, 0, 0],
        "Every process must see the same --workdir: put it on a filesystem all hosts share.")
    return tuple(shape) if valid else None


def read_trained_config(workdir: Path) -> dict:
    """The config.json the workdir was last trained with, as a dict ({} where there is none or it cannot be read)."""
    return _read_json(workdir / "config.json") or {}


def _read_json(path: Path) -> dict | None:
    """The JSON object in `path`; None when missing, or unreadable (logged: a run stopped while writing it)."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        log.warning("%s cannot be read (%s); treated as missing", path, e)
        return None


def _diff(a, b, prefix=""):
    if isinstance(a, dict) and isinstance(b, dict):
        for k in set(a) | set(b):
            yield from _diff(a.get(k), b.get(k), f"{prefix}{k}.")
    elif a != b:
        yield f"{prefix[:-1]}: {a!r} -> {b!r}"
