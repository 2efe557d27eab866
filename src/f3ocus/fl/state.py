"""Extract and load the state of a subset of layers.

A client that trained the layer set $S_k$ sends back only $\\{\\theta_l : l \\in S_k\\}$; the server loads
aggregated values back into its global model. States are plain ``dict[str, Tensor]`` keyed by parameter
name (as in ``model.named_parameters()``), so they go through ``torch.save``, Flower's ``ArrayRecord``
or any transport unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from f3ocus._checks import close_matches, describe
from f3ocus.fl.plan import layer_parameter_names, resolve_layer_map

__all__ = ["layer_state", "load_layer_state"]


def layer_state(
    model: nn.Module,
    layers: Sequence[str],
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, torch.Tensor]:
    """Detached copies of the parameters of ``layers``.

    Args:
        model: The model to read.
        layers: Layer names, e.g. ``assignment.layers[k]``.
        layer_map: Layer name -> parameter names. Default: :func:`f3ocus.resolve_layers` (trainable
            parameters only); for PEFT models use :func:`f3ocus.fl.adapter_layers`.

    Returns:
        ``{parameter name: tensor}`` in model order; each tensor is a detached clone, so later
        training does not change it.

    Raises:
        ValueError: a layer is unknown.

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> sorted(layer_state(model, ["lin"], layer_map={"lin": ["weight"]}))
        ['weight']
    """
    lmap = resolve_layer_map(model, layer_map)
    wanted = set(layer_parameter_names(layers, lmap))
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in wanted}


def load_layer_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Copy ``state`` into the model's parameters (or buffers) in place.

    Every name must be a parameter or buffer of ``model`` and every shape must match; nothing is
    written unless all entries pass. Values are cast to the target's dtype and device. Parameters that
    ``state`` does not name are left as they are.

    Args:
        model: The model to write into.
        state: ``{name: tensor}``, e.g. from :func:`layer_state` or :func:`f3ocus.masked_fedavg`.

    Raises:
        TypeError: ``state`` is not a mapping of tensors.
        ValueError: a name is not in the model, or a shape differs.
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping name -> tensor, got {describe(state)}.")
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    for name, value in state.items():
        if name not in targets:
            near = close_matches(str(name), targets)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(
                f"state[{name!r}] is not a parameter or buffer of the model.{hint} "
                f"Use names from model.named_parameters() (layer_state produces them)."
            )
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"state[{name!r}] must be a torch.Tensor, got {describe(value)}.")
        if tuple(value.shape) != tuple(targets[name].shape):
            raise ValueError(
                f"state[{name!r}] has shape {tuple(value.shape)} but the model's {name!r} has shape "
                f"{tuple(targets[name].shape)}. Was the state taken from a different model?"
            )
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)
