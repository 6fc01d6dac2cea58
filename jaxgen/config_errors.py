"""A config's mistakes as one-line messages for launch.py's FATAL line (jaxgen/cli.py): a field an override
sets, a config file sets or reads, or a user's function reads, that its block lacks; a block given a value.
ml_collections raises a bare AttributeError or KeyError for these, with a "Did you mean" only for near-typos; these
name the file and line or the override, and the block's fields."""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Callable

import ml_collections

from jaxgen.config_check import USER_BLOCKS


def unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
    """The error for a dotted field `path` (e.g. 'train.steps') that `config` lacks, listing the fields of the
    block it names; None if the field exists."""
    node, seen = config, []
    for name in path.split("."):
        block = ".".join(seen) or "the config"
        if not isinstance(node, ml_collections.ConfigDict):
            return f"unknown config field {path!r}: {block} is a value, not a block of fields"
        if name not in node:
            own = (f"; a field of your own (read by your function through `cfg`) is added to {block} in a config "
                   f"file that extends this one (README: Objectives)" if block in USER_BLOCKS else "")
            whole = name.split("[")[0]
            if "[" in name and isinstance(node.get(whole), tuple | list):  # --config.model.channels[0]=16
                field = ".".join([*seen, whole])
                return (f"config field {field} is set whole, not one element: e.g. --config.{field}="
                        f"'{tuple(node[whole])!r}'")
            near = difflib.get_close_matches(name, list(node.keys()), n=1)
            if near:  # the whole path when it exists under the nearest name (g_optim.lr on a VAE: optim.lr)
                rest = path.split(".")[len(seen) + 1:]
                whole_path = ".".join([*seen, near[0], *rest])
                exists = rest and unknown_field(config, whole_path) is None
                near = [whole_path if exists else ".".join([*seen, near[0]])]
            notes = " ".join(([f"did you mean {near[0]!r}?"] if near else []) + _other_tasks(config, path))
            return (f"unknown config field {path!r}{f' ({notes})' if notes else ''}; fields of {block}: "
                    f"{', '.join(sorted(node.keys()))}{own}")
        node = node[name]
        seen.append(name)
    return None


def _other_tasks(config: ml_collections.ConfigDict, path: str) -> list[str]:
    """['It is a field of GAN configs; this config's task is vae.'] when `path` is a field of the other task's
    base config (`optim.lr` on a GAN config, whose optimizers are g_optim and d_optim), else []."""
    from jaxgen import config as config_lib  # noqa: PLC0415

    task = config.get("task")
    if task not in ("vae", "gan"):
        return []
    node = config_lib.gan_config() if task == "vae" else config_lib.vae_config()
    for name in path.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or name not in node:
            return []
        node = node[name]
    return [f"It is a field of {'GAN' if task == 'vae' else 'VAE'} configs; this config's task is {task}."]


