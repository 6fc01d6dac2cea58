"""How failures reach the user: one FATAL line for an error jaxgen raises (its traceback in log.txt), a full disk,
Orbax's writer errors, an unwritable log, the accelerator's memory."""

import contextlib
import logging
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxgen.reporting.writer import read
from jaxgen.training import loop
from tests.conftest import ROOT, config_module, launch


def test_one_log_format_from_the_config_on_and_no_tfds_warning_before_jaxgens_message(tmp_path):
    """A variant's warning while the flags are parsed reads like every other line ('17:08:15 WARNING ...', not
    absl's 'W1129 17:08:15.123 ...'); TFDS's 'no dataset_info.json' warning of a dataset not prepared is muted, so
    jaxgen's message saying what to do is what the user reads."""
    r = launch("--config=configs/iwae_mnist.py:k1,k50", f"--workdir={tmp_path / 'w'}", "--config.data.download=False",
                f"--config.data.data_dir={tmp_path / 'd'}")
    assert r.returncode == 1, r.stderr[-3000:]
    lines = r.stderr.splitlines()
    warning = [line for line in lines if "config variant 'k50' overrides" in line]
    assert len(warning) == 1 and re.match(r"\d\d:\d\d:\d\d WARNING config variant 'k50' overrides", warning[0])
    assert not any(re.match(r"[IWEF]\d{4} ", line) for line in lines), r.stderr  # absl's format
    assert "dataset_info.json" not in r.stderr
    assert "FATAL DatasetUnavailableError: TFDS dataset 'mnist' is not prepared in" in r.stderr


def test_an_error_jaxgen_raises_is_one_message_and_its_traceback_lands_in_log_txt(tmp_path):
    """Bad input stops with its message on stderr (no traceback burying it); log.txt keeps the traceback, and
    --traceback prints it."""
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.data.name=mnist_6k")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "FATAL UnknownNameError: unknown dataset 'mnist_6k'; choices: " in r.stderr
    assert f"(its traceback: {tmp_path / 'log.txt'}, or rerun with --traceback)" in r.stderr
    logged = (tmp_path / "log.txt").read_text()
    assert "ERROR The run stopped: UnknownNameError: " in logged and "mnist_6k" in logged and "Traceback" in logged
    r = launch("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path}", "--config.data.name=mnist_6k",
                "--traceback")
    assert r.returncode == 1 and "Traceback" in r.stderr and "mnist_6k" in r.stderr


def test_bad_input_leaves_no_workdir_that_the_command_created(tmp_path):
    """A misspelt name on a new --workdir: the FATAL line, and no stray workdir holding only a log and a lock file
    (the traceback is one --traceback away). A workdir that existed keeps its log (the test above)."""
    (tmp_path / "runs").mkdir()
    wd = tmp_path / "runs" / "new" / "typo"
    r = launch("--config=configs/gan_mnist.py:smoke", f"--workdir={wd}", "--config.loss.name=hinje")
    assert r.returncode == 1 and "FATAL UnknownNameError: unknown GAN loss 'hinje'" in r.stderr, r.stderr[-3000:]
    assert r.stderr.rstrip().endswith("(its traceback: rerun with --traceback)")
    assert not (tmp_path / "runs" / "new").exists() and (tmp_path / "runs").is_dir()  # what the command created


