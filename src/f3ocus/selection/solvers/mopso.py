r"""Multi-objective particle swarm optimization (MOPSO) on budgeted binary plans, with an external archive.

The paper's multi-objective solver (F³OCUS, Saha et al., CVPR 2025) after Coello Coello, Pulido &
Lechuga, "Handling multiple objectives with particle swarm optimization", IEEE TEVC 2004, with the
crowding-distance archive of MOPSO-CD (Raquel & Naval, GECCO 2005). It searches the two objectives
$F = [-\text{importance}, \text{diversity}]$ and returns its archive as the front.

pymoo's ``MOPSO_CD`` moves real vectors in $[0,1]^{KL}$ one particle at a time; here every particle is
a feasible plan $x \in \{0,1\}^{K \times L}$ with a real velocity $v \in \mathbb{R}^{K \times L}$, and the
whole swarm moves at once:

$$
v \leftarrow w\,v + c_1 r_1 \odot (p - x) + c_2 r_2 \odot (g - x), \qquad |v_{kl}| \le v_{\max},
$$

with $p$ the particle's personal best, $g$ a leader drawn from the archive (binary tournament on
crowding distance, less crowded wins) and $r_1, r_2 \sim U(0,1)$ per entry. The new plan is decoded
from the keys $x + v + u$, $u \sim U(0, \text{noise})$: client $k$ trains the layers with its $b_k$
largest keys (with ``exact_budget=False`` only those above $1/2$), so every plan keeps the budgets.
With probability ``mutation`` a particle then makes one random budget-keeping move (Coello et al.'s
mutation operator). The personal best is replaced when the new plan dominates it, kept when dominated,
and replaced with probability 1/2 otherwise. The archive keeps the non-dominated plans seen so far,
pruned to ``archive_size`` by dropping the most crowded ones.

**Local improvement pass** (``local_search=True``, default). At the end, for tradeoffs $t_j$ on a grid
around the slope $t^\star$ between the archive's two ends ($t_j = t^\star 2^{j/2}$, $|j| \le$
``n_polish // 2``, and $t = 0$), plus the tradeoff the caller will pick with when the problem carries
one (``problem.target_tradeoff``), the archive plan that maximizes importance $- t_j\cdot$diversity
climbs to a local optimum of single moves and two-client exchanges
(:func:`~f3ocus.selection.solvers._moves.polish`); the climbed plans join the archive. The grid improves
the front wherever a tradeoff would pick; the caller's tradeoff makes the plan picked with it a local
optimum. ``algorithm.data`` reports the archive size before and after and the moves the pass made.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.display.multi import MultiObjectiveOutput

from f3ocus._checks import check_int, check_positive_float
from f3ocus.selection.decision import end_slope, pareto_mask
from f3ocus.selection.operators import BudgetSampling
from f3ocus.selection.plans import fill, top_b
from f3ocus.selection.problem import SelectionPymooProblem
from f3ocus.selection.solvers import register_solver
from f3ocus.selection.solvers._moves import apply_moves, draw_out_slots, move_gains, polish, uniform_targets

__all__ = ["MOPSO", "mopso"]


class MOPSO(Algorithm):
    """Binary, budget-keeping MOPSO with a crowding-distance archive and a final local improvement pass.

    Args:
        pop_size: number of particles.
        n_gen: default termination ``("n_iter", n_gen)``.
        w: inertia weight.
        c1: cognitive weight (towards the personal best).
        c2: social weight (towards the leader).
        v_max: velocity bound.
        noise: width of the uniform key noise that breaks ties in the decoding.
        mutation: probability that a particle makes one random move per iteration.
        archive_size: largest archive kept during the search.
        local_search: run the final local improvement pass.
        n_polish: number of nonzero tradeoffs on the polishing grid.
        **kwargs: passed to ``pymoo.core.algorithm.Algorithm`` (``termination``, ``seed``, ...).
    """

    def __init__(
        self,
        pop_size: int = 40,
        n_gen: int = 200,
        w: float = 0.4,
        c1: float = 1.0,
        c2: float = 1.0,
        v_max: float = 1.0,
        noise: float = 0.2,
        mutation: float = 0.2,
        archive_size: int = 100,
        local_search: bool = True,
        n_polish: int = 17,
        output=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("termination", ("n_iter", check_int("n_gen", n_gen, low=1)))
        super().__init__(output=MultiObjectiveOutput() if output is None else output, **kwargs)
        self.pop_size = check_int("pop_size", pop_size, low=1)
        self.w = check_positive_float("w", w, allow_zero=True)
        self.c1 = check_positive_float("c1", c1, allow_zero=True)
        self.c2 = check_positive_float("c2", c2, allow_zero=True)
        self.v_max = check_positive_float("v_max", v_max)
        self.noise = check_positive_float("noise", noise, allow_zero=True)
        self.mutation = check_positive_float("mutation", mutation, allow_zero=True)
        if self.mutation > 1:
            raise ValueError(f"mutation is a probability in [0, 1], got {mutation!r}.")
        self.archive_size = check_int("archive_size", archive_size, low=2)
        self.local_search = bool(local_search)
        self.n_polish = check_int("n_polish", n_polish, low=0)

    def _setup(self, problem, **kwargs) -> None:
        if (
            not isinstance(problem, SelectionPymooProblem)
            or problem.n_obj != 2
            or problem.encoding != "binary"
        ):
            raise ValueError(
                "solver 'mopso' runs on the two-objective SelectionPymooProblem with the binary encoding "
                f"(tradeoff=None), got {problem!r}; call select_layers(..., solver='mopso')."
            )
        self.sel = problem.selection

    # -- pymoo hooks -------------------------------------------------------------------------------
    def _initialize_infill(self) -> Population:
        rng, sel = self.random_state, self.sel
        n_biased = self.pop_size // 2
        uniform = BudgetSampling().do(self.problem, self.pop_size - n_biased, random_state=rng).get("X")
        # the other half draws each row's layers without replacement with probability ∝ S_kl
        keys = np.log(np.maximum(sel.scores, 1e-300)) + rng.gumbel(size=(n_biased, sel.K, sel.L))
        biased = self._decode(keys).reshape(n_biased, -1)
        return Population.new("X", np.concatenate([uniform.astype(bool), biased]))

    def _initialize_advance(self, infills=None, **kwargs) -> None:
        self.velocity = np.zeros((self.pop_size, self.sel.K, self.sel.L))
        self.pbest = infills
        self.repository = self._prune(infills)

    def _infill(self) -> Population:
        rng, sel = self.random_state, self.sel
        x = self._masks(self.pop).astype(np.float64)
        p = self._masks(self.pbest).astype(np.float64)
        g = self._masks(self.repository[self._leaders()]).astype(np.float64)
        r1, r2 = rng.random(x.shape), rng.random(x.shape)
        v = self.w * self.velocity + self.c1 * r1 * (p - x) + self.c2 * r2 * (g - x)
        self.velocity = np.clip(v, -self.v_max, self.v_max)
        keys = x + self.velocity + self.noise * rng.random(x.shape)
        if sel.plain:
            masks = self._decode(keys)
            if not sel.exact_budget:
                masks &= keys > 0.5
        else:
            masks = fill(keys, sel, rng, take=None if sel.exact_budget else keys > 0.5)
        self._mutate(masks)
        return Population.new("X", masks.reshape(len(masks), -1))

    def _advance(self, infills=None, **kwargs) -> None:
        self.pop = infills
        new, old = infills.get("F"), self.pbest.get("F")
        new_dominates = np.all(new <= old, axis=1) & np.any(new < old, axis=1)
        old_dominates = np.all(old <= new, axis=1) & np.any(old < new, axis=1)
        coin = self.random_state.random(len(new)) < 0.5
        take = new_dominates | (~old_dominates & coin)
        self.pbest = Population.create(*[infills[i] if t else self.pbest[i] for i, t in enumerate(take)])
        self.repository = self._prune(Population.merge(self.repository, infills))

    def _set_optimum(self) -> None:
        self.opt = self.repository

    def _finalize(self) -> None:
        self.data.update(
            front_before_local_search=len(self.repository), local_search_moves=0, local_search_tradeoffs=[]
        )
        if not self.local_search:
            return
        F = self.repository.get("F")  # noqa: N806
        imp, div = -F[:, 0], F[:, 1]
        slope = end_slope(imp, div)
        half = self.n_polish // 2
        grid = [0.0] + [float(slope * 2.0 ** (j / 2)) for j in range(-half, self.n_polish - half)]
        target = getattr(self.problem, "target_tradeoff", None)
        if target is not None:
            grid.append(float(target))
        starts = np.array([int(np.argmax(imp - t * div)) for t in grid])
        masks = self._masks(self.repository)[starts]
        moves = 0
        for i, t in enumerate(grid):
            masks[i], n = polish(self.sel, t, masks[i])
            moves += n
        polished = Population.new("X", masks.reshape(len(masks), -1))
        self.evaluator.eval(self.problem, polished, algorithm=self)
        self.repository = self._prune(Population.merge(self.repository, polished), limit=None)
        self.opt = self.repository
        self.data.update(
            local_search_moves=moves,
            local_search_tradeoffs=grid,
            front_after_local_search=len(self.repository),
        )

    # -- helpers -----------------------------------------------------------------------------------
    def _masks(self, pop: Population) -> np.ndarray:
        return pop.get("X").astype(bool).reshape(len(pop), self.sel.K, self.sel.L).copy()

    def _decode(self, keys: np.ndarray) -> np.ndarray:
        """Each row's ``b_k`` largest keys (one sort; :func:`top_b` breaks the rare ties)."""
        if not self.sel.plain:
            return fill(keys, self.sel, self.random_state)
        b = self.sel.budgets
        desc = -np.sort(-keys, axis=-1)
        threshold = np.take_along_axis(desc, np.broadcast_to(b - 1, keys.shape[:-1])[..., None], -1)
        masks = keys >= threshold
        if np.any(masks.sum(axis=-1) != b):
            masks = top_b(keys, b)
        return masks

    def _prune(self, pop: Population, limit: int | None = -1) -> Population:
        """Non-dominated, de-duplicated plans of ``pop``, at most ``limit`` (the most crowded go first)."""
        limit = self.archive_size if limit == -1 else limit
        pop = pop[pareto_mask(pop.get("F"))]
        rows = np.packbits(pop.get("X").astype(bool), axis=1)
        first = {row.tobytes(): i for i, row in reversed(list(enumerate(rows)))}
        pop = pop[np.sort(np.fromiter(first.values(), dtype=np.int64))]
        while limit is not None and len(pop) > limit:
            crowding = calc_crowding_distance(pop.get("F"))
            keep = np.ones(len(pop), dtype=bool)
            keep[int(np.argmin(crowding))] = False
            pop = pop[keep]
        return pop

    def _leaders(self) -> np.ndarray:
        """Archive indices, one per particle, by binary tournament on crowding distance."""
        n = len(self.repository)
        if n == 1:
            return np.zeros(self.pop_size, dtype=np.int64)
        crowding = calc_crowding_distance(self.repository.get("F"))
        i, j = self.random_state.integers(n, size=(2, self.pop_size))
        return np.where(crowding[i] >= crowding[j], i, j)

    def _mutate(self, masks: np.ndarray) -> None:
        """One uniformly random budget-keeping move in a random subset of the particles (in place)."""
        rng, sel = self.random_state, self.sel
        hit = np.flatnonzero(rng.random(len(masks)) < self.mutation)
        if hit.size == 0:
            return
        sub = masks[hit]
        counts = sub.sum(axis=1, dtype=np.int64)
        k = rng.integers(sel.K, size=hit.size)
        a = draw_out_slots(sel, sub, k, rng)
        c = uniform_targets(move_gains(sel, 0.0, sub, counts, k, a), a, rng)
        apply_moves(sub, counts, k, a, c)
        masks[hit] = sub


@register_solver(
    "mopso", options=MOPSO, multi_objective=True, family="multi-objective", reference="Coello Coello et al., IEEE TEVC 2004"
)
def mopso(problem, **options) -> MOPSO:
    """Factory for :class:`MOPSO` (``select_layers(..., solver="mopso", **options)``)."""
    return MOPSO(**options)
