"""Checkpoints: resume is bitwise, a checkpoint moves between device counts, a broken one falls back, one written by
another config stops the run and stays, and turning gradient clipping on or off keeps the state's tree."""

import asyncio
import functools
import json
import logging
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import parallel, runtime
from jaxgen.training import best_checkpoint, checkpoint, loop, modes, optim, run_record, stopping
from jaxgen.training import state as state_lib
from jaxgen.training.workdir import WorkdirError
from tests.signals import signal_at_call

# A task a test here builds (and parallel.make_mesh()) is on one device: checkpoints, resumes and their failures do
# not depend on the device count, and 8 faked devices on 2 cores cost ~15% more. The tests of the device count ask
# for every device by name, and the SIGTERM test asks for the 8 (a bitwise resume on the sharded path).
pytestmark = pytest.mark.usefixtures("one_device")


def _final_state(cfg, workdir):
    task = loop.build_task(cfg, workdir)
    mgr, state = loop.restore(task)
    mgr.close()
    return state


def test_a_run_stopped_by_sigterm_and_resumed_equals_a_straight_run_bitwise(smoke_config, tmp_path, monkeypatch,
                                                                            first_devices):
    """N steps, stop, resume: the whole state equals that of an uninterrupted run, bit for bit (CPU).

    A scheduler's SIGTERM arrives during the 3rd compiled call: the run finishes that call, checks it, writes a
    train record and a checkpoint at the step it reached (not a multiple of checkpoint.every), skips that step's
    eval (a notice leaves seconds) and raises RunStopped; the same command evaluates that step first and ends
    bitwise where an uninterrupted run ends. A --mode=eval of that checkpoint in between (its record says so) does
    not stand in for the training run's evaluation, which offers the step to the best checkpoint."""
    import signal

    from jaxgen.reporting.writer import read

    first_devices(8)
    c = smoke_config
    c.eval.every = 0
    c.checkpoint.every = 8  # 8 steps: the stop at 3, an eval at 6 after it and the end (20 took ~7 s more)
    c.train.steps = 8
    loop.train_and_evaluate(c, tmp_path / "straight")
    build = loop.build_task
    monkeypatch.setattr(loop, "build_task", signal_at_call(build, 3))
    k = c.train.steps_per_dispatch
    c.eval.every = 3 * k  # the stop lands on an eval step
    with pytest.raises(loop.RunStopped, match=f"stopped by SIGTERM at step {3 * k}"):
        loop.train_and_evaluate(c, tmp_path / "stopped")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the loop
    assert sorted(int(p.name) for p in (tmp_path / "stopped" / "checkpoints").iterdir() if p.name.isdigit()) == [3 * k]
    records = read(tmp_path / "stopped" / "metrics.jsonl")
    assert records[-1]["step"] == 3 * k and not [r for r in records if r["split"] == "eval"]
    monkeypatch.setattr(loop, "build_task", build)
    modes.evaluate_checkpoint(c, tmp_path / "stopped")
    evals = [r for r in read(tmp_path / "stopped" / "metrics.jsonl") if r["split"] == "eval"]
    assert [(r["step"], r.get("by")) for r in evals] == [(3 * k, "--mode=eval")]
    loop.train_and_evaluate(c, tmp_path / "stopped")
    evals = [(r["step"], r.get("by")) for r in read(tmp_path / "stopped" / "metrics.jsonl") if r["split"] == "eval"]
    assert evals[:2] == [(3 * k, "--mode=eval"), (3 * k, None)], evals  # the training run evaluated it too
    assert [s for s, by in evals].count(3 * k) == 2
    a, b = _final_state(c, tmp_path / "straight"), _final_state(c, tmp_path / "stopped")
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_run_stopped_during_an_eval_has_not_yet_checkpointed_that_step(smoke_config, tmp_path, monkeypatch):
    """The checkpoint of an eval step is written after its eval, images and best checkpoint: a run killed in
    between has not checkpointed that step, so the same command trains up to it again and evaluates it."""
    c = smoke_config
    c.eval.every = c.checkpoint.every = 10
    c.train.steps = 20
    build = loop.build_task

    def build_failing_eval(config, workdir):
        task = build(config, workdir)

        def evaluate(state, final, data):
            raise KeyboardInterrupt  # the user's Ctrl-C, or a kill, while step 10 is evaluated
        task.evaluate = evaluate
        return task

    monkeypatch.setattr(loop, "build_task", build_failing_eval)
    with pytest.raises(KeyboardInterrupt):
        loop.train_and_evaluate(c, tmp_path)
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    # The train records reached TensorBoard's events file: it is closed on the way out (launch.py then ends the
    # process without the atexit hook that would flush it).
    events = b"".join(p.read_bytes() for p in (tmp_path / "tb").glob("events.out.tfevents.*"))
    assert b"train/loss" in events


