"""Two processes on this machine (jax.distributed, a few CPU devices each) train a smoke config over one mesh and
end where one process with as many devices ends: the multi-host path (each process feeds its own devices,
collectives over the global mesh, process 0 writes) run for real."""

import hashlib
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxgen.training import loop, trained
from tests.conftest import CONFIGS, TEST_XLA_FLAGS, config_module

ROOT = Path(__file__).resolve().parent.parent

# argv: coordinator address, process index, config file, workdir: c is its smoke variant, without plots or evals.
_SMOKE_RUN = """
import importlib.util, json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import runtime
runtime.setup()
from jaxgen.training import loop
spec = importlib.util.spec_from_file_location("cfg", sys.argv[3])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
c = mod.get_config("smoke")
c.unlock()
c.output.progress = c.output.plots = False
c.eval.every = 0
"""

# One process gets SIGTERM (a preempted host); JAX's preemption service makes both stop after the same call.
STOP_WORKER = _SMOKE_RUN + """
from tests.signals import signal_at_call
c.eval.extractors, c.train.steps, c.checkpoint.every = (), 20, 20  # saves: the stop's and the end's
c.sample.latents, c.sample.gmm_components = "gmm", 3  # the final images' mixture: fit on process 0, sent to 1
loop.build_task = signal_at_call(loop.build_task, int(sys.argv[5]), process=1)
try:
    final = loop.train_and_evaluate(c, sys.argv[4])
    print("FINAL " + json.dumps({k: v for k, v in final.items() if k != "eval_seconds"}), flush=True)
    import hashlib
    from jaxgen.training import trained
    # samples over both processes' devices, each drawing from its process's copy of process 0's mixture
    print("SAMPLES " + hashlib.sha256(trained.load(c, sys.argv[4]).samples(8).tobytes()).hexdigest(), flush=True)
except loop.RunStopped as e:
    print("STOPPED", e, flush=True)
"""


FIRST_WORKER = """
import pathlib, sys, time
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import parallel
flag = pathlib.Path(sys.argv[3])

def make():
    if jax.process_index() == 0:
        time.sleep(8.0)  # past the collectives' timeout (the test sets 4 s): the others wait on a barrier
        flag.write_text("made by 0")
        return "made"
    return flag.read_text()  # fails unless process 0 has finished

print("RESULT", parallel.process_0_first(make, needed=not flag.exists(), what="make the flag"), flush=True)

# An image folder both processes read: process 0 decodes and caches it, then process 1 reads its cache.
import logging
logging.basicConfig(level=logging.INFO, force=True)  # orbax (the barrier) may have set a handler
from jaxgen import data
from jaxgen.config import gan_config
cfg = gan_config().data
cfg.name, cfg.path, cfg.data_dir, cfg.resolution = "image_folder", sys.argv[4], sys.argv[5], 8
images = data.load(cfg, "train").image
print("RESULT folder", images.shape, int(images.sum()), flush=True)

for failing in (0, 1):
    def fail():
        if jax.process_index() == failing:
            raise OSError("disk full")
        return "ran"

    try:
        parallel.process_0_first(fail, needed=jax.process_index() == 1, what="fill the cache")
    except Exception as e:
        print("ERROR", type(e).__name__, e, flush=True)

# Last: a wait past $JAXGEN_PROCESS_0_TIMEOUT_S is an error on every process, not a hang.
import os
os.environ["JAXGEN_PROCESS_0_TIMEOUT_S"] = "1"
try:
    parallel.process_0_first(lambda: time.sleep(3 if jax.process_index() == 0 else 0), needed=True, what="wait")
except TimeoutError as e:
    print("ERROR", type(e).__name__, str(e).split(" [jax:")[0], flush=True)
"""


CHECKPOINT_WORKER = """
import sys
from pathlib import Path
import jax
import jax.numpy as jnp
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import parallel
from jaxgen.config import vae_config
from jaxgen.training import checkpoint
cfg = vae_config().checkpoint
mesh = parallel.make_mesh()
state = jax.jit(lambda: {"step": jnp.int32(5), "w": jnp.ones(3)}, out_shardings=parallel.replicated(mesh))()
if jax.process_index() == 0:  # only process 0's workdir holds a checkpoint
    workdir = Path(sys.argv[3])
else:
    workdir = Path(sys.argv[4])
target = checkpoint.abstract_like(jax.eval_shape(lambda: state), parallel.replicated(mesh))
try:
    checkpoint.restore_newest(workdir, cfg, target)
    print("RESTORED", flush=True)
except parallel.ProcessesDisagreeError as e:
    print("ERROR", e, flush=True)
"""


