r"""Exact optimum of the scalarized selection problem, and its exact supported Pareto front.

**Exact budgets.** Every plan has $T = \sum_k b_k$ ones, so $\bar n = T / L$ is a constant and

$$
\max_m \; \sum_{k,l} m_{kl} S_{kl} - \frac{t}{L} \sum_l (n_l - \bar n)^2
$$

is a transportation problem with a separable convex cost on the column sums: a min-cost flow
source $\to$ client $k$ (capacity $b_k$, saturated) $\to$ layer $l$ (unit arc, cost $-S_{kl}$) $\to$ sink,
where layer $l$ reaches the sink through unit arcs $j = 0, 1, \dots$ with increasing marginal costs
$f(j+1) - f(j) = \frac{t}{L}(2j + 1 - 2\bar n)$, $f(n) = \frac{t}{L}(n - \bar n)^2$. Because the costs increase,
an optimal flow fills a layer's arcs in order, so the flow's cost equals the objective. The linear program
over these arcs has a node-arc incidence matrix, which is totally unimodular: its vertices are integral and
a simplex (HiGHS, through ``scipy.optimize.linprog``) returns an optimal plan (Ahuja, Magnanti & Orlin,
*Network Flows*, 1993, ch. 14).

**A window on the counts.** At an optimum, if $n_l > n_{l'}$ some client trains $l$ but not $l'$;
moving it from $l$ to $l'$ changes the objective by $(S_{kl'} - S_{kl}) - \frac{2t}{L}(n_{l'} - n_l + 1) \le 0$,
so $n_l - n_{l'} \le R = 1 + \frac{L (\max S - \min S)}{2t}$ for all pairs, and every $n_l$ lies in
$[\bar n - R, \bar n + R]$. Only the sink arcs inside that window are built, which keeps the program
small ($K = 1000$, $L = 64$ solves in well under a second at moderate $t$).

**At most $b_k$** (``exact_budget=False``). Now $T$ varies and
$\text{diversity} = \frac{1}{L}\sum_l n_l^2 - T^2 / L^2$. For a fixed $T$ the problem is again a convex
flow (one more row: the flow into the sink is $T$), whose value $h(T)$ is concave in $T$; the solver
maximizes $h(T) + tT^2/L^2$ over $T$ by cutting planes from the flows' dual values and the importance
bound $I_{\max}(T)$ (see ``_at_most_optimum``).

**Front.** With ``tradeoff=None`` the exact *supported* Pareto front (the plans that maximize
$\text{importance} - t\cdot\text{diversity}$ for some $t \ge 0$) is found by dichotomic search between the
lexicographic extremes (Aneja & Nair, "Bicriteria transportation problem", Management Science 1979):
for two adjacent points $A, B$ solve at $t = (I_A - I_B)/(D_A - D_B)$; a strictly better plan is a new front
point between them, else the two are neighbours on the front. Each extreme point costs one solve.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog

from f3ocus.selection.problem import SelectionProblem

__all__ = ["exact_front", "exact_optimum", "lexicographic_extremes", "solve_exact", "top_b_plan"]

_TOL = 1e-9

#: Count budgets only, exact budgets and $\tau = tK/L$ up to this: cycle canceling
#: (:mod:`f3ocus.selection.cycles`) instead of the LP. Both are exact; the cycles win while the count
#: window is wide (K=1000, L=64: 0.19 s against 0.97 s at tau=0.2, 0.30 s against 0.61 s at tau=1,
#: benchmarks/results/select_exact_cpu.json) and the windowed LP has few sink arcs when it is narrow.
CYCLES_UP_TO = 2.0


def top_b_plan(problem: SelectionProblem) -> np.ndarray:
    """Each client's own top ``b_k`` layers (ties to the lower index): the max-importance plan."""
    order = np.argsort(-problem.scores, axis=1, kind="stable")
    mask = np.zeros((problem.K, problem.L), dtype=bool)
    for k in range(problem.K):
        mask[k, order[k, : problem.budgets[k]]] = True
    return mask


