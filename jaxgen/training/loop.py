"""`train_and_evaluate(config, workdir)`: the whole run, resumable (--mode=eval and --mode=sample on its
checkpoints: jaxgen.training.modes).

One driver for every task. The task (jaxgen.training.vae_task.VAETask, gan_task.GANTask, picked by
`config.task`) builds the data, models, optimizers and compiled functions; the driver owns the order of things:
restore or init, the train calls, the finite check, logging, checkpoints, evaluations, images and eval.json.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import jax
import numpy as np

from jaxgen import data as data_lib
from jaxgen import parallel, registry, runtime
from jaxgen.evaluation import quality
from jaxgen.reporting.progress import Progress
from jaxgen.reporting.writer import MetricWriter
from jaxgen.training import best_checkpoint, checkpoint, evaluating, failures, gan_task, run_record, vae_task
from jaxgen.training import state as state_lib
from jaxgen.training import workdir as wd
from jaxgen.training.stopping import RunStopped, StopRequest

log = logging.getLogger("jaxgen")


class Task(Protocol):
    """What the loop needs of a task (jaxgen.training.vae_task.VAETask, gan_task.GANTask): built once from a config
    by `Task(config, workdir, training=True, image_shape=None)` (build_task), it owns the data, the models, the
    compiled train function and the evaluation. Built with an image_shape (--mode=sample) it reads no data: train,
    validation and test are None."""

    config: Any
    workdir: Path
    mesh: jax.sharding.Mesh
    image_shape: tuple[int, int, int]
    train: data_lib.ImageData | None
    validation: data_lib.ImageData | None  # held out of train by data.validation_examples, or None
    test: data_lib.ImageData | None
    headline: tuple[str, ...]  # metrics shown on the progress bar
    not_final: tuple[str, ...]  # eval metrics measured another way at the final eval (not compared for the best)
    lazy_metrics: tuple[str, ...]  # train metrics a step reports only when it ran them (weighted by 'reg_ran')
    train_fields: tuple[str, ...]  # the train split's arrays the step reads from the devices ('image', 'label')

    def create(self) -> dict: ...  # a fresh train state, replicated on the mesh (a jitted function)
    def describe(self) -> str: ...
    def compile_train(self) -> Callable: ...  # (state, data) -> (state, metrics [steps_per_dispatch])
    def evaluate(self, state: dict, final: bool, data: data_lib.ImageData) -> dict: ...  # scores on `data`
    def samples(self, state: dict, n: int, truncation: float = 0.0, classes: tuple = ()) -> np.ndarray: ...  # uint8
    def sample_labels(self, n: int, classes: tuple = ()) -> np.ndarray | None: ...  # those samples' classes, or None
    def lr_line(self, step: int) -> str: ...  # the learning rate(s) at `step`, for the log
    def eval_line(self, ev: dict) -> str: ...
    def eval_record(self, state: dict) -> dict: ...  # what stands beside the numbers in eval.json
    def summary(self, final: dict) -> str: ...
    def save_images(self, state: dict, suffix: str = "") -> None: ...


TASKS: dict[str, Callable[..., Task]] = {"vae": vae_task.VAETask, "gan": gan_task.GANTask}


class NonFiniteLossError(FloatingPointError):
    """A step produced a NaN or Inf loss or gradient; the run stopped before saving it."""


def build_task(config, workdir: Path, training: bool = True, image_shape: tuple[int, int, int] | None = None) -> Task:
    """The task object for `config.task` ('vae' or 'gan'; config_check.check accepts only these two). training=False
    (--mode=eval/sample): the sizes only training uses are not checked against the devices and the data.
    image_shape (--mode=sample): the model for images of that shape, without reading the dataset."""
    run_record.check_same_config(config)  # several processes: before the data, whose preparation is collective
    return registry.resolve("task", config.task, TASKS)(config, workdir, training=training, image_shape=image_shape)


# A state's EMA entry and the entry it averages (same tree): a VAE's params, a GAN's G variables.
EMA_OF = {"ema_params": "params", "ema_g": "g"}


CHECKPOINT_DIRS = {"newest": "checkpoints", "best": "best"}  # eval.checkpoint -> its folder in the workdir


def restore(task, which: str = "newest", *, training: bool = False):
    """(checkpoint manager, readable state or None), placed replicated on the task's mesh: the newest checkpoint,
    or with which='best' the one kept in <workdir>/best. Only a training run moves unreadable checkpoints aside and
    reads an older one in the place of an unreadable newest one (--mode=eval/sample stop, naming it).

    Outside training (--mode=eval/sample) the config's train.ema_half_life may differ from the run's: 0 on a
    checkpoint that keeps an EMA evaluates the raw weights (the EMA is read and dropped); > 0 on one without an EMA
    evaluates its raw weights, with a warning. Training-only entries (TRAINING_ONLY_STATE: a GAN's adaptive
    augmentation, its LeCam averages) are read as the checkpoint has them, whatever the config says."""
    shapes = jax.eval_shape(task.create)
    subdir = CHECKPOINT_DIRS[which]
    reported: set[int] = set()  # broken checkpoints, logged by the first read and not again by the EMA's retry

    def read(tree):
        target = checkpoint.abstract_like(tree, parallel.replicated(task.mesh))
        return checkpoint.restore_newest(task.workdir, task.config.checkpoint, target, subdir, move_broken=training,
                                         reported=reported, older=training)

    try:
        return read(shapes)
    except checkpoint.CheckpointMismatchError as e:
        if training or not (keys := _training_only_mismatch(e)):
            return _on_mismatch(e, task, shapes, read, training)
        shapes = {**{k: v for k, v in shapes.items() if k not in keys},
                  **{k: jax.eval_shape(TRAINING_ONLY_STATE[k]) for k in keys if k not in shapes}}
    try:  # again, with the checkpoint's training-only entries
        return read(shapes)
    except checkpoint.CheckpointMismatchError as e:
        return _on_mismatch(e, task, shapes, read, training)


# State entries only a training run reads (a GAN's adaptive augmentation, its LeCam averages), with their fresh
# values: --mode=eval and sample read them as the checkpoint has them, whatever the config says.
TRAINING_ONLY_STATE = {"ada": state_lib.fresh_ada, "lecam": state_lib.fresh_lecam}


def _training_only_mismatch(e: checkpoint.CheckpointMismatchError) -> set[str]:
    """The TRAINING_ONLY_STATE entries a mismatch is (partly) about."""
    tops = {p.split("/", 1)[0] for paths in e.diff.values() for p in paths}
    return tops & set(TRAINING_ONLY_STATE)


def _on_mismatch(e: checkpoint.CheckpointMismatchError, task, shapes: dict, read, training: bool):
    """After the mismatch `e`: outside training, the checkpoint read with the EMA it keeps or lacks (`restore`);
    else `e`, with the config's changes since the workdir's last run when training."""
    kinds = {kind: {p.split("/", 1)[0] for p in paths} for kind, paths in e.diff.items()}
    key = next((k for k, averaged in EMA_OF.items() if averaged in shapes), None)
    if training and (changed := run_record.config_changes(task.config, task.workdir)):
        raise checkpoint.CheckpointMismatchError(
            f"{e}\nThis config differs from the one the workdir was last run with ({task.workdir / 'config.json'})"
            f" in: {'; '.join(changed)}", e.diff) from None
    if training or key is None or kinds not in ({"in the checkpoint, not in this config's state": {key}},
                                                {"missing from the checkpoint": {key}}):
        raise e
    if key in shapes:  # the config keeps an EMA, the checkpoint does not
        log.warning("The checkpoint keeps no EMA of the weights (its run had train.ema_half_life=0): evaluating "
                    "its raw weights")
        return read({k: v for k, v in shapes.items() if k != key})
    mgr, state = read({**shapes, key: shapes[EMA_OF[key]]})
    log.info("train.ema_half_life=0: evaluating the checkpoint's raw weights, not the EMA it keeps")
    return mgr, (state if state is None else {k: v for k, v in state.items() if k != key})


def restore_or_init(task):
    """The training run's start: a resumed or a fresh state, after removing what a save killed half-way left."""
    checkpoint.remove_partial_saves(Path(task.workdir).absolute() / "checkpoints")  # this run writes there now
    mgr, state = restore(task, training=True)
    if state is None:
        state = task.create()
        log.info("Starting a new run in %s", task.workdir)
    else:
        step = int(state["step"])
        run_record.check_resumed_holdout(task.config, task.workdir, step)  # before a line on the resume it refuses
        log.info("Resumed from the checkpoint at step %d (%s by the schedule over train.steps=%d)", step,
                 task.lr_line(step), task.config.train.steps)
    return mgr, state


