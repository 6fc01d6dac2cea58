"""Every test runs on 8 faked CPU devices, so the sharded paths are exercised on a laptop."""

import os
import subprocess
import sys
import tempfile

# Tests compile far more than they run (tiny models, few steps), so XLA:CPU's LLVM optimisation of the compiled code
# is skipped: a smoke run from a cold cache took 13 s instead of 23 s on 2 cores, with the same numbers. The processes
# tests start get these flags too (TEST_XLA_FLAGS); launch.py's own defaults are added to them as for any user.
# An XLA_FLAGS that sets the level itself (--xla_backend_optimization_level=2: as users compile) is kept.
#
# XLA:CPU's older elemental emitters, not its fusion emitters: a third less CPU time compiling and running
# (tests/test_vae_step.py and tests/test_gan_models.py from a cold cache: 126 -> 84 s on 2 cores). Only with the
# jaxlib release it was checked with: XLA aborts on a flag it does not know, and a later release may drop it.
#
# The LLVM module of a program made in one piece, not split into 32 for a thread pool to compile: a test's programs
# are small and the xdist workers keep the cores busy. 9% less CPU time (test_gan_models, test_layers and
# test_iwae_family without the persistent cache, 2 workers on 2 Xeon cores, 3 runs each alternated: 167 -> 153 s).
# With the same release guard.
from jaxgen import runtime  # noqa: E402 (imports no JAX: XLA_FLAGS is still to be set)

