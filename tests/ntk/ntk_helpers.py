"""Shared helpers of the scoring-method tests: kernel arguments per case, cached dense references."""

from __future__ import annotations

import pytest
import torch

from cases import build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.importance import scoring_problem

F64 = torch.float64


def weighted_square_loss(out, t):
    """A per-sample loss for any output: t_n * ||out_n||^2 / 2."""
    return 0.5 * t * out.reshape(out.shape[0], -1).pow(2).sum(dim=1)


def kernel_kwargs(case, kernel: str) -> dict:
    """The case's own arguments, with the kernel switched (keeping a case that fixes its own kernel)."""
    kw = dict(case.kwargs)
    if kw.get("kernel", "output") != "output":
        return kw if kw["kernel"] == kernel else None
    if kernel == "loss":
        with scoring_problem(case.model, case.batch, **kw) as problem:
            n = problem.num_samples
        kw.update(
            kernel="loss", loss_fn=weighted_square_loss, targets=torch.linspace(0.5, 1.5, n, dtype=F64)
        )
    else:
        kw["kernel"] = kernel
    return kw


_reference_cache: dict = {}


def dense_scores(name: str, kernel: str):
    """The dense reference scores of a case in float64 (None where the case fixes another kernel)."""
    key = (name, kernel)
    if key not in _reference_cache:
        case = build(name, F64, "cpu")
        kw = kernel_kwargs(case, kernel)
        _reference_cache[key] = (
            None if kw is None else ntk_layer_importance(case.model, case.batch, method="dense", **kw)
        )
    return _reference_cache[key]


def assert_scores_close(got, ref, rel=1e-6):
    assert list(got) == list(ref)
    scale = max(max(ref.values()), 1e-30)
    for layer in ref:
        assert got[layer] == pytest.approx(ref[layer], rel=rel, abs=rel * 1e-6 * scale), layer
