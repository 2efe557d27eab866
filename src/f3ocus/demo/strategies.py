"""Who trains which layer in a round: the strategies the demo compares at equal per-client budgets.

With $L$ selectable layers (model order) and client $k$'s budget $b_k$:

- ``f3ocus``: every client scores its layers on a local batch by $\\lambda_{\\max}$ of the layer-wise
  empirical NTK (:func:`f3ocus.ntk_layer_importance`), the server solves the F³OCUS problem
  (:func:`f3ocus.select_layers` with the chosen solver, default NSGA-II; Saha et al., CVPR 2025):
  maximize total normalized importance, minimize the variance of the layer counts.
- ``topk``: the same scores, each client takes its own $b_k$ best layers (``solver="topk"``, the paper's
  client-only ablation: no server-side balancing).
- ``random``: $b_k$ layers drawn uniformly per client and round (``solver="random"``).
- ``lastk``: each client trains its last $b_k$ layers (the usual "fine-tune the top" heuristic).
- ``full``: every client trains all $L$ layers (the upper reference; it ignores the budgets).

Plans are recomputed every round from the current global model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from f3ocus._checks import check_choice

__all__ = ["STRATEGIES", "Plan", "make_plan", "default_budgets"]

STRATEGIES: tuple[str, ...] = ("f3ocus", "topk", "random", "lastk", "full")
SCORED = ("f3ocus", "topk")


@dataclasses.dataclass(frozen=True)
class Plan:
    """One round's plan.

    Attributes:
        mask: ``(K, L)`` bool, client $k$ trains layer $l$.
        layers: Per client, its layer names in model order.
        scores: ``(K, L)`` NTK scores the plan was made from (None for unscored strategies).
        stats: Solver diagnostics (importance, diversity, solver name ...), JSON-ready.
    """

    mask: np.ndarray
    layers: list[list[str]]
    scores: np.ndarray | None
    stats: dict


def default_budgets(num_clients: int, low: int = 2, high: int = 6) -> list[int]:
    """Heterogeneous budgets spread evenly from ``low`` to ``high`` layers (e.g. 2, 3, 4, 5, 6 for 5 clients)."""
    if num_clients == 1:
        return [high]
    return [int(round(b)) for b in np.linspace(low, high, num_clients)]


def _plan_from_mask(mask: np.ndarray, names: Sequence[str], scores=None, stats=None) -> Plan:
    mask = np.asarray(mask, dtype=bool)
    layers = [[names[j] for j in np.flatnonzero(row)] for row in mask]
    return Plan(mask=mask, layers=layers, scores=scores, stats=dict(stats or {}))


def make_plan(
    strategy: str,
    names: Sequence[str],
    budgets: Sequence[int],
    *,
    score_fn: Callable[[], np.ndarray] | None = None,
    solver: str = "nsga2",
    seed: int = 0,
) -> Plan:
    """The plan of ``strategy`` for one round.

    Args:
        strategy: One of :data:`STRATEGIES`.
        names: The $L$ layer names in model order.
        budgets: $b_k$ per client.
        score_fn: Returns the ``(K, L)`` NTK score matrix of the current model (called only by the
            scored strategies ``f3ocus`` and ``topk``).
        solver: The F³OCUS solver (any of :func:`f3ocus.available_solvers`).
        seed: Seed of the solver / of the random plan.

    Returns:
        A :class:`Plan`.
    """
    from f3ocus import select_layers

    strategy = check_choice("strategy", strategy, STRATEGIES)
    K, L = len(budgets), len(names)
    if strategy == "full":
        return _plan_from_mask(np.ones((K, L), dtype=bool), names)
    if strategy == "lastk":
        mask = np.zeros((K, L), dtype=bool)
        for k, b in enumerate(budgets):
            mask[k, L - b :] = True
        return _plan_from_mask(mask, names)
    if strategy == "random":
        assignment = select_layers(np.ones((K, L)), list(budgets), solver="random", seed=seed)
        return _plan_from_mask(assignment.mask, names, stats={"solver": "random"})
    if score_fn is None:
        raise ValueError(f"strategy={strategy!r} needs score_fn= (the clients' NTK scores); got None.")
    scores = np.asarray(score_fn(), dtype=float)
    chosen = solver if strategy == "f3ocus" else "topk"
    assignment = select_layers(scores, list(budgets), solver=chosen, seed=seed)
    stats = {
        "solver": chosen,
        "importance": float(assignment.importance),
        "diversity": float(assignment.diversity),
    }
    return _plan_from_mask(assignment.mask, names, scores=scores, stats=stats)
