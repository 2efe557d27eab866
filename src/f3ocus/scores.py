r"""LayerScores: one client's importance score per layer.

The scores are the principal eigenvalues $\lambda_l = \lambda_{\max}(\Theta_l)$ of the layer-wise
empirical NTK (see :func:`f3ocus.ntk_layer_importance`), in model order. Before selection, each client's
scores are normalized (F³OCUS, Saha et al., CVPR 2025, uses the share $S_l = \lambda_l / \sum_{l'} \lambda_{l'}$).
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from f3ocus._checks import check_choice, describe

__all__ = ["LayerScores", "NORMALIZATIONS"]

NORMALIZATIONS = ("sum", "max", "rank", "none")
_FORMAT = "f3ocus.LayerScores/1"


class LayerScores(Mapping[str, float]):
    """An immutable mapping ``layer name -> score`` (in model order) with parameter counts and diagnostics.

    Args:
        scores: Layer name -> finite real score, in model order.
        num_params: Layer name -> number of trainable scalars (same keys as ``scores``), or ``None``.
        stats: JSON-serializable diagnostics (``ntk_layer_importance`` records the method, kernel,
            backward passes, matvecs, residuals, seconds, peak memory, ...).

    Example:
        >>> s = LayerScores({"a": 3.0, "b": 1.0})
        >>> s.normalized("sum")["a"]
        0.75
        >>> LayerScores.from_json(s.to_json()) == s
        True
    """

    __slots__ = ("_scores", "_num_params", "_stats")

    def __init__(
        self,
        scores: Mapping[str, float],
        num_params: Mapping[str, int] | None = None,
        stats: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(scores, Mapping):
            raise TypeError(f"scores must be a mapping layer name -> float, got {describe(scores)}.")
        clean: dict[str, float] = {}
        for key, value in scores.items():
            if not isinstance(key, str):
                raise TypeError(f"scores keys must be str layer names, got {describe(key)}.")
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"scores[{key!r}] must be a finite real number, got {describe(value)}.")
            clean[key] = float(value)
        counts: dict[str, int] | None = None
        if num_params is not None:
            if set(num_params) != set(clean):
                raise ValueError(
                    "num_params must have the same layer names as scores; "
                    f"missing {sorted(set(clean) - set(num_params))}, extra {sorted(set(num_params) - set(clean))}."
                )
            bad = [k for k, v in num_params.items() if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0]
            if bad:
                raise ValueError(f"num_params[{bad[0]!r}] must be a non-negative int, got {num_params[bad[0]]!r}.")
            counts = {k: int(num_params[k]) for k in clean}
        stats = dict(stats or {})
        try:
            json.dumps(stats)
        except (TypeError, ValueError) as err:
            raise ValueError(f"stats must be JSON-serializable: {err}") from err
        object.__setattr__(self, "_scores", clean)
        object.__setattr__(self, "_num_params", counts)
        object.__setattr__(self, "_stats", stats)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("LayerScores is immutable; build a new one instead.")

    # -- Mapping -------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> float:
        return self._scores[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._scores)

    def __len__(self) -> int:
        return len(self._scores)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LayerScores):
            return (
                list(self._scores.items()) == list(other._scores.items())
                and self._num_params == other._num_params
                and self._stats == other._stats
            )
        if isinstance(other, Mapping):
            return dict(self._scores) == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    # -- views ---------------------------------------------------------------------------------
    @property
    def layers(self) -> list[str]:
        """Layer names, in model order."""
        return list(self._scores)

    @property
    def num_params(self) -> dict[str, int] | None:
        """Layer name -> number of trainable scalars (``None`` if unknown). A copy."""
        return None if self._num_params is None else dict(self._num_params)

    @property
    def stats(self) -> dict[str, Any]:
        """Diagnostics recorded by whoever computed the scores. A copy."""
        return json.loads(json.dumps(self._stats))

    def to_numpy(self) -> np.ndarray:
        """The scores as a float64 array, in layer order."""
        return np.fromiter(self._scores.values(), dtype=np.float64, count=len(self._scores))

    # -- normalization -------------------------------------------------------------------------
    def normalized(self, kind: str = "sum") -> LayerScores:
        r"""A new LayerScores with normalized scores (``stats["normalized"]`` records ``kind``).

        With $\lambda_l$ the scores of $L$ layers:

        - ``"sum"`` (the paper's): $S_l = \lambda_l / \sum_{l'} \lambda_{l'}$, so $\sum_l S_l = 1$;
        - ``"max"``: $S_l = \lambda_l / \max_{l'} \lambda_{l'}$, so the largest is 1;
        - ``"rank"``: $S_l = r_l / L$ with $r_l \in \{1, \dots, L\}$ the ascending rank (ties share
          their average rank), so the largest is 1 and only the order matters;
        - ``"none"``: unchanged.

        All-zero scores (no layer moves the outputs) normalize to the uniform $1/L$ (``"sum"``) or
        1 (``"max"``). ``"sum"`` and ``"max"`` need non-negative scores.
        """
        check_choice("kind", kind, NORMALIZATIONS)
        values = self.to_numpy()
        if kind in ("sum", "max") and (values < 0).any():
            raise ValueError(
                f"normalized({kind!r}) needs non-negative scores, got {values.min()!r}; use 'rank' or 'none'."
            )
        if kind == "sum":
            total = values.sum()
            out = values / total if total > 0 else np.full_like(values, 1.0 / max(len(values), 1))
        elif kind == "max":
            top = values.max(initial=0.0)
            out = values / top if top > 0 else np.ones_like(values)
        elif kind == "rank":
            out = _average_ranks(values) / max(len(values), 1)
        else:
            out = values
        stats = {**self._stats, "normalized": kind}
        return LayerScores(dict(zip(self._scores, out.tolist(), strict=True)), self._num_params, stats)

    # -- JSON ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``{"format", "scores", "num_params", "stats"}``); scores keep their order."""
        return {
            "format": _FORMAT,
            "scores": dict(self._scores),
            "num_params": self.num_params,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerScores:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(
                f"data is not a LayerScores dict (expected format {_FORMAT!r}), got {describe(data)}."
            )
        return cls(data["scores"], data.get("num_params"), data.get("stats"))

    def to_json(self, **json_kwargs: Any) -> str:
        """JSON text of :meth:`to_dict` (keyword arguments go to ``json.dumps``). Floats round-trip exactly."""
        return json.dumps(self.to_dict(), **json_kwargs)

    @classmethod
    def from_json(cls, text: str) -> LayerScores:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))

    # -- display -------------------------------------------------------------------------------
    def _rows(self) -> list[tuple[str, str, str, str]]:
        values = self.to_numpy()
        total = values.sum() if len(values) and (values >= 0).all() else float("nan")
        rows = []
        for (name, value), share in zip(self._scores.items(), values / total if total else values * 0, strict=True):
            count = "" if self._num_params is None else f"{self._num_params[name]:,}"
            rows.append((name, f"{value:.6g}", "" if math.isnan(share) else f"{100 * share:.1f}%", count))
        return rows

    def __repr__(self) -> str:
        head = ", ".join(f"{k}={self._stats[k]!r}" for k in ("method", "kernel") if k in self._stats)
        title = f"LayerScores({len(self)} layers{', ' + head if head else ''})"
        rows = self._rows()
        if not rows:
            return title
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = [title]
        for r in rows:
            lines.append(
                f"  {r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}".rstrip()
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        cells = "".join(
            f"<tr><td>{html.escape(a)}</td><td>{b}</td><td>{c}</td><td>{d}</td></tr>" for a, b, c, d in self._rows()
        )
        return (
            f"<p>{html.escape(repr(self).splitlines()[0])}</p><table><tr><th>layer</th><th>score</th>"
            f"<th>share</th><th>params</th></tr>{cells}</table>"
        )


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ascending ranks 1..L, ties sharing their average rank."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), dtype=np.float64)
    sorted_values = values[order]
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and sorted_values[j + 1] == sorted_values[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks
