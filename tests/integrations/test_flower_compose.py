"""The masked round composed with server optimizers, robust aggregators and central DP.

Each wrapped strategy is checked against a float64 computation by hand from the replies the clients
actually sent (recorded on the in-process grid).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from flower_fixtures import NODES, InProcessGrid, initial_arrays, make_client_app  # noqa: E402
from flwr.serverapp.strategy import (  # noqa: E402
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedXgbBagging,
    FedYogi,
    Krum,
    QFedAvg,
)

from f3ocus import resolve_layers  # noqa: E402
from f3ocus.fl.reference import masked_server_step_reference  # noqa: E402
from f3ocus.integrations.flower import F3ocusStrategy  # noqa: E402

F64 = torch.float64
KW = {"fraction_evaluate": 0.0, "min_available_nodes": 3}


def run(inner, rounds=2, budget=1, dtype=F64, rotate=False, **kwargs):
    """Run the federation; return strategy, result, the global arrays each round started from, and
    the replies ``{round: {node: (weight, {key: float64 array})}}``."""
    model, arrays = initial_arrays(dtype)
    lmap = resolve_layers(model)
    replies: dict = {}

    def record(reply):
        rnd = reply.metadata.group_id
        content = reply.content
        if "arrays" in content:
            n = content["metrics"]["num-examples"]
            arrs = {k: np.asarray(v.numpy(), dtype=np.float64) for k, v in content["arrays"].items()}
            replies.setdefault(rnd, {})[reply.metadata.src_node_id] = (float(n), arrs)
        return reply

    strategy = F3ocusStrategy(inner, lmap, budget=budget, tradeoff=0.0, **kwargs)
    app = make_client_app(budgets={}, dtype=dtype, no_scores=set(NODES) if rotate else frozenset())
    grid = InProcessGrid(app, NODES, tamper=record)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=rounds)
    starts = {}
    for m in grid.sent:
        if m.metadata.message_type == "train":
            rnd = m.content["config"]["server-round"]
            starts[rnd] = {k: np.asarray(v.numpy(), dtype=np.float64) for k, v in m.content["arrays"].items()}
    final = {k: np.asarray(v.numpy(), dtype=np.float64) for k, v in result.arrays.items()}
    by_round = {int(r) if r else i + 1: v for i, (r, v) in enumerate(replies.items())}
    return strategy, result, starts, by_round, final


def masked_mean(start, senders):
    out, trained = {}, set()
    for key, x in start.items():
        rows = [(n, a[key]) for n, a in senders.values() if key in a]
        if rows:
            out[key] = sum(n * a for n, a in rows) / sum(n for n, _ in rows)
            trained.add(key)
        else:
            out[key] = x.copy()
    return out, trained


@pytest.fixture
def round_ids(monkeypatch):
    """Give train messages the round as group id so that replies can be attributed to rounds."""
    from f3ocus.integrations.flower import strategy as S

    original = S.F3ocusStrategy._with_config

    def with_config(self, m, extra):
        msg = original(self, m, extra)
        msg.metadata.__dict__["_group_id"] = str(m.content["config"]["server-round"])
        return msg

    monkeypatch.setattr(S.F3ocusStrategy, "_with_config", with_config)


OPTIMIZERS = {
    "adam": (lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3, **KW), {"eta": 0.1, "tau": 1e-3}),
    "yogi": (
        lambda: FedYogi(eta=0.05, beta_1=0.8, beta_2=0.9, tau=1e-3, **KW),
        {"eta": 0.05, "beta_1": 0.8, "beta_2": 0.9},
    ),
    "adagrad": (lambda: FedAdagrad(eta=0.1, tau=1e-2, **KW), {"eta": 0.1, "tau": 1e-2}),
    "avgm": (
        lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9, **KW),
        {"server_momentum": 0.9, "server_learning_rate": 0.7},
    ),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_server_optimizers_see_the_masked_mean_as_their_aggregate(identity, round_ids, optimizer):
    """The rounds' global weights equal f3ocus.fl.reference.masked_server_step_reference (float64) on the
    replies the clients sent; untrained layers are bitwise unchanged although the moments move."""
    make, settings = OPTIMIZERS[optimizer]
    strategy, _, starts, replies, final = run(make(), rounds=3, rotate=True)  # plans rotate over layers
    state, held = None, []
    for rnd in (1, 2, 3):
        x = starts[rnd]
        senders = [{k: torch.from_numpy(a) for k, a in arrs.items()} for _, arrs in replies[rnd].values()]
        weights = [w for w, _ in replies[rnd].values()]
        expected, state = masked_server_step_reference(
            {k: torch.from_numpy(v) for k, v in x.items()},
            senders,
            weights,
            optimizer=optimizer,
            state=state,
            server_round=rnd,
            **settings,
        )
        after = starts.get(rnd + 1, final)
        trained = {k for s in senders for k in s}
        for k in x:
            if k in trained:
                np.testing.assert_allclose(after[k], expected[k], rtol=1e-12, atol=1e-14)
            else:  # bitwise, although the optimizer's moments would have moved it
                assert np.array_equal(after[k], x[k])
                held.append(bool(np.any(next(iter(state.values()))[k] != 0)))
    assert any(held) or optimizer == "adagrad"  # a held layer had nonzero momentum (Adagrad has none)
    # the same clients under FedAvg give a different model: the optimizer was not bypassed
    *_, fedavg_final = run(FedAvg(**KW), rounds=3, rotate=True)
    assert max(float(np.abs(final[k] - fedavg_final[k]).max()) for k in final) > 1e-3


def _krum_pick(rows, f=0):
    flat = np.stack([r.ravel() for r in rows])
    d = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    k = max(1, len(rows) - f - 2)
    scores = [np.sort(d[i])[1 : k + 1].sum() for i in range(len(rows))]
    return int(np.argmin(scores))


@pytest.mark.parametrize("kind", ["krum", "median"])
def test_robust_aggregators_run_per_layer_over_its_senders(identity, round_ids, kind):
    inner = Krum(**KW) if kind == "krum" else FedMedian(**KW)
    strategy, _, starts, replies, final = run(inner, rounds=1, budget=2)
    x = starts[1]
    for keys in strategy.layer_map.values():
        senders = [a for n, a in replies[1].values() if keys[0] in a]
        for k in keys:
            if not senders:
                assert np.array_equal(final[k], x[k])
            elif kind == "median":
                np.testing.assert_allclose(
                    final[k], np.median(np.stack([a[k] for a in senders]), axis=0), rtol=1e-12
                )
        if senders and kind == "krum":
            pick = _krum_pick([np.concatenate([a[k].ravel() for k in keys]) for a in senders])
            for k in keys:
                np.testing.assert_array_equal(final[k], senders[pick][k])
    assert strategy.composition.kind == "per-layer"


def test_bulyan_declines_layers_with_too_few_senders(identity, round_ids):
    strategy, _, starts, _, final = run(Bulyan(num_malicious_nodes=1, **KW), rounds=1, budget=2)
    assert all(np.array_equal(final[k], starts[1][k]) for k in final)
    assert strategy.history[1].kept and all("Bulyan declined" in r for r in strategy.history[1].kept.values())


def _clip(x, arrays, c):
    delta = {k: a - x[k] for k, a in arrays.items()}
    norm = math.sqrt(sum(float((d**2).sum()) for d in delta.values()))
    s = min(1.0, c / norm) if norm > 0 else 1.0
    return {k: x[k] + d * s for k, d in delta.items()}, s < 1


def test_server_side_fixed_clipping_clips_per_client_and_calibrates_noise_per_layer(
    identity, round_ids, monkeypatch
):
    z, c = 0.7, 0.05
    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(**KW), noise_multiplier=z, clipping_norm=c, num_sampled_clients=3
    )
    seed = 1234
    from f3ocus.integrations.flower import strategy as S

    init = S.F3ocusStrategy.__init__

    def seeded(self, *a, **k):
        init(self, *a, **k)
        self._rng = np.random.default_rng(seed)

    monkeypatch.setattr(S.F3ocusStrategy, "__init__", seeded)
    strategy, _, starts, replies, final = run(dp, rounds=1, budget=2)
    x = starts[1]
    clipped = {n: (w, _clip(x, a, c)[0]) for n, (w, a) in replies[1].items()}
    assert any(_clip(x, a, c)[1] for _, a in replies[1].values())  # the test clips something
    mean, trained = masked_mean(x, clipped)
    rng = np.random.default_rng(seed)
    for layer, keys in strategy.layer_map.items():
        n_l = strategy.history[1].coverage[layer]
        if n_l == 0:
            assert (
                all(np.array_equal(final[k], x[k]) for k in keys)
                and layer not in strategy.history[1].noise_std
            )
            continue
        assert strategy.history[1].noise_std[layer] == pytest.approx(z * c / n_l)
        for k in keys:
            noise = rng.normal(0.0, z * c / n_l, x[k].shape)
            np.testing.assert_allclose(final[k], mean[k] + noise, rtol=1e-12, atol=1e-15)


def test_server_side_adaptive_clipping_updates_the_norm_as_flower_does(identity, round_ids):
    dp = DifferentialPrivacyServerSideAdaptiveClipping(
        FedAvg(**KW),
        noise_multiplier=0.0,
        num_sampled_clients=3,
        initial_clipping_norm=0.05,
        clipped_count_stddev=0.0,
    )
    _, _, starts, replies, final = run(dp, rounds=1, budget=2)
    x = starts[1]
    bits = sum(_clip(x, a, 0.05)[1] for _, a in replies[1].values())
    assert dp.clipping_norm == pytest.approx(0.05 * math.exp(-0.2 * (bits / 3 - 0.5)))
    clipped = {n: (w, _clip(x, a, 0.05)[0]) for n, (w, a) in replies[1].items()}
    mean, _ = masked_mean(x, clipped)
    for k in final:
        np.testing.assert_allclose(final[k], mean[k], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: DifferentialPrivacyClientSideFixedClipping(FedAvg(), 1.0, 1.0, 3),
            "cannot wrap DifferentialPrivacyClientSideFixedClipping.*Use DifferentialPrivacyServerSideFixedClipping",
        ),
        (
            lambda: DifferentialPrivacyClientSideAdaptiveClipping(FedAvg(), 0.1, 3),
            "cannot wrap DifferentialPrivacyClientSideAdaptiveClipping.*inside F3ocusStrategy",
        ),
        (lambda: QFedAvg(client_learning_rate=0.1), "cannot wrap QFedAvg: q-FedAvg reweights.*Wrap FedAvg"),
        (lambda: FedXgbBagging(), "cannot wrap FedXgbBagging: it aggregates XGBoost trees"),
    ],
)
def test_strategies_a_plan_would_break_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        F3ocusStrategy(make(), {"a": ["a.w"]})


def test_dp_wrapped_around_f3ocus_says_to_put_it_inside(identity):
    model, arrays = initial_arrays()
    outer = DifferentialPrivacyServerSideFixedClipping(
        F3ocusStrategy(FedAvg(**KW), resolve_layers(model)),
        noise_multiplier=1.0,
        clipping_norm=1.0,
        num_sampled_clients=3,
    )
    with pytest.raises(TypeError, match="wraps F3ocusStrategy; put it inside instead"):
        outer.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=arrays, num_rounds=1)
