"""F3ocusStrategy in a whole in-process Flower federation: plans, scores on replies, memory, budgets.

The server side is Flower's own ``Strategy.start`` loop; the grid hands each message straight to a
``ClientApp``. Results are checked against :func:`f3ocus.fl.run_round` on the same plans and the plans
against :func:`f3ocus.select_layers` on scores computed outside Flower.
"""

from __future__ import annotations

import logging
import sys

import pytest
import torch

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from flower_fixtures import (  # noqa: E402
    NODES,
    InProcessGrid,
    Net,
    client_data,
    initial_arrays,
    local_train,
    make_client_app,
)
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402

from f3ocus import ntk_layer_importance, resolve_layers, select_layers  # noqa: E402
from f3ocus.errors import MissingExtraError  # noqa: E402
from f3ocus.fl import run_round  # noqa: E402
from f3ocus.integrations.flower import (  # noqa: E402
    LAYERS_KEY,
    QUERY_TYPE,
    SCORE_LAYERS_KEY,
    F3ocusStrategy,
    RoundRecord,
    assigned_layers,
    node_budget,
    pack_scores,
    requested_layers,
    score_record,
    score_reply,
    unpack_scores,
)


class ScheduledFedAvg(FedAvg):
    """FedAvg whose sampled nodes follow a fixed schedule (partial participation, deterministic)."""

    def __init__(self, schedule, **kwargs):
        super().__init__(fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1, **kwargs)
        self.schedule = schedule

    def configure_train(self, server_round, arrays, config, grid):
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return self._construct_messages(record, self.schedule[server_round], "train")


def _scores_on(state, nodes, lmap):
    model = Net()
    model.load_state_dict(state)
    return [ntk_layer_importance(model, client_data(n)[0], layers=lmap) for n in nodes]


def test_scores_ride_on_train_replies_and_the_result_matches_run_round(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=2, tradeoff=0.5, seed=7
    )
    grid = InProcessGrid(make_client_app(), NODES, drop=lambda node, rnd: node == 22 and rnd == 2)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)

    # one score query in round 1 only; later train messages ask for scores for the next round (the
    # round-1 ones need not: the query scored the same global model)
    queries = [m for m in grid.sent if m.metadata.message_type == QUERY_TYPE]
    assert len(queries) == 3 and {m.content["config"]["server-round"] for m in queries} == {1}
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    for m in train:
        asked = m.content["config"].get(SCORE_LAYERS_KEY)
        assert asked == (None if m.content["config"]["server-round"] == 1 else list(lmap))
    for m in train:
        rnd = m.content["config"]["server-round"]
        assert m.content["config"][LAYERS_KEY] == strategy.plans[rnd][m.metadata.dst_node_id]

    # plans: round 1 and 2 from the scores of the initial model (query, then round-1 train replies)
    initial = _scores_on(Net().state_dict(), NODES, lmap)
    for rnd in (1, 2):
        expected = select_layers(initial, [2, 2, 1], solver="exact", tradeoff=0.5, seed=7 + rnd)
        assert strategy.plans[rnd] == {n: list(expected.layers[i]) for i, n in enumerate(NODES)}
    # replay the rounds with run_round; round 3 uses 11 and 33's scores on the round-2 model, and
    # node 22's from round 1 (its round-2 message was lost)
    reference, states = Net(), {}
    for rnd in (1, 2, 3):
        states[rnd] = {k: v.clone() for k, v in reference.state_dict().items()}
        plan = [strategy.plans[rnd][n] for n in NODES]

        def train_fn(m, node, rnd=rnd):
            if node == 22 and rnd == 2:
                raise ConnectionError("dropped")
            return local_train(m, client_data(node))

        run_round(reference, list(NODES), plan, train_fn, layer_map=lmap, on_error="skip")
    fresh = _scores_on(states[2], (11, 33), lmap)
    expected = select_layers(
        [fresh[0], initial[1], fresh[1]], [2, 2, 1], solver="exact", tradeoff=0.5, seed=10
    )
    assert strategy.plans[3] == {n: list(expected.layers[i]) for i, n in enumerate(NODES)}
    assert strategy.history[3].score_rounds == {11: 2, 22: 1, 33: 2}
    final = result.arrays.to_torch_state_dict()
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(final[name], p, rtol=1e-6, atol=1e-6)
    # observability: the lost reply is recorded; metrics carry coverage and traffic
    assert strategy.history[2].failed == {22: "no train reply (node lost or timed out)"}
    m2 = result.train_metrics_clientapp[2]
    assert m2["f3ocus-clients"] == 2 and m2["f3ocus-failed-clients"] == 1
    cov = {layer: sum(layer in strategy.plans[2][n] for n in (11, 33)) for layer in lmap}
    assert {layer: m2[f"f3ocus-coverage:{layer}"] for layer in lmap} == cov == strategy.history[2].coverage
    assert m2["f3ocus-solver-seconds"] > 0 and m2["f3ocus-importance"] > 0
    assert RoundRecord.from_dict(strategy.history[3].to_dict()) == strategy.history[3]


