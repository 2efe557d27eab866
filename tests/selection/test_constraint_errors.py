"""Every error message of the constraint arguments of ``select_layers``."""

from __future__ import annotations

import numpy as np
import pytest

from f3ocus import LayerScores, select_layers

S = np.random.default_rng(0).random((3, 4))
NAMED = [LayerScores({"emb": 1.0, "b0": 2.0, "b1": 1.5, "head": 0.5}) for _ in range(3)]


@pytest.mark.parametrize(
    ("scores", "budget", "kwargs", "error", "match"),
    [
        (S, 5.0, dict(costs=[1.0, np.nan, 1.0, 1.0]), ValueError, r"costs must be finite and > 0.*costs\[1\] = nan"),
        (S, 5.0, dict(costs=[1.0, -1.0, 1.0, 1.0]), ValueError, r"costs\[1\] = -1.0"),
        (S, 5.0, dict(costs=[1.0, 0.0, 1.0, 1.0]), ValueError, r"costs\[1\] = 0.0"),
        (S, 5.0, dict(costs=[1.0, 1.0]), ValueError, r"costs has shape \(2,\), but there are L=4 layers"),
        (S, 5.0, dict(costs="parms"), ValueError, r"Did you mean 'params'"),
        (S, 5.0, dict(costs="params"), ValueError, r"carry none"),
        (S, 5.0, dict(costs=object()), TypeError, r"costs must be a length-L array"),
        (S, 0.5, dict(costs=[1.0, 2.0, 3.0, 4.0]), ValueError, r"budget\[0\] = 0.5 is smaller than the cheapest layer"),
        (S, -1.0, dict(costs=[1.0, 2.0, 3.0, 4.0]), ValueError, r"budget\[0\] = -1.0 must be a finite capacity"),
        (S, "x", dict(costs=[1.0, 2.0, 3.0, 4.0]), TypeError, r"with costs, budget must be a capacity"),
        (S, [1.0, 2.0], dict(costs=[1.0, 2.0, 3.0, 4.0]), ValueError, r"budget has 2 capacities, but there are K=3"),
        (S, 5.0, dict(costs=[1.0] * 4, exact_budget=True), ValueError, r"exact_budget=True does not apply"),
        (S, 2, dict(required=[3], forbidden=[3]), ValueError, r"client 0 has layer 3 both required and forbidden"),
        (NAMED, 2, dict(required=["haed"]), ValueError, r"layer 'haed', which does not exist. Did you mean 'head'"),
        (S, 2, dict(required=["head"]), ValueError, r"plain array without layer names"),
        (S, 2, dict(required=[7]), ValueError, r"column index 7, outside 0..3"),
        (S, 2, dict(required=[1.5]), TypeError, r"required entries must be layer names or column indices"),
        (S, 2, dict(required=[[0], [1]]), ValueError, r"required has 2 per-client lists, but there are K=3"),
        (S, 2, dict(required=np.ones((2, 2), bool)), ValueError, r"required as a bool mask must have shape"),
        (S, 2, dict(required="head"), TypeError, r"required must be a bool mask"),
        (S, 1, dict(required=[0, 1]), ValueError, r"client 0 has 2 required layers but a budget of 1"),
        (S, 4, dict(required=[0], required_in_budget=False), ValueError, r"exceeds L=4"),
        (S, 2, dict(required_in_budget="no"), TypeError, r"required_in_budget must be True or False"),
        (S, 3.0, dict(costs=[1.0, 2.0, 3.0, 4.0], required=[3]), ValueError, r"required layers cost 4 but its capacity"),
        (S, 2, dict(forbidden=[0], allowed=[1]), ValueError, r"pass forbidden= or allowed=, not both"),
        (S, 3, dict(forbidden=[0, 1]), ValueError, r"client 0 must train exactly 3 layers but may train only 2"),
        (S, 1, dict(min_coverage=4), ValueError, r"min_coverage=4 must lie in 0..K = 0..3"),
        (S, 1, dict(min_coverage=2), ValueError, r"asks for 8 client-layer pairs in all, but the budgets give only 3"),
        (S, 1, dict(min_coverage=[3, 0, 0, 0], forbidden=[[0], [], []]), ValueError,
         r"asks 3 clients for layer 0, but only 2 may"),
        (S, 1, dict(min_coverage=[1, 1]), ValueError, r"min_coverage must be an int or one int per layer"),
        (S, 1, dict(min_coverage=1.5), ValueError, r"min_coverage must be an int or one int per layer"),
        (S, 1, dict(min_coverage=[True, 0, 0, 0]), TypeError, r"min_coverage\[0\] must be an int"),
        (S, 2.0, dict(costs=[1.0, 1.0, 5.0, 5.0], min_coverage=[0, 0, 1, 1]), ValueError,
         r"no plan meets the constraints"),
        (S, 2, dict(previous=np.ones((2, 4), bool)), ValueError, r"previous must be a \(K, L\) = \(3, 4\) plan"),
        (S, 2, dict(previous=np.full((3, 4), 2)), ValueError, r"previous must be a 0/1"),
        (S, 2, dict(churn_penalty=0.1), ValueError, r"prices changes against previous=, but previous is None"),
        (S, 2, dict(churn_penalty=-1.0), ValueError, r"churn_penalty"),
        (S, 2, dict(coupling="agreee"), ValueError, r"Did you mean 'agree'"),
    ],
)
def test_constraint_errors(scores, budget, kwargs, error, match):
    with pytest.raises(error, match=match):
        select_layers(scores, budget, solver="topk", **kwargs)


def test_unknown_solver_option_has_a_did_you_mean():
    with pytest.raises(TypeError, match=r"'n_iterr' is not an option of this solver. Did you mean 'n_iter'"):
        select_layers(S, 2, solver="sa", n_iterr=50)
    with pytest.raises(TypeError, match=r"'pop_sise' is not an option.*Did you mean 'pop_size'"):
        select_layers(S, 2, solver="nsga2", pop_sise=10)
    with pytest.raises(TypeError, match=r"'samples' is not an option of this solver.*\(none\)"):
        select_layers(S, 2, solver="topk", samples=3)


def test_names_per_client_and_masks_are_accepted():
    plan = select_layers(NAMED, 2, solver="exact", tradeoff=0.0, required=[["head"], [], ["emb"]],
                         forbidden=np.array([False, True, False, False]))
    assert plan.mask[0, 3] and plan.mask[2, 0] and not plan.mask[:, 1].any()
