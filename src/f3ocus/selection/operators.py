r"""Budget-keeping operators: every plan they produce is feasible.

A row $m_k$ of a plan is feasible when it has exactly $b_k$ ones (or at most $b_k$ with
``exact_budget=False``). The pure numpy helpers :func:`random_plan`, :func:`repair` and
:func:`neighbor` work on ``(K, L)`` or ``(P, K, L)`` bool arrays and take the generator explicitly;
the pymoo operators :class:`BudgetSampling`, :class:`BudgetCrossover`, :class:`BudgetMutation` and
:class:`BudgetRepair` wrap them for the binary encoding of
:class:`~f3ocus.selection.problem.SelectionPymooProblem`.

All of them rest on one primitive: keep, in every row, the $b_k$ entries with the largest random keys,
after lifting the keys of the entries that must survive above all others.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from f3ocus.selection.problem import SelectionProblem

__all__ = [
    "BudgetCrossover",
    "BudgetMutation",
    "BudgetRepair",
    "BudgetSampling",
    "neighbor",
    "random_plan",
    "repair",
    "top_b",
]


def top_b(keys: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mask of the ``b[k]`` largest keys in each row ``k`` (ties broken by the lower column index).

    Args:
        keys: ``(..., K, L)`` real keys.
        b: ``(K,)`` (or broadcastable to ``(..., K)``) integer counts in ``[0, L]``.

    Returns:
        bool array shaped like ``keys``.
    """
    order = np.argsort(-keys, axis=-1, kind="stable")
    ranks = np.empty_like(order)
    L = keys.shape[-1]  # noqa: N806
    np.put_along_axis(ranks, order, np.broadcast_to(np.arange(L), keys.shape), axis=-1)
    return ranks < np.asarray(b)[..., None]


def random_plan(problem: SelectionProblem, rng: np.random.Generator, n: int | None = None) -> np.ndarray:
    r"""Uniformly random feasible plan(s).

    With exact budgets each row is a uniform $b_k$-subset of the layers. With ``exact_budget=False``
    the row count is first drawn uniformly from $\{0, \dots, b_k\}$.

    Args:
        problem: budgets and mode.
        rng: the generator (the only source of randomness).
        n: number of plans; ``None`` returns one ``(K, L)`` plan, else ``(n, K, L)``.
    """
    size = 1 if n is None else int(n)
    keys = rng.random((size, problem.K, problem.L))
    if problem.exact_budget:
        b = np.broadcast_to(problem.budgets, (size, problem.K))
    else:
        b = rng.integers(0, problem.budgets + 1, size=(size, problem.K))
    masks = top_b(keys, b)
    return masks[0] if n is None else masks


def repair(masks: np.ndarray, problem: SelectionProblem, rng: np.random.Generator) -> np.ndarray:
    """Make every row feasible with as few changes as possible.

    A row with more than ``b_k`` ones keeps ``b_k`` of them, chosen uniformly at random. With exact
    budgets a row with fewer ones keeps all of them and gains uniformly random untrained layers. Rows
    that are already feasible are returned unchanged.

    Args:
        masks: ``(K, L)`` or ``(P, K, L)`` plans (any truthy dtype).
        problem: budgets and mode.
        rng: the generator.

    Returns:
        bool plans of the same shape, all feasible.
    """
    masks = np.asarray(masks).astype(bool)
    keys = rng.random(masks.shape) + masks  # ones sort above zeros
    kept = top_b(keys, problem.budgets)
    if not problem.exact_budget:
        kept &= masks
    return kept


def neighbor(mask: np.ndarray, problem: SelectionProblem, rng: np.random.Generator) -> np.ndarray:
    """One budget-keeping move from ``mask`` (a ``(K, L)`` plan): a new array, the input is untouched.

    The move picks a uniformly random client among those that can move and, with exact budgets, swaps
    one of its trained layers for an untrained one. With ``exact_budget=False`` it draws uniformly among
    the moves the row allows: swap, add a layer (fewer than ``b_k``), drop a layer (at least one).
    A plan with no possible move (every ``b_k = L`` with exact budgets) is returned as a copy.
    """
    mask = np.array(mask, dtype=bool, copy=True)
    count = mask.sum(axis=1)
    can_swap = (count > 0) & (count < problem.L)
    if problem.exact_budget:
        movable = can_swap
    else:
        movable = can_swap | (count < problem.budgets) | (count > 0)
    clients = np.flatnonzero(movable)
    if clients.size == 0:
        return mask
    k = clients[rng.integers(clients.size)]
    moves = ["swap"] if problem.exact_budget else []
    if not problem.exact_budget:
        moves = [
            name
            for name, ok in (
                ("swap", can_swap[k]),
                ("add", count[k] < problem.budgets[k]),
                ("drop", count[k] > 0),
            )
            if ok
        ]
    move = moves[rng.integers(len(moves))]
    on, off = np.flatnonzero(mask[k]), np.flatnonzero(~mask[k])
    if move in ("swap", "drop"):
        mask[k, on[rng.integers(on.size)]] = False
    if move in ("swap", "add"):
        mask[k, off[rng.integers(off.size)]] = True
    return mask


