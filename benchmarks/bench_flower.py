r"""Flower traffic: bytes per round of ``F3ocusStrategy(FedAvg)`` against plain ``FedAvg``, same run setup.

Both federations run Flower's own ``Strategy.start`` loop with real ``ClientApp`` objects on an
in-process grid (no network, the messages are the ones a deployment sends). Every message in both
directions is measured as its serialized size (:func:`f3ocus.integrations.flower.message_nbytes`, exact
protobuf size of the Flower ``Message``; gRPC framing not counted). The baseline is measured, not
estimated: plain ``FedAvg`` with clients that train and send the whole model. The strategy's own
FedAvg estimate (``RoundRecord.fedavg_*``) is recorded next to it.

Model: an MLP with ``--blocks`` residual blocks of width ``--width`` plus stem and head (each a layer of
:func:`f3ocus.resolve_layers`), ``--clients`` clients with label-skewed synthetic data, ``--budget``
layers per client, ``--rounds`` rounds, federated evaluation on every client each round. Configurations:
``first_round="query"`` (round 1 asks for scores with one extra message) and ``"fallback"`` (no query).

    python benchmarks/bench_flower.py            # writes benchmarks/results/flower_bytes_cpu.json
    python benchmarks/bench_flower.py --quick    # smoke run, no JSON
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import uuid
from pathlib import Path

import flwr
import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

import f3ocus
from f3ocus import resolve_layers
from f3ocus.fl import train_only
from f3ocus.integrations.flower import (
    SCORES_KEY,
    F3ocusStrategy,
    assigned_layers,
    message_nbytes,
    score_record,
    score_reply,
    trained_arrays,
)


class Net(nn.Module):
    def __init__(self, width: int, blocks: int, seed: int = 0) -> None:
        super().__init__()
        self.stem = nn.Linear(16, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(blocks)])
        self.head = nn.Linear(width, 4)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)

    def forward(self, x):
        x = torch.tanh(self.stem(x))
        for b in self.blocks:
            x = x + torch.tanh(b(x))
        return self.head(x)


def data(node: int, n: int = 64):
    g = torch.Generator().manual_seed(node)
    y = (torch.randint(0, 4, (n,), generator=g) + (torch.rand(n, generator=g) < 0.5) * node) % 4
    centers = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    return centers[y] + torch.randn(n, 16, generator=g), y


def client_app(width: int, blocks: int) -> ClientApp:
    app = ClientApp()

    def fit(model, xy, steps=3):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xy[0]), xy[1]).backward()
            opt.step()

    @app.query("f3ocus")
    def query(msg: Message, context: Context) -> Message:
        return score_reply(msg, Net(width, blocks), data(context.node_id)[0][:16], seed=0)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        model = Net(width, blocks)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        xy = data(context.node_id)
        scores = score_record(msg, model, xy[0][:16], seed=0)
        layers = assigned_layers(msg)
        if layers is None:  # plain FedAvg: the whole model
            fit(model, xy)
            arrays = ArrayRecord(model.state_dict())
        else:
            with train_only(model, layers):
                fit(model, xy)
            arrays = trained_arrays(model, layers)
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": len(xy[1])})})
        if scores is not None:
            content[SCORES_KEY] = scores
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        model = Net(width, blocks)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        x, y = data(context.node_id)
        with torch.no_grad():
            loss = float(nn.functional.cross_entropy(model(x), y))
        return Message(
            RecordDict({"metrics": MetricRecord({"num-examples": len(y), "loss": loss})}), reply_to=msg
        )

    return app


class MeteredGrid(Grid):
    """Hands each message to the ClientApp; counts every message's bytes per round and direction."""

    def __init__(self, app: ClientApp, nodes: list[int]) -> None:
        self.app, self.nodes = app, nodes
        self.ctx = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={}) for n in nodes
        }
        self.bytes: dict[int, dict[str, int]] = {}

    def set_run(self, run):  # pragma: no cover
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
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex + uuid.uuid4().hex  # 64 hex, as Flower's
            rnd = int(next(iter(m.content.config_records.values()))["server-round"])
            count = self.bytes.setdefault(rnd, {"up": 0, "down": 0})
            count["down"] += message_nbytes(m)
            reply = self.app(m, self.ctx[m.metadata.dst_node_id])
            count["up"] += message_nbytes(reply)
            replies.append(reply)
        return replies


def run(args, first_round: str | None) -> dict:
    nodes = [101 + i for i in range(args.clients)]
    model = Net(args.width, args.blocks)
    fedavg = FedAvg(fraction_evaluate=1.0, min_available_nodes=args.clients, min_evaluate_nodes=args.clients)
    strategy = fedavg
    if first_round is not None:
        strategy = F3ocusStrategy(
            fedavg, resolve_layers(model), budget=args.budget, tradeoff=1.0, first_round=first_round, seed=0
        )
    grid = MeteredGrid(client_app(args.width, args.blocks), nodes)
    result = strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()), num_rounds=args.rounds)
    rounds = []
    for rnd in range(1, args.rounds + 1):
        row = {"round": rnd, **grid.bytes[rnd]}
        row["total"] = row["up"] + row["down"]
        if first_round is not None:
            rec = strategy.history[rnd]
            row.update(
                recorded_up=rec.stats["bytes_up"],
                recorded_down=rec.stats["bytes_down"],
                estimated_fedavg_total=rec.fedavg_total_bytes,
                plan={str(k): v for k, v in rec.plan.items()},
            )
        row["eval_loss"] = float(result.evaluate_metrics_clientapp[rnd]["loss"])
        rounds.append(row)
    return {"first_round": first_round, "rounds": rounds, "total": sum(r["total"] for r in rounds)}


def git_commit() -> str:
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "HEAD"], text=True, cwd=Path(__file__).parent
        ).strip()
    except Exception:  # pragma: no cover
        return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--budget", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "flower_bytes_cpu.json"))
    args = parser.parse_args()
    if args.quick:
        args.clients, args.blocks, args.width, args.rounds = 3, 2, 16, 2
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        setattr(TaskIdentity, attr, value)  # what a running ServerApp sets
    torch.set_num_threads(1)
    baseline = run(args, None)
    runs = [run(args, mode) for mode in ("query", "fallback")]
    out = {
        "benchmark": "flower_bytes",
        "device": "cpu",
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "versions": {"f3ocus": f3ocus.__version__, "flwr": flwr.__version__, "torch": torch.__version__},
        "python": sys.version.split()[0],
        "commit": git_commit(),
        "setup": {k: getattr(args, k) for k in ("clients", "blocks", "width", "budget", "rounds")},
        "layers": len(resolve_layers(Net(args.width, args.blocks))),
        "fedavg": baseline,
        "f3ocus": runs,
    }
    for r in runs:
        per_round = [a["total"] / b["total"] for a, b in zip(r["rounds"], baseline["rounds"], strict=True)]
        r["ratio_per_round"] = per_round
        r["ratio_total"] = r["total"] / baseline["total"]
        r["mean_bytes_per_round"] = r["total"] / args.rounds
        print(
            f"first_round={r['first_round']}: total {r['total']} B vs FedAvg {baseline['total']} B, "
            f"ratio {r['ratio_total']:.3f}; per round {[round(x, 3) for x in per_round]}"
        )
    out["fedavg"]["mean_bytes_per_round"] = baseline["total"] / args.rounds
    if not args.quick:
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
