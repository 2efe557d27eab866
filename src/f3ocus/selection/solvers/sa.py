r"""Simulated annealing on budget-keeping moves, written as a pymoo ``Algorithm``.

pymoo has no simulated annealing; this module is also the template for writing your own metaheuristic
(see the "Your own solver" docs page). The three methods pymoo calls are:

1. ``_initialize_infill``: the first population (here: the smart starts, then one random feasible plan per remaining chain);
2. ``_infill``: new candidates (here: one neighbor per chain);
3. ``_advance``: after pymoo evaluated the candidates, update the state (here: accept or reject).

The algorithm (Kirkpatrick, Gelatt & Vecchi, "Optimization by simulated annealing", Science 1983), run
on $P$ independent chains at once. Each chain holds a feasible plan $x$ with objective
$F(x) = -(\text{importance} - t \cdot \text{diversity})$ (minimized). At iteration $i$ with temperature
$T_i$ every chain proposes a neighbor $x'$: a random client $k$, a random unit $a$ of its budget (a
trained layer), and a target $c$ drawn by the proposal $q$:

- ``"gibbs"`` (default): $q(c) \propto \exp(\Delta f(a \to c) / T_i)$ over the layers $k$ does not
  train and $c = a$ (stay), with the closed-form gain $\Delta f$ of
  :mod:`~f3ocus.selection.solvers._moves` (heat-bath proposal, Geman & Geman, IEEE TPAMI 1984);
- ``"uniform"``: $c$ uniform among the layers $k$ does not train (Kirkpatrick et al.'s move).

The candidate is accepted with the Metropolis-Hastings probability

$$
\alpha = \min\Bigl(1,\ \exp\bigl(-(F(x') - F(x)) / T_i\bigr)\,\frac{q(x \mid x')}{q(x' \mid x)}\Bigr).
$$

For the symmetric uniform proposal the ratio is 1 (the Metropolis rule). For the Gibbs proposal it is
$\exp(-\Delta f / T_i)$ and cancels the Boltzmann factor, so every proposal is accepted: the chain moves
to a neighbor with probability proportional to its Boltzmann weight, which is why it needs far fewer
iterations than the uniform proposal on this problem. (Both ratios are exact with exact budgets; with
``exact_budget=False`` a row with several unused units picks "add" and "drop" with slightly different
probabilities in the two directions, which the acceptance ignores: harmless for optimization.)

Temperature: geometric cooling $T_i = T_0 (T_1 / T_0)^{i/(n-1)}$ over a schedule of $n$ iterations.
By default $T_0$ is the standard deviation of the gains of uniform random moves from the initial
chains (the spread of the objective changes the search meets at the start) and $T_1 = 10^{-3} T_0$.
If the termination allows more than $n$ iterations the schedule restarts at $T_0$ (re-annealing from
the chains' current plans). The reported plan is the best one any chain visited.

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

from f3ocus._checks import check_choice, check_int, check_positive_float
from f3ocus.selection.operators import BudgetSampling
from f3ocus.selection.solvers import register_solver
from f3ocus.selection.solvers._moves import (
    apply_moves,
    draw_out_slots,
    move_gains,
    require_tradeoff,
    uniform_targets,
)

__all__ = ["SimulatedAnnealing", "sa"]


class SimulatedAnnealing(Algorithm):
    """Simulated annealing with ``n_chains`` parallel chains on the binary plan encoding.

    Args:
        n_chains: number of independent chains (the population; evaluated together).
        n_iter: length of one cooling schedule; also the default termination ``("n_iter", n_iter)``.
        proposal: ``"gibbs"`` (heat-bath target, every move accepted) or ``"uniform"`` (Metropolis).
        t_start: initial temperature $T_0$; ``None`` calibrates it to the instance (see the module).
        t_end: final temperature $T_1$; ``None`` means ``1e-3 * t_start``.
        sampling: initial plans (default: uniformly random feasible plans, after ``starts``).
        starts: ``(S, K, L)`` start plans from the declared starting step (``select_layers`` passes the
            client-only and greedy plans of :func:`~f3ocus.selection.heuristics.smart_starts` unless
            ``smart_start=False``); they take the first ``S`` places of the initial population.
        **kwargs: passed to ``pymoo.core.algorithm.Algorithm`` (``termination``, ``seed``, ...).

    Attributes:
        temperature: the temperature of the last proposal.
        n_accepted: number of accepted proposals so far (over all chains).
    """

    def __init__(
        self,
        n_chains: int = 16,
        n_iter: int = 4000,
        proposal: str = "gibbs",
        t_start: float | None = None,
        t_end: float | None = None,
        sampling=None,
        starts: np.ndarray | None = None,
        output=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("termination", ("n_iter", check_int("n_iter", n_iter, low=2)))
        super().__init__(output=SingleObjectiveOutput() if output is None else output, **kwargs)
        self.n_chains = check_int("n_chains", n_chains, low=1)
        self.n_iter_schedule = int(n_iter)
        self.proposal = check_choice("proposal", proposal, ("gibbs", "uniform"))
        self.t_start = None if t_start is None else check_positive_float("t_start", t_start)
        self.t_end = None if t_end is None else check_positive_float("t_end", t_end)
        self.sampling = BudgetSampling(starts) if sampling is None else sampling
        self.temperature = float("nan")
        self.n_accepted = 0

    def _setup(self, problem, **kwargs) -> None:
        self.tradeoff = require_tradeoff(problem, "sa")
        self.sel = problem.selection

    # -- the three pymoo hooks -------------------------------------------------------------------
    def _initialize_infill(self) -> Population:
        return self.sampling.do(self.problem, self.n_chains, random_state=self.random_state)

    def _initialize_advance(self, infills=None, **kwargs) -> None:
        self.best = infills[[int(np.argmin(infills.get("F")[:, 0]))]]
        t0 = self.t_start if self.t_start is not None else self._calibrate(infills)
        t1 = self.t_end if self.t_end is not None else 1e-3 * t0
        self._t0, self._t1 = t0, min(t1, t0)

    def _infill(self) -> Population:
        rng, sel = self.random_state, self.sel
        self.temperature = self._schedule(self.n_iter - 2)  # iteration 1 was the initialization
        masks = self._masks(self.pop)
        counts = masks.sum(axis=1, dtype=np.int64)
        k = rng.integers(sel.K, size=len(masks))  # a random client per chain
        a = draw_out_slots(sel, masks, k, rng)  # a random unit of its budget
        gains = move_gains(sel, self.tradeoff, masks, counts, k, a)  # Δf of every target
        if self.proposal == "gibbs":  # sample c ∝ exp(Δf / T) with the Gumbel-max trick
            c = np.argmax(gains / self.temperature + rng.gumbel(size=gains.shape), axis=1)
            self._log_q_ratio = -gains[np.arange(len(c)), c] / self.temperature
        else:
            c = uniform_targets(gains, a, rng)
            self._log_q_ratio = np.zeros(len(c))
        apply_moves(masks, counts, k, a, c)
        return Population.new("X", masks.reshape(len(masks), -1))

    def _advance(self, infills=None, **kwargs) -> None:
        f_old, f_new = self.pop.get("F")[:, 0], infills.get("F")[:, 0]
        log_alpha = -(f_new - f_old) / self.temperature + self._log_q_ratio
        accept = np.log(self.random_state.random(len(f_new))) < log_alpha
        self.n_accepted += int(accept.sum())
        pop = Population.create(*[infills[i] if ok else self.pop[i] for i, ok in enumerate(accept)])
        self.pop = pop
        i = int(np.argmin(f_new))
        if f_new[i] < self.best.get("F")[0, 0]:
            self.best = infills[[i]]

    def _set_optimum(self) -> None:
        self.opt = self.best  # the best plan any chain visited, not only the current ones
        self.data.update(n_accepted=self.n_accepted, temperature=self.temperature)

    # -- helpers -----------------------------------------------------------------------------------
    def _masks(self, pop: Population) -> np.ndarray:
        return pop.get("X").astype(bool).reshape(len(pop), self.sel.K, self.sel.L).copy()

    def _schedule(self, i: int) -> float:
        """Geometric cooling from ``T0`` to ``T1`` over ``n_iter`` iterations, restarting after."""
        n = self.n_iter_schedule
        return self._t0 * (self._t1 / self._t0) ** ((i % n) / (n - 1))

    def _calibrate(self, pop: Population, n_samples: int = 8) -> float:
        """Standard deviation of the gains of uniform random moves from the plans in ``pop``."""
        rng, sel = self.random_state, self.sel
        masks = np.repeat(self._masks(pop), n_samples, axis=0)
        counts = masks.sum(axis=1, dtype=np.int64)
        k = rng.integers(sel.K, size=len(masks))
        a = draw_out_slots(sel, masks, k, rng)
        gains = move_gains(sel, self.tradeoff, masks, counts, k, a)
        c = uniform_targets(gains, a, rng)
        delta = gains[np.arange(len(c)), c][c != a]
        spread = float(np.std(delta)) if delta.size > 1 else 0.0
        return spread if spread > 0 else 1.0


@register_solver("sa", polish=True, smart_start=True, options=SimulatedAnnealing, family="single-objective", reference="Kirkpatrick et al., Science 1983")
def sa(problem, **options) -> SimulatedAnnealing:
    """Factory for :class:`SimulatedAnnealing` (``select_layers(..., solver="sa", **options)``)."""
    return SimulatedAnnealing(**options)
