"""``select_layers``: clients' layer scores in, a budget-keeping plan out."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.optimize import minimize

from f3ocus._checks import check_choice, check_positive_float, close_matches, describe
from f3ocus.selection.assignment import LayerAssignment, ParetoFront
from f3ocus.selection.constraints import (
    as_capacities,
    as_cells,
    as_costs,
    as_coverage,
    as_max_changes,
    as_previous,
    check_feasible,
)
from f3ocus.selection.decision import end_slope, knee_tradeoff, pareto_mask, pick
from f3ocus.selection.heuristics import smart_starts
from f3ocus.selection.inputs import as_budgets, as_score_matrix, normalize_scores
from f3ocus.selection.plans import anchor_plan, repair
from f3ocus.selection.problem import COUPLINGS, SelectionProblem, SelectionPymooProblem
from f3ocus.selection.solvers import SolverOutput, SolverSpec, get_solver

__all__ = ["build_problem", "select_layers", "set_aside", "solve_problem"]


def _check_seed(seed: Any) -> int:
    if seed is None:
        return int(np.random.SeedSequence().entropy % (2**63))
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be None or an int >= 0, got {describe(seed)}.")
    if seed < 0:
        raise ValueError(f"seed must be None or an int >= 0, got {seed}.")
    return int(seed)


def _run_pymoo(
    spec: SolverSpec, selection: SelectionProblem, tradeoff: float | None, rng: np.random.Generator,
    options: dict[str, Any],
) -> SolverOutput:
    termination = options.pop("termination", None)
    polish_final = options.pop("polish", spec.polish)
    smart = options.pop("smart_start", True)
    if not isinstance(smart, (bool, np.bool_)):
        raise TypeError(f"select_layers(..., solver={spec.name!r}, smart_start=...) must be True or False, got "
                        f"{describe(smart)}.")
    smart = bool(smart) and spec.smart_start
    if spec.multi_objective:
        problem = SelectionPymooProblem(selection, None, spec.encoding, target_tradeoff=tradeoff)
    else:
        problem = SelectionPymooProblem(selection, tradeoff, spec.encoding)
    if spec.smart_start:  # the starting step: the declared start plans, at the tradeoff the plan is picked with
        options["starts"] = smart_starts(selection, tradeoff) if smart else None
    algorithm = spec.factory(problem, **options)
    if not isinstance(algorithm, Algorithm):
        raise TypeError(
            f"the factory registered as solver={spec.name!r} returned {describe(algorithm)}; a solver factory "
            "must return a pymoo.core.algorithm.Algorithm (e.g. GA(...), NSGA2(...))."
        )
    res = minimize(problem, algorithm, termination, seed=int(rng.integers(2**31 - 1)), verbose=False)
    parts = [p for p in (res.pop, res.opt) if p is not None and len(p)]
    X = np.concatenate([np.atleast_2d(p.get("X")) for p in parts])  # noqa: N806
    masks = repair(problem.decode(X), selection, rng)
    algo = res.algorithm
    extra: dict[str, Any] = {k: _json_safe(v) for k, v in getattr(algo, "data", {}).items()}
    if polish_final:
        masks, polished = _polish(spec, selection, tradeoff, masks)
        extra.update(polished)
    if spec.smart_start:
        extra["smart_start"] = smart
    return SolverOutput(
        masks, evaluations=int(algo.evaluator.n_eval), generations=max(int(algo.n_gen or 1) - 1, 0), extra=extra
    )


def _json_safe(value: Any) -> Any:
    """Algorithm diagnostics (``algorithm.data``) as plain JSON values for ``LayerAssignment.stats``."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def _polish(
    spec: SolverSpec, selection: SelectionProblem, tradeoff: float | None, masks: np.ndarray
) -> tuple[np.ndarray, dict[str, Any]]:
    """Final local improvement of the plan the solver would report (documented per solver).

    The plan that :mod:`~f3ocus.selection.decision` would pick climbs by steepest ascent over single
    budget-keeping moves and two-client exchanges (:func:`~f3ocus.selection.solvers._moves.polish`) at the
    pick's tradeoff: ``tradeoff``, or for the knee of a front the slope between its ends. The climbed
    plan joins the candidates; ``stats`` records the moves and the value before.
    """
    from f3ocus.selection.solvers._moves import polish

    imp, div = selection.benefit(masks), selection.diversity(masks)
    if tradeoff is None:  # the knee of the solver's own front: the optimum at its end-to-end slope
        t = end_slope(imp, div)
    else:
        t = float(tradeoff)
    best = pick(imp, div, t)
    before = float(imp[best] - t * div[best])
    climbed, moves = polish(selection, t, masks[best])
    extra = {"polish_tradeoff": t, "polish_moves": int(moves), "scalarized_before_polish": before}
    return np.concatenate([masks, climbed[None]]), extra


