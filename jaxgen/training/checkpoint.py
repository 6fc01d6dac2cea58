"""Orbax checkpoints of the whole train state, with auto-resume that survives a broken checkpoint.

Checkpoints live in `<workdir>/checkpoints/<step>`. Each holds the state and its fingerprint (a checksum of every
array, computed on the devices at save time), which a restore checks, so a file damaged on disk is found even where
it still decodes. A checkpoint that cannot be read or fails that check is reported, moved to
`<workdir>/checkpoints_broken/<step>` (kept, not deleted) and the previous one is used; when none can be read,
nothing is moved and the run stops (UnreadableCheckpointsError) rather than start over in a workdir with results.
A readable checkpoint whose saved tree (paths, shapes, dtypes) differs from the state this config builds was written
by another config: it is left in place and the run stops with CheckpointMismatchError naming the leaves that differ.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax import lax

from jaxgen import parallel, runtime
from jaxgen.training import checkpoint_errors
from jaxgen.training.checkpoint_errors import CheckpointMismatchError, UnreadableCheckpointsError
from jaxgen.training.workdir import WorkdirError

log = logging.getLogger(__name__)

TMP_MARK = ".orbax-checkpoint-tmp"  # in the name of a step folder Orbax is still writing

# Orbax writes a replicated array cooperatively by default ("replica-parallel": each replica writes a slice of it,
# except where JAX_PLATFORMS names a GPU). For these models' arrays that costs more than it saves: every array is cut
# into one slice per device by eager slices, compiled once per shape and dispatched at every save. On 8 CPU devices
# (gan_cifar10:smoke's 263 arrays) the first save blocked the loop 4.6 s and each later one 0.46 s; with arrays whose
# slices would be under this size written whole by one replica, 1.5 s and 0.12 s. Larger arrays are still shared.
REPLICA_PARALLEL_MIN_BYTES = 4 << 20
_handler_registered = False


class _ArrayHandler(ocp.type_handlers.ArrayHandler):
    """Orbax's jax.Array handler, whose reads of a checkpoint, when one fails, end before the error goes on.

    Orbax reads the arrays (their metadata, then their values) concurrently with asyncio.gather, which raises the
    first error and leaves the other reads running, in an event loop of its own, which it closes as soon as that
    error reaches it. The reads left running then printed a traceback each on stderr when they ended (TensorStore
    calls back into the closed loop: "RuntimeError: Event loop is closed") or were garbage-collected ("Exception
    ignored in: <coroutine object _read_array_index_and_device_put>": Orbax turns the GeneratorExit into its read
    error, with the whole TensorStore spec): ~1,500 lines for one emptied data file. Here they are awaited while the
    loop runs, and the error is then reported as before. Not cancelled: a cancelled read's TensorStore future still
    calls back into the loop when the read ends, which may be after the loop is closed."""

    async def metadata(self, infos):
        return await _others_awaited_on_error(super().metadata(infos))

    async def deserialize(self, infos, args=None):
        return await _others_awaited_on_error(super().deserialize(infos, args))


LEFTOVER_READS_SECONDS = 120.0  # at most this long: a read that hangs (a stalled filesystem) must not hold the fallback


async def _others_awaited_on_error(coro):
    """`coro`'s result; when it raises, the tasks started while it ran (the other reads) are awaited first, for at
    most LEFTOVER_READS_SECONDS (then the error goes on, and those still running may print their tracebacks)."""
    started = asyncio.all_tasks()  # this task and those awaiting it: not to be waited for here
    try:
        return await coro
    except Exception:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LEFTOVER_READS_SECONDS
        while others := asyncio.all_tasks() - started:  # and the tasks they start meanwhile
            done, pending = await asyncio.wait(others, timeout=max(0.0, deadline - loop.time()))
            for task in done:  # their errors are the failed read's company: retrieved, not logged again
                error = None if task.cancelled() else task.exception()
                if error is not None and not isinstance(error, Exception):  # an interruption (launch.py's SIGTERM)
                    raise error from None  # asyncio kept it in the task: it stops the run, no read error
            if pending:
                break
        raise


def _register_array_handler() -> None:
    """Once per process, before the first save: Orbax's own jax.Array handler, as Orbax built it (its array metadata
    store kept), with REPLICA_PARALLEL_MIN_BYTES, and a failed restore's other reads awaited (`_ArrayHandler`). A
    handler someone else registered is left alone. Restores are unaffected: the values and their layout on disk are
    the same; small arrays are stored in one chunk, not one per device."""
    global _handler_registered
    if _handler_registered:
        return
    _handler_registered = True
    current = ocp.type_handlers.get_type_handler(jax.Array)
    if (type(current) is not ocp.type_handlers.ArrayHandler  # noqa: E721 (exactly Orbax's, not a subclass)
            or getattr(current, "_min_slice_bytes_for_replica_parallel", 0) is not None
            or not hasattr(current, "_array_metadata_store")):
        return  # someone's own handler or settings, or an Orbax without the option: left as they are
    handler = _ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES,
                            array_metadata_store=current._array_metadata_store)
    with runtime.absl_errors_only():  # its 'overriding' warning: this override is the point
        ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Manager(ocp.CheckpointManager):
    """Orbax's CheckpointManager without its own preemption check. With jax.distributed, the manager asks JAX's
    process-wide preemption service "stop at this step?" in every save, with the checkpoint's step; jaxgen's loop
    asks the same service with its call count (training.stopping), and the service takes whichever number it hears
    first after a SIGTERM as the point where every process stops. Orbax's step (10 train steps per call, or a resumed
    run's) was a point the loop's count never reached: a SIGTERM during a save was ignored and the run trained on.
    The loop decides when to save (a stop included), so the manager never asks."""

    def reached_preemption(self, step: int) -> bool:  # noqa: ARG002 (Orbax's signature)
        return False


def manager(workdir: Path, cfg, subdir: str = "checkpoints") -> ocp.CheckpointManager:
    """A CheckpointManager keeping `cfg.keep` checkpoints, asynchronous if `cfg.asynchronous`. When to save is the
    loop's decision (every `checkpoint.every` steps, after the steps' finite check, and at the end)."""
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(n=cfg.keep),  # max_to_keep is deprecated
        enable_async_checkpointing=cfg.asynchronous,
        create=True,
    )
    # The handler registered up front lets item_metadata read the saved tree before any restore.
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    handler = ocp.StandardCheckpointHandler()
    registry.add("state", ocp.args.StandardSave, handler)
    registry.add("state", ocp.args.StandardRestore, handler)
    json_handler = ocp.JsonCheckpointHandler()
    registry.add(FINGERPRINT, ocp.args.JsonSave, json_handler)
    registry.add(FINGERPRINT, ocp.args.JsonRestore, json_handler)
    return Manager(Path(workdir).absolute() / subdir, options=options, handler_registry=registry)


def remove_partial_saves(directory: Path) -> None:
    """Deletes the `<step>.orbax-checkpoint-tmp*` folders a save killed half-way left in `directory` (process 0).

    Only a run that is about to write to `directory` may call this: in another process (`--mode=eval` beside a
    training run) it would delete a save in flight. Orbax never reads these folders; its own cleanup option runs in
    a background thread that close() does not wait for."""
    if jax.process_index() != 0 or not directory.is_dir():
        return
    for p in directory.iterdir():
        if TMP_MARK in p.name and p.is_dir():
            log.warning("Removing %s, a checkpoint whose save was interrupted", p)
            shutil.rmtree(p, ignore_errors=True)


FINGERPRINT = "fingerprint"  # the checkpoint item beside "state"


def save_args(state: dict) -> ocp.args.Composite:
    """What a checkpoint of `state` holds: the state and its fingerprint."""
    return ocp.args.Composite(state=ocp.args.StandardSave(state), **{
        FINGERPRINT: ocp.args.JsonSave({"version": 1, "leaves": fingerprint(state)})})


def save(mgr: ocp.CheckpointManager, state: dict) -> bool:
    """Saves `state` at its step unless a checkpoint of that step exists. Returns whether a save started."""
    step = int(jax.device_get(state["step"]))
    if step in mgr.all_steps():
        return False
    return mgr.save(step, args=save_args(state), force=True)


def check_saves(mgr: ocp.CheckpointManager) -> None:
    """Raises the error of an asynchronous save that failed (a full disk), on every process alike: the loop calls it
    at each train record, so that a run stops there instead of training on to its next save, checkpoint.every
    steps it could not keep. Orbax (0.12.8) keeps a failed save's error in the thread that finished the save and
    raises it only in its next wait_until_finished, which its next save calls; waiting for a save that is no longer
    in progress returns at once, or raises that error. A save still under way is left to a later record."""
    error = None
    try:
        mgr.check_for_errors()
        if not mgr.is_saving_in_progress():
            mgr.wait_until_finished()
    except Exception as e:  # noqa: BLE001 (whatever the writer thread raised)
        error = e
    if (error := _on_every_process(error, "could not write their part of the last checkpoint")) is not None:
        raise error


@jax.jit
def _leaf_checksums(leaves: list) -> jax.Array:
    """uint32 [len(leaves)]: a position-mixed sum of each array's bits. Integer sums wrap exactly whatever the
    order of the reduction, so the value does not depend on the device count or the backend."""
    def one(x):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        if jnp.iscomplexobj(x):
            x = jnp.stack([x.real, x.imag], -1)
        x = x.reshape(-1)
        if x.dtype == jnp.bool_:
            u = x.astype(jnp.uint32)
        elif x.dtype.itemsize == 8:  # 64-bit types (with jax_enable_x64): two uint32 words each
            u = lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
        else:
            u = lax.bitcast_convert_type(x, {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[x.dtype.itemsize])
            u = u.astype(jnp.uint32)
        h = (u ^ (jnp.arange(u.size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B9))) * jnp.uint32(0x85EBCA6B)
        return jnp.sum(h ^ (h >> 13), dtype=jnp.uint32)

    return jnp.stack([one(x) for x in leaves]) if leaves else jnp.zeros((0,), jnp.uint32)


def fingerprint(state) -> list[int]:
    """One checksum per leaf of `state` (in tree order), as host ints: what a checkpoint's fingerprint holds."""
    return [int(v) for v in np.asarray(jax.device_get(_leaf_checksums(jax.tree.leaves(state))))]


