"""The demo's plans at equal budgets, and its configuration checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f3ocus.demo.run import TaskConfig
from f3ocus.demo.strategies import (
    STRATEGIES,
    default_budgets,
    is_strategy,
    knee_tradeoff,
    make_plan,
    plan_diversity,
    score_of,
)

NAMES = [f"layer{i}" for i in range(7)]


@settings(max_examples=40)
@given(
    budgets=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from([*STRATEGIES, "exact-x3", "topk-fisher", "f3ocus-snip", "f3ocus-grad_norm"]),
)
def test_plans_keep_budgets_and_name_layers_in_model_order(budgets, seed, strategy):
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(size=(len(budgets), len(NAMES)))
    plan = make_plan(strategy, NAMES, budgets, score_fn=lambda: scores, solver="exact", seed=seed)
    assert plan.mask.shape == (len(budgets), len(NAMES))
    expected = {"full": [len(NAMES)] * len(budgets), "head": [0] * len(budgets)}.get(strategy, budgets)
    assert plan.mask.sum(axis=1).tolist() == expected
    for row, layers in zip(plan.mask, plan.layers, strict=True):
        assert layers == [NAMES[j] for j in np.flatnonzero(row)]
    if strategy == "lastk":
        assert all(row[len(NAMES) - b :].all() for row, b in zip(plan.mask, budgets, strict=True))
    if strategy in ("topk", "topk-fisher"):
        for row, s, b in zip(plan.mask, scores, budgets, strict=True):
            assert set(np.flatnonzero(row)) == set(np.argsort(-s)[:b])
    assert plan.stats["diversity"] == pytest.approx(plan_diversity(plan.mask))
    if score_of(strategy) is not None:
        assert np.array_equal(plan.scores, scores)
    else:
        assert plan.scores is None


def test_f3ocus_balances_layers_where_topk_piles_up():
    """Every client ranks layer 0 first: top-k gives it to all, F³OCUS spreads clients over layers."""
    scores = np.array([[10.0, 1.0, 1.0, 1.0]] * 4) + np.arange(4)[:, None] * 1e-3
    names = NAMES[:4]
    topk = make_plan("topk", names, [1, 1, 1, 1], score_fn=lambda: scores)
    balanced = make_plan("f3ocus", names, [1, 1, 1, 1], score_fn=lambda: scores, solver="exact")
    assert topk.mask.sum(axis=0).tolist() == [4, 0, 0, 0]
    assert balanced.stats["diversity"] < topk.stats["diversity"]


def test_default_budgets_spread_from_two_to_six():
    assert default_budgets(5) == [2, 3, 4, 5, 6]
    assert default_budgets(1) == [6]
    assert default_budgets(3) == [2, 4, 6]


def test_plan_errors():
    with pytest.raises(
        ValueError, match=r"strategy='lastkk' is not a valid choice. Did you mean 'lastk'\?.*exact-x<c>"
    ):
        make_plan("lastkk", NAMES, [1])
    with pytest.raises(ValueError, match=r"strategy='f3ocus' needs score_fn="):
        make_plan("f3ocus", NAMES, [1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4))
def test_exact_at_zero_tradeoff_is_topk_and_the_sweep_lowers_diversity(seed, k):
    """exact-x0 keeps the client-only top-k importance; larger multiples of t* never raise diversity."""
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(size=(k, len(NAMES)))
    budgets = list(rng.integers(1, len(NAMES), size=k))
    topk = make_plan("topk", NAMES, budgets, score_fn=lambda: scores)
    zero = make_plan("exact-x0", NAMES, budgets, score_fn=lambda: scores)
    assert zero.stats["importance"] == pytest.approx(topk.stats["importance"], rel=1e-9)
    divs = [
        make_plan(f"exact-x{c}", NAMES, budgets, score_fn=lambda: scores).stats["diversity"]
        for c in (0, 1, 3, 10)
    ]
    assert all(b <= a + 1e-9 for a, b in zip(divs, divs[1:], strict=False))


def test_baseline_score_strategies_name_their_score_and_solver():
    assert [score_of(s) for s in ("topk-grad_norm", "f3ocus-fisher", "f3ocus-snip", "topk", "lastk")] == [
        "grad_norm",
        "fisher",
        "snip",
        "ntk",
        None,
    ]
    scores = np.array([[10.0, 1.0, 1.0, 1.0]] * 4) + np.arange(4)[:, None] * 1e-3
    plan = make_plan("f3ocus-fisher", NAMES[:4], [1] * 4, score_fn=lambda: scores, solver="exact")
    assert plan.stats["solver"] == "exact" and plan.mask.sum(axis=0).max() < 4  # balanced like f3ocus
    with pytest.raises(ValueError, match=r"topk-<score> / f3ocus-<score> with <score> one of \['grad_norm'"):
        make_plan("topk-synflow", NAMES, [1], score_fn=lambda: scores)


def test_knee_tradeoff_is_the_chord_slope():
    assert knee_tradeoff([3.0, 2.0, 1.0], [4.0, 1.0, 0.0]) == pytest.approx(0.5)
    assert knee_tradeoff([1.0], [2.0]) == 0.0
    assert is_strategy("exact-x2.5") and not is_strategy("exact-x") and not is_strategy("best")


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rounds": 0}, ValueError, r"rounds must lie in \[1, inf\], got 0"),
        ({"kernel": "ntk"}, ValueError, r"kernel='ntk' is not a valid choice"),
        ({"clients": 2, "budgets": (1,)}, ValueError, r"budgets has 1 entries but clients=2"),
        ({"lr": 0.0}, ValueError, r"lr must be a finite number > 0"),
        ({"head_lr": -1e-3}, ValueError, r"head_lr must be a finite number > 0, got -0.001"),
        ({"max_grad_norm": 0.0}, ValueError, r"max_grad_norm must be a finite number > 0, got 0.0"),
        ({"image_size": 1.5}, TypeError, r"image_size must be an int"),
        ({"test_images": 0}, ValueError, r"test_images must lie in \[1, 1000\], got 0"),
        ({"lr_schedule": "linear"}, ValueError, r"lr_schedule='linear' is not a valid choice"),
    ],
)
def test_config_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        TaskConfig(**kwargs)


def test_cosine_schedule_factors():
    cosine = TaskConfig(lr_schedule="cosine")
    # 1/2 (1 + cos(pi r / 4)) for r = 0..3, by hand: 1, (2 + sqrt 2) / 4, 1/2, (2 - sqrt 2) / 4
    expected = [1.0, (2 + 2**0.5) / 4, 0.5, (2 - 2**0.5) / 4]
    assert [cosine.lr_factor(r, 4) for r in range(4)] == pytest.approx(expected, rel=1e-12)
    assert cosine.lr_factor(0, 1) == 1.0  # a single round keeps the full step
    assert [TaskConfig(lr_schedule="constant").lr_factor(r, 4) for r in range(4)] == [1.0] * 4


def test_budget_above_the_layer_count_is_an_error():
    with pytest.raises(ValueError, match=r"budgets\[1\] must lie in \[1, 21\], got 30"):
        TaskConfig(clients=2, budgets=(2, 30)).client_budgets(21)
