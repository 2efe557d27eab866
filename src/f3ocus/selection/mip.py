r"""The exact optimum where the flow does not apply: a mixed-integer program (HiGHS through ``scipy.optimize.milp``).

Costs (a knapsack row $\sum_l c_l m_{kl} \le B_k$ per client) and the ``"agree"`` coupling break the
network structure of :mod:`f3ocus.selection.exact`. The MIP keeps every constraint as a row or a bound:
binaries $x_{kl}$ with bounds $[r_{kl}, a_{kl}]$ (required, allowed), counts $n_l = \sum_k x_{kl}$ with
$n_l \ge$ ``min_coverage``, the count or capacity row of every client, and with ``max_changes`` one churn
row per client, $\sum_l (1 - 2p_{kl}) x_{kl} \le c_k - \sum_l p_{kl}$ (the row's distance to ``previous``).

**Spread.** $t\cdot\text{diversity} = \frac{t}{L}\big(\sum_l n_l^2 - N^2/L\big)$ with $N = \sum_l n_l$.
The separable part is written with unit variables $y_{lj}$ (the $j$-th client of layer $l$ costs
$\frac{t}{L}(2j-1)$): convex increments, so the relaxation is the interpolation of $n_l^2$ at the integers,
the tightest convex one (a layer of fractional count pays the chord, not a tangent). The concave
$-N^2/L$ is exact with ordered binaries $w_1 \ge w_2 \ge \dots$ for $N = N_0 + \sum_i w_i$, whose
relaxation is only the chord over the range of $N$; so the range is first narrowed: LP relaxations at
fixed $N$ give bounds $V(N) + tN^2/L^2$ with $V$ concave (an LP's value in its right-hand side) and its
dual value a supergradient, so a few LPs bound every total, and the totals whose bound is below the best
plan found (greedy, LP roundings, climbed by moves and exchanges) are dropped. The MIP runs on the
window left; its dual bound is a proven upper bound on the optimum.

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
from scipy.optimize import Bounds, LinearConstraint, linprog, milp

from f3ocus.selection.problem import SelectionProblem

__all__ = ["MipResult", "mip_optimum"]


@dataclass(frozen=True)
class MipResult:
    """Best plan, its objective value, the proven upper bound, and how it was found (``rounds``: the
    linear and mixed-integer programs solved)."""

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
    start: np.ndarray | None = None,
) -> MipResult:
    r"""Maximize $\text{benefit}(m) - t\cdot\text{diversity}(m)$ under every constraint of ``sel``.

    Args:
        sel: the problem (any constraints, either coupling).
        tradeoff: $t \ge 0$.
        gap: stop when the best plan is within this relative gap of the proven bound.
        time_limit: seconds in all (``None``: no limit); the bound stays valid when it is hit.
        start: a feasible start plan (default: the greedy by score per cost, climbed).

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
    return _spread(sel, t, gap, time_limit, start, const)


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


def _row_counts(sel: SelectionProblem) -> tuple[np.ndarray, np.ndarray]:
    """Fewest and most cells any feasible row ``k`` can have (required cells; budget, capacity filled with
    the cheapest allowed cells; ``max_changes`` around the row of ``previous``)."""
    req = sel.required_mask.sum(axis=1)
    lo = sel.budgets.copy() if sel.exact_budget else req.copy()
    hi = np.minimum(sel.budgets, sel.allowed_mask.sum(axis=1))
    if sel.costs is not None:
        for k in range(sel.K):
            free = np.sort(sel.costs[sel.allowed_mask[k] & ~sel.required_mask[k]])
            room = sel.capacities[k] * (1 + 1e-12) + 1e-9 - float(sel.costs[sel.required_mask[k]].sum())
            hi[k] = min(hi[k], req[k] + int(np.searchsorted(np.cumsum(free), room, side="right")))
    if sel.max_changes is not None:
        p = sel.previous.sum(axis=1)
        lo, hi = np.maximum(lo, p - sel.max_changes), np.minimum(hi, p + sel.max_changes)
    return lo.astype(np.int64), hi.astype(np.int64)


