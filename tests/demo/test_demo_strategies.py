"""The demo's plans at equal budgets, and its configuration checks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from f3ocus.demo.run import DemoConfig
from f3ocus.demo.strategies import STRATEGIES, default_budgets, make_plan

NAMES = [f"layer{i}" for i in range(7)]


@settings(max_examples=40)
@given(
    budgets=st.lists(st.integers(1, 7), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    strategy=st.sampled_from(STRATEGIES),
)
def test_plans_keep_budgets_and_name_layers_in_model_order(budgets, seed, strategy):
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(size=(len(budgets), len(NAMES)))
    plan = make_plan(strategy, NAMES, budgets, score_fn=lambda: scores, solver="exact", seed=seed)
    assert plan.mask.shape == (len(budgets), len(NAMES))
    expected = [len(NAMES)] * len(budgets) if strategy == "full" else budgets
    assert plan.mask.sum(axis=1).tolist() == expected
    for row, layers in zip(plan.mask, plan.layers, strict=True):
        assert layers == [NAMES[j] for j in np.flatnonzero(row)]
    if strategy == "lastk":
        assert all(row[len(NAMES) - b :].all() for row, b in zip(plan.mask, budgets, strict=True))
    if strategy == "topk":
        for row, s, b in zip(plan.mask, scores, budgets, strict=True):
            assert set(np.flatnonzero(row)) == set(np.argsort(-s)[:b])
    if strategy in ("f3ocus", "topk"):
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
    with pytest.raises(ValueError, match=r"strategy='lastkk' is not a valid choice. Did you mean 'lastk'\?"):
        make_plan("lastkk", NAMES, [1])
    with pytest.raises(ValueError, match=r"strategy='f3ocus' needs score_fn="):
        make_plan("f3ocus", NAMES, [1])


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"rounds": 0}, ValueError, r"rounds must lie in \[1, inf\], got 0"),
        ({"seeds": ()}, ValueError, r"seeds is empty; pass at least one seed"),
        ({"seeds": (1.5,)}, TypeError, r"seeds\[...\] must be an int"),
        ({"strategies": ("f3ocus", "best")}, ValueError, r"strategies\[...\]='best' is not a valid choice"),
        ({"strategies": ()}, ValueError, r"strategies is empty"),
        ({"kernel": "ntk"}, ValueError, r"kernel='ntk' is not a valid choice"),
        ({"clients": 2, "budgets": (1,)}, ValueError, r"budgets has 1 entries but clients=2"),
        ({"lr": 0.0}, ValueError, r"lr must be a finite number > 0"),
    ],
)
def test_config_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        DemoConfig(**kwargs)


def test_budget_above_the_layer_count_is_an_error():
    with pytest.raises(ValueError, match=r"budgets\[1\] must lie in \[1, 22\], got 30"):
        DemoConfig(clients=2, budgets=(2, 30)).client_budgets(22)
