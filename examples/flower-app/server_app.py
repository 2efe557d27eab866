"""ServerApp: FedAvg wrapped by F3ocusStrategy (scores -> select_layers -> per-client plans -> masked FedAvg)."""

from __future__ import annotations

from fedtask import evaluate, initial_model, load_data
from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from f3ocus import resolve_layers
from f3ocus.integrations.flower import F3ocusStrategy

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed = int(cfg["seed"])
    model = initial_model(seed)
    test_data = load_data(None, 600, seed)  # balanced held-out set

    def central_eval(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = evaluate(model, test_data)
        log(20, "f3ocus-flower-app round %d: accuracy %.3f, loss %.4f", server_round, acc, loss)
        return MetricRecord({"loss": loss, "accuracy": acc})

    num_nodes = int(cfg["min-nodes"])
    strategy = F3ocusStrategy(
        FedAvg(
            fraction_train=1.0,
            fraction_evaluate=float(cfg["fraction-evaluate"]),
            min_available_nodes=num_nodes,
            min_train_nodes=num_nodes,
            min_evaluate_nodes=min(2, num_nodes),
        ),
        resolve_layers(model),
        budget=int(cfg["budget"]),
        max_budget=int(cfg["max-budget"]),
        solver=str(cfg["solver"]),
        tradeoff=float(cfg["tradeoff"]),
        reselect_every=int(cfg["reselect-every"]),
        first_round=str(cfg["first-round"]),
        seed=seed,
        save_dir=str(cfg["save-dir"]) or None,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_eval,
    )
    total = sum(r.total_bytes for r in strategy.history.values())
    fedavg = sum(r.fedavg_total_bytes for r in strategy.history.values())
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    log(
        20,
        "f3ocus-flower-app finished: %d rounds, accuracy %.3f, %d bytes moved (full FedAvg: %d, ratio %.3f)",
        len(strategy.history),
        final["accuracy"],
        total,
        fedavg,
        total / fedavg,
    )
