"""The table of scoring methods: results, costs and the registry.

A scoring method is a function ``fn(problem, *, tol, maxiter, generator, chunk_size, max_memory,
**options) -> MethodResult`` that returns $\\lambda_{\\max}(\\Theta_l)$ for every layer of an
:class:`~f3ocus.ntk.problem.NTKProblem`. Methods are registered by name with :func:`register_method`,
optionally with a cost model that ``method="auto"`` uses to pick the cheapest method whose memory fits.

Example::

    from f3ocus.ntk.registry import Cost, LayerEig, MethodResult, register_method

    @register_method("mine", cost=lambda problem: Cost(flops=1e9, memory=1e6), options=("depth",))
    def mine(problem, *, tol, maxiter, generator, chunk_size, max_memory, depth=2):
        ...
        return MethodResult(eigs={...}, backward_passes=..., matvecs=0, extra={})
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from f3ocus._checks import close_matches

if TYPE_CHECKING:
    from f3ocus.ntk.problem import NTKProblem

__all__ = [
    # results
    "LayerEig",
    "MethodResult",
    # registry
    "Cost",
    "MethodEntry",
    "register_method",
    "get_method",
    "available_methods",
    "check_options",
]

STANDARD = ("tol", "maxiter", "generator", "chunk_size", "max_memory")


@dataclass(frozen=True)
class LayerEig:
    """The principal eigenpair estimate of one layer kernel $\\Theta_l$.

    Attributes:
        value: $\\lambda_{\\max}(\\Theta_l)$ (0.0 for an all-zero Jacobian).
        residual: $\\lVert \\Theta_l v - \\lambda v \\rVert / \\max(\\lambda, \\text{tiny})$ of the
            returned Ritz pair (0.0 for a dense eigendecomposition).
        iterations: Iterations of an iterative solver (0 for a dense eigendecomposition).
        converged: Whether the solver reached its tolerance.
        error: The solver's estimate of the relative error $(\\lambda_{\\max} - \\text{value}) / \\text{value}$
            (0.0 for a dense eigendecomposition; see :mod:`f3ocus.ntk.linalg`).
    """

    value: float
    residual: float = 0.0
    iterations: int = 0
    converged: bool = True
    error: float = 0.0


@dataclass(frozen=True)
class MethodResult:
    """What a scoring method returns.

    Attributes:
        eigs: One :class:`LayerEig` per layer, in ``problem.layers`` order.
        backward_passes: vjp/backward calls through the model (a vmapped call counts its batch size).
        matvecs: Kernel-vector products $v \\mapsto \\Theta_l v$ (0 for Gram-based methods).
        extra: Anything else worth reporting (chunk sizes, the path chosen per layer, ...).
    """

    eigs: dict[str, LayerEig]
    backward_passes: int = 0
    matvecs: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """A method's estimated cost on one problem.

    Attributes:
        flops: Estimated work (floating-point operations; only the ordering between methods matters).
        memory: Estimated peak extra memory in bytes (compared with ``max_memory``).
    """

    flops: float
    memory: float


@dataclass(frozen=True)
class MethodEntry:
    """A registered method: its name, the function, the optional cost model and its declared options.

    ``options`` is the tuple of extra keyword names the method takes, or ``None`` for a method that
    takes any (its function has ``**kwargs``). ``coupled``: whether the method is exact also when a
    sample's outputs depend on other samples (:mod:`f3ocus.ntk.coupling`).
    """

    name: str
    fn: Callable[..., MethodResult]
    cost: Callable[..., Cost] | None = None
    options: tuple[str, ...] | None = ()
    coupled: bool = False

    def __call__(self, problem: NTKProblem, **options: Any) -> MethodResult:
        return self.fn(problem, **options)

    def estimate(self, problem: NTKProblem, max_memory: int | None = None) -> Cost | None:
        """The cost model's estimate, given ``max_memory`` when the model takes it (``None``: no model)."""
        if self.cost is None:
            return None
        try:
            takes_budget = "max_memory" in inspect.signature(self.cost).parameters
        except (TypeError, ValueError):  # a callable without a signature
            takes_budget = False
        return self.cost(problem, max_memory=max_memory) if takes_budget else self.cost(problem)


_METHODS: dict[str, MethodEntry] = {}


