r"""The ``"dense"`` method: the reference. Explicit $J_l$ by ``jacrev``, $\Theta_l = J_l J_l^\top$, ``eigvalsh``.

Exact for any output, also one that couples samples; costs $NM$ backward passes. Takes no options.
"""

from __future__ import annotations

import torch

from f3ocus.ntk.problem import NTKProblem, forward_flops
from f3ocus.ntk.reference import dense_layer_kernels
from f3ocus.ntk.registry import Cost, LayerEig, MethodResult, register_method

__all__ = ["dense_method"]


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


@register_method("dense", cost=_dense_cost, options=(), coupled=True)
def dense_method(
    problem: NTKProblem,
    *,
    tol: float = 0.0,
    maxiter: int = 0,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
) -> MethodResult:
    """The reference method: explicit $J_l$ by ``jacrev``, $\\Theta_l = J_l J_l^\\top$, ``eigvalsh``.

    Exact up to floating-point rounding; ``tol``, ``maxiter``, ``generator`` and ``max_memory`` are
    accepted for a uniform signature and not used. Costs $NM$ backward passes and
    $O(NM \\cdot P + (NM)^2 P_l + (NM)^3)$ time, $NM \\cdot P$ memory.
    """
    eigs: dict[str, LayerEig] = {}
    for layer, kernel in dense_layer_kernels(problem, chunk_size=chunk_size).items():
        top = torch.linalg.eigvalsh(kernel)[-1].item() if kernel.numel() else 0.0
        eigs[layer] = LayerEig(value=max(top, 0.0))
    nm = problem.num_samples * problem.num_outputs
    return MethodResult(eigs=eigs, backward_passes=nm, matvecs=0, extra={"jacobian_rows": nm})
