"""Particle swarm optimization over random keys ("pso").

Kennedy & Eberhart, "Particle swarm optimization", ICNN 1995, through
``pymoo.algorithms.soo.nonconvex.pso.PSO`` (adaptive inertia and acceleration). PSO is continuous: a
particle is a vector of random keys $x \\in [0, 1]^{KL}$ and is decoded to a plan by
:func:`~f3ocus.selection.problem.decode_keys` (each client trains the layers with its $b_k$ largest
keys; Bean, ORSA J. Computing 1994). It maximizes importance - tradeoff * diversity (the knee tradeoff
when ``tradeoff=None``).

Smart start (``smart_start=True``, the default, reported in ``stats["smart_start"]``): the client-only
and greedy plans (:func:`~f3ocus.selection.heuristics.smart_starts`) enter the initial swarm as keys
$0.25 + 0.5\\,m$ (trained layers above untrained ones); the other particles are uniformly random.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.soo.nonconvex.pso import PSO

from f3ocus.selection.heuristics import smart_starts
from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver

__all__ = ["initial_keys", "pso"]


def initial_keys(problem: SelectionPymooProblem, pop_size: int, smart_start: bool) -> np.ndarray:
    """``(pop_size, K*L)`` initial keys: smart starts first (if asked), then uniform keys.

    The uniform keys come from a generator seeded by the problem data, so the draw is reproducible;
    pymoo's own generator (seeded by ``select_layers``) drives the search itself.
    """
    sel = problem.selection
    rng = np.random.default_rng(np.frombuffer(sel.scores.tobytes(), dtype=np.uint32)[:64].tolist())
    X = rng.random((pop_size, sel.K * sel.L))  # noqa: N806
    if smart_start:
        starts = smart_starts(sel, problem.tradeoff)[:pop_size]
        X[: len(starts)] = 0.25 + 0.5 * starts.reshape(len(starts), -1)
    return X


@register_solver("pso", encoding="keys", paper="Kennedy & Eberhart 1995")
def pso(problem: SelectionPymooProblem, *, pop_size: int = 30, n_gen: int = 50, smart_start: bool = True) -> PSO:
    """PSO factory.

    Args:
        problem: the single-objective selection problem with the ``"keys"`` encoding.
        pop_size: swarm size.
        n_gen: iterations (the termination).
        smart_start: seed the client-only and greedy plans into the initial swarm.
    """
    algorithm = PSO(pop_size=pop_size, sampling=initial_keys(problem, pop_size, smart_start))
    algorithm.termination = ("n_gen", n_gen)  # pymoo's constructor overwrites a termination argument
    return algorithm
