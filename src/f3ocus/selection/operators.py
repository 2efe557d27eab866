r"""Budget-keeping operators: every plan they produce is feasible.

A row $m_k$ of a plan is feasible when it has exactly $b_k$ ones (or at most $b_k$ with
``exact_budget=False``). The pure numpy helpers :func:`random_plan`, :func:`repair` and
:func:`neighbor` work on ``(K, L)`` or ``(P, K, L)`` bool arrays and take the generator explicitly;
the pymoo operators :class:`BudgetSampling`, :class:`BudgetCrossover`, :class:`BudgetMutation` and
:class:`BudgetRepair` wrap them for the binary encoding of
:class:`~f3ocus.selection.problem.SelectionPymooProblem`.

All of them rest on one primitive, :func:`f3ocus.selection.plans.fill`: keep, in every row, the entries
with the largest random keys that the row's budget admits, after lifting the keys of the entries that
must survive above all others; required, forbidden, capacity and coverage constraints are kept there.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import DuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling

from f3ocus.selection.gains import add_gains, remove_losses
from f3ocus.selection.plans import random_plan, repair, top_b
from f3ocus.selection.problem import SelectionProblem

__all__ = [
    "BudgetCrossover",
    "BudgetMutation",
    "BudgetRepair",
    "BudgetSampling",
    "PlanDuplicateElimination",
    "neighbor",
    "random_plan",
    "repair",
    "top_b",
]


def neighbor(mask: np.ndarray, problem: SelectionProblem, rng: np.random.Generator) -> np.ndarray:
    """One budget-keeping move from ``mask`` (a ``(K, L)`` plan): a new array, the input is untouched.

    The move picks a uniformly random client among those that can move and, with exact budgets, swaps
    one of its trained layers for an untrained one. With ``exact_budget=False`` it draws uniformly among
    the moves the row allows: swap, add a layer (fewer than ``b_k``), drop a layer (at least one).
    A plan with no possible move (every ``b_k = L`` with exact budgets) is returned as a copy.
    """
    mask = np.array(mask, dtype=bool, copy=True)
    if not problem.plain:  # the constraint-aware moves of the move-based solvers
        from f3ocus.selection.solvers._moves import apply_moves, draw_out_slots, move_gains, uniform_targets

        masks, counts = mask[None], mask.sum(axis=0, dtype=np.int64)[None]
        k = np.array([rng.integers(problem.K)])
        a = draw_out_slots(problem, masks, k, rng)
        c = uniform_targets(move_gains(problem, 0.0, masks, counts, k, a), a, rng)
        apply_moves(masks, counts, k, a, c)
        return masks[0]
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
    """Uniformly random feasible plans (:func:`random_plan`), flattened for the binary encoding.

    Args:
        starts: optional ``(S, K, L)`` feasible plans put first in the sample (documented smart starts,
            e.g. :func:`f3ocus.selection.heuristics.smart_starts`); the rest stays uniformly random.
    """

    def __init__(self, starts: np.ndarray | None = None) -> None:
        super().__init__()
        self.starts = None if starts is None else np.asarray(starts, dtype=bool)

    def _do(self, problem, n_samples, *args, random_state=None, **kwargs):
        sel = _selection(problem)
        masks = random_plan(sel, random_state, n=n_samples)
        if self.starts is not None:
            m = min(len(self.starts), n_samples)
            masks[:m] = self.starts[:m]
        return _flat(masks)


class BudgetCrossover(Crossover):
    r"""Row-wise uniform crossover that keeps every client's count.

    For client $k$ and parents $A, B$: the layers both train are inherited by both children. The layers
    only $A$ trains and those only $B$ trains are paired in column order (the $i$-th of $A_k \setminus B_k$
    with the $i$-th of $B_k \setminus A_k$); for each pair a fair coin decides which child gets which.
    Unpaired layers (when the counts differ, ``exact_budget=False``) stay with their parent's child. So
    child 1 keeps $|A_k|$ layers and child 2 keeps $|B_k|$, and every differing layer reaches either
    child with probability 1/2.

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
        only_a, only_b = a & ~b, b & ~a
        # pair index of each differing entry within its row (0-based), and whether it has a partner
        idx_a = np.cumsum(only_a, axis=-1) - 1
        idx_b = np.cumsum(only_b, axis=-1) - 1
        paired = np.minimum(only_a.sum(axis=-1), only_b.sum(axis=-1))[..., None]
        coin = random_state.random((n_matings, sel.K, sel.L)) < 0.5
        flip_a = only_a & (idx_a < paired) & np.take_along_axis(coin, np.clip(idx_a, 0, None), axis=-1)
        flip_b = only_b & (idx_b < paired) & np.take_along_axis(coin, np.clip(idx_b, 0, None), axis=-1)
        child1 = (a & ~flip_a) | flip_b
        child2 = (b & ~flip_b) | flip_a
        if not sel.plain:  # capacities and coverage are not kept by the row-wise exchange of layers
            child1, child2 = repair(child1, sel, random_state), repair(child2, sel, random_state)
        return np.stack([_flat(child1), _flat(child2)])


