"""The machine's failures as one message naming the fix (launch.py's FATAL line): a full disk, an accelerator out
of memory. Matched in the error's text as well as its type: Orbax's writer threads and XLA raise them as text."""

from __future__ import annotations

import errno
import os
import re
import sys

_FULL = {errno.ENOSPC: "No space left on the device", errno.EDQUOT: "Disk quota exceeded on the device"}
# XLA's allocation failures (GPU, TPU): "RESOURCE_EXHAUSTED: Out of memory while trying to allocate N bytes.",
# "... Failed to allocate request for 176.00MiB (184549376B) on device ordinal 0", "Ran out of memory in memory
# space hbm ...".
_OOM = re.compile(r"RESOURCE_EXHAUSTED:.*(out of memory|failed to allocate|ran out of memory)", re.IGNORECASE)


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _again(mode: str, changed: bool = False) -> str:
    command = "the same command" + (" with that change" if changed else "")
    return (f"run {command}: it resumes from the newest checkpoint written whole" if mode == "train"
            else f"run {command} again")


def quiet_stderr() -> None:
    """From now on this process's stderr (file descriptor 2) goes to /dev/null: after a full disk's FATAL line,
    Orbax's writer threads and their collected asyncio tasks print hundreds of lines of tracebacks while Python
    shuts down (their errors are that same full disk; the log file holds the first one's traceback)."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def disk_full(error: BaseException, mode: str = "train") -> str | None:
    """The message for an error that a full disk (or an exceeded quota) caused, anywhere in its chain: an OSError
    (a log, image or metrics write) or the error text of Orbax's asynchronous checkpoint writes (TensorStore's
    RESOURCE_EXHAUSTED naming errno 28). None for any other error."""
    for e in _chain(error):
        text = str(e)
        for code, what in _FULL.items():
            if (isinstance(e, OSError) and e.errno == code) or os.strerror(code) in text:
                where = getattr(e, "filename", None) if isinstance(e, OSError) else None
                if where is None:  # TensorStore: ... local file "<dir>": Failed writing: "<file>" ...
                    quoted = re.findall(r'"(/[^"]+)"', text)
                    where = quoted[-1] if quoted else None
                if where is not None and ".orbax-checkpoint-tmp" in str(where):  # the checkpoint, not its inner file
                    where = f"{str(where).split('.orbax-checkpoint-tmp')[0]} (a checkpoint being written)"
                then = _again(mode) + (" (a half-written one is never read, and the next start removes it)"
                                       if mode == "train" else "")
                return (f"{what} that holds {where or 'the workdir'}. Free space there (fewer checkpoints kept: "
                        f"--config.checkpoint.keep; or a --workdir on a larger disk), then {then}")
    return None


def out_of_memory(error: BaseException, config, mode: str = "train") -> str | None:
    """The message for an accelerator's allocation failure anywhere in the error's chain, naming the sizes the mode
    uses that can be lowered, with their values in `config`. None for any other error."""
    for e in _chain(error):
        text = str(e)
        if _OOM.search(text):
            xla = next(line.strip() for line in text.splitlines() if "RESOURCE_EXHAUSTED" in line)
            t, ev, vae = config.train, config.eval, config.task == "vae"
            sizes = []
            if mode == "train":
                sizes.append(f"train.batch_size (now {t.batch_size})")
            use = {"train": " for the evaluations", "sample": ": the sampling batch"}.get(mode, "")
            sizes.append(f"eval.batch_size (now {ev.batch_size}{use})")
            if vae and mode != "sample":
                sizes.append(f"eval.nll_chunk (now {ev.nll_chunk}; eval.batch_size * nll_chunk decodes at once)")
            if mode == "train" and t.steps_per_dispatch > 1:
                sizes.append(f"train.steps_per_dispatch (now {t.steps_per_dispatch})")
            if not vae and mode != "train" and t.ema_half_life > 0:
                sizes.append(f"train.batch_size (now {t.batch_size}: the passes that re-estimate the EMA "
                             f"generator's statistics)")
            if not vae and config.model.dtype == "float32":
                sizes.append("the compute precision (--config.model.dtype=bfloat16)")
            return (f"The accelerator ran out of memory ({xla[:300]}). Lower {', '.join(sizes)}, or the model's "
                    f"widths; memory held by another process on the device, or JAX's preallocation "
                    f"(XLA_PYTHON_CLIENT_MEM_FRACTION), also limits what this run gets. Then {_again(mode, True)}")
    return None