def test_error_replies_are_logged_with_the_real_node_id(identity, caplog):
    model, arrays = initial_arrays()
    strategy = F3ocusStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), resolve_layers(model))
    grid = InProcessGrid(make_client_app(), NODES, error=lambda node, rnd: node == 33 and rnd == 1)
    with caplog.at_level(logging.WARNING):
        strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)
    assert set(strategy.history[1].failed) == {33}
    assert "node 33" in caplog.text and "node 1:" not in caplog.text


@pytest.mark.parametrize(("send_full", "malformed"), [(True, frozenset()), (False, frozenset({33}))])
def test_only_assigned_well_formed_arrays_count(identity, send_full, malformed):
    """Clients sending their whole model count only for their layers; a client whose arrays have wrong
    shapes is left out as if it had dropped, with the reason recorded."""
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, tradeoff=0.0)
    grid = InProcessGrid(make_client_app(send_full=send_full, malformed=malformed), NODES)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)

    def train_fn(m, node):
        if node in malformed:
            raise ValueError("malformed")
        return local_train(m, client_data(node))

    reference = Net()
    run_round(
        reference,
        list(NODES),
        [strategy.plans[1][n] for n in NODES],
        train_fn,
        layer_map=lmap,
        on_error="skip",
    )
    final = result.arrays.to_torch_state_dict()
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(final[name], p, rtol=1e-6, atol=1e-6)
    assert result.train_metrics_clientapp[1]["f3ocus-clients"] == 3 - len(malformed)
    if malformed:
        assert (
            "unexpected array keys" in strategy.history[1].failed[33]
            or "shape" in strategy.history[1].failed[33]
        )


def test_plans_are_remembered_per_client_across_absences(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    schedule = {1: [11, 22, 33], 2: [11, 33], 3: [11, 22], 4: [22, 33]}
    strategy = F3ocusStrategy(ScheduledFedAvg(schedule), lmap, budget=1, tradeoff=0.0, reselect_every=3)
    grid = InProcessGrid(make_client_app(), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=4)
    assert strategy.plans[2] == {n: strategy.plans[1][n] for n in (11, 33)}
    assert strategy.plans[3] == {n: strategy.plans[1][n] for n in (11, 22)}  # 22 keeps its round-1 plan
    assert strategy.fallbacks[2] == strategy.fallbacks[3] == []
    assert strategy.history[4].selected and not strategy.history[3].selected
    # scores are asked for only before a selection round (round 3 for round 4)
    asked = {
        m.content["config"]["server-round"] for m in grid.sent if SCORE_LAYERS_KEY in m.content["config"]
    }
    assert asked == {3}
    assert strategy.history[4].score_rounds == {22: 3, 33: 1}


def test_fallback_rotates_through_the_least_covered_layers(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=1)
    grid = InProcessGrid(make_client_app(no_scores=set(NODES)), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)
    assert all(len(strategy.fallbacks[r]) == 3 for r in (1, 2, 3))
    assert "no scores" in strategy.history[1].fallback[11] or "query" in strategy.history[1].fallback[11]
    covered = [sorted({layer for p in strategy.plans[r].values() for layer in p}) for r in (1, 2)]
    assert covered[0] == ["blocks.0", "blocks.1", "blocks.2"]
    assert "head" in covered[1]  # the layer nobody trained in round 1 comes first in round 2
    total = {layer: sum(layer in p for r in (1, 2, 3) for p in strategy.plans[r].values()) for layer in lmap}
    assert max(total.values()) - min(total.values()) <= 1


def test_budgets_from_the_client_node_config_and_server_caps(identity, caplog):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    node_config = {11: {"f3ocus-budget": 4}, 22: {"f3ocus-budget": "3"}}
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
        lmap,
        budget=2,
        max_budget=lambda node: 3,
        tradeoff=0.0,
    )
    grid = InProcessGrid(make_client_app(budgets={33: None}), NODES, node_config=node_config)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)
    assert {n: len(p) for n, p in strategy.plans[1].items()} == {11: 3, 22: 3, 33: 2}


