r"""Artificial bee colony (ABC) for the budgeted binary plan, as a pymoo ``Algorithm``.

The colony keeps $SN$ food sources (feasible plans $x_i$) with a trial counter each (Karaboga, "An idea
based on honey bee swarm for numerical optimization", TR06, Erciyes University 2005). One cycle has
three phases; pymoo evaluates the candidates of each phase as one population, so a cycle takes two
pymoo iterations (employed, onlooker) and the scouts are evaluated inside the onlooker step.

1. **Employed bees.** Every source $x_i$ gets one neighbor $v_i$ and keeps the better of the two
   (greedy selection); $v_i$ no better than $x_i$ increments the trial counter of $i$, else resets it.
2. **Onlooker bees.** $SN$ onlookers pick sources with probability
   $p_i = \text{fit}_i / \sum_j \text{fit}_j$, $\text{fit}_i = 1/(1 + F_i)$ for $F_i \ge 0$ and
   $1 + |F_i|$ otherwise, and each makes a neighbor of its source. All onlookers of a source start from
   the same plan and the best of their neighbors competes with it (the synchronous form of the phase).
3. **Scout bee.** The source with the most trials, once above ``limit``, is abandoned and replaced
   by a uniformly random feasible plan.

Karaboga's continuous neighbor $v_{ij} = x_{ij} + \phi_{ij}(x_{ij} - x_{kj})$ changes one coordinate
of $x_i$ relative to a random partner $x_k$. On the budgeted plan the coordinate is a client row and
every neighbor keeps the budgets; a neighbor is one of (probabilities ``move_probs``):

- **partner move**: a random unit $a$ of client $k$'s budget (a layer it trains, preferring one its
  partner does not train) moves to a layer the partner trains and $x_i$ does not (the $x_k - x_i$
  difference term); a uniform move when the two rows agree;
- **best move**: the best target for a random unit $a$ of a random client, by the closed-form gain of
  :mod:`~f3ocus.selection.solvers._moves` (possibly "stay");
- **exchange**: the best exchange of layers between two random clients (it keeps the layer counts
  and so reaches plans that single moves cannot improve).

Smart start (declared at registration, ``smart_start=False`` turns it off; reported in
``stats["smart_start"]``): the client-only and greedy plans
(:func:`~f3ocus.selection.heuristics.smart_starts`) take the first places of the initial population, the
rest are uniformly random feasible plans.

Final local improvement (``polish=True``, declared at registration; ``polish=False`` turns it off): the
reported plan climbs by steepest ascent over single moves, two-client exchanges and, with costs, knapsack
moves (:func:`f3ocus.selection.solvers._moves.polish`), as for GA, NSGA-II, PSO and DE.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population
from pymoo.util.display.single import SingleObjectiveOutput

from f3ocus._checks import check_int
from f3ocus.selection.operators import BudgetSampling
from f3ocus.selection.solvers import register_solver
from f3ocus.selection.solvers._moves import (
    apply_moves,
    draw_out_slots,
    move_gains,
    pair_exchanges,
    require_tradeoff,
    uniform_targets,
)

__all__ = ["ArtificialBeeColony", "abc"]


class ArtificialBeeColony(Algorithm):
    """Karaboga's ABC with budget-keeping neighbors.

    Args:
        n_sources: number of food sources $SN$ (= employed bees = onlookers).
        limit: trials before a source is abandoned; ``None`` means ``2 * K``.
        n_cycles: default termination, ``("n_iter", 2 * n_cycles)`` (two pymoo iterations per cycle).
        move_probs: probabilities of the partner move, the best move and the exchange.
        n_moves: moves per neighbor (each drawn as above, applied in turn); ``None`` means
            ``max(1, round(K / 50))``, so large colonies of clients still improve in parallel.
        sampling: initial plans (default: uniformly random feasible plans, after ``starts``).
        starts: ``(S, K, L)`` start plans from the declared starting step (``select_layers`` passes the
            client-only and greedy plans of :func:`~f3ocus.selection.heuristics.smart_starts` unless
            ``smart_start=False``); they take the first ``S`` places of the initial population.
        **kwargs: passed to ``pymoo.core.algorithm.Algorithm`` (``termination``, ``seed``, ...).

    Attributes:
        n_scouts: number of abandoned sources so far.
    """

    def __init__(
        self,
        n_sources: int = 20,
        limit: int | None = None,
        n_cycles: int = 1000,
        move_probs: tuple[float, float, float] = (0.4, 0.4, 0.2),
        n_moves: int | None = None,
        sampling=None,
        starts: np.ndarray | None = None,
        output=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("termination", ("n_iter", 2 * check_int("n_cycles", n_cycles, low=1)))
        super().__init__(output=SingleObjectiveOutput() if output is None else output, **kwargs)
        self.n_sources = check_int("n_sources", n_sources, low=2)
        self.limit = None if limit is None else check_int("limit", limit, low=1)
        probs = np.asarray(move_probs, dtype=np.float64)
        if probs.shape != (3,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
            raise ValueError(
                f"move_probs must be three probabilities (partner, best, exchange) that sum to 1, "
                f"got {move_probs!r}."
            )
        self.move_probs = probs
        self.n_moves = None if n_moves is None else check_int("n_moves", n_moves, low=1)
        self.sampling = BudgetSampling(starts) if sampling is None else sampling
        self.n_scouts = 0

    def _setup(self, problem, **kwargs) -> None:
        self.tradeoff = require_tradeoff(problem, "abc")
        self.sel = problem.selection
        self._limit = 2 * self.sel.K if self.limit is None else self.limit
        self._n_moves = max(1, round(self.sel.K / 50)) if self.n_moves is None else self.n_moves

    # -- pymoo hooks -------------------------------------------------------------------------------
    def _initialize_infill(self) -> Population:
        return self.sampling.do(self.problem, self.n_sources, random_state=self.random_state)

    def _initialize_advance(self, infills=None, **kwargs) -> None:
        self.trials = np.zeros(self.n_sources, dtype=np.int64)
        self.best = infills[[int(np.argmin(infills.get("F")[:, 0]))]]

    def _infill(self) -> Population:
        rng = self.random_state
        if self._employed_phase():
            self._sources = np.arange(self.n_sources)
        else:  # onlookers choose sources by Karaboga's fitness-proportional rule
            F = self.pop.get("F")[:, 0]  # noqa: N806
            fit = np.where(F >= 0, 1.0 / (1.0 + np.abs(F)), 1.0 + np.abs(F))
            self._sources = rng.choice(self.n_sources, size=self.n_sources, p=fit / fit.sum())
        masks = self._masks(self.pop)[self._sources]
        partners = (self._sources + rng.integers(1, self.n_sources, size=len(masks))) % self.n_sources
        X = masks  # noqa: N806
        for _ in range(self._n_moves):  # a neighbor is n_moves moves
            X = self._neighbors(X, self._masks(self.pop)[partners])  # noqa: N806
        return Population.new("X", X.reshape(len(X), -1))

    def _advance(self, infills=None, **kwargs) -> None:
        F, f_new = self.pop.get("F")[:, 0], infills.get("F")[:, 0]  # noqa: N806
        # the best candidate of each source competes with it (greedy selection)
        order = np.lexsort((f_new, self._sources))
        first = np.r_[True, self._sources[order][1:] != self._sources[order][:-1]]
        best_of = order[first]
        src = self._sources[best_of]
        pop = list(self.pop)
        self.trials[src] += 1
        better = f_new[best_of] < F[src]
        for i, j in zip(src[better], best_of[better], strict=True):
            pop[i], self.trials[i] = infills[j], 0
        for i, j in zip(src[~better], best_of[~better], strict=True):
            if f_new[j] == F[i]:
                pop[i] = infills[j]  # equal plans move on the plateau, and keep their trials
        self.pop = Population.create(*pop)
        i = int(np.argmin(f_new))
        if f_new[i] < self.best.get("F")[0, 0]:
            self.best = infills[[i]]
        if not self._employed_phase():
            self._scout()

    def _set_optimum(self) -> None:
        self.opt = self.best
        self.data.update(n_scouts=self.n_scouts)

    # -- helpers -----------------------------------------------------------------------------------
    def _employed_phase(self) -> bool:
        return self.n_iter % 2 == 0  # iteration 1 is the initialization, then employed, onlooker, ...

    def _masks(self, pop: Population) -> np.ndarray:
        return pop.get("X").astype(bool).reshape(len(pop), self.sel.K, self.sel.L).copy()

    def _scout(self) -> None:
        i = int(np.argmax(self.trials))
        if self.trials[i] <= self._limit:
            return
        scout = BudgetSampling().do(self.problem, 1, random_state=self.random_state)  # uniformly random
        self.evaluator.eval(self.problem, scout, algorithm=self)
        pop = list(self.pop)
        pop[i] = scout[0]
        self.pop = Population.create(*pop)
        self.trials[i] = 0
        self.n_scouts += 1

    def _neighbors(self, masks: np.ndarray, partner: np.ndarray) -> np.ndarray:
        """One budget-keeping neighbor of each plan in ``masks`` (see the module docstring)."""
        rng, sel = self.random_state, self.sel
        P, K, L = masks.shape  # noqa: N806
        rows = np.arange(P)
        kind = rng.choice(3, size=P, p=self.move_probs)
        counts = masks.sum(axis=1, dtype=np.int64)
        k = rng.integers(K, size=P)
        own, other = masks[rows, k], partner[rows, k]
        a = draw_out_slots(sel, masks, k, rng)
        if sel.exact_budget:  # the partner move prefers a unit the partner does not train
            keys = rng.random((P, L)) + (own & ~other) - 2.0 * ~own
            a = np.where(kind == 0, keys.argmax(axis=1), a)
        gains = move_gains(sel, self.tradeoff, masks, counts, k, a)
        wanted = other & ~own & np.isfinite(gains[:, :L])
        c_partner = np.where(wanted, rng.random((P, L)), -1.0).argmax(axis=1)
        c_partner = np.where(wanted.any(axis=1), c_partner, uniform_targets(gains, a, rng))
        c = np.where(kind == 0, c_partner, gains.argmax(axis=1))
        single = kind != 2
        out, n_out = masks.copy(), counts.copy()
        sub, sub_n = out[single], n_out[single]
        apply_moves(sub, sub_n, k[single], a[single], c[single])
        out[single] = sub
        # exchanges: client k gives a and takes c from client k2, which does the opposite
        ex = np.flatnonzero(kind == 2)
        if ex.size:
            k1 = k[ex]
            k2 = (k1 + rng.integers(1, K, size=ex.size)) % K if K > 1 else k1
            g, la, lc = pair_exchanges(sel, masks[ex], k1, k2)
            ok = np.isfinite(g) & (k1 != k2)
            p, k1, k2, la, lc = ex[ok], k1[ok], k2[ok], la[ok], lc[ok]
            out[p, k1, la], out[p, k1, lc], out[p, k2, lc], out[p, k2, la] = False, True, False, True
        return out


@register_solver("abc", polish=True, smart_start=True, options=ArtificialBeeColony, family="single-objective", reference="Karaboga, TR06 2005")
def abc(problem, **options) -> ArtificialBeeColony:
    """Factory for :class:`ArtificialBeeColony` (``select_layers(..., solver="abc", **options)``)."""
    return ArtificialBeeColony(**options)
