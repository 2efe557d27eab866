"""ClientApp: scores its layers with its train reply, trains only its assigned layers, evaluates."""

from __future__ import annotations

from fedtask import evaluate, initial_model, load_data, train
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

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

app = ClientApp()


def _data(context: Context):
    cfg = context.run_config
    return load_data(
        int(context.node_config["partition-id"]),
        int(cfg["samples-per-client"]),
        int(cfg["seed"]),
    )


def _budget(context: Context) -> int:
    """The node's own budget (``--node-config "f3ocus-budget=2"``), else the app's setting
    (clients with an odd partition id one more)."""
    default = int(context.run_config["budget"]) + int(context.node_config["partition-id"]) % 2
    return node_budget(context, default=default)


@app.query("f3ocus")
def query(msg: Message, context: Context) -> Message:
    """Round 1 only: score every layer (NTK principal eigenvalue) on a local batch."""
    x, _ = _data(context)
    seed = int(context.run_config["seed"])
    return score_reply(msg, initial_model(seed), x[:32], budget=_budget(context), seed=seed)


@app.train()
def train_layers(msg: Message, context: Context) -> Message:
    """Score the received global model if asked, train the assigned layers, send back only those."""
    model = initial_model(int(context.run_config["seed"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    layer_map = resolve_layers(model)
    data = _data(context)
    scores = score_record(
        msg, model, data[0][:32], budget=_budget(context), seed=int(context.run_config["seed"])
    )
    layers = assigned_layers(msg) or list(layer_map)  # no plan: a plain FedAvg server
    with train_only(model, layers, layer_map=layer_map):
        loss = train(
            model, data, int(context.run_config["local-steps"]), float(context.run_config["learning-rate"])
        )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data[1])})
    content = RecordDict({"arrays": trained_arrays(model, layers, layer_map=layer_map), "metrics": metrics})
    if scores is not None:  # the scores for the next selection ride on this reply
        content[SCORES_KEY] = scores
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this client's data."""
    model = initial_model(int(context.run_config["seed"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = _data(context)
    loss, acc = evaluate(model, data)
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": len(data[1])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
