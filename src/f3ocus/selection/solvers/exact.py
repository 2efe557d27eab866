"""The exact solver ("exact"): the optimum of importance - tradeoff * diversity, or the exact front.

With a number ``tradeoff`` it returns :func:`~f3ocus.selection.exact.exact_optimum` (a convex-cost
min-cost flow solved as a totally unimodular linear program); with ``tradeoff=None`` every extreme point
of the supported Pareto front (:func:`~f3ocus.selection.exact.exact_front`), from which ``select_layers``
returns the knee. Deterministic: the seed is recorded but unused.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.exact import exact_front, exact_optimum
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.solvers import SolverOutput, _register_direct

__all__ = ["exact"]


@_register_direct("exact", multi_objective=True)
def exact(selection: SelectionProblem, *, tradeoff: float | None, rng: np.random.Generator) -> SolverOutput:
    """Exact optimum (a number ``tradeoff``) or exact supported front (``None``)."""
    if tradeoff is None:
        plans = exact_front(selection)
        return SolverOutput(plans, evaluations=len(plans), extra={"method": "dichotomic front, HiGHS LP"})
    plan = exact_optimum(selection, tradeoff)
    return SolverOutput(plan[None], evaluations=1, extra={"method": "min-cost flow LP (HiGHS)"})