class CheckpointRemovedError(RuntimeError):
    """The checkpoint being read was removed meanwhile, by the training run beside --mode=eval/sample (its
    checkpoint.keep, or the best checkpoint's one): no damage; restore_newest reads the newest again."""


def _check_fingerprint(mgr: ocp.CheckpointManager, step: int, state: dict,
                       superseded: Callable[[int], bool] = lambda step: False) -> None:
    """Raises ValueError when the restored `state` does not match the fingerprint saved with it, or when it has
    none though an older checkpoint beside it has one (its fingerprint was deleted); CheckpointRemovedError when it
    has none because the checkpoint is being removed (`superseded(step)`). A checkpoint written before fingerprints
    existed has none, and is taken as read, with a warning. The state's fingerprint is computed first: a
    collective, which every process must reach before anything here can fail on one process alone."""
    now = fingerprint(state)
    saved = _saved_fingerprint(mgr, step)
    if saved is None:
        # The item's folder gone while an older checkpoint has one: deleted. Its folder without the file where it is
        # read from: an Orbax that lays the item out otherwise, which leaves checkpoints unverified, not damaged.
        if superseded(step):  # Orbax removes a step's files first, its folders last: `item` may still be there
            raise CheckpointRemovedError(f"the checkpoint at step {step} was removed while it was read")
        item = _item_path(mgr, step, FINGERPRINT)
        older = [s for s in mgr.all_steps() if s < step and _item_path(mgr, s, FINGERPRINT).is_dir()]
        if older and not item.exists():
            raise ValueError(f"its fingerprint ({item}) is missing, though the older checkpoint at step {max(older)} "
                             f"has one: its files were changed after the save")
        log.warning("The checkpoint at step %d has no fingerprint jaxgen can read (%s): its arrays are not verified",
                    step, "written before jaxgen saved them" if not item.exists() else f"no {item / 'metadata'}")
    if saved is not None and saved.get("leaves") != now:
        paths = ["/".join(map(str, k)) for k in ocp.tree.to_flat_dict(state)]
        bad = [p for p, a, b in zip(paths, saved.get("leaves", []), now) if a != b]
        raise ValueError(f"its arrays do not match the fingerprint saved with them ({len(bad)} of {len(now)} "
                         f"differ, e.g. {', '.join(bad[:3])}): a file was damaged after the save")


