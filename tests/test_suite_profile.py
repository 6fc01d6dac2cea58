"""benchmarks/suite_profile.py, the suite's profiler: its report of per-test records, and a folder it refuses."""

import json
import subprocess
import sys

from tests.conftest import ROOT


def test_the_report_sums_per_file_and_lists_the_costliest_tests_and_programs(tmp_path):
    sys.path.insert(0, str(ROOT))
    try:
        from benchmarks import suite_profile
    finally:
        sys.path.remove(str(ROOT))
    rows = [{"test": "tests/test_a.py::one", "wall": 3.0, "cpu": 2.0, "children": 0.0, "trace": 0.5, "compile": 1.0,
             "built": 3},
            {"test": "tests/test_a.py::two", "wall": 1.0, "cpu": 1.0, "children": 4.0},
            {"test": "tests/test_b.py::three", "wall": 1.0, "cpu": 0.5, "children": 0.0, "lower": 0.25}]
    (tmp_path / "11.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    (tmp_path / "12.jsonl").write_text(json.dumps(rows[2]) + "\n")
    (tmp_path / "11.programs.json").write_text(json.dumps({"fused_steps": {"trace": 0.5, "compile": 1.0, "count": 1}}))
    text = suite_profile.report(tmp_path, top=2).splitlines()
    assert text[0].startswith("3 tests; CPU seconds 8 (test processes 4, their child processes 4)")
    files = text[text.index(next(t for t in text if t.endswith("tests file"))) + 1:][:2]
    assert files[0].split() == ["7.0", "3.0", "4.0", "0.5", "0.0", "1.0", "3", "2", "tests/test_a.py"]
    assert files[1].split()[-2:] == ["1", "tests/test_b.py"]
    tests = text[text.index(next(t for t in text if t.endswith(" test"))) + 1:][:2]
    assert [t.split()[-1] for t in tests] == ["tests/test_a.py::two", "tests/test_a.py::one"]  # top=2, costliest first
    assert text[-1].split() == ["0.5", "0.0", "1.0", "1", "fused_steps"]


def test_a_folder_without_the_variable_or_with_an_earlier_runs_records_is_refused(tmp_path):
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_x():\n    pass\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    run = lambda **e: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "pytest", "-p", "benchmarks.suite_profile", "-p", "no:cacheprovider", "-n0", "-q",
         "tests/test_x.py"], cwd=tmp_path, env={**env, **e}, capture_output=True, text=True, timeout=120)
    r = run()
    assert r.returncode != 0 and "writes to the folder $JAXGEN_SUITE_PROFILE names: set it" in r.stderr
    r = run(JAXGEN_SUITE_PROFILE=str(tmp_path / "prof"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [json.loads(line)["test"] for line in next((tmp_path / "prof").glob("*.jsonl")).read_text().splitlines()] \
        == ["tests/test_x.py::test_x"]
    r = run(JAXGEN_SUITE_PROFILE=str(tmp_path / "prof"))
    assert r.returncode != 0 and "holds an earlier run's records" in r.stderr