def solve_problem(
    selection: SelectionProblem,
    *,
    solver: str = "nsga2",
    tradeoff: float | None = None,
    seed: int | None = None,
    certify: bool = False,
    **solver_options: Any,
) -> LayerAssignment:
    """:func:`select_layers` on an already normalized :class:`SelectionProblem`.

    Same arguments as :func:`select_layers` after its input checks (``scores``, ``budget``,
    ``normalize``, ``exact_budget`` are the problem's).
    """
    spec = get_solver(solver)
    check_options(spec, solver_options)
    if tradeoff is not None:
        tradeoff = check_positive_float("tradeoff", tradeoff, allow_zero=True)
    seed = _check_seed(seed)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    used, default_used = tradeoff, False
    if tradeoff is None and not spec.multi_objective and spec.kind == "pymoo":
        used, default_used = knee_tradeoff(selection), True
    options = dict(solver_options)
    if spec.kind == "pymoo":
        out = _run_pymoo(spec, selection, used, rng, options)
    else:
        out = spec.factory(selection, tradeoff=used, rng=rng, **options)
    seconds = time.perf_counter() - start

    masks = np.unique(np.asarray(out.masks, dtype=bool).reshape(-1, selection.K, selection.L), axis=0)
    if not np.all(selection.is_feasible(masks)):  # a bug in a solver, never the user's input
        raise RuntimeError(f"solver {spec.name!r} returned a plan that breaks the budgets or constraints.")
    imp, div = selection.benefit(masks), selection.diversity(masks)
    front = None
    if spec.multi_objective:
        nd = np.flatnonzero(pareto_mask(np.column_stack([-imp, div])))
        nd = nd[np.argsort(-imp[nd], kind="stable")]
        front = ParetoFront(masks[nd], imp[nd], div[nd])
        best = int(nd[pick(imp[nd], div[nd], tradeoff)])
    else:
        best = pick(imp, div, used)

    stats: dict[str, Any] = {
        "solver": spec.name,
        "multi_objective": spec.multi_objective,
        "evaluations": out.evaluations,
        "generations": out.generations,
        "seconds": seconds,
        "seed": seed,
        "exact_budget": selection.exact_budget,
    }
    if default_used:
        stats["default_tradeoff"] = used
    stats.update(out.extra)
    if certify:
        from f3ocus.selection.exact import solve_exact

        t_cert = used if used is not None else knee_tradeoff(selection)
        plan, info = solve_exact(selection, t_cert)
        optimum = float(selection.scalarized(plan, t_cert))
        value = float(selection.scalarized(masks[best], t_cert))
        stats.update(
            certify_tradeoff=t_cert,
            scalarized=value,
            exact_scalarized=optimum,
            gap=(optimum - value) / max(abs(optimum), 1e-300) if optimum != value else 0.0,
            certify_method=info["method"],
        )
        if "bound" in info:
            bound = max(float(info["bound"]), optimum)
            stats.update(bound=bound, gap_to_bound=max(0.0, (bound - value) / max(abs(bound), 1e-300)))
    elif used is not None:
        stats["scalarized"] = float(selection.scalarized(masks[best], used))
    if not selection.plain:
        stats.update(_constraint_stats(selection, masks[best]))
    return LayerAssignment(
        mask=masks[best],
        importance=float(imp[best]) if selection.plain else float(selection.importance(masks[best])),
        diversity=float(div[best]),
        budgets=selection.budgets,
        layer_names=selection.layer_names,
        tradeoff=tradeoff,
        front=front,
        stats=stats,
    )


def _constraint_stats(selection: SelectionProblem, mask: np.ndarray) -> dict[str, Any]:
    """What the constraints did to the returned plan (JSON values)."""
    out: dict[str, Any] = {"coupling": selection.coupling}
    if selection.costs is not None:
        out.update(costs=selection.costs.tolist(), capacities=selection.capacities.tolist(),
                   loads=selection.loads(mask).tolist())
    if selection.previous is not None:
        out.update(changes=int(selection.changes(mask)), churn_penalty=selection.churn_penalty)
    if selection.max_changes is not None:
        out.update(max_changes=selection.max_changes.tolist(), row_changes=selection.row_changes(mask).tolist())
    for name in ("required", "allowed"):
        cells = getattr(selection, name)
        if cells is not None:
            out[f"{name}_cells"] = int(cells.sum())
    if selection.min_coverage is not None:
        out["min_coverage"] = selection.min_coverage.tolist()
    return out


