"""Brute-force references for tiny selection problems (public, for checking solvers).

Every feasible plan is enumerated, so these are exact by construction and exponential in ``K``: use them
on instances with at most :data:`MAX_PLANS` plans. The exact solver (:mod:`f3ocus.selection.exact`) is
tested against them.

Example:
    >>> import numpy as np
    >>> from f3ocus.selection.problem import SelectionProblem
    >>> p = SelectionProblem(np.array([[0.6, 0.4], [0.7, 0.3]]), np.array([1, 1]))
    >>> count_plans(p)
    4
    >>> brute_force_optimum(p, 1.0).astype(int).tolist()  # 0.4 + 0.7 beats 1.3 - 1.0 * 1
    [[0, 1], [1, 0]]
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from f3ocus.selection.decision import pareto_mask
from f3ocus.selection.problem import SelectionProblem

__all__ = [
    "MAX_PLANS",
    "brute_force_front",
    "brute_force_optimum",
    "count_plans",
    "enumerate_plans",
    "pareto_mask",
    "supported_mask",
]

#: Largest number of plans :func:`enumerate_plans` agrees to build.
MAX_PLANS = 200_000


def _row_options(L: int, b: int, exact: bool) -> np.ndarray:  # noqa: N803
    sizes = [b] if exact else range(b + 1)
    rows = [np.isin(np.arange(L), c) for s in sizes for c in itertools.combinations(range(L), s)]
    return np.array(rows, dtype=bool).reshape(-1, L)


def _constrained_rows(problem: SelectionProblem, k: int) -> np.ndarray:
    """Every row of client ``k`` that keeps its own constraints (budget or capacity, required, allowed,
    at most ``max_changes[k]`` cells off row ``k`` of ``previous``)."""
    exact = problem.exact_budget
    b = int(problem.budgets[k])
    rows = _row_options(problem.L, b, exact) if problem.costs is None else _row_options(problem.L, problem.L, False)
    if problem.costs is not None:
        rows = rows[rows.astype(np.float64) @ problem.costs <= problem.capacities[k] * (1 + 1e-12) + 1e-9]
    rows = rows[np.all(rows | ~problem.required_mask[k], axis=1) & np.all(~rows | problem.allowed_mask[k], axis=1)]
    if problem.max_changes is not None:
        rows = rows[(rows != problem.previous[k]).sum(axis=1) <= problem.max_changes[k]]
    return rows


def count_plans(problem: SelectionProblem) -> int:
    """Number of plans whose rows keep their constraints: $\\prod_k \\binom{L}{b_k}$, or
    $\\prod_k \\sum_{j \\le b_k} \\binom{L}{j}$ without constraints (coverage is checked after)."""
    if not problem.plain:
        total = 1
        for k in range(problem.K):
            total *= len(_constrained_rows(problem, k))
        return total
    total = 1
    for b in problem.budgets.tolist():
        total *= math.comb(problem.L, b) if problem.exact_budget else sum(math.comb(problem.L, j) for j in range(b + 1))
    return total


def enumerate_plans(problem: SelectionProblem) -> np.ndarray:
    """All feasible plans, ``(P, K, L)`` bool, in lexicographic order of the rows' options.

    Raises:
        ValueError: more than :data:`MAX_PLANS` plans.
    """
    n = count_plans(problem)
    if n > MAX_PLANS:
        raise ValueError(
            f"problem has {n} feasible plans, more than MAX_PLANS={MAX_PLANS}; brute force is for tiny instances."
        )
    if problem.plain:
        options = [_row_options(problem.L, int(b), problem.exact_budget) for b in problem.budgets]
    else:
        options = [_constrained_rows(problem, k) for k in range(problem.K)]
    if any(len(o) == 0 for o in options):
        return np.zeros((0, problem.K, problem.L), dtype=bool)
    grids = np.meshgrid(*[np.arange(len(o)) for o in options], indexing="ij")
    idx = [g.ravel() for g in grids]
    plans = np.stack([options[k][idx[k]] for k in range(problem.K)], axis=1)
    if problem.min_coverage is not None:
        plans = plans[np.all(problem.counts(plans) >= problem.min_coverage, axis=-1)]
    return plans


def brute_force_optimum(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    """The first enumerated feasible plan that maximizes benefit - tradeoff * diversity.

    Raises:
        ValueError: no plan meets the constraints.
    """
    plans = enumerate_plans(problem)
    if len(plans) == 0:
        raise ValueError("no plan meets the constraints.")
    return plans[int(np.argmax(problem.scalarized(plans, tradeoff)))]


def supported_mask(importance: np.ndarray, diversity: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Points that are extreme points of the supported front (vertices of the upper-left hull).

    A point is kept when it uniquely (up to duplicates) maximizes ``importance - t * diversity`` for some
    ``t >= 0``: the vertices of the concave majorant of the (diversity, importance) cloud, from the
    least-diversity plan with the most importance to the most-importance plan with the least diversity.
    """
    imp = np.asarray(importance, dtype=np.float64)
    div = np.round(np.asarray(diversity, dtype=np.float64), 12)  # equal counts, equal diversity
    scale = max(1.0, float(np.abs(imp).max()))
    # walk from the best least-diversity point up the upper hull (Andrew's monotone chain)
    order = np.lexsort((-imp, div))
    hull: list[int] = []
    for i in order:
        if hull and abs(div[i] - div[hull[-1]]) <= tol:  # same diversity: only the best importance counts
            continue
        if hull and imp[i] <= imp[hull[-1]] + tol * scale:  # not better than a less diverse point
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (div[b] - div[a]) * (imp[i] - imp[a]) - (imp[b] - imp[a]) * (div[i] - div[a])
            if cross >= -tol * scale:  # b lies on or below the chord a-i
                hull.pop()
            else:
                break
        hull.append(i)
    keep = np.zeros(imp.shape, dtype=bool)
    for i in hull:
        keep |= (np.abs(imp - imp[i]) <= tol * scale) & (np.abs(div - div[i]) <= tol)
    return keep


def brute_force_front(problem: SelectionProblem) -> tuple[np.ndarray, np.ndarray]:
    """Objective vectors ``(importance, diversity)`` of the whole Pareto front and of its supported
    extreme points, each ``(P, 2)``, unique and sorted by importance descending."""
    plans = enumerate_plans(problem)
    imp, div = problem.benefit(plans), problem.diversity(plans)
    pareto = pareto_mask(np.column_stack([-imp, div]))
    supported = supported_mask(imp, div)

    def table(mask: np.ndarray) -> np.ndarray:
        pts = np.unique(np.round(np.column_stack([imp[mask], div[mask]]), 12), axis=0)
        return pts[np.argsort(-pts[:, 0])]

    return table(pareto), table(supported)