def _first_nonfinite(metrics: dict, headline) -> tuple[int, list[str]] | None:
    """(step, names of non-finite metrics) of the first step in stacked host metrics with finite == 0."""
    bad = np.flatnonzero(np.asarray(metrics["finite"]) == 0)
    if not len(bad):
        return None
    i = bad[0]
    names = sorted((k for k, v in metrics.items() if not np.isfinite(np.asarray(v)[i])),
                   key=lambda k: (k not in headline, k))
    return int(np.asarray(metrics["step"])[i]), names or ["updated parameters"]


def train_and_evaluate(config, workdir, command: dict | None = None) -> dict:
    """Trains (resuming from <workdir>/checkpoints if any), evaluates, writes outputs. Returns the final eval.
    `command`: launch.py's --config and overrides (`jaxgen.command_record.launch_command`), recorded in
    <workdir>/command.json for a later command without --config (None: a call from Python; an older record is
    removed, as it is not this config's).

    A workdir this call created is removed again when the run stops on bad input before writing anything but its
    log (a misspelt loss name leaves no stray workdir behind). The run's log file is detached when it ends, with
    the error that stopped it written there (workdir.run_log_file)."""
    created = wd.first_missing(workdir)  # the top folder this call creates, if any
    workdir = wd.prepare(workdir)
    # The lock before the log: a refused run writes nothing into the workdir. The stop a signal asked for was logged
    # by the loop (RunStopped).
    with wd.training_lock(workdir, "training run"), wd.run_log_file(quiet=(RunStopped,)):
        wd.setup_logging(workdir)
        try:
            with failures.writer_errors_logged():  # a failed checkpoint write: one line, not Orbax's tracebacks
                return _train_and_evaluate(config, workdir, command)
        except Exception as e:
            if created is not None and wd.raised_on_purpose(e):
                wd.remove_if_unused(workdir, created)  # under the lock: no other run can have started in it
            raise


