"""Shared selection instances and hypothesis strategies for the selection tests.

``tiny_problems()`` draws problems small enough to enumerate every plan (at most a few thousand), with
heavy-tailed, tied and zero scores; ``heavy_tailed`` builds the seeded lognormal instances of the
quality checks.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from f3ocus.selection.problem import SelectionProblem

__all__ = ["heavy_tailed", "instance", "tiny_problems", "tradeoffs"]


def heavy_tailed(K: int, L: int, seed: int, sigma: float = 2.0, rho: float = 0.5):  # noqa: N803
    """Raw lognormal scores with a shared layer effect (clients' top layers pile up) and budgets in 2..6."""
    rng = np.random.default_rng(seed)
    log_scores = sigma * (np.sqrt(rho) * rng.standard_normal(L) + np.sqrt(1 - rho) * rng.standard_normal((K, L)))
    budgets = rng.integers(min(2, L), min(6, L) + 1, size=K)
    return np.exp(log_scores), budgets


def instance(K: int, L: int, seed: int, exact_budget: bool = True) -> SelectionProblem:  # noqa: N803
    """A normalized heavy-tailed :class:`SelectionProblem`."""
    raw, budgets = heavy_tailed(K, L, seed)
    budgets = np.minimum(budgets, L)
    return SelectionProblem(raw / raw.sum(axis=1, keepdims=True), budgets, exact_budget)


@st.composite
def tiny_problems(draw, exact_budget=None, max_k: int = 3, max_l: int = 5) -> SelectionProblem:
    """Problems with K <= 3 and L <= 5: lognormal, rounded (ties) or partly zero scores."""
    K = draw(st.integers(1, max_k))  # noqa: N806
    L = draw(st.integers(1, max_l))  # noqa: N806
    seed = draw(st.integers(0, 2**32 - 1))
    kind = draw(st.sampled_from(["lognormal", "ties", "zeros"]))
    rng = np.random.default_rng(seed)
    S = rng.lognormal(0.0, 2.0, (K, L))  # noqa: N806
    if kind == "ties":
        S = np.round(S / S.sum(axis=1, keepdims=True) * 3) / 3  # noqa: N806
    elif kind == "zeros":
        S = S * (rng.random((K, L)) < 0.6)  # noqa: N806
    S = S / max(S.sum(axis=1).max(), 1e-12)  # noqa: N806
    budgets = np.array([draw(st.integers(1, L)) for _ in range(K)])
    exact = draw(st.booleans()) if exact_budget is None else exact_budget
    return SelectionProblem(S, budgets, exact)


tradeoffs = st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 3.0, 30.0])


def constrained_problem(K: int, L: int, seed: int, kinds) -> SelectionProblem:  # noqa: N803
    """A seeded problem with the constraints named in ``kinds`` (``"costs"``, ``"required"``, ``"allowed"``,
    ``"coverage"``, ``"churn"``, ``"agree"``, ``"at_most"``, ``"limit"``: ``max_changes``); it may have no
    feasible plan."""
    rng = np.random.default_rng(seed)
    S = rng.lognormal(0.0, 1.5, (K, L))  # noqa: N806
    S = S / S.sum(axis=1, keepdims=True)  # noqa: N806
    kw = {}
    exact = "at_most" not in kinds and "costs" not in kinds
    budgets = rng.integers(1, L + 1, size=K)
    if "required" in kinds:
        req = np.zeros((K, L), dtype=bool)
        req[:, L - 1] = True
        kw["required"] = req
        budgets = np.maximum(budgets, 1)
    if "allowed" in kinds:
        allowed = rng.random((K, L)) > 0.2
        allowed[:, L - 1] = True
        kw["allowed"] = allowed
        if exact:
            budgets = np.minimum(budgets, allowed.sum(axis=1))
    if "costs" in kinds:
        costs = rng.integers(1, 6, size=L).astype(float)
        kw["costs"] = costs
        kw["capacities"] = np.maximum(rng.uniform(0.2, 0.7, K) * costs.sum(), costs[L - 1] + costs.min())
        budgets = np.full(K, L)
    if "coverage" in kinds:
        kw["min_coverage"] = (rng.random(L) < 0.5).astype(np.int64)
    if "churn" in kinds:
        kw["previous"] = rng.random((K, L)) < 0.4
        kw["churn_penalty"] = float(rng.choice([0.01, 0.1]))
    if "limit" in kinds:
        kw.setdefault("previous", rng.random((K, L)) < 0.4)
        prev = kw["previous"]  # the changes no plan avoids, plus 0..2
        forced = (kw["required"] & ~prev).sum(axis=1) if "required" in kw else np.zeros(K, np.int64)
        if "allowed" in kw:
            forced = forced + (~kw["allowed"] & prev).sum(axis=1)
        if "costs" not in kw:  # enough to fix those cells and then reach the row count
            forced = 2 * forced + np.maximum(prev.sum(axis=1) - budgets, 0 if not exact else budgets - prev.sum(axis=1))
        else:  # enough to drop every cell of previous and train the required ones alone
            forced = forced + prev.sum(axis=1)
        kw["max_changes"] = forced + rng.integers(0, 3, size=K)
    if "agree" in kinds:
        kw["coupling"] = "agree"
    return SelectionProblem(S, budgets, exact, **kw)
