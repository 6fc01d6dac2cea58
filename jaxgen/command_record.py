"""The training command a workdir records, and its replay: a training run of launch.py writes its --config (the
file's absolute path, with variants) and overrides to <workdir>/command.json (`launch_command`, written by
jaxgen.training.run_record.save_command); a later command on that workdir without --config takes them, its own
overrides on top (`config_of_workdir`, before absl parses the flags). Light to import: no JAX."""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
from pathlib import Path

from absl import flags

log = logging.getLogger("jaxgen")

COMMAND_FILE = "command.json"  # in the workdir: the config and overrides of its last training command


class NoConfigError(ValueError):
    """A command without --config whose workdir cannot give one: no record there (or no workdir), or a record
    that cannot be read or names a config file that is gone. launch.py says it as one FATAL line."""


_replayed: list[str] = []  # the record this process's --config and overrides came from (set once, by the replay)


def replayed() -> str | None:
    """The command.json this process's --config and overrides came from (`config_of_workdir`), or None: given on
    the command line (or no launch.py at all). Messages about the config's drift from training say which."""
    return _replayed[-1] if _replayed else None


def config_of_workdir(FLAGS: flags.FlagValues, argv: list[str]) -> list[str]:  # noqa: N803
    """`argv`, or, when it has no --config but a --workdir whose last training run recorded its command (COMMAND_FILE,
    written by `launch_command`'s record), that run's --config and overrides followed by `argv`'s flags (so that
    an override given here wins). sys.argv becomes the same list: ml_collections reads the overrides from it."""
    expanded, flags_given = _expand(FLAGS, argv)
    if any(re.match(r"--?config(=|$)", a) for a in flags_given):
        return argv
    workdir = _flag_value(flags_given, "workdir")
    path = os.path.join(os.path.expanduser(workdir), COMMAND_FILE) if workdir else None  # no shell expands '~/'
    if path is None or not os.path.isfile(path):  # after '=': "--workdir=~/runs/x"
        if any(re.match(r"--?(no)?config\.", a) for a in flags_given):  # absl would call the override unknown
            raise NoConfigError(f"--config is required: {why_no_config(workdir)}{distributed_hint(flags_given)}")
        return argv  # absl says that --workdir is required, or parse_flags why --config is (`why_no_config`)
    try:
        record = json.loads(Path(path).read_text())
        config, overrides = record["config"], record["overrides"]
        if not isinstance(config, str) or not isinstance(overrides, list):
            raise TypeError("'config' must be a string and 'overrides' a list")
        if bad := [o for o in overrides if not (isinstance(o, str) and re.match(r"--config\.[^=]+=", o))]:
            raise ValueError(f"overrides {bad} are not of the form --config.<field>=<value>")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise NoConfigError(f"no --config, and {path}, which records the config of the workdir's last training "
                            f"command, cannot be read ({type(e).__name__}: {e}): give --config and the overrides "
                            f"that trained the run{distributed_hint(flags_given)}") from None
    file = config.split(":", 1)[0]
    if not os.path.isfile(file):
        raise NoConfigError(f"no --config, and the config file that trained {workdir} is not at {file} any more "
                            f"({path} records it): give --config=<that file>[:variant] and the overrides it lists"
                            f"{distributed_hint(flags_given)}")
    # An override this command gives replaces the recorded one of its field (and of the fields inside it): absl
    # would take the later value, but a tuple field's values would be joined, (16, 48) and (8, 16) into 4 widths.
    given = [m.group(2) for a in flags_given if (m := re.match(r"--?(no)?config\.([^=]+)", a))]
    overrides = [o for o in overrides if not any((o.split("=", 1)[0][len("--config."):] + ".").startswith(g + ".")
                                                 for g in given)]
    new = [argv[0], f"--config={config}", *overrides, *expanded[1:]]
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
    trained_with = record.get("pythonpath")
    if trained_with and trained_with != os.environ.get("PYTHONPATH", ""):
        log.info("The training command ran with PYTHONPATH=%s (this one: %r): a model, likelihood, optimizer or "
                 "extractor of yours is imported from it", trained_with, os.environ.get("PYTHONPATH", ""))
    sys.argv[:] = new
    _replayed.append(path)
    return new


def _expand(FLAGS: flags.FlagValues, argv: list[str]) -> tuple[list[str], list[str]]:  # noqa: N803
    """(argv with a --flagfile's flags read in, the flags among them: after the program, before any '--')."""
    expanded = FLAGS.read_flags_from_files(argv, force_gnu=False)
    return expanded, expanded[1:expanded.index("--")] if "--" in expanded else expanded[1:]


def distributed(args: list[str]) -> bool:
    """Whether the command line `args` asks for a multi-process job (--jax_distributed)."""
    return any(re.fullmatch(r"--?jax_distributed(=(true|True|1))?", a) for a in args)


def distributed_hint(args: list[str]) -> str:
    """For a --config-less command of a multi-process job (--jax_distributed) that cannot take its config: every
    process reads the record itself, so the workdir must be one folder every host sees."""
    if not distributed(args):
        return ""
    return ("; with --jax_distributed every process reads the workdir's command.json itself: give --workdir a folder "
            "every host shares")


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


def why_no_config(workdir: str | None) -> str:
    """Why a command without --config has none: no workdir, or one without a record of a training command."""
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
    `config_of_workdir`), each as `--config.<field>=<value as given>`, once per field, in the order ml_collections
    applies them: what a training run records in <workdir>/command.json for a later command without --config."""
    _, args = _expand(FLAGS, argv)
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
            "command": shlex.join(["python", *argv]), "cwd": os.getcwd(),
            "pythonpath": os.environ.get("PYTHONPATH", "")}