def _saved_fingerprint(mgr: ocp.CheckpointManager, step: int) -> dict | None:
    """The fingerprint item saved at `step`, or None for a checkpoint without one (written before fingerprints
    existed, its item deleted, or laid out otherwise: `_check_fingerprint` tells them apart).

    Read as the plain JSON file Orbax's JsonCheckpointHandler writes (`<step>/fingerprint/metadata`), not through
    the manager, whose restore waits at a barrier for every process: a read that failed on one host would leave
    the others waiting there. An Orbax that lays the item out otherwise leaves the checkpoint unverified."""
    path = _item_path(mgr, step, FINGERPRINT) / "metadata"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:  # none, or removed since (`_check_fingerprint` tells them apart)
        return None


def _item_path(mgr: ocp.CheckpointManager, step: int, item: str) -> Path:
    """Where the manager keeps `item` ("state", FINGERPRINT) of the checkpoint at `step`: <directory>/<step>/<item>
    (`manager` sets no step prefix or name format)."""
    return Path(mgr.directory) / str(step) / item


def _read_state(mgr: ocp.CheckpointManager, step: int, target):
    """The state saved at `step`, restored onto `target`'s shardings by this process on its own. The manager's
    restore ends at a barrier of every process, which a process whose read failed never reaches: the others waited
    there until the first later collective, took it for the barrier and failed or hung (tested with a read that
    fails inside Orbax on one process). Here no process waits for another; restore_newest then makes them agree."""
    me = ocp.multihost.process_index()  # Orbax's own count, which decides whether its barrier is skipped
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    with ocp.Checkpointer(ocp.StandardCheckpointHandler(), multiprocessing_options=alone) as checkpointer:
        return checkpointer.restore(_item_path(mgr, step, "state"), args=ocp.args.StandardRestore(target))


