r"""Exact optimum with count budgets only, without an LP: best replies, then cycle canceling over the layers.

With exact budgets and no other constraint the problem is a transportation problem with a separable
convex cost on the column sums (:mod:`f3ocus.selection.exact`): source $\to$ client $k$ ($b_k$ units)
$\to$ layer $l$ (unit arc, gain $S_{kl}$) $\to$ sink, whose $j$-th unit into layer $l$ costs
$a(j) = f(j+1) - f(j) = \frac{t}{L}(2j + 1 - 2\bar n)$. A flow is optimal exactly when its residual
network has no cycle of positive gain (Ahuja, Magnanti & Orlin, *Network Flows*, 1993, thm. 9.1). The
source arcs are saturated, so a residual cycle alternates "layer $l \to$ client $k$ (drop $m_{kl}$) $\to$
layer $l'$ (add $m_{kl'}$)" steps and may pass once through the sink, where a layer gives up its last
unit (gain $a(n_l - 1)$) or takes one more (gain $-a(n_l)$). Contracting the clients leaves a graph on
the $L$ layers and the sink with the gains

$$
w(l, l') = \max_{k:\, m_{kl} = 1,\, m_{kl'} = 0} (S_{kl'} - S_{kl}), \qquad
w(s, l) = a(n_l - 1), \qquad w(l, s) = -a(n_l),
$$

and a positive cycle of it (a simple cycle visits each layer once, so its moves never touch one cell
twice) is a positive residual cycle. So: start from best replies (each client in turn re-picks its top
$b_k$ of $S_{kl} - a(n_l)$ against the others' counts until no client changes: $O(L)$ vectorized work
per client), then find positive cycles by Bellman-Ford on $L + 1$ nodes ($O(L^3)$) and apply them until
none is left, canceling node-disjoint cycles together (they touch disjoint cells). Every step is $O(KL)$ or $O(L^3)$ numpy work instead of a simplex on $K L$ columns.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cycle_canceling_optimum"]


def _best_replies(S: np.ndarray, budgets: np.ndarray, add, passes: int) -> np.ndarray:  # noqa: N803
    """Each client in turn takes its top ``b_k`` of ``S_k - add(n)`` (``n``: the other clients' counts)."""
    K, L = S.shape  # noqa: N806
    m = np.zeros((K, L), dtype=bool)
    n = np.zeros(L)
    for _ in range(max(1, passes)):  # the first pass builds the start plan
        changed = False
        for k in range(K):
            n[m[k]] -= 1.0
            gain = S[k] - add(n)
            top = np.argpartition(-gain, budgets[k] - 1)[: budgets[k]]
            new = np.zeros(L, dtype=bool)
            new[top] = True
            if gain[new].sum() > gain[m[k]].sum() + 1e-12 * (1.0 + np.abs(gain).max()) or not m[k].any():
                changed |= bool(np.any(new != m[k]))
                m[k] = new
            n[m[k]] += 1.0
        if not changed:
            break
    return m


def _gains(S: np.ndarray, m: np.ndarray):  # noqa: N803
    """``(W, who)``: the best move gain ``w(l, l')`` over the clients, and ``who(l, l')``, the client making it
    (looked up only for the edges of the cycles canceled)."""
    K, L = S.shape  # noqa: N806
    lay, k = np.nonzero(m.T)  # the plan's cells, ordered by layer
    gain = S[k] - S[k, lay][:, None]
    gain[m[k]] = -np.inf
    counts = np.bincount(lay, minlength=L)
    starts = np.concatenate([[0], np.cumsum(counts)])
    W = np.full((L, L), -np.inf)  # noqa: N806
    full = counts > 0
    if k.size:
        W[full] = np.maximum.reduceat(gain, starts[:-1][full], axis=0)
    np.fill_diagonal(W, -np.inf)

    def who(a: int, b: int) -> int:
        block = slice(starts[a], starts[a + 1])
        return int(k[block][np.argmax(gain[block, b])])

    return W, who


def _positive_cycle(G: np.ndarray, tol: float) -> list[int] | None:  # noqa: N803
    """A cycle of positive total gain in the dense gain matrix ``G`` (Bellman-Ford), or ``None``."""
    V = G.shape[0]  # noqa: N806
    dist = np.zeros(V)
    pred = np.full(V, -1, dtype=np.int64)
    last = -1
    for _ in range(V + 1):
        cand = dist[:, None] + G
        u = np.argmax(cand, axis=0)
        best = cand[u, np.arange(V)]
        upd = best > dist + tol
        if not upd.any():
            return None
        dist = np.where(upd, best, dist)
        pred = np.where(upd, u, pred)
        last = int(np.flatnonzero(upd)[0])
    v = last
    for _ in range(V):  # walk back into the cycle
        v = int(pred[v])
    cycle, u = [v], int(pred[v])
    while u != v:
        cycle.append(u)
        u = int(pred[u])
    return cycle[::-1]


def cycle_canceling_optimum(
    S: np.ndarray, budgets: np.ndarray, tradeoff: float, *, passes: int = 8, max_cycles: int | None = None  # noqa: N803
) -> np.ndarray:
    r"""The plan maximizing $\sum_{kl} m_{kl}S_{kl} - \frac{t}{L}\sum_l (n_l - \bar n)^2$, rows of exactly $b_k$ ones.

    Args:
        S: ``(K, L)`` scores.
        budgets: ``(K,)`` ints in ``1..L``.
        tradeoff: $t \ge 0$.
        passes: rounds of best replies before the cycles (at least one; more give a better start and fewer
            cycles; any value is exact).
        max_cycles: safety cap on the cycles canceled (``None``: $10 K L$).

    Returns:
        ``(K, L)`` bool optimal plan.

    Example:
        >>> import numpy as np
        >>> cycle_canceling_optimum(np.array([[0.6, 0.4], [0.7, 0.3]]), np.array([1, 1]), 1.0).astype(int).tolist()
        [[0, 1], [1, 0]]
    """
    S = np.asarray(S, dtype=np.float64)  # noqa: N806
    budgets = np.asarray(budgets, dtype=np.int64)
    K, L = S.shape  # noqa: N806
    c, nbar = float(tradeoff) / L, float(budgets.sum()) / L

    def add(n):
        return c * (2.0 * n + 1.0 - 2.0 * nbar)

    m = _best_replies(S, budgets, add, passes)
    tol = 1e-12 * (1.0 + float(np.abs(S).max()) + c * K)
    G = np.full((L + 1, L + 1), -np.inf)  # noqa: N806 - layers 0..L-1, the sink L
    for _ in range(10 * K * L if max_cycles is None else max_cycles):
        n = m.sum(axis=0).astype(np.float64)
        G[:L, :L], who = _gains(S, m)
        G[L, :L] = np.where(n > 0, add(n - 1.0), -np.inf)
        G[:L, L] = -add(n)
        moves = []
        H = G.copy()  # noqa: N806 - node-disjoint positive cycles, canceled together
        while True:
            cycle = _positive_cycle(H, tol)
            if cycle is None:
                break
            edges = list(zip(cycle, cycle[1:] + cycle[:1], strict=True))
            if sum(H[a, b] for a, b in edges) <= tol:  # float noise, not an improving cycle
                break
            moves += [(who(a, b), a, b) for a, b in edges if a < L and b < L]
            H[cycle, :] = -np.inf
            H[:, cycle] = -np.inf
        if not moves:
            return m
        for k, a, b in moves:  # disjoint layers: every move touches its own two cells
            m[k, a], m[k, b] = False, True
    raise RuntimeError("cycle canceling did not converge; please report this instance.")
