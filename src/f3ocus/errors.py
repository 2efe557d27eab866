"""Error types raised by f3ocus.

User mistakes raise the built-in ``ValueError`` / ``TypeError`` (from the helpers in
``f3ocus._checks``); the types here are for conditions that are not argument errors.
"""

from __future__ import annotations

__all__ = ["MissingExtraError", "NotConvergedError"]


class MissingExtraError(ImportError):
    """An optional dependency is missing; the message names the extra that installs it."""


class NotConvergedError(RuntimeError):
    """An iterative solver stopped before reaching its tolerance (raised only with ``throw=True``)."""
