r"""The exact optimum where the flow does not apply: a mixed-integer program (HiGHS through ``scipy.optimize.milp``).

Costs (a knapsack row $\sum_l c_l m_{kl} \le B_k$ per client) and the ``"agree"`` coupling break the
network structure of :mod:`f3ocus.selection.exact`. The MIP keeps every constraint as a row or a bound:
binaries $x_{kl}$ with bounds $[r_{kl}, a_{kl}]$ (required, allowed), counts $n_l = \sum_k x_{kl}$ with
$n_l \ge$ ``min_coverage``, the count or capacity row of every client, and with ``max_changes`` one churn
row per client, $\sum_l (1 - 2p_{kl}) x_{kl} \le c_k - \sum_l p_{kl}$ (the row's distance to ``previous``).

**Spread.** $t\cdot\text{diversity} = \frac{t}{L}\sum_l u_l^2$ with $u_l = n_l - \frac{1}{L}\sum_{l'} n_{l'}$,
linear in $x$. The convex $u^2$ is replaced by its epigraph $z_l \ge u_l^2$, outer-approximated by
tangents $z_l \ge 2 u_0 u_l - u_0^2$ (Kelley's cutting planes, J. SIAM 1960): every tangent is a valid
under-estimate, so the MIP's dual bound is a proven upper bound on the optimum. The first program
has tangents at every value $u_l$ can take when the total $N$ is that of a feasible start plan (exact when
the budgets fix $N$, as exact count budgets do); each round then adds the tangents at the $u_l$ of the
plan found, until the best plan found is within ``gap`` of the bound (or every $z_l$ is exact).

**Agree.** $\frac{t}{L}\sum_l n_l (K - n_l)$ is concave in $n_l$, so it is written exactly with ordered
unit binaries $y_{l1} \ge y_{l2} \ge \dots \ge y_{lK}$, $n_l = \sum_j y_{lj}$, the $j$-th client of a
layer costing $\frac{t}{L}(K - 2j + 1)$. One program, exact.

The result carries the best plan, its value and the proven bound (``gap = (bound - value) / |value|``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from f3ocus.selection.problem import SelectionProblem

__all__ = ["MipResult", "mip_optimum"]


@dataclass(frozen=True)
class MipResult:
    """Best plan, its objective value, the proven upper bound, and how it was found."""

    plan: np.ndarray
    value: float
    bound: float
    rounds: int
    status: str

    @property
    def gap(self) -> float:
        """Relative gap ``(bound - value) / |value|`` (``0`` when proven optimal)."""
        return max(0.0, (self.bound - self.value) / max(abs(self.value), 1e-12))


class InfeasibleError(ValueError):
    """No plan meets the constraints."""


def _base(sel: SelectionProblem, n_extra: int):
    """Variables ``[x (K*L), n (L), extra]``; rows: count/capacity per client, n = sum_k x."""
    K, L = sel.K, sel.L  # noqa: N806
    n_x = K * L
    n_var = n_x + L + n_extra
    rows, cols, vals, lo, hi = [], [], [], [], []
    r = 0
    client = np.repeat(np.arange(K), L)
    weights = np.ones(n_x) if sel.costs is None else np.tile(sel.costs, K)
    rows.append(client)
    cols.append(np.arange(n_x))
    vals.append(weights)
    if sel.costs is None:
        lo.append(sel.budgets.astype(float) if sel.exact_budget else np.full(K, -np.inf))
        hi.append(sel.budgets.astype(float))
    else:
        lo.append(np.full(K, -np.inf))
        hi.append(sel.capacities * (1 + 1e-12) + 1e-9)
    r += K
    layer = np.tile(np.arange(L), K)
    rows += [r + layer, r + np.arange(L)]
    cols += [np.arange(n_x), n_x + np.arange(L)]
    vals += [np.ones(n_x), -np.ones(L)]
    lo.append(np.zeros(L))
    hi.append(np.zeros(L))
    r += L
    if sel.max_changes is not None:  # |m_k - p_k| = sum_l (1 - 2 p_kl) x_kl + sum_l p_kl <= c_k
        rows.append(r + client)
        cols.append(np.arange(n_x))
        vals.append(1.0 - 2.0 * sel.previous.ravel())
        lo.append(np.full(K, -np.inf))
        hi.append((sel.max_changes - sel.previous.sum(axis=1)).astype(float))
        r += K
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r, n_var))  # noqa: N806
    lb = np.zeros(n_var)
    ub = np.full(n_var, np.inf)
    lb[:n_x] = sel.required_mask.ravel()
    ub[:n_x] = sel.allowed_mask.ravel()
    col_lo = np.maximum(sel.coverage, sel.required_mask.sum(axis=0))
    lb[n_x : n_x + L] = col_lo
    ub[n_x : n_x + L] = sel.allowed_mask.sum(axis=0)
    integrality = np.zeros(n_var)
    integrality[: n_x + L] = 1  # the counts too: branching on n_l is what closes the convex penalty
    return A, np.concatenate(lo), np.concatenate(hi), lb, ub, integrality


def _solve(c, A, lo, hi, lb, ub, integrality, time_limit, gap):  # noqa: N803
    options = {"disp": False, "mip_rel_gap": gap}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    return milp(c, constraints=LinearConstraint(A, lo, hi), bounds=Bounds(lb, ub), integrality=integrality,
                options=options)


def _infeasible(sel: SelectionProblem) -> InfeasibleError:
    return InfeasibleError(
        "no plan meets the constraints: the budgets (or capacities), required and forbidden cells and "
        "min_coverage (and max_changes) cannot hold together. Lower min_coverage, raise the budgets or "
        "max_changes, or allow more cells."
    )


def mip_optimum(
    sel: SelectionProblem,
    tradeoff: float,
    *,
    gap: float = 1e-4,
    time_limit: float | None = None,
    max_rounds: int = 30,
    start: np.ndarray | None = None,
) -> MipResult:
    r"""Maximize $\text{benefit}(m) - t\cdot\text{diversity}(m)$ under every constraint of ``sel``.

    Args:
        sel: the problem (any constraints, either coupling).
        tradeoff: $t \ge 0$.
        gap: stop when the best plan is within this relative gap of the proven bound.
        time_limit: seconds in all (``None``: no limit); the bound stays valid when it is hit.
        max_rounds: cap on the cutting-plane rounds (spread coupling).
        start: a feasible plan whose total fixes the first tangents (default: the greedy by score per cost).

    Raises:
        InfeasibleError: (a ``ValueError``) no plan meets the constraints.
    """
    t = float(tradeoff)
    K, L = sel.K, sel.L  # noqa: N806
    n_x = K * L
    w = sel.linear.ravel()
    const = 0.0 if sel.linear is sel.scores or sel.previous is None else -sel.churn_penalty * float(sel.previous.sum())
    if sel.coupling == "agree" or t == 0.0:
        n_y = K * L if (sel.coupling == "agree" and t > 0) else 0
        A, lo, hi, lb, ub, integrality = _base(sel, n_y)  # noqa: N806
        c = np.concatenate([-w, np.zeros(L + n_y)])
        if n_y:  # ordered unit binaries y_lj, n_l = sum_j y_lj
            y0 = n_x + L
            j = np.tile(np.arange(K), L)
            lay = np.repeat(np.arange(L), K)
            c[y0:] = (t / L) * (K - 2.0 * j - 1.0)
            integrality[y0:] = 1
            ub[y0:] = 1.0
            rows = [lay, np.arange(L)]
            cols = [y0 + np.arange(n_y), n_x + np.arange(L)]
            vals = [np.ones(n_y), -np.ones(L)]
            link = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(L, A.shape[1]))
            pairs = np.flatnonzero(j < K - 1)
            order = sp.csr_matrix((np.concatenate([-np.ones(pairs.size), np.ones(pairs.size)]),
                                   (np.tile(np.arange(pairs.size), 2), np.concatenate([y0 + pairs, y0 + pairs + 1]))),
                                  shape=(pairs.size, A.shape[1]))
            A = sp.vstack([A, link, order], format="csr")  # noqa: N806
            lo = np.concatenate([lo, np.zeros(L), np.full(pairs.size, -np.inf)])
            hi = np.concatenate([hi, np.zeros(L), np.zeros(pairs.size)])
        res = _solve(c, A, lo, hi, lb, ub, integrality, time_limit, gap)
        if res.x is None:
            if res.status == 2:
                raise _infeasible(sel)
            raise RuntimeError(f"the selection MIP failed: {res.message}")
        plan = res.x[:n_x].reshape(K, L) > 0.5
        value = float(sel.scalarized(plan, t))
        bound = -float(res.mip_dual_bound) + const  # agree and t = 0: the program's value is exact
        return MipResult(plan, value, max(bound, value), 1, "optimal" if res.status == 0 else "time limit")
    return _spread(sel, t, gap, time_limit, max_rounds, start, const)


def _climb(sel: SelectionProblem, t: float, plan: np.ndarray) -> np.ndarray:
    """``plan`` improved by single moves and exchanges (returned as is when it is not feasible)."""
    from f3ocus.selection.solvers._moves import polish

    if not sel.is_feasible(plan):
        return plan
    climbed = polish(sel, t, plan)[0]
    return climbed if sel.is_feasible(climbed) else plan


def _incumbent(sel: SelectionProblem, t: float) -> np.ndarray:
    """A good feasible start: the marginal-gain greedy, climbed by single moves and exchanges
    (the exact maximum-benefit plan when the greedy breaks a constraint, e.g. ``max_changes``)."""
    from f3ocus.selection.heuristics import greedy_plan

    plan = greedy_plan(sel, t)
    if not sel.is_feasible(plan):
        plan = _feasible_start(sel)
    return _climb(sel, t, plan)


def _feasible_start(sel: SelectionProblem) -> np.ndarray:
    """A feasible plan from the MIP at ``t = 0`` (the maximum-benefit plan)."""
    A, lo, hi, lb, ub, integrality = _base(sel, 0)  # noqa: N806
    res = _solve(np.concatenate([-sel.linear.ravel(), np.zeros(sel.L)]), A, lo, hi, lb, ub, integrality, None, 1e-4)
    if res.x is None:
        if res.status == 2:
            raise _infeasible(sel)
        raise RuntimeError(f"the selection MIP failed: {res.message}")
    return res.x[: sel.K * sel.L].reshape(sel.K, sel.L) > 0.5


def _spread(sel, t, gap, time_limit, max_rounds, start, const) -> MipResult:
    started = time.perf_counter()
    K, L = sel.K, sel.L  # noqa: N806
    n_x = K * L
    A0, lo0, hi0, lb, ub, integrality = _base(sel, L + 1)  # noqa: N806
    z0, n_tot = n_x + L, n_x + 2 * L  # z_l, then the total N = sum_l n_l
    c = np.concatenate([-sel.linear.ravel(), np.zeros(L), np.full(L, t / L), [0.0]])
    total_row = sp.csr_matrix(
        (np.concatenate([np.ones(L), [-1.0]]), (np.zeros(L + 1, np.int64), np.r_[n_x + np.arange(L), n_tot])),
        shape=(1, A0.shape[1]),
    )
    A0 = sp.vstack([A0, total_row], format="csr")  # noqa: N806
    lo0, hi0 = np.r_[lo0, 0.0], np.r_[hi0, 0.0]
    n_lo, n_hi = lb[n_x:z0].astype(int), ub[n_x:z0].astype(int)
    start = _incumbent(sel, t) if start is None else np.asarray(start, dtype=bool)
    start_value = float(sel.scalarized(start, t))
    # tangents every h on the range of u_l = n_l - N / L; the outer approximation is then off by at
    # most t h^2 / 4 in all (exact on the grid j - N_0 / L of the start's total N_0)
    h = 1.0 if sel.exact_budget else min(1.0, math.sqrt(gap * max(abs(start_value), 1e-12) / max(t, 1e-300)))
    steps = max(1, min(8, math.ceil(1.0 / h)))
    total = float(start.sum())
    tangents: list[set[float]] = [set() for _ in range(L)]
    for lay in range(L):
        for j in range(n_lo[lay], n_hi[lay] + 1):
            for i in range(steps):
                tangents[lay].add(round(j + i / steps - total / L, 12))
    cut_rows: list[sp.csr_matrix] = []

    def cuts(pairs):
        """Rows 2 u0 n_l - (2 u0 / L) N - z_l <= u0^2 for (layer, u0) pairs."""
        pairs = list(pairs)
        m = len(pairs)
        lay = np.array([p[0] for p in pairs], dtype=np.int64)
        u0 = np.array([p[1] for p in pairs])
        rows = np.concatenate([np.arange(m), np.arange(m), np.arange(m)])
        cols = np.concatenate([np.full(m, n_tot), n_x + lay, z0 + lay])
        vals = np.concatenate([-2.0 * u0 / L, 2.0 * u0, -np.ones(m)])
        return sp.csr_matrix((vals, (rows, cols)), shape=(m, A0.shape[1])), u0**2

    first, rhs = cuts((lay, u) for lay in range(L) for u in sorted(tangents[lay]))
    cut_rows.append(first)
    rhs_all = [rhs]
    best_plan, best_value, bound, status = start, start_value, math.inf, "optimal"
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007
        A = sp.vstack([A0, *cut_rows], format="csr")  # noqa: N806
        lo = np.concatenate([lo0, np.full(A.shape[0] - A0.shape[0], -np.inf)])
        hi = np.concatenate([hi0, *rhs_all])
        left = None if time_limit is None else time_limit - (time.perf_counter() - started)
        if left is not None and left <= 0:
            status = "time limit"
            break
        res = _solve(c, A, lo, hi, lb, ub, integrality, left, gap / 2)
        if res.x is None:
            if res.status == 2:
                raise _infeasible(sel)
            raise RuntimeError(f"the selection MIP failed: {res.message}")
        if res.status != 0:
            status = "time limit"
        plan = res.x[:n_x].reshape(K, L) > 0.5
        climbed = _climb(sel, t, plan)
        for cand in (plan, climbed):
            value = float(sel.scalarized(cand, t))
            if value > best_value and sel.is_feasible(cand):
                best_plan, best_value = cand, value
        bound = min(bound, -float(res.mip_dual_bound) + const)
        if bound - best_value <= gap * max(abs(best_value), 1e-12) or status != "optimal":
            break
        n = plan.sum(axis=0).astype(np.float64)
        u = np.round(n - n.sum() / L, 12)
        new = [(lay, float(u[lay])) for lay in range(L) if float(u[lay]) not in tangents[lay]]
        if not new:  # every z_l is exact at the program's optimum: it is the optimum
            bound = min(bound, best_value)
            break
        for lay, u0 in new:
            tangents[lay].add(u0)
        rows, rhs = cuts(new)
        cut_rows.append(rows)
        rhs_all.append(rhs)
    return MipResult(best_plan, best_value, max(bound, best_value), rounds, status)
