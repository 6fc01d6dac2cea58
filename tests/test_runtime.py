"""`jaxgen.runtime.setup`: what it passes to jax.distributed.initialize (monkeypatched: no distributed JAX starts)."""

import jax
import pytest

from jaxgen import runtime


@pytest.fixture
def init_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    for var in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "")
    return calls


def test_distributed_passes_num_processes_and_process_id_from_the_environment(init_calls, monkeypatch):
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", " 2 ")
    runtime.setup(distributed=True)
    assert init_calls == [{"num_processes": 4, "process_id": 2}]


def test_distributed_without_the_variables_leaves_auto_detection_to_jax(init_calls):
    runtime.setup(distributed=True)
    runtime.setup(distributed=False)
    assert init_calls == [{}]


@pytest.mark.parametrize("var", ["JAX_NUM_PROCESSES", "JAX_PROCESS_ID"])
def test_distributed_non_integer_variable_is_a_clear_error(init_calls, monkeypatch, var):
    monkeypatch.setenv(var, "two")
    with pytest.raises(ValueError, match=rf"\${var}='two' is not an integer: set it to .*or unset it"):
        runtime.setup(distributed=True)
    assert init_calls == []


def test_a_dataset_larger_than_a_devices_free_memory_is_a_clear_error(caplog):
    """The train split goes whole onto every device: checked against the allocator's stats before the upload (an
    accelerator's out-of-memory error would not say what to change). The CPU has no stats: the host's available
    memory instead, a warning above half of it (gan_celeba's 2 GiB went up silently)."""
    from jaxgen import parallel

    gib = 2**30
    stats = {"bytes_limit": 16 * gib, "bytes_in_use": 2 * gib}
    with pytest.raises(parallel.DoesNotFitError, match=r"the train split \(15\.00 GiB\).*14\.00 GiB free of 16\.00 "
                                                       r"GiB: use fewer"):
        parallel.check_fits(15 * gib, stats, what="the train split", fix="use fewer")
    with caplog.at_level("WARNING"):
        parallel.check_fits(9 * gib, stats, what="the train split", fix="use fewer")
    assert "takes 9.00 GiB of a device's 16.00 GiB" in caplog.text
    parallel.check_fits(10**12, None, what="x", fix="y")  # no stats: nothing to check
    parallel.check_fits_on_devices(10**12, parallel.make_mesh(), what="x", fix="y")  # XLA:CPU: a warning at most
    caplog.clear()
    with caplog.at_level("INFO", logger="jaxgen"):
        parallel.check_host_memory(255 * 2**20, what="small", fix="f", available=gib)  # below 256 MiB: no word
        parallel.check_host_memory(gib, what="the train split", fix="use fewer", available=10 * gib)
        parallel.check_host_memory(2 * gib, what="the train split", fix="use fewer", copies=2, available=3 * gib)
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.startswith("jaxgen")]
    assert said == [("INFO", "Uploading the train split to the devices: 1.00 GiB of host memory"),
                    ("WARNING", "the train split takes 2.00 GiB of host memory (2 copies, one per CPU device), more "
                                "than half of the 3.00 GiB available: the run may be killed for memory (use fewer)")]

    class Device:  # an accelerator's allocator stats, as jax.Device.memory_stats() gives them
        def __init__(self, name, limit, used):
            self.name, self.stats = name, None if limit is None else {"bytes_limit": limit, "bytes_in_use": used}

        def memory_stats(self):
            return self.stats

    devices = [Device("a", 16 * gib, 1 * gib), Device("b", 16 * gib, 5 * gib), Device("c", None, 0)]
    assert parallel.least_free(devices)[0].name == "b"  # the fullest device decides
    assert parallel.least_free([Device("c", None, 0)]) is None


def test_deterministic_adds_xla_gpus_flag_unless_the_user_set_it(init_calls, monkeypatch):
    import os

    runtime.setup(deterministic=True)
    assert "--xla_gpu_deterministic_ops=true" in os.environ["XLA_FLAGS"].split()
    monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_deterministic_ops=false")
    runtime.setup(deterministic=True)
    assert os.environ["XLA_FLAGS"].split().count("--xla_gpu_deterministic_ops=false") == 1
    assert "--xla_gpu_deterministic_ops=true" not in os.environ["XLA_FLAGS"]
    monkeypatch.setenv("XLA_FLAGS", "")
    runtime.setup(deterministic=False)
    assert "deterministic" not in os.environ["XLA_FLAGS"]


def test_a_run_with_config_deterministic_warns_when_xla_flags_lacks_the_flag(monkeypatch, caplog):
    """A script that calls the loop without runtime.setup(deterministic=True) first: the flag did not take effect."""
    import ml_collections

    from jaxgen.training import loop

    caplog.set_level("INFO", logger="jaxgen")
    c = ml_collections.ConfigDict({"deterministic": True})
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    loop.log_determinism(c)
    assert "config.deterministic is set but XLA_FLAGS lacks --xla_gpu_deterministic_ops=true" in caplog.text
    assert "jaxgen.runtime.setup(deterministic=True)" in caplog.text
    caplog.clear()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_gpu_deterministic_ops=true")
    loop.log_determinism(c)
    assert "WARNING" not in caplog.text and "XLA_FLAGS has --xla_gpu_deterministic_ops=true" in caplog.text
    caplog.clear()
    loop.log_determinism(ml_collections.ConfigDict({"deterministic": False}))
    assert not caplog.text


def test_train_lines_marked_file_only_reach_the_log_file_not_the_terminal(tmp_path, capsys):
    """With a progress bar on the terminal the train lines go to log.txt only (the bar shows the same numbers)."""
    import logging

    logger = runtime.console_logging()
    file_handler = logging.FileHandler(tmp_path / "log.txt")
    logger.addHandler(file_handler)
    try:
        logger.info("for both")
        logger.info("for the file", extra={runtime.FILE_ONLY: True})
    finally:
        logger.removeHandler(file_handler)
        file_handler.close()
    err = capsys.readouterr().err
    assert "for both" in err and "for the file" not in err
    assert "for the file" in (tmp_path / "log.txt").read_text()


def test_the_xla_cpu_flag_is_added_only_for_a_jaxlib_known_to_have_it(monkeypatch):
    """XLA aborts on a flag it does not know: an experimental one is passed only to the releases seen to take it."""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for release, added in (((0, 10), True), ((0, 11), True), ((0, 12), False), (None, False)):
        monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
        monkeypatch.setattr(runtime, "_jaxlib_release", lambda release=release: release)
        runtime.setup()
        assert (runtime.CPU_FLAGS[0] in runtime.os.environ["XLA_FLAGS"]) == added, release
    monkeypatch.undo()
    assert runtime._jaxlib_release() == tuple(int(x) for x in jax.__version__.split(".")[:2])


def test_new_files_get_the_mode_open_would_give_them():
    """atomic's files: mkstemp's 0600 widened to what the umask allows, the umask read without changing it."""
    import os

    from jaxgen import atomic

    mask = os.umask(0o027)
    try:
        assert atomic._umask() == 0o027
    finally:
        os.umask(mask)
    assert atomic.FILE_MODE == 0o666 & ~mask
