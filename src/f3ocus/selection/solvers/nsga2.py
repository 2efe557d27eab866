"""NSGA-II on the binary plan encoding with budget-keeping operators ("nsga2", multi-objective).

Deb, Pratap, Agarwal & Meyarivan, "A fast and elitist multiobjective genetic algorithm: NSGA-II",
IEEE TEVC 2002, through ``pymoo.algorithms.moo.nsga2.NSGA2``. Every individual is a feasible plan:
:class:`~f3ocus.selection.operators.BudgetSampling` draws uniformly random plans,
:class:`~f3ocus.selection.operators.BudgetCrossover` mixes parents row by row keeping each client's
count, and :class:`~f3ocus.selection.operators.BudgetMutation` swaps a trained layer for an untrained
one, the best of a small tournament by importance or by diversity (equal odds).
``select_layers`` picks the reported plan from the final non-dominated set (the knee, or the best
importance - tradeoff * diversity).

Smart start (declared at registration, ``smart_start=False`` turns it off; reported in ``stats["smart_start"]``): the initial
population holds the client-only plan (the max-importance end of the front) and marginal-gain greedy
plans (:func:`~f3ocus.selection.heuristics.smart_starts`) at the target tradeoff, or along a grid of
tradeoffs for the knee.

Final local improvement (``polish=True``, the default; ``polish=False`` turns it off): the plan the
solver would report climbs by steepest ascent over single moves and two-client exchanges at the pick's
tradeoff (:func:`f3ocus.selection.api._polish`); ``stats`` records ``polish_moves`` and
``scalarized_before_polish``.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2

from f3ocus.selection.operators import (
    BudgetCrossover,
    BudgetMutation,
    BudgetSampling,
    PlanDuplicateElimination,
)
from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver

__all__ = ["nsga2"]


@register_solver("nsga2", polish=True, smart_start=True, multi_objective=True, paper="Deb et al. 2002")
def nsga2(
    problem: SelectionPymooProblem,
    *,
    pop_size: int = 100,
    n_gen: int = 200,
    crossover_prob: float = 0.9,
    mutation_rate: float | None = None,
    guided: int = 4,
    starts: np.ndarray | None = None,
) -> NSGA2:
    """NSGA-II factory (arguments as for :func:`~f3ocus.selection.solvers.ga.ga`)."""
    algorithm = NSGA2(
        pop_size=pop_size,
        sampling=BudgetSampling(starts),
        crossover=BudgetCrossover(prob=crossover_prob),
        mutation=BudgetMutation(prob_var=mutation_rate, guided=guided),
        eliminate_duplicates=PlanDuplicateElimination(),
    )
    algorithm.termination = ("n_gen", n_gen)  # pymoo's constructor overwrites a termination argument
    return algorithm
