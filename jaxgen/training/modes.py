"""--mode=eval and --mode=sample on a trained workdir: `evaluate_checkpoint(config, workdir)` (the final evaluation
of the newest or the best checkpoint into eval.json or eval_best.json) and `sample_checkpoint(config, workdir)`
(samples as .npz and PNG grids). Both restore through jaxgen.training.loop; an evaluation runs as the training
run's final one (jaxgen.training.evaluating)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import jax
import numpy as np

from jaxgen import atomic, parallel
from jaxgen import config as config_lib
from jaxgen.evaluation import latent_mixture, quality
from jaxgen.reporting import images
from jaxgen.reporting.writer import MetricWriter
from jaxgen.training import best_checkpoint, evaluating, loop, run_record
from jaxgen.training import workdir as wd

log = logging.getLogger("jaxgen")


def _restore_for(config, workdir, mode: str):
    """(task, state, the config fields that differ from training's: `run_record.warn_config_drift`) of the checkpoint
    eval.checkpoint names ('newest' or 'best'), for --mode=eval/sample."""
    workdir = wd.prepare(workdir, create=False)
    which = config_lib.eval_checkpoint(config)  # checked before it picks the directory (the rest: build_task)
    where = workdir / loop.CHECKPOINT_DIRS[which]
    present = where.is_dir()
    parallel.check_same_on_every_process(  # all processes take the same branch: the one below is collective
        f"whether {where} exists", [int(present)], "Every process must see the same --workdir: put it on a "
        "filesystem all hosts share.")
    if present:  # else no log file and no checkpoint manager's directory are made there
        wd.setup_logging(workdir, mode)
        shape = run_record.trained_image_shape(workdir) if mode == "sample" else None
        differ = run_record.warn_config_drift(config, workdir, mode, data_read=shape is None)
        loop.log_determinism(config)
        if shape is not None:
            log.info("--mode=sample: the model for the images the run trained on, %s (data.json); %s", shape,
                     "only the train split is read, for the latent mixture (sample.latents='gmm')"
                     if latent_mixture.uses_mixture(config) else "the dataset is not read")
        task = loop.build_task(config, workdir, training=False, image_shape=shape)
        mgr, state = loop.restore(task, which)
        mgr.close()
    else:
        state = None
    if state is None:
        if which == "newest":
            hint = "train first (the same command without --mode)"
        elif metric := _training_best_metric(config, workdir):
            when = f"every eval.every={config.eval.every} steps, and at the last step" if config.eval.every else \
                "at the last step (eval.every=0)"
            hint = (f"the best checkpoint by {metric} is kept at the run's evaluations "
                    f"({when}); none has been kept yet")
        else:
            hint = ("training keeps a best checkpoint only with eval.extractors, eval.swd or checkpoint.best_metric "
                    "set, and the run's config.json has none of them")
        raise FileNotFoundError(f"--mode={mode}: no readable checkpoint in {where}; {hint}")
    log.info("--mode=%s on the %s checkpoint: step %d", mode, which, int(jax.device_get(state["step"])))
    return task, state, differ


def evaluate_checkpoint(config, workdir) -> dict:
    """--mode=eval: the final evaluation of the newest checkpoint (eval.checkpoint='best': the best one) into
    eval.json (eval_best.json), with the final images for the newest. The newest's evaluation writes the run's own
    files (eval.json, metrics.jsonl, images), so it takes the workdir's lock, as training does; the best's writes
    only eval_best.json and may run beside a training run. Its log file is detached when it ends (as training's:
    workdir.run_log_file)."""
    with wd.run_log_file():
        return _evaluate_newest_or_best(config, workdir)


def _evaluate_newest_or_best(config, workdir) -> dict:
    if config.eval.checkpoint == "best":
        return _evaluate_checkpoint(config, wd.prepare(workdir, create=False))
    workdir = wd.prepare(workdir, create=False)
    present = (workdir / "checkpoints").is_dir()
    parallel.check_same_on_every_process(  # every process takes the same branch: both are collectives
        f"whether {workdir / 'checkpoints'} exists", [int(present)], "Every process must see the same --workdir: "
        "put it on a filesystem all hosts share.")
    if not present:  # nothing to evaluate (the error says so): no lock file left behind
        return _evaluate_checkpoint(config, workdir)
    with wd.training_lock(workdir, "--mode=eval"):
        return _evaluate_checkpoint(config, workdir)


def _evaluate_checkpoint(config, workdir: Path) -> dict:
    task, state, differ = _restore_for(config, workdir, "eval")
    best = config.eval.checkpoint == "best"
    # The best checkpoint's numbers go to eval_best.json only: metrics.jsonl is the history of the run.
    writer = MetricWriter(task.workdir, enabled=False if best else None, tb_run="mode_eval")
    images = not best and _same_images(config, workdir, differ)
    extra = {"selected_by": _selected_by(task, workdir)} if best else {}
    if differ:  # beside the numbers: they are not those of the config the run was trained with
        extra["config_differs_from_training"] = differ
    try:
        final = evaluating.final_eval(task, state, writer, evaluating.sample_quality(task, training=False),
                                      "eval_best.json" if best else "eval.json", images=images, extra=extra,
                                      by="--mode=eval")
    finally:  # an interruption too: launch.py's exit skips the atexit hook that would flush TensorBoard's events
        writer.close()
    log.info("eval of step %d: %s", int(jax.device_get(state["step"])), evaluating.eval_line(task, final))
    return final


def _best_metric(config) -> str | None:
    """The metric training keeps the best checkpoint by, for the words of a message; None where this command's
    config names none or one its eval.extractors do not compute (eval modes do not check it: they keep no best)."""
    try:
        return quality.best_metric(config)
    except ValueError:
        return None


def _training_best_metric(config, workdir: Path) -> str | None:
    """The metric the training run keeps its best checkpoint by, from the workdir's config.json (this command's
    eval.extractors may differ), else from this command's config."""
    trained = run_record.read_trained_config(workdir)
    named = trained.get("checkpoint", {}).get("best_metric")
    if named == "auto":
        extractors = trained.get("eval", {}).get("extractors") or ()
        swd_on = bool(trained.get("eval", {}).get("swd", False))
        return f"{extractors[0]}/fid" if extractors else f"{quality.SWD}/swd" if swd_on else None
    return named or _best_metric(config)


