"""ntk_layer_importance: the driver around the methods (auto choice, forms, dtypes, state, kernels)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cases import CASE_NAMES, TinyCNN, build
from f3ocus import LayerScores, ntk_layer_importance
from f3ocus.ntk import LayerEig, MethodResult, available_methods, ntk_reference, register_method
from f3ocus.ntk import registry as methods_module
from f3ocus.ntk.prepare import default_output_fn

F64 = torch.float64


def _top(kernels):
    return {k: torch.linalg.eigvalsh(v)[-1].clamp_min(0).item() for k, v in kernels.items()}


@pytest.mark.parametrize("name", CASE_NAMES)
def test_auto_matches_the_dense_reference(name):
    case = build(name)
    got = ntk_layer_importance(case.model, case.batch, method="auto", seed=0, **case.kwargs)
    expected = _top(ntk_reference(case.model, case.batch, **case.kwargs))
    assert list(got) == list(expected)
    for layer, value in expected.items():
        assert got[layer] == pytest.approx(value, rel=1e-6, abs=1e-12 * max(expected.values()))
    assert got.stats["method"] in available_methods()
    assert got.stats["auto_costs"] and got.stats["method"] in got.stats["auto_costs"]


def test_stats_num_params_and_json_round_trip():
    case = build("cnn_groupnorm_batchnorm")
    s = ntk_layer_importance(case.model, case.batch, method="dense")
    assert isinstance(s, LayerScores)
    params = dict(case.model.named_parameters())
    assert s.num_params == {layer: sum(params[f"{layer}.{p}"].numel() for p in ("weight", "bias")) for layer in s}
    st = s.stats
    assert st["method"] == "dense" and st["kernel"] == "output" and st["dtype"] == "float64"
    assert st["num_samples"] == 3 and st["num_outputs"] == 3 and st["device"] == "cpu"
    assert st["backward_passes"] == 9 and st["matvecs"] == 0 and st["converged"] is True
    assert set(st["residuals"]) == set(s) and st["seconds"] > 0 and st["peak_memory_bytes"] is None
    assert LayerScores.from_json(s.to_json()) == s


@pytest.mark.parametrize("form", ["tuple", "list", "mapping"])
def test_batch_forms_agree(form):
    case = build("dict_output_two_inputs")
    x, z = case.batch
    ref = ntk_layer_importance(case.model, (x, z), method="dense")

    class Named(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, z):
            return self.inner(x, z)

    batch = {"tuple": (x, z), "list": [x, z], "mapping": {"z": z, "x": x}}[form]
    model = Named(case.model) if form == "mapping" else case.model
    got = ntk_layer_importance(model, batch, method="dense")
    assert [got[k] for k in got] == pytest.approx([ref[k] for k in ref], rel=1e-12)


def test_default_output_fn_forms():
    t = torch.ones(2, 3)

    class Out:
        logits = t

    assert default_output_fn(t) is t
    assert default_output_fn(Out()) is t
    assert default_output_fn({"logits": t, "loss": 0}) is t
    assert default_output_fn((t, "hidden")) is t


def test_output_scale_scales_eigenvalues_quadratically():
    case = build("mlp")
    base = ntk_layer_importance(case.model, case.batch, method="dense")
    scaled = ntk_layer_importance(case.model, case.batch, method="dense", output_fn=lambda out: 3.0 * out)
    for k in base:
        assert scaled[k] == pytest.approx(9.0 * base[k], rel=1e-12)


def test_sum_kernel_equals_output_kernel_for_one_output():
    case = build("single_output")
    out = ntk_layer_importance(case.model, case.batch, method="dense", kernel="output")
    summed = ntk_layer_importance(case.model, case.batch, method="dense", kernel="sum")
    assert dict(out) == pytest.approx(dict(summed), rel=1e-12)


def test_loss_kernel_is_the_residual_weighted_output_kernel():
    """For l_n = (f_n - y_n)^2 / 2 with one output, ∇l_n = (f_n - y_n) ∇f_n, so Θ_loss = D Θ D."""
    case = build("single_output")
    y = torch.linspace(-1, 1, 6, dtype=F64)
    residual = case.model(case.batch)[:, 0].detach() - y
    d = torch.diag(residual)
    expected = _top({k: d @ v @ d for k, v in ntk_reference(case.model, case.batch).items()})
    got = ntk_layer_importance(
        case.model,
        case.batch,
        method="dense",
        kernel="loss",
        loss_fn=lambda out, t: 0.5 * (out[:, 0] - t) ** 2,
        targets=y,
    )
    assert dict(got) == pytest.approx(expected, rel=1e-10)


def test_explicit_layers_are_scored_in_the_given_order():
    case = build("vit_sdpa")
    s = ntk_layer_importance(case.model, case.batch, layers=["head", "blocks.0"], method="dense")
    assert list(s) == ["head", "blocks.0"]
    full = ntk_layer_importance(case.model, case.batch, method="dense")
    assert s["head"] == pytest.approx(full["head"], rel=1e-12)


# -- dtypes and devices ----------------------------------------------------------------------------
def test_float32_close_to_float64():
    s64 = ntk_layer_importance(*_mb("mlp", F64), method="dense")
    s32 = ntk_layer_importance(*_mb("mlp", torch.float32), method="dense")
    assert s32.stats["dtype"] == "float32"
    assert dict(s32) == pytest.approx(dict(s64), rel=1e-4)


def test_dtype_override_scores_in_float64():
    model, x = _mb("mlp", torch.float32)
    s = ntk_layer_importance(model, x, method="dense", dtype=F64)
    assert s.stats["dtype"] == "float64"
    assert next(model.parameters()).dtype == torch.float32
    ref = ntk_layer_importance(model.double(), x.double(), method="dense")
    assert dict(s) == pytest.approx(dict(ref), rel=1e-12)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_models_are_scored_in_float32(half):
    model, x = _mb("mlp", half)
    s = ntk_layer_importance(model, x, method="dense")
    assert s.stats["dtype"] == "float32"
    assert next(model.parameters()).dtype == half
    # the same (rounded) weights in float32 give the same scores
    ref = ntk_layer_importance(copy.deepcopy(model).float(), x.float(), method="dense")
    assert dict(s) == pytest.approx(dict(ref), rel=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_match_cpu_and_report_peak_memory():
    case = build("vit_sdpa")
    cpu = ntk_layer_importance(case.model, case.batch, method="dense")
    gpu = ntk_layer_importance(case.model.cuda(), case.batch, method="dense")  # batch moved to the model
    assert gpu.stats["device"].startswith("cuda") and gpu.stats["peak_memory_bytes"] > 0
    assert dict(gpu) == pytest.approx(dict(cpu), rel=1e-9)


def _mb(name, dtype):
    case = build(name, dtype)
    return case.model, case.batch


# -- eval mode and state restoration ---------------------------------------------------------------
def _snapshot(model):
    return (
        [(n, m.training) for n, m in model.named_modules()],
        [(n, p.requires_grad, p.grad, p.detach().clone()) for n, p in model.named_parameters()],
        [(n, b.detach().clone()) for n, b in model.named_buffers()],
    )


def _assert_same_state(model, snap):
    modes, params, buffers = snap
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    for (n, rg, grad, value), (n2, p) in zip(params, model.named_parameters(), strict=True):
        assert n == n2 and p.requires_grad == rg and p.grad is grad
        assert torch.equal(p.detach(), value)
    for (n, value), (n2, b) in zip(buffers, model.named_buffers(), strict=True):
        assert n == n2 and torch.equal(b, value)


def _messy(model):
    """Training mode with one submodule in eval, a .grad on one parameter, a frozen parameter."""
    model.train()
    mods = list(model.modules())
    mods[-1].training = False
    params = list(model.parameters())
    params[0].grad = torch.ones_like(params[0])
    params[-1].requires_grad_(False)
    return model


@pytest.mark.parametrize("name", ["torch_transformer", "cnn_groupnorm_batchnorm", "hf_bert"])
def test_scoring_in_train_mode_equals_eval_mode_and_restores_state(name):
    """Dropout and BatchNorm would make the kernel random: the model is scored in eval mode."""
    case = build(name)
    evaluated = ntk_layer_importance(case.model.eval(), case.batch, method="dense", **case.kwargs)
    model = case.model.train()
    snap = _snapshot(model)
    first = ntk_layer_importance(model, case.batch, method="dense", **case.kwargs)
    second = ntk_layer_importance(model, case.batch, method="dense", **case.kwargs)
    _assert_same_state(model, snap)
    assert dict(first) == dict(second) == pytest.approx(dict(evaluated), rel=1e-12)
    assert first.stats["was_training"] is True and evaluated.stats["was_training"] is False


def test_state_restored_after_success_and_after_errors_mid_way():
    model = _messy(TinyCNN().double())
    x = torch.randn(3, 2, 5, 5, dtype=F64)
    snap = _snapshot(model)
    ntk_layer_importance(model, x, method="dense")
    _assert_same_state(model, snap)

    def bad_output(out):  # raises inside the validation forward, with the model in eval mode
        raise RuntimeError("boom in output_fn")

    with pytest.raises(RuntimeError, match="boom in output_fn"):
        ntk_layer_importance(model, x, output_fn=bad_output)
    _assert_same_state(model, snap)

    @register_method("_test_failing")
    def failing(problem, **kw):
        for p in problem.model.parameters():  # a careless method: flips flags, then fails
            p.requires_grad_(not p.requires_grad)
            p.grad = None
        problem.model.train()
        raise RuntimeError("boom in method")

    try:
        with pytest.raises(RuntimeError, match="boom in method"):
            ntk_layer_importance(model, x, method="_test_failing")
        _assert_same_state(model, snap)
    finally:
        methods_module._METHODS.pop("_test_failing")


def test_method_sees_eval_mode_and_options_reach_it():
    seen = {}

    @register_method("_test_probe")
    def probe(problem, *, tol, maxiter, generator, chunk_size, max_memory, **options):
        seen.update(
            training=any(m.training for m in problem.model.modules()),
            tol=tol, maxiter=maxiter, chunk_size=chunk_size, max_memory=max_memory, options=options,
            draw=torch.rand(1, generator=generator).item(),
        )
        return MethodResult(eigs={k: LayerEig(1.0) for k in problem.layers})

    try:
        model, x = _mb("mlp", F64)
        model.train()
        ntk_layer_importance(model, x, method="_test_probe", seed=5, tol=1e-3, maxiter=7, chunk_size=2,
                             max_memory=10**6, flavour="x")
        assert seen["training"] is False and model.training
        assert (seen["tol"], seen["maxiter"], seen["chunk_size"], seen["max_memory"]) == (1e-3, 7, 2, 10**6)
        assert seen["options"] == {"flavour": "x"}
        first = seen["draw"]
        ntk_layer_importance(model, x, method="_test_probe", seed=5)
        assert seen["draw"] == first and seen["tol"] == 1e-8  # float64 default
        ntk_layer_importance(model, x, method="_test_probe", seed=6)
        assert seen["draw"] != first
    finally:
        methods_module._METHODS.pop("_test_probe")


def test_not_converged_raises_or_warns():
    from f3ocus.errors import NotConvergedError

    @register_method("_test_slow")
    def slow(problem, **kw):
        return MethodResult(eigs={k: LayerEig(1.0, residual=0.5, iterations=3, converged=False) for k in problem.layers})

    try:
        model, x = _mb("mlp", F64)
        with pytest.raises(NotConvergedError, match=r"method='_test_slow' did not reach tol=.* for layer\(s\) \['0', '2'\]"):
            ntk_layer_importance(model, x, method="_test_slow")
        with pytest.warns(RuntimeWarning, match="did not reach tol"):
            s = ntk_layer_importance(model, x, method="_test_slow", throw=False)
        assert s.stats["converged"] is False and s.stats["iterations"] == {"0": 3, "2": 3}
    finally:
        methods_module._METHODS.pop("_test_slow")


def test_auto_respects_max_memory():
    from f3ocus.ntk.registry import Cost

    calls = []

    def make(name):
        def fn(problem, **kw):
            calls.append(name)
            return MethodResult(eigs={k: LayerEig(1.0) for k in problem.layers})

        return fn

    costs = {"_test_cheap_big": Cost(flops=1.0, memory=1e12), "_test_dear_small": Cost(flops=1e30, memory=1.0)}
    saved = dict(methods_module._METHODS)
    try:
        methods_module._METHODS.clear()
        for name, cost in costs.items():
            register_method(name, cost=lambda p, c=cost: c)(make(name))
        model, x = _mb("mlp", F64)
        ntk_layer_importance(model, x, max_memory=10**6)
        ntk_layer_importance(model, x, max_memory=10**13)
        assert calls == ["_test_dear_small", "_test_cheap_big"]
    finally:
        methods_module._METHODS.clear()
        methods_module._METHODS.update(saved)


@pytest.mark.parametrize("context", ["no_grad", "inference_mode"])
def test_every_method_works_with_autograd_disabled_by_the_caller(context):
    model, x = _mb("mlp", F64)
    ref = ntk_layer_importance(model, x, method="dense")
    manager = torch.no_grad if context == "no_grad" else torch.inference_mode
    for method in available_methods():
        with manager():
            x_inside = x.clone()  # under inference_mode this is an inference tensor
            got = ntk_layer_importance(model, x_inside, method=method, seed=0)
        assert dict(got) == pytest.approx(dict(ref), rel=1e-6), method


def test_cross_entropy_loss_kernel_runs_with_integer_targets():
    case = build("mlp_loss")
    s = ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)
    assert s.stats["num_outputs"] == 1 and s.stats["kernel"] == "loss"
    assert all(v > 0 for v in s.values())


def test_seconds_cover_the_whole_call():
    case = build("mlp", F64, "cpu")
    s = ntk_layer_importance(case.model, case.batch, seed=0)
    assert s.stats["seconds"] >= s.stats["method_seconds"] > 0


def test_engine_paths_used_by_other_packages_still_import():
    from f3ocus.ntk.persample import jacobian_plan, per_sample_jacobians
    from f3ocus.ntk.prepare import default_output_fn, preserved_state
    from f3ocus.ntk.rows import jacobian_plan as plan2

    assert jacobian_plan is plan2 and callable(per_sample_jacobians)
    assert callable(default_output_fn) and callable(preserved_state)


def test_progress_goes_to_the_f3ocus_ntk_logger(caplog):
    import logging

    case = build("mlp", F64, "cpu")
    with caplog.at_level(logging.INFO, logger="f3ocus.ntk"):
        ntk_layer_importance(case.model, case.batch, method="persample", seed=0, max_memory=400)
    text = caplog.text
    assert "scoring 2 layers of 5 samples x 3 outputs with method='persample'" in text
    assert "layer group 1 of 2" in text and "done in" in text
