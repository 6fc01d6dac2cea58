"""The device mesh and how arrays get onto it.

Data parallelism is written per device (a body that sees its own slice and calls `lax.pmean(..., AXIS)`) and
mapped over a one-axis mesh of every device of every process with `jax.shard_map` inside `jax.jit`.
"""

from __future__ import annotations

import itertools
import os
import zlib
from collections.abc import Callable, Iterable
from typing import TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
T = TypeVar("T")
# How long the other processes wait for process 0 in process_0_first (it may download and prepare a dataset for
# hours); $JAXGEN_PROCESS_0_TIMEOUT_S changes it.
PROCESS_0_TIMEOUT_S = 24 * 3600.0
_barriers = itertools.count()  # every process calls process_0_first in the same order: the ids agree


def eval_shape_on_axis(fn, *args):
    """jax.eval_shape(fn, *args), with the 'data' axis bound (at size 1) when `fn` calls a collective over it: the
    one-trace checks of a user's function (an objective, a regularizer) run outside the step's shard_map, where a
    `lax.all_gather(mu, AXIS, tiled=True)` of a batch statistic would find the axis unbound (NameError)."""
    try:
        return jax.eval_shape(fn, *args)
    except NameError as e:
        if AXIS not in str(e):
            raise
    # out_axes=0, then the axis of size 1 taken off: an output that depends on lax.axis_index(AXIS) is mapped.
    bound = jax.vmap(fn, in_axes=None, axis_size=1, axis_name=AXIS)
    return jax.eval_shape(lambda *a: jax.tree.map(lambda o: o[0], bound(*a)), *args)


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named 'data' over `devices` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return jax.sharding.Mesh(np.asarray(devices), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def check_batch(global_batch: int, mesh: jax.sharding.Mesh, what: str = "train.batch_size") -> int:
    """Per-device batch size; a clear error when the global batch does not split evenly."""
    n = mesh.size
    if global_batch % n:
        lo, hi = (global_batch // n) * n, (global_batch // n + 1) * n
        raise ValueError(
            f"{what}={global_batch} is not divisible by the {n} devices; "
            f"use a multiple of {n} (e.g. {lo or hi} or {hi})"
        )
    return global_batch // n


def at_most(n: int, devices: int) -> str:
    """The end of an error that asks for a batch size that fits in `n` examples on `devices` devices: the largest
    that does, and what it must be a multiple of."""
    fits = n // devices * devices
    return (f" to at most {fits}" if fits else "") + f" (a multiple of the device count, {devices})"


def check_batches(mesh: jax.sharding.Mesh, sizes: dict[str, int]) -> None:
    """check_batch for several config fields at once ({'train.batch_size': 64, ...}; a size 0 is unused): one
    error naming every size that does not split over the devices, so they are fixed together."""
    errors = []
    for name, size in sizes.items():
        if size:
            try:
                check_batch(size, mesh, name)
            except ValueError as e:
                errors.append(str(e))
    if errors:
        raise ValueError("; and ".join(errors))


class DoesNotFitError(ValueError):
    """A dataset that is uploaded whole to every device is larger than a device's free memory."""


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_fits(nbytes: int, stats: dict | None, *, what: str, fix: str, device: str = "a device") -> None:
    """Raises DoesNotFitError when `nbytes` exceed the free memory of a device's allocator stats
    (`device.memory_stats()`: bytes_limit - bytes_in_use) and warns above half of its limit. Without stats (the
    CPU) there is nothing to check: XLA:CPU allocates from the host's memory."""
    if not stats or "bytes_limit" not in stats:
        return
    limit = int(stats["bytes_limit"])
    free = limit - int(stats.get("bytes_in_use", 0))
    if nbytes > free:
        raise DoesNotFitError(f"{what} ({gib(nbytes)}) is uploaded whole to every device, and {device} has "
                              f"{gib(free)} free of {gib(limit)}: {fix}")
    if nbytes > limit // 2:
        import logging  # noqa: PLC0415

        logging.getLogger(__name__).warning(
            "%s takes %s of %s's %s: the model and its activations get the rest (%s)", what, gib(nbytes), device,
            gib(limit), fix)


def check_fits_on_devices(nbytes: int, mesh: jax.sharding.Mesh, *, what: str, fix: str) -> None:
    """check_fits for this process's devices of the mesh (the one with the least free memory decides). A collective
    in a multi-host run: a process whose device is too small stops every process, none waits for it."""
    def check():
        local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
        found = least_free(local)
        if found is not None:
            check_fits(nbytes, found[1], what=what, fix=fix, device=str(found[0]))
        else:  # XLA:CPU: every local device's copy comes out of the host's memory
            check_host_memory(nbytes * len(local), what=what, fix=fix, copies=len(local))

    stop_if_any_failed(attempt(check)[1], f"fit {what} on their devices")


def check_host_memory(nbytes: int, *, what: str, fix: str, copies: int = 1, available: int | None = None) -> None:
    """Warns when `nbytes` (the CPU devices' copies of `what`) exceed half of the host's available memory
    (MemAvailable of /proc/meminfo; nothing where it cannot be read), and logs their size above 256 MiB: on a CPU
    gan_celeba's train split is 2 GiB, uploaded with no word before."""
    import logging  # noqa: PLC0415

    if nbytes < 256 * 2**20:
        return
    if available is None:
        try:
            with open("/proc/meminfo") as f:
                available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
        except (OSError, StopIteration, ValueError, IndexError):
            available = None
    each = f" ({copies} copies, one per CPU device)" if copies > 1 else ""
    log = logging.getLogger(__name__)
    if available is not None and nbytes > available // 2:
        log.warning("%s takes %s of host memory%s, more than half of the %s available: the run may be killed for "
                    "memory (%s)", what, gib(nbytes), each, gib(available), fix)
    else:
        log.info("Uploading %s to the devices: %s of host memory%s", what, gib(nbytes), each)


def least_free(devices) -> tuple | None:
    """(device, its memory stats) of the device with the least free memory among those that report stats (an
    accelerator's allocator: bytes_limit, bytes_in_use), or None when none does (XLA:CPU)."""
    stats = [(d, s) for d, s in ((d, d.memory_stats()) for d in devices) if s and "bytes_limit" in s]
    if not stats:
        return None
    return min(stats, key=lambda ds: int(ds[1]["bytes_limit"]) - int(ds[1].get("bytes_in_use", 0)))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def put_replicated(tree, mesh: jax.sharding.Mesh):
    """Places a pytree of host arrays (identical on every process) on every device of the mesh."""
    sharding = replicated(mesh)
    return jax.tree.map(lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def put_batch(tree, mesh: jax.sharding.Mesh):
    """Shards a host pytree of global batches (leading axis, identical on every process) over the 'data' axis.

    Each process places only the rows its own devices hold, wherever those devices sit in the mesh.
    """
    sharding = NamedSharding(mesh, P(AXIS))

    def put(a):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])

    return jax.tree.map(put, tree)


class ProcessesDisagreeError(RuntimeError):
    """Processes of one run hold different values where they must hold the same (a multi-host run)."""


def one_behind(jobs: Iterable[T], fetch: Callable[[T], object]) -> None:
    """fetch(job) for each job of `jobs` (a generator that dispatches device work), one behind: job i + 1 is
    dispatched before job i is fetched, so the device computes a batch while the host copies the previous one."""
    pending, have = None, False
    for job in jobs:
        if have:
            fetch(pending)
        pending, have = job, True
    if have:
        fetch(pending)


def check_same_on_every_process(what: str, value, fix: str) -> None:
    """Raises ProcessesDisagreeError naming `what`, each process's value and `fix` unless every process passed
    the same `value` (integers). Nothing to do in a one-process run; otherwise a collective every process calls."""
    if jax.process_count() == 1:
        return
    every = allgather_ints(value)
    if not (every == every[0]).all():
        found = "; ".join(f"process {i}: {row.tolist()}" for i, row in enumerate(every))
        raise ProcessesDisagreeError(f"the processes of this run disagree on {what} ({found}). {fix}")


def fingerprint(a: np.ndarray) -> list[int]:
    """Shape and CRC-32 of a host array: equal on two hosts when they loaded the same data."""
    a = np.ascontiguousarray(a)
    return [*a.shape, zlib.crc32(memoryview(a).cast("B")) & 0x7FFFFFFF]  # int32-safe: collectives run without x64


def check_equal_device_counts() -> None:
    """Raises ProcessesDisagreeError unless every process has as many devices as the others: every process feeds
    an equal share of the global batch to its own devices, and JAX's gathers across processes assume it (they failed
    with a reshape error). Every process sees every device, so each reaches this answer without communicating."""
    counts = np.bincount([d.process_index for d in jax.devices()], minlength=jax.process_count())
    if (counts != counts[0]).any():
        found = ", ".join(f"process {i}: {n}" for i, n in enumerate(counts.tolist()))
        raise ProcessesDisagreeError(
            f"the processes of this run have different numbers of devices ({found}): jaxgen gives each process an "
            f"equal share of the batch, so start every process with the same number of devices (they are chosen by "
            f"$JAX_LOCAL_DEVICE_IDS, or $CUDA_VISIBLE_DEVICES on GPUs; a host that lost a device can be left out)")


def allgather_ints(values) -> np.ndarray:
    """[process_count, n]: every process's `values`, integers (a collective every process calls)."""
    from jax.experimental import multihost_utils  # noqa: PLC0415

    check_equal_device_counts()
    mine = np.atleast_1d(np.asarray(values, np.int64))
    return np.asarray(multihost_utils.process_allgather(mine)).reshape(jax.process_count(), -1)


def process_0_first(fn: Callable[[], T], *, needed: bool, what: str) -> T:
    """fn() on every process, process 0's call finishing before the others start: with a shared data dir a
    dataset is then downloaded, prepared and cached once instead of by every host at the same time.

    needed: whether this process lacks what fn makes (e.g. its cache file is missing); when no process does, they
    all call fn at once. A failure on any process stops every process (none waits for ever): raised where it
    happened, and on the others as an error naming `what` and the processes that failed. A collective in a
    multi-host run: every process calls it, in the same order.
    """
    if jax.process_count() == 1:
        return fn()
    result, error = None, None
    if allgather_ints(int(needed)).any():
        if jax.process_index() == 0:
            result, error = attempt(fn)
        wait_for_every_process(what)  # the others wait here for process 0, then hear whether it failed:
        stop_if_any_failed(error, what)
        if jax.process_index() != 0:
            result, error = attempt(fn)
    else:
        result, error = attempt(fn)
    stop_if_any_failed(error, what)
    return result


def wait_for_every_process(what: str) -> None:
    """Returns when every process has called it (as often): a barrier on jax.distributed's coordination service
    (through Orbax's multihost barrier), which waits up to $JAXGEN_PROCESS_0_TIMEOUT_S (default
    PROCESS_0_TIMEOUT_S, 24 h), then raises TimeoutError.

    Not a device collective, whose wait for a late process is bounded by XLA's, not ours: 30 minutes on CPUs (gloo,
    --xla_cpu_collective_timeout_seconds), after which a process still preparing data would fail the others, and
    none on GPUs. A process that dies meanwhile makes the coordination service end the others."""
    if not jax.distributed.is_initialized():  # several processes without its service: the collective's wait
        allgather_ints(0)
        return
    from orbax.checkpoint import multihost  # noqa: PLC0415 (not on `import jaxgen`'s path)

    timeout = float(os.environ.get("JAXGEN_PROCESS_0_TIMEOUT_S") or PROCESS_0_TIMEOUT_S)
    try:
        multihost.get_barrier_sync_fn()(key=f"jaxgen_process_0_first_{next(_barriers)}",
                                        timeout_ms=int(timeout * 1000))
    except jax.errors.JaxRuntimeError as e:
        if "DEADLINE_EXCEEDED" not in str(e):
            raise
        raise TimeoutError(f"waited {timeout:g} s for every process to {what}; a longer wait: set "
                           f"JAXGEN_PROCESS_0_TIMEOUT_S (seconds) on every process [jax: {e}]") from e


def attempt(fn: Callable[[], T]) -> tuple[T | None, Exception | None]:
    """(fn(), None), or (None, the exception it raised): for `stop_if_any_failed` after a step only some processes
    take."""
    try:
        return fn(), None
    except Exception as e:  # noqa: BLE001 (re-raised by stop_if_any_failed, after the others hear of it)
        return None, e


def stop_if_any_failed(error: Exception | None, what: str) -> None:
    """A collective: raises `error` where it happened, and an error naming the failed processes on the others."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    failed = np.flatnonzero(allgather_ints(int(error is not None))[:, 0]).tolist()
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"process(es) {failed} failed to {what}; their logs say why")
