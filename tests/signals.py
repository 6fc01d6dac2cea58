"""A scheduler's notice or a Ctrl-C landing during a compiled train call, for the tests that stop runs.

No side effects on import: the two-process tests' workers import it too."""

import os
import signal

import jax


def signal_at_call(build, call: int, signum: int = signal.SIGTERM, times: int = 1, process: int | None = None):
    """A `loop.build_task` whose tasks' compiled train function sends this process `signum` (`times` times) just
    before its call number `call` (counted from 1): on every process, or only on process `process`."""

    def build_task(config, workdir, **kwargs):
        task = build(config, workdir, **kwargs)
        compile_train, calls = task.compile_train, []

        def compiled():
            fn = compile_train()

            def train(state, data):
                calls.append(1)
                if len(calls) == call and process in (None, jax.process_index()):
                    for _ in range(times):
                        os.kill(os.getpid(), signum)
                return fn(state, data)
            return train
        task.compile_train = compiled
        return task
    return build_task
