"""The fast methods against the dense reference on every case of the shared table, for every kernel."""

from __future__ import annotations

import pytest
import torch
from ntk_helpers import F64, assert_scores_close, dense_scores, kernel_kwargs

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.grouping import row_groups as _groups
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.linalg import rows_top_eigs as jacobian_eigs
from f3ocus.ntk.methods.factored import _layer_bytes, factored_cost
from f3ocus.ntk.methods.lanczos import lanczos_cost
from f3ocus.ntk.methods.persample import persample_cost
from f3ocus.ntk.problem import forward_flops
from f3ocus.ntk.registry import (
    _METHODS,
    Cost,
    LayerEig,
    MethodResult,
    available_methods,
    get_method,
    register_method,
)

KERNELS = ("output", "sum", "loss")
# Matrix-free Lanczos costs ~3 backward passes per layer per step: keep it to the quick cases per kernel
# (every case is covered for "output").
SLOW_FOR_MATFREE = {"torch_transformer", "hf_bert", "cnn_groupnorm_batchnorm"}




METHODS = [
    ("persample", {}),
    ("persample", {"eig": "lanczos"}),
    ("persample", {"use_hooks": False}),
    ("lanczos", {}),
]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("method,options", METHODS, ids=["persample", "persample-lanczos", "func", "matfree"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_fast_methods_match_dense_reference(name, method, options, kernel):
    if method == "lanczos" and kernel != "output" and name in SLOW_FOR_MATFREE:
        pytest.skip("matrix-free Lanczos is covered on this case by kernel='output'")
    if options.get("use_hooks") is False and kernel != "output" and name not in ("mlp", "vit_sdpa"):
        pytest.skip("the torch.func fallback is checked for this kernel on the mlp and vit_sdpa cases")
    ref = dense_scores(name, kernel)
    if ref is None:
        pytest.skip(f"case {name!r} fixes its own kernel")
    case = build(name, F64, "cpu")
    got = ntk_layer_importance(
        case.model, case.batch, method=method, seed=0, **kernel_kwargs(case, kernel), **options
    )
    assert_scores_close(got, ref)
    assert got.stats["method"] == method and got.stats["converged"]


def test_fast_methods_are_registered_with_cost_models():
    assert {"persample", "lanczos"} <= set(available_methods())
    assert get_method("persample").cost is persample_cost
    assert get_method("lanczos").cost is lanczos_cost


def test_auto_picks_persample_when_it_fits_and_lanczos_when_memory_is_tight():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4)).to(F64)
    x = torch.randn(20, 16, 8, generator=g, dtype=F64)  # 16 tokens per sample, N*M = 80 rows

    def pooled(out):
        return out.mean(dim=1)

    with scoring_problem(model, x, output_fn=pooled) as problem:
        per, mat = persample_cost(problem), lanczos_cost(problem)
    assert per.flops < mat.flops and mat.memory < per.memory
    roomy = ntk_layer_importance(model, x, output_fn=pooled, seed=0)
    assert roomy.stats["method"] == "persample"
    budget = int((per.memory + mat.memory) / 2)
    tight = ntk_layer_importance(model, x, output_fn=pooled, seed=0, max_memory=budget)
    assert tight.stats["method"] == "lanczos"
    assert_scores_close(tight, roomy)


def test_persample_splits_layers_into_groups_under_a_memory_budget():
    case = build("vit_sdpa", F64, "cpu")
    whole = ntk_layer_importance(case.model, case.batch, method="persample")
    with scoring_problem(case.model, case.batch) as problem:
        largest = max(problem.layer_sizes().values()) * problem.num_samples * problem.num_outputs * 8
    split = ntk_layer_importance(case.model, case.batch, method="persample", max_memory=2 * largest)
    assert split.stats["extra"]["groups"] > 1 and whole.stats["extra"]["groups"] == 1
    assert_scores_close(split, whole, rel=1e-12)