def test_a_sigterm_during_an_eval_stops_the_run_at_that_step(smoke_config, tmp_path, monkeypatch):
    """A notice that lands during an evaluation stops the run at the evaluated step, with its checkpoint and the
    train record of the steps since the last one, instead of after one more compiled call; the resumed run does not
    evaluate that step again."""
    import os
    import signal

    from jaxgen.reporting.writer import read

    c = smoke_config
    k = c.train.steps_per_dispatch
    c.eval.every, c.checkpoint.every, c.train.log_every, c.train.steps = 2 * k, 6 * k, 3 * k, 6 * k
    loop.train_and_evaluate(c, tmp_path / "straight")
    build = loop.build_task

    def build_signalled_eval(config, workdir, **kwargs):
        task = build(config, workdir, **kwargs)
        evaluate, calls = task.evaluate, []

        def signalled(state, final, data):
            calls.append(1)
            if len(calls) == 2:  # the eval of step 4k
                os.kill(os.getpid(), signal.SIGTERM)
            return evaluate(state, final, data)
        task.evaluate = signalled
        return task

    monkeypatch.setattr(loop, "build_task", build_signalled_eval)
    run = tmp_path / "stopped"
    with pytest.raises(loop.RunStopped, match=f"stopped by SIGTERM at step {4 * k}"):
        loop.train_and_evaluate(c, run)
    assert [int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()] == [4 * k]
    records = read(run / "metrics.jsonl")  # the steps since the record at 3k get theirs at the stop
    assert [(r["split"], r["step"]) for r in records] == [("eval", 2 * k), ("train", 3 * k), ("eval", 4 * k),
                                                          ("train", 4 * k)]
    monkeypatch.setattr(loop, "build_task", build)
    loop.train_and_evaluate(c, run)
    log = (run / "log.txt").read_text()  # resumed, not trained again from step 0 (same bits)
    assert f"Resumed from the checkpoint at step {4 * k}" in log and f"Done: {2 * k} steps this invocation" in log
    evals = [r["step"] for r in read(run / "metrics.jsonl") if r["split"] == "eval"]
    assert evals == [2 * k, 4 * k, 6 * k]
    for x, y in zip(jax.tree.leaves(_final_state(c, tmp_path / "straight")), jax.tree.leaves(_final_state(c, run))):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bitwise the uninterrupted run's


def _state(cfg, mesh):
    from jaxgen import models

    model = models.build(cfg.model, (28, 28, 1))
    tx, _ = optim.make(cfg.optim, 10)
    create = functools.partial(state_lib.create, model, tx, (28, 28, 1), 0, False)
    return create, jax.jit(create, out_shardings=parallel.replicated(mesh))()


def test_a_checkpoint_from_8_devices_restores_onto_1(smoke_config, tmp_path):
    mesh8, mesh1 = parallel.make_mesh(jax.devices()), parallel.make_mesh(jax.devices()[:1])
    create, state = _state(smoke_config, mesh8)
    state = {**state, "step": state["step"] + 7}
    mgr = checkpoint.manager(tmp_path, smoke_config.checkpoint)
    checkpoint.save(mgr, state)
    mgr.wait_until_finished()
    mgr.close()
    target = checkpoint.abstract_like(jax.eval_shape(create), parallel.replicated(mesh1))
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 7
    leaf = restored["params"]["params"]["up_0"]["kernel"]
    assert leaf.sharding.device_set == {jax.devices()[0]}
    np.testing.assert_array_equal(leaf, state["params"]["params"]["up_0"]["kernel"])


def _two_checkpoints(smoke_config, tmp_path):
    mesh = parallel.make_mesh()
    create, state = _state(smoke_config, mesh)
    mgr = checkpoint.manager(tmp_path, smoke_config.checkpoint)
    for step in (10, 20):
        checkpoint.save(mgr, {**state, "step": state["step"] + step})
        mgr.wait_until_finished()
    mgr.close()
    return checkpoint.abstract_like(jax.eval_shape(create), parallel.replicated(mesh)), state


def test_a_broken_checkpoint_is_reported_and_the_previous_one_used(smoke_config, tmp_path, caplog):
    """A training run moves it aside; --mode=eval/sample (move_broken=False) only read, and move nothing."""
    target, _ = _two_checkpoints(smoke_config, tmp_path)
    for f in (tmp_path / "checkpoints" / "20").rglob("*"):  # corrupt every data file of step 20
        if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name:
            f.write_bytes(b"garbage")
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target, move_broken=False)
    mgr.close()
    assert int(restored["step"]) == 10 and not (tmp_path / "checkpoints_broken").exists()
    with pytest.raises(checkpoint.UnreadableCheckpointsError, match=r"the newest checkpoint in .*checkpoints cannot "
                       r"be read \(step 20; .*the one at step 10 does not stand in for it. Nothing was moved"):
        checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target, move_broken=False, older=False)
    assert not (tmp_path / "checkpoints_broken").exists()
    (tmp_path / "checkpoints_broken").write_text("")  # a file where the folder goes: the move fails
    with pytest.raises(WorkdirError, match=r"the unreadable checkpoint .*20 could not be moved to .*move or delete it "
                                           r"yourself, then run the same command again"):
        checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    (tmp_path / "checkpoints_broken").unlink()
    with caplog.at_level(logging.ERROR):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    assert int(restored["step"]) == 10
    assert "Checkpoint at step 20 cannot be read" in caplog.text
    assert (tmp_path / "checkpoints_broken" / "20").is_dir()  # kept for inspection, not deleted
    assert mgr.all_steps() == [10]
    mgr.close()
    shutil.copytree(tmp_path / "checkpoints_broken" / "20", tmp_path / "checkpoints" / "20")  # broken again
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10
    assert sorted(p.name for p in (tmp_path / "checkpoints_broken").iterdir()) == ["20", "20.1"]  # the first kept


