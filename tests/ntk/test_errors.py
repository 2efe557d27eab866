"""Every error of ntk_layer_importance: it names the argument, shows what arrived, says what to do.

After each error the model's training flags are as before the call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from f3ocus import ntk_layer_importance

F64 = torch.float64


def _mlp():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.2), nn.Linear(4, 2)).double()
    return model.train()


X = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
Y = torch.tensor([0, 1, 1, 0, 1])


class Returns(nn.Module):
    def __init__(self, make):
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.make = make

    def forward(self, x):
        return self.make(self.lin(x))


def _ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


nan_x = X.clone()
nan_x[2, 1] = float("nan")

CASES = {
    # argument checks
    "model": (lambda: ("not a model", X, {}), TypeError, r"model must be a torch.nn.Module"),
    "kernel": (lambda: (_mlp(), X, {"kernel": "ntk"}), ValueError, r"kernel='ntk' is not a valid choice.*'output', 'sum', 'loss'"),
    "method": (lambda: (_mlp(), X, {"method": "lanczoss"}), ValueError, r"method='lanczoss' is not a registered scoring method.*Use one of: 'auto', .*'dense'"),
    "seed": (lambda: (_mlp(), X, {"seed": 1.5}), TypeError, r"seed must be an int, got 1.5"),
    "maxiter": (lambda: (_mlp(), X, {"maxiter": 0}), ValueError, r"maxiter must lie in \[1, inf\], got 0"),
    "tol": (lambda: (_mlp(), X, {"tol": -1e-3}), ValueError, r"tol must be a finite number > 0, got -0.001"),
    "chunk_size": (lambda: (_mlp(), X, {"chunk_size": 0}), ValueError, r"chunk_size must lie in \[1, inf\], got 0"),
    "max_memory": (lambda: (_mlp(), X, {"max_memory": "1GB"}), TypeError, r"max_memory must be an int, got '1GB'"),
    "dtype": (lambda: (_mlp(), X, {"dtype": torch.int64}), TypeError, r"dtype must be a floating torch.dtype"),
    "output_fn not callable": (lambda: (_mlp(), X, {"output_fn": "logits"}), TypeError, r"output_fn must be callable, got 'logits'"),
    "dense options": (lambda: (_mlp(), X, {"method": "dense", "flavour": 1}), TypeError, r"method='dense' takes no options \['flavour'\]"),
    "option of another method": (lambda: (_mlp(), X, {"method": "lanczos", "eig": "gram"}), TypeError, r"method='lanczos' takes no options \['eig'\] \(its options: \['mode'\]\); 'eig' is an option of method .*'persample'"),
    "misspelt option": (lambda: (_mlp(), X, {"method": "persample", "use_hook": False}), TypeError, r"'use_hook' is no method's option: did you mean 'use_hooks'\?"),
    "auto clashing options": (lambda: (_mlp(), X, {"eig": "gram", "mode": "vjp"}), TypeError, r"method='auto' can choose no method that takes all of the options \['eig', 'mode'\]"),
    # kernel="loss"
    "loss without loss_fn": (lambda: (_mlp(), X, {"kernel": "loss", "targets": Y}), ValueError, r"kernel='loss' needs loss_fn and targets, but loss_fn is missing"),
    "loss without both": (lambda: (_mlp(), X, {"kernel": "loss"}), ValueError, r"but loss_fn and targets are missing.*reduction='none'"),
    "loss_fn not callable": (lambda: (_mlp(), X, {"kernel": "loss", "loss_fn": 3, "targets": Y}), TypeError, r"loss_fn must be callable, got 3"),
    "loss_fn without loss kernel": (lambda: (_mlp(), X, {"loss_fn": _ce, "targets": Y}), ValueError, r"loss_fn and targets are only used with kernel='loss', but kernel='output'"),
    "reduced loss": (
        lambda: (_mlp(), X, {"kernel": "loss", "loss_fn": F.cross_entropy, "targets": Y}),
        ValueError,
        r"loss_fn must return one loss per sample \(5 values\), got Tensor of shape \(\).*reduction='none'",
    ),
    "targets size": (lambda: (_mlp(), X, {"kernel": "loss", "loss_fn": _ce, "targets": Y[:3]}), ValueError, r"targets must hold tensors with leading dimension 5"),
    "targets nan": (
        lambda: (_mlp(), X, {"kernel": "loss", "loss_fn": lambda o, t: (o[:, 0] - t) ** 2, "targets": torch.full((5,), float("nan"))}),
        ValueError,
        r"targets holds 5 NaN/Inf value\(s\)",
    ),
    # batch
    "batch type": (lambda: (_mlp(), "text", {}), TypeError, r"batch must be a Tensor \(called as model\(batch\)\), a tuple/list .* got 'text'"),
    "batch keys": (lambda: (_mlp(), {1: X}, {}), TypeError, r"batch is a Mapping, so its keys must be str argument names; got 1"),
    "empty batch": (lambda: (_mlp(), X[:0], {}), ValueError, r"batch is empty: its first tensor is Tensor of shape \(0, 3\).*at least one sample"),
    "no tensor": (lambda: (_mlp(), (1.0, 2.0), {}), TypeError, r"batch holds no tensor with a batch dimension"),
    "nan batch": (lambda: (_mlp(), nan_x, {}), ValueError, r"batch holds 1 NaN/Inf value\(s\) \(Tensor of shape \(5, 3\)"),
    "inf in tuple": (lambda: (_mlp(), (X, X.clone().fill_(float("inf"))), {}), ValueError, r"batch\[1\] holds 15 NaN/Inf"),
    "nan in mapping": (lambda: (_mlp(), {"x": nan_x}, {}), ValueError, r"batch\['x'\] holds 1 NaN/Inf"),
    # outputs
    "output not a tensor": (lambda: (Returns(lambda y: {"scores": y}), X, {}), TypeError, r"the model returned a dict with keys \['scores'\], which is not a tensor.*Pass output_fn=\.\.\."),
    "output_fn returns non-tensor": (lambda: (_mlp(), X, {"output_fn": lambda y: y.tolist()}), TypeError, r"output_fn must return a tensor, got \[\["),
    "output leading dim": (lambda: (Returns(lambda y: y.T), X, {}), ValueError, r"the model output must have leading dimension 5 \(the batch size\), got Tensor of shape \(2, 5\)"),
    "integer output": (lambda: (Returns(lambda y: y.argmax(1)), X, {}), TypeError, r"the model output must be a floating tensor"),
    "nan output": (lambda: (Returns(lambda y: y / 0.0 * 0.0), X, {}), ValueError, r"the model output holds NaN/Inf values"),
    "custom output nan": (lambda: (_mlp(), X, {"output_fn": lambda y: (-1.0 - y.abs()).log()}), ValueError, r"output_fn\(model output\) holds NaN/Inf"),
    # layers
    "unknown layer": (lambda: (_mlp(), X, {"layers": ["0", "3.weigth"]}), ValueError, r"layers='3.weigth' is neither a module nor a parameter of the model. Close valid names: '3.weight'"),
    "layer without trainable params": (lambda: (_mlp(), X, {"layers": ["0", "1"]}), ValueError, r"layer '1' has no trainable parameters"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error_message(name):
    make, error, match = CASES[name]
    model, batch, kwargs = make()
    modes = [m.training for m in model.modules()] if isinstance(model, nn.Module) else None
    with pytest.raises(error, match=match):
        ntk_layer_importance(model, batch, **kwargs)
    if modes is not None:
        assert [m.training for m in model.modules()] == modes


def test_frozen_model():
    model = _mlp().requires_grad_(False)
    with pytest.raises(ValueError, match=r"model has no parameter with requires_grad=True.*Unfreeze"):
        ntk_layer_importance(model, X)
    assert not any(p.requires_grad for p in model.parameters())
