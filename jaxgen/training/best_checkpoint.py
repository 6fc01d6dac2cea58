"""The best checkpoint by one eval metric, kept beside the newest ones: `<workdir>/best/<step>` (one at a time) and
`<workdir>/best/best.json` with its step, metric, value and split, which a resumed run reads back."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxgen import atomic, parallel
from jaxgen.training.checkpoint import Manager, remove_partial_saves, save_args

log = logging.getLogger(__name__)


class BestKeeper:
    """Keeps the checkpoint with the best value of one eval metric in `<workdir>/best/<step>` (one at a time), and
    `<workdir>/best/best.json` with its step and value, which a resumed run reads back.

    fresh: the run starts from scratch (no checkpoint restored): a best.json left by an earlier run is ignored.
    resume_step: the step the run resumes from; a best.json of a later step (written by a run stopped before its
    checkpoint of that step) is ignored, since the steps it came from are trained again.
    not_final: metrics measured another way at the final eval (a VAE's NLL: eval.final_nll_k importance samples),
    which therefore take part only at the intermediate evals.
    split: the split the values come from ('validation', 'test', ...); a record of another split is ignored.
    unnamed_split: the split a record that names none (written before records did) was chosen on.
    measured_with: the config fields that set the metric's scale and their values (`measured_with` below); a
    record measured with other values is ignored (a record without them, written before records had them, is not).
    With several processes, process 0's values decide, so every process takes part in the same saves.
    """

    def __init__(self, workdir: Path, metric: str, mode: str, *, fresh: bool = False,
                 resume_step: int | None = None, not_final: tuple[str, ...] = (), split: str = "",
                 unnamed_split: str | None = None, measured_with: dict | None = None):
        self.metric, self.mode, self.not_final, self.split = metric, mode, tuple(not_final), split
        self.measured_with = None if measured_with is None else json.loads(json.dumps(measured_with))  # as stored
        self.dir = Path(workdir).absolute() / "best"
        self.record_path = self.dir / "best.json"
        self.record = None
        if self.record_path.exists():
            try:
                self.record = json.loads(self.record_path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                log.warning("The best checkpoint record %s cannot be read (%s); the next eval starts it again",
                            self.record_path, e)
        why = None
        if self.record is None:
            pass
        elif fresh:
            why = "this run starts from scratch"
        elif self.record.get("metric") != metric or self.record.get("mode") != mode:
            why = (f"it was kept by {self.record.get('metric')} ({self.record.get('mode')}), this run by {metric} "
                   f"({mode})")
        elif self.record.get("split", split if unnamed_split is None else unnamed_split) != split:
            was = self.record.get("split", unnamed_split)
            why = f"it was chosen on the {was!r} split, this run chooses on {split!r}"
        elif resume_step is not None and self.record.get("step", 0) > resume_step:
            why = f"it is of step {self.record.get('step')}, after step {resume_step} this run resumes from"
        elif changed := _changed(self.record.get("measured_with"), self.measured_with):
            why = f"its value was measured with other settings ({', '.join(changed)})"
        if why:
            log.warning("Ignoring the best checkpoint record in %s: %s; it will be replaced", self.dir, why)
            self.record = None
        self._mgr = None

    def better(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.record is None:
            return True
        return value < self.record["value"] if self.mode == "min" else value > self.record["value"]

    def update(self, state: dict, metrics: dict, *, final: bool = False) -> bool:
        """Saves `state` if metrics[self.metric] beats the best so far. Returns whether it did.

        At the final eval the metrics in `not_final` do not take part (they are measured another way there)."""
        if final and self.metric in self.not_final:
            return False
        if self.metric not in metrics:
            choices = ", ".join(sorted(k for k in metrics if not k.rsplit("/", 1)[-1].startswith("num_")))
            raise ValueError(f"checkpoint.best_metric={self.metric!r} is not an eval metric; choices: {choices}")
        value = float(metrics[self.metric])
        # Process 0 decides, from its value and its record: every process must take part in the same saves, even
        # where a host read an older best.json (a stale network-filesystem cache).
        value, better = _from_process_0((value, float(self.better(value))))
        if not better:
            return False
        step = int(jax.device_get(state["step"]))
        if self._mgr is None:
            remove_partial_saves(self.dir)
            options = ocp.CheckpointManagerOptions(preservation_policy=ocp.checkpoint_managers.LatestN(n=1),
                                                   enable_async_checkpointing=False, create=True)
            self._mgr = Manager(self.dir, options=options)  # which leaves preemption to the loop
        if step in self._mgr.all_steps():  # kept by a run that was stopped before its checkpoint of this step
            self._mgr.delete(step)
        self._mgr.save(step, args=save_args(state), force=True)
        self._mgr.wait_until_finished()
        self.record = {"step": step, "metric": self.metric, "mode": self.mode, "value": value, "split": self.split}
        if self.measured_with is not None:
            self.record["measured_with"] = self.measured_with
        if jax.process_index() == 0:
            atomic.write_text(self.record_path, json.dumps(self.record, indent=2) + "\n")
        log.info("New best %s = %.4g at step %d%s (kept in %s)", self.metric, value, step,
                 f" on the {self.split!r} split" if self.split else "", self.dir)
        return True

    def close(self) -> None:
        if self._mgr is not None:
            self._mgr.close()


def _changed(before: dict | None, now: dict | None) -> list[str]:
    """'field: before -> now' for each field of `now` whose value differs in `before` (none when either is None)."""
    if before is None or now is None:
        return []
    return [f"{k}: {before.get(k)!r} -> {v!r}" for k, v in now.items() if k in before and before[k] != v]


def _from_process_0(values: tuple[float, ...]) -> tuple[float, ...]:
    """Process 0's values on every process (the same with one process)."""
    if jax.process_count() == 1:
        return tuple(values)
    from jax.experimental import multihost_utils  # noqa: PLC0415

    # As int32 words: JAX without x64 would round float64s to float32 (a FID within that rounding of the best
    # would be ranked by the rounded value).
    words = np.asarray(values, np.float64).view(np.int32)
    return tuple(float(v) for v in np.asarray(multihost_utils.broadcast_one_to_all(words), np.int32).view(np.float64))


# The fields on which the values of the best checkpoint's metric depend (besides the model): a resumed run that
# changes one (another likelihood, dataset, sample count ...) measures on another scale, so the best kept so far
# is not compared with its values. The data fields, then those of a metric of the samples ('<extractor>/fid', ...)
# or of the evaluation's images.
# (data.path is where a host finds the files, which may move: the images themselves are compared, by CRC-32.)
_DATA_FIELDS = ("name", "train_split", "test_split", "num_examples", "binarize", "resolution", "crop", "test_percent")
_SAMPLE_FIELDS = ("eval.num_samples", "eval.reference_split", "sample.latents", "sample.gmm_components",
                  "sample.gmm_examples")  # a VAE's latents: the prior's or a mixture's samples
_IMAGE_FIELDS = ("eval.num_examples", "eval.binarize_seed", "objective.likelihood")
_METRIC_FIELDS = {"nll": ("eval.nll_k",), "nll_bits_per_dim": ("eval.nll_k",), "d_real": ("eval.batch_size",),
                  "d_fake": ("eval.batch_size",)}  # D's BatchNorm runs in train mode: its outputs depend on the batch


def measured_with(c, metric: str, images: np.ndarray | None = None) -> dict:
    """{field: value} of the config fields that set the scale of `metric` (see _DATA_FIELDS), those `c` has; with
    `images` (the split the evaluations during training score), 'data.images': their shape and CRC-32."""
    fields = [f"data.{f}" for f in _DATA_FIELDS] + list(
        _SAMPLE_FIELDS if "/" in metric else () if metric == "mig" else _IMAGE_FIELDS)  # MIG: the whole split
    fields += _METRIC_FIELDS.get(metric, ())
    if metric.startswith("classifier/"):  # the classifier's training steps change its features
        fields.append("eval.classifier_steps")
    if "/" not in metric and c.get("objective", {}).get("likelihood") == "gaussian":
        fields.append("objective.gaussian_sigma")
    found = {}
    for field in fields:
        block, name = field.split(".")
        if block in c and name in c[block]:
            found[field] = c[block][name]
    if images is not None:
        found["data.images"] = parallel.fingerprint(images)
    return found


def best_split(task, metric: str, validation: bool = True) -> str:
    """The split the best checkpoint is chosen on: that of the evaluations during training (a sample-quality
    metric, '<extractor>/fid': the split its samples are compared with). validation=False: the one it was chosen on
    without a validation split (a best.json written before records named their split)."""
    c = task.config
    if validation and task.validation is not None:
        return c.eval.reference_split if "/" in metric and c.eval.reference_split else "validation"
    return (c.eval.reference_split if "/" in metric else "") or c.data.test_split
