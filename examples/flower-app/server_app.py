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
        return MetricRecord({"loss": loss, "accuracy": acc})

    strategy = F3ocusStrategy(
        FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2),
        resolve_layers(model),
        budget=int(cfg["budget"]),
        solver=str(cfg["solver"]),
        tradeoff=float(cfg["tradeoff"]),
        reselect_every=int(cfg["reselect-every"]),
        seed=seed,
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(model.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        evaluate_fn=central_eval,
    )
    for rnd, plan in strategy.plans.items():
        log(20, "f3ocus plan, round %d: %s", rnd, {str(k)[-4:]: v for k, v in plan.items()})
    final = result.evaluate_metrics_serverapp[max(result.evaluate_metrics_serverapp)]
    log(20, "f3ocus-flower-app finished: %d rounds, accuracy %.3f", len(strategy.plans), final["accuracy"])
