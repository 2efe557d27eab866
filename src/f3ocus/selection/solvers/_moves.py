r"""Budget-keeping moves with closed-form gains, shared by the SA, ABC, ACO and MOPSO solvers.

A *move* takes one unit of client $k$'s budget out of slot $a$ and puts it into slot $c$. A slot is a
layer $0 \le l < L$ or, with ``exact_budget=False``, the *empty slot* $L$ (an unused unit of budget):
$a < L, c < L$ is a swap, $a = L$ adds layer $c$, $c = L$ drops layer $a$; $a = c$ is "stay". Every move
keeps the row feasible.

The gain of a move and of an exchange between two clients (client $k_1$ gives $a$ and takes $c$,
client $k_2$ the opposite) come in closed form from :mod:`f3ocus.selection.gains`, so no plan is
re-evaluated. Exchanges keep the counts and reach the plans that single moves cannot improve on
because each half alone pays the diversity cost. Moves and exchanges that would break a constraint
(a forbidden target, a required source, a capacity, a coverage) score ``-inf``.

:func:`polish` is steepest ascent over both neighborhoods (the local improvement pass some solvers
run on their final plan). Every gain here is tested against a full re-evaluation in float64.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.gains import add_gains, exchange_gain, remove_losses, total_term
from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem

__all__ = [
    "apply_moves",
    "draw_out_slots",
    "move_gains",
    "best_compound_move",
    "pair_exchanges",
    "polish",
    "require_tradeoff",
    "uniform_targets",
]

_TOL = 1e-12


def require_tradeoff(problem: SelectionPymooProblem, solver: str) -> float:
    """The scalarization weight of a single-objective problem, or a ``ValueError`` that says why not."""
    tradeoff = getattr(problem, "tradeoff", None)
    if not isinstance(problem, SelectionPymooProblem) or tradeoff is None or problem.encoding != "binary":
        raise ValueError(
            f"solver {solver!r} runs on a single-objective SelectionPymooProblem with the binary encoding "
            f"and a numeric tradeoff, got {problem!r}; build it as "
            "SelectionPymooProblem(selection, tradeoff=t) or call select_layers(..., solver="
            f"{solver!r})."
        )
    return float(tradeoff)


def move_gains(
    sel: SelectionProblem,
    tradeoff: float,
    masks: np.ndarray,
    counts: np.ndarray,
    k: np.ndarray,
    a: np.ndarray,
) -> np.ndarray:
    r"""Gains $\Delta f(a \to c)$ of every target slot $c \in \{0, \dots, L\}$, one row per plan.

    Args:
        sel: the problem data.
        tradeoff: the weight $t$.
        masks: ``(P, K, L)`` bool plans.
        counts: ``(P, L)`` layer counts of ``masks``.
        k: ``(P,)`` client of each plan's move.
        a: ``(P,)`` source slot of each plan's move (a trained layer of row ``k``, or ``L``).

    Returns:
        ``(P, L + 1)`` gains (:mod:`f3ocus.selection.gains`); ``0`` at $c = a$ (stay) and ``-inf`` at
        targets the row does not allow: a layer it already trains or may not train, the empty slot with
        exact budgets, a target over the client's capacity, and every target but "stay" when $a$ is
        required or its layer would fall below its coverage.
    """
    P, L = counts.shape  # noqa: N806
    rows = np.arange(P)
    n = counts.astype(np.float64)
    N = n.sum(axis=1)  # noqa: N806
    t = float(tradeoff)
    w = sel.linear[k]  # (P, L)
    real_a = a < L
    a_l = np.where(real_a, a, 0)
    out_a = np.where(real_a, remove_losses(sel, t, w[rows, a_l], n[rows, a_l]), 0.0)
    gains = np.empty((P, L + 1))
    # a real layer as target: N changes by +1 when the source is the empty slot
    dn = np.where(real_a, 0.0, 1.0)
    gains[:, :L] = add_gains(sel, t, w, n) - out_a[:, None]
    gains[:, :L] += total_term(sel, t, N, dn)[:, None]
    # the empty slot as target: a drop (N - 1), or stay when the source is the empty slot too
    gains[:, L] = np.where(real_a, -out_a + total_term(sel, t, N, -1.0), 0.0)
    trained = masks[rows, k]
    gains[:, :L][trained] = -np.inf
    if not sel.plain:
        gains[:, :L][~sel.allowed_mask[k]] = -np.inf
        if sel.costs is not None:
            load = trained.astype(np.float64) @ sel.costs - np.where(real_a, sel.costs[a_l], 0.0)
            over = load[:, None] + sel.costs[None] > sel.capacities[k][:, None] * (1 + 1e-12) + 1e-9
            gains[:, :L][over] = -np.inf
        stuck = real_a & (sel.required_mask[k, a_l] | (counts[rows, a_l] <= sel.coverage[a_l]))
        gains[stuck] = -np.inf
    if sel.max_changes is not None:  # the row's distance to previous after the move: at most max_changes
        flip = np.where(trained == sel.previous[k], 1, -1)  # (P, L): +1 moves the cell away from previous
        step = np.concatenate([flip, np.zeros((P, 1), np.int64)], axis=1)
        d = np.sum(trained != sel.previous[k], axis=1)
        after = d[:, None] + step + np.where(real_a, step[rows, a_l], 0)[:, None]
        gains[after > sel.max_changes[k][:, None]] = -np.inf
    gains[rows[real_a], a[real_a]] = 0.0
    if sel.exact_budget:
        gains[:, L] = np.where(real_a, -np.inf, gains[:, L])
        gains[rows[~real_a], L] = 0.0
    return gains


def draw_out_slots(
    sel: SelectionProblem, masks: np.ndarray, k: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A uniformly random budget unit of row ``k`` in each plan: a trained layer, or ``L`` for an unused unit.

    With exact budgets every unit is a trained layer. Required cells are not drawn (a row with nothing
    but required cells draws one of them, which can only stay). Returns ``(P,)`` slots.
    """
    P, _, L = masks.shape  # noqa: N806
    rows = np.arange(P)
    trained = masks[rows, k]
    if sel.plain:
        used = trained.sum(axis=1)
        unit = (rng.random(P) * sel.budgets[k]).astype(np.int64)  # uniform over the b_k units
        keys = np.where(trained, rng.random((P, L)), -1.0)
        layer = keys.argmax(axis=1)
        return np.where(unit < used, layer, L)
    fixed = sel.required_mask[k]
    movable = trained & ~fixed
    used, units = movable.sum(axis=1), sel.budgets[k] - fixed.sum(axis=1)
    if sel.costs is not None:  # capacities: one empty unit ("add a layer") beside the movable layers
        units = used + 1
    unit = (rng.random(P) * np.maximum(units, 1)).astype(np.int64)
    layer = np.where(movable, rng.random((P, L)), -1.0).argmax(axis=1)
    slot = np.where(unit < used, layer, L)
    stay = np.where(trained, 1.0, -1.0).argmax(axis=1)  # nothing to move: a required layer stays
    empty = (units <= used) if sel.exact_budget else np.zeros(P, dtype=bool)
    return np.where((used == 0) & (empty | (units <= 0)), stay, slot)


