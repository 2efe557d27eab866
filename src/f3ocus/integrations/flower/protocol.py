"""The wire protocol between the server and its clients, and the client-side helpers.

What travels, per client and round (F³OCUS, Saha et al., CVPR 2025: only $L$ floats go up for
selection and only the assigned layers go up for aggregation):

- down, train message: the global arrays and, in the ``ConfigRecord``, ``"f3ocus-layers"`` (the layers
  to train). Before a selection round it also lists ``"f3ocus-score-layers"``: the client scores those
  layers on the global model it just received and sends the scores back **with its train reply**
  (:func:`score_record`), so selection costs no extra message and no extra model download. The same
  request may ride on the evaluate message (``score_with="evaluate"``).
- up, train reply: an ``ArrayRecord`` with only the assigned layers' parameters
  (:func:`trained_arrays`), a ``MetricRecord`` with ``"num-examples"``, and, when asked, a
  ``MetricRecord`` under ``"f3ocus-scores"`` (:func:`pack_scores`).
- round 1 only, when no client has sent scores yet: a ``"query.f3ocus"`` message with the global arrays,
  answered by :func:`score_reply` (``first_round="query"``; ``"fallback"`` skips it).

A client's budget (layers it can train) rides with its scores under ``"f3ocus-budget"``; a client reads
it from its node config under the same key (:func:`node_budget`), e.g.
``flower-supernode --node-config "partition-id=0 f3ocus-budget=2"``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from torch import nn

from f3ocus._checks import check_int, describe
from f3ocus.fl.plan import layer_parameter_names, resolve_layer_map
from f3ocus.fl.state import layer_state

__all__ = [
    "LAYERS_KEY",
    "SCORE_LAYERS_KEY",
    "SCORES_KEY",
    "SCORE_PREFIX",
    "BUDGET_KEY",
    "QUERY_TYPE",
    "pack_scores",
    "unpack_scores",
    "assigned_layers",
    "requested_layers",
    "trained_arrays",
    "node_budget",
    "score_record",
    "score_reply",
]

LAYERS_KEY = "f3ocus-layers"
"""ConfigRecord key with the layer names a client trains this round (query: the layers to score)."""
SCORE_LAYERS_KEY = "f3ocus-score-layers"
"""ConfigRecord key of a train or evaluate message: score these layers and send them with the reply."""
SCORES_KEY = "f3ocus-scores"
"""RecordDict key of the ``MetricRecord`` with a client's layer scores."""
SCORE_PREFIX = "f3ocus-score:"
"""MetricRecord key prefix of a layer score: ``"f3ocus-score:<layer name>"``."""
BUDGET_KEY = "f3ocus-budget"
"""MetricRecord key (with the scores) and node-config key: the number of layers the client can train."""
QUERY_TYPE = "query.f3ocus"
"""Message type of the round-1 score request (register it with ``@app.query("f3ocus")``)."""


