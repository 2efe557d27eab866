"""Particle swarm optimization over random keys ("pso").

Kennedy & Eberhart, "Particle swarm optimization", ICNN 1995, through
``pymoo.algorithms.soo.nonconvex.pso.PSO`` (as :class:`KeysPSO`, the same algorithm with a faster
duplicate test; fixed inertia and acceleration, zero initial velocity). PSO is continuous: a
particle is a vector of random keys $x \\in [0, 1]^{KL}$ and is decoded to a plan by
:func:`~f3ocus.selection.problem.decode_keys` (each client trains the layers with its $b_k$ largest
keys; Bean, ORSA J. Computing 1994). It maximizes importance - tradeoff * diversity (the knee tradeoff
when ``tradeoff=None``).

Smart start (declared at registration, ``smart_start=False`` turns it off; reported in ``stats["smart_start"]``): the client-only
and greedy plans (:func:`~f3ocus.selection.heuristics.smart_starts`) enter the initial swarm as keys
$0.25 + 0.5\\,m$ (trained layers above untrained ones); the other particles are uniformly random.

Final local improvement (``polish=True``, the default; ``polish=False`` turns it off): the plan the
solver would report climbs by steepest ascent over single moves and two-client exchanges at the pick's
tradeoff (:func:`f3ocus.selection.api._polish`); ``stats`` records ``polish_moves`` and
``scalarized_before_polish``.
"""

from __future__ import annotations

import numpy as np
from pymoo.algorithms.soo.nonconvex.pso import PSO
from pymoo.core.replacement import ImprovementReplacement

from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver

__all__ = ["ExactImprovementReplacement", "KeysPSO", "initial_keys", "pso"]


def exact_duplicates(off: np.ndarray, pop: np.ndarray) -> np.ndarray:
    """``(len(off),)`` bool: row ``i`` of ``off`` equals an earlier row of ``off`` or a row of ``pop``.

    pymoo's ``DefaultDuplicateElimination(epsilon=0.0)`` (distance 0 is equality), by hashing the rows
    (``+ 0.0`` makes ``-0.0`` and ``0.0`` one key, as equal vectors are) instead of an all-pairs distance
    matrix: $O(PKL)$ instead of $O(P^2 KL)$, a third of PSO's time at $K = 200$, $L = 48$.
    """
    seen = {row.tobytes() for row in np.ascontiguousarray(pop, dtype=np.float64) + 0.0}
    dup = np.zeros(len(off), dtype=bool)
    for i, row in enumerate(np.ascontiguousarray(off, dtype=np.float64) + 0.0):
        key = row.tobytes()
        dup[i] = key in seen
        seen.add(key)
    return dup


class ExactImprovementReplacement(ImprovementReplacement):
    """pymoo's ``ImprovementReplacement`` (an offspring replaces its parent if better, never a duplicate)
    with the duplicate test of :func:`exact_duplicates`: the same replacements, faster."""

    def _do(self, problem, pop, off, **kwargs):
        ret = np.full((len(pop), 1), False)
        pop_F, pop_CV, pop_feas = pop.get("F", "CV", "FEAS")  # noqa: N806
        off_F, off_CV, off_feas = off.get("F", "CV", "FEAS")  # noqa: N806
        if problem.has_constraints() > 0:
            ret[(~pop_feas & ~off_feas) & (off_CV < pop_CV)] = True
            ret[~pop_feas & off_feas] = True
            ret[(pop_feas & off_feas) & (off_F < pop_F)] = True
        else:
            ret[off_F < pop_F] = True
        ret[exact_duplicates(off.get("X"), pop.get("X"))] = False
        return ret[:, 0]


class KeysPSO(PSO):
    """pymoo's ``PSO`` with :class:`ExactImprovementReplacement` for the personal bests (same result)."""

    def _advance(self, infills=None, **kwargs):
        self.particles = infills
        has_improved = ExactImprovementReplacement().do(self.problem, self.pop, infills, return_indices=True)
        self.pop[has_improved] = infills[has_improved]
        if self.adaptive:
            self._adapt()


def initial_keys(problem: SelectionPymooProblem, pop_size: int, starts: np.ndarray | None) -> np.ndarray:
    r"""``(pop_size, K*L)`` initial keys.

    Without a smart start the keys are uniform in $[0, 1]$. With one, particle $i$ encodes start plan
    $m$ number $i \bmod S$ as keys $0.5 + \delta(2m - 1)$ plus Gaussian noise of scale $\delta/3$
    ($\delta = 0.05$; the first $S$ particles get no noise): trained layers sit just above untrained
    ones, so small moves of the swarm flip a few of them (swaps within a client) instead of jumping to
    an unrelated plan. The noise comes from a generator seeded by the problem data, so the draw is
    reproducible; pymoo's own generator (seeded by ``select_layers``) drives the search itself.
    """
    sel = problem.selection
    rng = np.random.default_rng(np.frombuffer(sel.scores.tobytes(), dtype=np.uint32)[:64].tolist())
    if starts is None:
        return rng.random((pop_size, sel.K * sel.L))
    starts = np.asarray(starts, dtype=bool).reshape(-1, sel.K * sel.L)
    delta = 0.05
    base = 0.5 + delta * (2.0 * starts[np.arange(pop_size) % len(starts)] - 1.0)
    noise = rng.normal(0.0, delta / 3.0, base.shape)
    noise[: len(starts)] = 0.0
    return np.clip(base + noise, 0.0, 1.0)


@register_solver("pso", polish=True, smart_start=True, encoding="keys", paper="Kennedy & Eberhart 1995")
def pso(
    problem: SelectionPymooProblem,
    *,
    pop_size: int = 40,
    n_gen: int = 200,
    w: float = 0.5,
    c1: float = 2.0,
    c2: float = 2.0,
    starts: np.ndarray | None = None,
) -> PSO:
    """PSO factory (fixed inertia and acceleration, particles start at rest).

    Args:
        problem: the single-objective selection problem with the ``"keys"`` encoding.
        pop_size: swarm size.
        n_gen: iterations (the termination). On the benchmark instances the swarm's best plan after 200
            iterations is the one after 300 (K = 10-50), so 200 is the default.
        w: inertia weight.
        c1: cognitive (own best) acceleration.
        c2: social (swarm best) acceleration.
        starts: start plans from the declared starting step (``None``: a uniform swarm); the swarm starts
            around them (:func:`initial_keys`).
    """
    algorithm = KeysPSO(
        pop_size=pop_size,
        sampling=initial_keys(problem, pop_size, starts),
        w=w,
        c1=c1,
        c2=c2,
        adaptive=False,
        initial_velocity="zero",
    )
    algorithm.termination = ("n_gen", n_gen)  # pymoo's constructor overwrites a termination argument
    return algorithm
