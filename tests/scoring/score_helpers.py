"""Shared helpers of the layer-score tests: the case table with a loss for every case, cached."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cases import build
from f3ocus.ntk.prepare import default_output_fn

F64 = torch.float64
LOSS_SCORES = ("grad_norm", "rgn", "snr", "fisher", "snip", "grasp", "gradflow")
NO_LOSS_SCORES = ("ntk", "synflow", "magnitude")


def square_loss(out, t):
    """A per-sample loss for any output shape: ||out_n - t_n||^2 / 2 (a regression loss on random targets)."""
    n = out.shape[0]
    return 0.5 * (out.reshape(n, -1) - t.reshape(n, -1)).pow(2).sum(dim=1)


def case_with_loss(name: str, dtype: torch.dtype = F64):
    """``(case, kwargs)``: the case's own arguments plus ``loss_fn``/``targets`` where it has none.

    Cases without a loss get :func:`square_loss` against targets drawn from a seeded generator with the
    output's shape; the case's ``kernel`` (an NTK argument) is dropped.
    """
    case = build(name, dtype, "cpu")
    kw = {k: v for k, v in case.kwargs.items() if k != "kernel"}
    if "loss_fn" not in kw:
        args, kwargs = _split(case.batch)
        was = case.model.training
        with torch.no_grad():
            out = (kw.get("output_fn") or default_output_fn)(case.model.eval()(*args, **kwargs))
        case.model.train(was)
        g = torch.Generator().manual_seed(11)
        kw["loss_fn"] = square_loss
        kw["targets"] = torch.randn(out.shape, generator=g, dtype=F64).to(out.dtype)
    return case, kw


def _split(batch):
    if isinstance(batch, torch.Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (), dict(batch)


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")
