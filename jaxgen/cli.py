"""What launch.py runs: its flags parsed, with a config's mistakes as one FATAL line (`parse_flags`), then the
mode's run, with the errors jaxgen raises for the user as one FATAL line and their traceback in the workdir's log
(`run`). Light to import: JAX starts only in `run`, after jaxgen.runtime.setup."""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import sys

from absl import app, flags

from jaxgen import command_record


def parse_flags(FLAGS: flags.FlagValues, argv: list[str]) -> list[str]:  # noqa: N803 (launch.py's FLAGS)
    """absl's flag parsing, with the config loaded at once and its mistakes as one FATAL line: a check jaxgen's
    config code makes (an unknown variant), a --config path that does not exist, a field the config file reads or
    sets, or an override sets, that the config lacks (ml_collections raises a bare AttributeError or KeyError, with
    a "Did you mean" only for near-typos; here the file's line or the override's block and its fields are named).

    A process of a --jax_distributed job that stops here joins the job first and fails its first collective
    (`FLAGS_AGREED`), so that the other processes stop at once too, instead of waiting for it at jax.distributed's
    start until that times out (5 minutes): a workdir one host does not share, a config file missing there."""
    try:
        return _parse_flags(FLAGS, argv)
    except SystemExit as e:
        if e.code and command_record.distributed(argv[1:]):
            _fail_the_job()
        raise


def check_flagfiles(FLAGS: flags.FlagValues, argv: list[str]) -> None:  # noqa: N803 (launch.py's FLAGS)
    """A --flagfile that cannot be read (a wrong path, or one a flagfile names) as one FATAL line, before launch.py
    defines its --config flag: ml_collections reads the flagfiles then, and absl's error would be a traceback."""
    try:
        FLAGS.read_flags_from_files(argv, force_gnu=False)
    except flags.Error as e:  # a flagfile that cannot be read, or a --flagfile without a value
        detail = str(e).removeprefix("ERROR:: ")
        cause = e.__cause__ or e.__context__
        if isinstance(cause, FileNotFoundError) and not os.path.isabs(str(cause.filename)):
            detail += f" (relative to the current directory, {os.getcwd()})"
        sys.stderr.write(f"FATAL Flags parsing error: {detail}\n")
        if command_record.distributed(argv[1:]):
            _fail_the_job()
        sys.exit(1)


FLAGS_AGREED = "whether every process parsed its flags"  # the first collective of a --jax_distributed run


def _fail_the_job() -> None:
    """Joins the jax.distributed job and fails its first collective (`FLAGS_AGREED`), then ends this process."""
    try:
        from jaxgen import parallel, runtime  # noqa: PLC0415

        runtime.setup(distributed=True)
        parallel.check_same_on_every_process(FLAGS_AGREED, [0], "")
    except Exception:  # noqa: BLE001 (the disagreement itself, or no job to join: this process stops either way)
        pass
    exit_failed(1)


def _parse_flags(FLAGS: flags.FlagValues, argv: list[str]) -> list[str]:  # noqa: N803
    try:
        argv = command_record.config_of_workdir(FLAGS, argv)
        rest = FLAGS(argv)
        if FLAGS.config is None:
            why = command_record.why_no_config(FLAGS.workdir) + command_record.distributed_hint(
                ["--jax_distributed"] if FLAGS.jax_distributed else [])
            sys.stderr.write(f"FATAL Flags parsing error: --config is required: {why}\n")
            sys.exit(1)
        try:
            _ = FLAGS.config.task  # ml_collections loads the file lazily: now, before any work, with a clear error
        except AttributeError:
            import ml_collections  # noqa: PLC0415 (loaded by the config flag already)

            if isinstance(FLAGS.config, ml_collections.ConfigDict):
                raise
            sys.stderr.write(f"FATAL Flags parsing error: the --config file's get_config returned a "
                             f"{type(FLAGS.config).__name__}, not an ml_collections.ConfigDict: return a shipped "
                             f"config, extended (README: Objectives shows one)\n")
            sys.exit(1)
        return rest
    except command_record.NoConfigError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\n")
        sys.exit(1)
    except flags.Error as e:  # as app.parse_flags_with_usage, but a check jaxgen's config code made is one line
        from jaxgen.training import workdir  # noqa: PLC0415

        cause = e.__cause__ or e.__context__
        while cause is not None and not (isinstance(cause, ValueError) and workdir.raised_on_purpose(cause)):
            cause = cause.__cause__ or cause.__context__
        block = re.search(r"flag --config\.([\w.]+)=(.*?): Failed to parse .* as a ConfigDict", str(e))
        if cause is None and block:  # --config.loss=hinge: a block given a value
            from jaxgen import config_errors  # noqa: PLC0415

            message = config_errors.block_given_a_value(argv[1:], FLAGS["config"].parser.parse, *block.groups())
            sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
            sys.exit(1)
        if cause is None and (message := _value_of_another_type(str(e))):  # --config.train.steps=1e3
            sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
            sys.exit(1)
        sys.stderr.write(f"FATAL Flags parsing error: {cause}\n" if cause is not None else
                         f"FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see help on flags.\n")
        sys.exit(1)
    except OSError as e:  # the file could not be read (a wrong path)
        inner = e
        while (inner.__cause__ or inner.__context__) is not None:
            inner = inner.__cause__ or inner.__context__
        detail = " ".join(line.strip() for line in str(inner).splitlines() if line.strip())
        sys.stderr.write(f"FATAL Flags parsing error: cannot load the --config file ({detail}); paths are relative "
                         f"to the current directory\n")
        sys.exit(1)
    except (AttributeError, KeyError, ValueError, IndexError):  # ValueError, IndexError: a malformed field name in
        from jaxgen import config_errors  # noqa: PLC0415 (an override: --config.train.batch-size=64)

        error = sys.exc_info()[1]
        message = (config_errors.config_file_error(error) or config_errors.missing_get_config(error)
                   or config_errors.unknown_override(argv[1:], FLAGS["config"].parser.parse))
        if message is None:
            raise
        sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
        sys.exit(1)


