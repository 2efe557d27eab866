"""Client constraints: exact solvers against brute force, every solver feasible, the flow where claimed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from selection_cases import constrained_problem

from f3ocus import select_layers
from f3ocus.selection import mip as mip_module
from f3ocus.selection.exact import solve_exact
from f3ocus.selection.gains import add_gains, remove_losses
from f3ocus.selection.plans import fill, random_plan, repair, topk_plan
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.reference import MAX_PLANS, brute_force_optimum, count_plans, enumerate_plans
from f3ocus.selection.solvers._moves import _best_single_moves, draw_out_slots, move_gains, pair_exchanges

KINDS = ["costs", "required", "allowed", "coverage", "churn", "agree", "at_most", "limit"]


@st.composite
def constrained(draw, max_k: int = 3, max_l: int = 4):
    """A tiny problem with a random subset of the constraints that has at least one feasible plan."""
    kinds = draw(st.sets(st.sampled_from(KINDS)))
    seed = draw(st.integers(0, 2**32 - 1))
    K, L = draw(st.integers(1, max_k)), draw(st.integers(1, max_l))  # noqa: N806
    sel = constrained_problem(K, L, seed, kinds)
    assume(count_plans(sel) <= MAX_PLANS)  # brute force is for tiny instances only
    assume(len(enumerate_plans(sel)) > 0)
    return sel


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), t=st.sampled_from([0.0, 0.1, 1.0, 5.0]))
def test_exact_matches_brute_force_for_every_constraint_combination(sel, t):
    plan, info = solve_exact(sel, t)
    assert sel.is_feasible(plan)
    best = float(sel.scalarized(brute_force_optimum(sel, t), t))
    value = float(sel.scalarized(plan, t))
    assert value >= best - 1e-6 * max(1.0, abs(best)) - (info.get("gap", 0.0) * max(1.0, abs(best)))
    assert info["method"] in (("flow", "cycles") if sel.flow_applies else ("mip",))
    if info["method"] == "mip":
        assert info["bound"] >= best - 1e-6 * max(1.0, abs(best))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), t=st.sampled_from([0.1, 1.0]))
def test_mip_matches_brute_force_also_where_the_flow_applies(sel, t):
    res = mip_module.mip_optimum(sel, t, gap=1e-9)
    best = float(sel.scalarized(brute_force_optimum(sel, t), t))
    assert sel.is_feasible(res.plan)
    assert res.value == pytest.approx(best, rel=1e-6, abs=1e-9)
    assert res.bound >= best - 1e-6 * max(1.0, abs(best))


def test_flow_is_used_exactly_where_claimed(monkeypatch):
    calls = []
    real = mip_module.mip_optimum
    monkeypatch.setattr(mip_module, "mip_optimum", lambda *a, **k: calls.append(1) or real(*a, **k))
    for i, kinds in enumerate([{"required", "allowed", "coverage", "churn"}, {"at_most", "coverage"}, set()]):
        sel = constrained_problem(3, 4, i, kinds)
        assert sel.flow_applies
        solve_exact(sel, 0.5)
    assert calls == []
    for i, kinds in enumerate([{"costs"}, {"agree"}, {"agree", "required"}]):
        sel = constrained_problem(3, 4, i, kinds)
        assert not sel.flow_applies
        solve_exact(sel, 0.5)
    assert len(calls) == 3


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), seed=st.integers(0, 2**16))
def test_decoder_random_plans_and_repair_are_feasible(sel, seed):
    rng = np.random.default_rng(seed)
    assert np.all(sel.is_feasible(random_plan(sel, rng, n=5)))
    assert np.all(sel.is_feasible(fill(rng.random((4, sel.K, sel.L)), sel, rng)))
    assert np.all(sel.is_feasible(repair(rng.random((4, sel.K, sel.L)) < 0.5, sel, rng)))
    assert sel.is_feasible(topk_plan(sel))
    feasible = enumerate_plans(sel)[0]
    np.testing.assert_array_equal(repair(feasible, sel, rng), feasible)  # feasible plans stay


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), seed=st.integers(0, 2**16), t=st.sampled_from([0.0, 0.3, 2.0]))
def test_move_and_exchange_gains_match_full_evaluation(sel, seed, t):
    rng = np.random.default_rng(seed)
    masks = random_plan(sel, rng, n=6)
    counts = masks.sum(axis=1)
    k = rng.integers(sel.K, size=6)
    a = draw_out_slots(sel, masks, k, rng)
    gains = move_gains(sel, t, masks, counts, k, a)
    for p in range(6):
        for c in range(sel.L + 1):
            new = masks[p].copy()
            if a[p] < sel.L:
                new[k[p], a[p]] = False
            if c < sel.L:
                new[k[p], c] = True
            ok = (c == a[p]) or ((c == sel.L or not masks[p, k[p], c]) and (a[p] < sel.L or c < sel.L))
            if np.isfinite(gains[p, c]):
                assert ok and sel.is_feasible(new)
                delta = float(sel.scalarized(new, t) - sel.scalarized(masks[p], t))
                assert gains[p, c] == pytest.approx(delta, abs=1e-9)
    k2 = rng.integers(sel.K, size=6)
    g, la, lc = pair_exchanges(sel, masks, k, k2)
    for p in np.flatnonzero(np.isfinite(g) & (k != k2)):
        new = masks[p].copy()
        new[k[p], la[p]], new[k[p], lc[p]], new[k2[p], lc[p]], new[k2[p], la[p]] = False, True, False, True
        assert sel.is_feasible(new)
        assert g[p] == pytest.approx(float(sel.scalarized(new, t) - sel.scalarized(masks[p], t)), abs=1e-9)
    g, kk, src, dst = _best_single_moves(sel, t, masks, counts)
    for p in np.flatnonzero(np.isfinite(g)):
        new = masks[p].copy()
        if src[p] < sel.L:
            new[kk[p], src[p]] = False
        if dst[p] < sel.L:
            new[kk[p], dst[p]] = True
        assert sel.is_feasible(new)
        assert g[p] == pytest.approx(float(sel.scalarized(new, t) - sel.scalarized(masks[p], t)), abs=1e-9)


def test_add_and_remove_terms_of_both_couplings():
    for coupling in ("spread", "agree"):
        sel = SelectionProblem(np.full((4, 3), 0.25), np.full(4, 1), False, coupling=coupling)
        n = np.array([1.0, 2.0, 0.0])
        sign = 1.0 if coupling == "spread" else -1.0
        np.testing.assert_allclose(add_gains(sel, 1.0, np.zeros(3), n), -sign * (2 * n + 1) / 3)
        np.testing.assert_allclose(remove_losses(sel, 1.0, np.zeros(3), n), sign * (1 - 2 * n) / 3)


SOLVERS = ["nsga2", "ga", "pso", "de", "sa", "abc", "aco", "mopso", "topk", "random", "exact"]
FAST = {
    "nsga2": dict(pop_size=20, n_gen=15), "ga": dict(pop_size=20, n_gen=15), "pso": dict(pop_size=10, n_gen=15),
    "de": dict(pop_size=10, n_gen=15), "sa": dict(n_iter=100), "abc": dict(n_cycles=40), "aco": dict(n_gen=5),
    "mopso": dict(pop_size=10, n_gen=10),
}


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("kinds", [("costs", "required", "allowed", "coverage", "churn"), ("at_most", "coverage",
                                   "allowed"), ("agree", "required"), ("required", "allowed", "churn"),
                                   ("limit", "required", "allowed"), ("costs", "limit", "allowed")])
def test_every_solver_returns_feasible_plans_under_constraints(solver, kinds):
    sel = constrained_problem(8, 6, 3, set(kinds))
    for tradeoff in (0.5, None) if solver in ("nsga2", "mopso") else (0.5,):
        plan = select_layers(
            sel.scores, sel.capacities if sel.costs is not None else sel.budgets, solver=solver, tradeoff=tradeoff,
            seed=0, normalize="none", exact_budget=None if sel.costs is not None else sel.exact_budget,
            costs=sel.costs, required=sel.required, allowed=sel.allowed, min_coverage=sel.min_coverage,
            previous=sel.previous, churn_penalty=sel.churn_penalty, coupling=sel.coupling,
            max_changes=sel.max_changes, **FAST.get(solver, {}),
        )
        assert sel.is_feasible(plan.mask)
        if plan.front is not None:
            assert np.all(sel.is_feasible(plan.front.masks))


def test_required_outside_the_budget_adds_to_it():
    S = np.random.default_rng(0).random((4, 6))  # noqa: N806
    inside = select_layers(S, 2, solver="exact", tradeoff=0.1, required=[5])
    outside = select_layers(S, 2, solver="exact", tradeoff=0.1, required=[5], required_in_budget=False)
    assert inside.mask.sum(axis=1).tolist() == [2] * 4 and outside.mask.sum(axis=1).tolist() == [3] * 4
    assert inside.mask[:, 5].all() and outside.mask[:, 5].all()
    costs = np.arange(1.0, 7.0)
    plan = select_layers(S, 4.0, costs=costs, solver="exact", tradeoff=0.1, required=[5], required_in_budget=False)
    assert np.all(plan.mask[:, 5]) and np.all(plan.mask @ costs <= 4.0 + 6.0)


def test_a_large_churn_penalty_keeps_the_previous_plan():
    S = np.random.default_rng(1).random((6, 5))  # noqa: N806
    first = select_layers(S, 2, solver="exact", tradeoff=0.2)
    noisy = S * (1 + 1e-7 * np.random.default_rng(2).standard_normal(S.shape))
    again = select_layers(noisy, 2, solver="exact", tradeoff=0.2, previous=first, churn_penalty=1e-3)
    np.testing.assert_array_equal(again.mask, first.mask)
    assert again.stats["changes"] == 0
    moved = select_layers(S[::-1], 2, solver="exact", tradeoff=0.2, previous=first, churn_penalty=10.0)
    np.testing.assert_array_equal(moved.mask, first.mask)


def test_costs_from_layer_scores_and_mip_certificate():
    from f3ocus import LayerScores

    rng = np.random.default_rng(0)
    names = ["emb", "b0", "b1", "head"]
    sizes = {"emb": 30, "b0": 10, "b1": 10, "head": 1}
    clients = [LayerScores(dict(zip(names, rng.random(4).tolist(), strict=True)), sizes) for _ in range(5)]
    plan = select_layers(clients, 21, costs="params", solver="sa", tradeoff=0.3, seed=0, required=["head"],
                         certify=True, n_iter=300)
    assert plan.stats["certify_method"] == "mip"
    assert plan.stats["bound"] >= plan.stats["exact_scalarized"] - 1e-9
    assert np.all(plan.mask @ np.array([30, 10, 10, 1]) <= 21)
    as_bytes = select_layers(clients, 84, costs="bytes", solver="exact", tradeoff=0.3)
    assert as_bytes.stats["costs"] == [120.0, 40.0, 40.0, 4.0]
    assert {"bound", "mip_gap"} <= set(as_bytes.stats)


def test_coverage_is_met_and_agree_piles_up():
    S = np.random.default_rng(3).random((6, 6))  # noqa: N806
    plan = select_layers(S, 1, solver="exact", tradeoff=0.0, min_coverage=1)
    assert np.all(plan.counts >= 1)
    agree = select_layers(S, 2, solver="exact", tradeoff=5.0, coupling="agree")
    assert sorted(agree.counts.tolist()) == [0, 0, 0, 0, 6, 6]


def test_a_layer_every_client_must_train_is_set_aside():
    S = np.random.default_rng(4).random((5, 6))  # noqa: N806
    plan = select_layers(S, 3, solver="exact", tradeoff=0.5, required=[5])
    assert plan.mask[:, 5].all() and plan.stats["set_aside"] == [5]
    sub = SelectionProblem(S / S.sum(axis=1, keepdims=True), np.full(5, 3))
    assert plan.diversity == pytest.approx(float(np.var(plan.mask[:, :5].sum(axis=0))))
    assert plan.importance == pytest.approx(float(sub.importance(plan.mask)))
    best = max(enumerate_plans(SelectionProblem(sub.scores[:, :5], np.full(5, 2))),
               key=lambda m: float(sub.scores[:, :5][m].sum() - 0.5 * np.var(m.sum(axis=0))))
    np.testing.assert_array_equal(plan.mask[:, :5], best)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), t=st.sampled_from([0.3, 2.0]))
def test_unit_variable_program_and_fixed_total_bounds_against_brute_force(sel, t):
    """The unit-variable MIP is exact on any window of totals; the LP at a total bounds every plan with it."""
    assume(sel.coupling == "spread")
    plans = enumerate_plans(sel)
    values = sel.scalarized(plans, t)
    totals = plans.sum(axis=(1, 2))
    const = 0.0 if sel.linear is sel.scores or sel.previous is None else -sel.churn_penalty * float(sel.previous.sum())
    for total in np.unique(totals):
        out = mip_module._relaxation_at(sel, t, int(total), const)
        assert out is not None and out[0] >= values[totals == total].max() - 1e-7
    lo, hi = int(totals.min()), int(totals.max())
    c, A, rlo, rhi, lb, ub, integrality = mip_module._unary_program(sel, t, lo, hi, const)  # noqa: N806
    res = mip_module._solve(c, A, rlo, rhi, lb, ub, integrality, None, 1e-9)
    plan = res.x[: sel.K * sel.L].reshape(sel.K, sel.L) > 0.5
    assert sel.is_feasible(plan)
    assert float(sel.scalarized(plan, t)) == pytest.approx(values.max(), abs=1e-7)
    assert -res.fun == pytest.approx(values.max(), abs=1e-7)  # the objective is minus the value


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), seed=st.integers(0, 2**16), t=st.sampled_from([0.0, 0.3, 2.0]))
def test_capacity_moves_find_the_best_gain_of_the_all_pairs_scan(sel, seed, t):
    from f3ocus.selection.solvers._moves import _best_single_moves_capacity, _best_single_moves_costs

    assume(sel.costs is not None and sel.max_changes is None)  # the all-pairs scan serves max_changes
    masks = random_plan(sel, np.random.default_rng(seed), n=6)
    counts = masks.sum(axis=1)
    fast, _, _, _ = _best_single_moves_capacity(sel, t, masks, counts)
    slow, _, _, _ = _best_single_moves_costs(sel, t, masks, counts)
    np.testing.assert_allclose(np.maximum(fast, -1e300), np.maximum(slow, -1e300), rtol=1e-12, atol=1e-12)


KEY_SHAPES = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 9))


def keys_with_ties(shape, seed: int, levels: int, p_inf: float = 0.2) -> np.ndarray:
    """Random keys (``levels=0``) or integer keys with ties, a share ``p_inf`` each of +inf and -inf."""
    rng = np.random.default_rng(seed)
    keys = rng.random(shape) if levels == 0 else rng.integers(levels, size=shape).astype(float)
    keys[rng.random(shape) < p_inf] = np.inf
    keys[rng.random(shape) < p_inf] = -np.inf
    return keys


@settings(max_examples=100, deadline=None)
@given(shape=KEY_SHAPES, seed=st.integers(0, 2**16), levels=st.sampled_from([0, 3, 1000]))
def test_descending_order_is_the_stable_descending_argsort(shape, seed, levels):
    from f3ocus.selection.plans import descending_order, gather

    keys = keys_with_ties(shape, seed, levels)
    stable = np.argsort(-keys, axis=-1, kind="stable")
    np.testing.assert_array_equal(descending_order(keys), stable)
    relaxed = descending_order(keys, ties_matter_at_inf=False)
    np.testing.assert_array_equal(gather(keys, relaxed), gather(keys, stable))  # same sorted keys
    finite = np.isfinite(gather(keys, stable))
    np.testing.assert_array_equal(np.where(finite, relaxed, -1), np.where(finite, stable, -1))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(), seed=st.integers(0, 2**16), ties=st.booleans())
def test_first_fit_matches_a_cell_by_cell_greedy(sel, seed, ties):
    from f3ocus.selection.plans import _first_fit

    assume(sel.costs is not None)
    rng = np.random.default_rng(seed)
    keys = rng.integers(3, size=(4, sel.K, sel.L)).astype(float) if ties else rng.random((4, sel.K, sel.L))
    keys = np.where(sel.required_mask, np.inf, np.where(sel.allowed_mask, keys, -np.inf))
    take = rng.random(keys.shape) < 0.7
    got = _first_fit(keys, sel, take)
    want = np.zeros(keys.shape, dtype=bool)
    for p in range(4):
        for k in range(sel.K):
            load = 0.0
            for j in np.argsort(-keys[p, k], kind="stable"):
                fits = load + sel.costs[j] <= sel.capacities[k] * (1 + 1e-12) + 1e-9
                if keys[p, k, j] > -np.inf and take[p, k, j] and fits:
                    want[p, k, j] = True
                    load += sel.costs[j]
    np.testing.assert_array_equal(got, want)



@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(sel=constrained(max_k=4, max_l=5), seed=st.integers(0, 2**16), t=st.sampled_from([0.0, 0.3, 2.0]))
def test_batched_single_move_ascent_gains_add_up_and_ends_at_a_local_optimum(sel, seed, t):
    from f3ocus.selection.solvers._moves import _ascend_batched, _client_best_moves, polish

    assume(sel.costs is None and sel.max_changes is None)
    masks = random_plan(sel, np.random.default_rng(seed), n=4)
    before = sel.scalarized(masks, t)
    g, _, _ = _client_best_moves(sel, t, masks, masks.sum(axis=1))
    step, counts = masks.copy(), masks.sum(axis=1, dtype=np.int64)
    _ascend_batched(sel, t, step, counts, cap=1 << 30, max_steps=1)
    np.testing.assert_array_equal(counts, step.sum(axis=1))
    assert np.all(sel.is_feasible(step))
    for p in range(4):  # one step: every changed row took its best move, and the gains add up exactly
        moved = (step[p] != masks[p]).any(axis=1)
        assert np.all(g[p, moved] > 0)
        delta = float(sel.scalarized(step[p], t) - before[p])
        assert delta == pytest.approx(float(g[p, moved].sum()), abs=1e-9)
        assert moved.any() == (g[p].max() > 1e-12)
    climbed, _ = polish(sel, t, masks, exchanges=False)
    assert np.all(sel.is_feasible(climbed))
    assert np.all(sel.scalarized(climbed, t) >= before - 1e-12)
    g, _, _ = _client_best_moves(sel, t, climbed, climbed.sum(axis=1))
    assert np.all(g <= 1e-9)  # no single move improves


def test_batched_ascent_takes_many_swaps_per_step_on_many_clients():
    from f3ocus.selection.solvers._moves import _ascend_batched

    sel = constrained_problem(60, 12, 7, set())
    masks = random_plan(sel, np.random.default_rng(1), n=2)
    step, counts = masks.copy(), masks.sum(axis=1, dtype=np.int64)
    moves = _ascend_batched(sel, 0.2, step, counts, cap=1 << 30, max_steps=1)
    assert moves > 2  # more than one move per plan in a single step
    assert np.all(sel.scalarized(step, 0.2) > sel.scalarized(masks, 0.2))


@settings(max_examples=100, deadline=None)
@given(shape=KEY_SHAPES, seed=st.integers(0, 2**16), levels=st.sampled_from([0, 2, 5]))
def test_top_b_is_the_mask_of_the_stable_ranks(shape, seed, levels):
    from f3ocus.selection.plans import top_b

    keys = keys_with_ties(shape, seed, levels, p_inf=0.15)
    b = np.random.default_rng(seed + 1).integers(0, shape[-1] + 2, size=shape[:-1])  # b > L: the whole row
    order = np.argsort(-keys, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(shape[-1]), shape), axis=-1)
    np.testing.assert_array_equal(top_b(keys, b), ranks < b[..., None])
    np.testing.assert_array_equal(top_b(keys, b[-1]), ranks < b[-1][..., None])  # a (K,) budget broadcasts
