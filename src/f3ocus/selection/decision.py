r"""Picking one plan from a set of candidates: by a tradeoff, or at the knee of the front.

**With a tradeoff** $t$ the pick maximizes $\text{importance} - t\cdot\text{diversity}$ (ties: more
importance, then the first).

**The knee** (``tradeoff=None``). Let $A$ be the non-dominated point with the most importance and $B$ the
one with the least diversity. After scaling both objectives to $[0, 1]$ between $B$ and $A$
($\hat I = (I - I_B)/(I_A - I_B)$, $\hat D = (D - D_B)/(D_A - D_B)$), the knee is the non-dominated point
farthest above the line through $A$ and $B$, i.e. the one maximizing $\hat I - \hat D$ (Das, "On
characterizing the 'knee' of the Pareto curve based on normal-boundary intersection", Structural
Optimization 1999; Branke et al., PPSN 2004). Expanding $\hat I - \hat D$ shows it is the plan that
maximizes $\text{importance} - t^\star\cdot\text{diversity}$ with

$$ t^\star = \frac{I_A - I_B}{D_A - D_B}, $$

the slope of the front between its two ends. On the exact supported front this is exactly the knee; and
single-objective solvers called with ``tradeoff=None`` optimize at $t^\star$ computed from the exact
lexicographic extremes (:func:`knee_tradeoff`), so every solver aims at the same plan.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.problem import SelectionProblem

__all__ = ["end_slope", "knee_index", "knee_tradeoff", "pareto_mask", "pick", "pick_scalarized"]


def pareto_mask(F: np.ndarray) -> np.ndarray:  # noqa: N803 - pymoo's name
    """Rows of ``F`` (objectives to minimize, ``(P, M)``) not dominated by another row.

    Duplicated rows are all kept.
    """
    F = np.asarray(F, dtype=np.float64)  # noqa: N806
    leq = np.all(F[:, None, :] <= F[None, :, :], axis=-1)
    lt = np.any(F[:, None, :] < F[None, :, :], axis=-1)
    dominated = np.any(leq & lt, axis=0)
    return ~dominated



def end_slope(importance: np.ndarray, diversity: np.ndarray) -> float:
    r"""$t^\star = (I_A - I_B) / (D_A - D_B)$ between the ends of the non-dominated points.

    $A$ has the most importance, $B$ the least diversity; ``0.0`` when they do not span both objectives
    (one point: every tradeoff picks it). The one definition used by the knee tradeoff, the final polish
    and MOPSO's polishing grid.
    """
    imp = np.asarray(importance, dtype=np.float64)
    div = np.asarray(diversity, dtype=np.float64)
    nd = np.flatnonzero(pareto_mask(np.column_stack([-imp, div])))
    a, b = nd[np.argmax(imp[nd])], nd[np.argmin(div[nd])]
    d_range, i_range = float(div[a] - div[b]), float(imp[a] - imp[b])
    if d_range <= 1e-12 or i_range <= 0:
        return 0.0
    return i_range / d_range


def pick_scalarized(importance: np.ndarray, diversity: np.ndarray, tradeoff: float) -> int:
    """Index maximizing ``importance - tradeoff * diversity`` (ties: more importance, then the first)."""
    imp = np.asarray(importance, dtype=np.float64)
    div = np.asarray(diversity, dtype=np.float64)
    value = imp - float(tradeoff) * div
    best = value.max()
    tied = np.flatnonzero(value >= best - 1e-12 * max(1.0, abs(best)))
    return int(tied[np.argmax(imp[tied])])


def knee_index(importance: np.ndarray, diversity: np.ndarray) -> int:
    """Index of the knee among the points (dominated points are never picked).

    A single non-dominated point is its own knee; when both ends tie (two points), the one with more
    importance is picked.
    """
    imp = np.asarray(importance, dtype=np.float64)
    div = np.asarray(diversity, dtype=np.float64)
    nd = np.flatnonzero(pareto_mask(np.column_stack([-imp, div])))
    a = nd[np.lexsort((div[nd], -imp[nd]))[0]]  # most importance, then least diversity
    b = nd[np.lexsort((-imp[nd], div[nd]))[0]]  # least diversity, then most importance
    d_range, i_range = div[a] - div[b], imp[a] - imp[b]
    if d_range <= 0 or i_range <= 0:
        return int(a)
    score = (imp[nd] - imp[b]) / i_range - (div[nd] - div[b]) / d_range
    best = score.max()
    tied = nd[score >= best - 1e-12]
    return int(tied[np.argmax(imp[tied])])


def pick(importance: np.ndarray, diversity: np.ndarray, tradeoff: float | None) -> int:
    """:func:`pick_scalarized` for a number, :func:`knee_index` for ``None``."""
    if tradeoff is None:
        return knee_index(importance, diversity)
    return pick_scalarized(importance, diversity, tradeoff)


def knee_tradeoff(problem: SelectionProblem) -> float:
    r"""$t^\star = (I_A - I_B) / (D_A - D_B)$ between the exact lexicographic extremes of the front.

    It is the default tradeoff of single-objective solvers. ``0.0`` when the most-important plan is also
    the least diverse (the front is one point and every tradeoff picks it).
    """
    from f3ocus.selection.exact import lexicographic_extremes

    a, b = lexicographic_extremes(problem)
    ends = np.stack([a, b])
    return end_slope(problem.benefit(ends), problem.diversity(ends))
