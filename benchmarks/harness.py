"""What both benchmark scripts share: the timing loop, the PyTorch reference module, the machine description."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# ../shared/reference/torch_reference.py beside the checkout, or the file JAXGEN_TORCH_REFERENCE names (a machine
# that gets only the repository, such as the lent GPU machine, carries a copy).
REFERENCE = Path(os.environ.get("JAXGEN_TORCH_REFERENCE", ROOT.parent / "shared" / "reference" / "torch_reference.py"))


def best_rate(fn, images_per_call: int, seconds: float, repeats: int, warmup: int = 2, sync=None) -> float:
    """Images per second: the best of `repeats` windows of about seconds / repeats each (at least one call),
    after `warmup` untimed calls (compilation). `sync()` waits for the work queued so far (on a GPU, calls return
    before their kernels end): called after the warm-up and to close each window, never per call, so that the
    host's dispatch overlaps the device's work on every side, as in training. `fn` itself must keep the queue
    short (e.g. wait for the call before last, as the training loop does), else a window's sync waits for
    minutes of queued steps."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    best = 0.0
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            if time.perf_counter() - t0 > seconds / repeats:
                break
        sync()
        best = max(best, n * images_per_call / (time.perf_counter() - t0))
    return best


def train_loop(fn, state, data, calls: int):
    """A no-argument function running `calls` calls of a compiled train function as jaxgen.training.loop runs them:
    dispatch, then check the previous call's finite flags (one call behind, which also keeps at most two calls
    queued); its `.sync()` waits for the state (best_rate's `sync`)."""
    import jax
    import numpy as np

    holder = {"s": state, "prev": None}

    def run():
        for _ in range(calls):
            holder["s"], m = fn(holder["s"], data)
            if holder["prev"] is not None:
                assert np.all(jax.device_get(holder["prev"]["finite"]) == 1)
            holder["prev"] = m

    run.sync = lambda: jax.block_until_ready(holder["s"])
    return run