def _selection(problem) -> SelectionProblem:
    selection = getattr(problem, "selection", None)
    if not isinstance(selection, SelectionProblem):
        raise TypeError(
            "budget-keeping operators need a SelectionPymooProblem (with a .selection attribute), "
            f"got {type(problem).__name__}."
        )
    return selection


def _flat(masks: np.ndarray) -> np.ndarray:
    return masks.reshape(masks.shape[0], -1)


class BudgetSampling(Sampling):
    """Uniformly random feasible plans (:func:`random_plan`), flattened for the binary encoding."""

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        return _flat(random_plan(_selection(problem), random_state, n=n_samples))


class BudgetCrossover(Crossover):
    r"""Row-wise uniform crossover that keeps every client's count.

    For client $k$ and parents $A, B$: the layers both train are inherited, the layers only one of them
    trains ($A_k \triangle B_k$) are shuffled, child 1 takes as many of them as $A_k$ needs to reach its
    count and child 2 takes the complementary ones up to $B_k$'s count. With exact budgets the two
    children split $A_k \triangle B_k$ between them, and both keep exactly $b_k$ layers.

    Args:
        prob: probability that a mating is crossed (else the parents are copied).
    """

    def __init__(self, prob: float = 0.9, **kwargs) -> None:
        super().__init__(2, 2, prob=prob, **kwargs)

    def _do(self, problem, X, *args, random_state=None, **kwargs):  # noqa: N803 - pymoo's name
        sel = _selection(problem)
        _, n_matings, _ = X.shape
        a = X[0].reshape(n_matings, sel.K, sel.L).astype(bool)
        b = X[1].reshape(n_matings, sel.K, sel.L).astype(bool)
        common, diff = a & b, a ^ b
        u = random_state.random(a.shape)
        lift = 2.0 * common - 2.0 * ~(common | diff)  # common first, outside last
        child1 = top_b(lift + u * diff, a.sum(axis=-1))
        child2 = top_b(lift + (1.0 - u) * diff, b.sum(axis=-1))
        return np.stack([_flat(child1), _flat(child2)])


class BudgetMutation(Mutation):
    """Each client row is moved by :func:`neighbor`-style moves with probability ``prob_var``.

    Args:
        prob: probability that an individual is mutated at all.
        prob_var: probability per client row of one move; ``None`` means ``1 / K`` (one move per plan on
            average, at least one is always made when the individual is mutated).
    """

    def __init__(self, prob: float = 1.0, prob_var: float | None = None, **kwargs) -> None:
        super().__init__(prob=prob, prob_var=prob_var, **kwargs)
        self._prob_var = prob_var

    def _do(self, problem, X, *args, random_state=None, **kwargs):  # noqa: N803 - pymoo's name
        sel = _selection(problem)
        masks = X.reshape(-1, sel.K, sel.L).astype(bool).copy()
        p = 1.0 / sel.K if self._prob_var is None else float(self._prob_var)
        hit = random_state.random(masks.shape[:2]) < p
        forced = random_state.integers(sel.K, size=masks.shape[0])
        hit[np.arange(masks.shape[0]), forced] = True
        count = masks.sum(axis=-1)
        u_on = np.where(masks, random_state.random(masks.shape), -1.0)
        u_off = np.where(~masks, random_state.random(masks.shape), -1.0)
        on, off = u_on.argmax(axis=-1), u_off.argmax(axis=-1)
        if sel.exact_budget:
            drop = add = hit & (count > 0) & (count < sel.L)
        else:
            # one of swap / add / drop, drawn uniformly; a move the row does not allow falls back to
            # the first allowed one in the order swap, add, drop
            kind = random_state.integers(3, size=hit.shape)
            can_swap, can_add, can_drop = (count > 0) & (count < sel.L), count < sel.budgets, count > 0
            swap = hit & (kind == 0) & can_swap
            only_add = hit & (kind == 1) & can_add
            only_drop = hit & (kind == 2) & can_drop
            rest = hit & ~(swap | only_add | only_drop)
            swap |= rest & can_swap
            only_add |= rest & ~can_swap & can_add
            only_drop |= rest & ~can_swap & ~can_add & can_drop
            drop, add = swap | only_drop, swap | only_add
        p_idx, k_idx = np.nonzero(drop)
        masks[p_idx, k_idx, on[p_idx, k_idx]] = False
        p_idx, k_idx = np.nonzero(add)
        masks[p_idx, k_idx, off[p_idx, k_idx]] = True
        return _flat(masks)


class BudgetRepair(Repair):
    """pymoo ``Repair`` wrapper of :func:`repair` for the binary encoding."""

    def _do(self, problem, X, random_state=None, **kwargs):  # noqa: N803 - pymoo's name
        sel = _selection(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return _flat(repair(X.reshape(-1, sel.K, sel.L), sel, rng))