# One shared workdir with checkpoints 5 and 10; process 1 alone cannot read step 10's fingerprint item.
AGREE_WORKER = """
import sys
from pathlib import Path
import jax
import jax.numpy as jnp
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import parallel
from jaxgen.config import vae_config
from jaxgen.training import checkpoint
mesh = parallel.make_mesh()
target = checkpoint.abstract_like(jax.eval_shape(lambda: {"step": jnp.int32(0), "w": jnp.ones(3)}),
                                  parallel.replicated(mesh))
if jax.process_index() == 1:
    read = checkpoint._saved_fingerprint
    def failing(mgr, step):
        if step == 10:
            raise OSError("a read that failed on this host only")
        return read(mgr, step)
    checkpoint._saved_fingerprint = failing
mgr, state = checkpoint.restore_newest(Path(sys.argv[3]), vae_config().checkpoint, target, move_broken=False)
print("RESTORED", int(state["step"]), flush=True)
mgr.close()

# Then a failure inside Orbax's own restore on process 1 only: its array handler cannot read step 10's arrays.
if jax.process_index() == 1:
    checkpoint._saved_fingerprint = read
    import orbax.checkpoint as ocp
    handler = type(ocp.type_handlers.get_type_handler(jax.Array))
    deserialize = handler.deserialize
    async def failing_deserialize(self, infos, args=None):
        if any(Path(i.parent_dir).parent.name == "10" for i in infos):
            raise OSError("a shard that failed on this host only")
        return await deserialize(self, infos, args)
    handler.deserialize = failing_deserialize
mgr, state = checkpoint.restore_newest(Path(sys.argv[3]), vae_config().checkpoint, target, move_broken=False)
print("RESTORED", int(state["step"]), flush=True)
"""


# One shared workdir whose best.json process 1 read stale (an older, better value): process 0's value and record
# decide, so both take part in the save (else process 0 would wait at Orbax's barrier for ever).
BEST_WORKER = """
import json, sys
from pathlib import Path
import jax
import jax.numpy as jnp
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import parallel
from jaxgen.training import best_checkpoint
mesh = parallel.make_mesh()
state = jax.jit(lambda: {"step": jnp.int32(7), "w": jnp.ones(3)}, out_shardings=parallel.replicated(mesh))()
keeper = best_checkpoint.BestKeeper(Path(sys.argv[3]), "elbo", "max", resume_step=7, split="test")
if jax.process_index() == 1:
    keeper.record = {"step": 3, "metric": "elbo", "mode": "max", "value": -50.0, "split": "test"}
saved = keeper.update(state, {"elbo": -100.1 - jax.process_index()})  # not a float32: kept whole
keeper.close()
print("SAVED", saved, keeper.record["value"], flush=True)
"""


CONFIG_WORKER = """
import sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2]))
from jaxgen import parallel
from jaxgen.config import vae_config
from jaxgen.training import run_record
c = vae_config()
c.data.data_dir = f"/data/host{jax.process_index()}"  # where each host finds its files may differ
run_record.check_same_config(c)
print("SAME", flush=True)
c.seed = jax.process_index()
try:
    run_record.check_same_config(c)
except parallel.ProcessesDisagreeError as e:
    print("DIFFER", e, flush=True)
"""


def _free_port() -> int:
    """A free port for a job's coordinator, below the kernel's ephemeral range: a port the kernel hands out (bind to
    port 0) may be taken, before the coordinator binds it, by any connection's local end (another test's processes
    connecting to their coordinator), which draws from that range; below it only a listening socket can take it."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):  # not Linux: the kernel's choice
        low = 0
    rng = random.Random()  # not the tests' seeded one: two workers must not draw the same ports
    for _ in range(100):
        port = rng.randrange(10_000, low) if low > 11_000 else 0
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise AssertionError("no free port")


def _two_processes(worker: str, *args: str, timeout: int = 300, devices: int = 4) -> list[tuple[str, str]]:
    """(stdout, stderr) of `worker` run as processes 0 and 1 of one jax.distributed job, each with `devices` CPU
    devices (a process that fails fails the test, with its stderr)."""
    address = f"127.0.0.1:{_free_port()}"
    return _run_two([[sys.executable, "-c", worker, address, str(i), *args] for i in (0, 1)], [{}, {}], timeout,
                    devices)


def _run_two(commands: list[list[str]], envs: list[dict], timeout: int, devices: int,
             codes: list[int] | None = None) -> list[tuple[str, str]]:
    """(stdout, stderr) of each command; each must exit 0, or, with `codes` (filled with the exit statuses), may
    fail."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}",
           "PYTHONPATH": str(ROOT)}
    # Output to files, not pipes: a process blocked on a full pipe would stall the other at a collective.
    files = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in (0, 1)]
    procs = [subprocess.Popen(cmd, env={**env, **extra}, stdout=out, stderr=err, text=True, cwd=ROOT)
             for cmd, extra, (out, err) in zip(commands, envs, files)]
    try:
        deadline = time.monotonic() + timeout
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for p in procs:  # a timeout or a hang leaves nothing running on the machine
            if p.poll() is None:
                p.kill()
                p.wait()
    outs = []
    for out, err in files:
        out.seek(0), err.seek(0)
        outs.append((out.read(), err.read()))
        out.close(), err.close()
    if codes is not None:
        codes.extend(p.returncode for p in procs)
        return outs
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