def test_first_round_fallback_sends_no_query(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=1, first_round="fallback"
    )
    grid = InProcessGrid(make_client_app(), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=2)
    assert not [m for m in grid.sent if m.metadata.message_type == QUERY_TYPE]
    assert sorted(strategy.fallbacks[1]) == sorted(NODES) and strategy.fallbacks[2] == []
    assert strategy.history[2].score_rounds == dict.fromkeys(NODES, 1)


def test_scores_with_evaluate_replies_use_the_new_global_model(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=1.0, min_available_nodes=3),
        lmap,
        budget=1,
        tradeoff=0.0,
        score_with="evaluate",
    )
    grid = InProcessGrid(make_client_app(budgets={}), NODES)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=2)
    assert strategy.history[2].score_rounds == dict.fromkeys(NODES, 1)
    after_1 = {k: torch.as_tensor(v) for k, v in result.arrays.to_torch_state_dict().items()}
    assert after_1  # the evaluate replies' scores entered no aggregated evaluate metric
    assert not any(k.startswith("f3ocus-score") for k in result.evaluate_metrics_clientapp[1])
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert not any(SCORE_LAYERS_KEY in m.content["config"] for m in train)


def test_failed_selection_falls_back_for_everyone(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=2, solver_options={"bogus": 1}
    )
    result = strategy.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=arrays, num_rounds=1)
    assert sorted(strategy.fallbacks[1]) == sorted(NODES)
    assert all("select_layers failed" in why for why in strategy.history[1].fallback.values())
    assert {n: len(p) for n, p in strategy.plans[1].items()} == {11: 2, 22: 2, 33: 1}  # 33 reports 1
    counts = [sum(layer in p for p in strategy.plans[1].values()) for layer in lmap]
    assert sorted(counts) == [1, 1, 1, 2]
    assert result.train_metrics_clientapp[1]["f3ocus-clients"] == 3


