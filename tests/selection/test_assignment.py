"""LayerAssignment: derived views, JSON round trips, repr and the plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

import f3ocus
from f3ocus.selection.assignment import LayerAssignment, ParetoFront


def named_scores(K=4, L=5, seed=0):  # noqa: N803
    rng = np.random.default_rng(seed)
    names = [f"encoder.layer.{i}" for i in range(L)]
    return [dict(zip(names, rng.lognormal(0, 1, L).tolist(), strict=True)) for _ in range(K)], names


@pytest.mark.parametrize("solver", ["exact", "nsga2", "topk"])
def test_json_round_trip(solver):
    scores, _ = named_scores()
    plan = f3ocus.select_layers(scores, 2, solver=solver, seed=1, certify=True, **({"n_gen": 5} if solver == "nsga2" else {}))
    text = plan.to_json()
    back = LayerAssignment.from_json(text)
    assert back == plan
    assert back.to_json() == text
    assert json.loads(text)["format"] == "f3ocus.LayerAssignment/1"
    assert back.layers == plan.layers and back.stats["solver"] == solver
    if plan.front is not None:
        assert np.array_equal(back.front.masks, plan.front.masks)


def test_views_follow_the_mask():
    scores, names = named_scores()
    plan = f3ocus.select_layers(scores, [1, 2, 3, 1], solver="exact", tradeoff=0.5)
    assert plan.K == 4 and plan.L == 5
    assert plan.counts.tolist() == plan.mask.sum(axis=0).tolist()
    for row, layers in zip(plan.mask, plan.layers, strict=True):
        assert layers == [names[i] for i in np.flatnonzero(row)]
    assert plan.scalarized(0.5) == pytest.approx(plan.importance - 0.5 * plan.diversity)
    assert plan.stats["scalarized"] == pytest.approx(plan.scalarized(0.5))
    plain = f3ocus.select_layers(np.ones((2, 3)), 1, solver="topk")
    assert plain.layers == [[0], [0]] and plain.layer_names is None


def test_frozen_and_readonly():
    plan = f3ocus.select_layers(np.ones((2, 3)), 1, solver="topk")
    with pytest.raises(ValueError):
        plan.mask[0, 0] = False
    with pytest.raises(AttributeError):
        plan.importance = 0.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        plan.stats["solver"] = "x"  # type: ignore[index]


def test_from_dict_rejects_other_data():
    with pytest.raises(ValueError, match="data is not a serialized LayerAssignment"):
        LayerAssignment.from_dict({"format": "something else"})


def test_repr_is_informative():
    plan = f3ocus.select_layers(np.random.default_rng(0).random((3, 4)), 2, solver="exact")
    text = repr(plan)
    assert "K=3" in text and "L=4" in text and "solver='exact'" in text and "knee" in text and "front=" in text
    assert repr(plan.front).startswith("ParetoFront(")


def test_front_shapes_are_checked():
    with pytest.raises(ValueError, match="front shapes disagree"):
        ParetoFront(np.zeros((2, 3, 4), bool), np.zeros(3), np.zeros(2))


def test_plot_draws_three_panels_with_a_front():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    scores, _ = named_scores()
    fig = f3ocus.select_layers(scores, 2, solver="exact").plot()
    assert len(fig.axes) == 3
    fig2 = f3ocus.select_layers(scores, 2, solver="topk").plot()
    assert len(fig2.axes) == 2
    import matplotlib.pyplot as plt

    plt.close("all")