def _unary_program(sel: SelectionProblem, t: float, total_lo: int, total_hi: int, const: float):
    r"""The spread MIP with unit variables, for plans with $N \in$ ``[total_lo, total_hi]``.

    Variables ``[x, n, y, w, one]``: $n_l = n^0_l + \sum_j y_{lj}$ with continuous $y_{lj} \in [0, 1]$ of
    cost $\frac{t}{L}(2j - 1)$ (convex increments: an optimum fills them in order, so $\sum_j (2j-1) y_{lj}$
    is $n_l^2 - (n^0_l)^2$ at every integer $n_l$ and its linear interpolation between them, the tightest
    convex relaxation); $N = N_0 + \sum_i w_i$ with ordered binaries $w_1 \ge w_2 \ge \dots$ of reward
    $\frac{t}{L^2}(2i - 1)$, so that $N^2$ is exact; ``one`` is fixed to 1 and carries the constant, so the
    program's objective is minus the scalarized value. Returns ``(c, A, lo, hi, lb, ub, integrality)``.
    """
    K, L = sel.K, sel.L  # noqa: N806
    n_x = K * L
    n_lo = np.maximum(sel.coverage, sel.required_mask.sum(axis=0)).astype(np.int64)
    n_hi = np.maximum(sel.allowed_mask.sum(axis=0).astype(np.int64), n_lo)
    width = n_hi - n_lo
    n_y, n_w = int(width.sum()), total_hi - total_lo
    A0, lo0, hi0, lb, ub, integrality = _base(sel, n_y + n_w + 1)  # noqa: N806
    n_var = A0.shape[1]
    y0, w0 = n_x + L, n_x + L + n_y
    y_layer = np.repeat(np.arange(L), width)
    y_j = np.concatenate([np.arange(a + 1, b + 1) for a, b in zip(n_lo, n_hi, strict=True)])
    w_i = np.arange(total_lo + 1, total_hi + 1)
    c = np.concatenate([-sel.linear.ravel(), np.zeros(L), (t / L) * (2.0 * y_j - 1.0), -(t / L**2) * (2.0 * w_i - 1.0),
                        [(t / L) * float((n_lo**2).sum()) - (t / L**2) * total_lo**2 - const]])
    lb[y0:], ub[y0:] = 0.0, 1.0
    lb[-1] = 1.0
    integrality[w0:-1] = 1
    pairs = np.arange(max(n_w - 1, 0))
    rows = [np.r_[np.arange(L), y_layer], np.full(L + n_w, L), L + 1 + np.r_[pairs, pairs]]
    cols = [np.r_[n_x + np.arange(L), y0 + np.arange(n_y)], np.r_[n_x + np.arange(L), w0 + np.arange(n_w)],
            np.r_[w0 + pairs, w0 + 1 + pairs]]
    vals = [np.r_[np.ones(L), -np.ones(n_y)], np.r_[np.ones(L), -np.ones(n_w)], np.r_[np.ones(pairs.size), -np.ones(pairs.size)]]
    link = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(L + 1 + pairs.size, n_var))
    A = sp.vstack([A0, link], format="csr")  # noqa: N806
    lo = np.concatenate([lo0, n_lo, [total_lo], np.zeros(pairs.size)])
    hi = np.concatenate([hi0, n_lo, [total_lo], np.full(pairs.size, np.inf)])
    return c, A, lo, hi, lb, ub, integrality


def _relaxation_at(sel: SelectionProblem, t: float, total: int, const: float):
    r"""The LP relaxation with $N$ = ``total``: ``(bound, slope, x)`` or ``None`` when it is infeasible.

    ``bound`` $= V(N) + tN^2/L^2 \ge$ the value of every plan with $N$ ones; $V$, the LP value less the
    $N^2$ term, is concave in $N$ (an LP's value in its right-hand side), and ``slope`` is its derivative
    (the dual value of the row $\sum_l n_l = N$), so $V(N) + s (N' - N) + tN'^2/L^2$ bounds every $N'$.
    """
    c, A, lo, hi, lb, ub, _ = _unary_program(sel, t, total, total, const)  # noqa: N806
    eq = lo == hi
    up, down = ~eq & np.isfinite(hi), ~eq & np.isfinite(lo)
    res = linprog(c, A_ub=sp.vstack([A[up], -A[down]], format="csr"), b_ub=np.r_[hi[up], -lo[down]],
                  A_eq=A[eq], b_eq=lo[eq], bounds=np.column_stack([lb, ub]), method="highs")
    if res.status == 2:
        return None
    if res.status != 0:
        raise RuntimeError(f"the selection LP failed: {res.message}")
    return -float(res.fun), -float(res.eqlin.marginals[-1]), res.x[: sel.K * sel.L].reshape(sel.K, sel.L)


def _round(sel: SelectionProblem, x: np.ndarray) -> np.ndarray:
    """A plan from a fractional one: per client its required cells, then the largest ``x`` that still fit."""
    plan = sel.required_mask.copy()
    order = np.argsort(-x, axis=1, kind="stable")
    for k in range(sel.K):
        room = np.inf if sel.costs is None else sel.capacities[k] * (1 + 1e-12) + 1e-9 - float(sel.costs[plan[k]].sum())
        left = sel.budgets[k] - int(plan[k].sum())
        for lay in order[k]:
            if x[k, lay] < 1e-6 or left == 0:
                break
            cost = 1.0 if sel.costs is None else sel.costs[lay]
            if not plan[k, lay] and sel.allowed_mask[k, lay] and cost <= room:
                plan[k, lay], room, left = True, room - cost, left - 1
    return plan


