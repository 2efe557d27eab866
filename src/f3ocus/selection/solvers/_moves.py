r"""Budget-keeping moves with closed-form gains, shared by the SA, ABC, ACO and MOPSO solvers.

A *move* takes one unit of client $k$'s budget out of slot $a$ and puts it into slot $c$. A slot is a
layer $0 \le l < L$ or, with ``exact_budget=False``, the *empty slot* $L$ (an unused unit of budget):
$a < L, c < L$ is a swap, $a = L$ adds layer $c$, $c = L$ drops layer $a$; $a = c$ is "stay". Every move
keeps the row feasible.

With layer counts $n_l$, $N = \sum_l n_l$ and diversity
$D = \frac{1}{L}\sum_l n_l^2 - (N/L)^2$, the change of $f = \text{importance} - t\cdot D$ is, in closed
form (no re-evaluation of the plan):

$$
\Delta f(a \to c) = \text{in}_c - \text{out}_a + t\,\frac{(N + \Delta N)^2 - N^2}{L^2},
\quad
\text{in}_c = S_{kc} - t\,\frac{2 n_c + 1}{L},\quad \text{out}_a = S_{ka} + t\,\frac{1 - 2 n_a}{L},
$$

with $\text{in}_L = \text{out}_L = 0$ and $\Delta N = [c < L] - [a < L]$. For a swap this is
$S_{kc} - S_{ka} - \frac{2t}{L}(n_c - n_a + 1)$.

An *exchange* between clients $k_1, k_2$ moves $k_1$ from $a$ to $c$ and $k_2$ from $c$ to $a$
($a \in R_1 \setminus R_2$, $c \in R_2 \setminus R_1$ with $R_i$ the trained layers): the counts do not
change, so $\Delta f = (S_{k_1 c} - S_{k_2 c}) - (S_{k_1 a} - S_{k_2 a})$ and the best exchange of a pair
separates into one maximum over $c$ and one over $a$. Exchanges reach the plans that single moves cannot
improve on because each half alone pays the diversity cost $2t/L$.

:func:`polish` is steepest ascent over both neighborhoods (the local improvement pass some solvers
run on their final plan). Every gain here is tested against a full re-evaluation in float64.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem

__all__ = [
    "apply_moves",
    "draw_out_slots",
    "move_gains",
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
        ``(P, L + 1)`` gains; ``0`` at $c = a$ (stay) and ``-inf`` at targets the row does not allow
        (a layer it already trains, the empty slot with exact budgets).
    """
    P, L = counts.shape  # noqa: N806
    rows = np.arange(P)
    n = counts.astype(np.float64)
    N = n.sum(axis=1)  # noqa: N806
    t = float(tradeoff)
    scores = sel.scores[k]  # (P, L)
    real_a = a < L
    a_l = np.where(real_a, a, 0)
    out_a = np.where(real_a, scores[rows, a_l] + t * (1.0 - 2.0 * n[rows, a_l]) / L, 0.0)
    gains = np.empty((P, L + 1))
    # a real layer as target: N changes by +1 when the source is the empty slot
    dn = np.where(real_a, 0.0, 1.0)
    gains[:, :L] = (scores - t * (2.0 * n + 1.0) / L) - out_a[:, None]
    gains[:, :L] += (t * ((N + dn) ** 2 - N**2) / L**2)[:, None]
    # the empty slot as target: a drop (N - 1), or stay when the source is the empty slot too
    gains[:, L] = np.where(real_a, -out_a + t * ((N - 1.0) ** 2 - N**2) / L**2, 0.0)
    trained = masks[rows, k]
    gains[:, :L][trained] = -np.inf
    gains[rows[real_a], a[real_a]] = 0.0
    if sel.exact_budget:
        gains[:, L] = -np.inf
    return gains


