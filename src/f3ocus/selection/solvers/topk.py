"""Client-only baseline ("topk"): each client trains its own top ``b_k`` layers.

The paper's client-only ablation (Saha et al., CVPR 2025): it maximizes importance and ignores
diversity, so it is the exact optimum at ``tradeoff=0`` and the reference point the server improves on.
With ``exact_budget=False`` zero-score layers are left out. With costs each client takes its layers in
decreasing order of score per cost while they fit its capacity (Dantzig's greedy for the knapsack);
required cells come first, forbidden ones never, and coverage is restored at the end
(:func:`~f3ocus.selection.plans.topk_plan`).
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.plans import topk_plan
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.solvers import SolverOutput, _register_direct

__all__ = ["topk"]


@_register_direct("topk", baseline=True)
def topk(selection: SelectionProblem, *, tradeoff: float | None, rng: np.random.Generator) -> SolverOutput:
    """Each client's own top ``b_k`` (ties to the lower layer index); greedy by score per cost with costs."""
    return SolverOutput(topk_plan(selection, rng)[None], evaluations=1)