def _value_of_another_type(error: str) -> str | None:
    """absl's error for an override whose value does not parse as the field's type, as one line that says what
    to write: `flag --config.train.steps=1e3: invalid literal for int() with base 10: '1e3'` (researchers write
    step counts so), a float given 'None', a bool given 'no'. None for any other error."""
    m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", error, re.DOTALL)
    if m is None:
        return None
    field, value, why = m.groups()
    if why.startswith("invalid literal for int()"):
        try:
            number = float(value.replace("_", ""))
        except ValueError:
            number = None
        example = (f"--config.{field}={int(number)}" if number is not None and number.is_integer()
                   else f"--config.{field}=1000")
        return f"config field {field} is an integer, got {value!r}: write it as one, e.g. {example}"
    if why.startswith("could not convert string to float"):
        return f"config field {field} is a number, got {value!r}: write it as one, e.g. --config.{field}=3e-4"
    if "Non-boolean argument to boolean flag" in why:
        return (f"config field {field} is true or false, got {value!r}: write --config.{field}=true or "
                f"--config.{field}=false (or 1 or 0)")
    return None


def exit_now(status: int) -> None:
    """Ends a run stopped at once by a signal with `status`. One process: after flushing the output and the log
    files, without the interpreter's shutdown. A signal that lands while XLA compiles raises out of the compile
    call with XLA's compiler threads still at work, and the interpreter's shutdown then crashed under them
    (segmentation fault, status 139 instead of 143, in 2 of 2 SIGTERMs 4 s after the start). The loop's cleanup
    (checkpoint saves waited for, files closed) ran as the exception unwound. Several processes: sys.exit, so JAX's
    distributed shutdown runs."""
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415

    import jax  # noqa: PLC0415

    if jax.distributed.is_initialized():  # asks without starting a backend (a signal may land before one started)
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def exit_failed(status: int = 1) -> None:
    """Ends a run that failed with `status`. With jax.distributed: without its shutdown, whose barrier
    waits 5 minutes for the other processes, which an error on this one alone (a file only process 0 writes) left
    waiting in their next collective; this process's exit ends them instead (its heartbeats stop; when it is
    process 0, the coordination service goes with it). Without jax.distributed: sys.exit."""
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415

    import jax  # noqa: PLC0415

    if not jax.distributed.is_initialized():  # asks without starting a backend
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(status)