def time_train_fn(fn, create, mesh, data, *, steps_per_call: int, batch: int, seconds: float, repeats: int,
                  warmup: int = 2) -> tuple[float, float]:
    """(images per second, compile seconds) of a jitted train function as training runs it: a fresh state from
    `create`, `fn` compiled ahead of time for it, then `train_loop`'s calls (4 steps' worth, at least one call)
    timed by `best_rate`."""
    import jax

    from jaxgen import parallel

    state = jax.jit(create, out_shardings=parallel.replicated(mesh))()
    t0 = time.perf_counter()
    fn = fn.lower(state, data).compile()
    compile_s = time.perf_counter() - t0
    calls = max(1, 4 // steps_per_call)
    run = train_loop(fn, state, data, calls)
    return best_rate(run, calls * steps_per_call * batch, seconds, repeats, warmup, sync=run.sync), compile_s


class TorchQueue:
    """Keeps at most `depth` PyTorch steps queued on a GPU (waiting on the CUDA event of the step `depth` back):
    the host dispatches the next step while the device runs the last, as jaxgen's loop does, and a window's
    `sync()` never waits for more. On a CPU, steps run as they are called and both do nothing."""

    def __init__(self, torch, dev: str, depth: int = 2):
        self.torch, self.cuda, self.depth, self.events = torch, dev == "cuda", depth, []

    def after_step(self) -> None:
        if self.cuda:
            event = self.torch.cuda.Event()
            event.record()
            self.events.append(event)
            if len(self.events) > self.depth:
                self.events.pop(0).synchronize()

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()
            self.events.clear()


def dcgan64_step(c, mesh, *, batch: int, steps_per_dispatch: int = 1, augment_policy: str = ""):
    """(compiled train function, state creator) of the DCGAN-64 GAN step both GAN scripts time: the model of the
    config `c` (gan_config with its model fields set), non-saturating loss, Adam(2e-4, 0.5), one D update per step,
    G's EMA."""
    import functools

    from jaxgen import parallel
    from jaxgen.models import gan as gan_models
    from jaxgen.objectives import gan as gan_obj
    from jaxgen.training import gan_step, optim
    from jaxgen.training import state as state_lib

    G, D = gan_models.build(c.model, (64, 64, 3), axis_name=parallel.AXIS)
    g_tx, g_lr = optim.make(c.g_optim, 10**6)
    d_tx, d_lr = optim.make(c.d_optim, 10**6)
    create = functools.partial(state_lib.create_gan, G, D, g_tx, d_tx, (64, 64, 3), 0, True)
    fn = gan_step.compile_train(
        mesh, steps_per_dispatch=steps_per_dispatch, generator=G, discriminator=D, g_tx=g_tx, d_tx=d_tx,
        loss_fn=gan_obj.get_loss("non_saturating"), reg_fn=None, reg_weight=0.0, reg_interval=1, d_steps=1,
        batch=batch, augment_policy=augment_policy, ema_half_life=10_000, ema_rampup=0.05, g_lr=g_lr, d_lr=d_lr)
    return fn, create


def check_reference() -> None:
    """Exits with a message naming the fixes unless the PyTorch reference file exists: called before any timing,
    so a run without it does not lose the jaxgen numbers it measured first."""
    if not REFERENCE.is_file():
        sys.exit(f"The PyTorch reference {REFERENCE} does not exist: point JAXGEN_TORCH_REFERENCE at a copy of "
                 f"torch_reference.py (benchmarks/README.md), or time jaxgen alone with --skip-torch")


def load_reference():
    """../shared/reference/torch_reference.py as a module (its models and steps; an instrument, not jaxgen code)."""
    check_reference()
    spec = importlib.util.spec_from_file_location("torch_reference", REFERENCE)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    return ref


def torch_skip_reason(ref) -> str | None:
    """Why PyTorch is not timed here: the machine has an NVIDIA GPU (which JAX will use) and the reference's torch
    sees no CUDA (its numbers would be a CPU's, beside a GPU's). Asked without starting JAX, which would take most
    of the GPU's memory before PyTorch runs."""
    if ref.dev == "cuda" or not (shutil.which("nvidia-smi") or Path("/dev/nvidiactl").exists()):
        return None
    return f"torch {ref.torch.__version__} sees no CUDA device on a machine with an NVIDIA GPU"


def torch_side(rec):
    """The reference module, with its torch described in `rec.env`; None (and `torch_skipped` in the env) where
    torch is not to be timed here (`torch_skip_reason`)."""
    ref = load_reference()
    rec.env.update(torch_info(ref))
    if (why := torch_skip_reason(ref)) is not None:
        rec.env["torch_skipped"] = why
        print(f"PyTorch not timed: {why}", flush=True)
        return None
    return ref


def time_torch(rec, bench, *args) -> None:
    """bench(rec, *args), the PyTorch rows, timed before jaxgen's: a failure is recorded (`torch_error` in the env),
    not raised, so the jaxgen rows still come; then torch's cached GPU memory is given back for JAX."""
    try:
        bench(rec, *args)
    except Exception as e:  # noqa: BLE001 (the jaxgen rows still count)
        rec.env["torch_error"] = f"{type(e).__name__}: {e}"[:1000]
        print(f"PyTorch failed: {rec.env['torch_error']}", flush=True)
    release_torch_memory()  # after bench's models and batches are gone


def release_torch_memory() -> None:
    """Gives the GPU memory PyTorch's allocator keeps cached back, for JAX, which preallocates most of it when it
    starts (after the torch rows, before the jaxgen ones)."""
    import gc

    torch = sys.modules.get("torch")
    gc.collect()
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def torch_info(ref) -> dict:
    """The reference's torch: version, device, and on a GPU its name and CUDA and cuDNN versions."""
    torch = ref.torch
    info = {"torch": torch.__version__, "torch_device": ref.dev, "threads": torch.get_num_threads()}
    if ref.dev == "cuda":
        info.update(torch_gpu=torch.cuda.get_device_name(), torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def commit() -> str:
    """The jaxgen commit measured: $JAXGEN_COMMIT, else .devcarry/COMMIT (the lent machine gets no .git), else git's
    HEAD (with '+dirty' for uncommitted changes); '' where none says."""
    if os.environ.get("JAXGEN_COMMIT"):
        return os.environ["JAXGEN_COMMIT"]
    carried = ROOT / ".devcarry" / "COMMIT"
    if carried.is_file():
        return carried.read_text().strip()
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+dirty" if head and dirty else "")


def machine() -> dict:
    """The host, the run's time (UTC), the command line and the commit."""
    cpu = platform.processor()
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "argv": sys.argv, "commit": commit(),
            "machine": platform.machine(), "processor": cpu, "cpus": os.cpu_count(), "python": sys.version.split()[0]}


def jax_info() -> dict:
    """JAX's side of the environment: versions, the devices and their kind, XLA_FLAGS."""
    import flax
    import jax
    import optax

    return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__, "devices": str(jax.devices()),
            "device_kind": jax.devices()[0].device_kind, "xla_flags": os.environ.get("XLA_FLAGS")}


class Recorder:
    """A benchmark's rows, each printed and the whole written to `path` (JSON: env, results, summary) as soon as it
    is measured: a run stopped by its time limit keeps every row it finished. `summarize(results)` -> summary."""

    def __init__(self, path: str, env: dict, summarize=None):
        self.path, self.env, self.results, self.summarize = path, env, [], summarize
        self.write()

    def add(self, row: dict) -> dict:
        self.results.append(row)
        print(json.dumps(row), flush=True)
        self.write()
        return row

    def summary(self) -> dict:
        return self.summarize(self.results) if self.summarize else {}

    def write(self) -> None:
        if not self.path:
            return
        path = Path(self.path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"env": self.env, "results": self.results, "summary": self.summary()}, indent=1)
                       + "\n")
        tmp.replace(path)
