"""Checks of everything a client sends, before the server uses it.

A client is not trusted: each ``read_*`` function returns the clean value or raises
:class:`InvalidReply` with a short reason (what was wrong, never a traceback). The strategy turns a
reason into one warning naming the node and into its round record; the reply then gets the fallback plan
(scores, budget) or is left out of aggregation (arrays, weight). Nothing here raises anything else, so a
reply cannot end a round.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from f3ocus.integrations.flower.protocol import BUDGET_KEY, SCORE_PREFIX, SCORES_KEY

__all__ = [
    "InvalidReply",
    "read_scores",
    "read_budget",
    "read_weight",
    "read_arrays",
    "reply_metrics",
    "clean_metrics",
    "reply_node",
]


class InvalidReply(Exception):
    """A client's reply (or part of it) that the server cannot use; ``str(err)`` is the reason."""


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _finite_real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def read_scores(content: Any, layers: list[str]) -> tuple[dict[str, float], Any] | None:
    """The layer scores of a reply, or None when it carries none.

    Returns:
        ``({layer: score} in ``layers`` order, raw budget value or None)``.

    Raises:
        InvalidReply: the scores do not cover exactly ``layers``, a score is not a finite number
            >= 0, or all are zero.
    """
    try:
        record = content[SCORES_KEY] if SCORES_KEY in content else None
    except Exception:  # a content that does not behave like a RecordDict
        raise InvalidReply("unreadable content") from None
    if record is None:
        return None
    if not isinstance(record, MetricRecord):
        raise InvalidReply(f"{SCORES_KEY!r} is a {type(record).__name__}, not a MetricRecord")
    scores: dict[str, float] = {}
    for key, value in record.items():
        if not key.startswith(SCORE_PREFIX):
            continue
        name = key[len(SCORE_PREFIX) :]
        if not _finite_real(value) or value < 0:
            raise InvalidReply(f"score of layer {name!r} is {_short(value)}, not a finite number >= 0")
        scores[name] = float(value)
    missing = [name for name in layers if name not in scores]
    extra = [name for name in scores if name not in layers]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unknown {extra[:3]}{' ...' if len(extra) > 3 else ''}")
        raise InvalidReply(f"scores do not match the {len(layers)} layers ({', '.join(parts)})")
    if not any(scores.values()):
        raise InvalidReply("all scores are zero")
    return {name: scores[name] for name in layers}, record.get(BUDGET_KEY)


def read_budget(value: Any, num_layers: int) -> int:
    """A client-reported budget as an int in ``[1, num_layers]``.

    Raises:
        InvalidReply: not an integer-valued finite number >= 1.
    """
    if not _finite_real(value) or value != int(value) or value < 1:
        raise InvalidReply(f"budget {BUDGET_KEY!r} is {_short(value)}, not an integer >= 1")
    return min(int(value), num_layers)


def reply_metrics(content: Any, weight_key: str) -> MetricRecord:
    """The reply's ``MetricRecord`` that holds ``weight_key`` (scores excluded).

    Raises:
        InvalidReply: no record has the key.
    """
    for key, record in content.metric_records.items():
        if key != SCORES_KEY and weight_key in record:
            return record
    raise InvalidReply(f"no MetricRecord with {weight_key!r}")


def read_weight(metrics: Mapping[str, Any], weight_key: str) -> float:
    """The client's aggregation weight (``"num-examples"``) as a finite float > 0.

    Raises:
        InvalidReply: missing, not a number, not finite, or not > 0.
    """
    value = metrics.get(weight_key)
    if not _finite_real(value) or not value > 0:
        raise InvalidReply(f"{weight_key!r} is {_short(value)}, not a finite number > 0")
    return float(value)


def read_arrays(
    content: Any,
    expected: Mapping[str, Any],
    known: Mapping[str, Any],
    record_key: str = "arrays",
) -> dict[str, np.ndarray]:
    """The arrays of the expected keys, each checked against the global array of that key.

    Args:
        content: The reply's ``RecordDict``.
        expected: ``{key: global numpy array}`` the client had to send (its assigned layers).
        known: ``{key: global array}`` of every global key; sent keys outside ``expected`` but in
            ``known`` are ignored (a client may send its whole model), any other key is an error.
        record_key: The ``ArrayRecord`` to read when a reply holds several.

    Returns:
        ``{key: ndarray}`` in the global dtype, for exactly the expected keys.

    Raises:
        InvalidReply: no (or an ambiguous) ``ArrayRecord``, a missing or unknown key, an array that
            cannot be read, a wrong shape, a non-float dtype, or a NaN/Inf value.
    """
    records = content.array_records
    if not records:
        raise InvalidReply("no ArrayRecord")
    if len(records) > 1 and record_key not in records:
        raise InvalidReply(f"{len(records)} ArrayRecords and none under {record_key!r}")
    record: ArrayRecord = records[record_key] if record_key in records else next(iter(records.values()))
    unknown = [k for k in record if k not in known]
    if unknown:
        raise InvalidReply(f"unexpected array keys {unknown[:3]}{' ...' if len(unknown) > 3 else ''}")
    missing = [k for k in expected if k not in record]
    if missing:
        raise InvalidReply(f"missing arrays of its layers {missing[:3]}{' ...' if len(missing) > 3 else ''}")
    out: dict[str, np.ndarray] = {}
    for key, ref in expected.items():
        try:
            arr = np.asarray(record[key].numpy())
        except Exception as err:
            raise InvalidReply(f"array {key!r} cannot be read ({type(err).__name__})") from None
        if arr.shape != ref.shape:
            raise InvalidReply(f"array {key!r} has shape {arr.shape}, expected {ref.shape}")
        if arr.dtype.kind != ref.dtype.kind:  # any float precision is fine for a float array
            raise InvalidReply(f"array {key!r} has dtype {arr.dtype}, expected {ref.dtype}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise InvalidReply(f"array {key!r} holds NaN or Inf")
        out[key] = arr.astype(ref.dtype, copy=False)
    return out


def clean_metrics(record: Mapping[str, Any]) -> tuple[MetricRecord, list[str]]:
    """A copy of a client's metrics without non-finite values; returns it and the dropped keys."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for key, value in record.items():
        if isinstance(value, list):
            ok = all(_finite_real(v) for v in value)
        else:
            ok = _finite_real(value)
        if ok:
            kept[key] = value
        else:
            dropped.append(key)
    try:
        return MetricRecord(kept), dropped
    except Exception:  # pragma: no cover - MetricRecord already typed them
        return MetricRecord(), list(record)


def reply_node(reply: Message, sent: Mapping[str, int]) -> int:
    """The node a reply belongs to: the destination of the message it answers (Flower's own error
    replies for unreachable nodes carry the SuperLink's id as their source)."""
    node = sent.get(reply.metadata.reply_to_message_id)
    return int(node) if node is not None else int(reply.metadata.src_node_id)