def abstract_like(state_shapes, sharding):
    """The restore target: shapes and dtypes of `state_shapes` (from jax.eval_shape), placed by `sharding`.

    A target with the current mesh's sharding is what lets a checkpoint written on N devices restore onto M.
    """
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), state_shapes)


def restore_newest(workdir: Path, cfg, target, subdir: str = "checkpoints", *, move_broken: bool = True,
                   reported: set[int] | None = None, older: bool = True,
                   _rereads: int = 5) -> tuple[ocp.CheckpointManager, dict | None]:
    """(manager, newest readable state or None). Unreadable checkpoints are reported (once: the steps in `reported`,
    which gains those reported now, are not again) and, once an older one has been read and with `move_broken` (a
    training run: --mode=eval/sample only read), moved aside. older=False (--mode=eval/sample, which would write an
    older step's numbers over the run's): an unreadable newest checkpoint raises UnreadableCheckpointsError naming
    the older one that could stand in, instead of reading it.

    Raises CheckpointMismatchError, leaving the checkpoint in place, when the newest readable one was saved from a
    state whose tree (paths, shapes, dtypes) differs from `target`: a config change, not a broken file; and
    UnreadableCheckpointsError, moving nothing, when there are checkpoints and none can be read. With several
    processes, a checkpoint counts as read only if every process read it (a collective).
    """
    mgr = _listing_manager(workdir, cfg, subdir)
    steps = mgr.all_steps()
    listed = max(steps, default=-1)
    parallel.check_same_on_every_process(  # before Orbax's restore, whose barrier a process without it never reaches
        f"the checkpoints in {Path(workdir).absolute() / subdir} (how many, the newest step)",
        [len(steps), listed],
        "Every process must see the same --workdir: put it on a filesystem all hosts share.")
    # Steps that failed, newest first; moved aside only once an older one is read. Their errors are logged, not
    # kept: a failed restore's traceback holds Orbax's asyncio objects, which must not outlive this call.
    broken: list[int] = []
    reported = set() if reported is None else reported

    def report(step: int, error: Exception) -> None:
        oom = _out_of_memory(error)
        if jax.process_count() > 1:  # every process alike (a collective)
            oom = bool(parallel.allgather_ints(int(oom))[:, 0].any())
        if oom:  # passing: the checkpoint is likely whole, so nothing is moved nor skipped
            mgr.close()
            log.error("Reading the checkpoint at step %d ran out of memory:", step,
                      exc_info=(type(error), error, error.__traceback__), extra={runtime.FILE_ONLY: True})
            raise WorkdirError(f"reading the checkpoint at step {step} in {Path(workdir).absolute() / subdir} ran out "
                               f"of memory ({type(error).__name__}: {_first_line(error)[:200]}). Nothing was moved; "
                               f"free memory (other jobs on this machine or accelerator, or more devices for the "
                               f"state) and run the same command again")
        if step not in reported:
            _reported(step, error)
            reported.add(step)
        broken.append(step)

    def superseded(step: int) -> bool:
        """Whether `step`'s folder is gone, or a checkpoint newer than the newest listed has been written since: a
        training run beside --mode=eval/sample saved one and is removing (or removed) `step` (checkpoint.keep, the
        best checkpoint's one). Orbax removes a step's files first and its folder last: the folder alone is no
        sign."""
        if move_broken:  # a training run: nothing else writes or removes its checkpoints (the workdir's lock)
            return False
        directory = Path(workdir).absolute() / subdir
        return not (directory / str(step)).exists() or max(_finished_steps(directory), default=-1) > listed

    def vanished(step: int) -> bool:
        """Whether `step` is `superseded` (on every process), which is no damage: read the newest again."""
        gone = superseded(step)
        if jax.process_count() > 1:
            gone = bool(parallel.allgather_ints(int(gone))[:, 0].all())
        return gone and _rereads > 0

    def read_again():
        mgr.close()
        return restore_newest(workdir, cfg, target, subdir, move_broken=move_broken, reported=reported, older=older,
                              _rereads=_rereads - 1)

    for step in sorted(steps, reverse=True):
        if broken and not older:  # before reading it (every process alike: `broken` was agreed on)
            mgr.close()
            raise UnreadableCheckpointsError(Path(workdir).absolute() / subdir, broken, training=move_broken,
                                             older=step)
        try:
            saved, error = checkpoint_errors.saved_tree(mgr, step), None
        except Exception as e:  # noqa: BLE001 (metadata that cannot be read means a broken checkpoint)
            saved, error = None, e
        if (error := _on_every_process(error)) is not None:
            if vanished(step):
                return read_again()
            report(step, error)
            continue
        diff = checkpoint_errors.differences(saved, target)
        if diff:
            mgr.close()
            message = checkpoint_errors.mismatch_message(Path(workdir).absolute(), subdir, step, diff,
                                                         training=move_broken)
            raise CheckpointMismatchError(message, diff)
        try:
            restored, error = _read_state(mgr, step, target), None
        except Exception as e:  # noqa: BLE001 (the tree matched, so a failure to read means a broken file)
            restored, error = None, e
        if (error := _on_every_process(error)) is None:  # all or none go on to the fingerprint, a collective
            try:
                _check_fingerprint(mgr, step, restored, superseded)
            except Exception as e:  # noqa: BLE001 (a damaged array, or a fingerprint that cannot be read)
                error = e
            error = _on_every_process(error)
        if error is not None:
            restored = None  # before the older checkpoint is read: two states need not fit at once
            if vanished(step):
                return read_again()
            report(step, error)
            continue
        for bad in broken if move_broken else ():
            mgr = _move_aside(mgr, workdir, cfg, subdir, bad)
        return mgr, restored
    if broken:
        mgr.close()
        raise UnreadableCheckpointsError(Path(workdir).absolute() / subdir, broken, training=move_broken)
    return mgr, None