def _train_and_evaluate(config, workdir: Path, command: dict | None) -> dict:
    task = build_task(config, workdir)
    splits = (("train", task.train), ("validation", task.validation), ("test", task.test))
    for split, arrays in splits:
        if arrays is None or jax.process_count() == 1:
            continue
        parallel.check_same_on_every_process(
            f"the {split} data (shape and CRC-32 of the images)", parallel.fingerprint(arrays.image),
            "Every process must load the same dataset: point data.path / TFDS_DATA_DIR at the same files.")
    c = config
    log_determinism(c)
    devices, processes = jax.device_count(), jax.process_count()
    log.info("%d device%s (%d process%s, %d on this one: %s); global batch %d; %s", devices, "s"[: devices != 1],
             processes, "es"[: 2 * (processes != 1)], jax.local_device_count(), jax.local_devices()[0].device_kind,
             c.train.batch_size, task.describe())
    mgr, state = restore_or_init(task)
    step = start = int(jax.device_get(state["step"]))
    k = c.train.steps_per_dispatch
    if step >= c.train.steps:
        if step > c.train.steps:
            log.warning("The newest checkpoint is at step %d, past train.steps=%d: nothing to train; step %d is "
                        "evaluated (a longer train.steps continues the run)", step, c.train.steps, step)
    elif (c.train.steps - step) % k:
        raise ValueError(_off_the_fused_grid(c, step))
    sq = evaluating.sample_quality(task)  # the extractors built: what they compute is known now
    best_name = quality.best_metric(c)
    if sq is not None:
        sq.check_best_metric(best_name)
    # After the restore and the checks: a config refused there leaves config.json (and data.json) as they were.
    run_record.save_config(c, workdir, step)
    run_record.save_command(command, workdir)
    run_record.save_data_record(task, workdir)
    best = None
    if best_name:
        best = best_checkpoint.BestKeeper(workdir, best_name, quality.best_mode(c), fresh=step == 0, resume_step=step,
                                          not_final=task.not_final, split=best_checkpoint.best_split(task, best_name),
                                          unnamed_split=best_checkpoint.best_split(task, best_name, validation=False),
                                          measured_with=best_checkpoint.measured_with(
                                              c, best_name, evaluating.eval_data(task, False).image))
    writer = MetricWriter(workdir, resume_step=step)
    try:  # the TensorBoard events flushed whatever stops the run (launch.py's exit skips atexit)
        evals = evaluating.Evals(task, writer, best, sq)
        if c.eval.every and 0 < step < c.train.steps and step % c.eval.every == 0 and evals.missing(step):
            log.info("Evaluating step %d first: the run that checkpointed it stopped before its eval", step)
            evals.during_training(state, step)
        t0 = time.perf_counter()
        try:
            state, step, stopped = _train(task, state, mgr, writer, evals)
        finally:
            mgr.wait_until_finished()
        train_time = time.perf_counter() - t0
        if stopped is not None:
            for closing in (best, mgr):
                if closing is not None:
                    closing.close()
            log.warning("Stopped by %s at step %d after %.1f s; checkpointed in %s. The same command resumes it.",
                        signal.Signals(stopped).name, step, train_time, workdir / "checkpoints")
            raise RunStopped(step, stopped)
        t_final = time.perf_counter()
        try:
            if task.validation is not None:  # the last step's validation numbers, for the curves and the best
                evals.during_training(state, step, images=False)
            elif best is not None and best.metric in task.not_final:
                evals.for_best(state, step)
            log.info("Final evaluation of step %d", step)
            final = evaluating.final_eval(task, state, writer, sq)
            if best is not None and task.validation is None:  # the test split's numbers choose nothing then
                best.update(state, evaluating.scalars(final), final=True)
        finally:
            if best is not None:
                best.close()
            mgr.close()
    finally:
        writer.close()
    final_time = time.perf_counter() - t_final  # the metrics (eval.json's eval_seconds), images, plots and saves
    steps_run = step - start
    summary = task.summary(final) + evaluating.fid_part(final)
    if steps_run:
        log.info("Done: %d steps this invocation in %.1f s (%.0f img/s incl. compile, evals), then the final "
                 "evaluation, images and saves in %.1f s; %s; outputs in %s", steps_run, train_time,
                 steps_run * c.train.batch_size / max(train_time, 1e-9), final_time, summary, workdir)
    else:
        log.info("Done: the run was already at step %d (train.steps=%d), nothing to train; evaluated; %s; outputs in "
                 "%s", step, c.train.steps, summary, workdir)
    return final


