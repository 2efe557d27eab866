"""One name table for every layer-selection solver.

Two kinds of entries share the table:

- **pymoo solvers** (the public form, :func:`register_solver`): a factory
  ``factory(problem, **options) -> pymoo.core.algorithm.Algorithm`` receives a
  :class:`~f3ocus.selection.problem.SelectionPymooProblem` and returns an algorithm.
  :func:`~f3ocus.selection.select_layers` runs it with ``pymoo.optimize.minimize(problem, algorithm,
  termination, seed=...)``, repairs every plan of the final population to the budgets
  (:func:`~f3ocus.selection.operators.repair`) and picks the reported plan from them
  (:mod:`f3ocus.selection.decision`). A single-objective factory (``multi_objective=False``) gets a problem
  with one objective, $-(\\text{importance} - t\\cdot\\text{diversity})$; a multi-objective factory gets
  the two objectives $[-\\text{importance}, \\text{diversity}]$ and the plan is picked from its front.
  ``encoding="keys"`` gives the factory a continuous problem in $[0,1]^{KL}$ decoded by random keys
  (:func:`~f3ocus.selection.problem.decode_keys`).
- **direct solvers** (internal form, used by ``"exact"``, ``"topk"`` and ``"random"``): a function
  ``solve(selection, *, tradeoff, rng, **options) -> SolverOutput`` that works on the
  :class:`~f3ocus.selection.problem.SelectionProblem` itself and returns feasible plans.

Built-in solvers are imported lazily, on first use, from ``f3ocus.selection.solvers.<name>``; a
built-in whose module is not installed is not listed by :func:`available_solvers`.

Example:
    >>> from pymoo.algorithms.soo.nonconvex.ga import GA
    >>> from f3ocus.selection.operators import BudgetCrossover, BudgetMutation, BudgetSampling
    >>> @register_solver("my_ga")
    ... def my_ga(problem, pop_size=40, n_gen=50):
    ...     return GA(pop_size=pop_size, sampling=BudgetSampling(), crossover=BudgetCrossover(),
    ...               mutation=BudgetMutation(), eliminate_duplicates=True, termination=("n_gen", n_gen))
    >>> "my_ga" in available_solvers()
    True
    >>> unregister_solver("my_ga")
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

from f3ocus._checks import close_matches

__all__ = [
    "SolverOutput",
    "SolverSpec",
    "available_solvers",
    "get_solver",
    "register_solver",
    "unregister_solver",
]

#: Built-in solver name -> module that registers it on import.
BUILTIN_SOLVERS: Mapping[str, str] = MappingProxyType(
    {
        name: f"f3ocus.selection.solvers.{module}"
        for name, module in {
            "nsga2": "nsga2",
            "ga": "ga",
            "pso": "pso",
            "de": "de",
            "sa": "sa",
            "abc": "abc",
            "aco": "aco",
            "mopso": "mopso",
            "exact": "exact",
            "topk": "topk",
            "random": "random",
        }.items()
    }
)


@dataclass(frozen=True)
class SolverSpec:
    """One entry of the solver table.

    Attributes:
        name: the registered name.
        factory: the pymoo factory (``kind="pymoo"``) or the direct ``solve`` function.
        multi_objective: whether the solver searches the two-objective problem (its plan is then picked
            from the front it returns).
        kind: ``"pymoo"`` or ``"direct"``.
        encoding: ``"binary"`` or ``"keys"`` (pymoo solvers only).
        meta: free-form metadata given at registration (shown in reports).
        options: the option names the solver accepts (``None``: not declared, anything passes).
        polish: whether the finishing step climbs the reported plan by default (users pass ``polish=``).
        smart_start: whether the starting step hands the factory start plans as ``starts=`` (users pass
            ``smart_start=False`` to get ``starts=None``).
    """

    name: str
    factory: Callable[..., Any]
    multi_objective: bool = False
    kind: str = "pymoo"
    encoding: str = "binary"
    meta: Mapping[str, Any] = field(default_factory=dict)
    options: frozenset[str] | None = None
    polish: bool = False
    smart_start: bool = False

    @property
    def option_names(self) -> frozenset[str] | None:
        """Options ``select_layers`` accepts for this solver (``termination`` and ``polish`` for pymoo ones,
        ``smart_start`` where it is declared)."""
        if self.options is None:
            return None
        extra = {"termination", "polish"} if self.kind == "pymoo" else set()
        return self.options | extra | ({"smart_start"} if self.smart_start else set())


#: Parameters a solver receives from ``select_layers`` itself, never as user options.
_INTERNAL = {"problem", "selection", "tradeoff", "rng", "self", "output", "sampling", "kwargs", "options", "starts"}


def _declared_options(factory: Callable[..., Any], options: Any) -> frozenset[str] | None:
    """Option names from ``options`` (a class, a callable or names) or, by default, the factory's signature.

    A signature with ``**kwargs`` and nothing declared means "not declared" (``None``).
    """
    if options is not None and not callable(options):
        return frozenset(str(o) for o in options)
    target = factory if options is None else options
    target = target.__init__ if isinstance(target, type) else target
    params = list(inspect.signature(target).parameters.values())
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - _INTERNAL
    if options is None and any(p.kind == p.VAR_KEYWORD for p in params):
        return None
    if params and options is None and params[0].kind == params[0].POSITIONAL_OR_KEYWORD:
        names.discard(params[0].name)  # the problem argument, whatever its name
    return frozenset(names)


@dataclass
class SolverOutput:
    """What a direct solver returns.

    Attributes:
        masks: ``(P, K, L)`` bool feasible candidate plans (``P >= 1``).
        evaluations: number of plan evaluations (or solves) spent.
        generations: number of iterations (``0`` where the notion does not apply).
        extra: additional statistics merged into ``LayerAssignment.stats``.
    """

    masks: np.ndarray
    evaluations: int = 0
    generations: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, SolverSpec] = {}


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(
            f"register_solver(name={name!r}): the name must be a non-empty identifier string, "
            "e.g. 'my_solver'."
        )
    return name


def register_solver(
    name: str, *, multi_objective: bool = False, encoding: str = "binary", options: Any = None, polish: bool = False,
    smart_start: bool = False, **meta: Any
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a pymoo algorithm factory under ``name`` (a decorator).

    Args:
        name: the solver name for ``select_layers(..., solver=name)``. Registering an existing name
            replaces it.
        multi_objective: ``True`` when the algorithm is multi-objective (e.g. NSGA-II): it then gets the
            two-objective problem and the plan is picked from its final non-dominated set.
        encoding: ``"binary"`` (``x`` is the flattened plan) or ``"keys"`` (continuous random keys, one
            per client and layer); see :class:`~f3ocus.selection.problem.SelectionPymooProblem`.
        options: the options users may pass: ``None`` reads them from the factory's signature (a factory
            with ``**kwargs`` then accepts anything), a class reads its ``__init__``, or a list of names.
            ``select_layers`` raises a ``TypeError`` with a did-you-mean for any other option.
        polish: the finishing step of ``select_layers`` climbs the plan it reports by single moves and
            two-client exchanges (users turn it off with ``polish=False``).
        smart_start: the starting step of ``select_layers`` computes start plans (the client-only plan
            and greedy plans around the tradeoff, :func:`~f3ocus.selection.heuristics.smart_starts`) and
            passes them to the factory as ``starts=`` (a ``(P, K, L)`` bool array, or ``None`` when the
            user passes ``smart_start=False``); the factory seeds its initial population with them.
        **meta: free-form metadata stored on the :class:`SolverSpec`.

    Returns:
        A decorator that registers ``factory(problem, **options) -> pymoo Algorithm`` and returns it
        unchanged. The factory must return a ``pymoo.core.algorithm.Algorithm``; anything else is a
        ``TypeError`` when the solver runs.
    """
    _check_name(name)
    if encoding not in ("binary", "keys"):
        raise ValueError(f"register_solver(encoding={encoding!r}): use 'binary' or 'keys'.")

    def decorator(factory: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(factory):
            raise TypeError(f"register_solver({name!r}) decorates a callable factory, got {factory!r}.")
        declared = _declared_options(factory, options)
        _REGISTRY[name] = SolverSpec(
            name, factory, bool(multi_objective), "pymoo", encoding, MappingProxyType(dict(meta)), declared,
            polish=bool(polish), smart_start=bool(smart_start),
        )
        return factory

    return decorator


def _register_direct(
    name: str, *, multi_objective: bool = False, **meta: Any
) -> Callable[[Callable[..., SolverOutput]], Callable[..., SolverOutput]]:
    """Register a direct solver ``solve(selection, *, tradeoff, rng, **options) -> SolverOutput``."""
    _check_name(name)

    def decorator(solve: Callable[..., SolverOutput]) -> Callable[..., SolverOutput]:
        _REGISTRY[name] = SolverSpec(
            name, solve, bool(multi_objective), "direct", "binary", MappingProxyType(dict(meta)),
            _declared_options(solve, None),
        )
        return solve

    return decorator


def unregister_solver(name: str) -> None:
    """Remove ``name`` from the table (a built-in comes back on its next use)."""
    _REGISTRY.pop(name, None)


def _builtin_installed(name: str) -> bool:
    return importlib.util.find_spec(BUILTIN_SOLVERS[name]) is not None


def available_solvers() -> list[str]:
    """Names usable as ``select_layers(..., solver=...)``: the built-ins, then user-registered ones."""
    builtins = [name for name in BUILTIN_SOLVERS if name in _REGISTRY or _builtin_installed(name)]
    return builtins + sorted(name for name in _REGISTRY if name not in BUILTIN_SOLVERS)


def get_solver(name: Any, argname: str = "solver") -> SolverSpec:
    """The :class:`SolverSpec` for ``name``, importing a built-in on first use.

    Raises:
        ValueError: ``name`` is not a known solver; the message lists the valid names.
    """
    if isinstance(name, str) and name not in _REGISTRY and name in BUILTIN_SOLVERS:
        if _builtin_installed(name):
            importlib.import_module(BUILTIN_SOLVERS[name])
    if not isinstance(name, str) or name not in _REGISTRY:
        valid = available_solvers()
        near = close_matches(name, valid, n=1) if isinstance(name, str) else []
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise ValueError(
            f"{argname}={name!r} is not a known solver.{hint} Use one of: {', '.join(map(repr, valid))}, "
            "or register your own with @f3ocus.register_solver(name)."
        )
    return _REGISTRY[name]