def _flow(
    scores: np.ndarray,
    budgets: np.ndarray,
    row_exact: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    unit_cost,
    total: int | None = None,
    x_lb: np.ndarray | None = None,
    x_ub: np.ndarray | None = None,
    duals: bool = False,
    hub: tuple[np.ndarray, np.ndarray] | None = None,
):
    r"""Solve $\max \sum S x - \sum_l \sum_{j=lo_l}^{n_l - 1} c(j)$ over 0/1 plans with $lo \le n \le hi$.

    Rows: $\sum_l x_{kl} = b_k$ where ``row_exact[k]`` else $\le b_k$; optional $\sum_l n_l = $ ``total``.
    ``hub = (cells, caps)``: at most ``caps[k]`` of client $k$'s arcs to ``cells[k]`` carry flow (an
    intermediate node between the client and those layers: the matrix stays a network matrix).
    Returns the plan, or ``None`` when infeasible; with ``duals=True`` a pair ``(plan, mu)`` where ``mu``
    is the derivative of the program's minimal cost with respect to ``total`` (HiGHS's dual value).
    """
    K, L = scores.shape  # noqa: N806
    lo = np.asarray(lo, dtype=np.int64)
    hi = np.asarray(hi, dtype=np.int64)
    width = hi - lo
    n_x, n_y = K * L, int(width.sum())
    # y arcs: layer l, unit j in [lo_l, hi_l)
    y_layer = np.repeat(np.arange(L), width)
    y_j = np.concatenate([np.arange(a, b) for a, b in zip(lo, hi, strict=True)]) if n_y else np.zeros(0, np.int64)
    c = np.concatenate([-scores.ravel(), unit_cost(y_j).astype(np.float64)])

    x_cols = np.arange(n_x)
    x_client = np.repeat(np.arange(K), L)
    x_layer = np.tile(np.arange(L), K)
    y_cols = n_x + np.arange(n_y)

    # layer rows (equalities): sum_k x_kl - sum_j y_lj = lo_l ; optional sink row: sum y = total - sum lo
    eq_rows = [x_layer, y_layer]
    eq_cols = [x_cols, y_cols]
    eq_vals = [np.ones(n_x), -np.ones(n_y)]
    b_eq = [lo.astype(np.float64)]
    n_eq = L
    exact_clients = np.flatnonzero(row_exact)
    free_clients = np.flatnonzero(~row_exact)
    if exact_clients.size:
        pos = np.full(K, -1)
        pos[exact_clients] = n_eq + np.arange(exact_clients.size)
        sel = row_exact[x_client]
        eq_rows.append(pos[x_client[sel]])
        eq_cols.append(x_cols[sel])
        eq_vals.append(np.ones(int(sel.sum())))
        b_eq.append(budgets[exact_clients].astype(np.float64))
        n_eq += exact_clients.size
    if total is not None:
        eq_rows.append(np.full(n_y, n_eq))
        eq_cols.append(y_cols)
        eq_vals.append(np.ones(n_y))
        b_eq.append(np.array([float(total - lo.sum())]))
        n_eq += 1
    A_eq = sp.csr_matrix(  # noqa: N806
        (np.concatenate(eq_vals), (np.concatenate(eq_rows), np.concatenate(eq_cols))),
        shape=(n_eq, n_x + n_y),
    )
    A_ub = b_ub = None  # noqa: N806
    if free_clients.size:
        pos = np.full(K, -1)
        pos[free_clients] = np.arange(free_clients.size)
        sel = ~row_exact[x_client]
        A_ub = sp.csr_matrix(  # noqa: N806
            (np.ones(int(sel.sum())), (pos[x_client[sel]], x_cols[sel])), shape=(free_clients.size, n_x + n_y)
        )
        b_ub = budgets[free_clients].astype(np.float64)
    if hub is not None:
        cells, caps = hub
        flat = np.asarray(cells, dtype=bool).ravel()
        hub_rows = sp.csr_matrix((np.ones(int(flat.sum())), (x_client[flat], x_cols[flat])), shape=(K, n_x + n_y))
        A_ub = hub_rows if A_ub is None else sp.vstack([A_ub, hub_rows], format="csr")  # noqa: N806
        b_ub = np.concatenate([np.zeros(0) if b_ub is None else b_ub, np.asarray(caps, dtype=np.float64)])
    lb = np.zeros(n_x + n_y)
    ub = np.ones(n_x + n_y)
    if x_lb is not None:
        lb[:n_x] = np.asarray(x_lb, dtype=np.float64).ravel()
    if x_ub is not None:
        ub[:n_x] = np.asarray(x_ub, dtype=np.float64).ravel()
    res = linprog(
        c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=np.concatenate(b_eq), bounds=np.column_stack([lb, ub]),
        method="highs",
    )
    if res.status == 2:  # infeasible
        return (None, 0.0) if duals else None
    if res.status != 0:
        raise RuntimeError(f"the exact selection LP failed: {res.message}")
    x = res.x[:n_x].reshape(K, L)
    mask = x > 0.5
    if np.abs(x - mask).max() > 1e-6:  # a vertex of a totally unimodular program is integral
        raise RuntimeError("the exact selection LP returned a fractional plan; please report this instance.")
    if duals:
        return mask, float(res.eqlin.marginals[-1])
    return mask