def draw_out_slots(
    sel: SelectionProblem, masks: np.ndarray, k: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A uniformly random budget unit of row ``k`` in each plan: a trained layer, or ``L`` for an unused unit.

    With exact budgets every unit is a trained layer. Returns ``(P,)`` slots.
    """
    P, _, L = masks.shape  # noqa: N806
    rows = np.arange(P)
    trained = masks[rows, k]
    used = trained.sum(axis=1)
    unit = (rng.random(P) * sel.budgets[k]).astype(np.int64)  # uniform over the b_k units
    keys = np.where(trained, rng.random((P, L)), -1.0)
    layer = keys.argmax(axis=1)
    return np.where(unit < used, layer, L)


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
    P, K, L = masks.shape  # noqa: N806
    n = counts.astype(np.float64)[:, None, :]
    N = n.sum(axis=2)  # noqa: N806  (P, 1)
    s = sel.scores[None]
    inn = np.where(masks, -np.inf, s - t * (2.0 * n + 1.0) / L)  # (P, K, L)
    out = np.where(masks, s + t * (1.0 - 2.0 * n) / L, np.inf)
    c, a = inn.argmax(axis=2), out.argmin(axis=2)
    best_in = np.take_along_axis(inn, c[..., None], 2)[..., 0]
    best_out = np.take_along_axis(out, a[..., None], 2)[..., 0]
    options = [(best_in - best_out, a, c)]
    if not sel.exact_budget:
        room = masks.sum(axis=2) < sel.budgets[None]
        add = np.where(room, best_in + t * (2.0 * N + 1.0) / L**2, -np.inf)
        drop = -best_out + t * (1.0 - 2.0 * N) / L**2
        options += [(add, np.full_like(a, L), c), (drop, a, np.full_like(c, L))]
    gain = np.stack([g for g, _, _ in options])  # (M, P, K)
    which = gain.reshape(len(options), P * K).argmax(axis=0).reshape(P, K)
    g = np.take_along_axis(gain, which[None], 0)[0]
    src = np.choose(which, [o[1] for o in options])
    dst = np.choose(which, [o[2] for o in options])
    kk = g.argmax(axis=1)
    rows = np.arange(P)
    return g[rows, kk], kk, src[rows, kk], dst[rows, kk]


def _exchange_rows(scores: np.ndarray, mask: np.ndarray, rows: np.ndarray):
    """Best exchange of each client in ``rows`` with every client: (gain, a, c), each ``(len(rows), K)``.

    Entry ``[i, j]`` is the best exchange where client ``rows[i]`` gives layer ``a`` and takes ``c`` from
    client ``j``; ``-inf`` where the two rows offer nothing to exchange.
    """
    d = scores[rows, None, :] - scores[None, :, :]  # S_{k1 l} - S_{k2 l}
    r1, r2 = mask[rows, None, :], mask[None, :, :]
    into = np.where(r2 & ~r1, d, -np.inf)  # c in R2 \ R1
    away = np.where(r1 & ~r2, -d, -np.inf)  # a in R1 \ R2
    c, a = into.argmax(axis=2), away.argmax(axis=2)
    g = np.take_along_axis(into, c[..., None], 2)[..., 0] + np.take_along_axis(away, a[..., None], 2)[..., 0]
    return g, a, c


class _ExchangeTable:
    """Best exchange of every client pair of one plan, updated only for the rows that changed.

    An exchange keeps the counts, so the gain of a pair depends on the two rows alone: after a move
    only the rows and columns of the clients it touched are recomputed ($O(KL)$ each).
    """

    def __init__(self, scores: np.ndarray, mask: np.ndarray, chunk: int = 1 << 21) -> None:
        K, L = mask.shape  # noqa: N806
        self.scores = scores
        self.gain = np.empty((K, K))
        self.a = np.empty((K, K), dtype=np.int64)
        self.c = np.empty((K, K), dtype=np.int64)
        step = max(1, chunk // (K * L))
        for lo in range(0, K, step):
            rows = np.arange(lo, min(K, lo + step))
            self.gain[rows], self.a[rows], self.c[rows] = _exchange_rows(scores, mask, rows)

    def update(self, mask: np.ndarray, clients) -> None:
        rows = np.unique(np.asarray(list(clients), dtype=np.int64))
        g, a, c = _exchange_rows(self.scores, mask, rows)
        self.gain[rows], self.a[rows], self.c[rows] = g, a, c
        # the pair (j, k) is the pair (k, j) with the roles of a and c swapped
        self.gain[:, rows], self.a[:, rows], self.c[:, rows] = g.T, c.T, a.T

    def best(self):
        i = int(np.argmax(self.gain))
        k1, k2 = divmod(i, self.gain.shape[1])
        return float(self.gain[k1, k2]), k1, k2, int(self.a[k1, k2]), int(self.c[k1, k2])


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
    if not exchanges:  # all plans at once
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
                    table = _ExchangeTable(sel.scores, mp[0])
                elif touched:
                    table.update(mp[0], touched)
                touched = set()
                gain, k1, k2, la, lc = table.best()
                if gain <= _TOL:
                    break
                mp[0, k1, la], mp[0, k1, lc], mp[0, k2, lc], mp[0, k2, la] = False, True, False, True
                touched |= {k1, k2}
                done += 1
            m[p], counts[p] = mp[0], np_[0]
            moves += done
    return (m[0] if single else m), moves
