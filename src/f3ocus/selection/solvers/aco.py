r"""Ant colony optimization (ACO) over client-layer pairs, as a pymoo ``Algorithm``.

Pheromone $\tau_{kl} \in [\tau_{\min}, 1]$ lives on the client-layer pairs (Dorigo & Stützle, *Ant Colony
Optimization*, MIT Press 2004). Every iteration each of the $A$ ants builds a plan: for every client $k$
it draws $b_k$ layers without replacement with probability

$$
p_{kl} \propto \tau_{kl}^{\alpha}\, \eta_{kl}^{\beta},
$$

done at once for all rows with the Gumbel-top-$b$ trick (the $b_k$ largest
$\alpha \log \tau_{kl} + \beta \log \eta_{kl} + G_{kl}$, $G$ standard Gumbel, are a draw without
replacement from $p_{k\cdot}$). The heuristic is the importance, $\eta_{kl} = S_{kl}$; with
``count_aware=True`` the clients are visited in a random order and
$\eta_{kl} = \max(S_{kl} - \frac{2t}{L} n_l, \epsilon)$ with $n_l$ the layer counts of the rows built so
far (the marginal gain of adding the layer at the current counts). Diversity enters through the
objective in any case.

With ``local_search=True`` every ant's plan (with costs: the iteration's best ant) then climbs to a
local optimum of the single moves (steepest ascent with the closed-form gains of
:mod:`~f3ocus.selection.solvers._moves`; with count budgets each step also applies the other clients'
improving swaps on untouched layers, whose gains add up exactly), the usual pairing of ACO with local
search (Dorigo & Stützle 2004, ch. 3.7). pymoo evaluates the ants.

Final local improvement (``polish=True``, declared at registration; ``polish=False`` turns it off): the
plan the solver would report climbs by single moves and two-client exchanges (the per-ant search above
has no exchanges); with costs at $K = 50$, $L = 48$, $\tau = 3$ this takes ACO from 2.5% to 0.1% of the best
known plan (docs/selection/constraints.md).

Pheromone update, in the hypercube framework with max-min bounds (Blum & Dorigo, IEEE TSMC-B 2004;
Stützle & Hoos, FGCS 2000): evaporation and an elitist deposit of the iteration-best plan $m^{ib}$
and the best-so-far plan $m^{bs}$,

$$
\tau \leftarrow \operatorname{clip}\bigl((1 - \rho)\,\tau + \rho\,(w\, m^{bs} + (1 - w)\, m^{ib}),\
\tau_{\min}, 1\bigr),
$$

so $\tau_{kl}$ is a running average of how often the elite plans let client $k$ train layer $l$. With
``exact_budget=False`` ants build rows of exactly $b_k$ layers (feasible), and the local search may
drop layers. With constraints (costs, required or forbidden cells, coverage) an ant's keys
$\alpha \log \tau_{kl} + \beta \log \eta_{kl} + G_{kl}$ with the static heuristic
$\eta_{kl} = \max(w_{kl}, \epsilon) / c_l$ go through the shared decoder
(:func:`~f3ocus.selection.plans.fill`), which keeps every constraint.
"""

from __future__ import annotations

import numpy as np
from pymoo.core.algorithm import Algorithm
from pymoo.core.population import Population
from pymoo.util.display.single import SingleObjectiveOutput

from f3ocus._checks import check_int, check_positive_float
from f3ocus.selection.gains import add_gains
from f3ocus.selection.plans import fill, top_b
from f3ocus.selection.solvers import register_solver
from f3ocus.selection.solvers._moves import polish, require_tradeoff

__all__ = ["AntColony", "aco"]

_EPS = 1e-12


