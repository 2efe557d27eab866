"""Flower (1.42, Message API) integration: per-client layer plans inside any Flower strategy.

:class:`F3ocusStrategy` wraps a Message-API strategy from ``flwr.serverapp.strategy`` and adds the
F³OCUS round (Saha et al., CVPR 2025) to it; the client helpers score layers, read the plan and send
only the trained layers. ``flwr`` is an optional extra: ``pip install 'f3ocus[flower]'``.

- :mod:`~f3ocus.integrations.flower.protocol`: keys and client helpers (:func:`score_record`,
  :func:`score_reply`, :func:`assigned_layers`, :func:`trained_arrays`, :func:`node_budget`).
- :mod:`~f3ocus.integrations.flower.strategy`: :class:`F3ocusStrategy`.
- :mod:`~f3ocus.integrations.flower.compose`: how the masked round meets the wrapped strategy.
- :mod:`~f3ocus.integrations.flower.validate`: checks of every value a client sends.
- :mod:`~f3ocus.integrations.flower.traffic`: serialized message sizes.
- :mod:`~f3ocus.integrations.flower.memory` and :mod:`~f3ocus.integrations.flower.record`: state
  across rounds, saving and resuming, and the per-round record.
"""

from f3ocus._checks import require_extra

flwr = require_extra("flwr", "flower", "the Flower integration")

from f3ocus.integrations.flower.protocol import (  # noqa: E402
    BUDGET_KEY,
    LAYERS_KEY,
    QUERY_TYPE,
    SCORE_LAYERS_KEY,
    SCORE_PREFIX,
    SCORES_KEY,
    assigned_layers,
    node_budget,
    pack_scores,
    requested_layers,
    score_record,
    score_reply,
    trained_arrays,
    unpack_scores,
)
from f3ocus.integrations.flower.record import RoundRecord  # noqa: E402
from f3ocus.integrations.flower.strategy import F3ocusStrategy  # noqa: E402
from f3ocus.integrations.flower.traffic import message_nbytes  # noqa: E402

__all__ = [
    # server
    "F3ocusStrategy",
    "RoundRecord",
    "message_nbytes",
    # client
    "score_record",
    "score_reply",
    "assigned_layers",
    "requested_layers",
    "trained_arrays",
    "node_budget",
    "pack_scores",
    "unpack_scores",
    # keys
    "LAYERS_KEY",
    "SCORE_LAYERS_KEY",
    "SCORES_KEY",
    "SCORE_PREFIX",
    "BUDGET_KEY",
    "QUERY_TYPE",
]