def _window(problem: SelectionProblem, tradeoff: float, nbar: float) -> tuple[np.ndarray, np.ndarray]:
    spread = float(problem.linear.max() - problem.linear.min())
    radius = 1.0 + problem.L * spread / (2.0 * tradeoff) + 1e-6
    lo = max(0, math.ceil(nbar - radius))
    hi = min(problem.K, math.floor(nbar + radius))
    return np.full(problem.L, lo, np.int64), np.full(problem.L, max(hi, lo), np.int64)


def _marginal(tradeoff: float, L: int, center: float):  # noqa: N803
    return lambda j: (tradeoff / L) * (2.0 * j + 1.0 - 2.0 * center)


def _arc_bounds(problem: SelectionProblem):
    """Count range of each layer and bounds of the client-layer arcs (required, allowed)."""
    lo = np.maximum(problem.coverage, problem.required_mask.sum(axis=0)).astype(np.int64)
    hi = problem.allowed_mask.sum(axis=0).astype(np.int64)
    return lo, np.maximum(hi, lo), problem.required, problem.allowed


def _offset(problem: SelectionProblem) -> float:
    """``benefit - sum(linear * m)``: the constant of the churn term, ``-lambda * sum(previous)``."""
    if problem.linear is problem.scores or problem.previous is None:
        return 0.0
    return -problem.churn_penalty * float(problem.previous.sum())


def churn_hub(problem: SelectionProblem) -> tuple[np.ndarray, np.ndarray] | None:
    r"""``max_changes`` with exact budgets as a cap on the arcs to the cells not in ``previous``.

    A row with $b_k$ ones, $i$ of them in the $p_k$ cells of ``previous``, differs from it in
    $(p_k - i) + (b_k - i)$ cells; with $j = b_k - i$ arcs to the other cells that is $p_k - b_k + 2j$, so
    the limit $c_k$ is $j \le \lfloor (c_k - p_k + b_k) / 2 \rfloor$ (negative: no plan keeps it).
    """
    if problem.max_changes is None:
        return None
    if not problem.exact_budget:
        raise ValueError("max_changes with at-most budgets is not a flow; it is solved by the MIP.")
    p = problem.previous.sum(axis=1)
    return ~problem.previous, np.floor_divide(problem.max_changes - p + problem.budgets, 2)


def _solve_fixed_total(problem: SelectionProblem, tradeoff: float, total: int) -> np.ndarray | None:
    nbar = total / problem.L
    row_exact = np.full(problem.K, problem.exact_budget)
    if problem.plain or (problem.required is None and problem.allowed is None and problem.min_coverage is None
                         and problem.max_changes is None):
        lo, hi = _window(problem, tradeoff, nbar) if tradeoff > 0 else (np.zeros(problem.L, np.int64),
                                                                         np.full(problem.L, problem.K, np.int64))
        x_lb = x_ub = None
    else:  # the window argument needs free moves between layers: use every count
        lo, hi, x_lb, x_ub = _arc_bounds(problem)
    return _flow(
        problem.linear, problem.budgets, row_exact, lo, hi, _marginal(tradeoff, problem.L, nbar),
        total=None if problem.exact_budget else total, x_lb=x_lb, x_ub=x_ub, hub=churn_hub(problem),
    )


