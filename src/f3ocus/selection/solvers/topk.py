"""Client-only baseline ("topk"): each client trains its own top ``b_k`` layers.

The paper's client-only ablation (Saha et al., CVPR 2025): it maximizes importance and ignores
diversity, so it is the exact optimum at ``tradeoff=0`` and the reference point the server improves on.
With ``exact_budget=False`` zero-score layers are left out.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.exact import top_b_plan
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.solvers import SolverOutput, _register_direct

__all__ = ["topk"]


@_register_direct("topk", baseline=True)
def topk(selection: SelectionProblem, *, tradeoff: float | None, rng: np.random.Generator) -> SolverOutput:
    """Each client's own top ``b_k`` (ties to the lower layer index)."""
    plan = top_b_plan(selection)
    if not selection.exact_budget:
        plan &= selection.scores > 0
    return SolverOutput(plan[None], evaluations=1)