def _finished_steps(directory: Path) -> list[int]:
    """The steps of the whole checkpoints in `directory` now: its folders named by a step, as Orbax names them (a save
    in progress is in a `<step>.orbax-checkpoint-tmp*` folder until Orbax renames it)."""
    try:
        return [int(p.name) for p in directory.iterdir()
                if p.name.isdigit() and str(int(p.name)) == p.name and p.is_dir()]
    except FileNotFoundError:
        return []


def _listing_manager(workdir: Path, cfg, subdir: str, tries: int = 5) -> ocp.CheckpointManager:
    """`manager`, whose creation lists the checkpoints and reads each one's metadata: a training run beside
    --mode=eval/sample may remove one meanwhile (Orbax then stats its folder: FileNotFoundError). Listed again."""
    for attempt in range(1, tries):
        try:
            return manager(workdir, cfg, subdir)
        except FileNotFoundError as e:
            # With several processes each would list again on its own, out of step with the others' collectives.
            if jax.process_count() > 1 or str(Path(workdir).absolute() / subdir) not in str(e.filename or e):
                raise
            log.info("A checkpoint in %s was removed while it was listed (a training run beside this one): listing "
                     "again", Path(workdir).absolute() / subdir)
            time.sleep(0.2 * attempt)
    return manager(workdir, cfg, subdir)  # the last try: its error is the error


