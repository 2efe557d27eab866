"""Argument checks with call-site wording.

Every helper raises ``ValueError`` or ``TypeError`` with a message that names the argument as the
user wrote it, shows what arrived, and says what to do instead.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from f3ocus.errors import MissingExtraError

__all__ = [
    "check_choice",
    "check_int",
    "check_positive_float",
    "close_matches",
    "describe",
    "require_extra",
]


def describe(value: Any, limit: int = 80) -> str:
    """A short, readable description of ``value`` for error messages."""
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return f"{type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{text} ({type(value).__name__})"


def close_matches(name: str, valid: Iterable[str], n: int = 5) -> list[str]:
    """Valid names close to ``name`` (difflib), for 'did you mean' hints."""
    return difflib.get_close_matches(str(name), list(valid), n=n, cutoff=0.5)


def check_choice(argname: str, value: Any, choices: Iterable[str]) -> str:
    """Check that ``value`` is one of ``choices``; list them (and close matches) if not."""
    choices = list(choices)
    if not isinstance(value, str) or value not in choices:
        hint = ""
        if isinstance(value, str):
            near = close_matches(value, choices, n=3)
            if near:
                hint = f" Did you mean {near[0]!r}?"
        raise ValueError(
            f"{argname}={value!r} is not a valid choice.{hint} Use one of: {', '.join(map(repr, choices))}."
        )
    return value


def check_int(argname: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Check that ``value`` is an integer (bool excluded) in ``[low, high]``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{argname} must be an int, got {describe(value)}.")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{argname} must lie in [{lo}, {hi}], got {value}.")
    return value


def check_positive_float(argname: str, value: Any, *, allow_zero: bool = False) -> float:
    """Check that ``value`` is a finite real number > 0 (or >= 0 with ``allow_zero``)."""
    import math
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{argname} must be a real number, got {describe(value)}.")
    value = float(value)
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{argname} must be a finite number {bound}, got {value!r}.")
    return value


def require_extra(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        what = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{module!r} is needed{what} but is not installed. "
            f"Install it with: pip install 'f3ocus[{extra}]'"
        ) from err