def uniform_targets(gains: np.ndarray, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random allowed target other than ``a`` (``a`` itself when there is none)."""
    allowed = np.isfinite(gains)
    allowed[np.arange(len(a)), a] = False
    keys = np.where(allowed, rng.random(gains.shape), -1.0)
    c = keys.argmax(axis=1)
    return np.where(allowed.any(axis=1), c, a)


def apply_moves(masks: np.ndarray, counts: np.ndarray, k: np.ndarray, a: np.ndarray, c: np.ndarray) -> None:
    """Apply the moves ``a -> c`` of client ``k`` to ``masks`` and ``counts`` in place (stays are no-ops)."""
    L = counts.shape[1]  # noqa: N806
    p = np.flatnonzero(a != c)
    out = p[a[p] < L]
    masks[out, k[out], a[out]] = False
    counts[out, a[out]] -= 1
    into = p[c[p] < L]
    masks[into, k[into], c[into]] = True
    counts[into, c[into]] += 1


def _best_single_moves(sel: SelectionProblem, t: float, masks: np.ndarray, counts: np.ndarray):
    """Best move of every plan: (gain, client, source slot, target slot), each ``(P,)``."""
    if sel.max_changes is not None:
        return _best_single_moves_costs(sel, t, masks, counts)
    if sel.costs is not None:
        return _best_single_moves_capacity(sel, t, masks, counts)
    g, src, dst = _client_best_moves(sel, t, masks, counts)
    kk = g.argmax(axis=1)
    rows = np.arange(len(g))
    return g[rows, kk], kk, src[rows, kk], dst[rows, kk]


def _client_best_moves(sel: SelectionProblem, t: float, masks: np.ndarray, counts: np.ndarray):
    """Best move of every client of every plan, count budgets only (no costs, no ``max_changes``):
    (gain, source slot, target slot), each ``(P, K)``."""
    P, K, L = masks.shape  # noqa: N806
    n = counts.astype(np.float64)[:, None, :]
    N = n.sum(axis=2)  # noqa: N806  (P, 1)
    w = sel.linear[None]
    inn = np.where(masks, -np.inf, add_gains(sel, t, w, n))  # (P, K, L)
    out = np.where(masks, remove_losses(sel, t, w, n), np.inf)
    if not sel.plain:
        inn = np.where(sel.allowed_mask[None], inn, -np.inf)
        out = np.where(sel.required_mask[None] | (counts[:, None, :] <= sel.coverage), np.inf, out)
    c, a = inn.argmax(axis=2), out.argmin(axis=2)
    best_in = np.take_along_axis(inn, c[..., None], 2)[..., 0]
    best_out = np.take_along_axis(out, a[..., None], 2)[..., 0]
    options = [(best_in - best_out, a, c)]
    if not sel.exact_budget:
        room = masks.sum(axis=2) < sel.budgets[None]
        add = np.where(room, best_in + total_term(sel, t, N, 1.0), -np.inf)
        drop = -best_out + total_term(sel, t, N, -1.0)
        options += [(add, np.full_like(a, L), c), (drop, a, np.full_like(c, L))]
    gain = np.stack([g for g, _, _ in options])  # (M, P, K)
    gain = np.where(np.isnan(gain), -np.inf, gain)
    which = gain.reshape(len(options), P * K).argmax(axis=0).reshape(P, K)
    g = np.take_along_axis(gain, which[None], 0)[0]
    src = np.choose(which, [o[1] for o in options])
    dst = np.choose(which, [o[2] for o in options])
    return g, src, dst


def _ascend_batched(
    sel: SelectionProblem, t: float, m: np.ndarray, counts: np.ndarray, cap: int, max_steps: int | None = None
) -> int:
    r"""Steepest ascent over single moves, several disjoint swaps per step (count budgets only).

    Each step takes every client's best move. If a plan's best move is a swap, it applies that swap
    and, in decreasing order of gain, every other improving swap of another client whose two layers no
    applied swap touches. Swaps keep $N$, the count terms are separable per layer, and rows are
    independent, so the gains of swaps on disjoint layers add up exactly: each step improves by the sum
    of the applied gains. An add or a drop (``exact_budget=False``) changes $N$ and is applied alone. It
    stops where no single move improves (a local optimum of the single moves, as one move per step) or
    after ``cap`` moves per plan (or ``max_steps`` steps). ``m`` and ``counts`` are updated in place;
    returns the moves applied.
    """
    L = sel.L  # noqa: N806
    done = np.zeros(len(m), dtype=np.int64)
    steps = 0
    while max_steps is None or steps < max_steps:
        steps += 1
        idx = np.flatnonzero(done < cap)
        if idx.size == 0:
            break
        g, src, dst = _client_best_moves(sel, t, m[idx], counts[idx])
        improving = g > _TOL
        if not improving.any():
            break
        for i, p in enumerate(idx):
            ks = np.flatnonzero(improving[i])
            if ks.size == 0:
                continue
            ks = ks[np.argsort(-g[i, ks], kind="stable")]
            if src[i, ks[0]] == L or dst[i, ks[0]] == L:  # an add or a drop: alone
                ks = ks[:1]
            used = np.zeros(L + 1, dtype=bool)  # slot L (the empty slot) only for a lone add or drop
            for j, k in enumerate(ks[: cap - done[p]]):
                a, c = src[i, k], dst[i, k]
                if j > 0 and (a == L or c == L or used[a] or used[c]):
                    continue
                used[a] = used[c] = True
                if a < L:
                    m[p, k, a] = False
                    counts[p, a] -= 1
                if c < L:
                    m[p, k, c] = True
                    counts[p, c] += 1
                done[p] += 1
    return int(done.sum())


def _best_single_moves_capacity(sel: SelectionProblem, t: float, masks: np.ndarray, counts: np.ndarray):
    r""":func:`_best_single_moves` with capacities (and no ``max_changes``), in $O(KL \log L)$ per plan.

    The layers' costs are shared by the clients, so one sort of the layers by cost serves every row: the
    best target $c$ of a swap out of $a$ is the largest $\text{in}_c$ over the free layers with
    $c_c \le \text{slack}_k + c_a$, a prefix maximum in cost order looked up by binary search; an add is
    the same lookup at the slack alone and a drop needs no room. It returns the moves of
    :func:`_best_single_moves_costs` (the same gains; ties may go to another move).
    """
    P, K, L = masks.shape  # noqa: N806
    n = counts.astype(np.float64)[:, None, :]
    N = n.sum(axis=2)  # noqa: N806  (P, 1)
    w = sel.linear[None]
    costs = sel.costs
    by_cost = np.argsort(costs, kind="stable")
    sorted_costs = costs[by_cost]
    inn = np.where(~masks & sel.allowed_mask[None], add_gains(sel, t, w, n), -np.inf)  # (P, K, L)
    fixed = sel.required_mask[None] | (counts[:, None, :] <= sel.coverage)
    out = np.where(masks & ~fixed, remove_losses(sel, t, w, n), np.inf)
    prefix = np.maximum.accumulate(inn[..., by_cost], axis=2)  # best in_c over the cheapest j+1 layers
    prefix = np.concatenate([np.full((P, K, 1), -np.inf), prefix], axis=2)
    cap = sel.capacities[None] * (1 + 1e-12) + 1e-9
    slack = cap - masks.astype(np.float64) @ costs  # (P, K)
    reach = np.searchsorted(sorted_costs, (slack[..., None] + costs).reshape(-1), side="right").reshape(P, K, L)
    swap = np.take_along_axis(prefix, reach, axis=2) - out  # (P, K, a)
    a = swap.argmax(axis=2)
    best_swap = np.take_along_axis(swap, a[..., None], 2)[..., 0]
    room = masks.sum(axis=2) < sel.budgets[None]
    add_reach = np.searchsorted(sorted_costs, slack.reshape(-1), side="right").reshape(P, K)
    add = np.where(room, np.take_along_axis(prefix, add_reach[..., None], 2)[..., 0], -np.inf)
    add = add + total_term(sel, t, N, 1.0)
    drop_a = out.argmin(axis=2)
    drop = -np.take_along_axis(out, drop_a[..., None], 2)[..., 0] + total_term(sel, t, N, -1.0)
    if sel.exact_budget:
        add, drop = np.full_like(add, -np.inf), np.full_like(drop, -np.inf)
    gain = np.stack([best_swap, add, drop])  # (3, P, K)
    gain = np.where(np.isnan(gain), -np.inf, gain)
    which = gain.reshape(3, P * K).argmax(axis=0).reshape(P, K)
    g = np.take_along_axis(gain, which[None], 0)[0]
    kk = g.argmax(axis=1)
    rows = np.arange(P)
    kind, g = which[rows, kk], g[rows, kk]
    src = np.where(kind == 0, a[rows, kk], np.where(kind == 1, L, drop_a[rows, kk]))
    # the target: the best free layer within the row's room for the chosen source
    limit = slack[rows, kk] + np.where(src < L, costs[np.minimum(src, L - 1)], 0.0)
    row_inn = np.where(costs[None, :] <= limit[:, None], inn[rows, kk], -np.inf)
    dst = np.where(kind == 2, L, row_inn.argmax(axis=1))
    return g, kk, src, dst


def _best_single_moves_costs(sel: SelectionProblem, t: float, masks: np.ndarray, counts: np.ndarray):
    """:func:`_best_single_moves` with capacities or ``max_changes``: every (source, target) pair of every
    row is scored, and the pairs that break a constraint get ``-inf``."""
    P, K, L = masks.shape  # noqa: N806
    n = counts.astype(np.float64)[:, None, :]
    N = n.sum(axis=2)[..., None]  # noqa: N806  (P, 1, 1)
    w = sel.linear[None]
    inn = np.concatenate([add_gains(sel, t, w, n) + np.zeros((P, K, L)), np.zeros((P, K, 1))], axis=2)
    out = np.concatenate([remove_losses(sel, t, w, n) + np.zeros((P, K, L)), np.zeros((P, K, 1))], axis=2)
    free = np.concatenate([~masks & sel.allowed_mask, np.ones((P, K, 1), bool)], axis=2)
    fixed = sel.required_mask[None] | (counts[:, None, :] <= sel.coverage)
    movable = np.concatenate([masks & ~fixed, np.ones((P, K, 1), bool)], axis=2)
    costs = np.zeros(L) if sel.costs is None else sel.costs
    cost = np.concatenate([costs, [0.0]])
    load = masks.astype(np.float64) @ costs  # (P, K)
    dn = (np.arange(L + 1) < L).astype(np.float64)
    gain = inn[:, :, None, :] - out[:, :, :, None]  # (P, K, a, c)
    gain = gain + total_term(sel, t, N[..., None], dn[None, :] - dn[:, None])
    ok = movable[:, :, :, None] & free[:, :, None, :]
    if sel.costs is not None:
        cap = sel.capacities[None, :, None, None] * (1 + 1e-12) + 1e-9
        ok &= load[..., None, None] - cost[:, None] + cost[None, :] <= cap
    ok[:, :, np.arange(L + 1), np.arange(L + 1)] = False
    ok[:, :, L, :L] &= (masks.sum(axis=2) < sel.budgets[None])[..., None]
    if sel.exact_budget:  # swaps only
        ok[:, :, L, :] = False
        ok[:, :, :, L] = False
    if sel.max_changes is not None:
        step = np.concatenate([np.where(masks == sel.previous[None], 1, -1), np.zeros((P, K, 1), np.int64)], axis=2)
        d = np.sum(masks != sel.previous[None], axis=2)
        after = d[..., None, None] + step[:, :, :, None] + step[:, :, None, :]
        ok &= after <= sel.max_changes[None, :, None, None]
    gain = np.where(ok, gain, -np.inf).reshape(P, -1)
    best = gain.argmax(axis=1)
    kk, rest = np.divmod(best, (L + 1) ** 2)
    src, dst = np.divmod(rest, L + 1)
    return gain[np.arange(P), best], kk, src, dst


def _exchange_core(sel: SelectionProblem, k1, k2, r1: np.ndarray, r2: np.ndarray):
    """Best exchange between rows ``r1`` (client ``k1``) and ``r2`` (``k2``), broadcast over leading axes.

    Client ``k1`` gives ``a`` and takes ``c`` from ``k2``; returns (gain, a, c), gain ``-inf`` where the
    rows offer nothing to exchange under the constraints.
    """
    w = sel.linear
    d = exchange_gain(w[k1], w[k2])  # w_{k1 l} - w_{k2 l}
    into_ok, away_ok = r2 & ~r1, r1 & ~r2  # c in R2 \ R1, a in R1 \ R2
    if not sel.plain:
        allowed, req = sel.allowed_mask, sel.required_mask
        into_ok = into_ok & allowed[k1] & ~req[k2]
        away_ok = away_ok & allowed[k2] & ~req[k1]
    into = np.where(into_ok, d, -np.inf)
    away = np.where(away_ok, -d, -np.inf)
    if sel.costs is not None:  # both rows must stay within capacity: score every (a, c) pair
        L = sel.L  # noqa: N806
        cap = sel.capacities * (1 + 1e-12) + 1e-9
        load1, load2 = r1.astype(np.float64) @ sel.costs, r2.astype(np.float64) @ sel.costs
        delta = sel.costs[None, :] - sel.costs[:, None]  # [a, c]: c_c - c_a
        ok = (load1[..., None, None] + delta <= np.asarray(cap[k1])[..., None, None]) & (
            load2[..., None, None] - delta <= np.asarray(cap[k2])[..., None, None]
        )
        g = np.where(ok, away[..., :, None] + into[..., None, :], -np.inf)
        g = g.reshape(*g.shape[:-2], L * L)
        best = g.argmax(axis=-1)
        a, c = np.divmod(best, L)
        return np.take_along_axis(g, best[..., None], -1)[..., 0], a, c
    c, a = into.argmax(axis=-1), away.argmax(axis=-1)
    g = np.take_along_axis(into, c[..., None], -1)[..., 0] + np.take_along_axis(away, a[..., None], -1)[..., 0]
    return g, a, c


def _exchange_rows(sel: SelectionProblem, mask: np.ndarray, rows: np.ndarray):
    """Best exchange of each client in ``rows`` with every client: (gain, a, c), each ``(len(rows), K)``.

    Entry ``[i, j]`` is the best exchange where client ``rows[i]`` gives layer ``a`` and takes ``c`` from
    client ``j``; ``-inf`` where the two rows offer nothing to exchange (the constraints included).
    """
    k2 = np.arange(sel.K)
    return _exchange_core(sel, rows[:, None], k2[None, :], mask[rows, None, :], mask[None, :, :])


def pair_exchanges(sel: SelectionProblem, masks: np.ndarray, k1: np.ndarray, k2: np.ndarray):
    """Best exchange between clients ``k1[p]`` and ``k2[p]`` of each plan ``masks[p]``: (gain, a, c), ``(P,)``.

    With ``max_changes``, an exchange that takes either row over its limit has gain ``-inf``.
    """
    rows = np.arange(len(masks))
    gain, a, c = _exchange_core(sel, k1, k2, masks[rows, k1], masks[rows, k2])
    if sel.max_changes is not None:  # both rows flip cells a and c: each keeps its limit
        keeps = _keeps(sel, masks, k1, a, c) & _keeps(sel, masks, k2, a, c)
        gain = np.where(keeps, gain, -np.inf)
    return gain, a, c


def _keeps(sel, masks: np.ndarray, k: np.ndarray, la: np.ndarray, lc: np.ndarray) -> np.ndarray:
    """Whether row ``k`` of each plan keeps ``max_changes`` after flipping its cells ``la`` and ``lc``."""
    rows = np.arange(len(k))
    la, lc = np.where(la < sel.L, la, 0), np.where(lc < sel.L, lc, 0)
    row, prev = masks[rows, k], sel.previous[k]
    d = np.sum(row != prev, axis=1)
    step = np.where(row[rows, la] == prev[rows, la], 1, -1) + np.where(row[rows, lc] == prev[rows, lc], 1, -1)
    return d + step <= sel.max_changes[k]


class _ExchangeTable:
    """Best exchange of every client pair of one plan, updated only for the rows that changed.

    An exchange keeps the counts, so the gain of a pair depends on the two rows alone: after a move
    only the rows and columns of the clients it touched are recomputed ($O(KL)$ each).
    """

    def __init__(self, sel: SelectionProblem, mask: np.ndarray, chunk: int = 1 << 21) -> None:
        K, L = mask.shape  # noqa: N806
        self.sel = sel
        if sel.costs is not None:
            L = L * L  # noqa: N806 - every (a, c) pair is scored
        self.gain = np.empty((K, K))
        self.a = np.empty((K, K), dtype=np.int64)
        self.c = np.empty((K, K), dtype=np.int64)
        step = max(1, chunk // (K * L))
        for lo in range(0, K, step):
            rows = np.arange(lo, min(K, lo + step))
            self.gain[rows], self.a[rows], self.c[rows] = _exchange_rows(sel, mask, rows)

    def update(self, mask: np.ndarray, clients) -> None:
        rows = np.unique(np.asarray(list(clients), dtype=np.int64))
        g, a, c = _exchange_rows(self.sel, mask, rows)
        self.gain[rows], self.a[rows], self.c[rows] = g, a, c
        # the pair (j, k) is the pair (k, j) with the roles of a and c swapped
        self.gain[:, rows], self.a[:, rows], self.c[:, rows] = g.T, c.T, a.T

    def best(self):
        i = int(np.argmax(self.gain))
        k1, k2 = divmod(i, self.gain.shape[1])
        return float(self.gain[k1, k2]), k1, k2, int(self.a[k1, k2]), int(self.c[k1, k2])


def best_compound_move(sel: SelectionProblem, t: float, mask: np.ndarray, counts: np.ndarray):
    r"""Best knapsack move of one client (with costs): add one layer and drop the cheapest losses that make
    room, or drop one layer and fill the room by gain per cost.

    Single moves trade one layer for one; with layer sizes that differ 10-100x (an embedding for three or
    four blocks) the better rows are several moves away. For client $k$ and every layer $x$ it does not
    train, *add-and-make-room* adds $x$ and drops trained layers in increasing order of
    $	ext{out}_a / c_a$ until the row fits; for every trained $x$, *drop-and-fill* drops $x$ and adds,
    in decreasing order of $	ext{in}_y / c_y$, every positive layer that fits. Required layers and
    layers at their coverage are never dropped. The gain is exact (the count terms are separable and
    the total term depends on $\Delta N$ only: :mod:`f3ocus.selection.gains`).

    Returns:
        ``(gain, client, dropped layers, added layers)`` of the best such move (gain ``-inf`` if none).
    """
    L = sel.L  # noqa: N806
    n = counts.astype(np.float64)
    N = float(n.sum())  # noqa: N806
    cap = sel.capacities * (1 + 1e-12) + 1e-9
    fixed = sel.required_mask | (counts <= sel.coverage)[None, :]
    best = (-np.inf, 0, np.zeros(0, np.int64), np.zeros(0, np.int64))
    costs = sel.costs
    for k in range(sel.K):
        row = mask[k]
        w = sel.linear[k]
        inn, out = add_gains(sel, t, w, n), remove_losses(sel, t, w, n)
        load = float(row @ costs)
        movable = np.flatnonzero(row & ~fixed[k])
        drop_order = movable[np.argsort(out[movable] / costs[movable], kind="stable")]
        free = np.flatnonzero(~row & sel.allowed_mask[k])
        for x in free:  # add x, make room
            excess = load + costs[x] - cap[k]
            if excess <= 0:
                continue  # a plain add: a single move
            cum = np.cumsum(costs[drop_order])
            j = int(np.searchsorted(cum, excess - 1e-9))
            if j >= drop_order.size:
                continue
            drops = drop_order[: j + 1]
            gain = inn[x] - out[drops].sum() + float(total_term(sel, t, N, 1.0 - drops.size))
            if gain > best[0]:
                best = (gain, k, drops, np.array([x]))
        add_order = free[np.argsort(-inn[free] / costs[free], kind="stable")]
        for x in movable:  # drop x, fill the room
            room = cap[k] - load + costs[x]
            adds = []
            for y in add_order:
                if inn[y] <= 0:
                    break
                if costs[y] <= room:
                    adds.append(y)
                    room -= costs[y]
            if len(adds) < 2:
                continue  # a drop, a swap or nothing: single moves
            adds = np.array(adds)
            gain = inn[adds].sum() - out[x] + float(total_term(sel, t, N, adds.size - 1.0))
            if gain > best[0]:
                best = (gain, k, np.array([x]), adds)
    del L
    return best


def _keeps_limit(sel: SelectionProblem, mask: np.ndarray, k: int, drops, adds) -> bool:
    """Whether row ``k`` keeps ``max_changes`` after dropping ``drops`` and adding ``adds``."""
    if sel.max_changes is None:
        return True
    row = mask[k].copy()
    row[np.asarray(drops, dtype=np.int64)] = False
    row[np.asarray(adds, dtype=np.int64)] = True
    return int(np.sum(row != sel.previous[k])) <= int(sel.max_changes[k])


def polish(
    sel: SelectionProblem,
    tradeoff: float,
    masks: np.ndarray,
    *,
    exchanges: bool = True,
    max_moves: int | None = None,
) -> tuple[np.ndarray, int]:
    r"""Steepest ascent of $f = \text{importance} - t \cdot \text{diversity}$ over single moves and exchanges.

    Each step applies the best single move (swap; add/drop with ``exact_budget=False``) while one
    improves $f$; then, with ``exchanges=True``, the best exchange between two clients if it improves
    $f$, and goes back to single moves. It stops at a plan that no single move and no exchange improves
    (a local optimum of both neighborhoods) or after ``max_moves`` moves per plan.

    Args:
        sel: the problem data.
        tradeoff: the weight $t$.
        masks: ``(K, L)`` or ``(P, K, L)`` feasible plans (not modified).
        exchanges: also search two-client exchanges ($O(K^2 L)$ once per plan, then $O(KL)$ per move).
            Without exchanges, costs and ``max_changes``, a step applies the best single move and every
            improving swap of other clients on layers no applied swap touches (their gains add up
            exactly; :func:`_ascend_batched`): the same stopping point, far fewer steps on many clients.
        max_moves: cap on the number of moves per plan (``None``: ``10 * sum(b)``).

    Returns:
        ``(plans, moves)``: the improved plans (same shape) and the total number of moves applied.
    """
    single = np.asarray(masks).ndim == 2
    m = np.array(masks, dtype=bool, copy=True).reshape(-1, sel.K, sel.L)
    counts = m.sum(axis=1, dtype=np.int64)
    t = float(tradeoff)
    cap = 10 * int(sel.budgets.sum()) if max_moves is None else int(max_moves)
    moves = 0
    if not exchanges and sel.costs is None and sel.max_changes is None:  # all plans, disjoint swaps at once
        moves = _ascend_batched(sel, t, m, counts, cap)
    elif not exchanges:  # all plans at once
        done = np.zeros(len(m), dtype=np.int64)
        while True:
            idx = np.flatnonzero(done < cap)
            if idx.size == 0:
                break
            g, k, a, c = _best_single_moves(sel, t, m[idx], counts[idx])
            go = g > _TOL
            if not go.any():
                break
            sub_m, sub_n = m[idx[go]], counts[idx[go]]
            apply_moves(sub_m, sub_n, k[go], a[go], c[go])
            m[idx[go]], counts[idx[go]] = sub_m, sub_n
            done[idx[go]] += 1
        moves = int(done.sum())
    else:
        for p in range(len(m)):
            mp, np_ = m[p : p + 1], counts[p : p + 1]
            table, touched, done = None, set(), 0
            while done < cap:
                g, k, a, c = _best_single_moves(sel, t, mp, np_)
                if g[0] > _TOL:
                    apply_moves(mp, np_, k, a, c)
                    touched.add(int(k[0]))
                    done += 1
                    continue
                if table is None:
                    table = _ExchangeTable(sel, mp[0])
                elif touched:
                    table.update(mp[0], touched)
                touched = set()
                gain, k1, k2, la, lc = table.best()
                if gain <= _TOL:
                    if sel.costs is None:
                        break
                    cg, ck, drops, adds = best_compound_move(sel, t, mp[0], np_[0])
                    if cg <= _TOL or not _keeps_limit(sel, mp[0], ck, drops, adds):
                        break
                    mp[0, ck, drops], mp[0, ck, adds] = False, True
                    np_[0] += np.bincount(adds, minlength=sel.L) - np.bincount(drops, minlength=sel.L)
                    touched.add(ck)
                    done += 1
                    continue
                if not (_keeps_limit(sel, mp[0], k1, [la], [lc]) and _keeps_limit(sel, mp[0], k2, [lc], [la])):
                    break
                mp[0, k1, la], mp[0, k1, lc], mp[0, k2, lc], mp[0, k2, la] = False, True, False, True
                touched |= {k1, k2}
                done += 1
            m[p], counts[p] = mp[0], np_[0]
            moves += done
    return (m[0] if single else m), moves
