r"""The exact solver ("exact"): the optimum of importance - tradeoff * diversity, or the exact front.

With a number ``tradeoff`` it returns :func:`~f3ocus.selection.exact.exact_optimum` (a convex-cost
min-cost flow solved as a totally unimodular linear program); with ``tradeoff=None`` every extreme point
of the supported Pareto front (:func:`~f3ocus.selection.exact.exact_front`), from which ``select_layers``
returns the knee. Deterministic: the seed is recorded but unused.

With count budgets only (exact budgets, $tK/L \le 2$) the flow is solved without an LP, by cycle
canceling over the layers (:mod:`f3ocus.selection.cycles`). Where the flow applies (count budgets, with or without required and forbidden cells, ``min_coverage`` and a
churn penalty, the ``"spread"`` coupling) the optimum is a totally unimodular LP; with costs or the
``"agree"`` coupling it is the MIP of :mod:`f3ocus.selection.mip`, and ``stats`` carries its proven
``bound`` (an upper bound on importance $-$ tradeoff * diversity) and ``mip_gap``.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.exact import exact_front, solve_exact
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.solvers import SolverOutput, _register_direct

__all__ = ["exact"]


@_register_direct("exact", multi_objective=True)
def exact(
    selection: SelectionProblem, *, tradeoff: float | None, rng: np.random.Generator, time_limit: float = 60.0,
    gap: float = 1e-4,
) -> SolverOutput:
    """Exact optimum (a number ``tradeoff``) or exact supported front (``None``).

    ``time_limit`` (seconds) and ``gap`` (relative) bound the MIP; the flow ignores them.
    """
    if tradeoff is None:
        plans = exact_front(selection)
        return SolverOutput(plans, evaluations=len(plans), extra={"method": "dichotomic front, HiGHS LP"})
    plan, info = solve_exact(selection, tradeoff, time_limit=time_limit, gap=gap)
    if info["method"] == "cycles":
        return SolverOutput(plan[None], evaluations=1, extra={"method": "cycle canceling over the layers"})
    if info["method"] == "flow":
        return SolverOutput(plan[None], evaluations=1, extra={"method": "min-cost flow LP (HiGHS)"})
    extra = {"method": "MIP (HiGHS)", "bound": info["bound"], "mip_gap": info["gap"], "mip_rounds": info["rounds"],
             "mip_status": info["status"]}
    return SolverOutput(plan[None], evaluations=info["rounds"], extra=extra)
