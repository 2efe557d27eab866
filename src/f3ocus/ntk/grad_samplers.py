r"""Per-sample gradients from activations and backprops: a registry keyed by module type.

For a module $y = g(x; \theta)$ seen in one forward pass over a batch, and the backprops
$\partial F_{nm} / \partial y$ of every kernel output (row $r = (n, m)$), the per-sample, per-output
gradient of the module's own parameters is a local computation (Goodfellow 2015; Rochette et al. 2019;
Yousefpour et al., "Opacus", 2021). For ``nn.Linear`` with input tokens $a_{ns}$ and backprops
$g_{r,s}$ (sequence positions $s$):

$$ \frac{\partial F_r}{\partial W} = \sum_s g_{r,s}\, a_{n s}^\top, \qquad
   \frac{\partial F_r}{\partial b} = \sum_s g_{r,s}. $$

A *grad sampler* receives the module, its positional inputs and the backprops ``(K, N, *y.shape[1:])``
(``K`` kernel outputs per sample, batched) and returns, for each of the module's own parameters, the
tensor ``(K, N, *param.shape)``. Because samples do not interact in eval mode, the backprop of row
$(n, m)$ is zero outside sample $n$, so the batched backprop of output $m$ carries every sample's row.

Register a sampler for your own module type with :func:`register_grad_sampler`; modules without one
are handled by the ``torch.func`` fallback in :mod:`f3ocus.ntk.rows`.

Example::

    @register_grad_sampler(MyScale)
    def _scale(module, inputs, backprops):
        (x,) = inputs                                  # (N, d); y = x * module.gain
        return {"gain": backprops * x}                 # (K, N, d)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GradSampler", "get_grad_sampler", "register_grad_sampler", "registered_types"]

GradSampler = Callable[[nn.Module, tuple, Tensor], dict[str, Tensor]]
_SAMPLERS: dict[type, tuple[GradSampler, Callable[[nn.Module], bool]]] = {}


def register_grad_sampler(*types: type, supports: Callable[[nn.Module], bool] | None = None):
    """Register ``fn(module, inputs, backprops) -> {param name: (K, N, *param.shape)}`` for module types.

    Args:
        *types: ``nn.Module`` subclasses (exact types; subclasses are not matched, since they may
            change the forward).
        supports: optional ``module -> bool``; when it returns False for an instance (an unsupported
            configuration), that instance falls back to ``torch.func``.
    """
    for t in types:
        if not (isinstance(t, type) and issubclass(t, nn.Module)):
            raise TypeError(f"register_grad_sampler(*types) takes nn.Module subclasses, got {t!r}.")

    def decorator(fn: GradSampler) -> GradSampler:
        for t in types:
            _SAMPLERS[t] = (fn, supports or (lambda module: True))
        return fn

    return decorator


def get_grad_sampler(module: nn.Module) -> GradSampler | None:
    """The sampler for ``module``'s exact type, or ``None`` (no sampler, or configuration unsupported)."""
    entry = _SAMPLERS.get(type(module))
    if entry is None or not entry[1](module):
        return None
    return entry[0]


def registered_types() -> list[type]:
    """Module types with a registered grad sampler."""
    return list(_SAMPLERS)


def _tokens(x: Tensor, g: Tensor, features: int) -> tuple[Tensor, Tensor]:
    """Flatten every middle dimension into one token axis: ``(N, S, i)`` and ``(K, N, S, o)``."""
    return x.reshape(x.shape[0], -1, features), g.reshape(g.shape[0], g.shape[1], -1, g.shape[-1])