def _same_images(config, workdir: Path, drift: list[str]) -> bool:
    """Whether --mode=eval draws the run's images as training did: the same seed (its fixed noise), the same
    weights (EMA or raw) and no other `drift` from the training config (another dataset's test images, say).
    Otherwise it leaves them as they are (the fixed-noise history and numbered grids are the run's own), saying
    so."""
    trained = run_record.read_trained_config(workdir)
    # A VAE's latents (sample.latents; a mixture's fields matter only with one), a field training lacked as now.
    asked, as_trained = config.sample, trained.get("sample", {})
    sampler = [("sample.latents", asked.get("latents", "prior"), as_trained.get("latents", "prior"))]
    if "gmm" in sampler[0]:
        sampler += [(f"sample.{f}", asked.get(f), as_trained.get(f, asked.get(f)))
                    for f in ("gmm_components", "gmm_examples")]
    differ = [f for f, now, was in (("seed", config.seed, trained.get("seed", config.seed)),
                                    ("train.ema_half_life", config.train.ema_half_life > 0,
                                     trained.get("train", {}).get("ema_half_life", config.train.ema_half_life) > 0),
                                    *sampler)
              if now != was] + [d.split(":")[0] for d in drift]
    same = parallel.allgather_ints([int(not differ)])[0, 0] if jax.process_count() > 1 else not differ
    if not same:  # process 0's answer on every process: drawing the images takes collectives
        log.info("--mode=eval with another %s than training: the run's images (samples, fixed-noise history) are "
                 "left as they are", " and ".join(differ) or "config")
    return bool(same)


