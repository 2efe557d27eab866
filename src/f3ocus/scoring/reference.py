r"""Brute-force references of the layer scores: plain autograd loops over samples and parameters.

Slow and simple on purpose: every score of :func:`f3ocus.layer_scores` is tested against
:func:`reference_scores` in float64, and users can call it to check a custom model or score. Unlike the
fast paths, the references

- run the model itself (its own ``nn.Parameter`` objects, in eval mode) on the whole batch and
  differentiate every entry $\ell_n$ of ``loss_fn(output, targets)`` with ``torch.autograd.grad``, one
  sample and one parameter at a time (so losses that couple samples are differentiated exactly);
- build the batch gradient as the average $g = \frac1N \sum_n \nabla \ell_n$ and the Hessian-vector
  product as $H g = \frac1N \sum_n \nabla (\nabla \ell_n^\top g)$;
- apply SynFlow to a deep copy of the model whose weights are made absolute in place.

The model's state is restored afterwards (as by :func:`f3ocus.layer_scores`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_map

from f3ocus.layers import resolve_layers
from f3ocus.scoring._engine import default_output_fn, ntk_layer_importance, preserved_state
from f3ocus.scoring.registry import get_score

__all__ = ["reference_scores", "split_samples"]


def _inputs(batch: Any) -> tuple[tuple, dict]:
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    return (), dict(batch)


def _count(batch: Any) -> int:
    args, kwargs = _inputs(batch)
    for leaf in [*args, *kwargs.values()]:
        if isinstance(leaf, Tensor) and leaf.dim() >= 1:
            return int(leaf.shape[0])
    raise ValueError("the batch holds no tensor with a batch dimension.")


def split_samples(tree: Any, n: int, count: int) -> Any:
    """Sample ``n`` of ``tree``: every tensor leaf with leading dimension ``count`` sliced to ``[n : n + 1]``."""
    return tree_map(lambda t: t[n : n + 1] if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == count else t, tree)


def _sample_losses(model: nn.Module, batch: Any, loss_fn: Callable, targets: Any, output_fn: Callable) -> list[Tensor]:
    """``[ell_0, ..., ell_{N-1}]``: the entries of ``loss_fn(output, targets)`` of one forward pass of the
    whole batch (exact also where the losses couple samples, e.g. a contrastive or batch-centred loss)."""
    count = _count(batch)
    args, kwargs = _inputs(batch)
    losses = loss_fn(output_fn(model(*args, **kwargs)), targets).reshape(-1)
    if losses.numel() != count:
        raise ValueError(f"loss_fn must return one loss per sample: got {losses.numel()} for {count} samples.")
    return list(losses.unbind(0))


def _grads(value: Tensor, params: list[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    """``d value / d p`` for each ``p``, one ``autograd.grad`` call per parameter."""
    out = []
    for p in params:
        (g,) = torch.autograd.grad(value, [p], retain_graph=True, allow_unused=True, create_graph=create_graph)
        out.append(torch.zeros_like(p) if g is None else g)
    return out


def _per_sample_grads(model, batch, loss_fn, targets, output_fn, params) -> list[list[Tensor]]:
    return [[g.detach() for g in _grads(loss, params)] for loss in _sample_losses(model, batch, loss_fn, targets, output_fn)]


def _reduce(values: list[Tensor], reduction: str) -> float:
    total = sum(float(v.sum()) for v in values)
    return total / sum(v.numel() for v in values) if reduction == "mean" else total


def reference_scores(
    model: nn.Module,
    batch: Any,
    score: str,
    *,
    layers: Any = None,
    loss_fn: Callable | None = None,
    targets: Any = None,
    output_fn: Callable | None = None,
    reduction: str | None = None,
    seed: int | None = None,
    eps: float | None = None,
    **ntk_options: Any,
) -> dict[str, float]:
    """Layer name -> score, by plain loops (see the module docstring); same arguments as
    :func:`f3ocus.layer_scores` (``eps`` for ``"rgn"``/``"snr"``; ``ntk_options`` for ``"ntk"``, whose
    reference is the dense method of :func:`f3ocus.ntk_layer_importance`)."""
    spec = get_score(score)
    reduction = reduction or spec.reduction
    output_fn = output_fn or default_output_fn
    if score == "ntk":
        if loss_fn is not None:
            ntk_options.setdefault("kernel", "loss")
        kw = {"loss_fn": loss_fn, "targets": targets} if ntk_options.get("kernel") == "loss" else {}
        return dict(ntk_layer_importance(model, batch, layers=layers, output_fn=output_fn, method="dense", **kw, **ntk_options))
    groups = resolve_layers(model, layers)
    if score == "random":
        return dict(zip(groups, np.random.default_rng(seed).random(len(groups)).tolist(), strict=True))
    if score == "synflow":
        return _synflow(model, batch, groups, output_fn, reduction)
    named = dict(model.named_parameters())
    with preserved_state(model), torch.enable_grad():
        out: dict[str, float] = {}
        if score == "magnitude":
            return {k: _reduce([named[n].detach().abs() for n in names], reduction) for k, names in groups.items()}
        flat = [n for names in groups.values() for n in names]
        params = [named[n] for n in flat]
        for p in params:
            p.requires_grad_(True)
        rows = _per_sample_grads(model, batch, loss_fn, targets, output_fn, params)  # [sample][param]
        count = len(rows)
        g = [sum(r[i] for r in rows) / count for i in range(len(params))]
        index = {n: i for i, n in enumerate(flat)}
        hg = _hvp(model, batch, loss_fn, targets, output_fn, params, g) if score in ("grasp", "gradflow") else None
        for layer, names in groups.items():
            idx = [index[n] for n in names]
            theta = [params[i].detach() for i in idx]
            gl = [g[i] for i in idx]
            if score == "grad_norm":
                out[layer] = _reduce([x.square() for x in gl], reduction) ** 0.5
            elif score == "rgn":
                num = _reduce([x.square() for x in gl], reduction) ** 0.5
                out[layer] = num / (_reduce([x.square() for x in theta], reduction) ** 0.5 + (eps or 0.0))
            elif score == "snip":
                out[layer] = _reduce([(t * x).abs() for t, x in zip(theta, gl, strict=True)], reduction)
            elif score == "grasp":
                out[layer] = -_reduce([t * hg[i] for t, i in zip(theta, idx, strict=True)], reduction)
            elif score == "gradflow":
                out[layer] = _reduce([(t * hg[i]).abs() for t, i in zip(theta, idx, strict=True)], reduction)
            elif score == "fisher":
                out[layer] = _reduce([sum(r[i].square() for r in rows) / count for i in idx], reduction)
            elif score == "snr":
                e = 1e-12 if eps is None else eps
                ratios = []
                for i in idx:
                    mean = sum(r[i] for r in rows) / count
                    var = sum((r[i] - mean).square() for r in rows) / (count - 1)
                    ratios.append(mean.abs() / (var.sqrt() + e))
                out[layer] = _reduce(ratios, reduction)
            else:
                raise ValueError(f"reference_scores has no reference for score={score!r}.")
        return out


def _hvp(model, batch, loss_fn, targets, output_fn, params, g) -> list[Tensor]:
    """$H g = \\frac1N \\sum_n \\nabla_\\theta (\\nabla_\\theta \\ell_n^\\top g)$, sample by sample."""
    with sdpa_kernel(SDPBackend.MATH):  # fused attention has no double backward
        losses = _sample_losses(model, batch, loss_fn, targets, output_fn)
    total = [torch.zeros_like(p) for p in params]
    for loss in losses:
        grads = _grads(loss, params, create_graph=True)
        dot = sum((gi * ci).sum() for gi, ci in zip(grads, g, strict=True) if gi.requires_grad)
        if isinstance(dot, Tensor) and dot.requires_grad:
            for i, h in enumerate(_grads(dot, params)):
                total[i] = total[i] + h.detach()
    return [t / len(losses) for t in total]


def _synflow(model: nn.Module, batch: Any, groups: dict[str, list[str]], output_fn: Callable, reduction: str) -> dict[str, float]:
    """SynFlow on a deep copy: weights made absolute in place, an all-ones sample, R = sum of the output."""
    twin = copy.deepcopy(model).eval()
    with torch.no_grad():
        for t in twin.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.abs_()
    count = _count(batch)
    args, kwargs = _inputs(batch)
    ones = tree_map(
        lambda t: torch.ones((1, *t.shape[1:]), dtype=t.dtype) if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == count else t,
        (args, kwargs),
    )
    named = dict(twin.named_parameters())
    with torch.enable_grad():
        r = output_fn(twin(*ones[0], **ones[1])).sum()
        out = {}
        for layer, names in groups.items():
            params = [named[n] for n in names]
            grads = _grads(r, params)
            out[layer] = _reduce([(p.detach() * gr).abs() for p, gr in zip(params, grads, strict=True)], reduction)
    return out
