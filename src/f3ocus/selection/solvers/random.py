"""Random baseline ("random"): uniformly random feasible plans.

With ``samples > 1`` the best of that many draws (by importance - tradeoff * diversity, or the knee when
``tradeoff=None``) is returned, a random-search baseline with a known evaluation budget.
"""

from __future__ import annotations

import numpy as np

from f3ocus._checks import check_int
from f3ocus.selection.operators import random_plan
from f3ocus.selection.problem import SelectionProblem
from f3ocus.selection.solvers import SolverOutput, _register_direct

__all__ = ["random_solver"]


@_register_direct("random", baseline=True)
def random_solver(
    selection: SelectionProblem, *, tradeoff: float | None, rng: np.random.Generator, samples: int = 1
) -> SolverOutput:
    """``samples`` uniformly random feasible plans (:func:`~f3ocus.selection.operators.random_plan`)."""
    samples = check_int("samples", samples, low=1)
    return SolverOutput(random_plan(selection, rng, n=samples), evaluations=samples)
