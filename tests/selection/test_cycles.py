"""Cycle canceling (count budgets only): the brute-force optimum on tiny problems, the LP on larger ones."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from selection_cases import instance, tiny_problems

from f3ocus.selection.cycles import cycle_canceling_optimum
from f3ocus.selection.exact import _solve_fixed_total, solve_exact
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.reference import brute_force_optimum


@given(data=tiny_problems(), tradeoff=st.sampled_from([0.01, 0.1, 0.5, 1.0, 3.0, 20.0]),
       passes=st.sampled_from([0, 1, 8]))
@settings(max_examples=80, deadline=None)
def test_cycle_canceling_matches_brute_force(data, tradeoff, passes):
    p = SelectionProblem(data.scores, data.budgets)
    plan = cycle_canceling_optimum(p.scores, p.budgets, tradeoff, passes=passes)
    assert p.is_feasible(plan)
    best = p.scalarized(brute_force_optimum(p, tradeoff), tradeoff)
    assert p.scalarized(plan, tradeoff) == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize(("K", "L", "seed"), [(30, 12, 0), (80, 24, 1), (200, 16, 2)])  # noqa: N803
@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0, 8.0])
def test_cycle_canceling_matches_the_flow_lp(K, L, seed, tau):  # noqa: N803
    p = instance(K, L, seed)
    t = tau * L / K
    plan = cycle_canceling_optimum(p.scores, p.budgets, t)
    lp = _solve_fixed_total(p, t, int(p.budgets.sum()))
    assert p.is_feasible(plan)
    assert p.scalarized(plan, t) == pytest.approx(p.scalarized(lp, t), rel=1e-10)


def test_exact_solver_uses_the_cycles_exactly_for_count_budgets_at_small_tradeoffs():
    p = instance(40, 10, 3)
    assert solve_exact(p, 0.2 * 10 / 40)[1]["method"] == "cycles"
    assert solve_exact(p, 5.0 * 10 / 40)[1]["method"] == "flow"
    assert solve_exact(SelectionProblem(p.scores, p.budgets, exact_budget=False), 0.05)[1]["method"] == "flow"
    forbidden = np.zeros((40, 10), dtype=bool)
    forbidden[0, 0] = True
    allowed = SelectionProblem(p.scores, p.budgets, allowed=~forbidden)
    assert solve_exact(allowed, 0.05)[1]["method"] == "flow"
