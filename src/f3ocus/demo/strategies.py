"""Who trains which layer in a round: the strategies the demo compares at equal per-client budgets.

With $L$ selectable layers (the encoder layers, model order) and client $k$'s budget $b_k$:

- ``f3ocus``: every client scores its layers on a local batch by $\\lambda_{\\max}$ of the layer-wise
  empirical NTK (:func:`f3ocus.ntk_layer_importance`), the server solves the F³OCUS problem
  (:func:`f3ocus.select_layers` with the chosen solver, default NSGA-II, at the knee of its front;
  Saha et al., CVPR 2025): maximize total normalized importance, minimize the variance of the layer counts.
- ``f3ocus-exact``: the same problem solved exactly (``solver="exact"``) at the knee tradeoff $t^\\star$.
- ``exact-x<c>`` (e.g. ``exact-x3``): the exact solver at tradeoff $c\\,t^\\star$, $t^\\star$ the slope
  between the ends of the exact front (:func:`knee_tradeoff`), for the tradeoff sweep ($c = 0$ is
  client-only top-k up to ties; ``f3ocus-exact`` is the knee of the front).
- ``topk``: the same scores, each client takes its own $b_k$ best layers (``solver="topk"``, the paper's
  client-only ablation: no server-side balancing).
- ``random``: $b_k$ layers drawn uniformly per client and round (``solver="random"``).
- ``lastk``: each client trains its last $b_k$ layers (the usual "fine-tune the top" heuristic).
- ``topk-<score>`` and ``f3ocus-<score>`` with ``<score>`` one of :data:`BASELINE_SCORES` (``grad_norm``,
  ``fisher``, ``snip``; :func:`f3ocus.layer_scores`): top-k and F³OCUS (the ``f3ocus`` solver) on a baseline
  layer score instead of the NTK, the score rows of the paper's Table 1 at this scale.
- ``full``: every client trains all $L$ layers (the upper reference; it ignores the budgets).
- ``head``: no client trains an encoder layer, only the task head (the lower reference: what the head alone
  gains in the rounds, so that the encoder layers' contribution of every other strategy can be read off).

The task head is not among the $L$ layers: it is trained by every client in every round, outside the
budget (:mod:`f3ocus.demo.run`). Plans are recomputed every round from the current global model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence

import numpy as np

from f3ocus._checks import check_choice

__all__ = [
    "BASELINE_SCORES",
    "STRATEGIES",
    "Plan",
    "default_budgets",
    "is_strategy",
    "make_plan",
    "plan_diversity",
    "score_of",
]

STRATEGIES: tuple[str, ...] = ("f3ocus", "f3ocus-exact", "topk", "random", "lastk", "full", "head")
_SWEEP = re.compile(r"^exact-x(\d+(?:\.\d+)?)$")
#: Baseline layer scores of the ``topk-<score>`` / ``f3ocus-<score>`` strategies.
BASELINE_SCORES: tuple[str, ...] = ("grad_norm", "fisher", "snip")
_BASELINE = re.compile(r"^(topk|f3ocus)-(" + "|".join(BASELINE_SCORES) + r")$")


def is_strategy(name: str) -> bool:
    """Whether ``name`` is one of :data:`STRATEGIES` or a sweep point ``exact-x<c>``."""
    if not isinstance(name, str):
        return False
    return name in STRATEGIES or _SWEEP.match(name) is not None or _BASELINE.match(name) is not None


def check_strategy(argname: str, name: str) -> str:
    """``name`` if :func:`is_strategy`, else a ValueError that lists the valid names."""
    if not is_strategy(name):
        try:
            check_choice(argname, name, STRATEGIES)
        except ValueError as err:
            raise ValueError(
                f"{err} Or exact-x<c> (exact solver at c times the knee tradeoff), or topk-<score> / "
                f"f3ocus-<score> with <score> one of {list(BASELINE_SCORES)}."
            ) from None
    return name


def is_scored(name: str) -> bool:
    """Whether the strategy needs the clients' layer scores."""
    return score_of(name) is not None


