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