def _on_every_process(error: Exception | None, what: str = "could not read it") -> Exception | None:
    """`error`, or a stand-in when another process failed where this one did not (they `what`): every process then
    treats the checkpoint alike (a collective in a multi-process run)."""
    if jax.process_count() == 1:
        return error
    failed = np.flatnonzero(parallel.allgather_ints(int(error is not None))[:, 0]).tolist()
    if error is None and failed:
        return WorkdirError(f"process(es) {failed} {what}; their logs say why")
    return error


def _out_of_memory(e: BaseException | None) -> bool:
    """Whether `e`, or an error it was raised from (Orbax and asyncio wrap them), says the host or an accelerator ran
    out of memory (MemoryError; XLA's RESOURCE_EXHAUSTED with "memory" in its message)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)[:1000]
        if isinstance(e, MemoryError) or ("RESOURCE_EXHAUSTED" in text and "memory" in text.lower()):
            return True
        e = e.__cause__ or e.__context__
    return False


def _first_line(e: BaseException) -> str:
    """The first line of `e`'s message, without TensorStore's appended spec (an unreadable pybind11 repr)."""
    line = (str(e).splitlines() or [""])[0]
    for spec in (" See full TensorStore details", " [tensorstore_spec="):
        line = line.split(spec)[0]
    return line


def _reported(step: int, e: Exception) -> None:
    # The first line of the error, without TensorStore's appended spec (an unreadable pybind11 repr); the whole
    # traceback in the log file, to tell a damaged file from a fault elsewhere.
    reason = _first_line(e)[:300]
    log.error("Checkpoint at step %d cannot be read (%s: %s)", step, type(e).__name__, reason)
    if e.__traceback__ is not None:  # not for the stand-in of another process's failure, which was never raised
        log.error("The error that made the checkpoint at step %d unreadable:", step,
                  exc_info=(type(e), e, e.__traceback__), extra={runtime.FILE_ONLY: True})


def _move_aside(mgr: ocp.CheckpointManager, workdir: Path, cfg, subdir: str, step: int) -> ocp.CheckpointManager:
    """Moves the unreadable checkpoint at `step` to `<subdir>_broken/<step>` (`<step>.1`, `.2` ... when an earlier
    one of that step is there: the same step broken again keeps both), returns a new manager.

    Process 0 moves it; every process waits for that (and learns whether it worked) before making its manager,
    which lists the steps once: a process that still listed the step would skip its save there while the others
    save, and they would wait for each other in Orbax's barrier."""
    mgr.close()
    src = Path(workdir).absolute() / subdir / str(step)
    dst = Path(workdir).absolute() / f"{subdir}_broken" / str(step)
    error = None
    if jax.process_index() == 0:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst = next(d for n in itertools.count() if not (d := dst.with_name(f"{step}.{n}" if n else str(step)))
                       .exists())
            shutil.move(str(src), str(dst))
            log.error("Moved the unreadable checkpoint to %s", dst)
        except OSError as e:
            error = e
    if (error := _on_every_process(error)) is not None:
        raise WorkdirError(f"the unreadable checkpoint {src} could not be moved to {dst} ({error}); move or delete "
                           f"it yourself, then run the same command again") from None  # this, not write_failed's
    return manager(workdir, cfg, subdir)