def test_a_checkpoint_that_reads_but_fails_its_fingerprint_is_moved_aside(smoke_config, tmp_path, caplog):
    """Damage that still decodes (here: the saved checksum of one array changed, as if its bytes had been) is caught
    by the fingerprint saved with the checkpoint; bytes flipped inside a data file are caught too, by the read or
    by the fingerprint. Either way the previous checkpoint is used."""
    import json

    target, state = _two_checkpoints(smoke_config, tmp_path)
    fp = tmp_path / "checkpoints" / "20" / "fingerprint" / "metadata"  # Orbax's JSON item
    record = json.loads(fp.read_text())
    record["leaves"][3] = (record["leaves"][3] + 1) % 2**32
    fp.write_text(json.dumps(record))
    with caplog.at_level(logging.ERROR):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10
    assert "Checkpoint at step 20 cannot be read (ValueError: its arrays do not match the fingerprint" in caplog.text
    assert (tmp_path / "checkpoints_broken" / "20").is_dir()

    shutil.rmtree(tmp_path)
    target, state = _two_checkpoints(smoke_config, tmp_path)
    data = max((f for f in (tmp_path / "checkpoints" / "20").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    mid = len(raw) // 2
    raw[mid:mid + 4096] = np.random.default_rng(0).integers(0, 256, min(4096, len(raw) - mid), np.uint8).tobytes()
    data.write_bytes(bytes(raw))
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10 and (tmp_path / "checkpoints_broken" / "20").is_dir()

    # A fingerprint deleted beside damage: missing where an older checkpoint has one, so not trusted.
    shutil.rmtree(tmp_path)
    target, state = _two_checkpoints(smoke_config, tmp_path)
    shutil.rmtree(tmp_path / "checkpoints" / "20" / "fingerprint")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10
    assert "Checkpoint at step 20 cannot be read (ValueError: its fingerprint" in caplog.text
    assert "is missing, though the older checkpoint at step 10 has one" in caplog.text
    # A checkpoint from before fingerprints (none beside it has one) is read, unverified, with a warning.
    shutil.rmtree(tmp_path / "checkpoints" / "10" / "fingerprint")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10 and "at step 10 has no fingerprint" in caplog.text
    # The item's folder kept but its file elsewhere (an Orbax that lays it out otherwise): unverified, not damaged.
    shutil.rmtree(tmp_path)
    target, state = _two_checkpoints(smoke_config, tmp_path)
    (tmp_path / "checkpoints" / "20" / "fingerprint" / "metadata").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 20 and "fingerprint/metadata): its arrays are not verified" in caplog.text


@pytest.mark.parametrize("stage", ["metadata", "deserialize", "hangs", "interrupted"])
def test_a_failed_read_lets_the_others_end_before_it_is_reported(smoke_config, tmp_path, caplog, monkeypatch, stage):
    """Orbax raises the first read of a checkpoint that fails at once, and closes its event loop: the reads of the
    other arrays still running printed a traceback each on stderr when they ended or were garbage-collected
    (hundreds of lines for one emptied file). They end first; the error is reported as before. One that hangs (a
    stalled filesystem) is waited for only checkpoint.LEFTOVER_READS_SECONDS: the fallback goes on. A SIGTERM
    that lands in one (launch.py's Terminated, which asyncio keeps in the task) stops the run."""
    import time

    target, _ = _two_checkpoints(smoke_config, tmp_path)
    assert isinstance(checkpoint.ocp.type_handlers.get_type_handler(jax.Array), checkpoint._ArrayHandler)
    orbax_handler = checkpoint.ocp.type_handlers.ArrayHandler
    method = stage if stage in ("metadata", "deserialize") else "deserialize"
    read, others = getattr(orbax_handler, method), []
    if stage == "hangs":
        monkeypatch.setattr(checkpoint, "LEFTOVER_READS_SECONDS", 0.5)

    async def fails_at_step_20(self, infos, *args):
        if infos[0].parent_dir.parent.name != "20":
            return await read(self, infos, *args)
        async def other():  # another array's read, still running (or hanging, or interrupted)
            await asyncio.sleep(60 if stage == "hangs" else 0.2)
            if stage == "interrupted":
                raise stopping.Terminated()

        others.append(asyncio.ensure_future(other()))
        await asyncio.sleep(0)
        raise ValueError("a broken file")

    monkeypatch.setattr(orbax_handler, method, fails_at_step_20)
    if stage == "interrupted":
        with pytest.raises(stopping.Terminated):
            checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
        assert (tmp_path / "checkpoints" / "20").is_dir()  # not taken for a broken checkpoint
        return
    t = time.perf_counter()
    with caplog.at_level(logging.ERROR):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10
    assert "Checkpoint at step 20 cannot be read (ValueError: a broken file)" in caplog.text
    assert len(others) == 1 and others[0].done() != (stage == "hangs")
    assert time.perf_counter() - t < 30


def test_running_out_of_memory_while_reading_a_checkpoint_stops_and_moves_nothing(smoke_config, tmp_path, caplog,
                                                                                    monkeypatch):
    """Out of memory is passing, not damage: the newest checkpoint is neither moved aside nor skipped for an older
    one. A damaged one's full traceback goes to the log file (the terminal shows its first line)."""
    target, _ = _two_checkpoints(smoke_config, tmp_path)
    read = checkpoint._read_state

    def oom_at_20(mgr, step, target):
        if step == 20:
            raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.5GiB")
        return read(mgr, step, target)

    def wrapped_oom_at_20(mgr, step, target):  # an empty MemoryError, wrapped as Orbax's asyncio would
        if step == 20:
            try:
                raise MemoryError()
            except MemoryError as e:
                raise RuntimeError("restore failed") from e
        return read(mgr, step, target)

    for failing in (oom_at_20, wrapped_oom_at_20):
        monkeypatch.setattr(checkpoint, "_read_state", failing)
        with pytest.raises(WorkdirError, match=r"reading the checkpoint at step 20 .* ran out of memory .*Nothing "
                                               r"was moved; free memory .* run the same command again"):
            checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20"]
        assert not (tmp_path / "checkpoints_broken").exists()

    def damaged_at_20(mgr, step, target):
        if step == 20:
            raise ValueError("a damaged file")
        return read(mgr, step, target)

    monkeypatch.setattr(checkpoint, "_read_state", damaged_at_20)
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1 and tracebacks[0].exc_info[1].args == ("a damaged file",)
    assert getattr(tracebacks[0], runtime.FILE_ONLY)


def test_when_no_checkpoint_can_be_read_the_run_stops_and_moves_nothing(smoke_config, tmp_path):
    """A run must not start over in a workdir whose checkpoints all fail to read (a passing error, or damage): that
    would overwrite its metrics and best checkpoint. It stops, and leaves every checkpoint where it was."""
    target, _ = _two_checkpoints(smoke_config, tmp_path)
    for f in (tmp_path / "checkpoints").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.UnreadableCheckpointsError, match=r"none of the checkpoints in .* can be read "
                       r"\(steps 20, 10;.*did not start over.*pass a new --workdir"):
        checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20"]
    assert not (tmp_path / "checkpoints_broken").exists()


def test_the_fingerprint_depends_on_every_bit_but_not_on_the_devices():
    a = {"w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4), "k": jax.random.key(0), "n": jnp.int32(3)}
    fp = checkpoint.fingerprint(a)
    assert len(fp) == 3
    b = jax.device_put(a, parallel.replicated(parallel.make_mesh(jax.devices())))
    assert checkpoint.fingerprint(b) == fp
    flipped = {**a, "w": a["w"].at[1, 2].set(np.nextafter(np.float32(6.0), np.float32(7.0)))}
    assert checkpoint.fingerprint(flipped) != fp  # one bit of one float
    swapped = {**a, "w": a["w"][::-1]}
    assert checkpoint.fingerprint(swapped) != fp


def test_checkpoints_hold_the_whole_state(smoke_config, tmp_path):
    c = smoke_config
    c.eval.every = 0
    c.train.ema_half_life = 32
    loop.train_and_evaluate(c, tmp_path)
    state = _final_state(c, tmp_path)
    assert set(state) == {"step", "params", "opt_state", "key", "ema_params"}
    assert int(state["opt_state"][1][0].count) == 20  # Adam's step count came back too
    ema, raw = state["ema_params"]["params"]["out"]["kernel"], state["params"]["params"]["out"]["kernel"]
    assert not np.array_equal(ema, raw)


def _save(cfg, tmp_path, mesh, step=10):
    create, state = _state(cfg, mesh)
    mgr = checkpoint.manager(tmp_path, cfg.checkpoint)
    checkpoint.save(mgr, {**state, "step": state["step"] + step})
    mgr.wait_until_finished()
    mgr.close()


def test_checkpoint_managers_leave_the_preemption_point_to_the_loop(smoke_config, tmp_path, monkeypatch):
    """With jax.distributed, Orbax's save asked JAX's preemption service "stop here?" with the checkpoint's step, which
    fixed the stop at a point the loop's call count never reached: a pod run ignored a SIGTERM that landed during a
    save and trained on (an audit reproduced it with 2 processes and 10 steps per call). No manager of jaxgen's asks."""
    import orbax.checkpoint.checkpoint_manager as orbax_manager

    def asked(step):
        raise AssertionError(f"a checkpoint manager asked the preemption service about step {step}")

    monkeypatch.setattr(orbax_manager.utils, "reached_preemption", asked)
    mesh = parallel.make_mesh()
    _save(smoke_config, tmp_path, mesh)
    _, state = _state(smoke_config, mesh)
    keeper = best_checkpoint.BestKeeper(tmp_path, "elbo", "max")
    assert keeper.update(state, {"elbo": -1.0})
    keeper.close()


def test_small_replicated_arrays_are_saved_without_a_slice_per_device(smoke_config, tmp_path, monkeypatch):
    """Orbax's replica-parallel save would cut every replicated array into one slice per device (eager slices,
    compiled per shape); below checkpoint.REPLICA_PARALLEL_MIN_BYTES per slice one replica writes it whole. The
    state still round-trips."""
    slices = []
    slice_in_dim = jax.lax.slice_in_dim
    monkeypatch.setattr(jax.lax, "slice_in_dim", lambda *a, **k: slices.append(a[0].shape) or slice_in_dim(*a, **k))
    mesh = parallel.make_mesh(jax.devices())
    assert mesh.size == 8
    state = jax.device_put({"step": jnp.int32(3), "w": jnp.arange(4096, dtype=jnp.float32).reshape(64, 64)},
                           parallel.replicated(mesh))
    mgr = checkpoint.manager(tmp_path, smoke_config.checkpoint)
    checkpoint.save(mgr, state)
    mgr.wait_until_finished()
    assert slices == []
    target = checkpoint.abstract_like(jax.eval_shape(lambda: state), parallel.replicated(mesh))
    ocp = checkpoint.ocp
    restored = mgr.restore(3, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(state["w"]))
    mgr.close()


def test_a_checkpoint_of_another_config_stops_the_run_and_stays_in_place(smoke_config, tmp_path):
    mesh = parallel.make_mesh()
    _save(smoke_config, tmp_path, mesh)
    other = smoke_config.copy_and_resolve_references()
    other.model.latent_dim = 3
    other.optim.name = "adamw"  # adds an empty node to the optimizer state: caught too
    create, _ = _state(other, mesh)
    target = checkpoint.abstract_like(jax.eval_shape(create), parallel.replicated(mesh))
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        checkpoint.restore_newest(tmp_path, other.checkpoint, target)
    msg = str(e.value)
    assert "written by a different configuration" in msg and "new --workdir" in msg
    assert "shape or dtype changed" in msg and "(10,) float32 saved, (3,) float32 now" in msg
    assert "missing from the checkpoint" in msg  # adamw's extra empty state
    assert "... and" in msg  # the list of differing leaves is cut short
    assert (tmp_path / "checkpoints" / "10").is_dir() and not (tmp_path / "checkpoints_broken").exists()
    create, _ = _state(smoke_config, mesh)  # the config it was written with still resumes it
    target = checkpoint.abstract_like(jax.eval_shape(create), parallel.replicated(mesh))
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10


def test_a_resume_with_another_model_names_the_config_fields_that_changed(trained_vae):
    """The leaves that differ say what, the config fields say why: those that differ from the workdir's config.json
    (the blocks that never change the state, eval and output here, left out)."""
    c, workdir = trained_vae
    c.model.latent_dim, c.eval.batch_size = 3, 32
    with pytest.raises(checkpoint.CheckpointMismatchError) as e:
        loop.train_and_evaluate(c, workdir)
    msg = str(e.value)
    assert "(10,) float32 saved, (3,) float32 now" in msg
    assert msg.endswith(f"last run with ({workdir / 'config.json'}) in: model.latent_dim: 10 -> 3")


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_gradient_clipping_keeps_the_optimizer_state_tree(smoke_config, name):
    params = {"w": jax.ShapeDtypeStruct((3, 2), np.float32)}
    trees = []
    for clip in (0.0, 1.0):
        smoke_config.optim.name, smoke_config.optim.clip_norm = name, clip
        tx, _ = optim.make(smoke_config.optim, 10)
        trees.append(jax.tree.structure(jax.eval_shape(tx.init, params)))
    assert trees[0] == trees[1]


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_every_schedule_keeps_the_optimizer_state_tree(smoke_config, name):
    """README, What lands in the workdir: a run extended with a longer train.steps continues at the rate it reached
    with optim.schedule=constant: the schedule changes, the state's tree does not."""
    params = {"w": jax.ShapeDtypeStruct((3, 2), np.float32)}
    trees = set()
    for schedule in optim.SCHEDULES:
        smoke_config.optim.name, smoke_config.optim.schedule = name, schedule
        tx, _ = optim.make(smoke_config.optim, 10)
        trees.add(jax.tree.structure(jax.eval_shape(tx.init, params)))
    assert len(trees) == 1


def test_a_resume_with_another_batch_size_says_what_it_changes(smoke_config, tmp_path):
    c = smoke_config
    c.train.steps, c.checkpoint.every, c.eval.every = 10, 10, 0
    loop.train_and_evaluate(c, tmp_path)
    was = c.train.batch_size
    c.train.steps, c.train.batch_size = 20, was // 2
    loop.train_and_evaluate(c, tmp_path)
    log_txt = (tmp_path / "log.txt").read_text()
    assert (f"train.batch_size is {was // 2}, but the run resumed from step 10 trained with {was}: the steps it "
            f"trained now count as steps of {was // 2} images, for the data order") in log_txt


def _supersede(tmp_path, step, newer):
    """As a training run beside a reader does: writes a newer checkpoint (a copy of `step`'s, its arrays those of
    `step`), then removes `step`'s files. Orbax's deleter removes every file first and the folders last: not yet."""
    import os

    folder = tmp_path / "checkpoints" / str(step)
    shutil.copytree(folder, tmp_path / "checkpoints" / str(newer))
    for root, _, files in os.walk(folder):
        for name in files:
            os.unlink(os.path.join(root, name))


@pytest.mark.parametrize("where", ["folder", "state", "fingerprint"])
def test_a_checkpoint_a_training_run_removes_while_an_eval_mode_reads_it_is_no_damage(smoke_config, tmp_path, caplog,
                                                                                     monkeypatch, where):
    """--mode=eval/sample beside a training run: the step they listed can be gone when they read it (the trainer's
    checkpoint.keep, the best checkpoint's one). That was reported as a damaged checkpoint and stopped them; they
    now read the newest again. Orbax removes a step's files first and its folder last: a step met with its folder
    and without its files was still reported as unreadable (the only checkpoint of best/, keep 1: 'none can be
    read'), or, with its state read and its fingerprint gone, warned about as written before fingerprints."""
    target, _ = _two_checkpoints(smoke_config, tmp_path)
    read = checkpoint._read_state

    def superseded_while_read(mgr, step, tgt):
        if where == "folder" and step == 20 and (tmp_path / "checkpoints" / "20").exists():
            shutil.rmtree(tmp_path / "checkpoints" / "20")  # as the trainer's save of a newer one removes it
            raise ValueError(f"Checkpoint directory does not exist: {tmp_path}/checkpoints/20/state")
        if where != "folder" and step == 20 and not (tmp_path / "checkpoints" / "30").exists():
            if where == "state":
                _supersede(tmp_path, 20, 30)
                raise ValueError(f"NOT_FOUND: Error opening file: {tmp_path}/checkpoints/20/state/_sharding")
            restored = read(mgr, step, tgt)
            _supersede(tmp_path, 20, 30)
            return restored
        return read(mgr, step, tgt)

    monkeypatch.setattr(checkpoint, "_read_state", superseded_while_read)
    with caplog.at_level(logging.WARNING):
        mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target, move_broken=False,
                                                  older=False)
    mgr.close()
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("jaxgen") and r.levelno >= logging.WARNING]
    # "folder": step 10, the newest left; else step 30's folder, which holds step 20's arrays.
    assert int(restored["step"]) == (10 if where == "folder" else 20) and not warned, warned


