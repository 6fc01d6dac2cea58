"""Metrics to `<workdir>/metrics.jsonl` (one JSON object a line) and TensorBoard events in `<workdir>/tb`.

Only process 0 writes; on the others the writer does nothing.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from pathlib import Path

import jax

from jaxgen import atomic

log = logging.getLogger("jaxgen")


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch. tensorboardX imports torch wherever it is installed,
    only to accept torch tensors (2 s of every run's start here); jaxgen writes Python floats. A torch that is
    already imported is used as it is, and one imported later loads as usual; only an `import torch` on another
    thread during these few milliseconds would fail."""
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter  # noqa: PLC0415 (only the writing process needs it)

        return SummaryWriter
    sys.modules["torch"] = None  # `import torch` raises ImportError, which tensorboardX handles
    try:
        from tensorboardX import SummaryWriter  # noqa: PLC0415
    finally:
        if sys.modules.get("torch", False) is None:
            del sys.modules["torch"]
    return SummaryWriter


class MetricWriter:
    """Appends `{"step": s, "split": "train"|"validation"|"eval", "<name>": value, ...}` lines and TensorBoard
    scalars ('eval': the test split's evaluations; 'validation': those during training on a held-out split).

    resume_step: the step training (re)starts from. The records of later steps, written by a run that went past
    its last checkpoint, are dropped from metrics.jsonl (and purged by TensorBoard), so the steps the resumed run
    repeats appear once, with the values of the run that continues. An eval (validation) record replaces an earlier
    one of the same step by the same writer in metrics.jsonl (a finished run run again re-evaluates its last step;
    --mode=eval's records, marked "by", stand beside the training run's).
    """

    def __init__(self, workdir: Path, enabled: bool | None = None, resume_step: int | None = None,
                 tb_run: str = ""):
        """tb_run: a TensorBoard run of its own under tb/ ('mode_eval': --mode=eval's numbers beside the training
        run's curves, not as second points on them)."""
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        self._evaluated = None  # (split, step, by) of the file's eval records, read at the first one this writes
        if self.enabled:
            SummaryWriter = _summary_writer_class()  # noqa: N806
            purge = None
            if resume_step is not None:
                _drop_after(self.path, resume_step)
                purge = resume_step + 1
            self._tb = SummaryWriter(str(Path(workdir) / "tb" / tb_run), flush_secs=30, purge_step=purge)

    def write(self, step: int, split: str, scalars: dict[str, float], by: str | None = None) -> None:
        """One record of `step`'s `split`; `by`: what wrote it, when not the training run (`"by": "--mode=eval"`
        in metrics.jsonl; TensorBoard gets the scalars alone)."""
        if not self.enabled:
            return
        clean = {k: (float(v) if math.isfinite(float(v)) else str(float(v))) for k, v in scalars.items()}
        replaced = False
        if split != "train":  # --mode=eval's record leaves the training run's of the step (and the reverse)
            if self._evaluated is None:  # once, not at every eval: a long run's file is re-read only to replace
                self._evaluated = {(r["split"], r["step"], r.get("by")) for r in read(self.path)
                                   if r["split"] != "train"}
            if (split, int(step), by) in self._evaluated:
                replaced = _drop(self.path, lambda r: r["split"] == split and r["step"] == step and r.get("by") == by)
            self._evaluated.add((split, int(step), by))
        atomic.append_line(self.path, json.dumps({"step": int(step), "split": split, **({"by": by} if by else {}),
                                                  **clean}))
        if replaced:  # a finished run run again re-evaluates its last step: TensorBoard keeps its first points
            return  # (it cannot replace them, and a second point at one step zigzags the curve)
        for k, v in scalars.items():
            self._tb.add_scalar(tensorboard_tag(f"{split}/{k}{_count_suffix(k, scalars)}"), float(v), int(step))

    def flush(self) -> None:
        """Writes the TensorBoard events given so far to disk: before a checkpoint, so that a run killed after it
        loses none of the points its resume will not write again. tensorboardX queues events for a writer thread
        and its flush() writes out only what that thread has taken: the thread is stopped first (it writes all it
        was given, then ends) and a new one started on the same queue and file."""
        if self._tb is None:
            return
        for file_writer in (self._tb.all_writers or {}).values():
            events = getattr(file_writer, "event_writer", None)
            worker = getattr(events, "_worker", None)
            if worker is None or not all(hasattr(events, a) for a in ("_event_queue", "_ev_writer", "_flush_secs")):
                continue  # another tensorboardX: its flush() alone
            worker.stop()
            events._worker = type(worker)(events._event_queue, events._ev_writer, events._flush_secs)
            events._worker.start()
        self._tb.flush()

    def close(self) -> None:
        """Flushes and closes the TensorBoard events (also on an interruption: launch.py then ends the process
        without Python's shutdown, whose atexit hook would flush them). Closing again does nothing."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# Metrics whose value depends on a sample count reported beside them: their TensorBoard tags carry the count
# ('eval/nll_k1000'), so that the final evaluation's NLL (eval.final_nll_k) does not join the curve of those during
# training (eval.nll_k) as a last point. metrics.jsonl keeps the plain names, with the count in the record.
COUNTED_BY = {"nll": "nll_k", "nll_bits_per_dim": "nll_k"}


def _count_suffix(name: str, scalars: dict) -> str:
    count = COUNTED_BY.get(name)
    return f"_k{int(scalars[count])}" if count in scalars else ""


def tensorboard_tag(name: str) -> str:
    """`name` with what TensorBoard refuses in a tag (':' of a user extractor's 'pkg.mod:fn', spaces) as '_'.
    metrics.jsonl keeps the name as it is."""
    return re.sub(r"[^-/\w.]", "_", name)


def _drop_after(path: Path, step: int) -> None:
    """Rewrites metrics.jsonl without the records of steps after `step` (atomically; untouched if none)."""
    _drop(path, lambda record: record["step"] > step)


def _drop(path: Path, unwanted) -> bool:
    """Rewrites metrics.jsonl without the records `unwanted(record)` is true of, and without a torn last line
    (atomically; untouched if there is nothing to drop). Returns whether a record was dropped."""
    if not path.exists():
        return False
    lines = path.read_text().splitlines(keepends=True)
    records = _parse(path, lines)
    keep = [line for line, r in zip(lines, records) if r is not None and not unwanted(r)]
    if len(keep) == sum(bool(line.strip()) for line in lines):
        return False
    atomic.write_text(path, "".join(keep))
    return any(r is not None and unwanted(r) for r in records)


def _parse(path: Path, lines: list[str]) -> list[dict | None]:
    """The record of each line (None for a blank line, and for a torn last line: a run killed while appending it,
    which is logged). Any other line that is not JSON is an error naming the file and line."""
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            out.append(None)
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if any(rest.strip() for rest in lines[i + 1 :]):
                raise ValueError(f"{path}, line {i + 1}, is not JSON ({e}); fix or delete that line") from e
            log.warning("Ignoring the torn last line of %s (a run stopped while writing it): %r", path,
                        line[:80])
            out.append(None)
    return out


def read(path: Path) -> list[dict]:
    """The records of a metrics.jsonl file (missing file: none; a torn last line is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    return [r for r in _parse(path, path.read_text().splitlines()) if r is not None]
