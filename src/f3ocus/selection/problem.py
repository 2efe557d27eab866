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

__all__ = ["COUPLINGS", "ENCODINGS", "SelectionProblem", "SelectionPymooProblem", "decode_keys"]


@dataclass(frozen=True, eq=False)
class SelectionProblem:
    r"""Scores, budgets, client constraints and the two objectives of layer selection.

    Pure numpy data; every method accepts one plan of shape ``(K, L)`` (returning a scalar) or a
    population of shape ``(P, K, L)`` (returning an array of shape ``(P,)``).

    Args:
        scores: ``(K, L)`` normalized scores $S$, finite and $\ge 0$ (stored as read-only float64).
        budgets: ``(K,)`` integer budgets $1 \le b_k \le L$ (layer counts; with ``costs`` they are only
            an upper bound on the count and never bind, see :mod:`f3ocus.selection.constraints`).
        exact_budget: whether each client trains exactly $b_k$ layers (else at most $b_k$). Must be
            ``False`` with ``costs``.
        layer_names: optional names of the $L$ layers, in column order.
        costs: ``(L,)`` positive layer costs $c_l$ (parameters, bytes, ...) or ``None``.
        capacities: ``(K,)`` capacities $B_k \ge 0$ with ``costs``: $\sum_l m_{kl} c_l \le B_k$.
        required: ``(K, L)`` bool cells every plan trains ($m_{kl} = 1$), or ``None``.
        allowed: ``(K, L)`` bool cells a plan may train (the others are forbidden), or ``None``.
        min_coverage: ``(L,)`` int, every layer trained by at least ``min_coverage[l]`` clients, or ``None``.
        previous: ``(K, L)`` bool plan of the last round, or ``None``.
        churn_penalty: $\lambda \ge 0$, the price of one changed cell $|m_{kl} - p_{kl}|$ against
            ``previous``.
        max_changes: ``(K,)`` int, a hard limit: row $k$ of a plan differs from ``previous`` row $k$ in at
            most ``max_changes[k]`` cells (needs ``previous``), or ``None``.
        coupling: ``"spread"`` (F³OCUS: diversity is the variance of the counts) or ``"agree"``
            (Sun et al. 2024: diversity is the disagreement $\frac{1}{L}\sum_l n_l (K - n_l)$).

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
    costs: np.ndarray | None = None
    capacities: np.ndarray | None = None
    required: np.ndarray | None = None
    allowed: np.ndarray | None = None
    min_coverage: np.ndarray | None = None
    previous: np.ndarray | None = None
    churn_penalty: float = 0.0
    coupling: str = "spread"
    max_changes: np.ndarray | None = None

    def __post_init__(self) -> None:
        scores = np.array(self.scores, dtype=np.float64, copy=True)
        budgets = np.array(self.budgets, copy=True)
        if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
            raise ValueError(f"scores must be a non-empty (K, L) array, got shape {scores.shape}.")
        if not np.all(np.isfinite(scores)) or np.any(scores < 0):
            raise ValueError("scores must be finite and >= 0.")
        K, L = scores.shape  # noqa: N806
        if budgets.shape != (K,) or not np.issubdtype(budgets.dtype, np.integer):
            raise ValueError(
                f"budgets must be an integer array of shape ({K},), got {budgets.dtype} of shape {budgets.shape}."
            )
        budgets = budgets.astype(np.int64)
        if np.any(budgets < 1) or np.any(budgets > L):
            raise ValueError(f"every budget must lie in [1, {L}], got {budgets.tolist()}.")
        if self.layer_names is not None:
            names = tuple(str(n) for n in self.layer_names)
            if len(names) != L:
                raise ValueError(f"layer_names has {len(names)} names for {L} layers.")
            object.__setattr__(self, "layer_names", names)
        if self.coupling not in COUPLINGS:
            raise ValueError(f"coupling={self.coupling!r} is not valid; use one of {COUPLINGS}.")
        costs = _vector(self.costs, (L,), np.float64, "costs")
        capacities = _vector(self.capacities, (K,), np.float64, "capacities")
        if (costs is None) != (capacities is None):
            raise ValueError("costs and capacities come together: pass both or neither.")
        if costs is not None:
            if not np.all(np.isfinite(costs)) or np.any(costs <= 0):
                raise ValueError("costs must be finite and > 0.")
            if not np.all(np.isfinite(capacities)) or np.any(capacities < 0):
                raise ValueError("capacities must be finite and >= 0.")
            if self.exact_budget:
                raise ValueError("with costs the budgets are capacities (at most): use exact_budget=False.")
        required = _vector(self.required, (K, L), bool, "required")
        allowed = _vector(self.allowed, (K, L), bool, "allowed")
        if required is not None and allowed is not None and np.any(required & ~allowed):
            raise ValueError("required cells must be allowed.")
        coverage = _vector(self.min_coverage, (L,), np.int64, "min_coverage")
        if coverage is not None and (np.any(coverage < 0) or np.any(coverage > K)):
            raise ValueError(f"min_coverage must lie in [0, {K}].")
        previous = _vector(self.previous, (K, L), bool, "previous")
        churn = float(self.churn_penalty)
        if not np.isfinite(churn) or churn < 0:
            raise ValueError(f"churn_penalty must be finite and >= 0, got {churn}.")
        limit = _vector(self.max_changes, (K,), np.int64, "max_changes")
        if limit is not None and (previous is None or np.any(limit < 0)):
            raise ValueError("max_changes needs previous and must be >= 0.")
        for name, value in [("scores", scores), ("budgets", budgets), ("costs", costs), ("capacities", capacities),
                            ("required", required), ("allowed", allowed), ("min_coverage", coverage),
                            ("previous", previous), ("max_changes", limit)]:
            if value is not None:
                value.flags.writeable = False
            object.__setattr__(self, name, value)
        object.__setattr__(self, "exact_budget", bool(self.exact_budget))
        object.__setattr__(self, "churn_penalty", churn)
        # linear objective coefficients: |m - p| = m (1 - 2p) + p, so the churn term folds into the scores
        if previous is not None and churn > 0:
            linear = scores - churn * (1.0 - 2.0 * previous)
            linear.flags.writeable = False
        else:
            linear = scores
        object.__setattr__(self, "linear", linear)
        object.__setattr__(self, "_cache", {})

    @property
    def K(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of clients."""
        return self.scores.shape[0]

    @property
    def L(self) -> int:  # noqa: N802 - the paper's symbol
        """Number of layers."""
        return self.scores.shape[1]

    # -- constraints as full arrays ----------------------------------------------------------------
    @property
    def allowed_mask(self) -> np.ndarray:
        """``(K, L)`` bool: the cells a plan may train (all of them without ``allowed``)."""
        return np.ones((self.K, self.L), dtype=bool) if self.allowed is None else self.allowed

    @property
    def required_mask(self) -> np.ndarray:
        """``(K, L)`` bool: the cells every plan trains (none without ``required``)."""
        return np.zeros((self.K, self.L), dtype=bool) if self.required is None else self.required

    @property
    def coverage(self) -> np.ndarray:
        """``(L,)`` the least number of clients per layer (zeros without ``min_coverage``)."""
        return np.zeros(self.L, dtype=np.int64) if self.min_coverage is None else self.min_coverage

    @property
    def plain(self) -> bool:
        """No constraint beyond the layer-count budgets, no churn term, the ``"spread"`` coupling."""
        return (
            self.costs is None and self.required is None and self.allowed is None and self.min_coverage is None
            and self.linear is self.scores and self.coupling == "spread" and self.max_changes is None
        )

    @property
    def flow_applies(self) -> bool:
        r"""Whether the exact optimum is a totally unimodular min-cost flow.

        Count budgets (exact or at most), required and forbidden cells (bounds on the client-layer arcs),
        ``min_coverage`` (lower bounds on the layer arcs) and the churn term (a change of the arc costs)
        keep the node-arc incidence structure. Costs (a knapsack row per client) and the ``"agree"``
        coupling (a concave count cost) do not: they go to the MIP (:mod:`f3ocus.selection.mip`).
        ``max_changes`` keeps the flow with exact budgets (a cap on each client's arcs to the layers it did
        not train before, through one more node per client) and goes to the MIP with at-most budgets.
        """
        return self.costs is None and self.coupling == "spread" and (self.max_changes is None or self.exact_budget)

    def _masks(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks)
        if masks.shape[-2:] != (self.K, self.L) or masks.ndim not in (2, 3):
            raise ValueError(
                f"masks must have shape (K, L) = ({self.K}, {self.L}) or (P, K, L), got {masks.shape}."
            )
        return masks

    # -- objectives --------------------------------------------------------------------------------
    def counts(self, masks: np.ndarray) -> np.ndarray:
        r"""Layer counts $n_l = \sum_k m_{kl}$: shape ``(L,)`` or ``(P, L)``."""
        return self._masks(masks).sum(axis=-2, dtype=np.int64)

    def importance(self, masks: np.ndarray) -> np.ndarray:
        r"""$\sum_{k,l} m_{kl} S_{kl}$ for one plan (scalar) or a population (``(P,)``)."""
        masks = self._masks(masks)
        return np.einsum("...kl,kl->...", masks.astype(np.float64), self.scores)

    def changes(self, masks: np.ndarray) -> np.ndarray:
        r"""Cells changed against ``previous``, $\sum_{kl} |m_{kl} - p_{kl}|$ (zeros without it)."""
        masks = self._masks(masks)
        if self.previous is None:
            return np.zeros(masks.shape[:-2], dtype=np.int64)
        return np.sum(masks != self.previous, axis=(-2, -1))

    def row_changes(self, masks: np.ndarray) -> np.ndarray:
        r"""Cells changed in each row, $\sum_l |m_{kl} - p_{kl}|$: shape ``(K,)`` or ``(P, K)``."""
        masks = self._masks(masks)
        if self.previous is None:
            return np.zeros(masks.shape[:-1], dtype=np.int64)
        return np.sum(masks != self.previous, axis=-1)

    def benefit(self, masks: np.ndarray) -> np.ndarray:
        r"""$\text{importance}(m) - \lambda\cdot\text{changes}(m)$, the objective solvers maximize
        against diversity (equal to the importance without a churn term)."""
        if self.linear is self.scores:
            return self.importance(masks)
        return self.importance(masks) - self.churn_penalty * self.changes(masks)

    def diversity(self, masks: np.ndarray) -> np.ndarray:
        r"""``"spread"``: $\frac{1}{L}\sum_l (n_l - \bar n)^2$; ``"agree"``: $\frac{1}{L}\sum_l n_l (K - n_l)$."""
        n = self.counts(masks).astype(np.float64)
        if self.coupling == "agree":
            return np.mean(n * (self.K - n), axis=-1)
        return np.var(n, axis=-1)

    def scalarized(self, masks: np.ndarray, tradeoff: float) -> np.ndarray:
        r"""$\text{benefit}(m) - t \cdot \text{diversity}(m)$ (to maximize)."""
        return self.benefit(masks) - float(tradeoff) * self.diversity(masks)

    def loads(self, masks: np.ndarray) -> np.ndarray:
        r"""Each client's load $\sum_l m_{kl} c_l$ (``(..., K)``; the layer count without ``costs``)."""
        masks = self._masks(masks)
        if self.costs is None:
            return masks.sum(axis=-1).astype(np.float64)
        return masks.astype(np.float64) @ self.costs

    def is_feasible(self, masks: np.ndarray) -> np.ndarray:
        """Whether each plan keeps every constraint: budgets, capacities, required, forbidden, coverage, max_changes."""
        masks = self._masks(masks)
        rows = masks.sum(axis=-1)
        ok = np.all(rows == self.budgets if self.exact_budget else rows <= self.budgets, axis=-1)
        if self.costs is not None:
            ok &= np.all(self.loads(masks) <= self.capacities * (1 + 1e-12) + 1e-9, axis=-1)
        if self.required is not None:
            ok &= np.all(masks | ~self.required, axis=(-2, -1))
        if self.allowed is not None:
            ok &= np.all(~masks | self.allowed, axis=(-2, -1))
        if self.min_coverage is not None:
            ok &= np.all(self.counts(masks) >= self.min_coverage, axis=-1)
        if self.max_changes is not None:
            ok &= np.all(self.row_changes(masks) <= self.max_changes, axis=-1)
        return ok

    def __repr__(self) -> str:
        mode = "exact" if self.exact_budget else "at most"
        extra = "" if self.costs is None else ", with costs"
        for name in ("required", "allowed", "min_coverage", "previous", "max_changes"):
            if getattr(self, name) is not None:
                extra += f", {name}"
        if self.coupling != "spread":
            extra += f", coupling={self.coupling!r}"
        return f"SelectionProblem(K={self.K}, L={self.L}, budgets {mode} {_short(self.budgets)}{extra})"


#: Couplings of the clients through the layer counts.
COUPLINGS = ("spread", "agree")


def _vector(value, shape, dtype, name):
    if value is None:
        return None
    array = np.array(value, dtype=dtype, copy=True)
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}.")
    return array


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
    if not problem.plain:  # constraints: the shared decoder (deterministic in the keys)
        from f3ocus.selection.plans import fill

        take = None if problem.exact_budget else keys > 0.5
        return fill(keys, problem, np.random.default_rng(0), take=take)
    from f3ocus.selection.plans import top_b

    masks = top_b(keys, problem.budgets)
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
        imp = self.selection.benefit(masks)
        div = self.selection.diversity(masks)
        if self.tradeoff is None:
            out["F"] = np.column_stack([-imp, div])
        else:
            out["F"] = -(imp - self.tradeoff * div)
