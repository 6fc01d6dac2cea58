"""The evaluations of a run: what they score (the test split, or a held-out validation split during training), the
sample-quality evaluator, the evaluations during training (`Evals`) and the final one with its eval.json."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import jax

from jaxgen import atomic, parallel
from jaxgen import data as data_lib
from jaxgen.evaluation import quality
from jaxgen.reporting.writer import MetricWriter
from jaxgen.reporting.writer import read as read_metrics

log = logging.getLogger("jaxgen")


def eval_data(task, final: bool) -> data_lib.ImageData:
    """What an evaluation scores: the test split at the final eval (and in --mode=eval); during training the
    validation split when data.validation_examples holds one out, else the test split."""
    return task.test if final or task.validation is None else task.validation


def record_split(task) -> str:
    """The `split` of the records of the evaluations during training in metrics.jsonl: 'validation', or 'eval' (the
    test split's, as the final evaluation's)."""
    return "eval" if task.validation is None else "validation"


def reference_split(task, final: bool) -> str:
    """The real images an evaluation's samples are compared with: eval.reference_split, or eval_data's split."""
    return task.config.eval.reference_split or eval_data(task, final).split


def sample_quality(task, training: bool = True) -> quality.SampleQuality | None:
    """The run's sample-quality evaluator (None without eval.extractors and eval.swd): extractors loaded and the
    reference features computed or read from the cache now, so that missing weights fail before any training.
    Without `training`, only the final eval's reference (--mode=eval)."""
    c = task.config
    if not c.eval.extractors and not c.eval.get("swd", False):
        return None
    own = {d.split: d for d in (task.test, task.validation) if d is not None}
    splits = dict.fromkeys(reference_split(task, final) for final in ((True, False) if training else (True,)))
    data = {s: own[s] if s in own else data_lib.load(c.data, s) for s in splits}
    return quality.SampleQuality(c, task.mesh, task.train, {s: d.image for s, d in data.items()},
                                 {s: d.label for s, d in data.items()})


def evaluate(task, state, final: bool, sq: quality.SampleQuality | None) -> dict:
    """The task's own evaluation (on eval_data), plus sample quality on eval.num_samples samples when extractors
    (or eval.swd) are set."""
    ev = task.evaluate(state, final=final, data=eval_data(task, final))
    if sq is not None:
        ev["sample_quality"] = sq.evaluate(task.samples(state, sq.num_samples), full=final,
                                           reference=reference_split(task, final),
                                           labels=task.sample_labels(sq.num_samples))
    return ev


def scalars(ev: dict) -> dict:
    """The numbers of an eval dict, sample-quality blocks flattened to 'extractor/metric'."""
    out = {k: v for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    out.update(quality.flatten(ev.get("sample_quality", {})))
    return out


def eval_line(task, ev: dict) -> str:
    return task.eval_line(ev) + fid_part(ev)


def fid_part(ev: dict) -> str:
    """'; classifier FID 857.37 (1000 samples; real training images: 13.83)' for each extractor of an eval, and
    for a class-conditional model ', class accuracy 0.912' after it (the classifier's) and, at the final evaluation,
    ', intra-FID 251.45 (real training images: 180.20)'."""
    parts = []
    for name, block in ev.get("sample_quality", {}).items():
        if name == quality.SWD:
            real = (f"; real training images: {block['swd_train_images']:.2f}" if "swd_train_images" in block
                    else "")
            parts.append(f"; SWD {block['swd']:.2f} ({block['swd_images']} images each{real})")
            continue
        real = ""
        if "fid_train_images" in block:
            count = block["num_train_images"]
            real = f"; real training images: {block['fid_train_images']:.2f}" + (
                f" from {count}" if count != block["num_samples"] else "")
        part = f"; {name} FID {block['fid']:.2f} ({block['num_samples']} samples{real})"
        if "class_accuracy" in block:
            part += f", class accuracy {block['class_accuracy']:.3f}"
        if "intra_fid" in block:
            part += f", intra-FID {block['intra_fid']:.2f}"
            if "intra_fid_train_images" in block:
                part += f" (real training images: {block['intra_fid_train_images']:.2f})"
        parts.append(part)
    return "".join(parts)


def final_eval(task, state, writer: MetricWriter, sq, out_name: str = "eval.json", images: bool = True,
               extra: dict | None = None, by: str | None = None) -> dict:
    """The final evaluation of `state` (sample quality by `sq`): its metrics in metrics.jsonl (through `writer`;
    `by`: what evaluates, when not the training run) and, with the task's record and `extra`, in
    <workdir>/`out_name`; with `images`, the final image grids, also under the step's name. Returns the metrics."""
    t = time.perf_counter()
    final = evaluate(task, state, True, sq)
    final["eval_seconds"] = time.perf_counter() - t
    step = int(jax.device_get(state["step"]))
    writer.write(step, "eval", scalars(final), by=by)
    if jax.process_index() == 0:
        record = {"step": step, **task.eval_record(state), **(extra or {}), **final}
        atomic.write_text(task.workdir / out_name, json.dumps(record, indent=2) + "\n")
    if images:
        task.save_images(state)
        if jax.process_index() == 0:
            _copy_with_step(task.workdir / "images", step)
    return final


def _copy_with_step(images_dir: Path, step: int) -> None:
    """The final evaluation's grids (`samples.png` ...) copied under the step's name (`samples_<step>.png`), as an
    evaluation during training names them: the series is whole, and stays so when a longer train.steps extends the
    run (whose own final grids replace the unnumbered ones)."""
    for png in sorted(images_dir.glob("*.png")):
        if not re.search(r"_\d{7,}$", png.stem):
            data = png.read_bytes()
            atomic.write_with(images_dir / f"{png.stem}_{step:07d}.png", lambda f, data=data: f.write(data))


class Evals:
    """The evaluations during training: metrics, the best checkpoint and the images of one step."""

    def __init__(self, task, writer: MetricWriter, best, sq):
        self.task, self.writer, self.best, self.sq = task, writer, best, sq

    def during_training(self, state: dict, step: int, images: bool = True) -> None:
        ev = evaluate(self.task, state, False, self.sq)
        split = record_split(self.task)
        self.writer.write(step, split, scalars(ev))
        log.info("step %d %s: %s", step, split, eval_line(self.task, ev))
        if self.best is not None:
            self.best.update(state, scalars(ev))
        if images:
            self.task.save_images(state, suffix=f"_{step:07d}")

    def for_best(self, state: dict, step: int) -> None:
        """Offers the last step to the best checkpoint where the final eval measures its metric another way (a
        VAE's NLL there takes eval.final_nll_k samples, the best compares eval.nll_k's): the task's own metrics,
        as during training, without sample quality; logged, not recorded (the final eval's record stands for the
        step)."""
        ev = evaluate(self.task, state, False, None)
        log.info("step %d %s (for the best checkpoint): %s", step, record_split(self.task), eval_line(self.task, ev))
        self.best.update(state, scalars(ev))

    def missing(self, step: int) -> bool:
        """Whether metrics.jsonl lacks the record of `step`'s evaluation by a training run (process 0's answer, on
        every process). A --mode=eval record of the step does not count: that evaluation chose no best
        checkpoint and saved no numbered images."""
        path = self.task.workdir / "metrics.jsonl"
        split = record_split(self.task)
        found = any(r["split"] == split and r["step"] == step and "by" not in r for r in read_metrics(path))
        if jax.process_count() == 1:
            return not found
        return not bool(parallel.allgather_ints(int(found))[0, 0])
