"""What launch.py runs: its flags parsed, with a config's mistakes as one FATAL line (`parse_flags`), then the
mode's run, with the errors jaxgen raises for the user as one FATAL line and their traceback in the workdir's log
(`run`). Light to import: JAX starts only in `run`, after jaxgen.runtime.setup."""

from __future__ import annotations

import functools
import re
import signal
import sys

from absl import app, flags


def parse_flags(FLAGS: flags.FlagValues, argv: list[str]) -> list[str]:  # noqa: N803 (launch.py's FLAGS)
    """absl's flag parsing, with the config loaded at once and its mistakes as one FATAL line: a check jaxgen's
    config code makes (an unknown variant), a --config path that does not exist, a field the config file reads or
    sets, or an override sets, that the config lacks (ml_collections raises a bare AttributeError or KeyError, with
    a "Did you mean" only for near-typos; here the file's line or the override's block and its fields are named)."""
    try:
        argv = _config_of_workdir(FLAGS, argv)
        rest = FLAGS(argv)
        if FLAGS.config is None:
            sys.stderr.write(f"FATAL Flags parsing error: --config is required: {_why_no_config(FLAGS.workdir)}\n")
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


COMMAND_FILE = "command.json"  # in the workdir: the config and overrides of its last training command


def _config_of_workdir(FLAGS: flags.FlagValues, argv: list[str]) -> list[str]:  # noqa: N803
    """`argv`, or, when it has no --config but a --workdir whose last training run recorded its command (COMMAND_FILE,
    written by `launch_command`'s record), that run's --config and overrides followed by `argv`'s flags (so that
    an override given here wins). sys.argv becomes the same list: ml_collections reads the overrides from it."""
    expanded = FLAGS.read_flags_from_files(argv, force_gnu=False)  # a --flagfile's flags too
    flags_given = expanded[1:expanded.index("--")] if "--" in expanded else expanded[1:]
    if any(re.match(r"--?config(=|$)", a) for a in flags_given):
        return argv
    workdir = _flag_value(flags_given, "workdir")
    if not workdir:
        return argv  # absl then says that --workdir is required
    import json  # noqa: PLC0415
    import logging  # noqa: PLC0415
    import os  # noqa: PLC0415

    path = os.path.join(os.path.expanduser(workdir), COMMAND_FILE)  # "--workdir=~/runs/x": no shell expands it
    if not os.path.isfile(path):
        return argv  # parse_flags then says why --config is required (`_why_no_config`)
    try:
        record = json.loads(open(path).read())
        config, overrides = record["config"], record["overrides"]
        if not isinstance(config, str) or not isinstance(overrides, list):
            raise TypeError("'config' must be a string and 'overrides' a list")
        if bad := [o for o in overrides if not (isinstance(o, str) and re.match(r"--config\.[^=]+=", o))]:
            raise ValueError(f"overrides {bad} are not of the form --config.<field>=<value>")
    except (OSError, ValueError, KeyError, TypeError) as e:
        sys.stderr.write(f"FATAL Flags parsing error: no --config, and {path}, which records the config of the "
                         f"workdir's last training command, cannot be read ({type(e).__name__}: {e}): give --config "
                         f"and the overrides that trained the run\n")
        sys.exit(1)
    file = config.split(":", 1)[0]
    if not os.path.isfile(file):
        sys.stderr.write(f"FATAL Flags parsing error: no --config, and the config file that trained {workdir} is "
                         f"not at {file} any more ({path} records it): give --config=<that file>[:variant] and "
                         f"the overrides it lists\n")
        sys.exit(1)
    # An override this command gives replaces the recorded one of its field (and of the fields inside it): absl
    # would take the later value, but a tuple field's values would be joined, (16, 48) and (8, 16) into 4 widths.
    given = [m.group(2) for a in flags_given if (m := re.match(r"--?(no)?config\.([^=]+)", a))]
    overrides = [o for o in overrides if not any((o.split("=", 1)[0][len("--config."):] + ".").startswith(g + ".")
                                                 for g in given)]
    new = [argv[0], f"--config={config}", *overrides, *expanded[1:]]
    log = logging.getLogger("jaxgen")
    log.info("No --config: the config of the workdir's last training command, as %s records it (the file as it is "
             "now: edits to it since training apply): %s", path, " ".join([f"--config={config}", *overrides]))
    trained_in = record.get("cwd")
    if isinstance(trained_in, str) and os.path.realpath(trained_in) != os.path.realpath(os.getcwd()):
        log.info("The run trained in %s; this command runs in %s, from where relative paths and a PYTHONPATH of "
                 "'.' are read", trained_in, os.getcwd())
        relative = [o for o in overrides if _relative_path(*o[len("--config."):].split("=", 1))]
        if relative:
            log.warning("%s: relative to %s, where the run trained; here they may name other files or none: run "
                        "this command there, or give them again as absolute paths", ", ".join(relative), trained_in)
    sys.argv[:] = new
    return new