def _selected_by(task, workdir: Path) -> str:
    """How eval_best.json's checkpoint was chosen, for the record beside its numbers (on the test split)."""
    c = task.config
    try:
        kept = json.loads((workdir / "best" / "best.json").read_text())
        metric = kept["metric"]
        how = f"{'lowest' if kept['mode'] == 'min' else 'highest'} {metric} ({kept['value']:.6g})"
        if (mine := _best_metric(c)) and mine != metric:
            given = " (resolved from 'auto')" if c.checkpoint.best_metric == "auto" else ""
            log.info("eval.checkpoint=best evaluates the checkpoint training kept by %s; this command's "
                     "checkpoint.best_metric=%r%s chooses nothing here (only training keeps a best checkpoint)",
                     metric, mine, given)
        split = kept.get("split") or best_checkpoint.best_split(task, metric, validation=False)
    except (OSError, ValueError, KeyError, TypeError):
        how, split = "best checkpoint.best_metric", best_checkpoint.best_split(task, _best_metric(c) or "")
    chosen = f"the {how} of the run's evaluations on the {split!r} split"
    if split == "validation":
        return (f"{chosen} (examples held out of {c.data.train_split!r} by data.validation_examples, not trained "
                f"on): the {c.data.test_split!r} numbers here are unbiased")
    if split == c.data.test_split:
        return (f"{chosen}: an optimistic estimate of that split's numbers; hold out a validation split "
                f"(data.validation_examples) for unbiased ones")
    return chosen


def sample_checkpoint(config, workdir) -> Path:
    """--mode=sample: sample.num samples of the newest checkpoint (eval.checkpoint='best': the best one; EMA
    weights where kept) as <workdir>/samples/step_<step>.npz (uint8 images [N, H, W, C]) and PNG grids of
    sample.per_grid images, replacing an earlier call's for that step. A class-conditional model's .npz also holds
    `labels` (int32 [N], sample j of class j % model.num_classes) and its grids one class per column. Its log file
    is detached when it ends (workdir.run_log_file)."""
    with wd.run_log_file():
        return _sample_checkpoint(config, workdir)


def _sample_checkpoint(config, workdir) -> Path:
    task, state, _ = _restore_for(config, workdir, "sample")
    workdir = task.workdir
    step = int(jax.device_get(state["step"]))
    truncation, classes = config.sample.truncation, tuple(config.sample.classes)
    samples = task.samples(state, config.sample.num, truncation, classes)
    out = workdir / "samples"
    path = out / f"step_{step:07d}.npz"
    if jax.process_index() == 0:
        out.mkdir(exist_ok=True)
        # What drew them, beside them: the same step's samples of the raw weights or of another seed replace these.
        labels = task.sample_labels(len(samples), classes)
        atomic.write_npz(path, images=samples, step=step, seed=config.seed, checkpoint=config.eval.checkpoint,
                         params=task.eval_record(state)["params"], truncation=truncation,
                         latents=config.sample.get("latents", "prior"),
                         **({} if labels is None else {"labels": labels}))
        for old in out.glob(f"step_{step:07d}_*.png"):  # an earlier call's grids, maybe more of them
            if re.fullmatch(rf"step_{step:07d}_\d{{3,}}\.png", old.name):
                old.unlink()
        per = config.sample.per_grid
        for i in range(0, len(samples), per):
            images.save_png(out / f"step_{step:07d}_{i // per:03d}.png", samples[i : i + per] / np.float32(255),
                            ncol=images.class_columns(len(classes) or config.model.get("num_classes", 0)), scale=1)
    grids = -(-len(samples) // config.sample.per_grid)
    if jax.process_index() == 0:  # the process that wrote them
        log.info("Wrote %d sample%s of step %d to %s (and %d PNG grid%s)", len(samples), "s"[: len(samples) != 1],
                 step, path, grids, "s"[: grids != 1])
    return path
