"""Per-sample Jacobian rows: grad samplers, taps and the torch.func fallback against the dense reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance
from f3ocus.ntk import grad_samplers
from f3ocus.ntk.grad_samplers import get_grad_sampler, register_grad_sampler, registered_types
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.reference import dense_layer_jacobians
from f3ocus.ntk.rows import _hooked_rows, jacobian_plan, per_sample_jacobians

F64 = torch.float64


def _assert_jacobians_close(got, ref, rtol=1e-10):
    assert list(got) == list(ref)
    for layer in ref:
        scale = ref[layer].abs().max().clamp_min(1e-300)
        assert got[layer].shape == ref[layer].shape, layer
        assert ((got[layer] - ref[layer]).abs().max() / scale).item() <= rtol, layer


@pytest.mark.parametrize("name", CASE_NAMES)
def test_jacobians_match_dense_and_do_not_depend_on_chunking(name):
    case = build(name, F64, "cpu")
    with scoring_problem(case.model, case.batch, **case.kwargs) as problem:
        ref = dense_layer_jacobians(problem)
        whole = per_sample_jacobians(problem)
        _assert_jacobians_close(whole, ref)
        for options in ({"chunk_size": 1}, {"chunk_size": 2, "batched": False}):
            _assert_jacobians_close(per_sample_jacobians(problem, **options), whole, rtol=1e-13)


def test_raw_parameters_are_served_by_taps_not_the_fallback():
    case = build("vit_sdpa", F64, "cpu")
    with scoring_problem(case.model, case.batch) as problem:
        plan = jacobian_plan(problem)
        assert plan.fallback == ["cls_token", "pos_embed"]
        rows, rest = _hooked_rows(problem, plan, problem.layer_params(), chunk_size=None, batched=True)
        assert rest == [] and {"cls_token", "pos_embed"} <= set(rows)


class _Product(nn.Module):
    """Two raw parameters used together (a use the taps do not classify): the fallback serves them."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.linspace(0.5, 1.5, 4))
        self.b = nn.Parameter(torch.linspace(-1.0, 1.0, 4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(x * (self.a * self.b) + self.a))


class _SequenceFirst(nn.Module):
    """Linear layers that see (S, N, d): the hooks must notice and hand them to the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):  # x: (N, S, d)
        h = torch.tanh(self.inner(x.transpose(0, 1))).transpose(0, 1)
        return self.head(h.mean(dim=1))


@pytest.mark.parametrize(
    "make,x",
    [
        (_Product, torch.randn(3, 4, generator=torch.Generator().manual_seed(0))),
        (_SequenceFirst, torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(1))),
    ],
    ids=["two-raw-parameters", "sequence-first"],
)
def test_unclassifiable_uses_fall_back_and_stay_exact(make, x):
    torch.manual_seed(0)
    model = make().to(F64)
    layers = {"all": [k for k, _ in model.named_parameters()]}
    with scoring_problem(model, x.to(F64), layers=layers) as problem:
        _assert_jacobians_close(per_sample_jacobians(problem), dense_layer_jacobians(problem))


def _module_cases():
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    bn1 = nn.BatchNorm1d(3)
    bn2 = nn.BatchNorm2d(4)
    for bn in (bn1, bn2):
        bn.running_mean.uniform_(-1, 1, generator=g)
        bn.running_var.uniform_(0.5, 2, generator=g)
    return {
        "linear": (nn.Linear(4, 3), r(3, 4)),
        "linear-tokens": (nn.Linear(4, 3), r(3, 5, 4)),
        "linear-no-bias-4d": (nn.Linear(4, 2, bias=False), r(2, 2, 3, 4)),
        "conv1d": (nn.Conv1d(3, 4, 3, padding=1, dilation=1), r(2, 3, 6)),
        "conv2d-stride-dilation": (nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2), r(2, 2, 7, 7)),
        "conv2d-groups": (nn.Conv2d(4, 6, (2, 3), groups=2), r(3, 4, 5, 5)),
        "embedding-padding": (nn.Embedding(7, 3, padding_idx=2), torch.tensor([[0, 2, 2, 5], [6, 1, 2, 0]])),
        "layernorm-2d": (nn.LayerNorm((3, 4)), r(2, 5, 3, 4)),
        "layernorm-no-bias": (nn.LayerNorm(4, bias=False), r(3, 2, 4)),
        "groupnorm": (nn.GroupNorm(2, 4), r(3, 4, 5)),
        "batchnorm1d-eval": (bn1, r(4, 3)),
        "batchnorm2d-eval": (bn2, r(2, 4, 3, 3)),
    }


class _Readout(nn.Module):
    """``module`` followed by a fixed nonlinear readout to 3 outputs (the readout is not scored)."""

    def __init__(self, module: nn.Module, features: int) -> None:
        super().__init__()
        self.module = module
        self.readout = nn.Linear(features, 3)

    def forward(self, x):
        y = torch.sin(self.module(x).flatten(1))
        return self.readout(y)


@pytest.mark.parametrize("kind", list(_module_cases()))
def test_grad_sampler_agrees_with_the_func_fallback(kind):
    torch.manual_seed(0)
    module, x = _module_cases()[kind]
    module = module.to(F64)
    x = x.to(F64) if x.is_floating_point() else x
    features = module(x).flatten(1).shape[1]
    model = _Readout(module, features).to(F64)
    layers = {"module": [f"module.{k}" for k, _ in module.named_parameters()]}
    with scoring_problem(model, x, layers=layers) as problem:
        plan = jacobian_plan(problem)
        assert set(plan.hooked) == set(layers["module"]) and plan.fallback == []
        hooked = per_sample_jacobians(problem)
        fallback = per_sample_jacobians(problem, use_hooks=False)
    _assert_jacobians_close(hooked, fallback)


def test_unsupported_configurations_have_no_sampler():
    assert get_grad_sampler(nn.Conv2d(2, 2, 3, padding="same")) is None
    assert get_grad_sampler(nn.Conv1d(2, 2, 3, padding=1, padding_mode="reflect")) is None
    assert get_grad_sampler(nn.Embedding(5, 2, max_norm=1.0)) is None
    assert get_grad_sampler(nn.BatchNorm1d(3).train()) is None
    assert get_grad_sampler(nn.BatchNorm1d(3).eval()) is not None
    assert (
        get_grad_sampler(nn.MultiheadAttention(4, 2).out_proj) is None
    )  # a Linear subclass: exact types only


class _Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, 4))

    def forward(self, x):
        return x * self.gain


def test_registering_a_sampler_for_a_custom_module():
    calls = []

    @register_grad_sampler(_Scale)
    def _scale(module, inputs, backprops):
        calls.append(backprops.shape)
        return {"gain": backprops * inputs[0]}

    try:
        assert _Scale in registered_types()
        model = nn.Sequential(_Scale(), nn.Tanh(), nn.Linear(4, 2)).to(F64)
        x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
        with scoring_problem(model, x, layers={"scale": ["0.gain"]}) as problem:
            _assert_jacobians_close(per_sample_jacobians(problem), dense_layer_jacobians(problem))
        assert calls == [torch.Size([2, 3, 4])]
    finally:
        grad_samplers._SAMPLERS.pop(_Scale, None)


def test_register_grad_sampler_rejects_non_module_types():
    with pytest.raises(
        TypeError, match=r"register_grad_sampler\(\*types\) takes nn.Module subclasses, got <class 'int'>"
    ):
        register_grad_sampler(int)


class _TokenNet(nn.Module):
    def __init__(self, d: int, width: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, width)
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, 3, padding=1, groups=width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):  # (N, S, d)
        h = self.norm(F.gelu(self.fc(x)))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.head(torch.tanh(h).mean(dim=1))


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(1, 4),
    classes=st.integers(1, 3),
    width=st.integers(1, 5),
    seq=st.integers(1, 4),
    kernel=st.sampled_from(["output", "sum"]),
    seed=st.integers(0, 1000),
)
def test_persample_matches_dense_over_shapes(n, classes, width, seq, kernel, seed):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = _TokenNet(3, width, classes).to(F64)
    x = torch.randn(n, seq, 3, generator=g, dtype=F64)
    ref = ntk_layer_importance(model, x, kernel=kernel, method="dense")
    got = ntk_layer_importance(model, x, kernel=kernel, method="persample", seed=seed)
    scale = max(max(ref.values()), 1e-30)
    for layer in ref:
        assert got[layer] == pytest.approx(ref[layer], rel=1e-6, abs=1e-12 * scale)


class _DataDependentPos(nn.Module):
    """A raw parameter used through a per-sample Python loop (as ViLT builds its position embeddings)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Module()
        self.embed.pos = nn.Parameter(torch.randn(1, 4, 3, dtype=F64))
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x):
        pos = torch.cat([self.embed.pos * (1.0 + (i % 2)) for i in range(x.shape[0])], dim=0)
        return self.lin(torch.tanh(x + pos)).mean(1)


def test_parameters_the_taps_cannot_follow_get_rows_from_their_owners_output():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _DataDependentPos()
    x = torch.randn(3, 4, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    with scoring_problem(model, x) as problem:
        plan = jacobian_plan(problem)
        assert "embed.pos" in plan.fallback
        rows, rest = _hooked_rows(problem, plan, problem.layer_params(), chunk_size=None, batched=True)
        assert rest == []  # no torch.func fallback (N M reverse passes through the whole model)
        got = per_sample_jacobians(problem)
        ref = dense_layer_jacobians(problem)
    for layer in ref:
        torch.testing.assert_close(got[layer], ref[layer], rtol=1e-10, atol=1e-12)