def _importance_bound(problem: SelectionProblem) -> np.ndarray:
    """``bound[T]``: the largest benefit (less its constant) of any plan with at most ``b_k`` allowed cells
    per row and ``T`` ones (``-inf`` past the largest such ``T``)."""
    w = problem.linear if problem.allowed is None else np.where(problem.allowed, problem.linear, -np.inf)
    top = -np.sort(-w, axis=1)
    chosen = np.concatenate([top[k, : problem.budgets[k]] for k in range(problem.K)])
    chosen = chosen[np.isfinite(chosen)]
    bound = np.concatenate([[0.0], np.cumsum(-np.sort(-chosen))])
    t_max = int(problem.budgets.sum())
    return np.concatenate([bound, np.full(t_max + 1 - bound.size, -np.inf)])[: t_max + 1]


def exact_optimum(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    r"""A plan that maximizes $\text{importance}(m) - t \cdot \text{diversity}(m)$ exactly.

    Args:
        problem: scores, budgets and budget mode.
        tradeoff: $t \ge 0$.

    Returns:
        ``(K, L)`` bool optimal plan (one of them, when several tie).

    Example:
        >>> import numpy as np
        >>> p = SelectionProblem(np.array([[0.6, 0.4], [0.7, 0.3]]), np.array([1, 1]))
        >>> exact_optimum(p, 0.0).astype(int).tolist()  # each client its best layer
        [[1, 0], [1, 0]]
        >>> exact_optimum(p, 1.0).astype(int).tolist()  # balanced: 0.4 + 0.7 - 0 > 1.3 - 1.0 * 1
        [[0, 1], [1, 0]]
    """
    return solve_exact(problem, tradeoff)[0]


def solve_exact(
    problem: SelectionProblem, tradeoff: float, *, time_limit: float | None = 60.0, gap: float = 1e-4
) -> tuple[np.ndarray, dict]:
    """:func:`exact_optimum` with how it was solved: ``(plan, info)``.

    ``info["method"]`` is ``"cycles"`` (count budgets only, exact, small $tK/L$: :mod:`f3ocus.selection.cycles`),
    ``"flow"`` (a totally unimodular LP: counts, required, forbidden, coverage,
    churn, ``max_changes`` with exact budgets) or ``"mip"`` (costs or the ``"agree"`` coupling, :mod:`f3ocus.selection.mip`), with the proven
    ``bound`` and its ``gap`` for the MIP (run for at most ``time_limit`` seconds, to a relative ``gap``).

    Raises:
        ValueError: no plan meets the constraints.
    """
    tradeoff = float(tradeoff)
    if tradeoff < 0 or not math.isfinite(tradeoff):
        raise ValueError(f"tradeoff must be a finite number >= 0, got {tradeoff!r}.")
    if not problem.flow_applies:
        from f3ocus.selection.mip import mip_optimum

        res = mip_optimum(problem, tradeoff, time_limit=time_limit, gap=gap)
        info = {"method": "mip", "bound": res.bound, "gap": res.gap, "rounds": res.rounds, "status": res.status}
        return res.plan, info
    info = {"method": "flow"}
    if tradeoff == 0.0 and problem.plain:
        plan = top_b_plan(problem)
        return (plan if problem.exact_budget else plan & (problem.scores > 0)), info
    if problem.exact_budget and problem.plain and tradeoff * problem.K <= CYCLES_UP_TO * problem.L:
        from f3ocus.selection.cycles import cycle_canceling_optimum

        info["method"] = "cycles"
        return cycle_canceling_optimum(problem.scores, problem.budgets, tradeoff), info
    if problem.exact_budget:
        plan = _solve_fixed_total(problem, tradeoff, int(problem.budgets.sum()))
        if plan is None:
            from f3ocus.selection.mip import _infeasible

            raise _infeasible(problem)
        return plan, info
    return _at_most_optimum(problem, tradeoff), info


def _at_most_optimum(problem: SelectionProblem, tradeoff: float) -> np.ndarray:
    r"""``exact_budget=False``: maximize $g(T) = h(T) + tT^2/L^2$ over the total $T$ by cutting planes.

    $h(T) = \max_{|m| = T} \text{importance}(m) - \frac{t}{L}\sum_l n_l^2$ is the value of a convex
    flow with $T$ units, hence concave in $T$, and the dual value $\mu$ of the total row at $T_1$ is a
    supergradient: $h(T) \le h(T_1) - \mu (T - T_1)$ for every $T$. With the importance bound
    $g(T) \le I_{\max}(T)$ this gives an upper bound on every $g(T)$; the next total solved is the one
    with the largest bound, until no bound beats the best plan found. Exact, and usually a handful of
    solves instead of $\sum_k b_k$.
    """
    K, L = problem.K, problem.L  # noqa: N806
    t_max = int(problem.budgets.sum())
    totals = np.arange(t_max + 1, dtype=np.float64)
    upper = _importance_bound(problem)
    upper[0] = -np.inf  # the empty plan is the starting incumbent
    best, best_value = np.zeros((K, L), dtype=bool), 0.0
    row_exact = np.zeros(K, dtype=bool)
    lo, hi = np.zeros(L, np.int64), np.full(L, K, np.int64)
    x_lb = x_ub = None
    offset = _offset(problem)
    if not problem.plain:
        lo, hi, x_lb, x_ub = _arc_bounds(problem)
        t_lo = max(int(lo.sum()), int(problem.required_mask.sum()))
        upper[: t_lo + 1] = np.where(np.arange(t_lo + 1) < t_lo, -np.inf, upper[: t_lo + 1])
        if t_lo > 0:  # the empty plan is not feasible
            best, best_value = None, -np.inf

    def unit_cost(j):
        return (tradeoff / L) * (2.0 * j + 1.0)

    while True:
        slack = 1e-9 * max(1.0, abs(best_value)) if math.isfinite(best_value) else 0.0
        candidates = np.flatnonzero(upper > best_value + slack)
        if candidates.size == 0:
            if best is None:
                from f3ocus.selection.mip import _infeasible

                raise _infeasible(problem)
            return best
        total = int(candidates[np.argmax(upper[candidates])])
        plan, mu = _flow(
            problem.linear, problem.budgets, row_exact, lo, hi, unit_cost, total=total, duals=True,
            x_lb=x_lb, x_ub=x_ub,
        )
        upper[total] = -np.inf
        if plan is None:
            continue
        value = float(problem.scalarized(plan, tradeoff)) - offset
        if value > best_value:
            best, best_value = plan, value
        h_total = float(problem.benefit(plan)) - offset - (tradeoff / L) * float((plan.sum(axis=0) ** 2).sum())
        cut = h_total - mu * (totals - total) + tradeoff * totals**2 / L**2
        upper = np.minimum(upper, cut + 1e-9 * max(1.0, abs(h_total)))


def lexicographic_extremes(problem: SelectionProblem) -> tuple[np.ndarray, np.ndarray]:
    """The two ends of the front: (max importance, then min diversity), (min diversity, then max importance).

    The first keeps every client's entries above its ``b_k``-th largest score, chooses among the ties at
    that score, and minimizes diversity over those choices. With exact budgets the least diversity is
    reached by the balanced counts $n_l \\in \\{q, q+1\\}$, $q = \\lfloor T/L \\rfloor$ (always feasible when
    $b_k \\le L$, by the Gale-Ryser theorem); with at most $b_k$ it is $0$, reached by equal counts $c$ for
    every layer, and the best $c$ is enumerated.
    """
    if not problem.plain:
        return _extremes_by_weights(problem)
    K, L, S, b = problem.K, problem.L, problem.scores, problem.budgets  # noqa: N806
    theta = -np.sort(-S, axis=1)[np.arange(K), b - 1]
    above, tie = S > theta[:, None], S == theta[:, None]
    # with at most b_k, a row whose b_k-th score is 0 may leave its zero-score ties out
    row_exact = np.ones(K, dtype=bool) if problem.exact_budget else theta > 0
    zeros = np.zeros_like(S)
    full_lo, full_hi = np.zeros(L, np.int64), np.full(L, K, np.int64)
    if problem.exact_budget:
        totals = [int(b.sum())]
    else:  # rows with a positive b_k-th score take exactly b_k; the others their positives plus some zeros
        n_above, n_tie = above.sum(axis=1), tie.sum(axis=1)
        t_lo = int(np.where(row_exact, b, n_above).sum())
        t_hi = int(np.where(row_exact, b, np.minimum(b, n_above + n_tie)).sum())
        totals = range(t_lo, t_hi + 1)
    best, best_div = None, math.inf
    for total in totals:
        plan = _flow(
            zeros, b, row_exact, full_lo, full_hi, _marginal(1.0, L, total / L),
            total=None if problem.exact_budget else total, x_lb=above, x_ub=above | tie,
        )
        if plan is not None and problem.diversity(plan) < best_div:
            best, best_div = plan, float(problem.diversity(plan))
    max_importance = best if best is not None else top_b_plan(problem)

    if problem.exact_budget:
        total = int(b.sum())
        q = total // L
        lo, hi = np.full(L, q, np.int64), np.full(L, q + (total % L > 0), np.int64)
        min_diversity = _flow(S, b, np.ones(K, dtype=bool), lo, hi, lambda j: np.zeros(j.shape))
    else:
        min_diversity, best_imp = np.zeros((K, L), dtype=bool), 0.0
        for c in range(1, min(K, int(b.sum()) // L) + 1):
            plan = _flow(S, b, np.zeros(K, dtype=bool), np.full(L, c), np.full(L, c), lambda j: np.zeros(j.shape))
            if plan is not None and problem.importance(plan) > best_imp:
                min_diversity, best_imp = plan, float(problem.importance(plan))
    assert min_diversity is not None
    return max_importance, min_diversity


def _extremes_by_weights(problem: SelectionProblem) -> tuple[np.ndarray, np.ndarray]:
    r"""Both ends of the front under constraints, as optima at a tiny and a huge tradeoff.

    Diversity changes in steps of at least $1/L^2$ (``"spread"``: $L^2 D$ is an integer; ``"agree"``: $L D$
    is), so at $t_{\max} = 2 L^2 W + 1$ with $W$ the largest benefit range, diversity decides first and the
    benefit only breaks its ties. The max-benefit end is the optimum at $t_{\min} = 10^{-9} W / K^2$,
    which breaks the ties of the benefit by diversity unless two benefits differ by less than that.
    """
    w = np.abs(problem.linear)
    width = float(np.sort(w, axis=1)[:, ::-1][:, : problem.L].sum()) + 1e-12
    a = exact_optimum(problem, 1e-9 * width / max(problem.K, 1) ** 2)
    b = exact_optimum(problem, 2.0 * problem.L**2 * width + 1.0)
    return a, b


def exact_front(problem: SelectionProblem, *, max_points: int = 10_000) -> np.ndarray:
    """Every extreme point of the supported Pareto front, as plans ``(P, K, L)``, by importance descending.

    Args:
        problem: scores, budgets and budget mode.
        max_points: a safety cap on the number of front points.
    """
    a, b = lexicographic_extremes(problem)
    ia, da = float(problem.importance(a)), float(problem.diversity(a))
    ib, db = float(problem.importance(b)), float(problem.diversity(b))
    scale = max(1.0, abs(ia), abs(ib))
    if da - db <= _TOL * max(1.0, da) or ia - ib <= _TOL * scale:
        return a[None]
    points = {0: (a, ia, da), 1: (b, ib, db)}
    stack = [(0, 1)]
    edges = []
    while stack and len(points) < max_points:
        i, j = stack.pop()
        (_, i_i, d_i), (_, i_j, d_j) = points[i], points[j]
        t = (i_i - i_j) / (d_i - d_j)
        plan = exact_optimum(problem, t)
        ic, dc = float(problem.importance(plan)), float(problem.diversity(plan))
        if ic - t * dc > i_i - t * d_i + _TOL * scale * (1.0 + t):
            new = len(points)
            points[new] = (plan, ic, dc)
            stack.extend([(i, new), (new, j)])
        else:
            edges.append((i, j))
    ordered = sorted(points.values(), key=lambda p: -p[1])
    return np.stack([p[0] for p in ordered])
