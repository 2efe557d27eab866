r"""The dense reference: explicit layer Jacobians, layer kernels and their eigenvalues.

Slow and simple on purpose: every fast method is tested against it in float64, and users can call it
to check a custom model, output function or method.

For layer $l$ with trainable parameters $\theta_l$ ($P_l$ scalars), the Jacobian of the kernel outputs
$F(\theta) \in \mathbb{R}^{N \times M}$ (see :mod:`f3ocus.ntk.problem`) is

$$ J_l = \frac{\partial\, \mathrm{vec}\, F}{\partial \theta_l} \in \mathbb{R}^{NM \times P_l}
   \quad (\text{row } nM + m), \qquad \Theta_l = J_l J_l^\top, $$

built here with ``torch.func.jacrev`` (reverse mode only, so fused scaled-dot-product attention, which
has no forward-mode derivative, works). The ``"dense"`` method returns $\lambda_{\max}(\Theta_l)$ from
``torch.linalg.eigvalsh`` (:mod:`f3ocus.ntk.methods.dense`).

Example::

    from f3ocus.ntk import ntk_reference
    kernels = ntk_reference(model, x)              # layer name -> Θ_l, (N·C, N·C)
    lam = {k: torch.linalg.eigvalsh(K)[-1].item() for k, K in kernels.items()}
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor
from torch.func import jacrev

from f3ocus.ntk.problem import NTKProblem

__all__ = ["dense_layer_jacobians", "dense_layer_kernels", "ntk_reference"]


def dense_layer_jacobians(problem: NTKProblem, *, chunk_size: int | None = None) -> dict[str, Tensor]:
    """Every layer's Jacobian $J_l$ as an explicit ``(N·M, P_l)`` matrix.

    Args:
        problem: The scoring problem.
        chunk_size: Output rows per vmapped vjp batch (``torch.func.jacrev``'s ``chunk_size``);
            ``None`` does all $NM$ rows at once.

    Returns:
        Layer name -> $J_l$, rows ordered sample-major (row ``n*M + m``), columns in the order of the
        layer's parameters, each flattened row-major.
    """
    params = problem.layer_params()
    n_rows = problem.num_samples * problem.num_outputs

    def flat_outputs(p: dict[str, Tensor]) -> Tensor:
        return problem.outputs(p).reshape(-1)

    with warnings.catch_warnings():
        # vmap over the backward of fused CPU attention runs a slower loop and says so; it is exact
        warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
        jac = jacrev(flat_outputs, chunk_size=chunk_size)(params)
    return {
        layer: torch.cat([jac[name].reshape(n_rows, -1) for name in names], dim=1)
        for layer, names in problem.layers.items()
    }


def dense_layer_kernels(problem: NTKProblem, *, chunk_size: int | None = None) -> dict[str, Tensor]:
    """Every layer's kernel $\\Theta_l = J_l J_l^\\top$, an ``(N·M, N·M)`` symmetric matrix."""
    return {layer: j @ j.T for layer, j in dense_layer_jacobians(problem, chunk_size=chunk_size).items()}


def ntk_reference(
    model: torch.nn.Module,
    batch: Any,
    *,
    layers: Any = None,
    output_fn: Any = None,
    kernel: str = "output",
    loss_fn: Any = None,
    targets: Any = None,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    **ignored: Any,
) -> dict[str, Tensor]:
    """The dense layer kernels $\\Theta_l$ of ``model`` on ``batch``.

    Takes the arguments of :func:`f3ocus.ntk_layer_importance` and validates them the same way, so one
    keyword dict serves both calls; the solver options (``method``, ``seed``, ``tol``, ``maxiter``,
    ``max_memory``, ``throw``) are accepted and ignored, ``chunk_size`` bounds the rows per vmapped
    vjp. The model is evaluated in eval mode and its state restored afterwards.

    Returns:
        Layer name -> $\\Theta_l$ (``(N·M, N·M)``, in the compute dtype), in layer order; its largest
        eigenvalue is the layer's importance.
    """
    from f3ocus.ntk.prepare import scoring_problem

    unknown = set(ignored) - {"method", "seed", "tol", "maxiter", "max_memory", "throw"}
    if unknown:
        raise TypeError(f"ntk_reference() got unexpected keyword argument(s) {sorted(unknown)}.")
    with scoring_problem(
        model, batch, layers=layers, output_fn=output_fn, kernel=kernel, loss_fn=loss_fn, targets=targets, dtype=dtype,
        probe=False,
    ) as problem:
        return dense_layer_kernels(problem, chunk_size=chunk_size)
