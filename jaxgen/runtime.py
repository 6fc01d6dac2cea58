"""Process set-up before JAX starts its backends: XLA:CPU defaults and, when asked, jax.distributed."""

from __future__ import annotations

import os

# XLA:CPU (jax 0.10.2) ran the conv-VAE train step 1.5-2.2x faster on this project's 2-core x86 machines with an
# explicitly empty YNN fusion list than with the built-in default (benchmarks/README.md). Applied only when the
# user's XLA_FLAGS do not mention the flag; it has no effect on GPU or TPU.
CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)


def setup(distributed: bool = False) -> None:
    """Adds jaxgen's XLA:CPU defaults to XLA_FLAGS (before any JAX computation) and initialises multi-host JAX."""
    flags = os.environ.get("XLA_FLAGS", "")
    for f in CPU_FLAGS:
        if f.split("=")[0] not in flags:
            flags = f"{flags} {f}".strip()
    os.environ["XLA_FLAGS"] = flags
    if distributed:
        import jax  # noqa: PLC0415

        jax.distributed.initialize()