def test_only_errors_jaxgen_raises_for_the_user_lose_their_traceback():

    from jaxgen import registry
    from jaxgen.training import workdir

    def raised(fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            return e
        raise AssertionError("no error")

    def a_users_check():
        raise ValueError("raised outside jaxgen")

    assert workdir.raised_on_purpose(raised(lambda: registry.resolve("dataset", "nope", {"a": 1})))
    assert not workdir.raised_on_purpose(raised(a_users_check))  # a user's code: its traceback says where
    assert not workdir.raised_on_purpose(raised(lambda: np.reshape(np.zeros(3), (2, 2))))  # raised in numpy
    assert not workdir.raised_on_purpose(raised(lambda: registry.resolve("dataset", "x", None)))  # a TypeError: a bug
    from jaxgen.training import state as state_lib

    # A ValueError of a builtin (an array's truth value) on a jaxgen line that is no `raise`: a bug, traceback kept.
    assert not workdir.raised_on_purpose(raised(lambda: state_lib.ema_rate(0, 1, np.zeros(3), rampup=np.ones(2))))
    assert not workdir.raised_on_purpose(KeyboardInterrupt())


def test_a_full_disk_is_named_with_where_and_what_to_do():
    """launch.py's FATAL line for a full disk (or quota): from an OSError of a log, image or metrics write, or from
    the text of Orbax's asynchronous checkpoint write (TensorStore's RESOURCE_EXHAUSTED, as a 1 MB tmpfs gave it),
    anywhere in the error's chain; nothing for other errors."""
    import errno

    from jaxgen.training import failures

    full = failures.write_failed(OSError(errno.ENOSPC, "No space left on device", "/runs/a/images/samples.png"))
    assert full.startswith("No space left on the device that holds /runs/a/images/samples.png. Free space there")
    assert "--config.checkpoint.keep" in full and full.endswith("a half-written one is never read, and the next "
                                                                "start removes it)")
    orbax = ValueError('RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.nu.params.dec_dense.kernel/0.0" in OCDBT '
                       'database at local file "/runs/a/best/10.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/'
                       'ocdbt.process_0/": Failed writing: "/runs/a/best/10.orbax-checkpoint-tmp/state.orbax-'
                       'checkpoint-tmp/ocdbt.process_0/d/73fd6c2d": Failed to write 827753 bytes to file 22: No '
                       "space left on device [os_error_code='28']")
    try:
        try:
            raise orbax
        except ValueError as e:
            raise RuntimeError("a save failed") from e
    except RuntimeError as e:
        chained = e
    full = failures.write_failed(chained, mode="eval")
    assert full.startswith("No space left on the device that holds /runs/a/best/10 (a checkpoint being written).")
    assert full.endswith("then run the same command again")
    assert failures.write_failed(OSError(errno.EDQUOT, "Disk quota exceeded", "/x")).startswith("Disk quota exceeded")
    assert failures.write_failed(ValueError("no space for the latent")) is None
    # Orbax's synchronous finalize raises a bare OSError after TensorStore's error, which named the file
    bare = OSError(errno.ENOSPC, "No space left on device")
    bare.__context__ = orbax
    assert failures.write_failed(bare).startswith("No space left on the device that holds /runs/a/best/10 (a ")


def test_a_write_the_filesystem_refuses_is_named_with_where_and_what_to_do():
    """The file-size limit (EFBIG: `ulimit -f`, FAT32), permissions (EACCES, EPERM) and a read-only mount (EROFS),
    from Python's OSError or Orbax's text, give the FATAL line too; a message of jaxgen's own about such an error
    (`raise ... from None`: the workdir probe's) keeps its own fix."""
    import errno

    from jaxgen.training import failures, workdir

    efbig = ValueError('OUT_OF_RANGE: Error writing "params.out.bias/0.0" in OCDBT database at local file "/r/best/'
                       '10.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: "/r/'
                       'best/10.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/8272be": Failed to '
                       "write 211263 bytes to file 23: File too large [os_error_code='27']")
    said = failures.write_failed(efbig)
    assert said.startswith("A file grew past the file-size limit at /r/best/10 (a checkpoint being written) (File too "
                           "large). Raise the limit (`ulimit -f unlimited`")
    assert said.endswith("then run the same command: it resumes from the newest checkpoint written whole (a "
                         "half-written one is never read, and the next start removes it)")
    said = failures.write_failed(PermissionError(errno.EACCES, "Permission denied", "/r/metrics.jsonl"), mode="eval")
    assert said == ("The filesystem refused access to /r/metrics.jsonl (Permission denied). Give this user write "
                    "access there (and read access to what the run reads), or pass a --workdir you can write to, then "
                    "run the same command again")
    assert failures.write_failed(OSError(errno.EROFS, "Read-only file system", "/r/x")).startswith(
        "/r/x is on a read-only filesystem. Remount it read-write")
    assert failures.write_failed(OSError(errno.EPERM, "Operation not permitted", "/r")).startswith(
        "The filesystem refused access to /r (Operation not permitted)")
    assert failures.write_failed(ValueError("Permission denied by the user's loss")) is None  # by code, not by words
    try:
        workdir.prepare("/proc/jaxgen_cannot_be_here")
    except workdir.WorkdirError as e:
        assert failures.write_failed(e) is None and "pass a --workdir you can write to" in str(e)
    else:
        raise AssertionError("/proc is writable")


def test_a_dangling_symlink_or_a_read_only_workdir_gets_its_own_fix(tmp_path):
    from jaxgen.training import workdir

    (tmp_path / "link").symlink_to(tmp_path / "gone")
    with pytest.raises(workdir.WorkdirError, match=r"link is a symbolic link to .*gone, which does not exist: create "
                                                   r"its target, or pass another --workdir"):
        workdir.prepare(tmp_path / "link")
    with pytest.raises(workdir.WorkdirError, match=r"to read a workdir you cannot write to, copy it and pass the copy"):
        workdir.prepare("/proc/self", create=False)  # a directory no one writes a file into


def test_the_file_size_limit_stops_a_run_with_one_line_and_the_run_resumes(tmp_path):
    """RLIMIT_FSIZE (a job scheduler's, or `ulimit -f`) hit by a checkpoint write: before, a traceback and ~60 of
    Orbax's writer threads' (636 lines). Python ignores SIGXFSZ, so the write fails with EFBIG."""
    import os

    from tests.conftest import TEST_XLA_FLAGS

    args = ("--config=configs/vae_mnist.py:smoke", f"--workdir={tmp_path / 'w'}", "--config.train.steps=20",
            "--config.eval.extractors=()", "--config.eval.every=0")  # no eval at step 10: its checkpoint grows past
    r = subprocess.run(["bash", "-c", 'ulimit -f 300 && exec "$0" "$@"', sys.executable, str(ROOT / "launch.py"),
                        *args], cwd=ROOT, env={**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}, capture_output=True,
                       text=True, timeout=300)  # 300 KiB: a checkpoint's data file is larger
    assert r.returncode == 1
    assert r.stderr.splitlines()[-2].startswith("FATAL A file grew past the file-size limit at "), r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    r = launch(*args)
    assert r.returncode == 0, r.stderr[-3000:]


def test_after_a_full_disks_fatal_line_stderr_is_quiet():
    """The FATAL line stays the last: what Orbax's writer threads print while Python shuts down goes nowhere."""
    code = ("import os, sys; from jaxgen.training import failures; sys.stderr.write('FATAL No space\\n'); "
            "failures.quiet_stderr(); sys.stderr.write('late traceback\\n'); os.write(2, b'from a thread\\n')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0 and r.stderr == "FATAL No space\n", r.stderr


def test_orbax_writer_errors_are_one_line_on_the_terminal_and_their_tracebacks_go_to_the_log_file(tmp_path, capsys,
                                                                                                   monkeypatch):
    """A checkpoint write that fails (a full disk) made ~500 lines of tracebacks before the FATAL line: Orbax logs
    the error from each thread that sees it, and TensorStore's late writes raise "Event loop is closed" where only
    Python's unraisable hook sees them. In failures.writer_errors_logged: one warning line per distinct error; the
    first traceback of each kind in the log file; anything else as before."""
    import asyncio
    import threading

    from jaxgen.training import failures, workdir

    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [])  # this test's own, to its stderr and tmp_path
    workdir.setup_logging(tmp_path)
    absl = logging.getLogger("absl")

    def orbax_logs(error, message):  # as Orbax's writer thread does: absl's logging.exception
        try:
            raise error
        except ValueError:
            record = absl.makeRecord("absl", logging.ERROR, "/site-packages/orbax/checkpoint/_src/futures/future.py",
                                     387, message, (), sys.exc_info())
        absl.handle(record)

    seen = []
    hook, before = sys.unraisablehook, seen.append
    sys.unraisablehook = before  # the hook in place before the block: what is not ours reaches it
    try:
        with failures.writer_errors_logged():
            full = ValueError("RESOURCE_EXHAUSTED: Error writing ... No space left on device [os_error_code='28']")
            orbax_logs(full, "[thread=array_type_handler] raised an exception")
            orbax_logs(full, "[thread=MainThread][wait_until_finished] Save Finalize thread failed.")  # said once
            loop = asyncio.new_event_loop()
            loop.close()

            class LateWrite:  # TensorStore's callback into the closed loop, in a thread of its own
                def __del__(self):
                    loop.call_soon_threadsafe(print)

            class Other:
                def __del__(self):
                    raise KeyError("not a write's")

            for make in (LateWrite, LateWrite, Other):
                thread = threading.Thread(target=make)
                thread.start()
                thread.join()
        assert sys.unraisablehook is before
    finally:
        sys.unraisablehook = hook
    err = capsys.readouterr().err
    assert "WARNING Orbax reported an error: ValueError: RESOURCE_EXHAUSTED" in err
    assert len(err.strip().splitlines()) == 1, err  # that one line: no tracebacks
    text = (tmp_path / "log.txt").read_text()
    assert text.count("Orbax's error: [thread=array_type_handler]") == 1 and "Save Finalize" not in text
    assert text.count("could not report back") == 1 and "RuntimeError: Event loop is closed" in text
    assert [type(u.exc_value) for u in seen] == [KeyError]
    # Without a log file (the processes other than 0) Orbax's own record stays: its traceback has nowhere else to go.
    record = absl.makeRecord("absl", logging.ERROR, "/orbax/x.py", 1, "failed", (), (ValueError, full, None))
    assert not failures._orbax_error(set(), record)
    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [])
    assert failures._orbax_error(set(), record)


