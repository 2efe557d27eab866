"""The "factored" method (Linear weights as activations x backprops) against the dense reference."""

from __future__ import annotations

import pytest
import torch
from ntk_helpers import F64, assert_scores_close, dense_scores, kernel_kwargs

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.factored import factored_cost
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.methods import available_methods, get_method


@pytest.mark.parametrize("kernel", ("output", "sum"))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_factored_matches_dense_reference(name, kernel):
    ref = dense_scores(name, kernel)
    if ref is None:
        pytest.skip(f"case {name!r} fixes its own kernel")
    case = build(name, F64, "cpu")
    got = ntk_layer_importance(case.model, case.batch, method="factored", seed=0, **kernel_kwargs(case, kernel))
    assert_scores_close(got, ref)
    assert got.stats["method"] == "factored" and got.stats["converged"]


def test_factored_is_registered_with_a_cost_model():
    assert "factored" in available_methods()
    assert get_method("factored").cost is factored_cost


def test_factored_keeps_linear_weights_out_of_the_rows():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(F64)
    x = torch.randn(4, 7, 6, generator=g, dtype=F64)  # 7 tokens per sample

    def pooled(out):
        return out.mean(dim=1)

    got = ntk_layer_importance(model, x, output_fn=pooled, method="factored", seed=0)
    ref = ntk_layer_importance(model, x, output_fn=pooled, method="dense")
    assert_scores_close(got, ref)
    assert got.stats["extra"]["factored"] == ["0.weight", "2.weight"]
    with scoring_problem(model, x, output_fn=pooled) as problem:
        cost = factored_cost(problem)
    assert cost.flops > 0 and cost.memory > 0
