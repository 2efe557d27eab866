r"""Per-sample gradients of raw parameters by tapping the operations that use them.

A parameter that no grad sampler owns (a ViT's ``cls_token`` and ``pos_embed``, a position-embedding
table indexed by shared position ids) enters the model through ordinary tensor operations. During the
hooked forward pass a ``TorchFunctionMode`` records every operation that takes such a parameter (or a
tensor derived from it alone, such as ``pos_embed[:, :T]``) and whose output carries the batch first: a
*tap*. The batched backward pass that serves the grad samplers also returns the backprop $G_m$ of every
tap output. Samples do not interact, so the row $(n, m)$ of the parameter's Jacobian through one tap is
the vjp of that one operation at the backprop of sample $n$:

$$ \frac{\partial F_{nm}}{\partial p} \mathrel{+}= \Big(\frac{\partial\, \mathrm{op}(x_n, p)}
   {\partial p}\Big)^{\!\top} G_m[n], $$

computed by ``vmap`` over samples of the operation applied to sample $n$'s slice of its batched inputs
(or, for operations with no batched input such as ``cls_token.expand(N, -1, -1)``, at the backprop
masked to sample $n$). Derived tensors are pulled back to the parameter through the recorded chain.
A parameter with an operation that cannot be classified (a batched-looking parameter, several outputs,
a derived tensor mixed with data) is reported in :attr:`ParameterTaps.bad` and goes to the
``torch.func`` fallback; the caller also checks that the taps' rows sum to the batch gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.func import vjp, vmap
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["ParameterTaps", "Tap"]


@dataclass
class Tap:
    """One recorded use: ``out = func(*args, **kwargs)`` with ``source`` among the arguments."""

    root: str
    source: Tensor
    func: Any
    args: tuple
    kwargs: dict
    out: Tensor
    inplace: bool = False


class ParameterTaps(TorchFunctionMode):
    """Record the uses of the tensors in ``roots`` (name -> tensor) during a forward pass over ``n`` samples."""

    def __init__(self, roots: dict[str, Tensor], n: int) -> None:
        super().__init__()
        self.n = n
        self.sources: dict[int, tuple[str, Tensor]] = {id(t): (name, t) for name, t in roots.items()}
        self.chain: dict[
            int, tuple[Tensor, Any, tuple, dict]
        ] = {}  # derived id -> (parent, func, args, kwargs)
        self.taps: list[Tap] = []
        self.bad: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        leaves, _ = tree_flatten((args, kwargs))
        used = [t for t in leaves if isinstance(t, Tensor) and id(t) in self.sources]
        if not used:
            return out
        roots = {self.sources[id(t)][0] for t in used}
        if not isinstance(out, Tensor):
            if not _is_metadata(out):
                self.bad |= roots
            return out
        if len(used) != 1:
            self.bad |= roots
            return out
        (source,) = used
        (root,) = roots
        if out is source:  # an identity such as ``p.to(p.device)`` or ``p.contiguous()``: nothing new
            return out
        others = [t for t in leaves if isinstance(t, Tensor) and t is not source]
        inplace = any(out is t for t in others)  # e.g. ``x += pos_embed``: replayed on a clone of x
        if (
            out.dim() > 0
            and out.shape[0] == self.n
            and (self.n == 1 or source.dim() == 0 or source.shape[0] != self.n)
        ):
            self.taps.append(Tap(root, source, func, args, kwargs, out, inplace))
        elif (
            out.shape[:1] != (self.n,)
            and not inplace
            and not any(t.is_floating_point() or t.is_complex() for t in others)
        ):
            self.sources[id(out)] = (root, out)  # derived from the parameter alone (slices, embeddings)
            self.chain[id(out)] = (source, func, args, kwargs)
        else:
            self.bad.add(root)
        return out

    def rows(self, tap: Tap, backprop: Tensor) -> Tensor:
        """Rows ``(K, N, *root.shape)`` of the root parameter through one tap, given ``(K, N, ...)`` backprops."""
        k = backprop.shape[0]
        grads = _source_rows(tap, backprop, self.n)  # (K, N, *source.shape)
        source = tap.source
        seen: set[int] = set()
        while id(source) in self.chain and id(source) not in seen:  # the chain is acyclic; guard anyway
            seen.add(id(source))
            parent, func, args, kwargs = self.chain[id(source)]
            grads = _pull_back(parent, func, args, kwargs, source, grads.reshape(-1, *source.shape))
            source = parent
            grads = grads.reshape(k, self.n, *source.shape)
        return grads


def _is_metadata(out: Any) -> bool:
    """Results that carry no data (shapes, dtypes, sizes): using a parameter this way is harmless."""
    if isinstance(out, (tuple, list)):
        return all(_is_metadata(o) for o in out)
    return out is None or isinstance(out, (int, float, bool, torch.Size, torch.dtype, torch.device))


def _replace(
    args: tuple,
    kwargs: dict,
    old: Tensor,
    new: Tensor,
    sliced: dict[int, Tensor] | None = None,
    clone: bool = False,
):
    """The recorded arguments with ``old`` replaced by ``new`` and batched ones by their slices.

    With ``clone`` (an in-place operation), the other tensors are cloned, so that the replay inside a
    ``torch.func`` transform mutates a fresh tensor instead of a captured one.
    """
    leaves, spec = tree_flatten((args, kwargs))
    out = []
    for t in leaves:
        if t is old:
            out.append(new)
            continue
        if sliced is not None and isinstance(t, Tensor) and id(t) in sliced:
            t = sliced[id(t)]
        elif isinstance(t, Tensor):
            t = t.detach()
        out.append(t.clone() if clone and isinstance(t, Tensor) else t)
    return tree_unflatten(out, spec)


def _source_rows(tap: Tap, backprop: Tensor, n: int) -> Tensor:
    source = tap.source.detach()
    leaves, _ = tree_flatten((tap.args, tap.kwargs))
    batched = [
        t for t in leaves if isinstance(t, Tensor) and t is not tap.source and t.dim() > 0 and t.shape[0] == n
    ]
    if batched:
        # vmap over samples of the operation on sample n's slice (kept as a batch of one).
        def one(g_n: Tensor, *slices: Tensor) -> Tensor:
            sliced = {id(t): s.unsqueeze(0) for t, s in zip(batched, slices, strict=True)}

            def f(s: Tensor) -> Tensor:
                a, kw = _replace(tap.args, tap.kwargs, tap.source, s, sliced, clone=tap.inplace)
                return tap.func(*a, **kw)

            return vjp(f, source)[1](g_n.unsqueeze(0))[0]

        per_k = vmap(one, in_dims=(0, *[0] * len(batched)))
        return vmap(lambda g: per_k(g, *[t.detach() for t in batched]))(backprop)

    # No batched input (e.g. expand): the backprop masked to one sample at a time.
    def f(s: Tensor) -> Tensor:
        a, kw = _replace(tap.args, tap.kwargs, tap.source, s, clone=tap.inplace)
        return tap.func(*a, **kw)

    vjp_fn = vjp(f, source)[1]
    eye = torch.eye(n, dtype=backprop.dtype, device=backprop.device)

    def masked(g: Tensor, row: Tensor) -> Tensor:
        return vjp_fn(g * row.reshape(n, *[1] * (g.dim() - 1)))[0]

    return vmap(lambda g: vmap(masked, in_dims=(None, 0))(g, eye))(backprop)


def _pull_back(parent: Tensor, func: Any, args: tuple, kwargs: dict, child: Tensor, grads: Tensor) -> Tensor:
    """``grads`` (B, *child.shape) -> (B, *parent.shape) through ``child = func(..., parent, ...)``."""

    def f(p: Tensor) -> Tensor:
        a, kw = _replace(args, kwargs, parent, p)
        return func(*a, **kw)

    vjp_fn = vjp(f, parent.detach())[1]
    return vmap(lambda g: vjp_fn(g)[0])(grads)
