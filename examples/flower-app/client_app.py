"""ClientApp: answers score requests, trains only its assigned layers, evaluates."""

from __future__ import annotations

from fedtask import evaluate, initial_model, load_data, train
from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from f3ocus import resolve_layers
from f3ocus.fl import train_only
from f3ocus.integrations.flower import assigned_layers, score_reply, trained_arrays

app = ClientApp()


def _data(context: Context):
    cfg = context.run_config
    return load_data(
        int(context.node_config["partition-id"]),
        int(cfg["samples-per-client"]),
        int(cfg["seed"]),
    )


@app.query("f3ocus")
def query(msg: Message, context: Context) -> Message:
    """Score every layer (NTK principal eigenvalue) on a local batch; report this client's budget."""
    x, _ = _data(context)
    budget = int(context.run_config["budget"]) + int(context.node_config["partition-id"]) % 2
    return score_reply(
        msg,
        initial_model(int(context.run_config["seed"])),
        x[:32],
        budget=budget,
        seed=int(context.run_config["seed"]),
    )


@app.train()
def train_layers(msg: Message, context: Context) -> Message:
    """Train the layers the server assigned, send back only those."""
    model = initial_model(int(context.run_config["seed"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    layer_map = resolve_layers(model)
    layers = assigned_layers(msg) or list(layer_map)  # no plan: a plain FedAvg server
    data = _data(context)
    with train_only(model, layers, layer_map=layer_map):
        loss = train(
            model, data, int(context.run_config["local-steps"]), float(context.run_config["learning-rate"])
        )
    metrics = MetricRecord({"train-loss": loss, "num-examples": len(data[1])})
    return Message(
        RecordDict({"arrays": trained_arrays(model, layers, layer_map=layer_map), "metrics": metrics}),
        reply_to=msg,
    )


@app.evaluate()
def evaluate_model(msg: Message, context: Context) -> Message:
    """Loss and accuracy of the global model on this client's data."""
    model = initial_model(int(context.run_config["seed"]))
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    data = _data(context)
    loss, acc = evaluate(model, data)
    metrics = MetricRecord({"eval-loss": loss, "eval-acc": acc, "num-examples": len(data[1])})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