def _off_the_fused_grid(c, step: int) -> str:
    """The error for a resume whose step is no multiple of train.steps_per_dispatch, naming the values that fit."""
    k = c.train.steps_per_dispatch
    common = math.gcd(step, c.train.steps, c.train.log_every, c.checkpoint.every, c.eval.every)
    fits = [d for d in range(1, common + 1) if common % d == 0]
    return (f"the checkpoint at step {step} is not on the grid of train.steps_per_dispatch={k} (a fused call runs "
            f"{k} steps), so train.steps={c.train.steps} cannot be reached: resume with a steps_per_dispatch that "
            f"divides {step} and train.steps, log_every, checkpoint.every and eval.every ({', '.join(map(str, fits))}"
            f"), e.g. --config.train.steps_per_dispatch={fits[-1]}")


def _train(task, state: dict, mgr, writer: MetricWriter, evals: evaluating.Evals) -> tuple[dict, int, int | None]:
    """The train calls from the state's step to train.steps: finite checks one call behind, train records, evals,
    checkpoints, and a stop on SIGTERM or Ctrl-C. Returns (state, step reached, the signal that stopped it or
    None)."""
    c = task.config
    k = c.train.steps_per_dispatch
    train_fn = task.compile_train()
    image = task.train.image
    parallel.check_fits_on_devices(
        image.nbytes, task.mesh, what=f"the train split (uint8 {list(image.shape)})",
        fix="train on fewer images (--config.data.num_examples=N) or at a lower resolution (data.resolution, where "
            "the dataset has one)")
    train_data = parallel.put_replicated({f: getattr(task.train, f) for f in task.train_fields}, task.mesh)
    step = int(jax.device_get(state["step"]))
    if step < c.train.steps and hasattr(train_fn, "lower") and not jax.config.jax_disable_jit:  # not while debugging
        # Compiled before the clock starts: the first train record's img/s and ETA count training, not XLA.
        train_fn = train_fn.lower(state, train_data).compile()
    progress = Progress(task.config, task.headline, step)
    check = lambda m: _check_finite(m, mgr, task.workdir, task.headline, c)  # noqa: E731
    pending, window, previous, call, stopped = [], [], None, 0, None
    lazy = task.lazy_metrics
    t_log, step_log = time.perf_counter(), step
    stop = StopRequest()
    try:
        stop.install()
        while step < c.train.steps and stopped is None:
            state, metrics = train_fn(state, train_data)
            step, call = step + k, call + 1
            # One call behind, so the device stays busy while the host checks; only the flags come over each call
            # (every metric when one is down, to name them).
            if previous is not None and not np.asarray(previous["finite"]).all():
                check(jax.device_get(previous))
            previous = metrics
            pending.append(metrics)
            progress.update(k)
            done = step == c.train.steps
            stopped = stop.requested(call)  # the signal, or None
            halt = stopped is not None
            due_log = step % c.train.log_every == 0 or done or halt  # a stop logs the steps since the last record
            due_ckpt = step % c.checkpoint.every == 0 or done or halt
            # A notice leaves seconds: a stopped run evaluates this step when it resumes (train_and_evaluate).
            due_eval = bool(c.eval.every) and step % c.eval.every == 0 and not done and not halt
            if due_log or due_ckpt or due_eval:  # every step so far gets checked finite
                host = jax.device_get(pending)
                for m in host:
                    check(m)
                window.extend(host)
                pending, previous = [], None
            if due_log:
                t_log, step_log, window = _train_record(c, writer, progress, step, step_log, t_log, window, lazy)
                checkpoint.check_saves(mgr)  # a save that failed in its thread (a full disk) stops the run here
            t_aside = time.perf_counter()
            if due_eval:
                evals.during_training(state, step)
                progress.evaluated(time.perf_counter() - t_aside)
                # A signal during the eval stops the run at this step, not after one more call (one process).
                if stopped is None and (stopped := stop.arrived()) is not None:
                    due_ckpt = True
                    if window:  # the steps since the last record, timed without the eval
                        t_log, t_aside = t_log + time.perf_counter() - t_aside, time.perf_counter()
                        t_log, step_log, window = _train_record(c, writer, progress, step, step_log, t_log, window,
                                                                lazy)
            # After the step's eval: a run stopped between the two resumes before this step and evaluates it again.
            if due_ckpt:  # every step so far was checked finite: the state is safe to keep
                writer.flush()  # the points up to here: a resume from this checkpoint does not write them again
                checkpoint.save(mgr, state)
            t_log += time.perf_counter() - t_aside  # a train record's img/s and ETA count training time only
        if stopped is None:  # a signal after the last call's check (its record, its checkpoint): the run stops
            # there too, checkpointed, and leaves the final evaluation to its resume. The last checkpoint's write
            # is waited for here, under the stop request: a signal meanwhile lets it finish (it raised out of the
            # wait before, leaving that step's checkpoint half-written).
            mgr.wait_until_finished()
            stopped = stop.arrived()
    finally:
        stop.uninstall()
        progress.close()
    return state, step, stopped


