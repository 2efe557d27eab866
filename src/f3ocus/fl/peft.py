"""PEFT adapters as selectable layers.

The paper selects either whole layers or adapter layers (F³OCUS, Saha et al., CVPR 2025, Sec. 4): with
LoRA (Hu et al., ICLR 2022) on every block, block $b$'s trainable parameters are its adapters
$\\{A_{b,j}, B_{b,j}\\}_j$, and the layer-wise NTK, the plan and the masked average all act on those
groups instead of on the frozen block weights. :func:`add_lora` puts LoRA on all blocks once (before the
first round, identically on server and clients); :func:`adapter_layers` groups the model's trainable
(adapter) parameters by block, which is the ``layers=`` to score with and the ``layer_map=`` to train,
extract and count with.

``peft`` is an optional extra (``pip install 'f3ocus[peft]'``), imported only when :func:`add_lora` runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import nn

from f3ocus._checks import check_int, check_positive_float, describe, require_extra

__all__ = ["add_lora", "adapter_layers", "block_of"]

# Path components that start the adapter-specific part of a parameter name.
_ADAPTER_PARTS = re.compile(r"^(lora_|ia3_|oft_|boft_|vera_|hra_|modules_to_save$|original_module$)")


def block_of(param_name: str, blocks: Sequence[str] | None = None) -> str:
    """The layer (block) a parameter belongs to.

    With ``blocks``, the longest block name that is a path prefix of ``param_name``. Otherwise the
    path up to its first numeric component (``"encoder.layer.3.attention.query.lora_A.default.weight"``
    -> ``"encoder.layer.3"``), or, for parameters outside numbered blocks, the module the adapter
    sits on (``"classifier.modules_to_save.default.weight"`` -> ``"classifier"``).

    Raises:
        ValueError: ``blocks`` is given and no block contains the parameter.
    """
    parts = param_name.split(".")
    if blocks is not None:
        best = None
        for b in blocks:
            if param_name.startswith(b + ".") and (best is None or len(b) > len(best)):
                best = b
        if best is None:
            raise ValueError(
                f"trainable parameter {param_name!r} lies in none of blocks={list(blocks)!r}; add its block "
                f"or freeze it."
            )
        return best
    # Only the path above the adapter-specific part counts: the index of an nn.Sequential saved whole
    # (``classifier.modules_to_save.default.0.weight``) is not a block number.
    adapter = next((i for i, part in enumerate(parts[:-1]) if _ADAPTER_PARTS.match(part)), len(parts) - 1)
    for i, part in enumerate(parts[:adapter]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    if adapter < len(parts) - 1:
        return ".".join(parts[:adapter]) or parts[0]
    return ".".join(parts[:-1]) or parts[0]


def adapter_layers(model: nn.Module, *, blocks: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Group the model's trainable parameters (its adapters) by block: block name -> parameter names.

    After :func:`add_lora` (or any ``peft.get_peft_model``) only the adapters are trainable, so the
    result maps each block to its adapter parameters, in model order. Use it as ``layers=`` for
    :func:`f3ocus.ntk_layer_importance` and as ``layer_map=`` for :func:`f3ocus.fl.train_only`,
    :func:`f3ocus.fl.layer_state` and :func:`f3ocus.fl.communication_cost`. It works on any model:
    on a plain one whose parameters are all trainable it groups whole blocks.

    Args:
        model: A model whose trainable parameters are the selectable ones.
        blocks: Block module names to group by (longest prefix wins). Default: see :func:`block_of`.

    Returns:
        ``{block name: [parameter names]}``.

    Raises:
        ValueError: the model has no trainable parameters, or one lies outside ``blocks``.

    Examples:
        >>> import torch
        >>> net = torch.nn.Module()
        >>> net.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])
        >>> net.head = torch.nn.Linear(2, 1)
        >>> list(adapter_layers(net))
        ['blocks.0', 'blocks.1', 'head']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}.")
    out: dict[str, list[str]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            out.setdefault(block_of(name, blocks), []).append(name)
    if not out:
        raise ValueError(
            "model has no trainable parameters, so there are no adapter layers. Call add_lora(model) "
            "first, or unfreeze the parameters to select."
        )
    return out


def _default_targets(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules inside numbered blocks (e.g. ``encoder.layer.3.attention.query``)."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and any(part.isdigit() for part in name.split("."))
    ]


def add_lora(
    model: nn.Module,
    *,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: str | Sequence[str] | None = None,
    modules_to_save: Sequence[str] | None = None,
    **config: Any,
) -> nn.Module:
    """Put LoRA adapters on all blocks of ``model`` (once) and freeze everything else.

    Each targeted linear map $W$ becomes $W + \\frac{\\alpha}{r} B A$ with $A \\in \\mathbb{R}^{r \\times
    d_{in}}$ (random) and $B \\in \\mathbb{R}^{d_{out} \\times r}$ (zero), so the wrapped model computes
    the same function until $B$ is trained (Hu et al., ICLR 2022). Call it once, with the same
    arguments and seed, on the server's and on every client's model, so the names and initial adapters
    agree; then group the adapters with :func:`adapter_layers`.

    Args:
        model: A transformers or plain PyTorch model.
        r: LoRA rank.
        alpha: LoRA scaling $\\alpha$.
        dropout: Dropout on the LoRA input.
        target_modules: Modules to adapt, as ``peft.LoraConfig`` takes them (names, suffixes, a regex,
            or ``"all-linear"``). Default: every ``nn.Linear`` inside a numbered block
            (``*.layer.3.*``, ``blocks.0.*`` ...).
        modules_to_save: Modules trained in full beside the adapters (e.g. a new classifier head).
        **config: Further ``peft.LoraConfig`` options.

    Returns:
        The ``peft.PeftModel`` (only adapters and ``modules_to_save`` trainable).

    Raises:
        f3ocus.errors.MissingExtraError: ``peft`` is not installed.
        ValueError: no target module is found.
    """
    peft = require_extra("peft", "peft", "LoRA adapters")
    r = check_int("r", r, low=1)
    alpha = check_positive_float("alpha", alpha)
    dropout = check_positive_float("dropout", dropout, allow_zero=True)
    if target_modules is None:
        target_modules = _default_targets(model)
        if not target_modules:
            raise ValueError(
                "add_lora found no nn.Linear inside a numbered block (e.g. 'blocks.0.fc'); pass "
                "target_modules=[...] with the module names to adapt, or target_modules='all-linear'."
            )
    lora_config = peft.LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules if isinstance(target_modules, str) else list(target_modules),
        modules_to_save=None if modules_to_save is None else list(modules_to_save),
        **config,
    )
    return peft.get_peft_model(model, lora_config)
