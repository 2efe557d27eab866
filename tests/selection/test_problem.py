"""SelectionProblem and SelectionPymooProblem: the objectives against their definitions, loop by loop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from selection_cases import instance

from f3ocus.selection.operators import random_plan
from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem, decode_keys


def loop_objectives(S, masks):  # noqa: N803
    """Importance and diversity written as the paper's sums, one plan at a time."""
    K, L = S.shape  # noqa: N806
    imp, div = [], []
    for m in masks:
        imp.append(sum(S[k, l] for k in range(K) for l in range(L) if m[k, l]))  # noqa: E741
        n = [sum(int(m[k, l]) for k in range(K)) for l in range(L)]  # noqa: E741
        nbar = sum(n) / L
        div.append(sum((x - nbar) ** 2 for x in n) / L)
    return np.array(imp), np.array(div)


@given(st.integers(1, 6), st.integers(1, 7), st.integers(0, 10_000), st.booleans())
def test_objectives_match_the_sums(K, L, seed, exact):  # noqa: N803
    rng = np.random.default_rng(seed)
    p = SelectionProblem(rng.random((K, L)), rng.integers(1, L + 1, K), exact)
    masks = random_plan(p, rng, n=7)
    imp, div = loop_objectives(p.scores, masks)
    np.testing.assert_allclose(p.importance(masks), imp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.diversity(masks), div, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.scalarized(masks, 0.7), imp - 0.7 * div, rtol=1e-12, atol=1e-12)
    # one plan gives a scalar equal to the population entry
    assert p.importance(masks[3]) == pytest.approx(imp[3])
    assert p.diversity(masks[3]) == pytest.approx(div[3])
    assert np.all(p.is_feasible(masks))


def test_is_feasible_exact_and_at_most():
    S = np.ones((2, 3))  # noqa: N806
    m = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)
    assert not SelectionProblem(S, np.array([2, 2])).is_feasible(m)
    assert SelectionProblem(S, np.array([2, 2]), exact_budget=False).is_feasible(m)
    assert SelectionProblem(S, np.array([2, 1])).is_feasible(m)
    assert not SelectionProblem(S, np.array([1, 1]), exact_budget=False).is_feasible(m)


def test_problem_is_frozen_and_readonly():
    p = instance(4, 5, 0)
    with pytest.raises(ValueError):
        p.scores[0, 0] = 1.0
    with pytest.raises(AttributeError):
        p.exact_budget = False  # type: ignore[misc]


def test_bad_problem_data_is_rejected():
    with pytest.raises(ValueError, match="budget"):
        SelectionProblem(np.ones((2, 3)), np.array([1, 4]))
    with pytest.raises(ValueError, match="finite"):
        SelectionProblem(np.array([[1.0, np.nan]]), np.array([1]))
    with pytest.raises(ValueError, match="masks must have shape"):
        SelectionProblem(np.ones((2, 3)), np.array([1, 1])).importance(np.ones((3, 2), bool))


def test_pymoo_problem_objectives():
    p = instance(5, 6, 1)
    rng = np.random.default_rng(0)
    masks = random_plan(p, rng, n=4)
    X = masks.reshape(4, -1)  # noqa: N806
    two = SelectionPymooProblem(p).evaluate(X, return_as_dictionary=True)["F"]
    np.testing.assert_allclose(two, np.column_stack([-p.importance(masks), p.diversity(masks)]))
    one = SelectionPymooProblem(p, tradeoff=2.0).evaluate(X, return_as_dictionary=True)["F"]
    np.testing.assert_allclose(one.ravel(), -p.scalarized(masks, 2.0))


def test_random_key_decoding_keeps_budgets_and_order():
    p = SelectionProblem(np.ones((2, 4)), np.array([1, 3]))
    keys = np.array([[0.1, 0.9, 0.5, 0.3, 0.4, 0.2, 0.8, 0.6]])
    got = decode_keys(keys, p)[0].astype(int).tolist()
    assert got == [[0, 1, 0, 0], [1, 0, 1, 1]]
    at_most = SelectionProblem(np.ones((2, 4)), np.array([1, 3]), exact_budget=False)
    assert decode_keys(keys, at_most)[0].astype(int).tolist() == [[0, 1, 0, 0], [0, 0, 1, 1]]
