r"""The ``"persample"`` method: stored per-sample Jacobian rows, then a Gram or Lanczos per layer.

The rows of every $J_l$ come from one forward pass and $M$ batched backprop-only passes
(:mod:`f3ocus.ntk.rows`); then, per layer, either the Gram $\Theta_l = J_l J_l^\top$ and ``eigvalsh``
(cost $(NM)^2 P_l$, one GEMM) or Lanczos on the stored rows, $v \mapsto J_l (J_l^\top v)$, whichever
:func:`f3ocus.ntk.linalg.uses_gram` says is cheaper. Layers are processed in groups whose Jacobians
fit ``max_memory`` (each group costs one more forward and backward sweep).

Cost model (multiply-adds; only the ordering matters). With $N$ samples, $M$ kernel outputs and
$F \ge NP$ the multiply-adds of a forward pass (:func:`~f3ocus.ntk.problem.forward_flops`):
$(1 + M + w_r M) F$ (forward, $M$ backprop passes, per-sample contractions weighted
$w_r$ = :data:`~f3ocus.ntk.calibration.ROWS_WEIGHT`) plus, per layer,
$\min\big((NM)^2 P_l,\ 2 w_g k NM P_l\big)$ ($k$ Lanczos steps of GEMV pairs weighted
$w_g$ = :data:`~f3ocus.ntk.calibration.GEMV_WEIGHT`); memory $2 NM \max_l P_l$ elements.

Options: ``eig`` (``"auto"``, ``"gram"``, ``"lanczos"``), ``use_hooks`` (``False`` sends every
parameter through the torch.func fallback), ``batched`` (``False``: one plain backward per output).
"""

from __future__ import annotations

import logging

import torch

from f3ocus.ntk.calibration import GEMV_WEIGHT, LANCZOS_STEPS, ROWS_WEIGHT
from f3ocus.ntk.grouping import row_groups, subproblem
from f3ocus.ntk.linalg import rows_top_eigs
from f3ocus.ntk.problem import NTKProblem, forward_flops
from f3ocus.ntk.registry import Cost, LayerEig, MethodResult, register_method
from f3ocus.ntk.rows import per_sample_jacobian_blocks

logger = logging.getLogger("f3ocus.ntk")

__all__ = ["persample_cost", "persample_method"]


def persample_cost(problem: NTKProblem, max_memory: int | None = None) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"persample"`` (see the module docstring).

    With ``max_memory``, each layer group beyond the first adds a forward and $M$ backprop passes.
    """
    n, m = problem.num_samples, problem.num_outputs
    sizes = problem.layer_sizes()
    rows = n * m
    eig = sum(min(rows * rows, 2 * GEMV_WEIGHT * 2 * LANCZOS_STEPS * rows) * p for p in sizes.values())
    sweeps = len(row_groups(problem, max_memory))
    fwd = forward_flops(problem)
    flops = (1 + m + ROWS_WEIGHT * m) * fwd + (sweeps - 1) * (1 + m) * fwd + eig
    memory = 2.0 * rows * max(sizes.values(), default=0) * problem.itemsize
    return Cost(flops=float(flops), memory=memory)


@register_method("persample", cost=persample_cost, options=("eig", "use_hooks", "batched"))
def persample_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    eig: str = "auto",
    use_hooks: bool = True,
    batched: bool = True,
) -> MethodResult:
    """Per-sample Jacobian rows, then Gram + ``eigvalsh`` or Lanczos per layer.

    Options (pass them to :func:`f3ocus.ntk_layer_importance` as keywords):
        eig: ``"auto"``, ``"gram"`` or ``"lanczos"`` (see :func:`f3ocus.ntk.linalg.rows_top_eigs`).
        use_hooks: ``False`` sends every parameter through the torch.func fallback.
        batched: ``False`` replaces the vmapped backward pass by one plain pass per output.

    ``chunk_size`` is the number of kernel outputs per batched backward pass.
    """
    eigs: dict[str, LayerEig] = {}
    paths: dict[str, str] = {}
    groups = row_groups(problem, max_memory)
    for index, group in enumerate(groups):
        if len(groups) > 1:
            logger.info("layer group %d of %d (%d layers)", index + 1, len(groups), len(group))
        sub = subproblem(problem, group)
        jac = per_sample_jacobian_blocks(
            sub, chunk_size=chunk_size, use_hooks=use_hooks, batched=batched, sample_major=False
        )
        got, path = rows_top_eigs(jac, eig=eig, tol=tol, maxiter=maxiter, generator=generator)
        del jac
        eigs.update(got)
        paths.update(path)
    steps = sum(e.iterations for e in eigs.values())
    return MethodResult(
        eigs={k: eigs[k] for k in problem.layers},
        backward_passes=len(groups) * problem.num_outputs,
        matvecs=steps,
        extra={"groups": len(groups), "path": paths, "chunk_size": chunk_size},
    )
