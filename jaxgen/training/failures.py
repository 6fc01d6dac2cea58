"""The machine's failures as one message naming the fix (launch.py's FATAL line): a full disk, a write the
filesystem refuses (permissions, a read-only mount, the file-size limit), an accelerator out of memory. Matched in the
error's text as well as its type: Orbax's writer threads and XLA raise them as text."""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import sys
import threading
import traceback

from jaxgen import runtime

log = logging.getLogger("jaxgen")

_FULL = {errno.ENOSPC: "No space left on the device", errno.EDQUOT: "Disk quota exceeded on the device"}
# Refused writes (or reads), by errno: Python's OSError, or TensorStore's text "... [os_error_code='13']".
_REFUSED = {
    errno.EFBIG: ("A file grew past the file-size limit at {where} (File too large)",
                  "Raise the limit (`ulimit -f unlimited` in the shell or job script that starts the run; a FAT32 "
                  "or exFAT disk caps files at 4 GiB: use a --workdir on another filesystem)"),
    errno.EACCES: ("The filesystem refused access to {where} (Permission denied)",
                   "Give this user write access there (and read access to what the run reads), or pass a --workdir "
                   "you can write to"),
    errno.EPERM: ("The filesystem refused access to {where} (Operation not permitted)",
                  "Give this user write access there, or pass a --workdir you can write to"),
    errno.EROFS: ("{where} is on a read-only filesystem",
                  "Remount it read-write (a network filesystem can turn read-only after an error or an expired "
                  "ticket), or pass a --workdir on a writable disk"),
}
# XLA's allocation failures (GPU, TPU): "RESOURCE_EXHAUSTED: Out of memory while trying to allocate N bytes.",
# "... Failed to allocate request for 176.00MiB (184549376B) on device ordinal 0", "Ran out of memory in memory
# space hbm ...".
_OOM = re.compile(r"RESOURCE_EXHAUSTED:.*(out of memory|failed to allocate|ran out of memory)", re.IGNORECASE)


def _chain(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        # `raise ... from None` hides the context: a message of jaxgen's own that says what the error below it meant
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)


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


_handled: list = []  # non-empty inside writer_errors_logged


@contextlib.contextmanager
def writer_errors_logged():
    """Inside the block, the errors of checkpoint writes that Orbax logs with their tracebacks (from its writer
    threads, and again where the main thread waits for them) reach the terminal as one line per error; their
    tracebacks go to the log file. The main thread raises the error (at the next train record:
    checkpoint.check_saves; or at the next save), which stops the run with one FATAL line; on a full disk there
    were ~500 lines of tracebacks before it. TensorStore's writes still under way then finish into the event loop
    Orbax has closed, each raising "RuntimeError: Event loop is closed" where Python can only print it: the first
    one's traceback goes to the log file, the others are dropped.

    Both launch.py (around the mode and its error's report) and loop.train_and_evaluate (for a notebook's call)
    enter it; the outermost block handles everything."""
    if _handled:
        yield
        return
    absl = logging.getLogger("absl")
    orbax_errors = functools.partial(_orbax_error, set())
    absl.addFilter(orbax_errors)
    hook = sys.unraisablehook
    sys.unraisablehook = functools.partial(_late_write_callback, hook, [])
    _handled.append(1)
    try:
        yield
    finally:
        _handled.clear()
        absl.removeFilter(orbax_errors)
        sys.unraisablehook = hook


def _orbax_error(said: set[str], record: logging.LogRecord) -> bool:
    """absl's logger's filter: an error with a traceback that Orbax logs is logged by jaxgen instead, one warning
    line on the terminal per error (`said`: those already warned about) and the record with its traceback in the
    log file; False drops absl's own record. Without a log file (processes other than 0) absl's record stays."""
    if not (record.levelno >= logging.ERROR and record.exc_info and "orbax" in record.pathname
            and _has_log_file()):
        return True
    error = record.exc_info[1]
    text = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    if text not in said:  # the same error reaches several of Orbax's threads, and the main thread's wait
        said.add(text)
        log.warning("Orbax reported an error: %s (its traceback is in the log file; a checkpoint save that failed "
                    "stops the run)", text if len(text) <= 400 else text[:400] + " ...")
        log.warning("Orbax's error: %s", record.getMessage(), exc_info=record.exc_info,
                    extra={runtime.FILE_ONLY: True})
    return False