def _missing_read(error: BaseException) -> tuple[str, list[str]] | None:
    """(name, the block's fields) when `error` is ml_collections' AttributeError or KeyError for reading a field
    a ConfigDict lacks (`c.optimizer.lr`, `c.train.step` in a config file); None for any other error."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None or not isinstance(error, (AttributeError, KeyError)):
        return None
    block = tb.tb_frame.f_locals.get("self")
    name = tb.tb_frame.f_locals.get("attribute", tb.tb_frame.f_locals.get("key"))
    if not isinstance(block, ml_collections.ConfigDict) or not isinstance(name, str) or name in block:
        return None
    return name, sorted(block.keys())


def config_file_error(error: BaseException) -> str | None:
    """A one-line message for a config file (or variant) that sets or reads a field its config lacks, from
    ml_collections' AttributeError (locked config) or KeyError: the file and line, the field, its block's fields.
    None for any other error."""
    import traceback  # noqa: PLC0415

    m = re.search(r'Key "([^"]+)" does not exist and cannot be added since the config is locked', str(error))
    read = None if m else _missing_read(error)
    if m is None and read is None:
        return None
    callers = {os.path.abspath(sys.argv[0]), os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli.py")}
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not _library_frame(f.filename)
              and os.path.abspath(f.filename) not in callers]  # the config file's frames, not launch.py's or cli's
    if read and not frames:  # read by absl applying a --config.<field> override: unknown_override says it better
        return None
    where = f"{frames[-1].filename}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" if frames else "the config"
    if m:
        name, verb = m.group(1), "there"
        fields = re.findall(r"\\?'(\w+)\\?': ", str(error).split("Other fields present:", 1)[-1])
    else:
        (name, fields), verb = read, "to read there"
    hint = re.search(r'Did you mean "(\w+)"', str(error))
    return (f"{where}: the config has no field {name!r} {verb}"
            + (f" (did you mean {hint.group(1)!r}?)" if hint else "")
            + (f"; the fields of that block: {', '.join(sorted(fields))}" if fields else "")
            + ("; a field of your own is set inside `with c.<block>.unlocked():` (README: Objectives)" if m else ""))


def missing_get_config(error: BaseException) -> str | None:
    """A one-line message for a --config file without the `get_config` function ml_collections calls; None for any
    other error."""
    # ml_collections loads the --config file as the module 'config_config' (the flag's name + '_config'); another
    # module's missing get_config (a helper of the user's file) keeps its traceback.
    if not isinstance(error, AttributeError) or str(error) != "module 'config_config' has no attribute 'get_config'":
        return None
    return ("the --config file has no function get_config(variant='') that returns the config (README: Objectives "
            "shows a config file of your own that extends a shipped one)")


def _library_frame(filename: str) -> bool:
    """Whether a traceback frame is an installed library's (ml_collections, absl, JAX ...), not the user's code."""
    path = os.path.abspath(filename)
    return ("site-packages" in path or "dist-packages" in path
            or path.startswith(os.path.dirname(os.path.abspath(ml_collections.__file__))))


def field_read_error(error: BaseException) -> str | None:
    """A one-line message for a function (a user's loss, objective, model ...) that read a config field its block
    lacks, from ml_collections' AttributeError or KeyError: where, the field, the block's fields, how to add it.
    None for any other error."""
    import traceback  # noqa: PLC0415

    read = _missing_read(error)
    if read is None:
        return None
    name, fields = read
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not _library_frame(f.filename)]
    where = f"{frames[-1].filename}:{frames[-1].lineno} ({(frames[-1].line or '').strip()})" if frames else "a function"
    return (f"{where} reads the config field {name!r}, which its block lacks (its fields: {', '.join(fields)}); a "
            f"field of your own is added to the block in a config file that extends a shipped one, which "
            f"--config.<block>.{name}=... can then set (README: Objectives)")


def unknown_override(argv: list[str], load: Callable[[str], ml_collections.ConfigDict]) -> str | None:
    """The error for the first `--config.<field>` override in the command line `argv` that the config lacks, else
    None. `load(spec)` loads the config named by `--config=FILE[:variant]` (absl's config flag parser)."""
    config = _config_of(argv, load)
    if config is None:
        return None
    for arg in argv:
        if m := re.match(r"^--?(?:no)?config\.([^=]+)", arg):
            if message := unknown_field(config, m.group(1)):
                return message
    return None


def block_given_a_value(argv: list[str], load: Callable[[str], ml_collections.ConfigDict], path: str,
                        value: str) -> str:
    """The error for `--config.<path>=<value>` where `path` names a block of fields (`--config.loss=hinge`)."""
    config = _config_of(argv, load)
    node = config
    for name in path.split(".") if config is not None else ():
        node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
    hint = (f"e.g. --config.{path}.name={value}" if "name" in fields else
            f"its fields: {', '.join(fields)}" if fields else "e.g. --config.<block>.<field>=value")
    return f"--config.{path} is a block of fields, not a value: set one of its fields ({hint})"


def _config_of(argv: list[str], load: Callable[[str], ml_collections.ConfigDict]) -> ml_collections.ConfigDict | None:
    """The config `--config=FILE[:variant]` in `argv` names, loaded by `load` (absl's config flag parser); None
    when it fails to load (absl's own error says more)."""
    spec = ""  # the value of --config=FILE[:variant] or --config FILE[:variant]
    for i, arg in enumerate(argv):
        if re.match(r"^--?config(=|$)", arg):
            spec = arg.split("=", 1)[1] if "=" in arg else " ".join(argv[i + 1:i + 2])
    try:
        return load(spec)
    except Exception:  # noqa: BLE001
        return None
