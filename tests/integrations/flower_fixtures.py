"""A whole Flower federation in-process: a tiny model, client apps, and a grid without network."""

from __future__ import annotations

import uuid

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from torch import nn

from f3ocus import resolve_layers
from f3ocus.fl import train_only
from f3ocus.integrations.flower import (
    SCORES_KEY,
    assigned_layers,
    node_budget,
    score_record,
    score_reply,
    trained_arrays,
)

NODES = (11, 22, 33)


class Net(nn.Module):
    def __init__(self, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.blocks = nn.ModuleList([nn.Linear(4, 4) for _ in range(3)])
        self.head = nn.Linear(4, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.to(dtype)

    def forward(self, x):
        for b in self.blocks:
            x = torch.tanh(b(x))
        return self.head(x)


def client_data(node: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(node)
    n = {11: 12, 22: 7, 33: 9}.get(node, 8)
    return torch.randn(n, 4, generator=g).to(dtype), torch.randint(0, 3, (n,), generator=g)


def local_train(model: nn.Module, data) -> int:
    x, y = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return len(x)


def make_client_app(
    no_scores=frozenset(), send_full: bool = False, malformed=frozenset(), budgets=None, dtype=torch.float32
) -> ClientApp:
    """Clients that score on query and with their train replies, train their layers, evaluate."""
    app = ClientApp()
    budgets = budgets or {33: 1}

    @app.query("f3ocus")
    def query(msg: Message, context: Context) -> Message:
        if context.node_id in no_scores:
            return Message(RecordDict({"m": MetricRecord({"unrelated": 1.0})}), reply_to=msg)
        x, _ = client_data(context.node_id, dtype)
        return score_reply(msg, Net(dtype), x, budget=budgets.get(context.node_id, node_budget(context)))

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = Net(dtype)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = client_data(context.node_id, dtype)
        scores = None
        if context.node_id not in no_scores:
            scores = score_record(msg, model, x, budget=budgets.get(context.node_id, node_budget(context)))
        layers = assigned_layers(msg)
        lmap = resolve_layers(model)
        with train_only(model, layers, layer_map=lmap):
            n = local_train(model, (x, y))
        sent = ArrayRecord(model.state_dict()) if send_full else trained_arrays(model, layers, layer_map=lmap)
        if context.node_id in malformed:  # every array with a wrong shape: the reply must be left out
            sent = ArrayRecord({k: torch.zeros(7) for k in sent})
        reply = RecordDict({"arrays": sent, "metrics": MetricRecord({"num-examples": n, "loss": 1.0})})
        if scores is not None:
            reply[SCORES_KEY] = scores
        return Message(reply, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model = Net(dtype)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = client_data(context.node_id, dtype)
        content = RecordDict({"metrics": MetricRecord({"num-examples": len(x), "acc": 0.5})})
        scores = score_record(msg, model, x, budget=budgets.get(context.node_id))
        if scores is not None:
            content[SCORES_KEY] = scores
        return Message(content, reply_to=msg)

    return app


class InProcessGrid(Grid):
    """Delivers each message to ``app`` at once and gives it an id, as a real grid does.

    ``drop(node, round)`` loses the message; ``error(node, round)`` answers with an error reply whose
    source is the SuperLink (node 1), as Flower does for unreachable nodes; ``tamper(reply)`` may
    replace a reply.
    """

    def __init__(self, app: ClientApp, nodes, drop=None, error=None, tamper=None, node_config=None):
        self.app, self.nodes = app, list(nodes)
        self.drop = drop or (lambda node, rnd: False)
        self.error = error or (lambda node, rnd: False)
        self.tamper = tamper or (lambda reply: reply)
        self.contexts = {
            n: Context(
                run_id=1,
                node_id=n,
                node_config=(node_config or {}).get(n, {}),
                state=RecordDict(),
                run_config={},
            )
            for n in self.nodes
        }
        self.sent: list[Message] = []
        self.sent_rounds: list[int] = []  # the round of each sent message, read when it was sent

    def set_run(self, run):  # pragma: no cover - not used in-process
        pass

    @property
    def run(self):  # pragma: no cover
        raise NotImplementedError

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # pragma: no cover
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
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            self.sent.append(m)
            node = m.metadata.dst_node_id
            rnd = next(iter(m.content.config_records.values()))["server-round"]
            self.sent_rounds.append(rnd)
            if self.drop(node, rnd):
                continue
            if self.error(node, rnd):
                reply = Message(Error(code=0, reason="node unreachable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = 1
                replies.append(reply)
                continue
            replies.append(self.tamper(self.app(m, self.contexts[node])))
        return replies


def initial_arrays(dtype=torch.float32) -> tuple[nn.Module, ArrayRecord]:
    model = Net(dtype)
    return model, ArrayRecord(model.state_dict())
