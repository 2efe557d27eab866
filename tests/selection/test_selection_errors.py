"""Every user-facing error of select_layers: the message names the argument and says what to do."""

from __future__ import annotations

import numpy as np
import pytest

import f3ocus
from f3ocus.selection.solvers import register_solver, unregister_solver

GOOD = np.array([[3.0, 1.0, 2.0], [1.0, 4.0, 1.0]])


@pytest.mark.parametrize(
    "scores, error, match",
    [
        (np.array([[1.0, np.nan, 2.0]]), ValueError, r"scores must be finite: scores\[0, 1\] = nan"),
        (np.array([[1.0, 2.0], [np.inf, 1.0]]), ValueError, r"scores\[1, 0\] = inf"),
        (np.array([[1.0, -2.0]]), ValueError, r"scores must be >= 0.*scores\[0, 1\] = -2"),
        (
            np.array([[1.0, -2.0]]),
            ValueError,
            r"scores must be >= 0: scores\[0, 1\] = -2\.0\. Signed layer scores \(e\.g\. score='grasp'\) need a "
            r"transform first: f3ocus\.scoring\.make_nonnegative\(scores, 'shift'\) keeps order and gaps, 'rank' "
            r"keeps only the order; or pass transform='shift' to f3ocus\.layer_scores\.",
        ),
        (np.ones(3), ValueError, r"scores must be 2-D .* got shape \(3,\)"),
        (np.ones((2, 3, 1)), ValueError, r"scores must be 2-D"),
        (np.ones((0, 3)), ValueError, r"at least one client and one layer"),
        ([[1.0, 2.0], [1.0]], ValueError, r"scores has ragged rows"),
        ([["a", "b"]], TypeError, r"scores must hold real numbers"),
        (np.array([[True, False]]), TypeError, r"scores must hold real numbers"),
        ("scores", TypeError, r"scores must be a \(K, L\) array-like"),
        ({"a": 1.0, "b": 2.0}, TypeError, r"scores is a single mapping"),
        ([{"a": 1.0, "b": 2.0}, {"a": 1.0, "c": 2.0}], ValueError, r"scores\[1\] has different layer names.*missing \['b'\], extra \['c'\]"),
        ([{"a": 1.0}, [1.0]], TypeError, r"scores\[1\] is .* but scores\[0\] is a mapping"),
    ],
)
def test_bad_scores(scores, error, match):
    with pytest.raises(error, match=match):
        f3ocus.select_layers(scores, 1, solver="topk")


def test_all_zero_client_cannot_be_sum_normalized():
    with pytest.raises(ValueError, match=r"scores\[1\] is all zeros, so normalize='sum'"):
        f3ocus.select_layers([[1.0, 2.0], [0.0, 0.0]], 1, solver="topk")
    # rank normalization accepts it
    assert f3ocus.select_layers([[1.0, 2.0], [0.0, 0.0]], 1, solver="topk", normalize="rank").mask.shape == (2, 2)


@pytest.mark.parametrize(
    "budget, error, match",
    [
        (0, ValueError, r"budget=0 must lie in 1..L = 1..3"),
        (4, ValueError, r"budget=4 must lie in 1..L = 1..3"),
        ([1, 2, 3], ValueError, r"budget has 3 entries, but there are K=2 clients"),
        ([1, 5], ValueError, r"budget\[1\]=5 must lie in 1..L = 1..3"),
        ([1.5, 2], TypeError, r"budget must hold integers"),
        ("2", TypeError, r"budget must be an int or a sequence of K=2 ints"),
        (True, TypeError, r"budget must be an int or a sequence"),
        (2.0, TypeError, r"budget must be an int or a sequence"),
    ],
)
def test_bad_budget(budget, error, match):
    with pytest.raises(error, match=match):
        f3ocus.select_layers(GOOD, budget, solver="topk")


def test_integral_float_budgets_per_client_are_accepted():
    assert f3ocus.select_layers(GOOD, np.array([1.0, 2.0]), solver="topk").mask.sum(axis=1).tolist() == [1, 2]


def test_unknown_solver_lists_the_valid_names():
    with pytest.raises(ValueError, match=r"solver='nsga3' is not a known solver. Did you mean 'nsga2'\?.*'exact'.*'topk'"):
        f3ocus.select_layers(GOOD, 1, solver="nsga3")
    with pytest.raises(ValueError, match=r"solver=3 is not a known solver"):
        f3ocus.select_layers(GOOD, 1, solver=3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(tradeoff=-1.0), ValueError, r"tradeoff must be a finite number >= 0, got -1.0"),
        (dict(tradeoff=float("nan")), ValueError, r"tradeoff must be a finite number >= 0"),
        (dict(tradeoff="high"), TypeError, r"tradeoff must be a real number"),
        (dict(normalize="softmax"), ValueError, r"normalize='softmax' is not a valid choice.*'sum', 'max', 'rank', 'none'"),
        (dict(seed=-1), ValueError, r"seed must be None or an int >= 0, got -1"),
        (dict(seed=1.5), TypeError, r"seed must be None or an int >= 0"),
        (dict(exact_budget="yes"), TypeError, r"exact_budget must be True or False"),
        (dict(solver="random", samples=0), ValueError, r"samples must lie in \[1, inf\]"),
    ],
)
def test_bad_options(kwargs, error, match):
    kwargs.setdefault("solver", "topk")
    with pytest.raises(error, match=match):
        f3ocus.select_layers(GOOD, 1, **kwargs)


def test_factory_that_does_not_return_an_algorithm():
    @register_solver("not_an_algorithm")
    def factory(problem):
        return "GA"

    try:
        with pytest.raises(TypeError, match=r"solver='not_an_algorithm' returned 'GA' \(str\).*pymoo.core.algorithm.Algorithm"):
            f3ocus.select_layers(GOOD, 1, solver="not_an_algorithm")
    finally:
        unregister_solver("not_an_algorithm")


def test_bad_registrations():
    with pytest.raises(ValueError, match=r"register_solver\(name='my solver'\): the name must be a non-empty identifier"):
        register_solver("my solver")
    with pytest.raises(ValueError, match=r"register_solver\(encoding='bits'\)"):
        register_solver("mine", encoding="bits")
    with pytest.raises(TypeError, match=r"register_solver\('mine'\) decorates a callable factory"):
        register_solver("mine")(3)


def test_plot_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    from f3ocus.errors import MissingExtraError

    plan = f3ocus.select_layers(GOOD, 1, solver="topk")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(MissingExtraError, match=r"pip install 'f3ocus\[plot\]'"):
        plan.plot()


def test_negative_scores_advice_works():
    signed = [
        f3ocus.LayerScores({"a": 2.0, "b": -1.0, "c": 0.5}),
        f3ocus.LayerScores({"a": -3.0, "b": 1.0, "c": 4.0}),
    ]
    with pytest.raises(ValueError, match=r"make_nonnegative\(scores, 'shift'\)"):
        f3ocus.select_layers(signed, 1, solver="topk")
    for how in ("shift", "rank"):
        fixed = [f3ocus.scoring.make_nonnegative(s, how) for s in signed]
        plan = f3ocus.select_layers(fixed, 1, solver="topk")
        # the transforms keep the order, so each client keeps its own top layer
        assert plan.layers == [["a"], ["c"]]
