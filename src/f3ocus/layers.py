"""Layers: named groups of a model's trainable parameters.

A *layer* is the unit that F³OCUS scores and assigns to clients. :func:`resolve_layers` turns a model
(and optionally a user's specification) into an ordered mapping ``layer name -> parameter names``,
where the parameter names are those of ``model.named_parameters()``. Only parameters with
``requires_grad=True`` count, so with PEFT/LoRA only the adapters are grouped and scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from f3ocus._checks import close_matches, describe

__all__ = ["resolve_layers", "layer_num_params", "find_block_lists"]


def _is_block_list(module: nn.Module) -> bool:
    """A ``ModuleList``/``Sequential`` of at least two children of one type, with trainable params."""
    if not isinstance(module, (nn.ModuleList, nn.Sequential)):
        return False
    children = list(module.children())
    if len(children) < 2 or len({type(c) for c in children}) != 1:
        return False
    return any(p.requires_grad for p in module.parameters())


def find_block_lists(model: nn.Module) -> list[str]:
    """Names of the outermost repeated block lists of ``model`` (e.g. ``encoder.layer``, ``blocks``).

    A block list is an ``nn.ModuleList`` or ``nn.Sequential`` of at least two children of the same
    type with trainable parameters: HF ``*.layer`` / ``*.layers``, timm ``blocks``,
    ``nn.TransformerEncoder.layers``, one per tower in a two-tower (CLIP-like) model. Lists nested
    inside a block list are not reported. The model itself may be one (``""``).
    """
    found: list[str] = []

    def visit(name: str, module: nn.Module) -> None:
        if _is_block_list(module):
            found.append(name)
            return
        for child_name, child in module.named_children():
            visit(f"{name}.{child_name}" if name else child_name, child)

    visit("", model)
    return found


def _trainable(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> its first name in ``model.named_parameters()``, trainable ones only."""
    return {id(p): name for name, p in model.named_parameters() if p.requires_grad}