def _train_record(c, writer: MetricWriter, progress, step: int, step_log: int, t_log: float,
                  window: list, lazy: tuple[str, ...] = ()) -> tuple[float, int, list]:
    """Writes the train record of the steps from `step_log` to `step` (their host metrics in `window`, their
    training time since `t_log`): metric means and img/s; the `lazy` metrics (a lazy regularizer's) weighted by
    'reg_ran', the D updates that ran it. Returns the next record's (t_log, step_log, window)."""
    now = time.perf_counter()
    ips = (step - step_log) * c.train.batch_size / max(now - t_log, 1e-9)
    means = {name: float(np.mean([np.mean(m[name]) for m in window])) for name in window[0]
             if name not in ("finite", "step", "reg_ran")}
    if "reg_ran" in window[0]:  # a lazy regularizer's metrics: the mean over the D updates that ran it
        ran = np.concatenate([np.ravel(m["reg_ran"]) for m in window])
        for name in lazy:
            if name in means:
                values = np.concatenate([np.ravel(m[name]) for m in window])
                if ran.sum() > 0:
                    means[name] = float(np.sum(values * ran) / ran.sum())
                else:  # none ran in this window: no number
                    del means[name]
    writer.write(step, "train", {**means, "img_per_s": ips})
    progress.record(step, means, ips)
    return now, step, []


