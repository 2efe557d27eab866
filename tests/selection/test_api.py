"""select_layers: inputs, normalization, tradeoff semantics, the knee, certification and seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from selection_cases import heavy_tailed, tiny_problems

import f3ocus
from f3ocus.scores import LayerScores
from f3ocus.selection.decision import knee_index, knee_tradeoff, pick_scalarized
from f3ocus.selection.exact import exact_front, exact_optimum
from f3ocus.selection.inputs import normalize_scores
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.reference import brute_force_optimum


def test_mappings_are_aligned_by_name():
    raw, budgets = heavy_tailed(5, 6, 0)
    names = [f"blocks.{i}" for i in range(6)]
    in_order = [dict(zip(names, row.tolist(), strict=True)) for row in raw]
    shuffled = [dict(reversed(list(d.items()))) for d in in_order]  # same names, other order
    a = f3ocus.select_layers(raw, budgets, solver="exact", tradeoff=0.3)
    b = f3ocus.select_layers(in_order, budgets, solver="exact", tradeoff=0.3)
    c = f3ocus.select_layers(in_order[:1] + shuffled[1:], budgets, solver="exact", tradeoff=0.3)
    assert np.array_equal(a.mask, b.mask) and np.array_equal(b.mask, c.mask)
    assert b.layer_names == tuple(names) and a.layer_names is None


def test_layer_scores_and_tensors_are_accepted():
    raw, budgets = heavy_tailed(3, 4, 1)
    names = ["a", "b", "c", "d"]
    scores = [LayerScores(dict(zip(names, row.tolist(), strict=True))) for row in raw]
    a = f3ocus.select_layers(scores, budgets, solver="exact", tradeoff=1.0)
    b = f3ocus.select_layers(torch.tensor(raw), torch.tensor(budgets), solver="exact", tradeoff=1.0)
    assert np.array_equal(a.mask, b.mask) and a.layers[0][0] in names


@pytest.mark.parametrize("normalize", ["sum", "max", "rank"])
def test_a_client_with_1e6_larger_eigenvalues_gets_no_more_weight(normalize):
    raw, budgets = heavy_tailed(6, 8, 2)
    loud = raw.copy()
    loud[2] *= 1e6
    np.testing.assert_allclose(normalize_scores(loud, normalize), normalize_scores(raw, normalize), rtol=1e-12)
    a = f3ocus.select_layers(raw, budgets, solver="exact", tradeoff=0.5, normalize=normalize)
    b = f3ocus.select_layers(loud, budgets, solver="exact", tradeoff=0.5, normalize=normalize)
    assert np.array_equal(a.mask, b.mask)
    assert a.importance == pytest.approx(b.importance, rel=1e-9)


def test_without_normalization_the_loud_client_dominates():
    raw = np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    loud = raw * np.array([[1.0], [1e6]])
    assert normalize_scores(loud, "none")[1, 2] == 3e6
    assert f3ocus.select_layers(loud, 1, solver="topk", normalize="none").importance == pytest.approx(3e6 + 3)


def test_normalizations_by_hand():
    raw = np.array([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]])
    np.testing.assert_allclose(normalize_scores(raw, "sum"), [[0.25, 0.75, 0.0], [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(normalize_scores(raw, "max"), [[1 / 3, 1.0, 0.0], [0.5, 0.5, 1.0]])
    np.testing.assert_allclose(normalize_scores(raw, "rank"), [[2 / 3, 1.0, 1 / 3], [0.5, 0.5, 1.0]])
    np.testing.assert_allclose(normalize_scores(raw, "none"), raw)


@given(tiny_problems())
@settings(max_examples=25)
def test_numeric_tradeoff_gives_the_exact_optimum(p):
    plan = f3ocus.select_layers(p.scores, p.budgets, solver="exact", tradeoff=0.7, normalize="none", exact_budget=p.exact_budget)
    best = brute_force_optimum(p, 0.7)
    assert plan.scalarized(0.7) == pytest.approx(float(p.scalarized(best, 0.7)), abs=1e-12)


def test_exact_knee_is_the_optimum_at_the_knee_tradeoff():
    raw, budgets = heavy_tailed(10, 12, 3)
    plan = f3ocus.select_layers(raw, budgets, solver="exact", certify=True)
    p = SelectionProblem(raw / raw.sum(axis=1, keepdims=True), budgets)
    t_star = knee_tradeoff(p)
    assert plan.stats["certify_tradeoff"] == pytest.approx(t_star)
    assert plan.stats["gap"] == pytest.approx(0.0, abs=1e-12)
    assert plan.scalarized(t_star) == pytest.approx(float(p.scalarized(exact_optimum(p, t_star), t_star)))
    assert len(plan.front) == len(exact_front(p)) > 2


def test_single_objective_default_tradeoff_is_the_knee_tradeoff():
    raw, budgets = heavy_tailed(8, 10, 4)
    plan = f3ocus.select_layers(raw, budgets, solver="ga", seed=0, n_gen=5, pop_size=10)
    p = SelectionProblem(raw / raw.sum(axis=1, keepdims=True), budgets)
    assert plan.stats["default_tradeoff"] == pytest.approx(knee_tradeoff(p))
    assert plan.stats["smart_start"] is True and plan.front is None


def test_knee_by_hand():
    # points (importance, diversity): ends A=(10, 10), B=(0, 0); C=(8, 2) is farthest above the chord
    imp = np.array([10.0, 0.0, 8.0, 5.0, 4.0])
    div = np.array([10.0, 0.0, 2.0, 4.0, 6.0])  # the last point is dominated by (5, 4)
    assert knee_index(imp, div) == 2
    assert pick_scalarized(imp, div, 0.0) == 0 and pick_scalarized(imp, div, 100.0) == 1
    assert knee_index(np.array([3.0]), np.array([1.0])) == 0


def test_multi_objective_pick_respects_a_tradeoff():
    raw, budgets = heavy_tailed(10, 12, 5)
    plan = f3ocus.select_layers(raw, budgets, solver="nsga2", tradeoff=2.0, seed=0, n_gen=10, pop_size=20)
    values = plan.front.importance - 2.0 * plan.front.diversity
    assert plan.scalarized(2.0) == pytest.approx(values.max())


def test_certify_reports_a_nonnegative_gap_and_topk_is_off_on_heavy_tails():
    raw, budgets = heavy_tailed(12, 16, 0)
    tk = f3ocus.select_layers(raw, budgets, solver="topk", tradeoff=0.4, certify=True)
    ex = f3ocus.select_layers(raw, budgets, solver="exact", tradeoff=0.4, certify=True)
    assert ex.stats["gap"] == 0.0 and tk.stats["gap"] > 0.05
    assert tk.stats["exact_scalarized"] == pytest.approx(ex.scalarized(0.4))


def test_at_most_budgets():
    raw, budgets = heavy_tailed(3, 4, 6)
    raw[:, :2] = 0.0
    # at tradeoff 0 only importance counts: zero-score layers are left out
    plain = f3ocus.select_layers(raw, budgets, solver="exact", tradeoff=0.0, exact_budget=False)
    assert not plain.mask[:, :2].any() and plain.stats["exact_budget"] is False
    # with a tradeoff, zero-score layers may be trained to even out the counts: the brute force decides
    plan = f3ocus.select_layers(raw, budgets, solver="exact", tradeoff=0.5, exact_budget=False)
    assert np.all(plan.mask.sum(axis=1) <= budgets)
    p = SelectionProblem(raw / raw.sum(axis=1, keepdims=True), budgets, exact_budget=False)
    assert plan.scalarized(0.5) == pytest.approx(float(p.scalarized(brute_force_optimum(p, 0.5), 0.5)), abs=1e-12)


def test_seed_none_is_recorded_and_reproduces():
    raw, budgets = heavy_tailed(6, 8, 7)
    first = f3ocus.select_layers(raw, budgets, solver="ga", tradeoff=1.0, n_gen=5, pop_size=10)
    again = f3ocus.select_layers(raw, budgets, solver="ga", tradeoff=1.0, n_gen=5, pop_size=10, seed=first.stats["seed"])
    assert np.array_equal(first.mask, again.mask)


def test_stats_are_complete():
    raw, budgets = heavy_tailed(6, 8, 8)
    plan = f3ocus.select_layers(raw, budgets, solver="nsga2", seed=0, n_gen=4, pop_size=10)
    for key in ("solver", "evaluations", "generations", "seconds", "seed", "normalize", "exact_budget"):
        assert key in plan.stats
    assert plan.stats["generations"] == 4 and plan.stats["evaluations"] >= 10


def test_final_polish_is_reported_and_never_hurts():
    raw, budgets = heavy_tailed(12, 16, 1)
    plan = f3ocus.select_layers(raw, budgets, solver="ga", tradeoff=1.0, seed=0, n_gen=5, pop_size=10)
    assert plan.stats["polish_tradeoff"] == 1.0 and plan.stats["polish_moves"] >= 0
    assert plan.scalarized(1.0) >= plan.stats["scalarized_before_polish"] - 1e-12
    bare = f3ocus.select_layers(raw, budgets, solver="ga", tradeoff=1.0, seed=0, n_gen=5, pop_size=10, polish=False)
    assert "polish_moves" not in bare.stats
    assert bare.scalarized(1.0) == pytest.approx(plan.stats["scalarized_before_polish"])
