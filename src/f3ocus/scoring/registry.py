"""The table of layer scores: one entry per score name, extended with :func:`register_score`.

A score is a function ``fn(ctx, **options) -> Mapping[str, float]`` that receives a
:class:`~f3ocus.scoring.context.ScoreContext` (the model, the batch, the resolved layers and cached
building blocks: the batch-loss gradient, per-sample loss gradients, ...) and returns one real number per
layer, in ``ctx.layers`` order. :func:`f3ocus.layer_scores` validates the arguments, builds the context,
calls the function with the model's state preserved, and wraps the result in a
:class:`~f3ocus.LayerScores`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from f3ocus import layer_scores, register_score
    >>> @register_score("bias_norm", needs="nothing", reduction=None)
    ... def bias_norm(ctx):
    ...     params = ctx.parameters()
    ...     return {layer: sum(float(params[n].norm()) for n in names if n.endswith("bias"))
    ...             for layer, names in ctx.layers.items()}
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    >>> list(layer_scores(model, None, "bias_norm"))
    ['0', '2']
    >>> unregister_score("bias_norm")
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from f3ocus._checks import check_choice, close_matches

__all__ = [
    "NEEDS",
    "REDUCTIONS",
    "ScoreSpec",
    "available_scores",
    "get_score",
    "register_score",
    "unregister_score",
]

#: What a score needs: nothing (the parameters only), the batch (its inputs), or a loss (``loss_fn`` and
#: ``targets`` on top of the batch).
NEEDS = ("nothing", "data", "loss")
#: How a per-parameter quantity is aggregated over a layer's trainable scalars.
REDUCTIONS = ("sum", "mean")


@dataclass(frozen=True)
class ScoreSpec:
    """One entry of the score table.

    Attributes:
        name: The registered name (``layer_scores(..., score=name)``).
        fn: ``fn(ctx, **options) -> Mapping[layer, float]``.
        needs: ``"nothing"``, ``"data"`` or ``"loss"`` (see :data:`NEEDS`).
        reduction: The default aggregation over a layer's scalars, ``"sum"`` or ``"mean"``; ``None`` for a
            score that has no per-parameter form (then ``reduction=`` is refused).
        signed: Whether the score can be negative (then it needs a transform before
            :func:`f3ocus.select_layers`, see :func:`f3ocus.scoring.make_nonnegative`).
        min_samples: The fewest samples the score is defined for.
    """

    name: str
    fn: Callable[..., Mapping[str, Any]]
    needs: str = "loss"
    reduction: str | None = "sum"
    signed: bool = False
    min_samples: int = 1


_SCORES: dict[str, ScoreSpec] = {}
_BUILTIN_ORDER = ("ntk", "grad_norm", "rgn", "snr", "fisher", "snip", "grasp", "synflow", "magnitude", "random", "gradflow")


def register_score(
    name: str,
    *,
    needs: str = "loss",
    reduction: str | None = "sum",
    signed: bool = False,
    min_samples: int = 1,
) -> Callable[[Callable[..., Mapping[str, Any]]], Callable[..., Mapping[str, Any]]]:
    """Register a layer score under ``name`` (a decorator; returns the function unchanged).

    Args:
        name: The name users pass as ``score=`` to :func:`f3ocus.layer_scores` (an identifier string).
            Registering a name again replaces the earlier entry.
        needs: ``"loss"`` (``loss_fn`` and ``targets`` are required), ``"data"`` (a batch) or
            ``"nothing"`` (the parameters only; ``batch`` may be ``None``).
        reduction: The default aggregation over a layer's scalars (``"sum"`` or ``"mean"``); the function
            receives the one in force as ``ctx.reduction``. ``None``: the score has no per-parameter form.
        signed: ``True`` when the score may be negative.
        min_samples: The fewest samples in the batch for which the score is defined.
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register_score(name={name!r}): use a non-empty identifier string, e.g. 'my_score'.")
    check_choice("needs", needs, NEEDS)
    if reduction is not None:
        check_choice("reduction", reduction, REDUCTIONS)

    def decorator(fn: Callable[..., Mapping[str, Any]]) -> Callable[..., Mapping[str, Any]]:
        if not callable(fn):
            raise TypeError(f"register_score({name!r}) decorates a function fn(ctx, **options), got {fn!r}.")
        _SCORES[name] = ScoreSpec(name, fn, needs, reduction, bool(signed), int(min_samples))
        return fn

    return decorator


def unregister_score(name: str) -> None:
    """Remove ``name`` from the table (built-in scores come back when :mod:`f3ocus.scoring` is reloaded)."""
    _SCORES.pop(name, None)


def available_scores() -> list[str]:
    """Names usable as ``layer_scores(..., score=...)``: the built-ins, then the others in registration order."""
    builtins = [name for name in _BUILTIN_ORDER if name in _SCORES]
    return builtins + [name for name in _SCORES if name not in _BUILTIN_ORDER]


def get_score(name: Any) -> ScoreSpec:
    """The :class:`ScoreSpec` registered as ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message suggests the closest name and lists all.
    """
    if not isinstance(name, str) or name not in _SCORES:
        near = close_matches(str(name), _SCORES, n=1) if isinstance(name, str) else []
        hint = f" Did you mean {near[0]!r}?" if near else ""
        valid = ", ".join(map(repr, available_scores()))
        raise ValueError(f"score={name!r} is not a registered layer score.{hint} Use one of: {valid}.")
    return _SCORES[name]
