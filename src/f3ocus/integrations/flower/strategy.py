"""``F3ocusStrategy``: per-client layer plans inside any Flower Message-API strategy.

The round (F³OCUS, Saha et al., CVPR 2025), as the server runs it:

1. The wrapped strategy samples the clients (its ``configure_train``).
2. In a selection round (round 1, then every ``reselect_every`` rounds) the server solves
   :func:`f3ocus.select_layers` on the scores each sampled client last sent, which rode on its previous
   train (or evaluate) reply; in round 1 it asks with one ``"query.f3ocus"`` message
   (``first_round="query"``) or starts every client on the fallback (``"fallback"``). Between selection
   rounds each client keeps its own last plan.
3. Each train message carries its client's layers; the client trains them and sends only them.
4. Every reply is validated (:mod:`~f3ocus.integrations.flower.validate`); the valid ones are aggregated
   layer by layer in the way the wrapped strategy defines (:mod:`~f3ocus.integrations.flower.compose`).

Every round leaves a :class:`~f3ocus.integrations.flower.record.RoundRecord` in ``history``, metrics in
the run's ``Result`` and log lines; with ``save_dir`` the global arrays and the state are saved after
every round and :meth:`F3ocusStrategy.resume` continues from them.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from f3ocus._checks import check_choice, check_int, check_positive_float, describe
from f3ocus.integrations.flower import protocol as P
from f3ocus.integrations.flower.accounting import AccountingMixin
from f3ocus.integrations.flower.compose import _DP_CLIENT, _DP_SERVER, Update, aggregate_masked, compose
from f3ocus.integrations.flower.memory import PlanMemory, load_saved, save_round
from f3ocus.integrations.flower.record import RoundRecord
from f3ocus.integrations.flower.selection import SelectionMixin
from f3ocus.integrations.flower.traffic import message_nbytes, nbytes_with_content
from f3ocus.integrations.flower.validate import (
    InvalidReply,
    clean_metrics,
    read_arrays,
    read_weight,
    reply_metrics,
    reply_node,
)

__all__ = ["F3ocusStrategy"]


class F3ocusStrategy(SelectionMixin, AccountingMixin, Strategy):
    """Wrap a Flower Message-API strategy so that each client trains only its selected layers.

    Args:
        strategy: The wrapped strategy, e.g. ``FedAvg(...)``, ``FedAdam(...)``, ``Krum(...)`` or
            ``DifferentialPrivacyServerSideFixedClipping(FedAvg(...), ...)``; see the table in the
            Flower guide for what each one does under a plan. Strategies that a plan would silently break
            are refused with a ``ValueError`` that says what to use instead.
        layer_map: Layer name -> array keys of the global ``ArrayRecord``, e.g.
            :func:`f3ocus.resolve_layers` or :func:`f3ocus.fl.adapter_layers` of the server's model.
        budget: Layers per client when the client reports none: an int or ``budget(node_id) -> int``.
        max_budget: Cap on every budget, the client-reported ones included: an int or
            ``max_budget(node_id) -> int`` (None: the number of layers).
        solver: :func:`f3ocus.select_layers` solver name.
        tradeoff: Passed to :func:`f3ocus.select_layers`.
        normalize: Passed to :func:`f3ocus.select_layers`.
        seed: Seed of the selection (round $r$ uses ``seed + r``); DP noise never derives from it.
        reselect_every: Plans are recomputed in rounds $1, 1 + s, 1 + 2s, \\dots$.
        fallback: Plan of a node without usable scores or plan, and of every node if selection fails:
            ``"least-covered"`` (its budget's worth of the layers least trained over the last
            ``fallback_window`` rounds and this one), ``"all"``, or ``"skip"`` (not trained this round).
        fallback_window: Rounds of coverage history the fallback looks back on.
        first_round: ``"query"`` (round 1 asks each client for scores with one extra message) or
            ``"fallback"`` (round 1 runs on the fallback; scores arrive with its replies).
        score_with: Which reply carries the scores for the next selection round: ``"train"`` (computed
            on the global model the client received) or ``"evaluate"`` (on the new global model; needs
            federated evaluation of the sampled clients).
        query_timeout: Seconds to wait for the round-1 scores.
        save_dir: Directory to save the global arrays and the state to after every round, or None.
        solver_options: Further keyword arguments of :func:`f3ocus.select_layers`.

    Attributes:
        history: ``{round: RoundRecord}``.
        plans: ``{round: {node id: layer names}}``.
        fallbacks: ``{round: [node ids on the fallback plan]}``.
        composition: How the masked round meets the wrapped strategy.
    """

    def __init__(
        self,
        strategy: Strategy,
        layer_map: Mapping[str, Sequence[str]],
        *,
        budget: int | Callable[[int], int] = 1,
        max_budget: int | Callable[[int], int] | None = None,
        solver: str = "exact",
        tradeoff: float | None = None,
        normalize: str = "sum",
        seed: int = 0,
        reselect_every: int = 1,
        fallback: str = "least-covered",
        fallback_window: int = 3,
        first_round: str = "query",
        score_with: str = "train",
        query_timeout: float = 120.0,
        save_dir: str | Path | None = None,
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
        for name in ("budget", "max_budget"):
            value = locals()[name]
            if value is not None and not callable(value):
                check_int(name, value, low=1)
        from f3ocus import available_solvers

        check_choice("solver", solver, available_solvers())
        self.composition = compose(strategy)
        self.strategy = strategy
        self.layer_map = {str(k): [str(p) for p in v] for k, v in layer_map.items()}
        self.budget, self.max_budget = budget, max_budget
        self.solver, self.tradeoff, self.normalize = solver, tradeoff, normalize
        self.seed = check_int("seed", seed)
        self.reselect_every = check_int("reselect_every", reselect_every, low=1)
        self.fallback = check_choice("fallback", fallback, ["least-covered", "all", "skip"])
        self.fallback_window = check_int("fallback_window", fallback_window, low=0)
        self.first_round = check_choice("first_round", first_round, ["query", "fallback"])
        self.score_with = check_choice("score_with", score_with, ["train", "evaluate"])
        self.query_timeout = check_positive_float("query_timeout", query_timeout)
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.solver_options = dict(solver_options or {})
        self.memory = PlanMemory()
        self.history: dict[int, RoundRecord] = {}
        self.plans: dict[int, dict[int, list[str]]] = {}
        self.fallbacks: dict[int, list[int]] = {}
        self._offset = 0
        self._rng = np.random.default_rng()  # DP noise: fresh entropy, never the selection seed
        self._global: ArrayRecord | None = None
        self._round: dict[str, Any] = {}
        self._score_problems: dict[int, str] = {}

    # -- helpers -------------------------------------------------------------------------------
    @property
    def _layers(self) -> list[str]:
        return list(self.layer_map)

    def _weight_key(self) -> str:
        return getattr(self.composition.aggregator, "weighted_by_key", "num-examples")

    def _array_key(self) -> str:
        return getattr(self.composition.aggregator, "arrayrecord_key", "arrays")

    def _warn(self, node: int, what: str, reason: str) -> None:
        log(WARNING, "f3ocus: round %d, node %d: %s (%s)", self._round.get("round", 0), node, what, reason)

    def _sent_ids(self, messages: Iterable[Message]) -> dict[str, int]:
        return {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}

    def _with_config(self, m: Message, extra: Mapping[str, Any]) -> Message:
        content = RecordDict(
            {
                key: ConfigRecord({**rec, **extra}) if isinstance(rec, ConfigRecord) else rec
                for key, rec in m.content.items()
            }
        )
        return Message(
            content,
            dst_node_id=m.metadata.dst_node_id,
            message_type=m.metadata.message_type,
            group_id=m.metadata.group_id or None,
        )

    # -- delegation ----------------------------------------------------------------------------
    def summary(self) -> None:
        """Log the wrapped strategy's summary, the selection settings and how they compose."""
        self.strategy.summary()
        log(
            INFO,
            "\t└──> f3ocus: %d layers, solver %r, budget %s (max %s), reselect every %d, fallback %r, "
            "first round %r, scores with %r",
            len(self.layer_map),
            self.solver,
            self.budget,
            self.max_budget,
            self.reselect_every,
            self.fallback,
            self.first_round,
            self.score_with,
        )
        log(INFO, "\t\t└── aggregation: %s", self.composition.describe())

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's train messages, each with its client's layers in its config."""
        caller = sys._getframe(1).f_locals.get("self")
        if isinstance(caller, _DP_SERVER + _DP_CLIENT):
            raise TypeError(
                f"{type(caller).__name__} wraps F3ocusStrategy; put it inside instead: "
                "F3ocusStrategy(DifferentialPrivacyServerSideFixedClipping(FedAvg(...), ...), layer_map)."
            )
        rnd = server_round + self._offset
        self._round = {"round": rnd, "down": {}, "up": {}, "fed_down": {}, "fed_up": {}, "failed": {}}
        self._round.update(solver_seconds=0.0, importance=None, diversity=None, score_rounds={}, info={})
        inner = list(self.strategy.configure_train(rnd, arrays, config, grid))
        self._global = arrays
        nodes = [m.metadata.dst_node_id for m in inner]
        selected = (rnd - 1) % self.reselect_every == 0
        if selected:
            unscored = [n for n in nodes if n not in self.memory.scores]
            if rnd == 1 and self.first_round == "query" and unscored:
                self._query(rnd, arrays, unscored, grid)
            plan, reasons = self._select(rnd, nodes)
        else:
            plan = {n: self.memory.plans[n][1] for n in nodes if n in self.memory.plans}
            reasons = {n: "no plan of its own yet (between selection rounds)" for n in nodes if n not in plan}
        counts = {layer: sum(layer in p for p in plan.values()) for layer in self.layer_map}
        for node in [n for n in nodes if n not in plan]:
            layers = self._fallback_plan(node, counts, rnd)
            if layers is not None:
                plan[node] = layers
                for layer in layers:
                    counts[layer] += 1
        for node, layers in plan.items():
            self.memory.plans[node] = (rnd, list(layers))
        self.memory.coverage[rnd] = dict(counts)
        self.plans[rnd], self.fallbacks[rnd] = plan, list(reasons)
        self._round.update(selected=selected, fallback=reasons, plan=plan, planned=counts)
        extra_score = rnd % self.reselect_every == 0 and self.score_with == "train"
        out, self._pending = [], []
        for m in inner:
            node = m.metadata.dst_node_id
            if node not in plan:  # FedAvg would still have sent it
                self._count(node, fed_down=message_nbytes(m))
                continue
            extra: dict[str, Any] = {P.LAYERS_KEY: plan[node]}
            if (
                extra_score and self.memory.scores.get(node, (0,))[0] < rnd
            ):  # not if it just answered the query
                extra[P.SCORE_LAYERS_KEY] = self._layers
            msg = self._with_config(m, extra)
            self._pending.append((msg, m.content))
            out.append(msg)
        self._train_out = out
        log(INFO, "f3ocus: round %d plan%s: %s", rnd, " (new)" if selected else "", plan)
        if reasons:
            log(INFO, "f3ocus: round %d, fallback %r for %s", rnd, self.fallback, reasons)
        return out

    # -- aggregation ---------------------------------------------------------------------------
    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Validate every reply, aggregate the valid ones per layer as the wrapped strategy defines."""
        replies = list(replies)
        rnd = server_round + self._offset
        if not self._round or self._round.get("round") != rnd or self._global is None:
            return None, None
        plan, wkey, akey = self.plans.get(rnd, {}), self._weight_key(), self._array_key()
        full = {k: self._global[k] for k in self._global}
        global_np = {k: np.asarray(a.numpy()) for k, a in full.items()}
        self._count_pending()
        sent = self._sent_ids(getattr(self, "_train_out", []))
        updates, metric_contents, seen = [], [], set()
        for reply in replies:
            node = reply_node(reply, sent)
            seen.add(node)
            self._count(node, up=message_nbytes(reply))
            if reply.has_error():
                self._round["failed"][node] = f"error reply: {reply.error.reason}"
                self._warn(node, "train reply left out", self._round["failed"][node])
                continue
            content = reply.content
            baseline = {
                k: v for k, v in content.items() if k != P.SCORES_KEY and k not in content.array_records
            }
            self._count(node, fed_up=nbytes_with_content(reply, {akey: self._global, **baseline}))
            if self.score_with == "train":
                self._harvest(node, content, rnd)
            try:
                if node not in plan:
                    raise InvalidReply("the node has no plan this round")
                metrics = reply_metrics(content, wkey)
                weight = read_weight(metrics, wkey)
                keys = [k for layer in plan[node] for k in self.layer_map[layer] if k in global_np]
                arrays = read_arrays(content, {k: global_np[k] for k in keys}, global_np, akey)
            except InvalidReply as err:
                self._round["failed"][node] = str(err)
                self._warn(node, "train reply left out", str(err))
                continue
            cleaned, dropped = clean_metrics(metrics)
            if dropped:
                self._warn(node, "metrics dropped", f"non-finite values under {dropped[:3]}")
            updates.append(Update(node, weight, arrays))
            metric_contents.append(RecordDict({"metrics": cleaned}))
        for node in [n for n in plan if n not in seen]:
            self._round["failed"][node] = "no train reply (node lost or timed out)"
            self._warn(node, "train reply missing", "no reply before the timeout")
        keys_of = {layer: [k for k in ks if k in global_np] for layer, ks in self.layer_map.items()}
        if updates:
            new, info = aggregate_masked(self.composition, rnd, self._global, updates, keys_of, self._rng)
        else:
            new, info = None, {"coverage": dict.fromkeys(self.layer_map, 0), "kept": {}, "noise_std": {}}
        for layer, reason in info["kept"].items():
            log(WARNING, "f3ocus: round %d, layer %r kept its value: %s", rnd, layer, reason)
        self._round["info"] = info
        metrics = self._train_metrics(metric_contents, wkey, info)
        if self.save_dir is not None:
            self._save(rnd, new if new is not None else self._global)
        return new, metrics if updates else None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The wrapped strategy's evaluation messages (with a score request when scores ride on them)."""
        rnd = server_round + self._offset
        inner = list(self.strategy.configure_evaluate(rnd, arrays, config, grid))
        ask = self.score_with == "evaluate" and rnd % self.reselect_every == 0
        out = [self._with_config(m, {P.SCORE_LAYERS_KEY: self._layers}) if ask else m for m in inner]
        self._pending = [(o, m.content) for m, o in zip(inner, out, strict=True)]
        self._eval_out = out
        return out

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Validate the evaluation replies, hand the valid ones to the wrapped strategy, close the round."""
        rnd = server_round + self._offset
        counting = self._round.get("round") == rnd
        if counting:
            self._count_pending()
        sent = self._sent_ids(getattr(self, "_eval_out", []))
        valid, wkey = [], self._weight_key()
        for reply in replies:
            node = reply_node(reply, sent)
            if counting:
                self._count(node, up=message_nbytes(reply))
            if reply.has_error():
                if counting:
                    self._round["failed"].setdefault(node, f"evaluate error reply: {reply.error.reason}")
                self._warn(node, "evaluate reply left out", f"error reply: {reply.error.reason}")
                continue
            if self.score_with == "evaluate":
                self._harvest(node, reply.content, rnd)
            baseline = {k: v for k, v in reply.content.items() if k != P.SCORES_KEY}
            if counting:
                self._count(node, fed_up=nbytes_with_content(reply, baseline))
            try:
                metrics = reply_metrics(reply.content, wkey)
                read_weight(metrics, wkey)
            except InvalidReply as err:
                self._warn(node, "evaluate reply left out", str(err))
                continue
            reply.content = RecordDict({"metrics": clean_metrics(metrics)[0]})
            valid.append(reply)
        try:
            result = self.strategy.aggregate_evaluate(rnd, valid) if valid else None
        except Exception as err:  # e.g. clients that report different metric keys
            log(
                WARNING, "f3ocus: round %d, the wrapped strategy could not aggregate evaluation: %s", rnd, err
            )
            result = None
        if counting:
            record = self._close_round()
            if result is not None:  # the whole round's traffic, evaluation included
                result["f3ocus-round-bytes"] = record.total_bytes
                result["f3ocus-round-fedavg-bytes"] = record.fedavg_total_bytes
        return result

    # -- saving --------------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "memory": self.memory.to_dict(),
            "history": {str(r): rec.to_dict() for r, rec in self.history.items()},
        }

    def _save(self, rnd: int, arrays: ArrayRecord | None) -> None:
        if arrays is not None:
            self._last_saved = arrays
        arrays = getattr(self, "_last_saved", None)
        if arrays is not None:
            save_round(self.save_dir, rnd, arrays, self._state(), self.composition.aggregator)

    def resume(self) -> ArrayRecord | None:
        """Restore the state saved in ``save_dir``; returns the saved global arrays (None if none).

        Continue with ``strategy.start(grid=grid, initial_arrays=arrays, num_rounds=remaining)``: rounds
        are numbered on from the saved one, plans, scores, coverage and the wrapped optimizer's moments
        are restored.
        """
        if self.save_dir is None:
            raise ValueError("resume() needs save_dir=...; pass the directory the run saved to.")
        loaded = load_saved(self.save_dir, self.composition.aggregator)
        if loaded is None:
            return None
        arrays, doc = loaded
        self.memory = PlanMemory.from_dict(doc.get("memory", {}))
        self.history = {int(r): RoundRecord.from_dict(d) for r, d in doc.get("history", {}).items()}
        self.plans = {r: rec.plan for r, rec in self.history.items()}
        self.fallbacks = {r: list(rec.fallback) for r, rec in self.history.items()}
        self._offset = int(doc["round"])
        self._last_saved = arrays
        log(INFO, "f3ocus: resumed from %s after round %d", self.save_dir, self._offset)
        return arrays