@register_grad_sampler(nn.Linear)
def _linear(module: nn.Linear, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
    a, g = _tokens(inputs[0], backprops, module.in_features)
    # (K, N, o, S) @ (N, S, i) -> (K, N, o, i), contiguous: one batched GEMM per (k, n).
    out = {"weight": torch.matmul(g.transpose(-1, -2), a)}
    if module.bias is not None:
        out["bias"] = g.sum(dim=2)
    return out


def _conv_supported(module: nn.Module) -> bool:
    return module.padding_mode == "zeros" and not isinstance(module.padding, str)


@register_grad_sampler(nn.Conv1d, nn.Conv2d, supports=_conv_supported)
def _conv(module: nn.Conv1d | nn.Conv2d, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
    x = inputs[0]
    k, n = backprops.shape[:2]
    if isinstance(module, nn.Conv1d):  # treat as a 1 x L image
        x = x.unsqueeze(2)
        kernel, stride = (1, *module.kernel_size), (1, *module.stride)
        padding, dilation = (0, *module.padding), (1, *module.dilation)
    else:
        kernel, stride, padding, dilation = module.kernel_size, module.stride, module.padding, module.dilation
    cols = F.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (N, Cin*kk, L)
    groups = module.groups
    cols = cols.reshape(n, groups, -1, cols.shape[-1])
    g = backprops.reshape(k, n, groups, module.out_channels // groups, -1)
    w = torch.matmul(g, cols.transpose(-1, -2)).reshape(k, n, *module.weight.shape)  # (K, N, G, o/G, i)
    out = {"weight": w}
    if module.bias is not None:
        out["bias"] = backprops.reshape(k, n, module.out_channels, -1).sum(dim=-1)
    return out


def _embedding_supported(module: nn.Embedding) -> bool:
    return module.max_norm is None


@register_grad_sampler(nn.Embedding, supports=_embedding_supported)
def _embedding(module: nn.Embedding, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
    ids = inputs[0]
    k, n = backprops.shape[:2]
    dim = module.embedding_dim
    g = backprops.reshape(k, n, -1, dim)
    index = ids.reshape(1, n, -1, 1).expand(k, n, g.shape[2], dim)
    out = g.new_zeros(k, n, module.num_embeddings, dim).scatter_add_(2, index, g)
    if module.padding_idx is not None:
        out[:, :, module.padding_idx] = 0.0
    return {"weight": out}


def _affine(module: nn.Module, xhat: Tensor, backprops: Tensor, channel_dims: list[int]) -> dict[str, Tensor]:
    """Per-sample grads of ``y = xhat * weight + bias`` with ``weight`` indexed by ``channel_dims`` of x."""
    k, n = backprops.shape[:2]
    keep = [0, 1] + [d + 1 for d in channel_dims]  # dims of backprops (K, N, *x.shape[1:]) to keep
    reduce = [d for d in range(backprops.dim()) if d not in keep]
    out = {}
    if getattr(module, "weight", None) is not None:
        w = (backprops * xhat).sum(dim=reduce) if reduce else backprops * xhat
        out["weight"] = w.reshape(k, n, *module.weight.shape)
    if getattr(module, "bias", None) is not None:
        b = backprops.sum(dim=reduce) if reduce else backprops
        out["bias"] = b.reshape(k, n, *module.bias.shape)
    return out


@register_grad_sampler(nn.LayerNorm)
def _layer_norm(module: nn.LayerNorm, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
    x = inputs[0]
    xhat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
    nd = len(module.normalized_shape)
    return _affine(module, xhat, backprops, list(range(x.dim() - nd, x.dim())))


@register_grad_sampler(nn.GroupNorm)
def _group_norm(module: nn.GroupNorm, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
    x = inputs[0]
    xhat = F.group_norm(x, module.num_groups, eps=module.eps)
    return _affine(module, xhat, backprops, [1])


def _batch_norm_supported(module: nn.Module) -> bool:
    # Per-sample gradients exist only with fixed (running) statistics: eval mode.
    return (not module.training) and module.running_mean is not None


@register_grad_sampler(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, supports=_batch_norm_supported)
def _batch_norm(
    module: nn.modules.batchnorm._BatchNorm, inputs: tuple, backprops: Tensor
) -> dict[str, Tensor]:
    x = inputs[0]
    shape = [1, -1] + [1] * (x.dim() - 2)
    xhat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(
        module.running_var.reshape(shape) + module.eps
    )
    return _affine(module, xhat, backprops, [1])
