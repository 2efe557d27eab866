"""A whole Flower federation in-process: 3 clients, 2 rounds, one client drops in round 2.

The server side is Flower's own ``Strategy.start`` loop; the grid below hands each message straight to a
``ClientApp`` (no Ray, no network). The result is checked against :func:`f3ocus.fl.run_round` run on the
same plans, and the plans against :func:`f3ocus.select_layers` on scores computed outside Flower.
"""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import FedAvg, FedProx  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from f3ocus import ntk_layer_importance, resolve_layers, select_layers  # noqa: E402
from f3ocus.errors import MissingExtraError  # noqa: E402
from f3ocus.fl import run_round, train_only  # noqa: E402
from f3ocus.integrations.flower import (  # noqa: E402
    LAYERS_KEY,
    F3ocusStrategy,
    assigned_layers,
    pack_scores,
    score_reply,
    trained_arrays,
    unpack_scores,
)

NODES = (11, 22, 33)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.head(x)


def client_data(node: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(node)
    n = {11: 12, 22: 7, 33: 9}[node]
    return torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def local_train(model: nn.Module, data) -> int:
    x, y = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return len(x)


def make_client_app(no_scores=frozenset(), send_full: bool = False, malformed=frozenset()) -> ClientApp:
    app = ClientApp()

    @app.query("f3ocus")
    def query(msg: Message, context: Context) -> Message:
        if context.node_id in no_scores:
            return Message(RecordDict({"m": MetricRecord({"unrelated": 1.0})}), reply_to=msg)
        x, _ = client_data(context.node_id)
        return score_reply(msg, Net(), x, budget=1 if context.node_id == 33 else None)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = Net()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        layers = assigned_layers(msg)
        lmap = resolve_layers(model)
        with train_only(model, layers, layer_map=lmap):
            n = local_train(model, client_data(context.node_id))
        sent = ArrayRecord(model.state_dict()) if send_full else trained_arrays(model, layers, layer_map=lmap)
        if context.node_id in malformed:  # every array with a wrong shape: all must be ignored
            sent = ArrayRecord({k: torch.zeros(7) for k in sent})
        reply = RecordDict(
            {
                "arrays": sent,
                "metrics": MetricRecord({"num-examples": n}),
            }
        )
        return Message(reply, reply_to=msg)

    return app


class InProcessGrid(Grid):
    """Delivers each message to ``app`` at once; ``drop(node, round)`` loses the message."""

    def __init__(self, app: ClientApp, nodes, drop=lambda node, rnd: False):
        self.app, self.nodes, self.drop = app, list(nodes), drop
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in self.nodes
        }
        self.sent: list[Message] = []

    def set_run(self, run):  # pragma: no cover - not used in-process
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return Message(content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for m in messages:
            self.sent.append(m)
            node = m.metadata.dst_node_id
            rnd = next(iter(m.content.config_records.values()))["server-round"]
            if not self.drop(node, rnd):
                replies.append(self.app(m, self.contexts[node]))
        return replies


@pytest.fixture
def identity(monkeypatch):
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value)


def initial_arrays() -> tuple[nn.Module, ArrayRecord]:
    model = Net()
    return model, ArrayRecord(model.state_dict())


def test_two_rounds_three_clients_one_drops(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
        lmap,
        budget=2,
        solver="exact",
        tradeoff=0.5,
        seed=7,
    )
    grid = InProcessGrid(make_client_app(), NODES, drop=lambda node, rnd: node == 22 and rnd == 2)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=2)

    # Round 1: the plan is select_layers on the scores every client computes on the initial model.
    scores = [ntk_layer_importance(Net(), client_data(n)[0], layers=lmap) for n in NODES]
    expected = select_layers(scores, [2, 2, 1], solver="exact", tradeoff=0.5, seed=8)
    assert strategy.plans[1] == {n: list(expected.layers[i]) for i, n in enumerate(NODES)}
    assert strategy.fallbacks[1] == []
    # Round 2: node 22 sends no scores, gets the least-covered fallback, and its update never arrives.
    assert set(strategy.plans[2]) == set(NODES) and strategy.fallbacks[2] == [22]
    others = [strategy.plans[2][n] for n in (11, 33)]
    coverage = {layer: sum(layer in p for p in others) for layer in lmap}
    fb = strategy.plans[2][22]
    assert len(fb) == 2 and max(coverage[layer] for layer in fb) <= min(
        coverage[layer] for layer in lmap if layer not in fb
    )
    # each train message carried only its own client's plan
    for m in grid.sent:
        if m.metadata.message_type == "train":
            rnd = m.content["config"]["server-round"]
            assert m.content["config"][LAYERS_KEY] == strategy.plans[rnd][m.metadata.dst_node_id]

    # The same two rounds through run_round give the same global model.
    reference = Net()
    for rnd in (1, 2):
        plan = [strategy.plans[rnd][n] for n in NODES]

        def train_fn(m, node, rnd=rnd):
            if node == 22 and rnd == 2:
                raise ConnectionError("dropped")
            return local_train(m, client_data(node))

        run_round(reference, list(NODES), plan, train_fn, layer_map=lmap, on_error="skip")
    final = result.arrays.to_torch_state_dict()
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(final[name], p, rtol=1e-6, atol=1e-6)
    assert result.train_metrics_clientapp[2]["f3ocus-clients"] == 2
    assert result.train_metrics_clientapp[2]["f3ocus-fallback-clients"] == 1


