"""Every search solver lands within 2% of the exact optimum on seeded heavy-tailed instances.

The instances are those of ``benchmarks/bench_select.py`` at a size the suite can afford (K=12 clients,
L=16 layers): raw scores $\\lambda_{kl} = \\exp(\\sigma(\\sqrt{\\rho}\\, g_l + \\sqrt{1-\\rho}\\, e_{kl}))$ with
$g, e$ standard normal, $\\sigma = 2$, $\\rho = 1/2$ (a layer effect shared by the clients, so the
clients' own top layers pile up on the same layers), normalized per client with ``"sum"``; budgets
uniform in 2..6; tradeoff $t = \\tau L / K$. The exact optimum comes from ``certify=True``. On these
instances the client-only top-k baseline is far from the optimum, so a solver that ignored diversity
would fail.
"""

from __future__ import annotations

import numpy as np
import pytest

import f3ocus
from f3ocus.selection.api import select_layers

BASELINES = ("topk", "random")
SEARCH = [name for name in f3ocus.available_solvers() if name not in (*BASELINES, "exact")]
CASES = [(0, 0.3), (1, 1.0)]  # (instance seed, tau)


def heavy_tailed(K: int, L: int, seed: int, sigma: float = 2.0, rho: float = 0.5):  # noqa: N803
    """Raw lognormal scores with a shared layer effect, and budgets uniform in 2..min(6, L)."""
    rng = np.random.default_rng(seed)
    log_scores = sigma * (
        np.sqrt(rho) * rng.standard_normal(L) + np.sqrt(1 - rho) * rng.standard_normal((K, L))
    )
    budgets = rng.integers(2, min(6, L) + 1, size=K)
    return np.exp(log_scores), budgets


@pytest.mark.parametrize("seed,tau", CASES)
def test_topk_is_clearly_off_the_optimum(seed, tau):
    scores, budgets = heavy_tailed(12, 16, seed)
    plan = select_layers(scores, budgets, solver="topk", tradeoff=tau * 16 / 12, certify=True)
    assert plan.stats["gap"] > 0.05


@pytest.mark.parametrize("solver", SEARCH)
@pytest.mark.parametrize("seed,tau", CASES)
def test_solver_within_two_percent_of_exact(solver, seed, tau):
    scores, budgets = heavy_tailed(12, 16, seed)
    plan = select_layers(scores, budgets, solver=solver, tradeoff=tau * 16 / 12, seed=seed, certify=True)
    assert plan.stats["exact_scalarized"] > 0
    assert plan.stats["gap"] <= 0.02, f"{solver}: gap {plan.stats['gap']:.4f} to the exact optimum"
    assert np.array_equal(plan.mask.sum(axis=1), budgets)


@pytest.mark.parametrize("solver", ["sa", "abc", "aco", "mopso"])
def test_metaheuristic_within_two_percent_with_at_most_budgets(solver):
    scores, budgets = heavy_tailed(12, 16, 2)
    plan = select_layers(
        scores, budgets, solver=solver, tradeoff=2.0, seed=0, certify=True, exact_budget=False
    )
    assert plan.stats["gap"] <= 0.02, f"{solver}: gap {plan.stats['gap']:.4f} to the exact optimum"
    assert np.all(plan.mask.sum(axis=1) <= budgets)