class AntColony(Algorithm):
    """Ant colony optimization with elitist deposit and max-min pheromone bounds.

    Args:
        n_ants: ants per iteration (the population).
        n_gen: default termination ``("n_iter", n_gen)``.
        alpha: pheromone exponent $\\alpha$.
        beta: heuristic exponent $\\beta$.
        rho: evaporation rate $\\rho \\in (0, 1]$.
        elite_weight: weight $w$ of the best-so-far plan in the deposit (the rest goes to the
            iteration-best plan).
        tau_min: lower pheromone bound $\\tau_{\\min} \\in (0, 1)$.
        count_aware: use the count-aware heuristic (clients visited in a random order).
        local_search: let every ant climb to a single-move local optimum before evaluation.
        **kwargs: passed to ``pymoo.core.algorithm.Algorithm`` (``termination``, ``seed``, ...).

    Attributes:
        pheromone: the ``(K, L)`` pheromone matrix $\\tau$.
        n_ls_moves: moves made by the local search so far.
    """

    def __init__(
        self,
        n_ants: int = 10,
        n_gen: int = 60,
        alpha: float = 1.0,
        beta: float = 1.0,
        rho: float = 0.1,
        elite_weight: float = 0.5,
        tau_min: float = 0.01,
        count_aware: bool = True,
        local_search: bool = True,
        output=None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("termination", ("n_iter", check_int("n_gen", n_gen, low=1)))
        super().__init__(output=SingleObjectiveOutput() if output is None else output, **kwargs)
        self.n_ants = check_int("n_ants", n_ants, low=1)
        self.alpha = check_positive_float("alpha", alpha, allow_zero=True)
        self.beta = check_positive_float("beta", beta, allow_zero=True)
        self.rho = check_positive_float("rho", rho)
        self.elite_weight = check_positive_float("elite_weight", elite_weight, allow_zero=True)
        self.tau_min = check_positive_float("tau_min", tau_min)
        if self.rho > 1 or self.elite_weight > 1 or self.tau_min >= 1:
            raise ValueError(
                f"need rho in (0, 1], elite_weight in [0, 1] and tau_min in (0, 1), got rho={rho!r}, "
                f"elite_weight={elite_weight!r}, tau_min={tau_min!r}."
            )
        self.count_aware = bool(count_aware)
        self.local_search = bool(local_search)
        self.n_ls_moves = 0

    def _setup(self, problem, **kwargs) -> None:
        self.tradeoff = require_tradeoff(problem, "aco")
        self.sel = problem.selection
        self.pheromone = np.full((self.sel.K, self.sel.L), 0.5)
        self._log_eta = np.log(np.maximum(self.sel.scores, _EPS))

    # -- pymoo hooks -------------------------------------------------------------------------------
    def _initialize_infill(self) -> Population:
        return self._infill()

    def _infill(self) -> Population:
        masks = self._construct()
        if self.local_search:
            if self.sel.costs is None:
                masks, moves = polish(self.sel, self.tradeoff, masks, exchanges=False)
            else:  # capacities: a move scores L^2 pairs, so only the iteration's best ant climbs
                i = int(np.argmax(self.sel.scalarized(masks, self.tradeoff)))
                masks[i], moves = polish(self.sel, self.tradeoff, masks[i], exchanges=False)
            self.n_ls_moves += moves
        return Population.new("X", masks.reshape(len(masks), -1))

    def _initialize_advance(self, infills=None, **kwargs) -> None:
        self.best = infills[[int(np.argmin(infills.get("F")[:, 0]))]]
        self._deposit(infills)

    def _advance(self, infills=None, **kwargs) -> None:
        self.pop = infills
        i = int(np.argmin(infills.get("F")[:, 0]))
        if infills.get("F")[i, 0] < self.best.get("F")[0, 0]:
            self.best = infills[[i]]
        self._deposit(infills)

    def _set_optimum(self) -> None:
        self.opt = self.best
        self.data.update(n_ls_moves=self.n_ls_moves)

    # -- helpers -----------------------------------------------------------------------------------
    def _construct(self) -> np.ndarray:
        """``(n_ants, K, L)`` plans, each row a draw of ``b_k`` layers without replacement."""
        rng, sel = self.random_state, self.sel
        A, K, L = self.n_ants, sel.K, sel.L  # noqa: N806
        logit = self.alpha * np.log(self.pheromone) + rng.gumbel(size=(A, K, L))
        if not sel.plain:  # constraints: the shared decoder, static heuristic per unit of cost
            eta = np.maximum(sel.linear, _EPS) / (1.0 if sel.costs is None else sel.costs)
            return fill(logit + self.beta * np.log(eta), sel, rng)
        if not self.count_aware:
            return top_b(logit + self.beta * self._log_eta, sel.budgets)
        masks = np.zeros((A, K, L), dtype=bool)
        counts = np.zeros((A, L))
        offset = self.tradeoff / L  # the gain of adding a layer at the counts so far, up to a constant
        for k in rng.permutation(K):
            eta = np.maximum(add_gains(sel, self.tradeoff, sel.scores[k], counts) + offset, _EPS)
            row = top_b(logit[:, k] + self.beta * np.log(eta), np.full(A, sel.budgets[k]))
            masks[:, k] = row
            counts += row
        return masks

    def _deposit(self, pop: Population) -> None:
        K, L = self.sel.K, self.sel.L  # noqa: N806
        ib = pop[int(np.argmin(pop.get("F")[:, 0]))].X.astype(bool).reshape(K, L)
        bs = self.best[0].X.astype(bool).reshape(K, L)
        target = self.elite_weight * bs + (1.0 - self.elite_weight) * ib
        tau = (1.0 - self.rho) * self.pheromone + self.rho * target
        self.pheromone = np.clip(tau, self.tau_min, 1.0)


@register_solver("aco", polish=True, options=AntColony, family="single-objective", reference="Dorigo & Stützle, MIT Press 2004")
def aco(problem, **options) -> AntColony:
    """Factory for :class:`AntColony` (``select_layers(..., solver="aco", **options)``)."""
    return AntColony(**options)