def score_of(name: str) -> str | None:
    """The layer score a strategy plans from: ``"ntk"``, a baseline score name, or None (unscored)."""
    baseline = _BASELINE.match(name)
    if baseline is not None:
        return baseline.group(2)
    if name in ("f3ocus", "f3ocus-exact", "topk") or _SWEEP.match(name) is not None:
        return "ntk"
    return None


def knee_tradeoff(importance: np.ndarray, diversity: np.ndarray) -> float:
    """$t^\\star = (I_A - I_B) / (D_A - D_B)$ between the front's most important plan A and its least
    diverse plan B (0 for a one-point front): the slope of the chord of the importance-diversity front."""
    imp, div = np.asarray(importance, dtype=float), np.asarray(diversity, dtype=float)
    a, b = int(np.argmax(imp)), int(np.argmin(div))
    d_range, i_range = div[a] - div[b], imp[a] - imp[b]
    return float(i_range / d_range) if d_range > 1e-12 and i_range > 0 else 0.0


def plan_diversity(mask: np.ndarray) -> float:
    """The F³OCUS diversity of a plan: $\\frac{1}{L}\\sum_l (n_l - \\bar n)^2$, $n_l = \\sum_k m_{kl}$."""
    counts = np.asarray(mask, dtype=float).sum(axis=0)
    return float(np.mean((counts - counts.mean()) ** 2))


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
    stats = dict(stats or {}, diversity=plan_diversity(mask))
    return Plan(mask=mask, layers=layers, scores=scores, stats=stats)


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
        strategy: One of :data:`STRATEGIES` or ``exact-x<c>``.
        names: The $L$ selectable layer names in model order.
        budgets: $b_k$ per client.
        score_fn: Returns the ``(K, L)`` score matrix of the current model (:func:`score_of` says which
            score; called only by the scored strategies).
        solver: The solver of ``f3ocus`` (any of :func:`f3ocus.available_solvers`).
        seed: Seed of the solver / of the random plan.

    Returns:
        A :class:`Plan`; its ``stats`` hold the plan's ``diversity`` and, for scored strategies, the
        ``importance`` and the ``tradeoff`` used.
    """
    from f3ocus import select_layers

    strategy = check_strategy("strategy", strategy)
    K, L = len(budgets), len(names)
    if strategy == "full":
        return _plan_from_mask(np.ones((K, L), dtype=bool), names, stats={"solver": "full"})
    if strategy == "head":
        return _plan_from_mask(np.zeros((K, L), dtype=bool), names, stats={"solver": "head"})
    if strategy == "lastk":
        mask = np.zeros((K, L), dtype=bool)
        for k, b in enumerate(budgets):
            mask[k, L - b :] = True
        return _plan_from_mask(mask, names, stats={"solver": "lastk"})
    if strategy == "random":
        assignment = select_layers(np.ones((K, L)), list(budgets), solver="random", seed=seed)
        return _plan_from_mask(assignment.mask, names, stats={"solver": "random"})
    if score_fn is None:
        raise ValueError(f"strategy={strategy!r} needs score_fn= (the clients' NTK scores); got None.")
    scores = np.asarray(score_fn(), dtype=float)
    tradeoff = None
    if strategy == "topk" or strategy.startswith("topk-"):
        chosen = "topk"
    elif strategy == "f3ocus" or _BASELINE.match(strategy) is not None:
        chosen = solver
    else:
        chosen = "exact"
        sweep = _SWEEP.match(strategy)
        if sweep is not None:
            front = select_layers(scores, list(budgets), solver="exact", seed=seed).front
            tradeoff = float(sweep.group(1)) * knee_tradeoff(front.importance, front.diversity)
    assignment = select_layers(scores, list(budgets), solver=chosen, tradeoff=tradeoff, seed=seed)
    stats = {
        "solver": chosen,
        "importance": float(assignment.importance),
        "tradeoff": None if assignment.tradeoff is None else float(assignment.tradeoff),
    }
    return _plan_from_mask(assignment.mask, names, scores=scores, stats=stats)