def check_options(spec: SolverSpec, options: dict[str, Any]) -> None:
    """Unknown solver options are an error with a did-you-mean, not silently ignored."""
    valid = spec.option_names
    if valid is None:
        return
    for key in options:
        if key not in valid:
            near = close_matches(key, sorted(valid), n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise TypeError(
                f"select_layers(..., solver={spec.name!r}, {key}=...): {key!r} is not an option of this solver."
                f"{hint} Its options: {', '.join(sorted(valid)) or '(none)'}."
            )


def select_layers(
    scores: Any,
    budget: Any,
    *,
    solver: str = "nsga2",
    tradeoff: float | None = None,
    normalize: str = "sum",
    seed: int | None = None,
    exact_budget: bool | None = None,
    certify: bool = False,
    costs: Any = None,
    required: Any = None,
    required_in_budget: bool = True,
    forbidden: Any = None,
    allowed: Any = None,
    min_coverage: Any = None,
    previous: Any = None,
    churn_penalty: float = 0.0,
    coupling: str = "spread",
    max_changes: Any = None,
    **solver_options: Any,
) -> LayerAssignment:
    r"""Decide which layers each client trains (F³OCUS server step, Saha et al., CVPR 2025).

    The plan $m \in \{0,1\}^{K\times L}$ trades importance $\sum_{kl} m_{kl} S_{kl}$ (maximize) against
    diversity $\frac{1}{L}\sum_l (n_l - \bar n)^2$ (minimize, $n_l$ = clients training layer $l$) under
    per-client budgets and constraints. See the docs pages "The problem" and "Constraints".

    Args:
        scores: a ``(K, L)`` array-like of non-negative layer scores (e.g. NTK eigenvalues), or a sequence
            of ``LayerScores`` / mappings ``layer name -> score``, one per client, aligned by name.
        budget: layers per client: one int for every client or one int per client, each in ``1..L``.
            With ``costs``: each client's capacity in cost units (a number, or one per client).
        solver: a name from :func:`~f3ocus.selection.solvers.available_solvers` (``"nsga2"``, ``"ga"``,
            ``"pso"``, ``"de"``, ``"sa"``, ``"abc"``, ``"aco"``, ``"mopso"``, ``"exact"``, ``"topk"``,
            ``"random"``) or one registered with ``@register_solver``.
        tradeoff: ``None``: multi-objective solvers return the knee of their front, single-objective ones
            optimize at the knee tradeoff $t^\star$ of the exact front (:func:`~f3ocus.selection.decision.knee_tradeoff`).
            A number $t \ge 0$: every solver returns the plan maximizing importance $- t\cdot$diversity.
        normalize: client normalization, ``"sum"`` (the paper's), ``"max"``, ``"rank"`` or ``"none"``.
        seed: makes the run reproducible; ``None`` draws one (recorded in ``stats["seed"]``).
        exact_budget: each client trains exactly ``budget[k]`` layers (``None``: the default, ``True``
            for count budgets) or at most that many. With ``costs`` budgets are capacities (at most).
        certify: also solve exactly and report ``stats["gap"]``, the relative gap of the returned plan's
            importance $- t\cdot$diversity to the exact optimum (at $t^\star$ when ``tradeoff=None``);
            where the exact optimum is a MIP, ``stats["bound"]`` is its proven upper bound and
            ``stats["gap_to_bound"]`` the gap to it.
        costs: ``None`` (count budgets), a length-L array of positive layer costs, or ``"params"`` /
            ``"bytes"`` (from ``LayerScores.num_params``); see :mod:`f3ocus.selection.constraints`.
        required: cells every client trains (e.g. the head): names, indices or bool masks, for every
            client or per client.
        required_in_budget: whether required cells use the budget (default) or come on top of it.
        forbidden: cells a client may not train (same forms as ``required``).
        allowed: the cells a client may train, the complement of ``forbidden`` (pass one of the two).
        min_coverage: each layer trained by at least this many clients (int, per layer, or a mapping).
        previous: last round's ``LayerAssignment`` or ``(K, L)`` mask, for ``churn_penalty``.
        churn_penalty: objective price $\lambda \ge 0$ per cell that differs from ``previous``.
        max_changes: a hard limit on churn: client $k$'s plan differs from row $k$ of ``previous`` in at
            most ``max_changes[k]`` cells (an int for every client or one int per client; needs ``previous``).
        coupling: ``"spread"`` (default, F³OCUS: minimize the variance of the counts) or ``"agree"``
            (Sun et al. 2024: penalize disagreement $\frac{1}{L}\sum_l n_l (K - n_l)$).
        **solver_options: the solver's own options (e.g. ``pop_size``, ``n_gen``), checked against the
            ones it declares, and ``termination`` for pymoo solvers.

    Returns:
        A :class:`~f3ocus.selection.assignment.LayerAssignment`.

    Raises:
        TypeError, ValueError: an argument is malformed, an option unknown, or the constraints cannot be
            met; the message names the argument and says why.

    Example:
        >>> import numpy as np
        >>> scores = np.array([[4.0, 1.0, 1.0], [3.0, 2.0, 1.0], [5.0, 1.0, 4.0]])
        >>> plan = select_layers(scores, 1, solver="exact", tradeoff=0.0)
        >>> plan.layers
        [[0], [0], [0]]
        >>> select_layers(scores, 1, solver="exact", tradeoff=10.0).counts.tolist()
        [1, 1, 1]
        >>> select_layers(scores, 1, solver="exact", tradeoff=0.0, forbidden=[[], [0], []]).layers
        [[0], [1], [0]]
    """
    raw, names = as_score_matrix(scores)
    if exact_budget is not None and not isinstance(exact_budget, (bool, np.bool_)):
        raise TypeError(f"exact_budget must be True or False (or None for the default), got {describe(exact_budget)}.")
    normalized = normalize_scores(raw, normalize)
    if tradeoff is not None:
        tradeoff = check_positive_float("tradeoff", tradeoff, allow_zero=True)
        if not math.isfinite(tradeoff):  # pragma: no cover - check_positive_float rejects it
            raise ValueError(f"tradeoff must be finite, got {tradeoff}.")
    selection = build_problem(
        normalized, names, budget, scores=scores, exact_budget=exact_budget, costs=costs, required=required,
        required_in_budget=required_in_budget, forbidden=forbidden, allowed=allowed, min_coverage=min_coverage,
        previous=previous, churn_penalty=churn_penalty, coupling=coupling, max_changes=max_changes,
    )
    reduced, fixed = set_aside(selection)
    result = solve_problem(
        reduced, solver=solver, tradeoff=tradeoff, seed=seed, certify=certify, **solver_options
    )
    stats = dict(result.stats, normalize=normalize)
    mask, front, importance = result.mask, result.front, result.importance
    if fixed.size:  # put the layers every client trains back
        keep = np.setdiff1d(np.arange(selection.L), fixed)
        const = float(selection.scores[:, fixed].sum())

        def expand(m):
            full = np.ones((*m.shape[:-1], selection.L), dtype=bool)
            full[..., keep] = m
            return full

        mask, importance = expand(mask), importance + const
        if front is not None:
            front = ParetoFront(expand(front.masks), front.importance + const, front.diversity)
        stats["set_aside"] = [selection.layer_names[j] if selection.layer_names else int(j) for j in fixed]
    return LayerAssignment(
        mask=mask,
        importance=importance,
        diversity=result.diversity,
        budgets=selection.budgets if fixed.size else result.budgets,
        layer_names=selection.layer_names,
        tradeoff=result.tradeoff,
        front=front,
        stats=stats,
    )


def set_aside(selection: SelectionProblem) -> tuple[SelectionProblem, np.ndarray]:
    r"""The problem without the layers every client must train, and those layers' columns.

    A layer required for every client leaves nothing to decide and nothing to balance: it adds a
    constant to the importance, and counting its $n_l = K$ in the variance would only push clients to
    train more layers to lower $\bar n$'s distance to $K$. So it is set aside: the plan is chosen on the other
    layers (budgets and capacities less its share) and the layer is put back in every row; the
    reported diversity is that of the other layers. Nothing is set aside when a budget would reach 0.
    """
    if selection.required is None:
        return selection, np.zeros(0, np.int64)
    fixed = np.flatnonzero(selection.required.all(axis=0))
    if fixed.size == 0 or fixed.size == selection.L:
        return selection, np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(selection.L), fixed)
    budgets, capacities = selection.budgets, selection.capacities
    if selection.costs is None:
        budgets = budgets - fixed.size
        if budgets.min() < 1:
            return selection, np.zeros(0, np.int64)
    else:
        budgets = np.full(selection.K, keep.size, dtype=np.int64)
        capacities = capacities - selection.costs[fixed].sum()
    budgets = np.minimum(budgets, keep.size) if not selection.exact_budget else budgets

    def cols(a):
        return None if a is None else a[..., keep]

    limit = selection.max_changes
    if limit is not None:  # the set-aside columns are trained: each one previous lacks is a change already
        limit = limit - (~selection.previous[:, fixed]).sum(axis=1)

    required = cols(selection.required)
    reduced = SelectionProblem(
        selection.scores[:, keep], budgets, selection.exact_budget,
        None if selection.layer_names is None else tuple(np.asarray(selection.layer_names)[keep]),
        costs=cols(selection.costs), capacities=capacities, required=required if required.any() else None,
        allowed=cols(selection.allowed), min_coverage=cols(selection.min_coverage),
        previous=cols(selection.previous), churn_penalty=selection.churn_penalty, coupling=selection.coupling,
        max_changes=limit,
    )
    return reduced, fixed


