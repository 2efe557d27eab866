"""Apply a client's plan to a model: train only the assigned layers.

A plan gives client $k$ a set $S_k$ of layer names (a row of
:attr:`f3ocus.LayerAssignment.mask`, or ``assignment.layers[k]``). Training only those layers means
setting ``requires_grad=True`` exactly on the parameters $\\theta_l$, $l \\in S_k$, and ``False`` on every
other parameter of the model, so that an optimizer built from the trainable parameters, and autograd
itself, touch nothing else (F³OCUS, Saha et al., CVPR 2025, Sec. 3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import nn

from f3ocus._checks import close_matches, describe

__all__ = ["train_only", "resolve_layer_map", "layer_parameter_names"]


def resolve_layer_map(
    model: nn.Module, layer_map: Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    """The layer map to use: ``layer_map`` checked against ``model``, or ``resolve_layers(model)``.

    Args:
        model: The model whose parameters the map names.
        layer_map: Layer name -> parameter names (as in ``model.named_parameters()``), or None for
            :func:`f3ocus.resolve_layers` (which only lists parameters with ``requires_grad=True``).

    Returns:
        A fresh ``dict[str, list[str]]``.

    Raises:
        TypeError: ``layer_map`` is not a mapping of names to sequences of names.
        ValueError: a parameter name is not a parameter of ``model``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}.")
    if layer_map is None:
        from f3ocus.layers import resolve_layers

        return {str(k): list(v) for k, v in resolve_layers(model).items()}
    if not isinstance(layer_map, Mapping):
        raise TypeError(
            f"layer_map must be a mapping layer name -> parameter names (e.g. f3ocus.resolve_layers(model)), "
            f"got {describe(layer_map)}."
        )
    names = dict(model.named_parameters())
    out: dict[str, list[str]] = {}
    for layer, params in layer_map.items():
        if isinstance(params, str) or not isinstance(params, Sequence | set | frozenset):
            raise TypeError(
                f"layer_map[{layer!r}] must be a list of parameter names, got {describe(params)}."
            )
        params = list(params)
        for p in params:
            if p not in names:
                near = close_matches(p, names)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise ValueError(
                    f"layer_map[{layer!r}] names {p!r}, which is not a parameter of the model.{hint} "
                    f"Use names from model.named_parameters()."
                )
        out[str(layer)] = params
    return out


def layer_parameter_names(
    layers: Sequence[str], layer_map: Mapping[str, Sequence[str]], argname: str = "layers"
) -> list[str]:
    """The parameter names of ``layers`` in ``layer_map``, deduplicated, in order.

    Raises:
        TypeError: ``layers`` is a single string or not a sequence.
        ValueError: a layer is not a key of ``layer_map``.
    """
    if isinstance(layers, str) or not isinstance(layers, Sequence | set | frozenset | tuple):
        raise TypeError(
            f"{argname} must be a list of layer names (e.g. assignment.layers[k]), got {describe(layers)}."
            + (f" Write [{layers!r}] for a single layer." if isinstance(layers, str) else "")
        )
    out: dict[str, None] = {}
    for layer in layers:
        if layer not in layer_map:
            near = close_matches(str(layer), layer_map)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            shown = ", ".join(map(repr, list(layer_map)[:8])) + (", ..." if len(layer_map) > 8 else "")
            raise ValueError(
                f"{argname} contains {layer!r}, which is not a layer of the model.{hint} "
                f"Known layers: {shown or '(none)'}. Pass layer_map= if the layers are named differently."
            )
        for p in layer_map[layer]:
            out[p] = None
    return list(out)


@contextlib.contextmanager
def train_only(
    model: nn.Module,
    layers: Sequence[str],
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[list[torch.nn.Parameter]]:
    """Inside the block, only the parameters of ``layers`` have ``requires_grad=True``.

    On entry every parameter's flag is recorded; then $\\texttt{requires\\_grad}(\\theta) = [\\theta \\in
    \\bigcup_{l \\in S} \\theta_l]$ for the given layer set $S$. On exit, also when the block raises, every
    flag is set back to its recorded value. Parameter values are never touched.

    Args:
        model: The model (a full model, or a PEFT model whose adapters form the layers).
        layers: Names of the layers to train, e.g. ``assignment.layers[k]``. An empty list freezes all.
        layer_map: Layer name -> parameter names. Default: :func:`f3ocus.resolve_layers` on entry
            (its layers contain only parameters that are trainable at that moment). For PEFT models use
            :func:`f3ocus.fl.adapter_layers`.

    Yields:
        The list of parameters that are trainable inside the block (hand it to the optimizer).

    Raises:
        ValueError: a layer is unknown, or a parameter name is not in the model.
        TypeError: ``layers`` is a single string.

    Examples:
        >>> import torch
        >>> from f3ocus.fl import train_only
        >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
        >>> lmap = {"0": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"]}
        >>> with train_only(model, ["1"], layer_map=lmap) as params:
        ...     [p.requires_grad for p in model.parameters()]
        [False, False, True, True]
        >>> all(p.requires_grad for p in model.parameters())
        True
    """
    lmap = resolve_layer_map(model, layer_map)
    chosen = set(layer_parameter_names(layers, lmap))
    named = list(model.named_parameters())
    saved: list[tuple[nn.Parameter, bool]] = [(p, p.requires_grad) for _, p in named]
    trainable: list[nn.Parameter] = []
    try:
        for name, p in named:
            on = name in chosen
            p.requires_grad_(on)
            if on:
                trainable.append(p)
        yield trainable
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
