"""Process set-up before JAX starts its backends: XLA:CPU defaults and, when asked, jax.distributed."""

from __future__ import annotations

import contextlib
import logging
import os

# XLA:CPU (jax 0.10.2) ran the conv-VAE train step 1.3-2.3x faster on this project's 2-core x86 machines with an
# explicitly empty YNN fusion list than with the built-in default (benchmarks/README.md). Applied only when the
# user's XLA_FLAGS do not mention the flag, only when JAX will run on the CPU (no GPU or TPU plugin installed, or
# JAX_PLATFORMS=cpu), and only with a jaxlib known to have the flag (CPU_FLAGS_JAXLIB): XLA aborts on unknown flags,
# and an experimental flag may go in any release.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)
CPU_FLAGS_JAXLIB = ((0, 10), (0, 11))  # the (major, minor) releases seen to accept it: 0.10.2 here, 0.11.2
# XLA:GPU picks convolution algorithms by timing them in each process (autotuning) and may use kernels with atomic
# adds; this flag makes it use deterministic kernels without autotuning (a superset of
# --xla_gpu_exclude_nondeterministic_ops, openxla/xla#12520). Every jaxlib knows it; on a CPU it changes nothing.
DETERMINISTIC_FLAGS = ("--xla_gpu_deterministic_ops=true",)
ACCELERATOR_PLUGINS = ("jax-cuda", "jax_cuda", "libtpu", "jax-rocm", "jax_rocm")


@contextlib.contextmanager
def absl_errors_only():
    """Only errors from absl's logger inside the block (TFDS and Orbax log through it): for warnings jaxgen
    answers itself, or causes on purpose."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


FILE_ONLY = "file_only"  # a record with extra={FILE_ONLY: True} goes to the log file, not to the terminal


def not_file_only(record: logging.LogRecord) -> bool:
    """The console handlers' filter: records marked FILE_ONLY (the train lines while a progress bar shows the same
    numbers) stay off the terminal."""
    return not getattr(record, FILE_ONLY, False)


def console_logging() -> logging.Logger:
    """jaxgen's logger at INFO to stderr, in its one format ('14:04:48 INFO ...'), its handlers replaced: launch.py
    calls it first, so that warnings made while the config loads read like the rest; the workdir adds its log
    file (jaxgen.training.workdir.setup_logging)."""
    logger = logging.getLogger("jaxgen")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    stream = logging.StreamHandler()
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    stream.addFilter(not_file_only)
    logger.addHandler(stream)
    logger.propagate = False
    return logger


def _runs_on_cpu() -> bool:
    platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    from importlib import metadata  # noqa: PLC0415

    if metadata.entry_points(group="jax_plugins"):  # PJRT plugins (CUDA, ROCm, Metal, ...) register here
        return False
    names = {(d.metadata.get("Name") or "").lower() for d in metadata.distributions()}
    return not any(n.startswith(ACCELERATOR_PLUGINS) for n in names)


def _jaxlib_release() -> tuple[int, int] | None:
    """(major, minor) of the installed jaxlib, read from its metadata without importing it; None if unknown."""
    from importlib import metadata  # noqa: PLC0415

    try:
        major, minor = metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def distributed_args() -> dict[str, int]:
    """`num_processes` and `process_id` from $JAX_NUM_PROCESSES and $JAX_PROCESS_ID, those that are set.

    jax.distributed.initialize() reads $JAX_COORDINATOR_ADDRESS (and $JAX_LOCAL_DEVICE_IDS) itself but not these
    two (jax 0.10.2); unset, JAX detects them (TPU pods, SLURM, Open MPI). Raises ValueError on a non-integer.
    """
    out = {}
    for var, arg, what in (("JAX_NUM_PROCESSES", "num_processes", "the number of processes in the run"),
                           ("JAX_PROCESS_ID", "process_id", "this process's index, 0 .. JAX_NUM_PROCESSES - 1")):
        value = os.environ.get(var, "").strip()
        if not value:
            continue
        try:
            out[arg] = int(value)
        except ValueError:
            raise ValueError(f"${var}={value!r} is not an integer: set it to {what}, or unset it to let JAX "
                             f"detect it") from None
    return out


def setup(distributed: bool = False, deterministic: bool = False) -> None:
    """Adds jaxgen's XLA:CPU defaults to XLA_FLAGS (before any JAX computation), with `deterministic` (the config's
    field) XLA:GPU's deterministic kernels, and initialises multi-host JAX (with $JAX_NUM_PROCESSES and
    $JAX_PROCESS_ID when set, see `distributed_args`). Flags the user's XLA_FLAGS already mention are left as set."""
    # Under absl (launch.py) JAX's INFO lines reach stderr; its first, "Unable to initialize backend 'tpu'", reads
    # like a failure on every machine without a TPU. Its warnings stay.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    flags = os.environ.get("XLA_FLAGS", "")
    wanted = (CPU_FLAGS if _runs_on_cpu() and _jaxlib_release() in CPU_FLAGS_JAXLIB else ()) + (
        DETERMINISTIC_FLAGS if deterministic else ())
    for f in wanted:
        if f.split("=")[0] not in flags:
            flags = f"{flags} {f}".strip()
    os.environ["XLA_FLAGS"] = flags
    if distributed:
        kwargs = distributed_args()  # before importing JAX: a bad value fails at once
        import jax  # noqa: PLC0415

        jax.distributed.initialize(**kwargs)
