"""The solver table: every registered solver keeps budgets, repeats under a seed, and user solvers work."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.algorithms.soo.nonconvex.ga import GA
from pymoo.operators.crossover.pntx import TwoPointCrossover
from pymoo.operators.mutation.bitflip import BitflipMutation
from pymoo.operators.sampling.rnd import BinaryRandomSampling
from selection_cases import heavy_tailed

import f3ocus
from f3ocus.selection.solvers import (
    BUILTIN_SOLVERS,
    available_solvers,
    get_solver,
    register_solver,
    unregister_solver,
)

# small, fast settings per solver; solvers not listed run with their defaults
FAST = {
    "nsga2": dict(pop_size=20, n_gen=10),
    "ga": dict(pop_size=20, n_gen=10),
    "pso": dict(pop_size=10, n_gen=5),
    "de": dict(pop_size=10, n_gen=5),
}
SOLVERS = available_solvers()


def fast(name):
    """Small settings: the table above, else a short pymoo termination (``termination=`` goes to minimize)."""
    if name in FAST:
        return FAST[name]
    return {"termination": ("n_evals", 400)} if get_solver(name).kind == "pymoo" else {}


def test_all_paper_solvers_and_baselines_are_listed():
    names = available_solvers()
    for name in ("nsga2", "ga", "pso", "de", "exact", "topk", "random"):
        assert name in names
    assert set(names) <= set(BUILTIN_SOLVERS) | set(names)


@pytest.mark.parametrize("solver", SOLVERS)
@given(
    K=st.integers(1, 6),
    L=st.integers(1, 7),
    seed=st.integers(0, 1000),
    exact_budget=st.booleans(),
    tradeoff=st.sampled_from([None, 0.0, 0.5, 5.0]),
)
@settings(max_examples=4)
def test_every_solver_keeps_budgets(solver, K, L, seed, exact_budget, tradeoff):  # noqa: N803
    raw, budgets = heavy_tailed(K, L, seed)
    budgets = np.minimum(budgets, L)
    plan = f3ocus.select_layers(
        raw, budgets, solver=solver, tradeoff=tradeoff, seed=seed, exact_budget=exact_budget, **fast(solver)
    )
    rows = plan.mask.sum(axis=1)
    assert np.all(rows == budgets) if exact_budget else np.all(rows <= budgets)
    if plan.front is not None:
        assert np.all(plan.front.masks.sum(axis=2) == budgets) if exact_budget else True
    assert plan.stats["solver"] == solver


@pytest.mark.parametrize("solver", SOLVERS)
def test_seeded_runs_repeat_exactly(solver):
    raw, budgets = heavy_tailed(8, 10, 0)
    a = f3ocus.select_layers(raw, budgets, solver=solver, seed=3, **fast(solver))
    b = f3ocus.select_layers(raw, budgets, solver=solver, seed=3, **fast(solver))
    assert np.array_equal(a.mask, b.mask)
    if a.front is not None:
        assert np.array_equal(a.front.masks, b.front.masks)


def test_different_seeds_explore_differently():
    raw, budgets = heavy_tailed(8, 10, 0)
    plans = {f3ocus.select_layers(raw, budgets, solver="random", seed=s).mask.tobytes() for s in range(5)}
    assert len(plans) > 1


def test_user_registered_solver_end_to_end():
    calls = []

    @register_solver("plain_bitflip_ga")
    def factory(problem, pop_size=16, n_gen=15):
        calls.append((problem.n_var, problem.n_obj, problem.tradeoff))
        # bit-flip operators that ignore the budgets: select_layers repairs every returned plan
        algorithm = GA(
            pop_size=pop_size,
            sampling=BinaryRandomSampling(),
            crossover=TwoPointCrossover(),
            mutation=BitflipMutation(),
            eliminate_duplicates=True,
        )
        algorithm.termination = ("n_gen", n_gen)
        return algorithm

    try:
        assert "plain_bitflip_ga" in f3ocus.available_solvers()
        raw, budgets = heavy_tailed(6, 9, 1)
        plan = f3ocus.select_layers(raw, budgets, solver="plain_bitflip_ga", tradeoff=1.0, seed=0, n_gen=5)
        assert calls == [(6 * 9, 1, 1.0)]
        assert np.array_equal(plan.mask.sum(axis=1), budgets)
        assert plan.stats["solver"] == "plain_bitflip_ga"
        assert plan.stats["evaluations"] > 0 and plan.stats["generations"] == 5
        again = f3ocus.select_layers(raw, budgets, solver="plain_bitflip_ga", tradeoff=1.0, seed=0, n_gen=5)
        assert np.array_equal(plan.mask, again.mask)
        certified = f3ocus.select_layers(raw, budgets, solver="plain_bitflip_ga", tradeoff=1.0, seed=0, certify=True)
        assert certified.stats["gap"] >= -1e-12
    finally:
        unregister_solver("plain_bitflip_ga")
    assert "plain_bitflip_ga" not in f3ocus.available_solvers()


def test_multi_objective_user_solver_gets_two_objectives_and_a_front():
    from pymoo.algorithms.moo.nsga2 import NSGA2

    from f3ocus.selection.operators import BudgetCrossover, BudgetMutation, BudgetSampling

    @register_solver("my_nsga2", multi_objective=True)
    def factory(problem):
        assert problem.n_obj == 2 and problem.target_tradeoff is None
        algorithm = NSGA2(pop_size=20, sampling=BudgetSampling(), crossover=BudgetCrossover(), mutation=BudgetMutation())
        algorithm.termination = ("n_gen", 10)
        return algorithm

    try:
        raw, budgets = heavy_tailed(6, 9, 2)
        plan = f3ocus.select_layers(raw, budgets, solver="my_nsga2", seed=0)
        assert plan.front is not None and len(plan.front) >= 1
        assert any(np.array_equal(plan.mask, m) for m in plan.front.masks)
    finally:
        unregister_solver("my_nsga2")


def test_declared_smart_start_is_what_the_factory_gets():
    from f3ocus.selection.heuristics import smart_starts
    from f3ocus.selection.operators import BudgetCrossover, BudgetMutation, BudgetSampling
    from f3ocus.selection.problem import SelectionProblem

    seen = []

    @register_solver("starts_probe", smart_start=True)
    def probe(problem, *, n_gen=2, starts=None):
        seen.append(starts)
        return GA(pop_size=10, sampling=BudgetSampling(starts), crossover=BudgetCrossover(),
                  mutation=BudgetMutation(), termination=("n_gen", n_gen))

    try:
        scores = heavy_tailed(6, 5, 0)[0]
        plan = f3ocus.select_layers(scores, 2, solver="starts_probe", tradeoff=0.3, seed=0, normalize="none")
        expected = smart_starts(SelectionProblem(scores, np.full(6, 2)), 0.3)
        assert np.array_equal(seen[-1], expected) and plan.stats["smart_start"] is True
        plan = f3ocus.select_layers(scores, 2, solver="starts_probe", tradeoff=0.3, seed=0, smart_start=False)
        assert seen[-1] is None and plan.stats["smart_start"] is False
        with pytest.raises(TypeError, match="smart_start=...\\) must be True or False"):
            f3ocus.select_layers(scores, 2, solver="starts_probe", tradeoff=0.3, smart_start="no")
    finally:
        unregister_solver("starts_probe")


def test_undeclared_smart_start_is_an_unknown_option_and_builtins_declare_theirs():
    @register_solver("plain_probe")
    def plain(problem, *, n_gen=2):
        return GA(pop_size=10, sampling=BinaryRandomSampling(), crossover=TwoPointCrossover(),
                  mutation=BitflipMutation(), termination=("n_gen", n_gen))

    try:
        assert not get_solver("plain_probe").smart_start and not get_solver("plain_probe").polish
        with pytest.raises(TypeError, match="'smart_start' is not an option of this solver"):
            f3ocus.select_layers(heavy_tailed(4, 5, 0)[0], 2, solver="plain_probe", tradeoff=0.3, smart_start=True)
    finally:
        unregister_solver("plain_probe")
    for name in ("nsga2", "ga", "pso", "de", "sa", "abc"):
        spec = get_solver(name)
        assert spec.smart_start and spec.polish and "smart_start" in spec.option_names
    for name in ("aco",):
        assert get_solver(name).polish and not get_solver(name).smart_start


@pytest.mark.parametrize(("solver", "short"), [("sa", {"n_iter": 2}), ("abc", {"n_cycles": 1})])
def test_sa_and_abc_start_from_the_smart_starts(solver, short):
    from f3ocus.selection.heuristics import smart_starts
    from f3ocus.selection.inputs import normalize_scores
    from f3ocus.selection.problem import SelectionProblem

    raw, budgets = heavy_tailed(30, 12, 3)
    sel = SelectionProblem(normalize_scores(raw, "sum"), budgets)
    t = 0.4
    best_start = float(np.max(sel.scalarized(smart_starts(sel, t), t)))
    on = f3ocus.select_layers(raw, budgets, solver=solver, tradeoff=t, seed=0, polish=False, **short)
    off = f3ocus.select_layers(raw, budgets, solver=solver, tradeoff=t, seed=0, polish=False, smart_start=False,
                               **short)
    assert on.stats["smart_start"] is True and off.stats["smart_start"] is False
    assert float(sel.scalarized(on.mask, t)) >= best_start - 1e-12  # the best plan seen includes the starts
    assert float(sel.scalarized(off.mask, t)) < best_start  # a random start is far off after one step


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**16), n_off=st.integers(1, 8), n_pop=st.integers(1, 8))
def test_hashed_duplicate_test_is_pymoos(seed, n_off, n_pop):
    from pymoo.core.duplicate import DefaultDuplicateElimination
    from pymoo.core.population import Population

    from f3ocus.selection.solvers.pso import exact_duplicates

    rng = np.random.default_rng(seed)
    pop = rng.integers(3, size=(n_pop, 4)).astype(float) / 2  # few values: duplicates are common
    off = rng.integers(3, size=(n_off, 4)).astype(float) / 2
    off[rng.random(off.shape) < 0.1] *= -1.0  # -0.0 equals 0.0
    _, _, want = DefaultDuplicateElimination(epsilon=0.0).do(
        Population.new(X=off), Population.new(X=pop), return_indices=True
    )
    got = exact_duplicates(off, pop)
    np.testing.assert_array_equal(np.flatnonzero(got), np.asarray(want, dtype=np.int64))
