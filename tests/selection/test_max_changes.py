"""``max_changes``: a hard limit on each client's distance to the previous plan."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from selection_cases import constrained_problem

from f3ocus import select_layers
from f3ocus.selection import mip as mip_module
from f3ocus.selection.exact import solve_exact
from f3ocus.selection.plans import fill, random_plan, repair
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.reference import MAX_PLANS, brute_force_optimum, count_plans, enumerate_plans

EXTRA = ["required", "allowed", "coverage", "churn", "costs"]


@st.composite
def limited(draw, at_most: bool | None = None):
    """A tiny problem with ``max_changes`` (exact or at-most budgets) that has a feasible plan."""
    kinds = set(draw(st.sets(st.sampled_from(EXTRA)))) | {"limit"}
    if at_most is None:
        at_most = draw(st.booleans())
    if at_most:
        kinds.add("at_most")
    else:
        kinds.discard("costs")
    sel = constrained_problem(draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(0, 2**32 - 1)),
                              kinds)
    assume(count_plans(sel) <= MAX_PLANS)  # brute force is for tiny instances only
    assume(len(enumerate_plans(sel)) > 0)
    return sel


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=limited(), t=st.sampled_from([0.0, 0.2, 2.0]))
def test_exact_with_max_changes_matches_brute_force_both_budget_kinds(sel, t):
    plan, info = solve_exact(sel, t)
    assert sel.is_feasible(plan)
    assert np.all((plan != sel.previous).sum(axis=1) <= sel.max_changes)
    best = float(sel.scalarized(brute_force_optimum(sel, t), t))
    assert float(sel.scalarized(plan, t)) >= best - 1e-6 * max(1.0, abs(best)) - info.get("gap", 0.0) * max(1.0, abs(best))
    # the flow exactly with exact budgets (no costs), the MIP with at-most budgets
    assert info["method"] in (("flow", "cycles") if sel.exact_budget and sel.costs is None else ("mip",))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=limited(), seed=st.integers(0, 2**16))
def test_decoder_and_repair_keep_the_limit(sel, seed):
    rng = np.random.default_rng(seed)
    assert np.all(sel.is_feasible(random_plan(sel, rng, n=4)))
    assert np.all(sel.is_feasible(fill(rng.random((3, sel.K, sel.L)), sel, rng)))
    assert np.all(sel.is_feasible(repair(rng.random((3, sel.K, sel.L)) < 0.5, sel, rng)))


def test_the_flow_is_used_exactly_with_exact_budgets(monkeypatch):
    calls = []
    real = mip_module.mip_optimum
    monkeypatch.setattr(mip_module, "mip_optimum", lambda *a, **k: calls.append(1) or real(*a, **k))
    for seed in range(4):
        sel = constrained_problem(3, 4, seed, {"limit"})
        assume_ok = len(enumerate_plans(sel)) > 0
        if assume_ok:
            assert sel.flow_applies
            solve_exact(sel, 0.5)
    assert calls == []
    sel = constrained_problem(3, 4, 0, {"limit", "at_most"})
    assert not sel.flow_applies
    solve_exact(sel, 0.5)
    assert calls == [1]


SOLVERS = ["nsga2", "ga", "pso", "de", "sa", "abc", "aco", "mopso", "topk", "random", "exact"]
FAST = {
    "nsga2": dict(pop_size=20, n_gen=15), "ga": dict(pop_size=20, n_gen=15), "pso": dict(pop_size=10, n_gen=15),
    "de": dict(pop_size=10, n_gen=15), "sa": dict(n_iter=100), "abc": dict(n_cycles=40), "aco": dict(n_gen=5),
    "mopso": dict(pop_size=10, n_gen=10),
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("exact_budget", [True, False])
def test_every_solver_keeps_max_changes(solver, exact_budget):
    rng = np.random.default_rng(7)
    S = rng.random((8, 6))  # noqa: N806
    limit = rng.integers(0, 3, size=8)
    previous = np.zeros((8, 6), bool)  # rows of 2 cells: every limit is reachable with budget 2
    for k in range(8):
        previous[k, rng.choice(6, 2, replace=False)] = True
    plan = select_layers(S, 2, solver=solver, tradeoff=0.5, seed=0, exact_budget=exact_budget, previous=previous,
                         max_changes=limit, **FAST.get(solver, {}))
    assert np.all((plan.mask != previous).sum(axis=1) <= limit)
    assert plan.stats["row_changes"] == (plan.mask != previous).sum(axis=1).tolist()
    if plan.front is not None:
        assert np.all((plan.front.masks != previous).sum(axis=2) <= limit)


def test_max_changes_zero_keeps_previous_and_set_aside_counts_its_changes():
    rng = np.random.default_rng(3)
    S = rng.random((5, 6))  # noqa: N806
    first = select_layers(S, 2, solver="exact", tradeoff=0.3)
    again = select_layers(S[::-1], 2, solver="exact", tradeoff=0.3, previous=first, max_changes=0)
    np.testing.assert_array_equal(again.mask, first.mask)
    # layer 5 is required of every client and set aside; previous lacks it, so each row has spent a change
    previous = first.mask.copy()
    previous[:, 5] = False
    plan = select_layers(S, 3, solver="exact", tradeoff=0.3, required=[5], previous=previous, max_changes=3)
    assert plan.stats["set_aside"] == [5]
    assert np.all((plan.mask != previous).sum(axis=1) <= 3)
    sub = SelectionProblem(S / S.sum(axis=1, keepdims=True), np.full(5, 3), required=np.tile(np.arange(6) == 5, (5, 1)),
                           previous=previous, max_changes=np.full(5, 3))
    plans = enumerate_plans(sub)
    value = sub.importance(plans) - 0.3 * np.var(plans[:, :, :5].sum(axis=1), axis=-1)
    best = plans[int(np.argmax(value))]
    assert float(sub.importance(plan.mask) - 0.3 * np.var(plan.mask[:, :5].sum(axis=0))) == pytest.approx(value.max())
    assert sub.is_feasible(best)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(max_changes=1), ValueError, r"max_changes=1 .* but previous is None; pass last round"),
        (dict(max_changes=-1, previous=np.zeros((3, 4), bool)), ValueError, r"max_changes\[0\] = -1 must be >= 0"),
        (dict(max_changes=[1, 2], previous=np.zeros((3, 4), bool)), ValueError,
         r"max_changes has 2 entries, but there are K=3 clients"),
        (dict(max_changes=1.5, previous=np.zeros((3, 4), bool)), TypeError,
         r"max_changes must be an int or one int per client, got 1.5"),
        (dict(max_changes=[1, 2.0, 1], previous=np.zeros((3, 4), bool)), TypeError,
         r"max_changes\[1\] must be an int .*got 2.0"),
        (dict(max_changes=0, previous=np.zeros((3, 4), bool), required=[3]), ValueError,
         r"max_changes\[0\] = 0, but client 0's required and forbidden cells already differ"),
    ],
)
def test_max_changes_errors(kwargs, error, match):
    S = np.random.default_rng(0).random((3, 4))  # noqa: N806
    with pytest.raises(error, match=match):
        select_layers(S, 2, solver="exact", tradeoff=0.1, **kwargs)


def test_an_unreachable_limit_says_so():
    S = np.random.default_rng(0).random((3, 4))  # noqa: N806
    previous = np.zeros((3, 4), bool)  # budget 2 needs 2 changes per row
    with pytest.raises(ValueError, match="max_changes"):
        select_layers(S, 2, solver="exact", tradeoff=0.1, previous=previous, max_changes=1)
