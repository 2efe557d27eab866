"""The exact solver against brute-force enumeration, in float64, on every tiny instance hypothesis draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from selection_cases import instance, tiny_problems, tradeoffs

from f3ocus.selection.exact import exact_front, exact_optimum, lexicographic_extremes, top_b_plan
from f3ocus.selection.heuristics import greedy_plan
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.reference import (
    brute_force_front,
    brute_force_optimum,
    count_plans,
    enumerate_plans,
    pareto_mask,
    supported_mask,
)


@pytest.mark.parametrize("exact_budget", [True, False])
@given(data=tiny_problems(), tradeoff=tradeoffs)
@settings(max_examples=40)
def test_exact_optimum_matches_brute_force(exact_budget, data, tradeoff):
    p = SelectionProblem(data.scores, data.budgets, exact_budget)
    plan = exact_optimum(p, tradeoff)
    assert p.is_feasible(plan)
    best = p.scalarized(brute_force_optimum(p, tradeoff), tradeoff)
    assert p.scalarized(plan, tradeoff) == pytest.approx(best, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("exact_budget", [True, False])
@given(data=tiny_problems(max_k=3, max_l=4))
@settings(max_examples=25)
def test_exact_front_is_the_supported_front(exact_budget, data):
    p = SelectionProblem(data.scores, data.budgets, exact_budget)
    plans = exact_front(p)
    assert np.all(p.is_feasible(plans))
    got = np.column_stack([p.importance(plans), p.diversity(plans)])
    _, supported = brute_force_front(p)
    np.testing.assert_allclose(got[np.lexsort(got.T[::-1])], supported[np.lexsort(supported.T[::-1])], atol=1e-9)


@given(data=tiny_problems())
@settings(max_examples=30)
def test_lexicographic_extremes(data):
    p = data
    a, b = lexicographic_extremes(p)
    plans = enumerate_plans(p)
    imp, div = p.importance(plans), p.diversity(plans)
    top = imp.max()
    assert p.importance(a) == pytest.approx(top, abs=1e-12)
    assert p.diversity(a) == pytest.approx(div[imp >= top - 1e-12].min(), abs=1e-9)
    low = div.min()
    assert p.diversity(b) == pytest.approx(low, abs=1e-9)
    assert p.importance(b) == pytest.approx(imp[div <= low + 1e-9].max(), abs=1e-9)


def test_reference_counts_and_fronts_on_a_hand_example():
    # two clients, two layers, one layer each: 4 plans
    p = SelectionProblem(np.array([[0.6, 0.4], [0.7, 0.3]]), np.array([1, 1]))
    assert count_plans(p) == 4 == len(enumerate_plans(p))
    pareto, supported = brute_force_front(p)
    # both on layer 0: importance 1.3, diversity 1; split 0.4 + 0.7 = 1.1 (or 0.6 + 0.3) with diversity 0
    np.testing.assert_allclose(pareto, [[1.3, 1.0], [1.1, 0.0]])
    np.testing.assert_allclose(supported, pareto)
    assert pareto_mask(np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])).tolist() == [True, True, False]
    # the middle point lies on the chord: not an extreme supported point
    assert supported_mask(np.array([0.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])).tolist() == [True, False, True]


def test_zero_tradeoff_is_client_only_and_large_tradeoff_balances():
    p = instance(20, 8, 0)
    assert np.array_equal(exact_optimum(p, 0.0), top_b_plan(p))
    counts = exact_optimum(p, 1e6).sum(axis=0)
    assert counts.max() - counts.min() <= 1


def test_exact_beats_greedy_and_topk_at_moderate_size():
    p = instance(40, 24, 3)
    t = 1.0
    best = p.scalarized(exact_optimum(p, t), t)
    assert best >= p.scalarized(greedy_plan(p, t), t) - 1e-12
    assert best >= p.scalarized(top_b_plan(p), t) - 1e-12


def test_exact_at_k1000_l64_beats_topk_and_greedy():
    # Scale check (its time is measured by benchmarks/bench_select.py, not here): at the benchmark's
    # largest size the exact plan is feasible and no worse than client-only top-k or the greedy plan.
    rng = np.random.default_rng(0)
    raw = rng.lognormal(0.0, 2.0, (1000, 64))
    p = SelectionProblem(raw / raw.sum(axis=1, keepdims=True), rng.integers(4, 17, 1000))
    plan = exact_optimum(p, 1.0)
    assert p.is_feasible(plan)
    value = p.scalarized(plan, 1.0)
    assert value >= p.scalarized(top_b_plan(p), 1.0) - 1e-9
    assert value >= p.scalarized(greedy_plan(p, 1.0), 1.0) - 1e-9