def test_jacobian_eigs_gram_and_lanczos_agree_and_handle_zero_and_empty_layers():
    g = torch.Generator().manual_seed(0)
    jac = {
        "a": torch.randn(12, 30, generator=g, dtype=F64),
        "b": torch.zeros(12, 5, dtype=F64),
        "c": torch.randn(12, 1, generator=g, dtype=F64),
        "d": torch.zeros(12, 0, dtype=F64),
    }
    gram, path_g = jacobian_eigs(jac, eig="gram")
    krylov, path_k = jacobian_eigs(jac, eig="lanczos", tol=1e-12, generator=g)
    assert path_g == {"a": "gram", "b": "gram", "c": "gram", "d": "zero"}
    assert path_k == {"a": "lanczos", "b": "lanczos", "c": "lanczos", "d": "zero"}
    for k in "abc":
        expected = torch.linalg.svdvals(jac[k])[0].item() ** 2
        assert gram[k].value == pytest.approx(expected, rel=1e-10, abs=1e-300)
        assert krylov[k].value == pytest.approx(expected, rel=1e-10, abs=1e-300)
        assert krylov[k].converged
    assert gram["d"].value == 0.0 and krylov["d"].value == 0.0
    with pytest.raises(ValueError, match="eig='svd' is not a valid choice"):
        jacobian_eigs(jac, eig="svd")


def test_method_option_errors_name_the_option():
    case = build("mlp", F64, "cpu")
    with pytest.raises(ValueError, match="eig='dense' is not a valid choice"):
        ntk_layer_importance(case.model, case.batch, method="persample", eig="dense")
    with pytest.raises(ValueError, match="mode='fwd' is not a valid choice"):
        ntk_layer_importance(case.model, case.batch, method="lanczos", mode="fwd")


def test_cost_models_add_one_pass_per_layer_group_under_a_memory_budget():
    case = build("vit_sdpa", F64, "cpu")
    with scoring_problem(case.model, case.batch) as problem:
        free = persample_cost(problem)
        largest = max(problem.layer_sizes().values()) * problem.num_samples * problem.num_outputs * 8
        tight = persample_cost(problem, max_memory=2 * largest)
        groups = len(_groups(problem, 2 * largest))
        fwd = forward_flops(problem)
        f_free = factored_cost(problem)
        f_tight = factored_cost(problem, max_memory=int(2 * max(_layer_bytes(problem).values())))
    assert groups > 1
    one_sweep = (1 + problem.num_outputs) * fwd
    assert tight.flops == pytest.approx(free.flops + (groups - 1) * one_sweep)
    assert f_tight.flops > f_free.flops and f_tight.memory == f_free.memory


def test_auto_passes_the_memory_budget_to_cost_models_that_take_it():
    seen = []

    def cost(problem, *, max_memory=None):
        seen.append(max_memory)
        return Cost(flops=0.0, memory=1.0)  # the cheapest: auto picks it

    @register_method("budget-aware", cost=cost)
    def budget_aware(problem, **options):
        return MethodResult(eigs={k: LayerEig(1.0) for k in problem.layers})

    try:
        case = build("mlp", F64, "cpu")
        got = ntk_layer_importance(case.model, case.batch, max_memory=12345)
        assert got.stats["method"] == "budget-aware" and seen == [12345]
    finally:
        _METHODS.pop("budget-aware")


def test_auto_only_considers_methods_that_take_the_given_options():
    case = build("mlp", F64, "cpu")
    got = ntk_layer_importance(case.model, case.batch, seed=0, mode="vjp")
    assert got.stats["method"] == "lanczos"
    assert set(got.stats["auto_costs"]) == {"lanczos"}
    got = ntk_layer_importance(case.model, case.batch, seed=0, eig="gram")
    assert set(got.stats["auto_costs"]) == {"persample", "factored"}
    assert_scores_close(got, dense_scores("mlp", "output"))


def test_options_are_checked_before_any_work():
    calls = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x):
            calls.append(1)
            return self.lin(x)

    with pytest.raises(TypeError, match="takes no options"):
        ntk_layer_importance(Spy(), torch.randn(3, 2), method="dense", eig="gram")
    assert calls == []


def _wide_head(c):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, c)).double()


def test_at_large_c_auto_never_forms_the_output_gram_and_its_cost_is_linear_in_c():
    x = torch.randn(4, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    chosen = {}
    for c in (100, 200, 400):
        model = _wide_head(c)
        got = ntk_layer_importance(model, x, seed=0)
        chosen[c] = got.stats["auto_costs"][got.stats["method"]]
        assert "gram" not in got.stats["extra"].get("path", {}).values()
    for small, big in ((100, 200), (200, 400)):
        assert chosen[big][0] <= 2.2 * chosen[small][0]  # flops
        assert chosen[big][1] <= 2.2 * chosen[small][1]  # memory
    ref = ntk_layer_importance(model, x, method="dense")
    assert_scores_close(got, ref, rel=1e-6)
