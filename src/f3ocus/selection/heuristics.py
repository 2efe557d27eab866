r"""Constructive plans used as documented smart starts by the population solvers.

- :func:`greedy_plan`: assign one (client, layer) unit at a time, always the one with the largest
  marginal gain of importance $- t\cdot$diversity given the counts so far,

  $$ g_{kl} = S_{kl} - \frac{t}{L}\left(2 n_l + 1 - 2 \bar n\right), $$

  among clients with budget left (with ``exact_budget=False`` it stops when no gain is positive).
  It never revisits a choice, so it is a heuristic, not the optimum (:mod:`f3ocus.selection.exact`).
- :func:`reference_tradeoff`: a data-only scale for tradeoffs, $I(m^{top})/D(m^{top})$ for the
  client-only plan, used to spread the starts of multi-objective solvers along the front.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.gains import add_gains, total_term
from f3ocus.selection.plans import repair, topk_plan
from f3ocus.selection.problem import SelectionProblem

__all__ = ["greedy_plan", "reference_tradeoff", "smart_starts"]


def greedy_plan(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    """Marginal-gain greedy plan for ``importance - tradeoff * diversity`` (see the module docstring)."""
    if not problem.plain:
        return _constrained_greedy(problem, tradeoff)
    K, L = problem.K, problem.L  # noqa: N806
    mask = np.zeros((K, L), dtype=bool)
    left = problem.budgets.copy()
    n = np.zeros(L)
    total = int(problem.budgets.sum())
    for _ in range(total):
        # the closed-form gain of one more unit (f3ocus.selection.gains); the total term is a constant
        # of the choice, but decides when an at-most greedy stops
        gain = add_gains(problem, tradeoff, problem.scores, n[None, :]) + total_term(problem, tradeoff, n.sum(), 1.0)
        gain = np.where(mask | (left[:, None] == 0), -np.inf, gain)
        k, l = np.unravel_index(int(np.argmax(gain)), gain.shape)  # noqa: E741
        if not np.isfinite(gain[k, l]) or (not problem.exact_budget and gain[k, l] <= 0):
            break
        mask[k, l] = True
        left[k] -= 1
        n[l] += 1
    return mask


def _constrained_greedy(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    """The greedy under constraints: required cells first, then the best allowed unit that fits.

    The gain of a unit is the closed form of :mod:`f3ocus.selection.gains`; with costs the unit with the
    best gain per cost is taken (Dantzig's greedy for knapsacks). Exact budgets fill every row to $b_k$;
    otherwise it stops when no unit gains. Coverage is restored at the end (:func:`~f3ocus.selection.plans.repair`).
    """
    mask = problem.required_mask.copy()
    allowed = problem.allowed_mask
    n = mask.sum(axis=0).astype(np.float64)
    load = problem.loads(mask)
    cap = None if problem.costs is None else problem.capacities * (1 + 1e-12) + 1e-9
    for _ in range(problem.K * problem.L):
        gain = add_gains(problem, tradeoff, problem.linear, n[None, :]) + total_term(problem, tradeoff, n.sum(), 1.0)
        open_ = allowed & ~mask
        if problem.costs is None:
            open_ &= (mask.sum(axis=1) < problem.budgets)[:, None]
            key = gain
        else:
            open_ &= load[:, None] + problem.costs[None, :] <= cap[:, None]
            key = gain / problem.costs[None, :]
        must = problem.exact_budget and problem.costs is None
        key = np.where(open_ & (must | (gain > 0)), key, -np.inf)
        if not np.isfinite(key.max()):
            break
        k, l = np.unravel_index(int(np.argmax(key)), key.shape)  # noqa: E741
        mask[k, l] = True
        n[l] += 1
        load[k] += 1.0 if problem.costs is None else problem.costs[l]
    return repair(mask, problem, np.random.default_rng(0))


def reference_tradeoff(problem: SelectionProblem) -> float:
    """``importance / diversity`` of the client-only plan (``1.0`` when its diversity is 0)."""
    top = topk_plan(problem)
    div = float(problem.diversity(top))
    imp = float(problem.benefit(top))
    return imp / div if div > 0 and imp > 0 else 1.0


def smart_starts(problem: SelectionProblem, tradeoff: float | None, n_grid: int = 8) -> np.ndarray:
    r"""The client-only plan and greedy plans around ``tradeoff``, or along a grid when it is ``None``.

    Greedy plans for a tradeoff $t$ are built at $t \cdot 2^{j/2}$, $j = -2..2$ (the greedy is myopic,
    and a slightly different weight often ends nearer the optimum at $t$); without a tradeoff the grid is
    ``reference_tradeoff(problem) * 2**-j`` for ``j = 0..n_grid-1``. Duplicates are dropped.
    Returns ``(P, K, L)``.
    """
    top = topk_plan(problem)
    if tradeoff is not None:
        ts = [float(tradeoff) * 2.0 ** (j / 2) for j in (0, -1, 1, -2, 2)]
    else:
        ref = reference_tradeoff(problem)
        ts = [ref * 2.0**-j for j in range(n_grid)]
    plans = np.stack([top] + [greedy_plan(problem, t) for t in ts if t > 0])
    _, first = np.unique(plans.reshape(len(plans), -1), axis=0, return_index=True)
    return plans[np.sort(first)]
