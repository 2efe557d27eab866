r"""The ``"lanczos"`` method: fully matrix-free batched Lanczos over all layers.

Each step is one vmapped vjp and one vmapped jvp (or double vjp) per layer
(:class:`f3ocus.ntk.operator.LayerKernelOperator`). Memory is tiny, work is large: the method of
last resort for models whose Jacobians do not fit in memory, and exact for any output, also one that
couples samples (it never assumes that a sample's outputs depend on that sample alone).

Cost model (multiply-adds): $k \cdot L \cdot 3 \cdot 2 F$ for $k$ =
:data:`~f3ocus.ntk.calibration.LANCZOS_STEPS` steps, $L$ layers and $F$ the forward multiply-adds;
memory $\min(L, \text{chunk}) \cdot 2P$ elements plus the Lanczos basis $L k NM$.

Options: ``mode`` (``"auto"``, ``"jvp"``, ``"vjp"``: how $J u$ is computed).
"""

from __future__ import annotations

import torch

from f3ocus._checks import check_choice
from f3ocus.ntk.calibration import LANCZOS_STEPS
from f3ocus.ntk.linalg import lanczos_max_eig, layer_eig, random_start
from f3ocus.ntk.operator import LayerKernelOperator
from f3ocus.ntk.problem import NTKProblem, forward_flops
from f3ocus.ntk.registry import Cost, MethodResult, register_method

__all__ = ["lanczos_cost", "lanczos_method"]


def lanczos_cost(problem: NTKProblem) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"lanczos"`` (see the module docstring)."""
    n, m = problem.num_samples, problem.num_outputs
    sizes = problem.layer_sizes()
    total = sum(sizes.values())
    layers = len(sizes)
    flops = LANCZOS_STEPS * layers * 3 * 2.0 * forward_flops(problem)
    memory = (2 * layers * total + layers * LANCZOS_STEPS * n * m) * problem.itemsize
    return Cost(flops=float(flops), memory=float(memory))


@register_method("lanczos", cost=lanczos_cost, options=("mode",), coupled=True)
def lanczos_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    mode: str = "auto",
) -> MethodResult:
    """Matrix-free batched Lanczos on every layer kernel (:class:`~f3ocus.ntk.operator.LayerKernelOperator`).

    Options:
        mode: ``"auto"``, ``"jvp"`` or ``"vjp"`` (how $J u$ is computed; see the operator).

    ``chunk_size`` is the number of layers per vmapped pass; ``None`` picks the largest that fits
    ``max_memory`` (two parameter copies per layer).
    """
    check_choice("mode", mode, ("auto", "jvp", "vjp"))
    layers = len(problem.layers)
    if chunk_size is None and max_memory is not None:
        per_layer = 2 * sum(problem.layer_sizes().values()) * problem.itemsize
        chunk_size = max(1, min(layers, int(max_memory // max(per_layer, 1))))
    op = LayerKernelOperator(problem, chunk_size=chunk_size, mode=mode)
    v0 = random_start(layers, op.size, generator=generator, dtype=problem.dtype, device=problem.device)
    results = lanczos_max_eig(op, v0, tol=tol, maxiter=maxiter)
    return MethodResult(
        eigs={layer: layer_eig(r) for layer, r in zip(problem.layers, results, strict=True)},
        backward_passes=op.backward_passes,
        matvecs=op.matvecs,
        extra={"mode": op.mode, "chunk_size": op.chunk_size},
    )
