"""The dense reference against an independent brute force, and the functional view it is built on.

The brute force does not use torch.func or f3ocus' functional call: it runs the real model once with
autograd and calls ``torch.autograd.grad`` on every scalar kernel output, one at a time, to build
$J_l$ row by row; eigenvalues come from numpy.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance, resolve_layers
from f3ocus.ntk import dense_layer_jacobians, dense_layer_kernels, ntk_reference, scoring_problem


def _forward(model, batch):
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**batch)
    return model(*batch)


def _logits(out):
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping):
        return out["logits"]
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


def brute_force_jacobians(case) -> dict[str, np.ndarray]:
    """J_l row by row with torch.autograd.grad on the model itself (eval mode)."""
    model = case.model.eval()
    kw = case.kwargs
    layers = resolve_layers(model, kw.get("layers"))
    params = dict(model.named_parameters())
    y = kw.get("output_fn", _logits)(_forward(model, case.batch))
    n = y.shape[0]
    if kw.get("kernel", "output") == "output":
        f = y.reshape(-1)
    elif kw["kernel"] == "sum":
        f = y.reshape(n, -1).sum(dim=1)
    else:
        f = kw["loss_fn"](y, kw["targets"]).reshape(-1)
    out = {}
    for layer, names in layers.items():
        rows = []
        for r in range(f.numel()):
            grads = torch.autograd.grad(f[r], [params[k] for k in names], retain_graph=True, allow_unused=True)
            rows.append(
                np.concatenate(
                    [
                        (torch.zeros_like(params[k]) if g is None else g).reshape(-1).numpy()
                        for k, g in zip(names, grads, strict=True)
                    ]
                )
            )
        out[layer] = np.stack(rows)
    return out


@pytest.mark.parametrize("name", CASE_NAMES)
def test_dense_reference_matches_brute_force(name):
    brute = brute_force_jacobians(build(name))
    case = build(name)
    with scoring_problem(case.model, case.batch, **case.kwargs) as problem:
        jac = dense_layer_jacobians(problem)
        kernels = dense_layer_kernels(problem)
    assert list(jac) == list(brute)
    for layer, j in brute.items():
        np.testing.assert_allclose(jac[layer].numpy(), j, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(kernels[layer].numpy(), j @ j.T, rtol=1e-10, atol=1e-12)
    scores = ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)
    for layer, j in brute.items():
        expected = np.linalg.eigvalsh(j @ j.T)[-1]
        assert scores[layer] == pytest.approx(max(expected, 0.0), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", CASE_NAMES)
def test_per_sample_view_reproduces_the_batch(name):
    """vmap over per_sample_inputs() of sample_outputs() gives outputs(); a loop does where vmap cannot."""
    case = build(name)
    with scoring_problem(case.model, case.batch, **case.kwargs) as problem:
        params = problem.layer_params()
        full = problem.outputs(params)
        args, kwargs, targets = problem.per_sample_inputs()
        rows = []
        for i in range(problem.num_samples):
            a, k, t = torch.utils._pytree.tree_map(lambda x, i=i: x[i], (args, kwargs, targets))
            rows.append(problem.sample_outputs(params, a, k, t))
        torch.testing.assert_close(torch.stack(rows), full, rtol=1e-10, atol=1e-12)
        if name == "hf_bert":  # HF masking utilities branch on mask values: vmap refuses them
            return
        vmapped = torch.func.vmap(lambda a, k, t: problem.sample_outputs(params, a, k, t))(args, kwargs, targets)
        torch.testing.assert_close(vmapped, full, rtol=1e-10, atol=1e-12)
        assert full.shape == (problem.num_samples, problem.num_outputs)


def test_shared_tensor_is_not_split_per_sample():
    """A tensor whose leading dim is not N (here a (T, T) mask) is passed whole to every sample."""

    class Masked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x, mask):
            return self.lin(mask @ x).sum(dim=1)

    model = Masked().double()
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    mask = torch.tril(torch.ones(5, 5, dtype=torch.float64))
    with scoring_problem(model, {"x": x, "mask": mask}) as problem:
        args, kwargs, _ = problem.per_sample_inputs()
        assert kwargs["mask"] == ()
        params = problem.layer_params()
        vmapped = torch.func.vmap(lambda a, k, t: problem.sample_outputs(params, a, k, t))(args, kwargs, ())
        torch.testing.assert_close(vmapped, problem.outputs(params))


def test_ntk_reference_sums_to_the_full_kernel():
    """Θ = Σ_l Θ_l: the layer kernels add up to the kernel of all parameters together."""
    case = build("weight_sharing")
    kernels = ntk_reference(case.model, case.batch)
    with scoring_problem(case.model, case.batch, layers={"all": ["inp", "shared", "head"]}) as p:
        (full,) = dense_layer_kernels(p).values()
    torch.testing.assert_close(sum(kernels.values()), full, rtol=1e-12, atol=1e-12)


def test_ntk_reference_takes_the_same_keywords_as_the_scorer():
    case = build("mlp_loss")
    kw = dict(case.kwargs, method="dense", seed=0, tol=1e-9, maxiter=10, max_memory=10**8, throw=True)
    kernels = ntk_reference(case.model, case.batch, **kw)
    scores = ntk_layer_importance(case.model, case.batch, **kw)
    for layer, k in kernels.items():
        assert k.shape == (5, 5)
        assert scores[layer] == pytest.approx(torch.linalg.eigvalsh(k)[-1].item(), rel=1e-12)
    with pytest.raises(TypeError, match=r"ntk_reference\(\) got unexpected keyword argument\(s\) \['flavour'\]"):
        ntk_reference(case.model, case.batch, flavour=1)
