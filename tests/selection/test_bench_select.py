"""The selection benchmark's script end to end on its smoke size, and its tables from the JSON it writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_select.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_select", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_and_its_tables(bench, tmp_path, capsys):
    out = bench.main(["--quick", "--skip-exact", "--solvers", "topk", "exact", "--out", str(tmp_path / "s.json")])
    data = json.loads(Path(out).read_text())
    assert data["device"]["cores"] >= 1 and {r["solver"] for r in data["solvers"]} == {"topk", "exact"}
    exact = [r for r in data["solvers"] if r["solver"] == "exact"]
    assert all(abs(r["gap"]) < 1e-9 for r in exact)
    bench.main(["--table", str(out)])
    table = capsys.readouterr().out
    assert "| `exact` | 0.00% |" in table and "gap τ=1" in table and "max CPU s" in table
