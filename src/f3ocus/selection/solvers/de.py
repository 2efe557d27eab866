"""Differential evolution over random keys ("de").

Storn & Price, "Differential evolution - a simple and efficient heuristic for global optimization over
continuous spaces", J. Global Optimization 1997, through ``pymoo.algorithms.soo.nonconvex.de.DE``
(as :class:`KeysDE`, the same algorithm with a faster duplicate test; DE/best/1/bin with a low crossover rate by default: each trial changes few keys). Like :mod:`.pso`
it searches random keys $x \\in [0, 1]^{KL}$ decoded by :func:`~f3ocus.selection.problem.decode_keys`,
maximizes importance - tradeoff * diversity (the knee
tradeoff when ``tradeoff=None``), and seeds the client-only and greedy plans into its initial
population (a smart start declared at registration; ``smart_start=False`` turns it off; reported in ``stats["smart_start"]``).

Final local improvement (``polish=True``, the default; ``polish=False`` turns it off): the plan the
solver would report climbs by steepest ascent over single moves and two-client exchanges at the pick's
tradeoff (:func:`f3ocus.selection.api._polish`); ``stats`` records ``polish_moves`` and
``scalarized_before_polish``.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.soo.nonconvex.de import DE
from pymoo.algorithms.soo.nonconvex.ga import FitnessSurvival

from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver
from f3ocus.selection.solvers.pso import ExactImprovementReplacement, initial_keys

__all__ = ["KeysDE", "de"]


class KeysDE(DE):
    """pymoo's ``DE`` with :class:`~f3ocus.selection.solvers.pso.ExactImprovementReplacement` (same result)."""

    def _advance(self, infills=None, **kwargs):
        index = infills.get("index")  # the parent each trial vector comes from
        self.pop[index] = ExactImprovementReplacement().do(self.problem, self.pop[index], infills)
        FitnessSurvival().do(self.problem, self.pop, return_indices=True)


@register_solver("de", polish=True, smart_start=True, encoding="keys", paper="Storn & Price 1997")
def de(
    problem: SelectionPymooProblem,
    *,
    pop_size: int = 40,
    n_gen: int = 200,
    variant: str = "DE/best/1/bin",
    CR: float = 0.1,  # noqa: N803 - the literature's name
    F: float = 0.8,  # noqa: N803 - the literature's name
    starts: np.ndarray | None = None,
) -> DE:
    """DE factory.

    Args:
        problem: the single-objective selection problem with the ``"keys"`` encoding.
        pop_size: population size.
        n_gen: generations (the termination).
        variant: pymoo's DE variant string.
        CR: crossover rate.
        F: differential weight.
        starts: start plans from the declared starting step, seeded into the initial population (``None``:
            uniformly random).
    """
    algorithm = KeysDE(
        pop_size=pop_size, variant=variant, CR=CR, F=F, sampling=initial_keys(problem, pop_size, starts)
    )
    algorithm.termination = ("n_gen", n_gen)  # pymoo's constructor overwrites a termination argument
    return algorithm
