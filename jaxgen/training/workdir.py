"""The workdir: checked writable before any work, locked by the run that writes it, its logs; how a run's errors reach
the user (`log_fatal`, `raised_on_purpose`). The run's config and data records in it: jaxgen.training.run_record."""

from __future__ import annotations

import contextlib
import dis
import fcntl
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jax

from jaxgen import parallel, runtime

log = logging.getLogger("jaxgen")


class WorkdirError(RuntimeError):
    """The workdir cannot be used."""


def prepare(workdir: str | os.PathLike, *, create: bool = True) -> Path:
    """Creates `workdir` (or, with create=False, requires it: --mode=eval/sample read a trained one) and proves it
    writable (a probe file), else raises WorkdirError naming the fix."""
    if not str(workdir).strip():  # --workdir=$UNSET: not the current directory, silently
        raise WorkdirError(f"--workdir is empty ({str(workdir)!r}): pass the directory the run writes into "
                           f"(--workdir=. for the current one)")
    if "://" in str(workdir):
        raise WorkdirError(
            f"workdir {workdir} is a URL; jaxgen writes through the filesystem: mount the bucket (e.g. with gcsfuse) "
            f"and pass the mounted path as --workdir"
        )
    path = Path(workdir).expanduser().absolute()
    if path.is_symlink() and not path.exists():
        raise WorkdirError(f"workdir {path} is a symbolic link to {os.readlink(path)}, which does not exist: create "
                           f"its target, or pass another --workdir")
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {path} exists and is not a directory; pass the path of a directory (or of one "
                           f"to create) as --workdir")
    if not create:  # every process decides together: one that raised alone would leave the others waiting
        missing = None if path.is_dir() else WorkdirError(
            f"workdir {path} does not exist; this mode reads a trained workdir: check the path (it is the --workdir "
            f"the training command used)")
        parallel.stop_if_any_failed(missing, "find the workdir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write_probe_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        copy = "" if create else (" (this mode writes its results and log there: to read a workdir you cannot write "
                                  "to, copy it and pass the copy)")
        # from None: this message, not the OSError's (failures.write_failed would read the OSError in the chain)
        raise WorkdirError(f"workdir {path} is not writable (creating a file in it failed: {e.strerror or e}); pass "
                           f"a --workdir you can write to{copy}") from None
    return path


LOCK_FILE = "train.lock"


def first_missing(workdir: str | os.PathLike) -> Path | None:
    """The outermost folder of `workdir`'s path that does not exist yet (what `prepare` creates), or None."""
    path = Path(workdir).expanduser().absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_if_unused(workdir: Path, top: Path) -> None:
    """Removes `workdir` if it holds nothing but the training log, the lock file and empty folders (the checkpoint
    manager's `checkpoints/`, made before an error in the evaluator's set-up), then its parents up to `top` while
    they are empty (the folders `prepare` created: first_missing). One process only: with several, the others may
    still be reading it. Anything else in it, or a failure to remove, leaves it as it is."""
    if jax.process_count() > 1:
        return
    try:
        entries = list(workdir.iterdir())
        folders = [p for p in entries if p.is_dir() and not p.is_symlink()]
        files = {p.name for p in entries if p not in folders}
        if files <= {LOG_FILES["train"], LOCK_FILE} and not any(any(f.iterdir()) for f in folders):
            for folder in folders:
                folder.rmdir()
            for name in (LOG_FILES["train"], LOCK_FILE):
                (workdir / name).unlink(missing_ok=True)
            for folder in (workdir, *workdir.parents):
                folder.rmdir()  # an OSError when it is not empty: the rest stays
                if folder == top:
                    break
    except OSError:
        pass


@contextlib.contextmanager
def training_lock(workdir: Path, holder: str = "training run") -> Iterator[None]:
    """Holds an exclusive lock on <workdir>/train.lock (process 0, fcntl.flock) while a run writes the workdir's own
    files (a training run; --mode=eval of the newest checkpoint, `holder` says which): a second such run stops at
    once with WorkdirError naming the first, instead of both writing the same checkpoints and metrics. The kernel
    drops the lock when its process ends, however it ends, so a killed run leaves nothing to clean up.
    --mode=sample and the best checkpoint's eval do not take it (they may run beside training). Where the
    filesystem has no locks, a warning and no lock; where its locks are host-local (FUSE mounts such as gcsfuse)
    it guards against a second run on the same host only. A collective: every process of the run enters it."""
    f, error = None, None
    if jax.process_index() == 0:
        try:
            f = open(workdir / LOCK_FILE, "a+")  # noqa: SIM115 (held for the whole run)
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                f.seek(0)
                f.truncate()
                f.write(f"{holder}: pid {os.getpid()} on {socket.gethostname()}, since "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
                f.flush()
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "another process"
                f.close()
                f = None
                error = WorkdirError(
                    f"workdir {workdir} is in use ({other}); wait for it to finish or stop it, or pass another "
                    f"--workdir. --mode=sample, and --mode=eval with --config.eval.checkpoint=best, may run beside "
                    f"a training run")
            except OSError as e:  # no locks on this filesystem (some network filesystems)
                log.warning("Cannot lock %s (%s): nothing stops a second training run on this workdir",
                            workdir / LOCK_FILE, e.strerror or e)
        except OSError as e:
            error = WorkdirError(f"cannot open {workdir / LOCK_FILE} ({e.strerror or e})")
    parallel.stop_if_any_failed(error, "lock the workdir")
    try:
        yield
    finally:
        if f is not None:
            with contextlib.suppress(OSError):  # emptied while still held: a finished run names no holder
                f.seek(0)
                f.truncate()
            f.close()  # releases the lock


LOG_FILES = {"train": "log.txt", "eval": "log_eval.txt", "sample": "log_sample.txt"}


class LogFile(logging.FileHandler):
    """The mode's log file. A write that fails with an OSError (a full disk) is said once, in one line on the
    terminal, where logging would print a traceback for every record; the records go on to the terminal."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        error = sys.exc_info()[1]
        if not isinstance(error, OSError):
            super().handleError(record)
        elif not self.failed:
            self.failed = True
            with contextlib.suppress(OSError):
                sys.stderr.write(f"{time.strftime('%H:%M:%S')} WARNING The log file {self.baseFilename} cannot be "
                                 f"written ({error.strerror or error}): from here on the log is on the terminal "
                                 f"only\n")


def setup_logging(workdir: Path, mode: str = "train") -> None:
    """INFO logs to stderr and, on process 0, to the mode's file in the workdir (LOG_FILES, appended): log.txt for
    training; --mode=eval and --mode=sample keep their own, so that one run beside a training run (sampling, the
    best checkpoint's eval) writes nothing into the training run's log."""
    logger = runtime.console_logging()
    if jax.process_index() == 0:
        fh = LogFile(workdir / LOG_FILES[mode])
        fh.setFormatter(logger.handlers[0].formatter)
        logger.addHandler(fh)
    logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax reports every save at INFO


def close_log_file(handlers: list[logging.Handler] | None = None) -> None:
    """Detaches log files `setup_logging` added (`handlers`; None: every one) from jaxgen's logger and closes them:
    after a run that finished in a Python process (a notebook), what that process logs later (trained.load's
    warnings) is not the run's."""
    logger = logging.getLogger("jaxgen")
    for handler in [h for h in logger.handlers if isinstance(h, LogFile) and (handlers is None or h in handlers)]:
        logger.removeHandler(handler)
        handler.close()


_LAUNCHED: list = []  # non-empty inside errors_written_by_launch


@contextlib.contextmanager
def errors_written_by_launch() -> Iterator[None]:
    """launch.py's, around the mode it runs: a run that raises keeps its log file attached (`run_log_file`), for
    launch.py to write the error there (log_fatal) and for what the process logs while it shuts down (a failed
    checkpoint write's late errors)."""
    _LAUNCHED.append(1)
    try:
        yield
    finally:
        _LAUNCHED.pop()


@contextlib.contextmanager
def run_log_file(quiet: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """Around a run that sets up the workdir's log file (training, --mode=eval, --mode=sample): when the run ends,
    the file is detached from jaxgen's logger and closed, so that what the process logs later (a notebook's next
    cell, trained.load's warnings) is not the run's. An error that ends the run is written there first, with its
    traceback (log_fatal), unless it is `quiet` (a stop the run logged itself). Only the files set up while the block
    runs: one attached before it began (a training run's in a thread beside it) is left as it is. Under launch.py
    (`errors_written_by_launch`) a run that raised keeps the file."""
    logger = logging.getLogger("jaxgen")
    before = list(logger.handlers)
    own = lambda: [h for h in logger.handlers if isinstance(h, LogFile) and h not in before]  # noqa: E731
    try:
        yield
    except BaseException as e:
        if not _LAUNCHED:
            if not isinstance(e, quiet):
                log_fatal(e, own())
            close_log_file(own())
        raise
    close_log_file(own())


def log_fatal(error: BaseException, handlers: list[logging.Handler] | None = None) -> Path | None:
    """Writes the error that stops a run, with its traceback, to the workdir's log file (set up by `setup_logging`;
    nothing before that, and only on process 0; `handlers`: those files only). Returns that file, or None where
    nothing was written."""
    logger = logging.getLogger("jaxgen")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, "The run stopped: %s: %s",
                               (type(error).__name__, error), (type(error), error, error.__traceback__))
    written = None
    for handler in logger.handlers if handlers is None else handlers:
        if isinstance(handler, logging.FileHandler):
            failed = []  # a write that fails (a full disk) is not reported by logging's own traceback on stderr
            handler.handleError = failed.append
            try:
                handler.handle(record)
            finally:
                del handler.handleError
            if not failed and Path(handler.baseFilename).exists():  # not removed with its workdir
                written = Path(handler.baseFilename)
    return written


_PACKAGE = Path(__file__).resolve().parents[1]  # jaxgen/


def raised_on_purpose(error: BaseException) -> bool:
    """Whether jaxgen's own code raised `error` as a message to the user (bad input, a NaN, a missing dataset,
    weights or checkpoint: a ValueError, FileNotFoundError, FloatingPointError or one of jaxgen's RuntimeErrors,
    by a `raise` statement in the jaxgen package), which says what to do. An error raised anywhere else (JAX, whose
    filtered tracebacks end in the jaxgen line that called it; a builtin; a user's loss) or of another kind
    (KeyError, TypeError, AssertionError ...: a bug) is not: its traceback is the message."""
    from jaxgen.data.tfds_source import DatasetUnavailableError  # noqa: PLC0415 (light: no TFDS import)

    kinds = (ValueError, FileNotFoundError, FloatingPointError, WorkdirError, DatasetUnavailableError,
             parallel.ProcessesDisagreeError)
    if not isinstance(error, kinds):
        return False
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if not Path(code.co_filename).resolve().is_relative_to(_PACKAGE):
        return False
    # The instruction that raised it, from the bytecode (not the source line: a source file may be missing, or edited
    # since it was imported): a `raise` statement, not a builtin failing on a jaxgen line.
    return any(i.offset == tb.tb_lasti and i.opname == "RAISE_VARARGS" for i in dis.get_instructions(code))
