"""The result of layer selection: a plan with its objectives, front and diagnostics.

:class:`LayerAssignment` is small, frozen and serializable to JSON (never pickled). Plans are stored as
bool arrays and written to JSON as one ``"0101..."`` string per client.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np

__all__ = ["LayerAssignment", "ParetoFront"]

_FORMAT = "f3ocus.LayerAssignment/1"


def _readonly(array: np.ndarray, dtype) -> np.ndarray:
    out = np.array(array, dtype=dtype, copy=True)
    out.flags.writeable = False
    return out


def _encode_mask(mask: np.ndarray) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in np.asarray(mask, dtype=bool)]


def _decode_mask(rows: Sequence[str]) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows], dtype=bool).reshape(len(rows), -1)


@dataclass(frozen=True, eq=False)
class ParetoFront:
    """Non-dominated plans found by a solver, sorted by importance (descending).

    Attributes:
        masks: ``(P, K, L)`` bool plans.
        importance: ``(P,)`` importance of each plan.
        diversity: ``(P,)`` diversity of each plan.
    """

    masks: np.ndarray
    importance: np.ndarray
    diversity: np.ndarray

    def __post_init__(self) -> None:
        masks = _readonly(self.masks, bool)
        imp = _readonly(self.importance, np.float64).reshape(-1)
        div = _readonly(self.diversity, np.float64).reshape(-1)
        if masks.ndim != 3 or not (masks.shape[0] == imp.size == div.size):
            raise ValueError(f"front shapes disagree: masks {masks.shape}, objectives {imp.shape}, {div.shape}.")
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "importance", imp)
        object.__setattr__(self, "diversity", div)

    def __len__(self) -> int:
        return self.masks.shape[0]

    @property
    def objectives(self) -> np.ndarray:
        """``(P, 2)`` array of ``(importance, diversity)``."""
        return np.column_stack([self.importance, self.diversity])

    def to_dict(self) -> dict[str, Any]:
        return {
            "masks": [_encode_mask(m) for m in self.masks],
            "importance": self.importance.tolist(),
            "diversity": self.diversity.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ParetoFront:
        masks = [_decode_mask(m) for m in data["masks"]]
        return cls(np.stack(masks) if masks else np.zeros((0, 0, 0), bool), data["importance"], data["diversity"])

    def __repr__(self) -> str:
        if not len(self):
            return "ParetoFront(0 plans)"
        return (
            f"ParetoFront({len(self)} plans, importance {self.importance.min():.4g}..{self.importance.max():.4g}, "
            f"diversity {self.diversity.min():.4g}..{self.diversity.max():.4g})"
        )


@dataclass(frozen=True, eq=False)
class LayerAssignment:
    """Which layers each client trains, with the plan's objectives and the solver's diagnostics.

    Attributes:
        mask: ``(K, L)`` bool plan; ``mask[k, l]`` is ``True`` when client ``k`` trains layer ``l``.
        importance: $\\sum_{kl} m_{kl} S_{kl}$ on the normalized scores.
        diversity: $\\frac{1}{L}\\sum_l (n_l - \\bar n)^2$.
        budgets: ``(K,)`` the budgets the plan keeps.
        layer_names: names of the ``L`` layers, or ``None`` when the scores were a plain array.
        tradeoff: the tradeoff the plan was picked with (``None``: the knee of a front).
        front: the non-dominated plans the solver found, or ``None`` for solvers without one.
        stats: ``solver``, ``evaluations``, ``generations``, ``seconds``, ``seed``, ``normalize``,
            ``exact_budget``, ``scalarized`` and, with ``certify=True``, ``exact_scalarized`` and ``gap``
            (relative gap to the exact optimum of the scalarized problem), plus solver-specific entries.
    """

    mask: np.ndarray
    importance: float
    diversity: float
    budgets: np.ndarray
    layer_names: tuple[str, ...] | None = None
    tradeoff: float | None = None
    front: ParetoFront | None = None
    stats: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        mask = _readonly(self.mask, bool)
        if mask.ndim != 2:
            raise ValueError(f"mask must be a (K, L) array, got shape {mask.shape}.")
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "budgets", _readonly(self.budgets, np.int64))
        object.__setattr__(self, "importance", float(self.importance))
        object.__setattr__(self, "diversity", float(self.diversity))
        if self.tradeoff is not None:
            object.__setattr__(self, "tradeoff", float(self.tradeoff))
        if self.layer_names is not None:
            object.__setattr__(self, "layer_names", tuple(str(n) for n in self.layer_names))
        object.__setattr__(self, "stats", MappingProxyType(dict(self.stats)))

    @property
    def K(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of clients."""
        return self.mask.shape[0]

    @property
    def L(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of layers."""
        return self.mask.shape[1]

    @property
    def counts(self) -> np.ndarray:
        """``(L,)`` number of clients that train each layer, $n_l$."""
        return self.mask.sum(axis=0)

    @property
    def layers(self) -> list[list[str]] | list[list[int]]:
        """Per client, the layers it trains: names when known, else column indices."""
        if self.layer_names is None:
            return [np.flatnonzero(row).tolist() for row in self.mask]
        return [[self.layer_names[i] for i in np.flatnonzero(row)] for row in self.mask]

    def scalarized(self, tradeoff: float) -> float:
        """``importance - tradeoff * diversity`` of this plan."""
        return self.importance - float(tradeoff) * self.diversity

    # -- serialization ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (inverse: :meth:`from_dict`)."""
        return {
            "format": _FORMAT,
            "mask": _encode_mask(self.mask),
            "importance": self.importance,
            "diversity": self.diversity,
            "budgets": self.budgets.tolist(),
            "layer_names": None if self.layer_names is None else list(self.layer_names),
            "tradeoff": self.tradeoff,
            "front": None if self.front is None else self.front.to_dict(),
            "stats": _jsonable(dict(self.stats)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerAssignment:
        """Rebuild from :meth:`to_dict` output."""
        if not isinstance(data, Mapping) or data.get("format") != _FORMAT:
            raise ValueError(
                f"data is not a serialized LayerAssignment (expected format {_FORMAT!r}, "
                f"got {data.get('format') if isinstance(data, Mapping) else type(data).__name__!r})."
            )
        return cls(
            mask=_decode_mask(data["mask"]),
            importance=data["importance"],
            diversity=data["diversity"],
            budgets=np.asarray(data["budgets"], dtype=np.int64),
            layer_names=None if data["layer_names"] is None else tuple(data["layer_names"]),
            tradeoff=data["tradeoff"],
            front=None if data["front"] is None else ParetoFront.from_dict(data["front"]),
            stats=data["stats"],
        )

    def to_json(self, **kwargs: Any) -> str:
        """JSON text (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str) -> LayerAssignment:
        """Rebuild from :meth:`to_json` output."""
        return cls.from_dict(json.loads(text))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerAssignment):
            return NotImplemented
        fronts_equal = (self.front is None) == (other.front is None) and (
            self.front is None
            or (
                np.array_equal(self.front.masks, other.front.masks)
                and np.array_equal(self.front.importance, other.front.importance)
                and np.array_equal(self.front.diversity, other.front.diversity)
            )
        )
        return (
            np.array_equal(self.mask, other.mask)
            and np.array_equal(self.budgets, other.budgets)
            and self.importance == other.importance
            and self.diversity == other.diversity
            and self.layer_names == other.layer_names
            and self.tradeoff == other.tradeoff
            and fronts_equal
            and _jsonable(dict(self.stats)) == _jsonable(dict(other.stats))
        )

    __hash__ = None  # type: ignore[assignment]

    def plot(self, **kwargs: Any):
        """Plan heatmap, layer histogram and front (needs the ``plot`` extra: matplotlib).

        Returns the matplotlib ``Figure``; see :func:`f3ocus.selection.plot.plot_assignment`.
        """
        from f3ocus.selection.plot import plot_assignment

        return plot_assignment(self, **kwargs)

    def __repr__(self) -> str:
        solver = self.stats.get("solver", "?")
        front = "" if self.front is None else f", front={len(self.front)} plans"
        how = "knee" if self.tradeoff is None else f"tradeoff={self.tradeoff:g}"
        return (
            f"LayerAssignment(K={self.K}, L={self.L}, solver={solver!r}, {how}, "
            f"importance={self.importance:.6g}, diversity={self.diversity:.6g}, "
            f"layers per client={_range(self.mask.sum(axis=1))}{front})"
        )


def _range(values: np.ndarray) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}..{hi}"


def _jsonable(value: Any) -> Any:
    """Plain JSON types for stats (numpy scalars and arrays converted)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