def test_a_checkpoint_removed_while_the_manager_lists_them_is_listed_again(smoke_config, tmp_path, monkeypatch):
    """Orbax's CheckpointManager reads every listed step's metadata as it starts; a step removed meanwhile made it
    stat the gone folder, and a FileNotFoundError's traceback stopped --mode=eval/sample."""
    target, _ = _two_checkpoints(smoke_config, tmp_path)
    make = checkpoint.manager
    calls = []

    def removed_once(workdir, cfg, subdir="checkpoints"):
        calls.append(subdir)
        if len(calls) == 1:
            raise FileNotFoundError(2, "No such file or directory", str(tmp_path / "checkpoints" / "10"))
        return make(workdir, cfg, subdir)

    monkeypatch.setattr(checkpoint, "manager", removed_once)
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target, move_broken=False)
    mgr.close()
    assert int(restored["step"]) == 20 and len(calls) == 2


def test_checkpoint_keep_keeps_the_newest(smoke_config, tmp_path):
    c = smoke_config
    c.train.steps, c.checkpoint.every, c.checkpoint.keep, c.eval.every = 4, 1, 2, 0
    loop.train_and_evaluate(c, tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["3", "4"]


def test_a_sigterm_after_the_last_calls_check_stops_the_run_before_its_final_evaluation(smoke_config, tmp_path,
                                                                                        monkeypatch):
    """A notice that lands while the last call's checkpoint is written (after the loop last asked for one) was
    acknowledged, then dropped: the run did its whole final evaluation (with a large FID, past a scheduler's grace
    period) and exited 0. It now stops there, checkpointed; the resume evaluates."""
    import os
    import signal

    c = smoke_config
    c.train.steps, c.checkpoint.every, c.eval.every = 20, 10, 0
    save = checkpoint.save

    def save_with_a_notice(mgr, state):
        if int(state["step"]) == 20:
            os.kill(os.getpid(), signal.SIGTERM)
        return save(mgr, state)

    monkeypatch.setattr(checkpoint, "save", save_with_a_notice)
    with pytest.raises(loop.RunStopped, match="stopped by SIGTERM at step 20"):
        loop.train_and_evaluate(c, tmp_path)
    assert not (tmp_path / "eval.json").exists() and (tmp_path / "checkpoints" / "20").is_dir()
    monkeypatch.setattr(checkpoint, "save", save)
    loop.train_and_evaluate(c, tmp_path)
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == 20


def test_a_sigterm_while_the_last_checkpoint_is_written_lets_it_finish_and_stops_there(smoke_config, tmp_path,
                                                                                      monkeypatch):
    """A notice during the wait for the last checkpoint's asynchronous write (as launch.py runs: SIGTERM raises
    outside the training loop) raised out of the wait: the run stopped at once and left that step's checkpoint
    half-written, so the resume repeated the steps since the one before. The write now ends, and the run stops
    there, checkpointed, as after any other call."""
    import os
    import signal

    from jaxgen.training import stopping

    c = smoke_config
    c.train.steps, c.checkpoint.every, c.eval.every = 20, 10, 0
    save, wait = checkpoint.save, checkpoint.Manager.wait_until_finished
    saved, sent = [], []

    def noting(mgr, state):  # the waits inside a save (for the one before) are not the last one
        save(mgr, state)
        saved.append(int(state["step"]))

    def wait_with_a_notice(self):
        if saved[-1:] == [20] and not sent:
            sent.append(True)
            os.kill(os.getpid(), signal.SIGTERM)
        return wait(self)

    monkeypatch.setattr(checkpoint, "save", noting)
    monkeypatch.setattr(checkpoint.Manager, "wait_until_finished", wait_with_a_notice)
    with stopping.sigterm_raises(), pytest.raises(loop.RunStopped, match="stopped by SIGTERM at step 20"):
        loop.train_and_evaluate(c, tmp_path)
    assert sent and not (tmp_path / "eval.json").exists()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10", "20"]


def test_eval_modes_stop_on_an_unreadable_newest_checkpoint_and_a_training_run_repairs_it(smoke_config, tmp_path):
    """--mode=eval read the older checkpoint in its place and wrote its numbers over the finished run's eval.json
    (exit 0); it now stops, naming the older step. A training run moves the broken one aside and trains it again."""
    c = smoke_config
    c.train.steps, c.checkpoint.every, c.eval.every = 20, 10, 0
    loop.train_and_evaluate(c, tmp_path)
    before = (tmp_path / "eval.json").read_text()
    for f in (tmp_path / "checkpoints" / "20").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "d" in f.parent.name:
            f.write_bytes(b"garbage")
    for run in (modes.evaluate_checkpoint, modes.sample_checkpoint):
        with pytest.raises(checkpoint.UnreadableCheckpointsError, match=r"step 20; .*the one at step 10 does not "
                                                                        r"stand in .*moves the unreadable one aside"):
            run(c, tmp_path)
    assert (tmp_path / "eval.json").read_text() == before and not (tmp_path / "samples").exists()
    loop.train_and_evaluate(c, tmp_path)
    assert (tmp_path / "checkpoints_broken" / "20").is_dir()
    assert json.loads((tmp_path / "eval.json").read_text())["step"] == 20


def test_a_run_saved_without_clipping_resumes_with_it(smoke_config, tmp_path):
    mesh = parallel.make_mesh()
    _save(smoke_config, tmp_path, mesh)
    smoke_config.optim.clip_norm = 1.0  # the NaN error's advice, then the same command
    create, _ = _state(smoke_config, mesh)
    target = checkpoint.abstract_like(jax.eval_shape(create), parallel.replicated(mesh))
    mgr, restored = checkpoint.restore_newest(tmp_path, smoke_config.checkpoint, target)
    mgr.close()
    assert int(restored["step"]) == 10


def test_a_resumed_run_rewrites_the_metrics_of_the_steps_it_repeats(tmp_path):
    """A run that went past its last checkpoint (step 20) logged steps 30 and 40; resumed from 20, those rows are
    dropped, so the steps it repeats appear once, with the values of the run that continues."""
    from jaxgen.reporting.writer import MetricWriter, read

    first = MetricWriter(tmp_path, enabled=True)
    for step in (10, 20, 30, 40):
        first.write(step, "train", {"loss": float(step)})
    first.write(20, "eval", {"elbo": -1.0})
    first.close()
    resumed = MetricWriter(tmp_path, enabled=True, resume_step=20)
    resumed.write(30, "train", {"loss": -30.0})
    resumed.close()
    assert [(r["step"], r["split"], r.get("loss")) for r in read(tmp_path / "metrics.jsonl")] == [
        (10, "train", 10.0), (20, "train", 20.0), (20, "eval", None), (30, "train", -30.0)]
    again = MetricWriter(tmp_path, enabled=True, resume_step=30)  # a finished run re-evaluates its last step
    again.write(30, "eval", {"elbo": -2.0})
    again.write(30, "eval", {"elbo": -3.0})
    again.close()
    evals = [(r["step"], r["elbo"]) for r in read(tmp_path / "metrics.jsonl") if r["split"] == "eval"]
    assert evals == [(20, -1.0), (30, -3.0)]  # one eval record a step, the newest


def test_files_torn_by_a_kill_are_dropped_or_rewritten_not_fatal(tmp_path, caplog):
    """Power loss or a full disk can leave a half-written last line in metrics.jsonl, or an empty best.json or
    config.json: the next start warns and goes on (every other file is written to a temporary name first)."""
    import json

    import ml_collections

    from jaxgen.reporting.writer import MetricWriter, read

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 10, "split": "train", "loss": 1.0}\n{"step": 20, "split": "tr')
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        assert read(path) == [{"step": 10, "split": "train", "loss": 1.0}]
        w = MetricWriter(tmp_path, enabled=True, resume_step=10)
        w.write(20, "train", {"loss": 2.0})
        w.close()
    assert "torn last line" in caplog.text
    assert [r["step"] for r in read(path)] == [10, 20]
    path.write_text('{"step": 10, "split": "train", "loss": 1.0}')  # whole, but without its newline
    w = MetricWriter(tmp_path, enabled=True)
    w.write(20, "train", {"loss": 2.0})
    w.close()
    assert [r["step"] for r in read(path)] == [10, 20]
    path.write_text('{"step": 10, "split": "train"}\nnot json\n{"step": 20, "split": "train"}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2, is not JSON"):
        read(path)

    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "best.json").write_text("")
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        keeper = best_checkpoint.BestKeeper(tmp_path, "elbo", "max")
    assert keeper.record is None and "best.json cannot be read" in caplog.text
    (tmp_path / "best" / "best.json").write_text(json.dumps({"step": 20, "metric": "elbo", "mode": "max",
                                                             "value": -90.0}))
    assert best_checkpoint.BestKeeper(tmp_path, "elbo", "max", resume_step=20).record["step"] == 20
    with caplog.at_level(logging.WARNING, logger="jaxgen"):  # kept by a run stopped before its checkpoint of 20
        assert best_checkpoint.BestKeeper(tmp_path, "elbo", "max", resume_step=10).record is None
    assert "it is of step 20, after step 10 this run resumes from" in caplog.text

    (tmp_path / "config.json").write_text('{"seed": ')
    cfg = ml_collections.ConfigDict({"seed": 1})
    with caplog.at_level(logging.WARNING, logger="jaxgen"):
        run_record.save_config(cfg, tmp_path)
    assert "config.json cannot be read" in caplog.text
    assert json.loads((tmp_path / "config.json").read_text()) == {"seed": 1}

    # A changed config is a warning on resume; after a run that left no checkpoint (stopped on a bad setting), a note.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        run_record.save_config(ml_collections.ConfigDict({"seed": 2}), tmp_path, step=0)
        run_record.save_config(ml_collections.ConfigDict({"seed": 3}), tmp_path, step=40)
    (fresh, resumed), = [[r for r in caplog.records if "seed: 1 -> 2" in r.message or "seed: 2 -> 3" in r.message]]
    assert fresh.levelno == logging.INFO and "left no checkpoint" in fresh.message
    assert resumed.levelno == logging.WARNING and "resumed at step 40" in resumed.message
    history = [json.loads(line) for line in (tmp_path / "config_history.jsonl").read_text().splitlines()]
    assert [h["config"] for h in history] == [{"seed": 1}, {"seed": 2}]


def test_a_save_killed_half_way_leaves_nothing_behind_on_the_next_training_start(smoke_config, tmp_path, caplog):
    """A kill during an Orbax save leaves `<step>.orbax-checkpoint-tmp*` folders (in checkpoints/ or best/). The
    next training start removes them, with a warning, and keeps every finished checkpoint; --mode=eval or sample
    (which may run beside a training run, whose save in flight such a folder can be) leaves them alone."""
    task = loop.build_task(smoke_config, tmp_path)
    state = task.create()
    mgr = checkpoint.manager(tmp_path, smoke_config.checkpoint)
    checkpoint.save(mgr, {**state, "step": state["step"] + 10})
    mgr.close()
    partial = [tmp_path / "checkpoints" / "20.orbax-checkpoint-tmp-1764391234",
               tmp_path / "best" / "30.orbax-checkpoint-tmp"]
    for p in partial:
        p.mkdir(parents=True)
        (p / "half_written").write_bytes(b"x")
    mgr, _ = loop.restore(task)  # what --mode=eval and --mode=sample open
    mgr.close()
    assert all(p.exists() for p in partial)
    with caplog.at_level(logging.WARNING):
        mgr, restored = loop.restore_or_init(task)
        keeper = best_checkpoint.BestKeeper(tmp_path, "elbo", "max")
        assert keeper.update(restored, {"elbo": -1.0})
    assert int(restored["step"]) == 10 and mgr.all_steps() == [10] and not any(p.exists() for p in partial)
    assert caplog.text.count("a checkpoint whose save was interrupted") == 2
    mgr.close()
    keeper.close()


def test_ctrl_c_stops_like_sigterm_and_a_second_ctrl_c_at_once(smoke_config, tmp_path, monkeypatch):
    """A researcher's Ctrl-C (SIGINT) checkpoints the step reached and raises RunStopped (launch.py exits 130);
    pressed twice, it raises KeyboardInterrupt at once, as Python's default does."""
    import signal

    c = smoke_config
    c.eval.every, c.checkpoint.every = 0, 20
    k = c.train.steps_per_dispatch
    build = loop.build_task
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, whatever the test runner set
    try:
        monkeypatch.setattr(loop, "build_task", signal_at_call(build, 2, signal.SIGINT))
        with pytest.raises(loop.RunStopped, match=f"stopped by SIGINT at step {2 * k}") as stop:
            loop.train_and_evaluate(c, tmp_path / "once")
        assert stop.value.signum == signal.SIGINT and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        assert [p.name for p in (tmp_path / "once" / "checkpoints").iterdir() if p.name.isdigit()] == [str(2 * k)]
        monkeypatch.setattr(loop, "build_task", signal_at_call(build, 2, signal.SIGINT, times=2))
        with pytest.raises(KeyboardInterrupt):
            loop.train_and_evaluate(c, tmp_path / "twice")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_sigterm_outside_the_loop_raises_terminated_and_inside_it_still_stops_after_the_call(smoke_config, tmp_path,
                                                                                            monkeypatch):
    """launch.py runs under stopping.sigterm_raises: a SIGTERM outside the training loop (data loading, compiling,
    the final evaluation) raises Terminated, a BaseException that no error handler takes for a broken checkpoint
    (here sent with nothing else running; launch.py's test sends one during --mode=eval), and a second one has the
    default again; the training loop takes SIGTERM over for its duration and gives it back."""
    import os
    import signal
    import time

    outer = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with stopping.sigterm_raises():
            with pytest.raises(stopping.Terminated):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # the handler runs at the next bytecode
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # a second SIGTERM ends the process
        assert not isinstance(stopping.Terminated(), Exception)
        c = smoke_config
        c.eval.every, c.checkpoint.every = 0, 20
        monkeypatch.setattr(loop, "build_task", signal_at_call(loop.build_task, 2))
        with stopping.sigterm_raises():
            raising = signal.getsignal(signal.SIGTERM)
            with pytest.raises(loop.RunStopped, match="stopped by SIGTERM"):
                loop.train_and_evaluate(c, tmp_path / "run")
            assert signal.getsignal(signal.SIGTERM) is raising
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, outer)


def test_a_terminated_that_python_swallowed_is_raised_again():
    """A SIGTERM whose handler runs inside a finalizer (or JAX's gc callback, as seen in 1 of 30 SIGTERMs during
    --mode=eval) has its Terminated swallowed ("Exception ignored in"); it is raised again soon after, and the
    block ends as for any SIGTERM; Ctrl-C's KeyboardInterrupt too. The retry's SIGALRM handler and the unraisable
    hook are put back after."""
    import os
    import signal
    import sys
    import time

    class SignalledInFinalizer:
        def __init__(self, signum):
            self.signum = signum

        def __del__(self):
            os.kill(os.getpid(), self.signum)
            sum(range(1000))  # the handler runs here, at a bytecode of the finalizer: its exception is swallowed

    hook = sys.unraisablehook
    outer = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    outer_int = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's (a test worker may differ)
    try:
        for signum, raised in ((signal.SIGTERM, stopping.Terminated), (signal.SIGINT, KeyboardInterrupt)):
            with stopping.sigterm_raises():
                with pytest.raises(raised):
                    SignalledInFinalizer(signum)  # finalized at once
                    deadline = time.monotonic() + 5
                    while time.monotonic() < deadline:  # the run goes on, until the exception comes again
                        time.sleep(0.001)
    finally:
        signal.signal(signal.SIGTERM, outer)
        signal.signal(signal.SIGINT, outer_int)
    assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL and sys.unraisablehook is hook
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_run_stopped_at_once_ends_without_the_interpreters_shutdown(monkeypatch):
    """launch.py's exit for a signal outside the loop: the log files flushed and closed, then os._exit with the
    signal's status. The interpreter's shutdown crashed (status 139) under XLA's compiler threads when a SIGTERM
    landed during a compile (checked by hand: 4 of 4 SIGTERMs 4 s after the start now give 143)."""
    import logging
    import os

    from jaxgen import cli

    calls = []
    monkeypatch.setattr(logging, "shutdown", lambda: calls.append("logging.shutdown"))
    monkeypatch.setattr(os, "_exit", lambda status: calls.append(status))
    cli.exit_now(143)
    assert calls == ["logging.shutdown", 143]


