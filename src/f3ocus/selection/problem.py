r"""The server-side layer-selection problem, as data and as a pymoo problem.

A plan $m \in \{0, 1\}^{K \times L}$ says which of the $L$ layers each of the $K$ clients trains.
With normalized scores $S \in \mathbb{R}_{\ge 0}^{K \times L}$ and budgets $b \in \{1..L\}^K$ (F³OCUS,
Saha et al., CVPR 2025):

$$
\text{importance}(m) = \sum_{k,l} m_{kl} S_{kl} \quad (\max), \qquad
\text{diversity}(m) = \frac{1}{L} \sum_l (n_l - \bar n)^2 \quad (\min),
$$

with $n_l = \sum_k m_{kl}$ the number of clients that train layer $l$ and $\bar n = \frac{1}{L}\sum_l n_l$.
A plan is feasible when every client trains exactly $b_k$ layers (``exact_budget=True``) or at most
$b_k$ layers (``exact_budget=False``; zero layers is allowed then). The scalarization used to pick one
plan is $\text{importance}(m) - t \cdot \text{diversity}(m)$ for a tradeoff $t \ge 0$.

:class:`SelectionProblem` holds the data and evaluates whole populations of plans at once;
:class:`SelectionPymooProblem` exposes it to pymoo algorithms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pymoo.core.problem import Problem

__all__ = ["ENCODINGS", "SelectionProblem", "SelectionPymooProblem", "decode_keys"]


@dataclass(frozen=True, eq=False)
class SelectionProblem:
    r"""Scores, budgets and the two objectives of layer selection.

    Pure numpy data; every method accepts one plan of shape ``(K, L)`` (returning a scalar) or a
    population of shape ``(P, K, L)`` (returning an array of shape ``(P,)``).

    Args:
        scores: ``(K, L)`` normalized scores $S$, finite and $\ge 0$ (stored as read-only float64).
        budgets: ``(K,)`` integer budgets $1 \le b_k \le L$.
        exact_budget: whether each client trains exactly $b_k$ layers (else at most $b_k$).
        layer_names: optional names of the $L$ layers, in column order.

    Example:
        >>> import numpy as np
        >>> p = SelectionProblem(np.array([[0.7, 0.3], [0.6, 0.4]]), np.array([1, 1]))
        >>> m = np.array([[True, False], [False, True]])
        >>> float(p.importance(m)), float(p.diversity(m))
        (1.1, 0.0)
    """

    scores: np.ndarray
    budgets: np.ndarray
    exact_budget: bool = True
    layer_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        scores = np.array(self.scores, dtype=np.float64, copy=True)
        budgets = np.array(self.budgets, copy=True)
        if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
            raise ValueError(f"scores must be a non-empty (K, L) array, got shape {scores.shape}.")
        if not np.all(np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError("scores must be finite and >= 0.")
        if budgets.shape != (scores.shape[0],) or not np.issubdtype(budgets.dtype, np.integer):
            raise ValueError(
                f"budgets must be an integer array of shape ({scores.shape[0]},), "
                f"got {budgets.dtype} of shape {budgets.shape}."
            )
        budgets = budgets.astype(np.int64)
        if np.any(budgets < 1) or np.any(budgets > scores.shape[1]):
            raise ValueError(f"every budget must lie in [1, {scores.shape[1]}], got {budgets.tolist()}.")
        if self.layer_names is not None:
            names = tuple(str(n) for n in self.layer_names)
            if len(names) != scores.shape[1]:
                raise ValueError(f"layer_names has {len(names)} names for {scores.shape[1]} layers.")
            object.__setattr__(self, "layer_names", names)
        scores.flags.writeable = False
        budgets.flags.writeable = False
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "budgets", budgets)
        object.__setattr__(self, "exact_budget", bool(self.exact_budget))

    @property
    def K(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of clients."""
        return self.scores.shape[0]

    @property
    def L(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of layers."""
        return self.scores.shape[1]

    def _masks(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.shape[-2:] != (self.K, self.L) or masks.ndim not in (2, 3):
            raise ValueError(
                f"masks must have shape (K, L) = ({self.K}, {self.L}) or (P, K, L), got {masks.shape}."
            )
        return masks

    def counts(self, masks: np.ndarray) -> np.ndarray:
        r"""Layer counts $n_l = \sum_k m_{kl}$: shape ``(L,)`` or ``(P, L)``."""
        return self._masks(masks).sum(axis=-2, dtype=np.int64)

    def importance(self, masks: np.ndarray) -> np.ndarray:
        r"""$\sum_{k,l} m_{kl} S_{kl}$ for one plan (scalar) or a population (``(P,)``)."""
        masks = self._masks(masks)
        return np.einsum("...kl,kl->...", masks.astype(np.float64), self.scores)

    def diversity(self, masks: np.ndarray) -> np.ndarray:
        r"""$\frac{1}{L}\sum_l (n_l - \bar n)^2$, the population variance of the layer counts."""
        n = self.counts(masks).astype(np.float64)
        return np.var(n, axis=-1)

    def scalarized(self, masks: np.ndarray, tradeoff: float) -> np.ndarray:
        r"""$\text{importance}(m) - t \cdot \text{diversity}(m)$ (to maximize)."""
        return self.importance(masks) - float(tradeoff) * self.diversity(masks)

    def is_feasible(self, masks: np.ndarray) -> np.ndarray:
        """Whether each plan keeps the budgets: exactly ``b_k`` ones per row, or at most ``b_k``."""
        rows = self._masks(masks).sum(axis=-1)
        ok = rows == self.budgets if self.exact_budget else rows <= self.budgets
        return np.all(ok, axis=-1)

    def __repr__(self) -> str:
        mode = "exact" if self.exact_budget else "at most"
        return f"SelectionProblem(K={self.K}, L={self.L}, budgets {mode} {_short(self.budgets)})"


def _short(budgets: np.ndarray) -> str:
    lo, hi = int(budgets.min()), int(budgets.max())
    return str(lo) if lo == hi else f"{lo}..{hi}"


def decode_keys(keys: np.ndarray, problem: SelectionProblem) -> np.ndarray:
    r"""Random-key decoding of continuous vectors to feasible plans.

    Each client $k$ trains the layers with its $b_k$ largest keys (ties broken by the lower layer
    index). With ``exact_budget=False`` only those of the $b_k$ largest keys that exceed $0.5$ are kept,
    so any count from $0$ to $b_k$ is reachable (Bean, "Genetic algorithms and random keys for
    sequencing and optimization", ORSA J. Computing 1994).

    Args:
        keys: ``(P, K*L)`` or ``(P, K, L)`` real keys.
        problem: the selection problem (budgets and mode).

    Returns:
        ``(P, K, L)`` bool plans.
    """
    keys = np.asarray(keys, dtype=np.float64).reshape(-1, problem.K, problem.L)
    order = np.argsort(-keys, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(problem.L)[None, None, :], axis=-1)
    masks = ranks < problem.budgets[None, :, None]
    if not problem.exact_budget:
        masks &= keys > 0.5
    return masks


#: Encodings of a plan as a pymoo decision vector.
ENCODINGS = ("binary", "keys")


class SelectionPymooProblem(Problem):
    r"""A :class:`SelectionProblem` as a vectorized pymoo ``Problem``.

    Encodings: ``"binary"`` (default) is $x = \text{vec}(m) \in \{0,1\}^{KL}$, row-major;
    ``"keys"`` is $x \in [0, 1]^{KL}$ decoded by :func:`decode_keys` (for continuous algorithms such as
    PSO and DE).

    Objectives (minimized): with ``tradeoff=None`` two, $F = [-\text{importance}, \text{diversity}]$;
    with a number $t$ one, $F = -(\text{importance} - t \cdot \text{diversity})$. Plans that break the
    budgets (a binary ``x`` from an operator that does not keep them) are evaluated as they are; every
    built-in operator keeps the budgets and :func:`f3ocus.selection.select_layers` repairs each
    returned plan.

    Args:
        selection: the problem data.
        tradeoff: ``None`` for two objectives, else the scalarization weight $t \ge 0$.
        encoding: ``"binary"`` or ``"keys"``.
        target_tradeoff: for a two-objective problem, the tradeoff its final plan will be picked with
            (``None``: the knee); solvers may use it to aim their search, the objectives ignore it.

    Attributes:
        selection: the :class:`SelectionProblem`.
        tradeoff: the scalarization weight, or ``None``.
        encoding: the encoding name.
        target_tradeoff: see above.
    """

    def __init__(
        self,
        selection: SelectionProblem,
        tradeoff: float | None = None,
        encoding: str = "binary",
        target_tradeoff: float | None = None,
    ) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"encoding={encoding!r} is not valid; use one of {ENCODINGS}.")
        self.selection = selection
        self.tradeoff = None if tradeoff is None else float(tradeoff)
        self.encoding = encoding
        self.target_tradeoff = None if target_tradeoff is None else float(target_tradeoff)
        super().__init__(
            n_var=selection.K * selection.L,
            n_obj=2 if tradeoff is None else 1,
            xl=0.0,
            xu=1.0,
            vtype=bool if encoding == "binary" else float,
        )

    def decode(self, X: np.ndarray) -> np.ndarray:  # noqa: N803 - pymoo's name
        """Plans ``(P, K, L)`` bool for a population ``X`` of shape ``(P, n_var)`` (or one ``x``)."""
        X = np.atleast_2d(np.asarray(X))  # noqa: N806
        if self.encoding == "keys":
            return decode_keys(X, self.selection)
        return X.reshape(-1, self.selection.K, self.selection.L).astype(bool)

    def _evaluate(self, X, out, *args, **kwargs):  # noqa: N803 - pymoo's name
        masks = self.decode(X)
        imp = self.selection.importance(masks)
        div = self.selection.diversity(masks)
        if self.tradeoff is None:
            out["F"] = np.column_stack([-imp, div])
        else:
            out["F"] = -(imp - self.tradeoff * div)
