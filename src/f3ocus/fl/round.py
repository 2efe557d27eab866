"""One federated round in plain PyTorch: local training of assigned layers, then masked FedAvg.

For every client $k$ the helper starts from the global weights, makes exactly the layers $S_k$ of the
plan trainable (:func:`f3ocus.fl.train_only`), calls the user's ``train_fn``, keeps the trained layers'
state (:func:`f3ocus.fl.layer_state`), and finally writes the masked average
(:func:`f3ocus.masked_fedavg`) into the global model. Clients run one after another on one working
copy of the model, so memory stays at two models whatever the number of clients.
"""

from __future__ import annotations

import copy
import dataclasses
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from f3ocus._checks import check_choice, describe
from f3ocus.fl.aggregate import masked_fedavg
from f3ocus.fl.comm import CommunicationCost, _layers_per_client, communication_cost
from f3ocus.fl.plan import resolve_layer_map, train_only
from f3ocus.fl.state import layer_state, load_layer_state

__all__ = ["RoundResult", "run_round"]


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """What happened in one round of :func:`run_round`.

    Attributes:
        reported: Indices of the clients whose update was aggregated.
        num_samples: Their weights $n_k$, aligned with ``reported``.
        failed: ``{client index: error text}`` for clients dropped with ``on_error="skip"``.
        updated: Parameter names that at least one client trained (the rest kept their values).
        cost: Communication of the round's plan against full fine-tuning (all clients of the plan).
    """

    reported: tuple[int, ...]
    num_samples: tuple[float, ...]
    failed: dict[int, str]
    updated: tuple[str, ...]
    cost: CommunicationCost


def run_round(
    global_model: nn.Module,
    clients: Sequence[Any],
    assignment: Any,
    train_fn: Callable[[nn.Module, Any], float | None],
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
    num_samples: Sequence[float] | None = None,
    on_error: str = "raise",
) -> RoundResult:
    """Train each client's assigned layers from the global weights and aggregate them, masked.

    Args:
        global_model: The server's model; its parameters are updated in place. Its ``requires_grad``
            flags and buffers are never changed.
        clients: One object per client (a DataLoader, a dataset, an id ...), handed to ``train_fn``.
        assignment: A :class:`f3ocus.LayerAssignment` or one list of layer names per client.
        train_fn: ``train_fn(model, client) -> n`` trains ``model`` in place on ``client``'s data.
            Inside, only the client's layers have ``requires_grad=True``, so build the optimizer from
            ``[p for p in model.parameters() if p.requires_grad]``. Return the number of samples used
            (the client's FedAvg weight), or None to take it from ``num_samples``.
        layer_map: Layer name -> parameter names. Default: :func:`f3ocus.resolve_layers` on
            ``global_model``; for PEFT models pass :func:`f3ocus.fl.adapter_layers`.
        num_samples: Weights for clients whose ``train_fn`` returns None.
        on_error: ``"raise"`` re-raises an exception of ``train_fn``; ``"skip"`` drops that client from
            the round (its layers are averaged over the others, or keep their values).

    Returns:
        A :class:`RoundResult`.

    Raises:
        ValueError: lengths differ, a layer is unknown, or a client has no weight.
        TypeError: ``train_fn`` returns something other than a number or None.
    """
    if not callable(train_fn):
        raise TypeError(f"train_fn must be callable as train_fn(model, client), got {describe(train_fn)}.")
    on_error = check_choice("on_error", on_error, ["raise", "skip"])
    plan = _layers_per_client(assignment)
    if len(plan) != len(clients):
        raise ValueError(
            f"assignment has {len(plan)} clients but clients has {len(clients)}; pass one plan row per client."
        )
    if num_samples is not None and len(num_samples) != len(clients):
        raise ValueError(
            f"num_samples has {len(num_samples)} entries but clients has {len(clients)}; pass one per client."
        )
    lmap = resolve_layer_map(global_model, layer_map)
    cost = communication_cost(global_model, plan, layer_map=lmap)
    start = copy.deepcopy(global_model.state_dict())
    local = copy.deepcopy(global_model)
    states: list[dict[str, torch.Tensor]] = []
    reported: list[int] = []
    weights: list[float] = []
    failed: dict[int, str] = {}
    for k, (client, layers) in enumerate(zip(clients, plan, strict=True)):
        local.load_state_dict(start)
        try:
            with train_only(local, layers, layer_map=lmap):
                n = train_fn(local, client)
        except Exception as err:
            if on_error == "raise":
                raise
            failed[k] = f"{type(err).__name__}: {err}"
            continue
        weights.append(_weight(k, n, num_samples))
        states.append(layer_state(local, layers, layer_map=lmap))
        reported.append(k)
    global_params = {n: p.detach() for n, p in global_model.named_parameters()}
    new = masked_fedavg(global_params, states, weights)
    updated = tuple(n for n in global_params if any(n in s for s in states))
    load_layer_state(global_model, {n: new[n] for n in updated})
    return RoundResult(tuple(reported), tuple(weights), failed, updated, cost)


def _weight(k: int, n: Any, num_samples: Sequence[float] | None) -> float:
    if n is None:
        if num_samples is None:
            raise ValueError(
                f"train_fn returned None for client {k} and num_samples was not given; return the number "
                f"of samples from train_fn or pass num_samples=[...]."
            )
        n = num_samples[k]
    if isinstance(n, torch.Tensor) and n.numel() == 1:
        n = n.item()
    if isinstance(n, bool) or not isinstance(n, numbers.Real):
        raise TypeError(
            f"train_fn must return the number of samples (or None), got {describe(n)} for client {k}."
        )
    return float(n)
