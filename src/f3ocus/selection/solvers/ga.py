"""A genetic algorithm on the binary plan encoding with budget-keeping operators ("ga").

Holland, *Adaptation in Natural and Artificial Systems*, 1975, through
``pymoo.algorithms.soo.nonconvex.ga.GA`` (tournament selection, elitist survival). It maximizes
importance - tradeoff * diversity directly; with ``tradeoff=None`` at the knee tradeoff
(:func:`~f3ocus.selection.decision.knee_tradeoff`). Operators as for :mod:`.nsga2`; mutation swaps are
guided by a small tournament on their exact effect on the objective.

Smart start (declared at registration, ``smart_start=False`` turns it off; reported in ``stats["smart_start"]``): the initial
population holds the client-only plan and the marginal-gain greedy plan
(:func:`~f3ocus.selection.heuristics.smart_starts`), the rest is uniformly random.

Final local improvement (``polish=True``, the default; ``polish=False`` turns it off): the plan the
solver would report climbs by steepest ascent over single moves and two-client exchanges at the pick's
tradeoff (:func:`f3ocus.selection.api._polish`); ``stats`` records ``polish_moves`` and
``scalarized_before_polish``.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.soo.nonconvex.ga import GA

from f3ocus.selection.operators import (
    BudgetCrossover,
    BudgetMutation,
    BudgetSampling,
    PlanDuplicateElimination,
)
from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver

__all__ = ["ga"]


@register_solver("ga", polish=True, smart_start=True, paper="Holland 1975")
def ga(
    problem: SelectionPymooProblem,
    *,
    pop_size: int = 100,
    n_gen: int = 200,
    crossover_prob: float = 0.9,
    mutation_rate: float | None = None,
    guided: int = 4,
    starts: np.ndarray | None = None,
) -> GA:
    """GA factory.

    Args:
        problem: the single-objective selection problem (binary encoding).
        pop_size: population size.
        n_gen: generations (the termination).
        crossover_prob: probability that a mating is crossed.
        mutation_rate: probability per client row of one swap (``None``: ``1/K``, at least one per child).
        guided: tournament size of a mutation swap (``1``: uniform swaps).
        starts: start plans from the declared starting step, seeded into the initial population (``None``:
            uniformly random).
    """
    algorithm = GA(
        pop_size=pop_size,
        sampling=BudgetSampling(starts),
        crossover=BudgetCrossover(prob=crossover_prob),
        mutation=BudgetMutation(prob_var=mutation_rate, guided=guided),
        eliminate_duplicates=PlanDuplicateElimination(),
    )
    algorithm.termination = ("n_gen", n_gen)  # pymoo's constructor overwrites a termination argument
    return algorithm