@pytest.mark.parametrize(("send_full", "malformed"), [(True, frozenset()), (False, frozenset({33}))])
def test_only_assigned_well_formed_arrays_count(identity, send_full, malformed):
    """Clients sending their whole model count only for their layers; a client whose arrays all have
    wrong shapes counts as if it had dropped."""
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=1, tradeoff=0.0
    )
    grid = InProcessGrid(make_client_app(send_full=send_full, malformed=malformed), NODES)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)

    def train_fn(m, node):
        if node in malformed:
            raise ValueError("malformed")
        return local_train(m, client_data(node))

    reference = Net()
    plan = [strategy.plans[1][n] for n in NODES]
    run_round(reference, list(NODES), plan, train_fn, layer_map=lmap, on_error="skip")
    final = result.arrays.to_torch_state_dict()
    for name, p in reference.state_dict().items():
        torch.testing.assert_close(final[name], p, rtol=1e-6, atol=1e-6)
    assert result.train_metrics_clientapp[1]["f3ocus-clients"] == 3


def test_clients_without_scores_get_fallbacks_and_reselect_every(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3),
        lmap,
        budget=1,
        solver="exact",
        tradeoff=0.0,
        reselect_every=2,
        fallback="all",
    )
    grid = InProcessGrid(make_client_app(no_scores={33}), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=2)
    assert strategy.plans[1][33] == list(lmap) and strategy.fallbacks[1] == [33]
    assert strategy.plans[2] == strategy.plans[1]  # no new query in round 2
    queries = [m for m in grid.sent if m.metadata.message_type == "query.f3ocus"]
    assert len(queries) == 3


def test_failed_selection_falls_back_for_everyone(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=0.0, min_available_nodes=3), lmap, budget=2, solver_options={"bogus": 1}
    )
    result = strategy.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=arrays, num_rounds=1)
    assert sorted(strategy.fallbacks[1]) == sorted(NODES)
    assert all(len(layers) == 2 for layers in strategy.plans[1].values())
    # least-covered, in turn: the three clients cover the four layers (2 + 2 + 2 = 6 slots)
    counts = [sum(layer in p for p in strategy.plans[1].values()) for layer in lmap]
    assert sorted(counts) == [1, 1, 2, 2]
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
    assert strategy.aggregate_train(1, []) == (None, None)


def test_wraps_other_strategies_and_keeps_their_config(identity):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)
    inner = FedProx(proximal_mu=0.25, fraction_evaluate=0.0, min_available_nodes=3)
    strategy = F3ocusStrategy(inner, lmap, budget=lambda node: 1 + (node == 11), solver="exact", tradeoff=0.0)
    grid = InProcessGrid(make_client_app(), NODES)
    strategy.start(grid=grid, initial_arrays=arrays, num_rounds=1)
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(train) == 3
    for m in train:
        assert m.content["config"]["proximal-mu"] == 0.25
        assert m.content["config"][LAYERS_KEY] == strategy.plans[1][m.metadata.dst_node_id]
    # node 11: budget 2 from the callable; node 33 reports budget 1; node 22: 1
    assert {n: len(layers) for n, layers in strategy.plans[1].items()} == {11: 2, 22: 1, 33: 1}


def test_score_reply_loads_arrays_and_scores_the_listed_layers(identity):
    trained = Net()
    with torch.no_grad():
        trained.head.weight.mul_(3.0)
    config = ConfigRecord({"server-round": 1, LAYERS_KEY: ["blocks.1", "head"]})
    msg = Message(
        RecordDict({"arrays": ArrayRecord(trained.state_dict()), "config": config}),
        dst_node_id=11,
        message_type="query.f3ocus",
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
        message_type="query.f3ocus",
    )
    with pytest.raises(ValueError, match="the server's 'f3ocus-layers' contains 'blocks.9'"):
        score_reply(bad, Net(), x)


def test_pack_unpack_and_assigned_layers():
    record = pack_scores({"blocks.0": 2.5, "head": 0.5}, budget=3)
    assert unpack_scores(record) == ({"blocks.0": 2.5, "head": 0.5}, 3)
    assert assigned_layers(ConfigRecord({LAYERS_KEY: ["a", "b"]})) == ["a", "b"]
    assert assigned_layers(ConfigRecord({"server-round": 1})) is None


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: pack_scores([1.0]), TypeError, "scores must be a mapping"),
        (lambda: pack_scores({"a": 1.0}, budget=0), ValueError, r"budget must lie in \[1, inf\]"),
        (lambda: assigned_layers(3), TypeError, "message must be a flwr Message or a ConfigRecord"),
        (
            lambda: F3ocusStrategy(object(), {"a": ["a.w"]}),
            TypeError,
            "strategy must be a Message-API strategy",
        ),
        (lambda: F3ocusStrategy(FedAvg(), {}), ValueError, "layer_map must be a non-empty mapping"),
        (lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, budget=1.5), TypeError, "budget must be an int"),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, reselect_every=0),
            ValueError,
            "reselect_every must lie",
        ),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, fallback="none"),
            ValueError,
            "fallback='none' is not a valid",
        ),
        (
            lambda: F3ocusStrategy(FedAvg(), {"a": ["w"]}, solver="nsga3"),
            ValueError,
            "solver='nsga3' is not a valid",
        ),
    ],
)
def test_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_missing_flwr_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "flwr", None)
    monkeypatch.delitem(sys.modules, "f3ocus.integrations.flower")
    with pytest.raises(MissingExtraError, match=r"pip install 'f3ocus\[flower\]'"):
        import f3ocus.integrations.flower  # noqa: F401
    monkeypatch.undo()
