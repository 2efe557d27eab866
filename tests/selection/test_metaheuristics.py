"""SA, ABC, ACO and MOPSO: closed-form move gains, budgets, seeds, progress, and the SA template's behaviour."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymoo.core.callback import Callback
from pymoo.optimize import minimize

from f3ocus.selection.api import select_layers
from f3ocus.selection.operators import random_plan
from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem
from f3ocus.selection.solvers._moves import apply_moves, draw_out_slots, move_gains, polish
from f3ocus.selection.solvers.abc import ArtificialBeeColony
from f3ocus.selection.solvers.aco import AntColony
from f3ocus.selection.solvers.mopso import MOPSO
from f3ocus.selection.solvers.sa import SimulatedAnnealing

SHORT = {  # a few iterations each: enough to exercise every phase
    "sa": lambda: SimulatedAnnealing(n_chains=4, n_iter=30),
    "abc": lambda: ArtificialBeeColony(n_sources=4, n_cycles=10, limit=3),
    "aco": lambda: AntColony(n_ants=4, n_gen=5),
    "mopso": lambda: MOPSO(pop_size=6, n_gen=8, n_polish=3),
}


@st.composite
def problems(draw, max_k: int = 6, max_l: int = 6):
    """Small random problems in both budget modes, with a tradeoff."""
    K = draw(st.integers(1, max_k))  # noqa: N806
    L = draw(st.integers(1, max_l))  # noqa: N806
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    scores = rng.lognormal(0.0, 2.0, size=(K, L))
    scores /= scores.sum(axis=1, keepdims=True)
    budgets = rng.integers(1, L + 1, size=K)
    exact = draw(st.booleans())
    tradeoff = draw(st.sampled_from([0.0, 0.1, 1.0, 5.0]))
    return SelectionProblem(scores, budgets, exact_budget=exact), tradeoff, seed


# -- the closed-form gains against a full re-evaluation (float64) ---------------------------------
@settings(max_examples=60)
@given(problems())
def test_move_gains_match_full_evaluation(case):
    sel, t, seed = case
    rng = np.random.default_rng(seed)
    masks = random_plan(sel, rng, 3)
    counts = masks.sum(axis=1)
    k = rng.integers(sel.K, size=3)
    a = draw_out_slots(sel, masks, k, rng)
    gains = move_gains(sel, t, masks, counts, k, a)
    for p, c in itertools.product(range(3), range(sel.L + 1)):
        m, n = masks[p : p + 1].copy(), counts[p : p + 1].copy()
        if not np.isfinite(gains[p, c]):
            # forbidden: a layer the client already trains, or the empty slot with exact budgets
            assert (c < sel.L and masks[p, k[p], c] and c != a[p]) or (c == sel.L and sel.exact_budget)
            continue
        apply_moves(m, n, k[p : p + 1], a[p : p + 1], np.array([c]))
        assert sel.is_feasible(m[0])
        assert np.array_equal(n[0], m[0].sum(axis=0))
        want = sel.scalarized(m[0], t) - sel.scalarized(masks[p], t)
        np.testing.assert_allclose(gains[p, c], want, atol=1e-12)


@settings(max_examples=40)
@given(problems(max_k=4, max_l=5))
def test_polish_reaches_a_local_optimum_of_moves_and_exchanges(case):
    sel, t, seed = case
    start = random_plan(sel, np.random.default_rng(seed))
    plan, _ = polish(sel, t, start)
    value = sel.scalarized(plan, t)
    assert sel.is_feasible(plan)
    assert value >= sel.scalarized(start, t) - 1e-12
    # brute force: no single move and no two-client exchange improves the plan
    for k in range(sel.K):
        row = plan[k]
        sources = list(np.flatnonzero(row)) + (
            [sel.L] if not sel.exact_budget and row.sum() < sel.budgets[k] else []
        )
        targets = list(np.flatnonzero(~row)) + ([sel.L] if not sel.exact_budget else [])
        for a, c in itertools.product(sources, targets):
            if a == c:
                continue
            m = plan.copy()
            if a < sel.L:
                m[k, a] = False
            if c < sel.L:
                m[k, c] = True
            assert sel.scalarized(m, t) <= value + 1e-9
    for k1, k2 in itertools.combinations(range(sel.K), 2):
        for a, c in itertools.product(
            np.flatnonzero(plan[k1] & ~plan[k2]), np.flatnonzero(plan[k2] & ~plan[k1])
        ):
            m = plan.copy()
            m[k1, a], m[k1, c], m[k2, c], m[k2, a] = False, True, False, True
            assert sel.scalarized(m, t) <= value + 1e-9


# -- every algorithm keeps the budgets in every plan it ever holds ----------------------------------
class Record(Callback):
    """Keeps the plans of every population and the SA temperature of every iteration."""

    def __init__(self) -> None:
        super().__init__()
        self.X, self.F, self.temperature = [], [], []

    def notify(self, algorithm):
        self.X.append(algorithm.pop.get("X").astype(bool))
        self.F.append(algorithm.pop.get("F").copy())
        self.temperature.append(getattr(algorithm, "temperature", None))


def _problem(sel, t, name):
    return SelectionPymooProblem(sel, None if name == "mopso" else t)


@pytest.mark.parametrize("name", sorted(SHORT))
@settings(max_examples=12)
@given(case=problems())
def test_budgets_kept_in_every_population(name, case):
    sel, t, seed = case
    record = Record()
    res = minimize(_problem(sel, t, name), SHORT[name](), seed=seed, callback=record)
    for X in [*record.X, res.opt.get("X")]:  # noqa: N806
        assert np.all(sel.is_feasible(X.astype(bool).reshape(-1, sel.K, sel.L)))


# -- reproducible, and better than where it started --------------------------------------------------
def _instance(K=10, L=12, seed=0):  # noqa: N803
    rng = np.random.default_rng(seed)
    scores = np.exp(2.0 * (rng.standard_normal(L) + rng.standard_normal((K, L))) / np.sqrt(2))
    return SelectionProblem(scores / scores.sum(axis=1, keepdims=True), rng.integers(2, 5, size=K))


@pytest.mark.parametrize("name", sorted(SHORT))
def test_same_seed_same_result(name):
    sel = _instance()
    runs = [minimize(_problem(sel, 0.5, name), SHORT[name](), seed=7) for _ in range(2)]
    assert np.array_equal(runs[0].opt.get("X"), runs[1].opt.get("X"))
    assert np.array_equal(runs[0].pop.get("X"), runs[1].pop.get("X"))


@pytest.mark.parametrize("solver", ["sa", "abc", "aco", "mopso"])
def test_select_layers_is_reproducible(solver):
    sel = _instance(seed=3)
    opts = {"sa": {"n_iter": 50}, "abc": {"n_cycles": 20}, "aco": {"n_gen": 5}, "mopso": {"n_gen": 10}}[
        solver
    ]
    plans = [
        select_layers(sel.scores, sel.budgets, solver=solver, tradeoff=0.5, seed=11, **opts) for _ in range(2)
    ]
    assert np.array_equal(plans[0].mask, plans[1].mask)


@pytest.mark.parametrize(
    "name,make",
    [
        ("sa", lambda: SimulatedAnnealing(n_chains=4, n_iter=400)),
        ("abc", lambda: ArtificialBeeColony(n_sources=4, n_cycles=100)),
        ("aco", lambda: AntColony(n_ants=4, n_gen=10, local_search=False)),
        ("mopso", lambda: MOPSO(pop_size=8, n_gen=40, local_search=False)),
    ],
)
def test_improves_on_its_initial_population(name, make):
    sel, t = _instance(seed=5), 0.5
    record = Record()
    res = minimize(_problem(sel, t, name), make(), seed=1, callback=record)
    start = record.X[0].reshape(-1, sel.K, sel.L)
    final = res.opt.get("X").astype(bool).reshape(-1, sel.K, sel.L)
    assert sel.scalarized(final, t).max() > sel.scalarized(start, t).max() + 1e-6
    if name == "mopso":  # and the final front dominates or equals every initial point
        imp0, div0 = sel.importance(start), sel.diversity(start)
        imp1, div1 = sel.importance(final), sel.diversity(final)
        covered = (imp1[None, :] >= imp0[:, None] - 1e-12) & (div1[None, :] <= div0[:, None] + 1e-12)
        assert covered.any(axis=1).all()


# -- the SA template -------------------------------------------------------------------------------
def _sa_run(sel, t, **options):
    record = Record()
    algo = SimulatedAnnealing(**options)
    res = minimize(SelectionPymooProblem(sel, t), algo, seed=2, callback=record)
    return res, record


def test_sa_cools_geometrically_and_restarts():
    sel = _instance()
    res, rec = _sa_run(sel, 0.5, n_chains=2, n_iter=5, t_start=2.0, t_end=0.02, termination=("n_iter", 11))
    temps = np.array(rec.temperature[1:])  # iteration 1 is the initialization
    np.testing.assert_allclose(temps[:5], 2.0 * 0.01 ** (np.arange(5) / 4))
    np.testing.assert_allclose(temps[5:10], temps[:5])  # the schedule restarts at t_start


def test_sa_uniform_proposal_at_zero_temperature_never_worsens_a_chain():
    sel = _instance()
    _, rec = _sa_run(sel, 0.5, n_chains=6, n_iter=200, proposal="uniform", t_start=1e-12, t_end=1e-12)
    F = np.stack([f[:, 0] for f in rec.F])  # noqa: N806
    assert np.all(np.diff(F, axis=0) <= 1e-12)
    assert np.any(np.diff(F, axis=0) < 0)


def test_sa_uniform_proposal_at_huge_temperature_accepts_everything():
    sel = _instance()
    res, _ = _sa_run(sel, 0.5, n_chains=6, n_iter=100, proposal="uniform", t_start=1e9, t_end=1e9)
    assert res.algorithm.n_accepted == 6 * 99


def test_sa_gibbs_proposal_is_always_accepted():
    sel = _instance()
    res, _ = _sa_run(sel, 0.5, n_chains=6, n_iter=100)
    assert res.algorithm.n_accepted == 6 * 99


def test_sa_calibrated_temperature_scales_with_the_objective():
    sel = _instance()
    scaled = SelectionProblem(10.0 * sel.scores, sel.budgets)
    res1, _ = _sa_run(sel, 0.5, n_chains=4, n_iter=3)
    res10, _ = _sa_run(scaled, 5.0, n_chains=4, n_iter=3)
    assert res1.algorithm._t0 > 0
    np.testing.assert_allclose(res10.algorithm._t0, 10.0 * res1.algorithm._t0)
    np.testing.assert_allclose(res1.algorithm._t1, 1e-3 * res1.algorithm._t0)


def test_sa_reports_the_best_plan_visited():
    sel = _instance()
    res, rec = _sa_run(sel, 0.5, n_chains=3, n_iter=300, t_start=1.0, t_end=0.5)
    best_seen = min(f.min() for f in rec.F)
    assert res.F[0] == pytest.approx(best_seen)


# -- ACO and MOPSO specifics -------------------------------------------------------------------------
@pytest.mark.parametrize("count_aware", [True, False])
def test_aco_pheromone_stays_in_bounds_and_learns_the_best_plan(count_aware):
    sel = _instance()
    res = minimize(
        SelectionPymooProblem(sel, 0.5), AntColony(n_ants=4, n_gen=30, count_aware=count_aware), seed=0
    )
    tau = res.algorithm.pheromone
    assert tau.min() >= 0.01 and tau.max() <= 1.0
    best = res.X.astype(bool).reshape(sel.K, sel.L)
    assert tau[best].mean() > tau[~best].mean() + 0.5


def test_mopso_front_is_non_dominated_and_polish_is_reported():
    sel = _instance()
    res = minimize(SelectionPymooProblem(sel), MOPSO(pop_size=8, n_gen=20), seed=0)
    F = res.opt.get("F")  # noqa: N806
    dominated = np.all(F[:, None] <= F[None], axis=-1) & np.any(F[:, None] < F[None], axis=-1)
    assert not dominated.any()
    data = res.algorithm.data
    assert (
        data["local_search_moves"] > 0
        and len(data["local_search_tradeoffs"]) == 18
        and data["local_search_tradeoffs"][0] == 0.0
    )
    plan = select_layers(sel.scores, sel.budgets, solver="mopso", seed=0, n_gen=20)
    assert plan.front is not None and len(plan.front) > 1


# -- errors name the argument ---------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: SimulatedAnnealing(proposal="metropolis"), r"proposal='metropolis' is not a valid choice"),
        (lambda: SimulatedAnnealing(n_chains=0), r"n_chains must lie in \[1, inf\], got 0"),
        (lambda: SimulatedAnnealing(t_start=-1.0), r"t_start must be a finite number > 0, got -1.0"),
        (lambda: ArtificialBeeColony(move_probs=(0.5, 0.5, 0.5)), r"move_probs must be three probabilities"),
        (lambda: AntColony(rho=2.0), r"need rho in \(0, 1\].*rho=2.0"),
        (lambda: ArtificialBeeColony(n_moves=0), r"n_moves must lie in \[1, inf\], got 0"),
        (lambda: MOPSO(mutation=1.5), r"mutation is a probability in \[0, 1\], got 1.5"),
    ],
)
def test_bad_options_raise_value_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", ["sa", "abc", "aco"])
def test_single_objective_solvers_refuse_the_two_objective_problem(name):
    sel = _instance()
    with pytest.raises(ValueError, match=f"solver '{name}' runs on a single-objective SelectionPymooProblem"):
        minimize(SelectionPymooProblem(sel), SHORT[name](), seed=0)


def test_mopso_refuses_the_scalarized_problem():
    with pytest.raises(ValueError, match="solver 'mopso' runs on the two-objective SelectionPymooProblem"):
        minimize(SelectionPymooProblem(_instance(), 0.5), SHORT["mopso"](), seed=0)


def test_select_layers_passes_solver_options():
    sel = _instance()
    with pytest.raises(ValueError, match=r"n_iter must lie in \[2, inf\], got 1"):
        select_layers(sel.scores, sel.budgets, solver="sa", tradeoff=0.5, n_iter=1)


def test_mopso_also_polishes_at_the_callers_tradeoff():
    sel = _instance()
    problem = SelectionPymooProblem(sel)
    problem.target_tradeoff = 0.37  # set by select_layers when the caller passes a tradeoff
    res = minimize(problem, MOPSO(pop_size=8, n_gen=10), seed=0)
    assert res.algorithm.data["local_search_tradeoffs"][-1] == 0.37
    F = res.opt.get("F")  # noqa: N806
    best = res.opt[int(np.argmin(F[:, 0] + 0.37 * F[:, 1]))].X.astype(bool).reshape(sel.K, sel.L)
    climbed, moves = polish(sel, 0.37, best)
    assert moves == 0  # the plan picked at 0.37 is already a local optimum of moves and exchanges


@settings(max_examples=30)
@given(problems(), st.booleans())
def test_mopso_decoding_matches_top_b(case, ties):
    from f3ocus.selection.operators import top_b

    sel, _, seed = case
    algo = MOPSO()
    algo.sel = sel
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 3, size=(4, sel.K, sel.L)).astype(float) if ties else rng.random((4, sel.K, sel.L))
    np.testing.assert_array_equal(algo._decode(keys), top_b(keys, sel.budgets))