def pack_scores(scores: Mapping[str, float], *, budget: int | None = None) -> MetricRecord:
    """Put layer scores (and optionally the client's budget) into a ``MetricRecord``.

    Args:
        scores: ``{layer name: score}``, e.g. a :class:`f3ocus.LayerScores`.
        budget: The number of layers this client can train; the server uses it (capped by its
            ``max_budget``) instead of its own.

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
    """Inverse of :func:`pack_scores`: ``({layer: score}, budget or None)``; other keys are ignored.

    Raises:
        ValueError: a score is not a finite real number, or the budget is not an integer >= 1. (The
            server never calls this on client data; it checks replies with
            :func:`f3ocus.integrations.flower.validate.read_scores`, which never raises out of a round.)
    """
    scores: dict[str, float] = {}
    for key, value in record.items():
        if not key.startswith(SCORE_PREFIX):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"score {key!r} must be a finite number, got {describe(value)}.")
        scores[key[len(SCORE_PREFIX) :]] = float(value)
    budget = record.get(BUDGET_KEY)
    if budget is None:
        return scores, None
    if (
        isinstance(budget, bool)
        or not isinstance(budget, numbers.Real)
        or not math.isfinite(budget)
        or budget != int(budget)
        or budget < 1
    ):
        raise ValueError(f"{BUDGET_KEY!r} must be an integer >= 1, got {describe(budget)}.")
    return scores, int(budget)


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


def requested_layers(message: Any) -> list[str] | None:
    """The layers the server asks this client to score with its reply, or None if it asks nothing."""
    config = _config_of(message)
    if config is None or SCORE_LAYERS_KEY not in config:
        return None
    return [str(x) for x in config[SCORE_LAYERS_KEY]]


def trained_arrays(
    model: nn.Module, layers: Sequence[str], *, layer_map: Mapping[str, Sequence[str]] | None = None
) -> ArrayRecord:
    """An ``ArrayRecord`` with only the parameters of ``layers`` (what the client uploads)."""
    return ArrayRecord(layer_state(model, layers, layer_map=layer_map))


def node_budget(context: Any, default: int | None = None) -> int | None:
    """The client's budget from its node config (key ``"f3ocus-budget"``), else ``default``.

    Set it when starting the SuperNode: ``--node-config "partition-id=0 f3ocus-budget=2"``.

    Raises:
        ValueError: the node config holds something other than an integer >= 1 under the key.
    """
    config = getattr(context, "node_config", None) or {}
    if BUDGET_KEY not in config:
        return default
    value = config[BUDGET_KEY]
    if isinstance(value, str):
        value = value.strip()
        value = int(value) if value.isdigit() else value
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(
            f"node config {BUDGET_KEY!r} must be an integer >= 1 (the number of layers this node can "
            f'train), got {describe(value)}. Start the SuperNode with --node-config "{BUDGET_KEY}=2".'
        )
    return int(value)


def _score(
    model: nn.Module,
    batch: Any,
    layers: list[str] | None,
    layer_map: Mapping[str, Sequence[str]] | None,
    budget: int | None,
    ntk_options: dict[str, Any],
) -> MetricRecord:
    from f3ocus import ntk_layer_importance

    lmap = resolve_layer_map(model, layer_map)
    if layers:
        layer_parameter_names(layers, lmap, argname="the server's 'f3ocus-layers'")
        lmap = {name: lmap[name] for name in layers}
    scores = ntk_layer_importance(model, batch, layers=lmap, **ntk_options)
    return pack_scores(scores, budget=budget)


def score_record(
    message: Message,
    model: nn.Module,
    batch: Any,
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
    budget: int | None = None,
    **ntk_options: Any,
) -> MetricRecord | None:
    """The scores the server asked for with this train (or evaluate) message, or None.

    Call it right after loading the message's arrays into ``model`` and **before** training, and put
    the result into the reply under :data:`SCORES_KEY`::

        scores = score_record(msg, model, x[:32], budget=node_budget(context))
        ...  # train
        content = RecordDict({"arrays": ..., "metrics": ...})
        if scores is not None:
            content[SCORES_KEY] = scores

    The scores are $\\lambda_{\\max}(\\Theta_l)$ of the layer-wise empirical NTK of ``model`` on ``batch``
    (:func:`f3ocus.ntk_layer_importance`), for the layers listed under ``"f3ocus-score-layers"``.

    Args:
        message: The train or evaluate ``Message``.
        model: The model holding the message's global arrays.
        batch: A local batch, as :func:`f3ocus.ntk_layer_importance` takes it.
        layer_map: Layer name -> parameter names (default :func:`f3ocus.resolve_layers`).
        budget: This client's budget (e.g. :func:`node_budget`), sent with the scores, or None.
        **ntk_options: Passed to :func:`f3ocus.ntk_layer_importance`.
    """
    wanted = requested_layers(message)
    if wanted is None:
        return None
    return _score(model, batch, wanted, layer_map, budget, ntk_options)


def score_reply(
    message: Message,
    model: nn.Module,
    batch: Any,
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
    budget: int | None = None,
    **ntk_options: Any,
) -> Message:
    """Answer the server's ``"query.f3ocus"`` request: load its arrays, score the layers, pack them.

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
    arrays = list(message.content.array_records.values())
    if arrays:
        model.load_state_dict(arrays[0].to_torch_state_dict(), strict=True)
    record = _score(model, batch, assigned_layers(message), layer_map, budget, ntk_options)
    return Message(RecordDict({SCORES_KEY: record}), reply_to=message)