class BudgetMutation(Mutation):
    r"""Each client row is moved by :func:`neighbor`-style moves with probability ``prob_var``.

    With ``exact_budget=True`` a move swaps a trained layer $l$ for an untrained one $l'$; with
    ``exact_budget=False`` it is a swap, an add or a drop, drawn uniformly among those the row allows.

    With ``guided=s > 1`` a swap is the best of $s$ uniformly drawn candidate swaps (a tournament) by its
    effect on the objective. For the scalarized problem (tradeoff $t$) the effect of moving client $k$
    from $l$ to $l'$ is exactly

    $$ \Delta = (S_{kl'} - S_{kl}) - \frac{2t}{L}(n_{l'} - n_l + 1); $$

    for the two-objective problem each row uses, with equal odds, the importance change
    $S_{kl'} - S_{kl}$, the diversity change $-(n_{l'} - n_l + 1)$ or, when the problem has a
    ``target_tradeoff`` (the weight the final plan will be picked with), $\Delta$ at that weight.
    ``guided=1`` is the uniform move.

    Args:
        prob: probability that an individual is mutated at all.
        prob_var: probability per client row of one move; ``None`` means ``1 / K`` (one move per plan on
            average, at least one is always made when the individual is mutated).
        guided: tournament size for swaps (``1``: uniform).
    """

    def __init__(self, prob: float = 1.0, prob_var: float | None = None, guided: int = 1, **kwargs) -> None:
        super().__init__(prob=prob, prob_var=prob_var, **kwargs)
        self._prob_var = prob_var
        self.guided = max(1, int(guided))

    def _do(self, problem, X, *args, random_state=None, **kwargs):  # noqa: N803 - pymoo's name
        sel = _selection(problem)
        masks = X.reshape(-1, sel.K, sel.L).astype(bool).copy()
        n = masks.shape[0]
        p = 1.0 / sel.K if self._prob_var is None else float(self._prob_var)
        hit = random_state.random((n, sel.K)) < p
        hit[np.arange(n), random_state.integers(sel.K, size=n)] = True
        p_idx, k_idx = np.nonzero(hit)
        rows = masks[p_idx, k_idx]  # (H, L) the rows to move
        count = rows.sum(axis=-1)
        s = self.guided
        movable, free = rows, ~rows
        if not sel.plain:  # required cells never leave, forbidden cells never enter
            movable = rows & ~sel.required_mask[k_idx]
            free = ~rows & sel.allowed_mask[k_idx]
        on = np.where(movable[:, None], random_state.random((rows.shape[0], s, sel.L)), -1.0).argmax(axis=-1)
        off = np.where(free[:, None], random_state.random((rows.shape[0], s, sel.L)), -1.0).argmax(axis=-1)
        if s > 1:
            n_l = masks.sum(axis=1)[p_idx].astype(np.float64)  # (H, L) counts of each row's plan
            w = sel.linear[k_idx]
            n_off, n_on = np.take_along_axis(n_l, off, axis=-1), np.take_along_axis(n_l, on, axis=-1)
            w_off, w_on = np.take_along_axis(w, off, axis=-1), np.take_along_axis(w, on, axis=-1)

            def swap_gain(t):  # the closed-form gain of the swap on -> off at tradeoff t
                return add_gains(sel, t, w_off, n_off) - remove_losses(sel, t, w_on, n_on)

            tradeoff = getattr(problem, "tradeoff", None)
            target = getattr(problem, "target_tradeoff", None)
            if tradeoff is not None:
                gain = swap_gain(tradeoff)
            else:
                # importance, diversity (and the target scalarization, when known) with equal odds
                kind = random_state.integers(2 if target is None else 3, size=rows.shape[0])[:, None]
                gain = np.where(kind == 0, w_off - w_on, swap_gain(1.0) - (w_off - w_on))
                if target is not None:
                    gain = np.where(kind == 2, swap_gain(target), gain)
            pick = gain.argmax(axis=-1)
            on, off = on[np.arange(on.shape[0]), pick], off[np.arange(off.shape[0]), pick]
        else:
            on, off = on[:, 0], off[:, 0]
        can_swap = (count > 0) & (count < sel.L)
        if not sel.plain:
            no_on, no_off = ~movable.any(axis=-1), ~free.any(axis=-1)
            can_swap = ~no_on & ~no_off
        if sel.exact_budget:
            drop = add = can_swap
        else:
            # one of swap / add / drop, drawn uniformly; a move the row does not allow falls back to
            # the first allowed one in the order swap, add, drop
            kind = random_state.integers(3, size=count.shape)
            can_add, can_drop = count < sel.budgets[k_idx], count > 0
            swap = (kind == 0) & can_swap
            only_add = (kind == 1) & can_add
            only_drop = (kind == 2) & can_drop
            rest = ~(swap | only_add | only_drop)
            swap |= rest & can_swap
            only_add |= rest & ~can_swap & can_add
            only_drop |= rest & ~can_swap & ~can_add & can_drop
            drop, add = swap | only_drop, swap | only_add
        if not sel.plain:
            drop, add = drop & ~no_on, add & ~no_off
            if sel.exact_budget:
                drop = add = drop & add
        masks[p_idx[drop], k_idx[drop], on[drop]] = False
        masks[p_idx[add], k_idx[add], off[add]] = True
        if not sel.plain:  # capacities and coverage
            masks = repair(masks, sel, random_state)
        return _flat(masks)


class BudgetRepair(Repair):
    """pymoo ``Repair`` wrapper of :func:`repair` for the binary encoding."""

    def _do(self, problem, X, random_state=None, **kwargs):  # noqa: N803 - pymoo's name
        sel = _selection(problem)
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return _flat(repair(X.reshape(-1, sel.K, sel.L), sel, rng))


class PlanDuplicateElimination(DuplicateElimination):
    """Exact duplicate elimination for binary plans by hashing their packed bits.

    pymoo's default compares all pairs by Euclidean distance, $O(P^2 K L)$ per generation; hashing the
    packed rows is $O(P K L)$ and exact for 0/1 vectors.
    """

    @staticmethod
    def _keys(pop) -> list[bytes]:
        X = np.atleast_2d(pop.get("X")).astype(bool)  # noqa: N806
        packed = np.packbits(X, axis=1)
        return [row.tobytes() for row in packed]

    def _do(self, pop, other, is_duplicate):
        seen = set() if other is None else set(self._keys(other))
        for i, key in enumerate(self._keys(pop)):
            if key in seen:
                is_duplicate[i] = True
            elif other is None:
                seen.add(key)
        return is_duplicate
