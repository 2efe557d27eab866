"""Budget-keeping operators: every plan they make is feasible, and they change what they should."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.core.population import Population
from selection_cases import tiny_problems

from f3ocus.selection.operators import (
    BudgetCrossover,
    BudgetMutation,
    BudgetRepair,
    BudgetSampling,
    PlanDuplicateElimination,
    neighbor,
    random_plan,
    repair,
)
from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem

problems = tiny_problems(max_k=5, max_l=7)


@given(problems, st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_every_operator_keeps_budgets(p, seed):
    rng = np.random.default_rng(seed)
    pp = SelectionPymooProblem(p)
    a = BudgetSampling().do(pp, 10, random_state=rng).get("X")
    b = BudgetSampling().do(pp, 10, random_state=rng).get("X")
    assert np.all(p.is_feasible(pp.decode(a)))
    kids = BudgetCrossover(prob=1.0)._do(pp, np.stack([a, b]), random_state=rng)
    for child, parent in zip(kids, (a, b), strict=True):
        masks = pp.decode(child)
        assert np.all(p.is_feasible(masks))
        # each child keeps its parent's per-client count
        assert np.array_equal(masks.sum(-1), pp.decode(parent).sum(-1))
    # the two children split the parents' layers between them
    assert np.array_equal(kids[0].astype(int) + kids[1], a.astype(int) + b)
    for guided in (1, 3):
        mutated = BudgetMutation(guided=guided)._do(pp, a, random_state=rng)
        assert np.all(p.is_feasible(pp.decode(mutated)))
    for _ in range(5):
        assert p.is_feasible(neighbor(pp.decode(a)[0], p, rng))


@given(problems, st.integers(0, 2**32 - 1))
@settings(max_examples=60)
def test_repair_makes_any_matrix_feasible_and_keeps_feasible_rows(p, seed):
    rng = np.random.default_rng(seed)
    arbitrary = rng.random((6, p.K, p.L)) < rng.random()
    fixed = repair(arbitrary, p, rng)
    assert np.all(p.is_feasible(fixed))
    # rows that break the budget are cut down or filled up, never anything else
    over = arbitrary.sum(-1) > p.budgets
    assert np.all(fixed[over] <= arbitrary[over])
    if p.exact_budget:
        under = arbitrary.sum(-1) < p.budgets
        assert np.all(fixed[under] >= arbitrary[under])
    ok = random_plan(p, rng, n=4)
    assert np.array_equal(repair(ok, p, rng), ok)
    pop = Population.new("X", arbitrary.reshape(6, -1))
    repaired = BudgetRepair().do(SelectionPymooProblem(p), pop, random_state=rng).get("X")
    assert np.all(p.is_feasible(repaired.reshape(6, p.K, p.L)))


def test_random_plan_is_uniform_over_subsets():
    p = SelectionProblem(np.ones((1, 4)), np.array([2]))
    rng = np.random.default_rng(0)
    plans = random_plan(p, rng, n=6000).reshape(6000, 4)
    codes = plans @ (1 << np.arange(4))
    counts = np.bincount(codes, minlength=16)[[3, 5, 6, 9, 10, 12]]
    assert counts.sum() == 6000
    assert np.all(np.abs(counts - 1000) < 150)  # C(4,2)=6 subsets, each about 1000 times


def test_neighbor_changes_exactly_one_swap():
    p = SelectionProblem(np.ones((3, 5)), np.array([2, 3, 1]))
    rng = np.random.default_rng(1)
    m = random_plan(p, rng)
    for _ in range(50):
        nxt = neighbor(m, p, rng)
        assert (nxt != m).sum() == 2 and (nxt != m).any(axis=1).sum() == 1
        m = nxt


def test_guided_mutation_prefers_the_better_swap():
    # one client, layer 0 crowded by others: with tradeoff the guided swap leaves it more often
    S = np.array([[0.5, 0.3, 0.2, 0.0]] * 1 + [[1.0, 0.0, 0.0, 0.0]] * 4)  # noqa: N806
    p = SelectionProblem(S, np.array([1, 1, 1, 1, 1]))
    pp = SelectionPymooProblem(p, tradeoff=1.0)
    start = np.zeros((400, 5, 4), bool)
    start[:, :, 0] = True
    rng = np.random.default_rng(0)
    uniform = BudgetMutation(prob_var=0.0, guided=1)._do(pp, start.reshape(400, -1), random_state=rng)
    guided = BudgetMutation(prob_var=0.0, guided=3)._do(pp, start.reshape(400, -1), random_state=rng)
    # client 0 moving to layer 1 (score 0.3) is the best move; a tournament of 3 picks it far more often
    moved_uniform = uniform.reshape(400, 5, 4)[:, 0, 1].mean()
    moved_guided = guided.reshape(400, 5, 4)[:, 0, 1].mean()
    assert moved_guided > moved_uniform + 0.02


def test_duplicate_elimination_is_exact():
    rng = np.random.default_rng(0)
    X = rng.random((6, 10)) < 0.5  # noqa: N806
    X[3] = X[1]
    pop = Population.new("X", X)
    kept = PlanDuplicateElimination().do(pop)
    assert len(kept) == 5
    other = Population.new("X", X[:2])
    assert len(PlanDuplicateElimination().do(Population.new("X", X[:3]), other)) == 1
