"""Where the test suite's time goes, per test: a pytest plugin that records it, and the report of its records.

    JAXGEN_SUITE_PROFILE=/tmp/prof python -m pytest -p benchmarks.suite_profile   # a new folder for each run
    python benchmarks/suite_profile.py /tmp/prof --top=40

Per test (setup, call and teardown together), one JSON line in <dir>/<pid>.jsonl from each process that runs tests
(each xdist worker): wall seconds; CPU seconds of the test's process ('cpu') and of the child processes it waited
for ('children': launch.py runs, the multi-host tests' processes); and JAX's own timings of what the test's process
compiled ('trace', 'lower': jaxpr to StableHLO, 'compile': XLA's backend compile, persistent-cache misses only,
'cache_saved': the persistent cache's net saving as JAX reports it, a lower bound: JAX keeps each entry's compile
time in whole seconds, so a hit on a program that compiled in under 1 s counts as its read time lost; a jitted
function traced inside another's trace counts in both traces, a few percent of 'trace' in this suite), and 'built': how
many programs it lowered (each op run outside jit is a program of its own, ~25 ms to lower and compile on a 2-core
Xeon; a count that does not vary with the machine's load, unlike the seconds). At the end of
the session, <dir>/<pid>.programs.json: the same JAX timings per function name over the whole session (which
programs cost the most, summed over the tests that built them). Compare runs by CPU seconds, not wall: tests share
the cores, and this machine kind's runs of the same suite differ by +-12%.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import sys
import time
from pathlib import Path

import pytest

ENV = "JAXGEN_SUITE_PROFILE"
EVENTS = {  # jax.monitoring's duration events (jax 0.10.2) -> the record's field
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "compile",
    "/jax/compilation_cache/compile_time_saved_sec": "cache_saved",
}
FIELDS = ("wall", "cpu", "children", *EVENTS.values(), "built")

_seconds: collections.Counter = collections.Counter()
_programs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)  # fun_name -> field -> s
_out = None


def _listen(event: str, seconds: float, **kwargs) -> None:
    if event in EVENTS:
        _seconds[EVENTS[event]] += seconds
        _seconds["built"] += EVENTS[event] == "lower"
        name = kwargs.get("fun_name")
        if name and EVENTS[event] != "cache_saved":
            program = _programs[name.removeprefix("jit(").removesuffix(")")]
            program[EVENTS[event]] += seconds
            program["count"] += EVENTS[event] == "lower"  # one lowering per program built


def pytest_configure(config) -> None:
    global _out
    folder = os.environ.get(ENV)
    if not folder:
        raise pytest.UsageError(f"-p benchmarks.suite_profile writes to the folder ${ENV} names: set it")
    Path(folder).mkdir(parents=True, exist_ok=True)
    if "PYTEST_XDIST_WORKER" not in os.environ and any(Path(folder).glob("*.jsonl")):  # the session's first process
        raise pytest.UsageError(f"${ENV}={folder} holds an earlier run's records, which the report would add to this "
                                f"run's: name a new folder")
    _out = open(Path(folder) / f"{os.getpid()}.jsonl", "a")  # noqa: SIM115 (open for the session)
    from jax import monitoring  # importing JAX starts no backend: conftest.py still sets XLA_FLAGS first

    monitoring.register_event_duration_secs_listener(_listen)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _seconds.clear()
    wall, cpu = time.perf_counter(), time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    yield
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    record = {"test": item.nodeid, "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
              "children": (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)}
    record.update(_seconds)
    _out.write(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in record.items()}) + "\n")
    _out.flush()


def pytest_unconfigure(config) -> None:
    if _out is not None and _programs:
        Path(_out.name).with_suffix(".programs.json").write_text(json.dumps(_programs))


def report(folder: Path, top: int) -> str:
    """Totals, per test file (by CPU seconds, children included) and the `top` tests, as text."""
    records = [json.loads(line) for path in sorted(folder.glob("*.jsonl")) for line in path.read_text().splitlines()]
    if not records:
        raise SystemExit(f"no records in {folder}: run pytest with -p benchmarks.suite_profile and ${ENV}={folder}")
    cost = lambda r: r["cpu"] + r["children"]  # noqa: E731
    total = {f: sum(r.get(f, 0.0) for r in records) for f in FIELDS}
    lines = [f"{len(records)} tests; CPU seconds {total['cpu'] + total['children']:.0f} (test processes "
             f"{total['cpu']:.0f}, their child processes {total['children']:.0f}); in the test processes, JAX "
             f"traced for {total['trace']:.0f} s, lowered for {total['lower']:.0f} s and compiled for "
             f"{total['compile']:.0f} s (the persistent cache's net saving, at least: "
             f"{total['cache_saved']:.0f} s)", ""]
    header = f"{'cpu+child':>9} {'cpu':>7} {'child':>7} {'trace':>6} {'lower':>6} {'compile':>7} {'built':>6}"
    row = lambda name, v, n="": (f"{v['cpu'] + v['children']:9.1f} {v['cpu']:7.1f} {v['children']:7.1f} "  # noqa: E731
                                 f"{v['trace']:6.1f} {v['lower']:6.1f} {v['compile']:7.1f} {int(v['built']):6d} "
                                 f"{n}{name}")
    files: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        files[r["test"].split("::")[0]].update({f: r.get(f, 0.0) for f in FIELDS} | {"tests": 1})
    lines += [f"{header} tests file"]
    lines += [row(name, v, f"{v['tests']:5d} ") for name, v in sorted(files.items(), key=lambda kv: -cost(kv[1]))]
    lines += ["", f"{header} test"]
    for r in sorted(records, key=lambda r: -cost(r))[:top]:
        lines.append(row(r["test"], collections.Counter({f: r.get(f, 0.0) for f in FIELDS})))
    programs: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for path in folder.glob("*.programs.json"):
        for name, v in json.loads(path.read_text()).items():
            programs[name].update(v)
    if programs:
        spent = lambda v: v["trace"] + v["lower"] + v["compile"]  # noqa: E731
        lines += ["", f"{'trace':>7} {'lower':>6} {'compile':>7} {'built':>6} function (jitted, or an op run eagerly)"]
        lines += [f"{v['trace']:7.1f} {v['lower']:6.1f} {v['compile']:7.1f} {v['count']:6d} {name}"
                  for name, v in sorted(programs.items(), key=lambda kv: -spent(kv[1]))[:top]]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help=f"the folder ${ENV} named when pytest ran")
    parser.add_argument("--top", type=int, default=40, help="how many tests to list, the costliest first")
    args = parser.parse_args(argv)
    print(report(args.folder, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