def _check_finite(host_metrics: dict, mgr, workdir: Path, headline, config) -> None:
    found = _first_nonfinite(host_metrics, headline)
    if found is None:
        return
    bad_step, names = found
    mgr.wait_until_finished()
    good = mgr.latest_step()
    kept = f"the last good checkpoint (step {good}) is kept in {workdir / 'checkpoints'}" if good is not None \
        else "no checkpoint had been written yet"
    blocks = ("g_optim", "d_optim") if config.task == "gan" else ("optim",)
    off = [f"{b}.clip_norm" for b in blocks if not config[b].clip_norm]
    fix = (f"Lower the learning rate or set gradient clipping ({', '.join(off)})" if off else
           "Lower the learning rate (gradient clipping is on: "
           + ", ".join(f"{b}.clip_norm={config[b].clip_norm:g}" for b in blocks) + ")")
    losses = [n for n in names if "loss" in n]
    if losses:  # computed from the last applied params, which were finite
        fix += f", or check the loss function ({', '.join(losses)} came out non-finite from finite params)"
    raise NonFiniteLossError(
        f"non-finite {', '.join(names)} in the update from step {bad_step} to {bad_step + 1}: training stopped and "
        f"that update was not applied; {kept}. {fix}: the same "
        + ("command with that change resumes from the checkpoint." if good is not None else
           "command with that change starts the run again.")
    )


def log_determinism(config) -> None:
    """With config.deterministic: says that XLA_FLAGS has XLA:GPU's flag, or warns that it lacks it (launch.py
    sets it before JAX starts; a script of the user's that calls the loop may not have)."""
    if not config.get("deterministic", False):
        return
    flag = runtime.DETERMINISTIC_FLAGS[0]
    if flag in os.environ.get("XLA_FLAGS", "").split():
        log.info("deterministic: XLA_FLAGS has %s", flag)
    else:
        log.warning("config.deterministic is set but XLA_FLAGS lacks %s: it takes effect only when set before JAX "
                    "starts (launch.py does; in a script, call jaxgen.runtime.setup(deterministic=True) first)", flag)