def _declared(fn: Callable[..., Any]) -> tuple[str, ...] | None:
    """The keyword options of ``fn`` beyond the standard ones (``None`` if it takes ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in STANDARD
    )


def register_method(
    name: str,
    *,
    cost: Callable[..., Cost] | None = None,
    options: tuple[str, ...] | None = None,
    coupled: bool = False,
) -> Callable[[Callable[..., MethodResult]], Callable[..., MethodResult]]:
    """Register a scoring method under ``name`` (a decorator; returns the function unchanged).

    Args:
        name: The name users pass as ``method=`` to :func:`f3ocus.ntk_layer_importance`.
        cost: ``problem -> Cost``, or ``(problem, *, max_memory) -> Cost`` for a method whose cost
            depends on the memory budget (e.g. one more pass per layer group); methods without one
            are never chosen by ``method="auto"``.
        options: The extra keyword options the method takes. ``None``: read them from the keyword-only
            parameters of the function (beyond the standard ones); a function with ``**kwargs`` takes any.
            Options a method does not take are refused before any work (:func:`check_options`).
        coupled: ``True`` if the method differentiates the whole batch, so that it is exact also for
            outputs that couple samples; methods without it are refused on such problems.

    The decorated function is called as ``fn(problem, *, tol, maxiter, generator, chunk_size,
    max_memory, **options)`` and returns a :class:`MethodResult`. Registering a name twice replaces
    the earlier entry (so a module can be reloaded).
    """
    if not isinstance(name, str) or not name or name == "auto":
        raise ValueError(f"register_method(name={name!r}): use a non-empty string other than 'auto'.")

    def decorator(fn: Callable[..., MethodResult]) -> Callable[..., MethodResult]:
        declared = _declared(fn) if options is None else tuple(options)
        _METHODS[name] = MethodEntry(name=name, fn=fn, cost=cost, options=declared, coupled=coupled)
        return fn

    return decorator


def available_methods() -> list[str]:
    """Names of the registered scoring methods (``"auto"`` is always accepted on top of these)."""
    return list(_METHODS)


def get_method(name: str) -> MethodEntry:
    """The registered :class:`MethodEntry` called ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names.
    """
    if name not in _METHODS:
        near = close_matches(str(name), _METHODS)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        valid = ", ".join(repr(m) for m in ["auto", *_METHODS])
        raise ValueError(f"method={name!r} is not a registered scoring method.{hint} Use one of: {valid}.")
    return _METHODS[name]


def _takes(entry: MethodEntry, given: set[str]) -> bool:
    return entry.options is None or given <= set(entry.options)


def check_options(method: str, options: dict[str, Any]) -> list[str]:
    """Check ``options`` against the methods before any work; return the methods that may run them.

    For a named method, every option must be one it declares. For ``method="auto"``, the candidates
    are the methods with a cost model that take every given option.

    Raises:
        TypeError: an option the named method does not take, or (``"auto"``) that no candidate takes;
            the message lists the method's options, the closest name and which methods take it.
    """
    given = set(options)
    names = [method] if method != "auto" else [m for m in _METHODS if _METHODS[m].cost is not None]
    fits = [m for m in names if _takes(_METHODS[m], given)]
    if fits:
        return fits
    if method == "auto":
        bad = sorted(given)
        head = f"method='auto' can choose no method that takes all of the options {bad}"
        valid: list[str] = sorted({o for m in names for o in (_METHODS[m].options or ())})
    else:
        valid = list(_METHODS[method].options or ())
        bad = sorted(given - set(valid))
        head = f"method={method!r} takes no options {bad}"
        head += f" (its options: {valid})" if valid else " (it has none)"
    parts = []
    for option in bad:
        takers = [m for m, e in _METHODS.items() if e.options is not None and option in e.options]
        if takers:
            parts.append(f"{option!r} is an option of method {' / '.join(map(repr, takers))}")
            continue
        known = sorted({o for e in _METHODS.values() for o in (e.options or ())})
        near = close_matches(option, [*known, *STANDARD, "seed", "throw", "dtype", "kernel", "layers"])
        parts.append(f"{option!r} is no method's option" + (f": did you mean {near[0]!r}?" if near else ""))
    raise TypeError(f"{head}; {'; '.join(parts)}. Drop the option or pass method= one that takes it.")