def test_a_resume_off_the_fused_grid_names_the_values_that_fit_and_leaves_config_json(trained_vae):
    """A checkpoint at step 10 cannot continue with 4 steps per call: the error names the steps_per_dispatch
    values that divide the step and every interval (1, 2), and the refused config is not saved over config.json."""
    c, workdir = trained_vae
    saved = (workdir / "config.json").read_text()
    c.train.steps, c.train.steps_per_dispatch, c.train.log_every, c.checkpoint.every = 40, 4, 4, 8
    with pytest.raises(ValueError, match=r"the checkpoint at step 10 is not on the grid of train.steps_per_dispatch="
                                         r"4 .* \(1, 2\), e.g. --config.train.steps_per_dispatch=2$"):
        loop.train_and_evaluate(c, workdir)
    assert (workdir / "config.json").read_text() == saved and not (workdir / "config_history.jsonl").exists()


def test_a_signal_ignored_on_purpose_stays_ignored():
    """A background job's SIGINT is SIG_IGN: the loop's stop handlers leave it so (and put SIGTERM's back)."""
    import signal

    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        stop = stopping.StopRequest()
        stop.install()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN and signal.getsignal(signal.SIGTERM) == stop._handle
        stop.uninstall()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGINT, outer)


def test_an_unreadable_checkpoints_reason_is_its_first_line_without_tensorstores_spec():
    e = ValueError('NOT_FOUND: Error reading "d/abc" [tensorstore_spec=\'{"context":{"cache_pool":{}}}\'] '
                   "[source locations='x.cc:1']\nmore")
    assert checkpoint._first_line(e) == 'NOT_FOUND: Error reading "d/abc"'
    e = ValueError("DATA_LOSS: bad chunk See full TensorStore details: {...}")
    assert checkpoint._first_line(e) == "DATA_LOSS: bad chunk"


def test_fields_a_later_jaxgen_added_at_their_defaults_are_no_change_of_the_run(tmp_path, caplog):
    """A workdir whose config.json predates a field (model.num_classes, augment.ada_target ...) resumes without a
    warning about it while the field keeps its default; set away from it, it is reported."""
    from jaxgen.config import gan_config

    old = json.loads(gan_config().to_json_best_effort(sort_keys=True))
    del old["model"]["num_classes"], old["augment"]["ada_target"], old["sample"]["truncation"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    with caplog.at_level(logging.INFO, logger="jaxgen"):
        run_record.save_config(gan_config(), tmp_path, step=40)
    assert "differs" not in caplog.text and not (tmp_path / "config_history.jsonl").exists()
    assert run_record.config_changes(gan_config(), tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps(old))
    changed = gan_config()
    changed.augment.ada_target = 0.6
    assert run_record.config_changes(changed, tmp_path) == ["augment.ada_target: None -> 0.6"]