def test_a_log_file_that_cannot_be_written_is_said_once_not_with_a_traceback_per_line(capsys, monkeypatch):
    from jaxgen.training import workdir

    logger = logging.getLogger("jaxgen")
    handler = workdir.LogFile("/dev/full")  # every write fails: No space left on device
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)  # as launch.py sets it (runtime.console_logging)
    try:
        for i in range(3):
            logger.info("line %d", i)
    finally:
        with contextlib.suppress(OSError):
            handler.close()
    err = capsys.readouterr().err
    assert err.count("The log file /dev/full cannot be written (No space left on device)") == 1
    assert "Logging error" not in err and "Traceback" not in err


def test_a_checkpoint_save_that_failed_stops_the_run_at_the_next_train_record(smoke_config, tmp_path, monkeypatch,
                                                                              capfd):
    """Orbax raises an asynchronous save's error only at the next save, checkpoint.every steps later: the loop asks
    at every train record (checkpoint.check_saves) and stops there, the checkpoints written whole kept. The save of
    step 10 fails in Orbax's own thread that finishes it (as a full disk fails it); the test waits for that thread
    before the next record, so that the record finds the save ended. Called as a notebook calls it (no launch.py),
    Orbax's error records with their tracebacks become jaxgen's one warning line too."""
    import errno

    import orbax.checkpoint as ocp

    from jaxgen.training import checkpoint

    finalize = ocp.CheckpointManager._finalize_checkpoint

    def failing(self, step):
        if step == 10 and "best" not in str(self.directory):
            raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "10"))
        return finalize(self, step)

    save = checkpoint.save

    def save_then_wait(mgr, state):
        started = save(mgr, state)
        while mgr.is_saving_in_progress():
            time.sleep(0.01)
        return started

    monkeypatch.setattr(ocp.CheckpointManager, "_finalize_checkpoint", failing)
    monkeypatch.setattr(checkpoint, "save", save_then_wait)
    c = smoke_config
    c.train.steps, c.train.log_every, c.checkpoint.every, c.eval.every = 40, 5, 10, 0
    with pytest.raises(OSError, match="No space left on device"):
        loop.train_and_evaluate(c, tmp_path)
    steps = [r["step"] for r in read(tmp_path / "metrics.jsonl") if r["split"] == "train"]
    assert steps == [5, 10, 15], steps  # stopped at the record after the save, not at step 20's save
    err = capfd.readouterr().err
    assert err.count("WARNING Orbax reported an error: OSError: [Errno 28]") == 1, err
    assert "Traceback" not in err, err  # Orbax's own records, with theirs, did not get through