# The user's XLA_FLAGS are those the session started with, kept for its xdist workers: they import this file again
# under the controller's XLA_FLAGS, which already hold the flags below. Read there, every flag was taken for the
# user's and left out of TEST_XLA_FLAGS, so the processes tests started compiled with LLVM's full optimisation and
# the fusion emitters: 2-3x their CPU time (the two multi-host tests run together by two workers: their processes
# 243 -> 110 CPU s once they had the flags).
_user_flags = os.environ.setdefault("JAXGEN_TESTS_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
_CHECKED_RELEASE_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_cpu_parallel_codegen_split_count=1")
_test_flags = [f for f in ("--xla_backend_optimization_level=0",
                           *(_CHECKED_RELEASE_FLAGS if runtime._jaxlib_release() == (0, 10) else ()))
               if f.split("=")[0] not in _user_flags]
_DEVICE_COUNT = "--xla_force_host_platform_device_count"
# The processes tests start: the user's flags and these, without a device count (each test sets its own).
TEST_XLA_FLAGS = " ".join([*(f for f in _user_flags.split() if not f.startswith(_DEVICE_COUNT)), *_test_flags])
os.environ["XLA_FLAGS"] = " ".join([*_user_flags.split(), f"{_DEVICE_COUNT}=8", *_test_flags])
# One persistent XLA compilation cache for the test session, its xdist workers and the processes tests start: a
# smoke config's train step compiles once, not in every test that trains it (set the variable to choose the dir).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "jaxgen-tests-xla-cache"))
# Every compilation, not only those over JAX's default 1 s: the many small ones (evaluation, sampling, eager ops)
# recur in each process a test starts (a launch.py smoke run from a warm cache: 10.6 s instead of 13.2 s).
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The data dir (jaxgen's caches: the metric classifier, FID's reference statistics) and matplotlib's font cache in
# one folder of this test session, shared by its xdist workers and the processes tests start (they inherit the
# environment), removed at its end: tests never write into ~/tensorflow_datasets, and a cache left by an earlier
# run (or by another jaxgen) cannot hide a change.
if "JAXGEN_TESTS_DATA_DIR" not in os.environ:  # the session's first process (the xdist controller)
    import atexit
    import shutil

    os.environ["JAXGEN_TESTS_DATA_DIR"] = tempfile.mkdtemp(prefix="jaxgen-tests-data-")
    atexit.register(shutil.rmtree, os.environ["JAXGEN_TESTS_DATA_DIR"], ignore_errors=True)
os.environ["TFDS_DATA_DIR"] = os.environ["JAXGEN_TESTS_DATA_DIR"]
os.environ["MPLCONFIGDIR"] = os.path.join(os.environ["JAXGEN_TESTS_DATA_DIR"], "matplotlib")
runtime.setup()

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"


def launch(*args, cwd=ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    """launch.py with `args` in a fresh process on this machine's one CPU device (no faked devices: as a user runs
    it), its output captured; `env`: variables to set."""
    env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "launch.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def started_together(fn, jobs: int = 2, gap: float = 0.1) -> list:
    """fn()'s results from `jobs` threads started `gap` seconds apart (jobs of a sweep started at once), in the
    order they finished."""
    import threading
    import time

    got = []
    threads = [threading.Thread(target=lambda: got.append(fn())) for _ in range(jobs)]
    for t in threads:
        t.start()
        time.sleep(gap)
    for t in threads:
        t.join()
    return got


def config_module(path):
    """The module of a config file (its get_config and VARIANTS)."""
    spec = importlib.util.spec_from_file_location(Path(path).stem + "_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def gan_mnist_config(variant: str = "smoke", **over):
    """configs/gan_mnist.py:<variant>, an unlocked copy with no progress bar, no plots and no sample-quality metrics,
    with `over`'s fields ('section.name': value) set."""
    c = config_module(CONFIGS / "gan_mnist.py").get_config(variant)
    c.unlock()
    c.output.progress = c.output.plots = False
    c.eval.extractors = ()
    for k, v in over.items():
        section, name = k.split(".")
        c[section][name] = v
    return c


@pytest.fixture
def smoke_config():
    """configs/vae_mnist.py:smoke, unlocked copy with no progress bar, no plots and no sample-quality metrics
    (tests/test_quality.py, the launch end-to-end test and the gan outputs test cover those)."""
    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.unlock()
    c.output.progress = False
    c.output.plots = False
    c.eval.extractors = ()
    return c


def pytest_report_header(config):
    return f"jax {jax.__version__}, {jax.device_count()} devices ({jax.devices()[0].platform})"


def pytorch_fid(module: str):
    """(torch, pytorch_fid.<module>), or a skip. PyPI's torchvision is built against CUDA torch: beside a CPU torch
    its C++ ops (detection ops pytorch-fid never calls) do not load and registering their fake kernels fails at
    import, so that import is retried with the registration skipped."""
    torch = pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.library, "register_fake", lambda *a, **k: (lambda f: f))
            import torchvision  # noqa: F401
    return torch, pytest.importorskip(f"pytorch_fid.{module}")


@pytest.fixture
def first_devices(monkeypatch):
    """first_devices(n): tasks built afterwards in the test train on the first n devices (parallel.make_mesh's
    default), e.g. to match a run of fewer processes or devices."""
    from jaxgen import parallel

    make_mesh = parallel.make_mesh

    def use(n: int) -> None:
        monkeypatch.setattr(parallel, "make_mesh", _on_first_devices(make_mesh, n))

    return use


def _on_first_devices(make_mesh, n: int):
    """parallel.make_mesh whose default is the first n devices."""
    return lambda devices=None: make_mesh(jax.devices()[:n] if devices is None else devices)


@pytest.fixture
def one_device(first_devices):
    """Tasks built in the test (and parallel.make_mesh()) are on one device, as a user checks an install: for
    end-to-end tests whose sharded paths have tests of their own (8 faked devices on 2 cores cost 15-30% more CPU
    time, gan_cifar10's smoke run 2.5x). A module applies it to all its tests with
    `pytestmark = pytest.mark.usefixtures("one_device")`; a test there that needs the 8 asks with first_devices(8)
    or passes jax.devices()."""
    first_devices(1)


@pytest.fixture(scope="session")
def _trained_vae(tmp_path_factory):
    """A workdir of configs/vae_mnist.py:smoke trained for 10 steps (one per call, a record every 5, one checkpoint
    at 10, no evaluation during training) on the first device (as `one_device`): made once per test process. One
    step per call, not 5: XLA compiles the fused call's 5 unrolled steps in 4.9 CPU s, one step in 0.8 s."""
    from jaxgen import parallel
    from jaxgen.training import loop

    c = config_module(CONFIGS / "vae_mnist.py").get_config("smoke")
    c.unlock()
    c.output.progress, c.output.plots, c.eval.extractors = False, False, ()
    c.train.steps, c.train.steps_per_dispatch, c.train.log_every = 10, 1, 5
    c.checkpoint.every, c.eval.every = 10, 0
    workdir = tmp_path_factory.mktemp("trained_vae") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(parallel, "make_mesh", _on_first_devices(parallel.make_mesh, 1))
        loop.train_and_evaluate(c, workdir)
    return c, workdir


@pytest.fixture
def trained_vae(_trained_vae, tmp_path):
    """(config, workdir): a copy of that trained workdir in this test's tmp_path, and its config (a copy too)."""
    import shutil

    c, workdir = _trained_vae
    copy = tmp_path / "trained"
    shutil.copytree(workdir, copy)
    return c.copy_and_resolve_references(), copy


# The longest tests (30-100 s each on 2 cores, most of it compiling in the processes they start), started first:
# pytest-xdist hands tests out in collection order, and one of these started last would run alone at the end.
_LONGEST_FIRST = (
    "tests/test_multihost.py::test_sigterm_to_one_process_stops_both_at_one_step_and_the_job_resumes",
    "tests/test_multihost.py::test_the_documented_pod_command_trains_as_two_processes_like_one",
    "tests/test_quality.py::test_the_inception_extractor_in_training_gives_fid_and_is_from_the_biasless_logits",
    "tests/test_launch.py::test_launch_smoke_end_to_end_then_resume",
    "tests/test_configs.py::test_every_config_has_a_smoke_variant_that_trains[gan_cifar10]",
    "tests/test_resume.py::test_a_run_stopped_by_sigterm_and_resumed_equals_a_straight_run_bitwise",
    # 40-52 s each on 2 Xeon cores (2026-12-01):
    "tests/test_failures.py::test_the_file_size_limit_stops_a_run_with_one_line_and_the_run_resumes",
    "tests/test_shapes2d.py::test_vae_shapes2d_smoke_trains_and_its_evaluations_give_mig",
    "tests/test_gan.py::test_gan_resume_is_bitwise_for_the_whole_state",
)


def pytest_collection_modifyitems(items):
    rank = {nodeid: i for i, nodeid in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid, len(rank)))  # stable: the others keep their order
