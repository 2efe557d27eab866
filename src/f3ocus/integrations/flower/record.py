"""What happened in one round of :class:`F3ocusStrategy`: a small frozen, JSON-ready record.

Traffic counts every message of the round in both directions (the round-1 score query, train, evaluate)
as serialized bytes (:func:`f3ocus.integrations.flower.traffic.message_nbytes`). The FedAvg baseline is
the same round without f3ocus on the same model: the wrapped strategy's own messages down, and replies
whose ``ArrayRecord`` is the whole global model (and that carry no scores) up; no query.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["RoundRecord"]


def _total(d: Mapping[int, int]) -> int:
    return int(sum(d.values()))


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """One round, as the server saw it.

    Attributes:
        round: The server round.
        selected: Whether a new plan was computed this round (else nodes kept their plans).
        plan: ``{node id: layers}`` sent with the train messages.
        planned_coverage: ``{layer: clients assigned}``.
        coverage: ``{layer: n_l}``, the clients whose valid update of the layer was aggregated.
        importance: Importance of the selected plan (None when none was selected).
        diversity: Diversity of the selected plan.
        solver_seconds: Wall time of :func:`f3ocus.select_layers` (0 when not run).
        score_rounds: ``{node id: round its scores were sent}`` for the nodes selection used.
        fallback: ``{node id: reason}`` for the nodes on the fallback plan.
        failed: ``{node id: reason}`` for replies that were left out (train or evaluate).
        kept: ``{layer: reason}`` for trained layers the wrapped strategy did not update.
        noise_std: ``{layer: sigma_l}`` of the DP noise (empty without DP).
        bytes_up: ``{node id: bytes}`` the node sent this round (all messages).
        bytes_down: ``{node id: bytes}`` the node received this round.
        fedavg_bytes_up: The same round under full FedAvg.
        fedavg_bytes_down: The same round under full FedAvg.
    """

    round: int
    selected: bool
    plan: dict[int, list[str]]
    planned_coverage: dict[str, int]
    coverage: dict[str, int]
    importance: float | None
    diversity: float | None
    solver_seconds: float
    score_rounds: dict[int, int]
    fallback: dict[int, str]
    failed: dict[int, str]
    kept: dict[str, str]
    noise_std: dict[str, float]
    bytes_up: dict[int, int]
    bytes_down: dict[int, int]
    fedavg_bytes_up: dict[int, int]
    fedavg_bytes_down: dict[int, int]

    @property
    def total_bytes(self) -> int:
        """Bytes up plus down, all nodes."""
        return _total(self.bytes_up) + _total(self.bytes_down)

    @property
    def fedavg_total_bytes(self) -> int:
        """The same under full FedAvg."""
        return _total(self.fedavg_bytes_up) + _total(self.fedavg_bytes_down)

    @property
    def bytes_ratio(self) -> float:
        """``total_bytes / fedavg_total_bytes`` (nan without traffic)."""
        base = self.fedavg_total_bytes
        return self.total_bytes / base if base else float("nan")

    @property
    def stats(self) -> dict[str, Any]:
        """Totals: clients, failures, fallbacks, bytes and their ratio to FedAvg."""
        return {
            "clients": sum(1 for n in self.plan if n not in self.failed),
            "failed": len(self.failed),
            "fallback": len(self.fallback),
            "bytes_up": _total(self.bytes_up),
            "bytes_down": _total(self.bytes_down),
            "fedavg_bytes_up": _total(self.fedavg_bytes_up),
            "fedavg_bytes_down": _total(self.fedavg_bytes_down),
            "bytes_ratio": self.bytes_ratio,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (node ids as strings) with ``stats``."""
        d = dataclasses.asdict(self)
        for key, value in d.items():
            if isinstance(value, dict):
                d[key] = {str(k): v for k, v in value.items()}
        d["stats"] = self.stats
        return d

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RoundRecord:
        """Inverse of :meth:`to_dict`."""
        by_node = ("plan", "score_rounds", "fallback", "failed", "bytes_up", "bytes_down")
        by_node += ("fedavg_bytes_up", "fedavg_bytes_down")
        kwargs = {f.name: d[f.name] for f in dataclasses.fields(cls)}
        for key in by_node:
            kwargs[key] = {int(k): v for k, v in kwargs[key].items()}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> RoundRecord:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))