def test_an_error_that_cannot_be_logged_on_a_full_disk_is_not_said_to_be_in_the_log(monkeypatch, capsys):
    """log_fatal on a log file whose disk is full (/dev/full): no logging traceback on stderr, and no log file
    named in the FATAL line."""
    import logging

    from jaxgen.training import workdir

    handler = logging.FileHandler("/dev/full")
    monkeypatch.setattr(logging.getLogger("jaxgen"), "handlers", [handler])
    try:
        assert workdir.log_fatal(ValueError("a bad value")) is None
    finally:
        with contextlib.suppress(OSError):  # its buffer still holds the line (logging.shutdown ignores this too)
            handler.close()
    assert "Logging error" not in capsys.readouterr().err and "handleError" not in vars(handler)


def test_an_accelerator_out_of_memory_names_the_sizes_to_lower_with_their_values():
    """XLA's allocation failures on GPUs and TPUs (as jax raises them, text only) become one FATAL line naming the
    config's sizes; other RESOURCE_EXHAUSTED errors (a full disk) and other errors are not taken for them."""
    from jaxgen.training import failures

    c = config_module(ROOT / "configs" / "gan_celeba.py").get_config()
    for xla in ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 4770354232 bytes.\nBufferAssignment "
                "OOM Debugging.\nBufferAssignment stats:",
                "RESOURCE_EXHAUSTED: Failed to allocate request for 176.00MiB (184549376B) on device ordinal 0"):
        oom = failures.out_of_memory(RuntimeError(xla), c)
        assert oom.startswith(f"The accelerator ran out of memory ({xla.splitlines()[0]}). Lower train.batch_size "
                              f"(now {c.train.batch_size}), eval.batch_size")
        assert "--config.model.dtype=bfloat16" in oom and "BufferAssignment" not in oom
        assert oom.endswith("run the same command with that change: it resumes from the newest checkpoint "
                            "written whole")
    xla = RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")
    oom = failures.out_of_memory(xla, c, "sample")  # a GAN's sampling: the EMA G's passes, not the train batch
    assert "Lower eval.batch_size (now" in oom and "train.batch_size (now 128: the passes that re-estimate" in oom
    v = config_module(ROOT / "configs" / "vae_mnist.py").get_config()
    oom = failures.out_of_memory(ValueError("x"), v, "eval") or failures.out_of_memory(xla, v, "eval")
    assert "eval.nll_chunk (now 50" in oom and "dtype" not in oom and "train." not in oom
    assert oom.endswith("run the same command with that change again")
    assert failures.out_of_memory(ValueError('RESOURCE_EXHAUSTED: Failed writing: "/a": No space left on device'),
                                  v) is None
    assert failures.out_of_memory(ValueError("out of memory"), v) is None