def _auto_layers(model: nn.Module) -> dict[str, list[str]]:
    blocks = set(find_block_lists(model))
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    canonical = _trainable(model)
    units: list[str] = []  # module or parameter names, each one layer

    def contains_blocks(name: str) -> bool:
        return any(b == name or b.startswith(name + ".") for b in blocks)

    def split(name: str, module: nn.Module) -> None:
        for pname, _ in module.named_parameters(recurse=False):
            units.append(f"{name}.{pname}" if name else pname)
        for child_name, child in module.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if full in blocks:
                units.extend(f"{full}.{c}" for c, _ in child.named_children())
            elif contains_blocks(full):
                split(full, child)
            else:
                units.append(full)

    def join(prefix: str, name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    def trainable(module: nn.Module, recurse: bool = True) -> bool:
        return any(p.requires_grad for p in module.parameters(recurse=recurse))

    # unwrap single-child wrappers (PeftModel -> base_model -> model, a DDP-style .module, ...)
    name, module = "", model
    while name not in blocks and not trainable(module, recurse=False):
        kids = [(n, c) for n, c in module.named_children() if trainable(c)]
        if len(kids) != 1 or not list(kids[0][1].children()):
            break
        name, module = join(name, kids[0][0]), kids[0][1]
    if name in blocks:
        units.extend(join(name, p) for p, _ in module.named_parameters(recurse=False))
        units.extend(join(name, c) for c, _ in module.named_children())
    else:
        split(name, module)
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    taken: set[int] = set()
    layers: dict[str, list[str]] = {}
    for unit in units:
        tensors = [params[unit]] if unit in params else list(modules[unit].parameters())
        names = []
        for p in tensors:
            if id(p) in canonical and id(p) not in taken:
                taken.add(id(p))
                names.append(canonical[id(p)])
        if names:
            layers[unit] = sorted(names, key=order.__getitem__)
    # model order: by the position of each layer's first parameter
    return dict(sorted(layers.items(), key=lambda kv: order[kv[1][0]]))


def _names_of(model: nn.Module, argname: str, name: Any, canonical: dict[int, str]) -> list[str]:
    """Trainable parameter names (canonical) under a module or parameter name."""
    if not isinstance(name, str):
        raise TypeError(f"{argname} must name a module or parameter as a str, got {describe(name)}.")
    modules = dict(model.named_modules())
    params = dict(model.named_parameters(remove_duplicate=False))
    if name in params:
        tensors = [params[name]]
    elif name in modules:
        tensors = list(modules[name].parameters())
    else:
        valid = [n for n in modules if n] + list(params)
        near = close_matches(name, valid)
        hint = f" Close valid names: {', '.join(map(repr, near))}." if near else ""
        raise ValueError(
            f"{argname}={name!r} is neither a module nor a parameter of the model.{hint} "
            "Use names from model.named_modules() or model.named_parameters()."
        )
    return [canonical[id(p)] for p in tensors if id(p) in canonical]


def resolve_layers(model: nn.Module, layers: Any = None) -> dict[str, list[str]]:
    """Group a model's trainable parameters into named layers.

    Args:
        model: The model. Only parameters with ``requires_grad=True`` are grouped.
        layers: How to group them:

            - ``None`` (auto): every block of the model's repeated block lists (HF
              ``encoder.layer.N`` / ``model.layers.N``, timm ``blocks.N``, any ``nn.ModuleList`` or
              ``nn.Sequential`` of same-type blocks, one list per tower of a two-tower model) is a
              layer, and every other module on the way to them (e.g. ``embeddings``, ``pooler``,
              ``classifier``) is a layer of its own; parameters held directly by those parents
              (e.g. ViT's ``cls_token``) are single-parameter layers. Without block lists, each
              top-level child is a layer. Modules with no trainable parameters are left out. A tied
              parameter belongs to the first layer that uses it. Layers are in model order (the
              order of their first parameter in ``model.named_parameters()``).
            - a sequence of module or parameter names: each is one layer, keyed by that name, in the
              given order.
            - a mapping ``layer name -> name or list of names`` (module or parameter names): each
              entry is one layer, in the given order.

    Returns:
        Layer name -> names of its trainable parameters (as in ``model.named_parameters()``, which
        lists a tied parameter once, under its first name).

    Raises:
        TypeError: ``layers`` has another type, or a name is not a str.
        ValueError: The model has no trainable parameters; a name is unknown (close valid names are
            listed); an explicit layer has no trainable parameters; two explicit layers share a
            parameter.

    Example:
        >>> from torch import nn
        >>> mlp = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> resolve_layers(mlp)
        {'0': ['0.weight', '0.bias'], '2': ['2.weight', '2.bias']}
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}.")
    canonical = _trainable(model)
    if not canonical:
        raise ValueError(
            "model has no parameter with requires_grad=True, so there is nothing to score. "
            "Unfreeze the parameters (or adapters) that clients would train."
        )
    if layers is None:
        return _auto_layers(model)
    if isinstance(layers, Mapping):
        spec = {}
        for key, value in layers.items():
            if not isinstance(key, str):
                raise TypeError(f"layers keys must be str layer names, got {describe(key)}.")
            spec[key] = [value] if isinstance(value, str) else value
    elif isinstance(layers, Sequence) and not isinstance(layers, str):
        spec = {}
        for value in layers:
            if not isinstance(value, str):
                raise TypeError(f"layers must hold module or parameter names (str), got {describe(value)}.")
            if value in spec:
                raise ValueError(f"layers lists {value!r} twice; list each layer once.")
            spec[value] = [value]
    else:
        hint = f" Did you mean layers=[{layers!r}]?" if isinstance(layers, str) else ""
        raise TypeError(
            "layers must be None, a sequence of module names or a mapping layer name -> module "
            f"name(s), got {describe(layers)}.{hint}"
        )
    if not spec:
        raise ValueError("layers is empty; pass None for automatic layers or name at least one module.")
    order = {name: i for i, (name, _) in enumerate(model.named_parameters())}
    owner: dict[str, str] = {}
    result: dict[str, list[str]] = {}
    for layer, names in spec.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"layers[{layer!r}] must be a name or a list of names, got {describe(names)}.")
        found: list[str] = []
        for name in names:
            for pname in _names_of(model, f"layers[{layer!r}]" if isinstance(layers, Mapping) else "layers", name, canonical):
                if pname in found:
                    continue
                if pname in owner:
                    raise ValueError(
                        f"parameter {pname!r} is in two layers, {owner[pname]!r} and {layer!r}; "
                        "each parameter may belong to one layer only (tied parameters count once)."
                    )
                owner[pname] = layer
                found.append(pname)
        if not found:
            raise ValueError(
                f"layer {layer!r} has no trainable parameters (all have requires_grad=False or it "
                "holds none). Set requires_grad=True on what clients train, or drop the layer."
            )
        result[layer] = sorted(found, key=order.__getitem__)
    return result


def layer_num_params(model: nn.Module, layers: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Layer name -> number of trainable scalars, for ``layers`` as returned by :func:`resolve_layers`."""
    params = dict(model.named_parameters())
    return {layer: sum(params[n].numel() for n in names) for layer, names in layers.items()}