def _spread(sel, t, gap, time_limit, start, const) -> MipResult:
    r"""The spread coupling: $N$ narrowed by LP bounds, then the unit-variable MIP on that window.

    $\text{diversity} = \frac{1}{L}\sum_l n_l^2 - N^2/L^2$ is separable in the counts except for the
    concave $-N^2/L^2$. (1) A start plan (greedy, climbed; then the climbed roundings of LP relaxations
    at its total and at the total with the largest bound). (2) From each end of the range of $N$, LP
    relaxations at fixed $N$ (:func:`_relaxation_at`) cut away every total whose bound is below the best
    plan, until an end's own bound reaches it. (3) :func:`_unary_program` on the window left, whose
    $N^2$ is exact and whose count penalty is the interpolation at the integers. The proven bound is
    HiGHS's dual bound on the window (the totals outside it have bounds below the best plan).
    """
    started = time.perf_counter()
    L = sel.L  # noqa: N806

    def left():
        return None if time_limit is None else time_limit - (time.perf_counter() - started)

    rows_lo, rows_hi = _row_counts(sel)
    col_lo = np.maximum(sel.coverage, sel.required_mask.sum(axis=0))
    a = int(max(rows_lo.sum(), col_lo.sum()))
    b = int(min(rows_hi.sum(), sel.allowed_mask.sum()))
    best = _incumbent(sel, t) if start is None else np.asarray(start, dtype=bool)
    best_value = float(sel.scalarized(best, t))
    totals = np.arange(a, b + 1)
    upper = np.full(totals.size, np.inf)
    programs = 0
    cache: dict[int, tuple | None] = {}

    def relax(total):
        """The LP at this total; its cut lowers every total's bound. Returns ``(value, slope, x)`` or ``None``."""
        nonlocal upper, programs
        if total in cache:
            return cache[total]
        out = cache[total] = _relaxation_at(sel, t, int(total), const)
        programs += 1
        if out is None:  # no plan has this total
            upper[total - totals[0]] = -np.inf
            return None
        value, slope, _ = out
        v = value - t * total**2 / L**2
        upper = np.minimum(upper, v + slope * (totals - total) + t * totals**2 / L**2 + 1e-9 * max(1.0, abs(v)))
        return out

    if a < b:  # locate the total with the largest bound (a grid, then the envelope's maximum), round there
        seen: dict[int, tuple] = {}
        for total in dict.fromkeys(np.linspace(a, b, 6).round().astype(int).tolist() + [int(np.clip(best.sum(), a, b))]):
            seen[total] = relax(total)
        for _ in range(4):
            finite = np.flatnonzero(np.isfinite(upper))
            peak = int(totals[finite[np.argmax(upper[finite])]]) if finite.size else None
            if peak is None or peak in seen:
                break
            seen[peak] = relax(peak)
        done = [(out[0], total) for total, out in seen.items() if out is not None]
        if done:
            x = seen[max(done)[1]][2]
            plan = _climb(sel, t, _round(sel, x))
            plan_value = float(sel.scalarized(plan, t))
            if plan_value > best_value and sel.is_feasible(plan):
                best, best_value = plan, plan_value
        for side in (0, -1):  # narrow [a, b] from each end until an end's own bound reaches the best plan
            while a <= b and (left() is None or left() > 0):
                keep = np.flatnonzero(upper[a - totals[0] : b - totals[0] + 1] > best_value)
                if keep.size == 0:
                    a = b + 1
                    break
                a, b = a + int(keep[0]), a + int(keep[-1])
                end = a if side == 0 else b
                out = relax(end)
                if out is not None and out[0] > best_value:
                    break
                upper[end - totals[0]] = -np.inf  # no plan with this total beats the best one
    status, bound = "optimal", best_value
    if a <= b:  # the totals whose bounds beat the best plan: the MIP decides between them
        bound = max(bound, float(upper[a - totals[0] : b - totals[0] + 1].max()))
        status = "time limit"
    if a <= b and (left() is None or left() > 0):
        c, A, lo, hi, lb, ub, integrality = _unary_program(sel, t, a, b, const)  # noqa: N806
        res = _solve(c, A, lo, hi, lb, ub, integrality, left(), gap)  # the objective is minus the value: HiGHS's gap is ours
        programs += 1
        status = "optimal" if res.status in (0, 2) else "time limit"  # 2: no plan in the window beats the best
        if res.status == 2:
            bound = best_value
        if res.x is not None:
            plan = res.x[: sel.K * L].reshape(sel.K, L) > 0.5
            for cand in (plan, _climb(sel, t, plan) if left() is None or left() > 0 else plan):
                value = float(sel.scalarized(cand, t))
                if value > best_value and sel.is_feasible(cand):
                    best, best_value = cand, value
        dual = getattr(res, "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual):
            bound = min(bound, -float(dual))
    return MipResult(best, best_value, max(bound, best_value), programs, status)
