"""Flower (1.42, Message API) integration: per-client layer plans inside any Flower strategy.

:class:`F3ocusStrategy` wraps a Message-API strategy from ``flwr.serverapp.strategy`` (``FedAvg`` or any
other) and adds the F³OCUS round (Saha et al., CVPR 2025) to it:

1. The wrapped strategy samples the clients of the round (its ``configure_train``).
2. On a selection round (round 1, then every ``reselect_every`` rounds) the server sends each sampled
   client the global arrays in a ``"query.f3ocus"`` message; the client answers with its
   :class:`f3ocus.LayerScores` as a ``MetricRecord`` (:func:`score_reply`).
3. The server calls :func:`f3ocus.select_layers` on the scores that arrived and writes each client's layer
   list into that client's own train ``ConfigRecord`` (key ``"f3ocus-layers"``). Clients that drop or
   send no usable scores get a fallback plan; they never break the round.
4. Each client trains only its layers (:func:`assigned_layers`, :func:`f3ocus.fl.train_only`) and sends
   them back (:func:`trained_arrays`). The server averages each parameter over the clients that trained
   it (:func:`f3ocus.masked_fedavg`), whatever else they sent; untrained layers keep their values.

The wrapped strategy keeps node sampling, evaluation and metric aggregation; the arrays are aggregated
by the masked average (a server optimizer such as FedAdam's is not applied to them).
``flwr`` is an optional extra: ``pip install 'f3ocus[flower]'``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from typing import Any

import torch
from torch import nn

from f3ocus._checks import check_choice, check_int, describe, require_extra
from f3ocus.fl.aggregate import masked_fedavg
from f3ocus.fl.plan import layer_parameter_names, resolve_layer_map
from f3ocus.fl.state import layer_state

flwr = require_extra("flwr", "flower", "the Flower integration")
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.common import log  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402
from flwr.serverapp.strategy import Strategy  # noqa: E402
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords  # noqa: E402

__all__ = [
    "F3ocusStrategy",
    "score_reply",
    "pack_scores",
    "unpack_scores",
    "assigned_layers",
    "trained_arrays",
    "LAYERS_KEY",
    "SCORE_PREFIX",
    "BUDGET_KEY",
    "QUERY_TYPE",
]

LAYERS_KEY = "f3ocus-layers"
"""ConfigRecord key with the layer names a client trains this round (query: the layers to score)."""
SCORE_PREFIX = "f3ocus-score:"
"""MetricRecord key prefix of a layer score: ``"f3ocus-score:<layer name>"``."""
BUDGET_KEY = "f3ocus-budget"
"""Optional MetricRecord key: the number of layers the client can train."""
QUERY_TYPE = "query.f3ocus"
"""Message type of the score request (register it with ``@app.query("f3ocus")``)."""


# -- client side -------------------------------------------------------------------------------


def pack_scores(scores: Mapping[str, float], *, budget: int | None = None) -> MetricRecord:
    """Put layer scores (and optionally the client's budget) into a ``MetricRecord``.

    Args:
        scores: ``{layer name: score}``, e.g. a :class:`f3ocus.LayerScores`.
        budget: The number of layers this client can train; the server then uses it instead of its own.

    Returns:
        ``MetricRecord({"f3ocus-score:<layer>": float, ..., "f3ocus-budget": int})``.
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a mapping layer name -> float, got {describe(scores)}.")
    record = MetricRecord({f"{SCORE_PREFIX}{name}": float(value) for name, value in scores.items()})
    if budget is not None:
        record[BUDGET_KEY] = check_int("budget", budget, low=1)
    return record


def unpack_scores(record: Mapping[str, Any]) -> tuple[dict[str, float], int | None]:
    """Inverse of :func:`pack_scores`: ``({layer: score}, budget or None)``; other keys are ignored."""
    scores = {k[len(SCORE_PREFIX) :]: float(v) for k, v in record.items() if k.startswith(SCORE_PREFIX)}
    budget = record.get(BUDGET_KEY)
    return scores, None if budget is None else int(budget)


def _config_of(message_or_config: Any) -> Mapping[str, Any] | None:
    if isinstance(message_or_config, Message):
        records = list(message_or_config.content.config_records.values())
        return records[0] if records else None
    if isinstance(message_or_config, Mapping):
        return message_or_config
    raise TypeError(f"message must be a flwr Message or a ConfigRecord, got {describe(message_or_config)}.")


def assigned_layers(message: Any) -> list[str] | None:
    """The layer names the server assigned to this client, or None if the message carries no plan.

    Args:
        message: The train ``Message`` (or its ``ConfigRecord``).
    """
    config = _config_of(message)
    if config is None or LAYERS_KEY not in config:
        return None
    return [str(x) for x in config[LAYERS_KEY]]


def trained_arrays(
    model: nn.Module, layers: Sequence[str], *, layer_map: Mapping[str, Sequence[str]] | None = None
) -> ArrayRecord:
    """An ``ArrayRecord`` with only the parameters of ``layers`` (what the client uploads)."""
    return ArrayRecord(layer_state(model, layers, layer_map=layer_map))


def score_reply(
    message: Message,
    model: nn.Module,
    batch: Any,
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
    budget: int | None = None,
    **ntk_options: Any,
) -> Message:
    """Answer the server's score request: load its arrays, score the layers, pack the scores.

    The client computes $\\lambda_{\\max}(\\Theta_l)$ of its layer-wise empirical NTK on ``batch`` with
    :func:`f3ocus.ntk_layer_importance` for the layers the server listed under ``"f3ocus-layers"``
    (all layers of ``layer_map`` if it listed none) and sends only those $L$ numbers.

    Args:
        message: The ``"query.f3ocus"`` message (global arrays + config).
        model: The client's model; the message's arrays are loaded into it (``strict=True``).
        batch: A local batch, as :func:`f3ocus.ntk_layer_importance` takes it.
        layer_map: Layer name -> parameter names (default :func:`f3ocus.resolve_layers`; for PEFT
            models :func:`f3ocus.fl.adapter_layers`).
        budget: Number of layers this client can train (sent to the server), or None.
        **ntk_options: Passed to :func:`f3ocus.ntk_layer_importance` (``kernel=``, ``seed=`` ...).

    Returns:
        The reply ``Message`` with a ``MetricRecord`` under ``"f3ocus-scores"``.
    """
    from f3ocus import ntk_layer_importance

    arrays = list(message.content.array_records.values())
    if arrays:
        model.load_state_dict(arrays[0].to_torch_state_dict(), strict=True)
    lmap = resolve_layer_map(model, layer_map)
    wanted = assigned_layers(message)
    if wanted:
        layer_parameter_names(wanted, lmap, argname="the server's 'f3ocus-layers'")
        lmap = {name: lmap[name] for name in wanted}
    scores = ntk_layer_importance(model, batch, layers=lmap, **ntk_options)
    return Message(RecordDict({"f3ocus-scores": pack_scores(scores, budget=budget)}), reply_to=message)


# -- server side -------------------------------------------------------------------------------


class F3ocusStrategy(Strategy):
    """Wrap a Flower Message-API strategy so that each client trains only its selected layers.

    Args:
        strategy: The wrapped strategy, e.g. ``flwr.serverapp.strategy.FedAvg(...)``.
        layer_map: Layer name -> array keys (parameter names of the global ``ArrayRecord``), e.g.
            :func:`f3ocus.resolve_layers` or :func:`f3ocus.fl.adapter_layers` of the server's model.
        budget: Layers per client: an int, or ``budget(node_id) -> int``. A budget the client sends
            with its scores takes precedence. Budgets are clipped to ``[1, L]``.
        solver: :func:`f3ocus.select_layers` solver name.
        tradeoff: Passed to :func:`f3ocus.select_layers`.
        normalize: Passed to :func:`f3ocus.select_layers`.
        seed: Seed of the selection; round $r$ uses ``seed + r``.
        reselect_every: Scores are requested and the plan recomputed in rounds $1, 1 + s, 1 + 2s, \\dots$;
            in between, each client keeps its plan (new clients get the fallback).
        fallback: Plan of a client without usable scores (all finite, >= 0, not all zero), and of every
            client if :func:`f3ocus.select_layers` fails: ``"least-covered"`` (its budget's worth of the
            layers fewest clients train this round, in layer order on ties), ``"all"`` (every layer), or
            ``"skip"`` (not trained this round).
        query_timeout: Seconds to wait for scores (None: the grid's default wait).
        solver_options: Further keyword arguments of :func:`f3ocus.select_layers`.

    Attributes:
        plans: ``{round: {node id: layer names}}`` of every round configured so far.
        fallbacks: ``{round: [node ids that got the fallback plan]}``.
    """

    def __init__(
        self,
        strategy: Strategy,
        layer_map: Mapping[str, Sequence[str]],
        *,
        budget: int | Callable[[int], int] = 1,
        solver: str = "exact",
        tradeoff: float | None = None,
        normalize: str = "sum",
        seed: int = 0,
        reselect_every: int = 1,
        fallback: str = "least-covered",
        query_timeout: float | None = None,
        solver_options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(strategy, Strategy):
            raise TypeError(
                "strategy must be a Message-API strategy from flwr.serverapp.strategy (e.g. FedAvg()), "
                f"got {describe(strategy)}."
            )
        if not isinstance(layer_map, Mapping) or not layer_map:
            raise ValueError(
                "layer_map must be a non-empty mapping layer name -> array keys, e.g. "
                f"f3ocus.resolve_layers(model); got {describe(layer_map)}."
            )
        if not callable(budget):
            check_int("budget", budget, low=1)
        from f3ocus import available_solvers

        check_choice("solver", solver, available_solvers())
        self.strategy = strategy
        self.layer_map = {str(k): list(v) for k, v in layer_map.items()}
        self.budget = budget
        self.solver = solver
        self.tradeoff = tradeoff
        self.normalize = normalize
        self.seed = check_int("seed", seed)
        self.reselect_every = check_int("reselect_every", reselect_every, low=1)
        self.fallback = check_choice("fallback", fallback, ["least-covered", "all", "skip"])
        self.query_timeout = query_timeout
        self.solver_options = dict(solver_options or {})
        self.plans: dict[int, dict[int, list[str]]] = {}
        self.fallbacks: dict[int, list[int]] = {}
        self._arrays: ArrayRecord | None = None

    # -- delegation ----------------------------------------------------------------------------
    def summary(self) -> None:
        """Log the wrapped strategy's summary and the selection settings."""
        self.strategy.summary()
        log(
            INFO,
            "\t└──> f3ocus: %d layers, solver %r, budget %s, reselect every %d round(s), fallback %r",
            len(self.layer_map),
            self.solver,
            self.budget,
            self.reselect_every,
            self.fallback,
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The wrapped strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    # -- selection -----------------------------------------------------------------------------
    def _budget_for(self, node: int, reported: int | None) -> int:
        b = reported if reported is not None else self.budget(node) if callable(self.budget) else self.budget
        return max(1, min(int(b), len(self.layer_map)))

    def _query_scores(
        self, server_round: int, arrays: ArrayRecord, nodes: list[int], grid: Grid
    ) -> dict[int, tuple[dict[str, float], int | None]]:
        layers = list(self.layer_map)
        config = ConfigRecord({"server-round": server_round, LAYERS_KEY: layers})
        content = RecordDict({"arrays": arrays, "config": config})
        messages = [
            Message(content, dst_node_id=node, message_type=QUERY_TYPE, group_id=str(server_round))
            for node in nodes
        ]
        out: dict[int, tuple[dict[str, float], int | None]] = {}
        for reply in grid.send_and_receive(messages, timeout=self.query_timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "f3ocus: node %s sent an error instead of scores: %s", node, reply.error.reason)
                continue
            for record in reply.content.metric_records.values():
                scores, budget = unpack_scores(record)
                values = list(scores.values())
                if (
                    set(scores) == set(layers)
                    and all(math.isfinite(v) and v >= 0 for v in values)
                    and any(values)
                ):
                    out[node] = ({name: scores[name] for name in layers}, budget)
                    break
            else:
                log(WARNING, "f3ocus: node %s sent no usable scores for the %d layers", node, len(layers))
        return out

    def _select(self, server_round: int, nodes: list[int], reported: dict) -> dict[int, list[str]]:
        from f3ocus import select_layers

        ok = [n for n in nodes if n in reported]
        plan: dict[int, list[str]] = {}
        if ok:
            budgets = [self._budget_for(n, reported[n][1]) for n in ok]
            try:
                assignment = select_layers(
                    [reported[n][0] for n in ok],
                    budgets,
                    solver=self.solver,
                    tradeoff=self.tradeoff,
                    normalize=self.normalize,
                    seed=self.seed + server_round,
                    **self.solver_options,
                )
            except Exception as err:  # a failed selection must not break the round
                log(
                    WARNING,
                    "f3ocus: select_layers failed (%s: %s); every client gets the fallback",
                    type(err).__name__,
                    err,
                )
                return {}
            plan = {n: list(assignment.layers[i]) for i, n in enumerate(ok)}
        return plan

    def _fallback_plan(self, node: int, counts: dict[str, int]) -> list[str] | None:
        if self.fallback == "skip":
            return None
        if self.fallback == "all":
            return list(self.layer_map)
        b = self._budget_for(node, None)
        order = sorted(range(len(self.layer_map)), key=lambda i: (counts[list(self.layer_map)[i]], i))
        return [list(self.layer_map)[i] for i in sorted(order[:b])]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, each with its client's layers in its config."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._arrays = arrays
        nodes = [m.metadata.dst_node_id for m in messages]
        if (server_round - 1) % self.reselect_every == 0 or not self.plans:
            plan = self._select(server_round, nodes, self._query_scores(server_round, arrays, nodes, grid))
        else:
            last = self.plans[max(self.plans)]
            plan = {n: last[n] for n in nodes if n in last}
        counts = {layer: sum(layer in p for p in plan.values()) for layer in self.layer_map}
        missing = [n for n in nodes if n not in plan]
        for node in missing:
            layers = self._fallback_plan(node, counts)
            if layers is not None:
                plan[node] = layers
                for layer in layers:
                    counts[layer] += 1
        self.plans[server_round] = plan
        self.fallbacks[server_round] = missing
        if missing:
            log(
                INFO,
                "f3ocus: round %d, %d client(s) on the %r fallback",
                server_round,
                len(missing),
                self.fallback,
            )
        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            if node not in plan:
                continue
            content = RecordDict(
                {
                    key: ConfigRecord({**rec, LAYERS_KEY: plan[node]})
                    if isinstance(rec, ConfigRecord)
                    else rec
                    for key, rec in m.content.items()
                }
            )
            out.append(
                Message(
                    content,
                    dst_node_id=node,
                    message_type=m.metadata.message_type,
                    group_id=m.metadata.group_id or None,
                )
            )
        return out

    # -- masked aggregation --------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Masked FedAvg of the layers each client was assigned; the wrapped strategy's metrics."""
        weight_key = getattr(self.strategy, "weighted_by_key", "num-examples")
        plan = self.plans.get(server_round, {})
        base = self._arrays.to_torch_state_dict() if self._arrays is not None else {}
        states, weights, used = [], [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or node not in plan:
                continue
            metrics = list(reply.content.metric_records.values())
            n = metrics[0].get(weight_key) if metrics else None
            if not isinstance(n, numbers.Real) or not n > 0:
                log(WARNING, "f3ocus: node %s sent no positive %r; its update is left out", node, weight_key)
                continue
            keys = set(layer_parameter_names(plan[node], self.layer_map)) & set(base)
            arrays = [
                (k, torch.from_numpy(v.numpy()))
                for r in reply.content.array_records.values()
                for k, v in r.items()
            ]
            state = {k: t for k, t in arrays if k in keys and t.shape == base[k].shape}
            states.append(state)
            weights.append(float(n))
            used.append(reply.content)
        if not states:
            return None, None
        new = masked_fedavg(base, states, weights)
        aggr = getattr(self.strategy, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        try:
            metrics = aggr(used, weight_key)
        except Exception as err:  # metrics must not break the round
            log(WARNING, "f3ocus: could not aggregate train metrics: %s", err)
            metrics = MetricRecord()
        selectable = set(layer_parameter_names(list(self.layer_map), self.layer_map))
        full = sum(int(t.numel()) for k, t in base.items() if k in selectable)
        sent = sum(int(t.numel()) for s in states for t in s.values())
        metrics["f3ocus-clients"] = len(states)
        metrics["f3ocus-fallback-clients"] = len(self.fallbacks.get(server_round, []))
        metrics["f3ocus-up-fraction"] = sent / (len(states) * full) if full else 0.0
        return ArrayRecord(new), metrics
