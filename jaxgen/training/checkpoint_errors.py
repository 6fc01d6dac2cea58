"""The two ways a workdir's checkpoints fail to restore, as errors that say what to do: a readable checkpoint
written by another configuration (CheckpointMismatchError, with the leaves that differ between its saved tree and
the state this config builds) and checkpoints none of which can be read (UnreadableCheckpointsError). Raised by
jaxgen.training.checkpoint.restore_newest, which also exports both."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointMismatchError(ValueError):
    """A readable checkpoint in the workdir holds a state of another shape than this config builds. `diff`: the
    leaves that differ ({kind: ['path ...']}, as `differences` gives them)."""

    def __init__(self, message: str, diff: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.diff = diff or {}


class UnreadableCheckpointsError(ValueError):
    """The workdir has checkpoints and none of them can be read: the run stops instead of starting over. With
    `older`: the newest cannot be read, and a mode that reads the newest only stops instead of reading that one."""

    def __init__(self, directory: Path, broken: list[int], training: bool = True, older: int | None = None):
        steps = ", ".join(str(s) for s in broken)
        if older is not None:  # --mode=eval/sample: the newest only
            super().__init__(
                f"the newest checkpoint in {directory} cannot be read (step{'s'[:len(broken) > 1]} {steps}; the "
                f"errors are logged above), and --mode=eval and --mode=sample read the newest only: the one at step "
                f"{older} does not stand in for it. Nothing was moved. If the cause was passing (memory, a network "
                f"filesystem), run the same command again; else "
                + (f"a training run (the same command without --mode) moves the unreadable one aside and trains on "
                   f"from step {older}." if directory.name != "best" else
                   "evaluate the newest checkpoint (eval.checkpoint=newest); a training run's next evaluations keep "
                   "a best one again."))
            return
        what = (f"the run did not start over, which would overwrite this workdir's metrics and images. If the cause "
                f"was passing (memory, a network filesystem), run the same command again; to train from scratch, "
                f"pass a new --workdir (or move {directory} away)" if training else
                "if the cause was passing (memory, a network filesystem), run the same command again")
        super().__init__(f"none of the checkpoints in {directory} can be read (steps {steps}; the errors are logged "
                         f"above). Nothing was moved or deleted; {what}.")


def saved_tree(mgr: ocp.CheckpointManager, step: int) -> dict:
    """{path tuple: saved array metadata, or None for an empty node} of the state saved at `step`."""
    meta = mgr.item_metadata(step)["state"]
    tree = getattr(meta, "tree", None)
    if tree is None:
        raise ValueError(f"no tree metadata for the state item (got {type(meta).__name__})")
    return {k: (v if hasattr(v, "shape") else None)
            for k, v in ocp.tree.to_flat_dict(tree, keep_empty_nodes=True).items()}


def _describe(leaf) -> str:
    return "empty" if leaf is None else f"{tuple(leaf.shape)} {np.dtype(leaf.dtype).name}"


def differences(saved: dict, target) -> dict[str, list[str]]:
    """Leaves of `target` missing from `saved`, leaves of `saved` not in `target`, and those whose shape or
    dtype changed ({kind: ['path ...']}, kinds with no entries left out). PRNG keys are compared as key data,
    which is how Orbax saves them."""
    def as_saved(x):
        if not hasattr(x, "shape"):
            return None
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(x.shape, x.dtype))
        return x

    want = {k: as_saved(v) for k, v in ocp.tree.to_flat_dict(target, keep_empty_nodes=True).items()}

    def paths(keys):  # parameters before optimizer state: they say more about what changed
        return sorted(keys, key=lambda k: "opt" in str(k[0]))  # opt_state, g_opt, d_opt

    name = lambda k: "/".join(map(str, k))  # noqa: E731
    diff = {
        "missing from the checkpoint": [name(k) for k in paths(want) if k not in saved],
        "in the checkpoint, not in this config's state": [name(k) for k in paths(saved) if k not in want],
        "shape or dtype changed": [
            f"{name(k)} ({_describe(saved[k])} saved, {_describe(want[k])} now)"
            for k in paths(want) if k in saved and _describe(saved[k]) != _describe(want[k])
        ],
    }
    return {kind: found for kind, found in diff.items() if found}


def mismatch_message(workdir: Path, subdir: str, step: int, diff: dict[str, list[str]], shown: int = 5, *,
                      training: bool = True) -> str:
    lines = []
    for kind, paths in diff.items():
        more = f" ... and {len(paths) - shown} more" if len(paths) > shown else ""
        lines.append(f"  {kind} ({len(paths)}): {', '.join(paths[:shown])}{more}")
    saved_config = workdir / "config.json"  # written by the last run that started from these checkpoints
    return (
        f"the checkpoint at step {step} in {workdir / subdir} was written by a different configuration: the state it "
        f"holds does not match the one this config builds.\n" + "\n".join(lines) + "\n"
        + (f"The checkpoint was left in place. To resume it, run with the configuration it was written with (the "
           f"same command and overrides; see {saved_config}); to train this configuration, pass a new --workdir."
           if training else
           f"To evaluate or sample it, give the configuration it was written with (the training command's config and "
           f"overrides; see {saved_config})."))
