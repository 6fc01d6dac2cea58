"""Name -> object lookup: one explicit table per kind, or a user's own object as `package.module:attribute`."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
from collections.abc import Callable, Mapping
from typing import Any


class UnknownNameError(ValueError):
    """A name that is neither in a built-in table nor an importable `package.module:attribute`."""


def resolve(kind: str, name: str, table: Mapping[str, Any]) -> Any:
    """Returns `table[name]`, or the attribute named by `package.module:attribute`.

    Args:
      kind: what is looked up, for the error message ("dataset", "model", "objective" ...).
      name: a key of `table`, or an import path with exactly one colon.
      table: the built-in choices.
    """
    if not isinstance(name, str) or not name:
        raise UnknownNameError(f"{kind} must be a non-empty string, got {name!r}; choices: {', '.join(sorted(table))}")
    if name in table:
        return table[name]
    if ":" not in name:
        raise UnknownNameError(
            f"unknown {kind} {name!r}; choices: {', '.join(sorted(table))}, "
            f"or your own as 'package.module:attribute'"
        )
    module_name, _, attr = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        missing = getattr(e, "name", None)
        if isinstance(e, ModuleNotFoundError) and missing and (module_name + ".").startswith(missing + "."):
            raise UnknownNameError(
                f"{kind} {name!r}: cannot import module {module_name!r} ({e}); is it on PYTHONPATH?"
            ) from e
        raise UnknownNameError(  # the module exists but fails to import: its own error says why
            f"{kind} {name!r}: importing module {module_name!r} failed: {type(e).__name__}: {e}"
        ) from e
    try:
        found = getattr(module, attr)
    except AttributeError as e:
        raise UnknownNameError(f"{kind} {name!r}: module {module_name!r} has no attribute {attr!r}"
                               + _what_it_has(module, attr)) from e
    if not callable(found):
        raise UnknownNameError(f"{kind} {name!r} is {type(found).__name__} {found!r:.60}, not a function or class")
    return found


def _what_it_has(module, attr: str, shown: int = 12) -> str:
    """'; did you mean ...?' with the module's functions and classes closest to `attr`, else the list of them (those
    defined in it, not imported into it; at most `shown`)."""
    own = sorted(n for n, v in vars(module).items() if not n.startswith("_") and callable(v)
                 and (getattr(v, "__module__", None) == module.__name__ or isinstance(v, functools.partial)))
    close = difflib.get_close_matches(attr, own, n=3)
    if close:
        return f"; did you mean {' or '.join(map(repr, close))}?"
    if own:
        return f"; it defines {', '.join(own[:shown])}{' ...' if len(own) > shown else ''}"
    return ""


def check_call(what: str, fn: Callable, contract: str, *args, **kwargs) -> None:
    """Raises ValueError naming `what`, its signature and the `contract` unless `fn` takes these arguments (bound
    against its signature, not called): a user's function with other parameters fails before any work, saying
    how it is called, not with a TypeError from inside a trace."""
    if not callable(fn):
        raise ValueError(f"{what} is {type(fn).__name__}, not a function; expected {contract}")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function without a signature: its call will say
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as e:
        raise ValueError(f"{what} takes {signature} and cannot be called as {contract}: {e}") from None


def call(what: str, fn: Callable, contract: str, *args, **kwargs):
    """fn(*args, **kwargs), after `check_call`."""
    check_call(what, fn, contract, *args, **kwargs)
    return fn(*args, **kwargs)


def describe(value) -> str:
    """What a user's function returned, for an error message: 'an array of shape (2,)' or the type's name."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)}"
    if isinstance(value, tuple | list):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def accepts(fn: Callable, name: str, positional: int = 0) -> bool:
    """Whether `fn` takes a keyword `name` that the caller may pass besides its first `positional` arguments: how
    the trainers decide to pass a user's function the optional `cfg` (its config block) and `step` (the train step).
    A **kwargs catch-all does not count, nor a parameter among the first `positional` ones (the caller fills it
    positionally), nor a keyword a functools.partial has bound already (the user's own value stays)."""
    if isinstance(fn, functools.partial) and name in fn.keywords:
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C function without a signature
        return False
    for i, p in enumerate(params):
        if p.name == name:
            return p.kind == p.KEYWORD_ONLY or (p.kind == p.POSITIONAL_OR_KEYWORD and i >= positional)
    return False


def with_step(fn: Callable | None, step, positional: int) -> Callable | None:
    """`fn` with the train step bound as `step=` when it takes one (`accepts`): a user's GAN loss or regularizer
    that anneals something over training, as a VAE objective may. Else `fn` itself (None stays None)."""
    if fn is None or not accepts(fn, "step", positional):
        return fn
    return functools.partial(fn, step=step)


def with_config(fn: Callable, cfg, positional: int) -> Callable:
    """`fn` with its config block bound as `cfg=` when it takes one (`accepts`; a user's loss or regularizer with
    hyperparameters of its own, added to the block in the config file), else `fn` itself. The block is bound
    frozen, hashable: a jitted function can take it as a static argument."""
    if not accepts(fn, "cfg", positional):
        return fn
    import ml_collections  # noqa: PLC0415 (a jaxgen dependency; only here, where a config block is bound)

    if isinstance(cfg, ml_collections.ConfigDict) and not isinstance(cfg, ml_collections.FrozenConfigDict):
        cfg = ml_collections.FrozenConfigDict(cfg)
    return functools.partial(fn, cfg=cfg)