def test_skip_fallback_sends_no_train_message(identity):
    model, arrays = initial_arrays()
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), resolve_layers(model), fallback="skip"
    )
    grid = InProcessGrid(make_client_app(), NODES, drop=lambda node, rnd: True)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)
    assert strategy.plans[1] == {} and sorted(strategy.fallbacks[1]) == sorted(NODES)
    assert not [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(result.arrays) == 0  # nothing aggregated: Flower keeps its global arrays
    assert strategy.aggregate_train(5, []) == (None, None)


def test_wraps_other_strategies_and_keeps_their_config(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    inner = FedProx(proximal_mu=0.25, fraction_evaluate=0.0, min_available_nodes=3)
    strategy = F3ocusStrategy(inner, lmap, budget=lambda node: 1 + (node == 11), tradeoff=0.0)
    grid = InProcessGrid(make_client_app(), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(train) == 3
    for m in train:
        assert m.content["config"]["proximal-mu"] == 0.25
        assert m.content["config"][LAYERS_KEY] == strategy.plans[1][m.metadata.dst_node_id]
    assert {n: len(layers) for n, layers in strategy.plans[1].items()} == {11: 2, 22: 1, 33: 1}


def test_score_reply_loads_arrays_and_scores_the_listed_layers(identity):
    trained = Net()
    with torch.no_grad():
        trained.head.weight.mul_(3.0)
    config = ConfigRecord({"server-round": 1, LAYERS_KEY: ["blocks.1", "head"]})
    msg = Message(
        RecordDict({"arrays": ArrayRecord(trained.state_dict()), "config": config}),
        dst_node_id=11,
        message_type=QUERY_TYPE,
    )
    x, _ = client_data(11)
    reply = score_reply(msg, Net(), x, budget=2)
    scores, budget = unpack_scores(reply.content["f3ocus-scores"])
    expected = ntk_layer_importance(
        trained, x, layers={k: resolve_layers(trained)[k] for k in ("blocks.1", "head")}
    )
    assert budget == 2 and list(scores) == ["blocks.1", "head"]
    for name in scores:
        assert scores[name] == pytest.approx(expected[name], rel=1e-5)
    bad = Message(
        RecordDict({"config": ConfigRecord({LAYERS_KEY: ["blocks.9"]})}),
        dst_node_id=11,
        message_type=QUERY_TYPE,
    )
    with pytest.raises(ValueError, match="the server's 'f3ocus-layers' contains 'blocks.9'"):
        score_reply(bad, Net(), x)


def test_score_record_only_when_asked(identity):
    model = Net()
    x, _ = client_data(11)
    plain = Message(
        RecordDict({"config": ConfigRecord({"server-round": 2})}), dst_node_id=11, message_type="train"
    )
    assert score_record(plain, model, x) is None and requested_layers(plain) is None
    asked = Message(
        RecordDict({"config": ConfigRecord({"server-round": 2, SCORE_LAYERS_KEY: ["head"]})}),
        dst_node_id=11,
        message_type="train",
    )
    scores, budget = unpack_scores(score_record(asked, model, x, budget=2))
    expected = ntk_layer_importance(model, x, layers={"head": resolve_layers(model)["head"]})
    assert budget == 2 and scores == pytest.approx(dict(expected), rel=1e-6)


def test_pack_unpack_and_assigned_layers():
    record = pack_scores({"blocks.0": 2.5, "head": 0.5}, budget=3)
    assert unpack_scores(record) == ({"blocks.0": 2.5, "head": 0.5}, 3)
    assert assigned_layers(ConfigRecord({LAYERS_KEY: ["a", "b"]})) == ["a", "b"]
    assert assigned_layers(ConfigRecord({"server-round": 1})) is None


class _Ctx:
    def __init__(self, node_config):
        self.node_config = node_config


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pack_scores([1.0]), TypeError, "scores must be a mapping"),
        (lambda: pack_scores({"a": 1.0}, budget=0), ValueError, r"budget must lie in \[1, inf\]"),
        (lambda: unpack_scores({"f3ocus-score:a": float("nan")}), ValueError, "must be a finite number"),
        (lambda: unpack_scores({"f3ocus-budget": 2.5}), ValueError, "'f3ocus-budget' must be an integer"),
        (lambda: assigned_layers(3), TypeError, "message must be a flwr Message or a ConfigRecord"),
        (lambda: node_budget(_Ctx({"f3ocus-budget": "two"})), ValueError, "node config 'f3ocus-budget'"),
        (
            lambda: F3ocusStrategy(object(), {"a": ["a.w"]}),
            TypeError,
            "strategy must be a Message-API strategy",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {}), ValueError, "layer_map must be a non-empty mapping"),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, budget=1.5), TypeError, "budget must be an int"),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, max_budget=0), ValueError, "max_budget must lie"),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, reselect_every=0),
            ValueError,
            "reselect_every must lie",
        ),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, fallback="none"),
            ValueError,
            "fallback='none' is not",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, solver="nsga3"), ValueError, "solver='nsga3' is not"),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, first_round="x"),
            ValueError,
            "first_round='x' is not",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, score_with="x"), ValueError, "score_with='x' is not"),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, query_timeout=None),
            TypeError,
            "query_timeout must be",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}).resume(), ValueError, r"resume\(\) needs save_dir"),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, fallback_window=-1),
            ValueError,
            "fallback_window must lie",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, seed=1.0), TypeError, "seed must be an int"),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_server_budget_functions_are_checked(identity):
    model, arrays = initial_arrays()
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), resolve_layers(model), budget=lambda n: 0
    )
    grid = InProcessGrid(make_client_app(budgets={33: None}), NODES)
    with pytest.raises(ValueError, match=r"budget\(\d+\) must lie in \[1, inf\], got 0"):
        strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)


def test_missing_flwr_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)
    monkeypatch.delitem(sys.modules, "f3ocus.integrations.flower")
    with pytest.raises(MissingExtraError, match=r"pip install 'f3ocus\[flower\]'"):
        import f3ocus.integrations.flower  # noqa: F401
    monkeypatch.undo()
