"""The model is exactly as before every score: parameters, grads, requires_grad flags, training modes, also on error."""

from __future__ import annotations

import pytest
import torch
from score_helpers import LOSS_SCORES, case_with_loss
from torch import nn

from f3ocus import available_scores, layer_scores

F64 = torch.float64


def _snapshot(model: nn.Module) -> dict:
    return {
        "params": {k: p.detach().clone() for k, p in model.named_parameters()},
        "ids": {k: id(p) for k, p in model.named_parameters()},
        "grads": {k: p.grad for k, p in model.named_parameters()},
        "grad_values": {k: None if p.grad is None else p.grad.clone() for k, p in model.named_parameters()},
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "buffers": {k: b.clone() for k, b in model.named_buffers()},
    }


def _assert_same(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["ids"] == before["ids"]
    for k, p in before["params"].items():
        assert torch.equal(after["params"][k], p), k  # bitwise: same values, also for synflow's |theta|
    for k, g in before["grads"].items():
        assert after["grads"][k] is g, k
        if g is not None:
            assert torch.equal(g, before["grad_values"][k])
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    for k, b in before["buffers"].items():
        assert torch.equal(after["buffers"][k], b), k


def _dirty(model: nn.Module) -> None:
    """Mixed state: train mode with one submodule in eval, a grad on some parameters, one frozen."""
    model.train()
    params = list(model.parameters())
    params[0].grad = torch.full_like(params[0], 0.5)
    params[-1].requires_grad_(False)
    next(m for m in model.modules() if m is not model).eval()


@pytest.mark.parametrize("score", available_scores())
@pytest.mark.parametrize("name", ["cnn_groupnorm_batchnorm", "tied_weights"])
def test_every_score_leaves_the_model_as_it_was(name, score):
    case, kw = case_with_loss(name)
    _dirty(case.model)
    before = _snapshot(case.model)
    result = layer_scores(case.model, case.batch, score, seed=0, **kw)
    _assert_same(case.model, before)
    assert result.stats["was_training"] is True


class RaisesOnOnes(nn.Module):
    """Fails on an all-ones input, as a model with an input check would: the error is raised inside synflow."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        if bool((x == 1).all()):
            raise RuntimeError("all-ones input refused")
        return self.fc2(torch.relu(self.fc1(x)))


def test_synflow_restores_the_model_on_error():
    torch.manual_seed(0)
    model = RaisesOnOnes().double()
    _dirty(model)
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="all-ones input refused"):
        layer_scores(model, torch.randn(4, 3, dtype=F64), "synflow")
    _assert_same(model, before)


@pytest.mark.parametrize("score", LOSS_SCORES)
def test_loss_scores_restore_the_model_when_the_gradient_is_not_finite(score):
    case, kw = case_with_loss("mlp")
    _dirty(case.model)
    before = _snapshot(case.model)

    def sqrt_loss(out, t):  # finite losses (all zero), infinite gradient
        return (out[:, 0] - out[:, 0].detach()).sqrt()

    with pytest.raises(ValueError, match="NaN/Inf"):
        layer_scores(case.model, case.batch, score, loss_fn=sqrt_loss, targets=kw["targets"])
    _assert_same(case.model, before)


def test_synflow_works_on_copies_in_the_model_dtype():
    case, _ = case_with_loss("cnn_groupnorm_batchnorm")
    assert any((p < 0).any() for p in case.model.parameters())  # |theta| is really taken somewhere
    before = _snapshot(case.model)
    layer_scores(case.model, case.batch, "synflow")
    _assert_same(case.model, before)