def run(FLAGS: flags.FlagValues, argv: list[str]) -> None:  # noqa: N803 (launch.py's FLAGS)
    """launch.py's main: sets up the process (XLA flags, jax.distributed), then runs --mode (train, eval or sample)
    with the config, turning its errors into one FATAL line and an exit status."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from jaxgen import runtime  # noqa: PLC0415 (after flag parsing, before JAX starts)

    if not FLAGS["verbosity"].present:  # absl's app.run set the root logger to INFO: every library's INFO lines
        logging.getLogger().setLevel(logging.WARNING)  # (matplotlib's, TFDS's) on stderr; jaxgen's own are its own
    _warnings_to_the_log()
    runtime.setup(distributed=FLAGS.jax_distributed, deterministic=bool(FLAGS.config.get("deterministic", False)))
    from jaxgen.training import failures, loop, modes, workdir  # noqa: PLC0415

    if FLAGS.mode == "train":  # recorded for a later command without --config
        command = command_record.launch_command(FLAGS, sys.argv)
        run_mode = functools.partial(loop.train_and_evaluate, command=command)
    else:
        run_mode = {"eval": modes.evaluate_checkpoint, "sample": modes.sample_checkpoint}[FLAGS.mode]
    # While the mode runs and its error is reported; the error goes to the log file the run keeps attached.
    with failures.writer_errors_logged(), workdir.errors_written_by_launch():
        _run_mode(FLAGS, run_mode)


class _ToJaxgensLog(logging.Handler):
    """Hands a record to jaxgen's logger's handlers as they are now (the terminal, and the workdir's log file once
    it is set up)."""

    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("jaxgen").handle(record)


def _warnings_to_the_log() -> None:
    """Python warnings (a library's RuntimeWarning or DeprecationWarning) in jaxgen's format, on the terminal and in
    the workdir's log file, which a FATAL line points to; before, on the terminal only."""
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    if not any(isinstance(h, _ToJaxgensLog) for h in py_warnings.handlers):
        py_warnings.addHandler(_ToJaxgensLog())
    py_warnings.propagate = False


def _run_mode(FLAGS: flags.FlagValues, run) -> None:  # noqa: N803 (launch.py's FLAGS)
    """Runs the mode; every error it raises becomes one line and an exit status (its traceback in the log file)."""
    from jaxgen import parallel  # noqa: PLC0415
    from jaxgen.training import failures, loop, stopping, workdir  # noqa: PLC0415

    try:
        with stopping.sigterm_raises():
            if FLAGS.jax_distributed:  # a process that stopped on its flags fails this one (`parse_flags`)
                parallel.check_same_on_every_process(FLAGS_AGREED, [1], "The process(es) with 0 stopped on their "
                                                     "flags (a --config-less command on a workdir that host does not "
                                                     "share, say): their stderr says why")
            run(FLAGS.config, FLAGS.workdir)
    except loop.RunStopped as e:  # SIGTERM or Ctrl-C: checkpointed and logged; the status the signal would give
        sys.exit(128 + e.signum)
    except (stopping.Terminated, KeyboardInterrupt) as e:  # outside the loop, or a second Ctrl-C: stopped at once
        log_file = workdir.log_fatal(e)  # with the traceback: where it was
        if FLAGS.traceback:
            raise
        what = "SIGTERM" if isinstance(e, stopping.Terminated) else "Ctrl-C"
        if FLAGS.mode == "train":
            import jax  # noqa: PLC0415 (started by now)

            # One process: the loop's first signal checkpoints and stops (RunStopped); this is one outside the loop
            # or a second one. Several: the loop takes no Ctrl-C (one process cannot checkpoint alone).
            where = "" if jax.process_count() > 1 and what == "Ctrl-C" else (
                f" (outside the training loop, or {'pressed' if what == 'Ctrl-C' else 'sent'} twice)")
            message = (f"Stopped by {what} at once{where}: the checkpoints written so far stay, and the same command "
                       f"resumes from the newest")
        else:
            message = f"Stopped by {what} during --mode={FLAGS.mode}; the same command runs it again"
        sys.stderr.write(message + (f" (where it stopped: {log_file})" if log_file else "") + "\n")
        exit_now(128 + (stopping.Terminated.signum if what == "SIGTERM" else signal.SIGINT))
    except Exception as e:
        log_file = workdir.log_fatal(e)  # into log.txt too, not only on stderr
        from jaxgen import config_errors  # noqa: PLC0415

        # A function of the user's that read a field its config block lacks; a full disk or another refused write;
        # the accelerator's memory.
        refused = None if FLAGS.traceback else failures.write_failed(e, FLAGS.mode)
        known = None if FLAGS.traceback else (config_errors.field_read_error(e) or refused
                                              or failures.out_of_memory(e, FLAGS.config, FLAGS.mode))
        if known is not None:
            sys.stderr.write(f"FATAL {known}\n(its traceback: " + (f"{log_file}, or " if log_file else "")
                             + "rerun with --traceback)\n")
            if refused is not None:  # the FATAL line stays the last: Orbax's failed writes print hundreds of lines
                failures.quiet_stderr()  # of tracebacks while Python shuts down (their tasks are collected)
            exit_failed(1)
        if FLAGS.traceback or not workdir.raised_on_purpose(e):
            import traceback  # noqa: PLC0415

            import jax  # noqa: PLC0415

            if jax.distributed.is_initialized():
                traceback.print_exc()
                exit_failed(1)
            raise
        # Bad input, a NaN, a missing dataset ...: the message says what to do; the traceback would bury it.
        sys.stderr.write(f"FATAL {type(e).__name__}: {e}\n(its traceback: "
                         + (f"{log_file}, or " if log_file else "") + "rerun with --traceback)\n")
        exit_failed(1)
