"""Bookkeeping inside :class:`~f3ocus.integrations.flower.F3ocusStrategy`: bytes, metrics, round records.

Bytes are counted per node and direction once a message is sent (the grid gives it its id) and once a
reply arrives; the FedAvg baseline is counted for the same messages as FedAvg would send them
(:mod:`~f3ocus.integrations.flower.record`).
"""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from f3ocus.integrations.flower.record import RoundRecord
from f3ocus.integrations.flower.traffic import message_nbytes, nbytes_with_content

__all__ = ["AccountingMixin"]


class AccountingMixin:
    """Traffic counting, the round's metrics, and closing a round into a :class:`RoundRecord`."""

    def _count(self, node: int, down: int = 0, up: int = 0, fed_down: int = 0, fed_up: int = 0) -> None:
        r = self._round
        for key, n in (("down", down), ("up", up), ("fed_down", fed_down), ("fed_up", fed_up)):
            r[key][node] = r[key].get(node, 0) + n

    def _count_pending(self) -> None:
        """Count the messages sent since the last call (after sending: with the ids the grid gave)."""
        for msg, inner_content in getattr(self, "_pending", []):
            node = msg.metadata.dst_node_id
            self._count(node, down=message_nbytes(msg), fed_down=nbytes_with_content(msg, inner_content))
        self._pending = []

    def _train_metrics(self, contents: list[RecordDict], wkey: str, info: dict[str, Any]) -> MetricRecord:
        aggr = getattr(self.composition.aggregator, "train_metrics_aggr_fn", None) or aggregate_metricrecords
        try:
            metrics = aggr(contents, wkey) if contents else MetricRecord()
        except Exception as err:  # metrics must not break the round
            log(WARNING, "f3ocus: could not aggregate train metrics: %s", err)
            metrics = MetricRecord()
        r = self._round
        up, fed_up = sum(r["up"].values()), sum(r["fed_up"].values())
        down, fed_down = sum(r["down"].values()), sum(r["fed_down"].values())
        metrics["f3ocus-clients"] = len(contents)
        metrics["f3ocus-failed-clients"] = len(r["failed"])
        metrics["f3ocus-fallback-clients"] = len(r["fallback"])
        for layer, n in info["coverage"].items():
            metrics[f"f3ocus-coverage:{layer}"] = int(n)
        if r["importance"] is not None:
            metrics["f3ocus-importance"], metrics["f3ocus-diversity"] = r["importance"], r["diversity"]
            metrics["f3ocus-solver-seconds"] = float(r["solver_seconds"])
        metrics["f3ocus-bytes-up"], metrics["f3ocus-bytes-down"] = int(up), int(down)
        metrics["f3ocus-fedavg-bytes-up"], metrics["f3ocus-fedavg-bytes-down"] = int(fed_up), int(fed_down)
        metrics["f3ocus-up-fraction"] = up / fed_up if fed_up else 0.0
        for node in sorted(set(r["up"]) | set(r["down"])):
            metrics[f"f3ocus-bytes-up:{node}"] = int(r["up"].get(node, 0))
            metrics[f"f3ocus-bytes-down:{node}"] = int(r["down"].get(node, 0))
        return metrics

    def _close_round(self) -> RoundRecord:
        r, info = self._round, self._round.get("info", {})
        record = RoundRecord(
            round=r["round"],
            selected=bool(r.get("selected", False)),
            plan={int(n): list(p) for n, p in r.get("plan", {}).items()},
            planned_coverage=dict(r.get("planned", {})),
            coverage=dict(info.get("coverage", {})),
            importance=r["importance"],
            diversity=r["diversity"],
            solver_seconds=float(r["solver_seconds"]),
            score_rounds=dict(r["score_rounds"]),
            fallback=dict(r.get("fallback", {})),
            failed=dict(r["failed"]),
            kept=dict(info.get("kept", {})),
            noise_std=dict(info.get("noise_std", {})),
            bytes_up=dict(r["up"]),
            bytes_down=dict(r["down"]),
            fedavg_bytes_up=dict(r["fed_up"]),
            fedavg_bytes_down=dict(r["fed_down"]),
        )
        self.history[record.round] = record
        s = record.stats
        log(
            INFO,
            "f3ocus: round %d traffic: up %d B, down %d B; full FedAvg: up %d B, down %d B; ratio %.3f; "
            "per node (up, down): %s",
            record.round,
            s["bytes_up"],
            s["bytes_down"],
            s["fedavg_bytes_up"],
            s["fedavg_bytes_down"],
            s["bytes_ratio"],
            {n: (record.bytes_up.get(n, 0), record.bytes_down.get(n, 0)) for n in record.bytes_down},
        )
        log(INFO, "f3ocus: round %d coverage %s, failed %s", record.round, record.coverage, record.failed)
        if self.save_dir is not None:
            self._save(record.round, None)
        return record