def _late_write_callback(hook, seen: list, unraisable) -> None:
    """sys.unraisablehook in `writer_errors_logged`: "Event loop is closed" raised by asyncio's
    call_soon_threadsafe outside the main thread (a TensorStore write finishing after Orbax closed its loop) goes
    to the log file, once; anything else to `hook`."""
    e, tb = unraisable.exc_value, unraisable.exc_traceback
    frames = traceback.extract_tb(tb) if tb is not None else []
    if not (isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
            and any(f.name == "call_soon_threadsafe" for f in frames)
            and threading.current_thread() is not threading.main_thread() and _has_log_file()):
        hook(unraisable)
        return
    if not seen:
        log.warning("A write that finished after its checkpoint save had failed could not report back (logged "
                    "once; the save's own error is above)", exc_info=(type(e), e, tb), extra={runtime.FILE_ONLY: True})
    seen.append(1)


def _has_log_file() -> bool:
    """Whether jaxgen's logger writes a log file (process 0 of a run, after workdir.setup_logging)."""
    return any(isinstance(h, logging.FileHandler) for h in log.handlers)


def _path_of(error: BaseException) -> str | None:
    """The file an error names: an OSError's filename, or the last absolute path quoted in its text (TensorStore:
    ... local file "<dir>": Failed writing: "<file>" ...); a checkpoint's inner file as the checkpoint."""
    where = getattr(error, "filename", None) if isinstance(error, OSError) else None
    if where is None:
        quoted = re.findall(r'"(/[^"]+)"', str(error))
        where = quoted[-1] if quoted else None
    if where is not None and ".orbax-checkpoint-tmp" in str(where):
        where = f"{str(where).split('.orbax-checkpoint-tmp')[0]} (a checkpoint being written)"
    return None if where is None else str(where)


def _where(error: BaseException, found: BaseException) -> str:
    """The path `found` (an error in `error`'s chain) names, else the first one another error of the chain names
    (Orbax's finalize raises a bare OSError after TensorStore's error that had it), else 'the workdir'."""
    return next(filter(None, map(_path_of, [found, *_chain(error)])), "the workdir")


def write_failed(error: BaseException, mode: str = "train") -> str | None:
    """The message for an error that a full disk (or an exceeded quota), or a write the filesystem refused
    (`_REFUSED`: permissions, a read-only mount, the file-size limit), caused anywhere in its chain: an OSError (a
    log, image or metrics write) or the error text of Orbax's asynchronous checkpoint writes (TensorStore's, naming
    the errno). None for any other error."""
    then = _again(mode) + (" (a half-written one is never read, and the next start removes it)"
                           if mode == "train" else "")
    for e in _chain(error):
        text = str(e)
        for code, what in _FULL.items():
            if (isinstance(e, OSError) and e.errno == code) or os.strerror(code) in text:
                return (f"{what} that holds {_where(error, e)}. Free space there (fewer checkpoints kept: "
                        f"--config.checkpoint.keep; or a --workdir on a larger disk), then {then}")
    for e in _chain(error):  # only by code: "Permission denied" in a message of jaxgen's own has its own fix
        for code, (what, fix) in _REFUSED.items():
            # an OSError of a file (EPERM also comes from signals and processes), or TensorStore's of one
            if (isinstance(e, OSError) and e.errno == code and e.filename is not None) or \
                    f"[os_error_code='{code}']" in str(e):
                return f"{what.format(where=_where(error, e))}. {fix}, then {then}"
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