def build_problem(
    normalized: np.ndarray, names, budget: Any, *, scores: Any = None, exact_budget: bool | None = None,
    costs: Any = None, required: Any = None, required_in_budget: bool = True, forbidden: Any = None,
    allowed: Any = None, min_coverage: Any = None, previous: Any = None, churn_penalty: float = 0.0,
    coupling: str = "spread", max_changes: Any = None,
) -> SelectionProblem:
    """The :class:`SelectionProblem` of :func:`select_layers`'s arguments, every one checked.

    Raises:
        ValueError: the constraints cannot be met (no plan keeps all of them); the message says why.
    """
    K, L = normalized.shape  # noqa: N806
    check_choice("coupling", coupling, COUPLINGS)
    if not isinstance(required_in_budget, (bool, np.bool_)):
        raise TypeError(f"required_in_budget must be True or False, got {describe(required_in_budget)}.")
    cost = as_costs(costs, scores, L)
    if forbidden is not None and allowed is not None:
        raise ValueError("pass forbidden= or allowed=, not both (allowed is the complement of forbidden).")
    req = as_cells("required", required, K, L, names)
    ok = as_cells("allowed", allowed, K, L, names)
    banned = as_cells("forbidden", forbidden, K, L, names)
    if banned is not None:
        ok = ~banned
    coverage = as_coverage(min_coverage, K, L, names)
    prev = as_previous(previous, K, L)
    churn = check_positive_float("churn_penalty", churn_penalty, allow_zero=True)
    if churn > 0 and prev is None:
        raise ValueError(f"churn_penalty={churn:g} prices changes against previous=, but previous is None.")
    limit = as_max_changes(max_changes, prev, K, req, ok)
    if req is not None and ok is not None and np.any(req & ~ok):
        check_feasible(np.zeros(K, np.int64), True, None, None, req, ok, None, names)
    if cost is None:
        if exact_budget is None:
            exact_budget = True
        budgets = as_budgets(budget, K, L)
        if req is not None and not required_in_budget:
            budgets = budgets + req.sum(axis=1)
            over = np.flatnonzero(budgets > L)
            if over.size:
                k = int(over[0])
                raise ValueError(
                    f"client {k}: budget {int(budgets[k] - req[k].sum())} plus {int(req[k].sum())} required "
                    f"layers exceeds L={L}."
                )
        capacities = None
        check_feasible(budgets, bool(exact_budget), None, None, req, ok, coverage, names)
    else:
        if exact_budget:
            raise ValueError(
                "with costs the budget is a capacity that a client fills at most; exact_budget=True does not "
                "apply (leave it None)."
            )
        exact_budget = False
        capacities = as_capacities(budget, K)
        if req is not None and not required_in_budget:
            capacities = capacities + req @ cost
        budgets = np.full(K, L, dtype=np.int64)
        check_feasible(budgets, False, cost, capacities, req, ok, coverage, names)
    selection = SelectionProblem(
        normalized, budgets, bool(exact_budget), names, costs=cost, capacities=capacities, required=req,
        allowed=ok, min_coverage=coverage, previous=prev, churn_penalty=churn, coupling=coupling, max_changes=limit,
    )
    if (coverage is not None and coverage.any()) or limit is not None:
        anchor_plan(selection)  # raises a ValueError that says why when no plan meets the constraints
    return selection
