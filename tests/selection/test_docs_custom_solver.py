"""The code on docs/selection/custom-solver.md runs as shown."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from f3ocus.selection.solvers import unregister_solver

PAGE = Path(__file__).resolve().parents[2] / "docs" / "selection" / "custom-solver.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_the_page_has_the_examples():
    assert len(BLOCKS) == 2
    assert "class HillClimber(Algorithm)" in BLOCKS[0] and '@f3ocus.register_solver("hill")' in BLOCKS[0]


@pytest.mark.parametrize("index,name", [(0, "hill"), (1, "small_ga")])
def test_example_runs_as_shown(index, name, capsys):
    try:
        namespace: dict = {}
        exec(compile(BLOCKS[index], f"{PAGE.name}[{index}]", "exec"), namespace)
        if name == "hill":
            plan = namespace["plan"]
            assert "gap to the exact optimum" in capsys.readouterr().out
            assert 0.0 <= plan.stats["gap"] < 0.5  # a real search: far better than a random plan
    finally:
        unregister_solver(name)
