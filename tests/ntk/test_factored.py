"""The "factored" method (Linear weights as activations x backprops) against the dense reference."""

from __future__ import annotations

import pytest
import torch

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.factored import factored_cost
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.methods import available_methods, get_method

F64 = torch.float64
_reference_cache: dict = {}


def _kwargs(case, kernel: str) -> dict | None:
    kw = dict(case.kwargs)
    if kw.get("kernel", "output") != "output":
        return kw if kw["kernel"] == kernel else None
    kw["kernel"] = kernel
    return kw


def _reference(name: str, kernel: str):
    key = (name, kernel)
    if key not in _reference_cache:
        case = build(name, F64, "cpu")
        kw = _kwargs(case, kernel)
        _reference_cache[key] = (
            None if kw is None else ntk_layer_importance(case.model, case.batch, method="dense", **kw)
        )
    return _reference_cache[key]


def _assert_close(got, ref, rel=1e-6):
    assert list(got) == list(ref)
    scale = max(max(ref.values()), 1e-30)
    for layer in ref:
        assert got[layer] == pytest.approx(ref[layer], rel=rel, abs=rel * 1e-6 * scale), layer


@pytest.mark.parametrize("kernel", ("output", "sum"))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_factored_matches_dense_reference(name, kernel):
    ref = _reference(name, kernel)
    if ref is None:
        pytest.skip(f"case {name!r} fixes its own kernel")
    case = build(name, F64, "cpu")
    got = ntk_layer_importance(case.model, case.batch, method="factored", seed=0, **_kwargs(case, kernel))
    _assert_close(got, ref)
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
    _assert_close(got, ref)
    assert got.stats["extra"]["factored"] == ["0.weight", "2.weight"]
    with scoring_problem(model, x, output_fn=pooled) as problem:
        cost = factored_cost(problem)
    assert cost.flops > 0 and cost.memory > 0