def test_the_documented_pod_command_trains_as_two_processes_like_one(tmp_path, first_devices):
    """README, GPUs and pods: the same launch.py command on every host with --jax_distributed and the coordinator,
    process count and index in the environment. Two processes of 2 CPU devices train gan_mnist:smoke over one
    4-device mesh and end where one process with 4 devices ends: the same metrics, FID (the samples, features and
    reference statistics gathered over both processes) and best checkpoint (2 + 2 against 4, not 4 + 4 against 8:
    8 faked devices in each of the three processes cost more on 2 cores). The VAE's two-process run is checked
    against one process by the SIGTERM test below (stopped, resumed, and still equal to an uninterrupted run)."""
    overrides = {"output.progress": False, "output.plots": False, "eval.every": 0,
                 "data.validation_examples": 128}  # a held-out split: its evaluation and the best checkpoint
    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "launch.py", "--config=configs/gan_mnist.py:smoke", f"--workdir={tmp_path / 'multi'}",
           "--jax_distributed", *(f"--config.{k}={v}" for k, v in overrides.items())]
    envs = [{"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)} for i in (0, 1)]
    outs = _run_two([cmd, cmd], envs, timeout=300, devices=2)
    for _, err in outs:
        assert "4 devices (2 processes, 2 on this one: cpu)" in err and "Done: 20 steps" in err
    finals = [re.search(r"Done: .* final evaluation, images and saves in [\d.]+ s; (.*)", err).group(1)
              for _, err in outs]
    assert finals[0] == finals[1]  # process 1 ends with the final numbers of process 0, which writes them
    final = json.loads((tmp_path / "multi" / "eval.json").read_text())
    c = config_module(CONFIGS / "gan_mnist.py").get_config("smoke")
    c.unlock()
    for k, v in overrides.items():
        section, field = k.split(".")
        c[section][field] = v
    first_devices(4)
    single = loop.train_and_evaluate(c, tmp_path / "single")  # one process, 4 devices
    for key, value in single.items():
        if key != "eval_seconds" and isinstance(value, float):
            assert final[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert single["sample_quality"]
    for name, block in single["sample_quality"].items():
        assert final["sample_quality"][name]["fid"] == pytest.approx(block["fid"], rel=1e-4), name
    assert sorted(p.name for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()) == ["10", "20"]
    best = [json.loads((tmp_path / d / "best" / "best.json").read_text()) for d in ("multi", "single")]
    assert best[0]["split"] == "validation" and best[0]["step"] == best[1]["step"] == 20
    assert best[0]["value"] == pytest.approx(best[1]["value"], rel=1e-4)

    # --mode=sample on the pod's workdir, as two processes of one device each (sampling needs no train batch that
    # divides the device count): they agree that the checkpoints are there and on the config before restoring
    # (collectives), and process 0 alone writes the samples and log_sample.txt.
    sample = [*cmd, "--mode=sample", "--config.sample.num=16"]
    outs = _run_two([sample, sample], envs, timeout=200, devices=1)
    for _, err in outs:
        assert "--mode=sample on the newest checkpoint: step 20" in err
    with np.load(tmp_path / "multi" / "samples" / "step_0000020.npz") as z:
        assert z["images"].shape == (16, 28, 28, 1) and int(z["step"]) == 20
    assert "Wrote 16 samples of step 20" in (tmp_path / "multi" / "log_sample.txt").read_text()


def test_sigterm_to_one_process_stops_both_at_one_step_and_the_job_resumes(tmp_path, first_devices):
    """A pod loses one host: SIGTERM reaches only process 1. Both processes stop after the same compiled call
    (JAX's preemption service), checkpoint that step together and raise RunStopped; the same job started again
    resumes and ends where an uninterrupted run ends (two processes of 2 devices against one of 4: 8 faked devices
    in each of the three processes cost ~15% more on 2 cores)."""
    path, work = str(CONFIGS / "vae_mnist.py"), str(tmp_path / "multi")
    said = [[line for line in out.splitlines() if line.startswith(("STOPPED", "FINAL"))]
            for out, _ in _two_processes(STOP_WORKER, path, work, "3", devices=2)]
    assert said[0] == said[1] and len(said[0]) == 1 and said[0][0].startswith("STOPPED stopped by SIGTERM at step ")
    step = int(said[0][0].split("at step ")[1].split(",")[0])
    assert 0 < step < 20
    assert max(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()) == step
    outs = _two_processes(STOP_WORKER, path, work, "0", devices=2)
    assert f"Resumed from the checkpoint at step {step}" in outs[0][1]  # process 0 logs
    finals = [json.loads(out.split("FINAL ")[-1].splitlines()[0]) for out, _ in outs]
    c = config_module(path).get_config("smoke")
    c.unlock()
    c.output.progress = c.output.plots = False
    c.eval.every, c.eval.extractors, c.train.steps = 0, (), 20
    c.sample.latents, c.sample.gmm_components = "gmm", 3
    first_devices(4)
    single = loop.train_and_evaluate(c, tmp_path / "single")  # one process, 4 devices, no stop
    for key, value in single.items():
        if key != "eval_seconds" and isinstance(value, float):
            for final in finals:
                assert final[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key
    assert (tmp_path / "multi" / "eval.json").is_file() and (tmp_path / "multi" / "checkpoints" / "20").is_dir()
    fits = [json.loads((tmp_path / d / "eval.json").read_text())["latent_gmm"] for d in ("multi", "single")]
    assert fits[0]["examples"] == fits[1]["examples"] > 0 and fits[0]["components"] == 3
    assert fits[0]["log_likelihood_per_code"] == pytest.approx(fits[1]["log_likelihood_per_code"], rel=1e-3)
    # The pod's samples of its checkpoint are one process's: process 1's devices drew from process 0's mixture.
    hashes = [out.split("SAMPLES ")[-1].split()[0] for out, _ in outs]
    one = hashlib.sha256(trained.load(c, tmp_path / "multi").samples(8).tobytes()).hexdigest()
    assert hashes[0] == hashes[1] == one


@pytest.mark.parametrize("config", ["gan_mnist", "vae_mnist"])
def test_process_0_draws_its_images_on_its_own_device(config, tmp_path, monkeypatch):
    """Only process 0 writes images. A compiled call it made alone on the replicated state would be a program over
    every process's devices, which hangs a real pod (CPU processes let it pass, so the two-process test cannot
    tell): every call behind save_images takes host arrays or single-device ones."""
    import jax

    from jaxgen.evaluation import vae as vae_eval

    c = config_module(CONFIGS / f"{config}.py").get_config("smoke")
    c.unlock()
    if config == "vae_mnist":
        c.train.ema_half_life = 32  # EMA params in the state, as gan_mnist keeps G's
    task = loop.build_task(c, tmp_path)
    state = task.create()
    calls = []

    def guard(fn):
        def call(*args, **kwargs):
            for leaf in jax.tree.leaves((args, kwargs)):
                if isinstance(leaf, jax.Array):
                    assert len(leaf.sharding.device_set) == 1, f"{fn} got an array over {leaf.sharding}"
            calls.append(fn)
            return fn(*args, **kwargs)
        return call

    for name in ("sample_images", "reconstruct", "encode_mean", "traversal"):
        monkeypatch.setattr(vae_eval, name, guard(getattr(vae_eval, name)))
    if config == "gan_mnist":
        task.__dict__["_generate"] = guard(task._generate)
    task.save_images(state)
    assert len(calls) >= 2 and (tmp_path / "images" / "samples.png").is_file()


def test_process_0_prepares_data_first_and_its_failure_reaches_the_others(tmp_path):
    """How datasets are prepared on a pod: process 0 downloads, prepares and caches first (however long: the others
    wait on the coordination service, not in a collective that times out), the others then read its cache; when
    any process fails, every process stops (none waits for ever)."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    for i in range(6):
        Image.new("RGB", (12, 10), (40 * i, 0, 0)).save(tmp_path / "imgs" / f"{i}.png")
    address = f"127.0.0.1:{_free_port()}"
    args = (str(tmp_path / "flag"), str(tmp_path / "imgs"), str(tmp_path / "data"))
    # A device collective would give up on a late process after 4 s (CPU's default: 30 minutes, GPU's: never).
    env = {"XLA_FLAGS": f"--xla_force_host_platform_device_count=1 --xla_cpu_collective_timeout_seconds=4 "
                        f"{TEST_XLA_FLAGS}"}
    outs = _run_two([[sys.executable, "-c", FIRST_WORKER, address, str(i), *args] for i in (0, 1)], [env, env],
                    timeout=120, devices=1)
    said = [[line for line in out.splitlines() if line.startswith(("RESULT", "ERROR"))] for out, _ in outs]
    other = "ERROR RuntimeError process(es) [{}] failed to fill the cache; their logs say why"
    late = ("ERROR TimeoutError waited 1 s for every process to wait; a longer wait: set JAXGEN_PROCESS_0_TIMEOUT_S "
            "(seconds) on every process")
    assert said[0][0] == "RESULT made" and said[0][2:] == ["ERROR OSError disk full", other.format(1), late]
    assert said[1][0] == "RESULT made by 0" and said[1][2:] == [other.format(0), "ERROR OSError disk full", late]
    assert said[0][1] == said[1][1] and said[0][1].startswith("RESULT folder (6, 8, 8, 3)")  # the same images
    assert "Decoding 6 images" in outs[0][1] and "Decoding" not in outs[1][1]  # decoded once, by process 0
    assert len(list((tmp_path / "data" / "jaxgen_cache" / "image_folder").glob("*/train.npz"))) == 1


def test_processes_agree_on_which_checkpoint_they_read(tmp_path):
    """A read that fails on one host only makes every process treat that checkpoint as unreadable: both resume
    from step 5, none hangs in the other's collective, none trains on from another step. Twice: step 10's
    fingerprint on process 1, then step 10's arrays inside Orbax's restore on process 1."""
    import jax.numpy as jnp

    from jaxgen.config import vae_config
    from jaxgen.training import checkpoint

    mgr = checkpoint.manager(tmp_path, vae_config().checkpoint)
    for step in (5, 10):
        checkpoint.save(mgr, {"step": jnp.int32(step), "w": jnp.ones(3) * step})
        mgr.wait_until_finished()
    mgr.close()
    outs = _two_processes(AGREE_WORKER, str(tmp_path), timeout=120, devices=1)
    for out, err in outs:
        assert [line for line in out.splitlines() if line.startswith("RESTORED")] == ["RESTORED 5"] * 2, out + err
    assert outs[0][1].count("process(es) [1] could not read it") == 2  # process 0 logs why it skipped step 10
    assert "a shard that failed on this host only" in outs[1][1]  # and process 1 its own error


def test_processes_that_see_different_checkpoints_stop_before_restoring(tmp_path):
    """A workdir that is not shared (each host its own local disk): process 0 finds a checkpoint, process 1 none.
    Orbax's restore would wait for ever at its barrier on process 0; both stop at once, naming the fix."""
    import jax.numpy as jnp

    from jaxgen.config import vae_config
    from jaxgen.training import checkpoint

    mgr = checkpoint.manager(tmp_path / "host0", vae_config().checkpoint)
    checkpoint.save(mgr, {"step": jnp.int32(5), "w": jnp.ones(3)})
    mgr.wait_until_finished()
    mgr.close()
    outs = _two_processes(CHECKPOINT_WORKER, str(tmp_path / "host0"), str(tmp_path / "host1"), timeout=120, devices=1)
    for out, _ in outs:
        said = [line for line in out.splitlines() if line.startswith(("RESTORED", "ERROR"))]
        assert len(said) == 1 and said[0].startswith("ERROR the processes of this run disagree on the checkpoints"), out
        assert "process 0: [1, 5]; process 1: [0, -1]" in said[0] and "a filesystem all hosts share" in said[0]


def test_the_best_checkpoint_is_decided_by_process_0_even_where_another_read_a_stale_record(tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 3, "metric": "elbo", "mode": "max",
                                                              "value": -120.0, "split": "test"}))
    outs = _two_processes(BEST_WORKER, str(tmp_path), timeout=120, devices=1)
    for out, err in outs:
        assert [line for line in out.splitlines() if line.startswith("SAVED")] == ["SAVED True -100.1"], out + err
    assert json.loads((tmp_path / "best" / "best.json").read_text())["value"] == -100.1
    assert (tmp_path / "best" / "7").is_dir()


def test_processes_with_different_device_counts_stop_naming_them(monkeypatch):
    """3 devices on one process and 1 on the other failed in the first gather with "cannot reshape array of size 4
    into shape (2,3)"; every process now stops on the counts it can see (a unit check: JAX's CPU processes cannot
    be started with unequal counts here)."""
    from types import SimpleNamespace

    from jaxgen import parallel

    monkeypatch.setattr(jax, "devices", lambda: [SimpleNamespace(process_index=i) for i in (0, 0, 0, 1)])
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(parallel.ProcessesDisagreeError, match=r"different numbers of devices \(process 0: 3, "
                                                              r"process 1: 1\).*JAX_LOCAL_DEVICE_IDS"):
        parallel.allgather_ints(1)
    monkeypatch.setattr(jax, "devices", lambda: [SimpleNamespace(process_index=i) for i in (0, 0, 1, 1)])
    parallel.check_equal_device_counts()


def test_processes_started_with_different_configs_stop_naming_the_fields(tmp_path):
    """A host started with another seed built other initial weights and trained apart from the others, silently."""
    outs = _two_processes(CONFIG_WORKER, timeout=120, devices=1)
    for i, (out, err) in enumerate(outs):
        lines = [line for line in out.splitlines() if line.startswith(("SAME", "DIFFER"))]  # not Gloo's
        assert lines[0] == "SAME" and lines[1].startswith("DIFFER"), out + err
        assert f"different configs: seed (here {i}) differ. Start every process with the same command" in lines[1]


def test_an_error_on_process_0_alone_ends_the_other_process_at_once(tmp_path):
    """Process 0 alone writes the metrics: where it cannot (here its TensorBoard folder is a file), it stopped
    while process 1 waited in its next collective, then both crashed 5 minutes later (JAX's shutdown barrier).
    Process 0 now exits without that barrier, which ends process 1 within seconds."""
    work = tmp_path / "run"
    work.mkdir()
    (work / "tb").write_text("not a folder")
    address = f"127.0.0.1:{_free_port()}"
    cmd = [sys.executable, "launch.py", "--config=configs/vae_mnist.py:smoke", f"--workdir={work}",
           "--jax_distributed", "--config.output.progress=False"]
    envs = [{"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)} for i in (0, 1)]
    codes, start = [], time.monotonic()
    outs = _run_two([cmd, cmd], envs, timeout=100, devices=1, codes=codes)  # before: TimeoutExpired
    assert time.monotonic() - start < 100, outs[1][1][-3000:]  # not the 300 s barrier
    assert codes[0] == 1 and codes[1] != 0, codes
    assert "Traceback" in outs[0][1] and "/tb" in outs[0][1], outs[0][1]



def test_a_process_that_stops_on_its_flags_stops_the_others_at_once(tmp_path):
    """A --config-less command on a workdir one host does not share (here process 1's workdir has no
    command.json): process 1 stopped on its flags before the job started, and process 0 waited for it at
    jax.distributed's start until that timed out (5 minutes). Process 1 now joins the job and fails its first
    collective, so both stop within seconds, each saying why."""
    work = tmp_path / "run"
    work.mkdir()
    address = f"127.0.0.1:{_free_port()}"
    given = [sys.executable, "launch.py", "--config=configs/vae_mnist.py:smoke", f"--workdir={work}",
             "--jax_distributed", "--mode=eval"]
    taken = [sys.executable, "launch.py", f"--workdir={tmp_path / 'not_shared'}", "--jax_distributed", "--mode=eval"]
    envs = [{"JAX_COORDINATOR_ADDRESS": address, "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": str(i)} for i in (0, 1)]
    codes, start = [], time.monotonic()
    outs = _run_two([given, taken], envs, timeout=100, devices=1, codes=codes)
    assert time.monotonic() - start < 100, outs[0][1][-3000:]  # not jax.distributed's 300 s start
    assert codes == [1, 1], (codes, outs[0][1][-2000:], outs[1][1][-2000:])
    assert "the processes of this run disagree on whether every process parsed its flags (process 0: [1]; " \
           "process 1: [0]). The process(es) with 0 stopped on their flags" in outs[0][1], outs[0][1][-3000:]
    assert "FATAL Flags parsing error: --config is required: the workdir" in outs[1][1], outs[1][1][-3000:]
    assert "give --workdir a folder every host shares" in outs[1][1]
