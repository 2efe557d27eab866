r"""The dense reference: explicit layer Jacobians, layer kernels and their eigenvalues.

Slow and simple on purpose: every fast method is tested against it in float64, and users can call it
to check a custom model, output function or method.

For layer $l$ with trainable parameters $\theta_l$ ($P_l$ scalars), the Jacobian of the kernel outputs
$F(\theta) \in \mathbb{R}^{N \times M}$ (see :mod:`f3ocus.ntk.problem`) is

$$ J_l = \frac{\partial\, \mathrm{vec}\, F}{\partial \theta_l} \in \mathbb{R}^{NM \times P_l}
   \quad (\text{row } nM + m), \qquad \Theta_l = J_l J_l^\top, $$

built here with ``torch.func.jacrev`` (reverse mode only, so fused scaled-dot-product attention, which
has no forward-mode derivative, works). The ``"dense"`` method returns $\lambda_{\max}(\Theta_l)$ from
``torch.linalg.eigvalsh``.

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

from f3ocus.ntk.methods import Cost, LayerEig, MethodResult, register_method
from f3ocus.ntk.problem import NTKProblem, forward_flops

__all__ = ["dense_layer_jacobians", "dense_layer_kernels", "dense_method", "ntk_reference"]


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


def _dense_cost(problem: NTKProblem) -> Cost:
    """One forward and $NM$ vjps (each about two forward passes), the Grams, one eigvalsh per layer.

    Multiply-adds, with $F$ the forward pass of :func:`~f3ocus.ntk.problem.forward_flops` (the unit
    the other methods' cost models use too).
    """
    nm = problem.num_samples * problem.num_outputs
    sizes = problem.layer_sizes()
    total = sum(sizes.values())
    flops = (1 + 2.0 * nm) * forward_flops(problem) + sum(nm * nm * p for p in sizes.values()) + len(sizes) * 9.0 * nm**3
    memory = (nm * total + 2 * nm * nm) * problem.itemsize
    return Cost(flops=float(flops), memory=float(memory))


@register_method("dense", cost=_dense_cost)
def dense_method(
    problem: NTKProblem,
    *,
    tol: float = 0.0,
    maxiter: int = 0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    **options: Any,
) -> MethodResult:
    """The reference method: explicit $J_l$ by ``jacrev``, $\\Theta_l = J_l J_l^\\top$, ``eigvalsh``.

    Exact up to floating-point rounding; ``tol``, ``maxiter``, ``generator`` and ``max_memory`` are
    accepted for a uniform signature and not used. Costs $NM$ backward passes and
    $O(NM \\cdot P + (NM)^2 P_l + (NM)^3)$ time, $NM \\cdot P$ memory.
    """
    if options:
        raise TypeError(f"method='dense' takes no options {sorted(options)}; remove them.")
    eigs: dict[str, LayerEig] = {}
    for layer, kernel in dense_layer_kernels(problem, chunk_size=chunk_size).items():
        top = torch.linalg.eigvalsh(kernel)[-1].item() if kernel.numel() else 0.0
        eigs[layer] = LayerEig(value=max(top, 0.0))
    nm = problem.num_samples * problem.num_outputs
    return MethodResult(eigs=eigs, backward_passes=nm, matvecs=0, extra={"jacobian_rows": nm})


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
        model, batch, layers=layers, output_fn=output_fn, kernel=kernel, loss_fn=loss_fn, targets=targets, dtype=dtype
    ) as problem:
        return dense_layer_kernels(problem, chunk_size=chunk_size)