def _relative_path(field: str, value: str) -> bool:
    """Whether an override's value looks like a relative path: it holds a '/', or its field names a file or folder
    (`data.path`, `data.data_dir`, `eval.inception_weights`)."""
    if not value or value.startswith(("/", "~", "gs:", "s3:")):
        return False
    return "/" in value or field.rsplit(".", 1)[-1].endswith(("path", "dir", "weights"))


def _flag_value(args: list[str], name: str) -> str | None:
    """The value of --`name` in `args` (`--name=value` or `--name value`; the last one given), else None."""
    value = None
    for i, a in enumerate(args):
        if re.match(rf"--?{name}=", a):
            value = a.split("=", 1)[1]
        elif re.fullmatch(rf"--?{name}", a) and i + 1 < len(args):
            value = args[i + 1]
    return value


def _why_no_config(workdir: str | None) -> str:
    """Why a command without --config has none: no workdir, or one without a record of a training command."""
    import os  # noqa: PLC0415

    if not workdir:
        return "give --config=configs/<file>.py[:variant]"
    if not os.path.isdir(os.path.expanduser(workdir)):
        return (f"the workdir {workdir} does not exist (check the path); a new run needs --config=configs/<file>.py"
                f"[:variant], a command without it takes the config of a workdir's last training command")
    return (f"give --config=configs/<file>.py[:variant] (a command without it takes the config and overrides of "
            f"the workdir's last training command, which {workdir} has no record of: no {COMMAND_FILE} there; a "
            f"run trained from Python, or before jaxgen recorded commands, needs its training config given)")


def launch_command(FLAGS: flags.FlagValues, argv: list[str]) -> dict:  # noqa: N803
    """The --config (its file as an absolute path) and the overrides of the command `argv` (sys.argv, after
    `_config_of_workdir`), each as `--config.<field>=<value as given>`, once per field, in the order ml_collections
    applies them: what a training run records in <workdir>/command.json for a later command without --config."""
    import os  # noqa: PLC0415
    import shlex  # noqa: PLC0415

    expanded = FLAGS.read_flags_from_files(argv, force_gnu=False)
    args = expanded[1:expanded.index("--")] if "--" in expanded else expanded[1:]
    config = _flag_value(args, "config")
    file, colon, variant = config.partition(":")
    overrides: dict[str, str] = {}
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
            continue
        m = re.match(r"--?(no)?config\.([^=]+)(=(.*))?$", a, re.DOTALL)  # a field may be indexed: list[0]
        if m is None:
            continue
        no, field, has_value, value = m.groups()
        flag = FLAGS[f"config.{field}"] if f"config.{field}" in FLAGS else None
        if not has_value:
            if flag is None or flag.boolean:
                value = "false" if no else "true"
            else:
                value, skip = args[i + 1], True
        if isinstance(flag, flags.MultiFlag):  # a tuple: given twice, absl joins the values
            value = repr(tuple(FLAGS["config"].override_values[field]))
        overrides.pop(field, None)  # the last one given wins, at its place
        overrides[field] = value
    return {"config": os.path.abspath(file) + colon + variant,
            "overrides": [f"--config.{f}={v}" for f, v in overrides.items()],
            "command": shlex.join(["python", *argv]), "cwd": os.getcwd()}


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

    runtime.setup(distributed=FLAGS.jax_distributed, deterministic=bool(FLAGS.config.get("deterministic", False)))
    from jaxgen.training import failures, loop, modes  # noqa: PLC0415

    if FLAGS.mode == "train":  # recorded for a later command without --config
        run_mode = functools.partial(loop.train_and_evaluate, command=launch_command(FLAGS, sys.argv))
    else:
        run_mode = {"eval": modes.evaluate_checkpoint, "sample": modes.sample_checkpoint}[FLAGS.mode]
    with failures.writer_errors_logged():  # while the mode runs and its error is reported
        _run_mode(FLAGS, run_mode)


def _run_mode(FLAGS: flags.FlagValues, run) -> None:  # noqa: N803 (launch.py's FLAGS)
    """Runs the mode; every error it raises becomes one line and an exit status (its traceback in the log file)."""
    from jaxgen.training import failures, loop, stopping, workdir  # noqa: PLC0415

    try:
        with stopping.sigterm_raises():
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

        # A function of the user's that read a field its config block lacks; a full disk; the accelerator's memory.
        full = None if FLAGS.traceback else failures.disk_full(e, FLAGS.mode)
        known = None if FLAGS.traceback else (config_errors.field_read_error(e) or full
                                              or failures.out_of_memory(e, FLAGS.config, FLAGS.mode))
        if known is not None:
            sys.stderr.write(f"FATAL {known}\n(its traceback: " + (f"{log_file}, or " if log_file else "")
                             + "rerun with --traceback)\n")
            if full is not None:  # the FATAL line stays the last: Orbax's failed writes print hundreds of lines
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
