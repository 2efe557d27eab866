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

from f3ocus.selection.exact import top_b_plan
from f3ocus.selection.problem import SelectionProblem

__all__ = ["greedy_plan", "reference_tradeoff", "smart_starts"]


def greedy_plan(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    """Marginal-gain greedy plan for ``importance - tradeoff * diversity`` (see the module docstring)."""
    K, L = problem.K, problem.L  # noqa: N806
    mask = np.zeros((K, L), dtype=bool)
    left = problem.budgets.copy()
    n = np.zeros(L)
    nbar = problem.budgets.sum() / L
    total = int(problem.budgets.sum())
    for _ in range(total):
        if not problem.exact_budget:
            nbar = (n.sum() + 1) / L
        gain = problem.scores - (tradeoff / L) * (2.0 * n + 1.0 - 2.0 * nbar)[None, :]
        gain = np.where(mask | (left[:, None] == 0), -np.inf, gain)
        k, l = np.unravel_index(int(np.argmax(gain)), gain.shape)  # noqa: E741
        if not np.isfinite(gain[k, l]) or (not problem.exact_budget and gain[k, l] <= 0):
            break
        mask[k, l] = True
        left[k] -= 1
        n[l] += 1
    return mask


def reference_tradeoff(problem: SelectionProblem) -> float:
    """``importance / diversity`` of the client-only plan (``1.0`` when its diversity is 0)."""
    top = top_b_plan(problem)
    div = float(problem.diversity(top))
    return float(problem.importance(top)) / div if div > 0 else 1.0


def smart_starts(problem: SelectionProblem, tradeoff: float | None, n_grid: int = 8) -> np.ndarray:
    r"""The client-only plan and greedy plans around ``tradeoff``, or along a grid when it is ``None``.

    Greedy plans for a tradeoff $t$ are built at $t \cdot 2^{j/2}$, $j = -2..2$ (the greedy is myopic,
    and a slightly different weight often ends nearer the optimum at $t$); without a tradeoff the grid is
    ``reference_tradeoff(problem) * 2**-j`` for ``j = 0..n_grid-1``. Duplicates are dropped.
    Returns ``(P, K, L)``.
    """
    top = top_b_plan(problem)
    if not problem.exact_budget:
        top &= problem.scores > 0
    if tradeoff is not None:
        ts = [float(tradeoff) * 2.0 ** (j / 2) for j in (0, -1, 1, -2, 2)]
    else:
        ref = reference_tradeoff(problem)
        ts = [ref * 2.0**-j for j in range(n_grid)]
    plans = np.stack([top] + [greedy_plan(problem, t) for t in ts if t > 0])
    _, first = np.unique(plans.reshape(len(plans), -1), axis=0, return_index=True)
    return plans[np.sort(first)]