def test_a_line_appended_after_a_torn_one_starts_a_line_of_its_own(tmp_path):
    """metrics.jsonl and config_history.jsonl after a kill or a full disk tore their last line: the next record is
    not glued to it (config_history.jsonl was appended without this before)."""
    from jaxgen import atomic

    path = tmp_path / "config_history.jsonl"
    path.write_text('{"a": 1}\n{"b": ')
    atomic.append_line(path, '{"c": 3}')
    atomic.append_line(path, '{"d": 4}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"b": ', '{"c": 3}', '{"d": 4}']
    atomic.append_line(tmp_path / "new.jsonl", "x")
    assert (tmp_path / "new.jsonl").read_text() == "x\n"


def test_a_workdir_holding_only_the_log_the_lock_and_empty_folders_is_removed(tmp_path):
    """An error after the checkpoint manager made its (empty) folder, in the evaluator's set-up say, still leaves no
    stray workdir; one with anything else in it stays whole."""
    from jaxgen.training import workdir

    for extra in (None, "checkpoints/1/state"):
        top = tmp_path / ("kept" if extra else "removed")
        wd = top / "run"
        (wd / "checkpoints").mkdir(parents=True)
        (wd / "log.txt").write_text("log")
        (wd / "train.lock").write_text("")
        if extra:
            (wd / extra).parent.mkdir(parents=True)
            (wd / extra).write_text("x")
        workdir.remove_if_unused(wd, top)
        assert top.exists() == bool(extra) and (not extra or (wd / extra).is_file())


