"""The README's quickstart runs as written and gives a plan that keeps the budgets."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_quickstart_runs_and_keeps_budgets(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README.md has no python code block"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    scores, plan = namespace["scores"], namespace["plan"]
    assert list(scores) == ["0", "2", "4"]  # the three Linear layers of the Sequential
    assert all(value > 0 for value in scores.values())
    assert plan.mask.shape == (4, 3)
    np.testing.assert_array_equal(plan.mask.sum(axis=1), [1, 2, 2, 1])
    assert str(plan.layers) in capsys.readouterr().out