def test_a_run_that_raised_in_python_writes_its_error_to_its_log_and_detaches_it(tmp_path, one_device):
    """Called from Python (a notebook), a run that stops on an error writes it with its traceback to its log.txt,
    once, and detaches the file, as a finished run does: what the process logs next is not the run's. (launch.py
    keeps the file attached and writes the error itself: test_an_error_jaxgen_raises_is_one_message...)"""
    from jaxgen.training import workdir

    c = config_module(ROOT / "configs" / "gan_mnist.py").get_config("smoke")
    c.loss.name = "hinje"
    tmp_path.mkdir(exist_ok=True)  # a workdir that existed keeps its log (a new one would be removed again)
    with pytest.raises(ValueError, match="unknown GAN loss 'hinje'"):
        loop.train_and_evaluate(c, tmp_path)
    assert not [h for h in logging.getLogger("jaxgen").handlers if isinstance(h, logging.FileHandler)]
    logging.getLogger("jaxgen").warning("a later cell's line")
    logged = (tmp_path / "log.txt").read_text()
    assert logged.count("ERROR The run stopped: UnknownNameError: unknown GAN loss 'hinje'") == 1, logged
    assert "Traceback" in logged and "a later cell's line" not in logged
    assert workdir.log_fatal(ValueError("after the run")) is None  # nothing attached to write it to


def test_a_call_that_fails_beside_a_live_runs_log_leaves_that_log_alone(tmp_path):
    """A run of this process that is still going (a training run in a thread, its log file attached) keeps its file,
    and gets no line about it, when another call fails beside it: --mode=sample of a workdir without checkpoints,
    and a training run refused the live run's workdir."""
    from jaxgen.training import modes, workdir

    c = config_module(ROOT / "configs" / "gan_mnist.py").get_config("smoke")
    live, other = tmp_path / "live", tmp_path / "other"
    live.mkdir()
    other.mkdir()
    logger = logging.getLogger("jaxgen")
    with workdir.training_lock(live, "training run"):
        workdir.setup_logging(live)
        try:
            attached = [h for h in logger.handlers if isinstance(h, workdir.LogFile)]
            with pytest.raises(FileNotFoundError, match="--mode=sample: no readable checkpoint"):
                modes.sample_checkpoint(c, other)
            with pytest.raises(workdir.WorkdirError, match="is in use"):
                loop.train_and_evaluate(c, live)
            logger.warning("the live run's own line")
            assert [h for h in logger.handlers if isinstance(h, workdir.LogFile)] == attached
        finally:
            workdir.close_log_file()
    text = (live / "log.txt").read_text()
    assert "The run stopped" not in text and "the live run's own line" in text
