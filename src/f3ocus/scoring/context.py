r"""What a score function receives: the model, the batch and cached building blocks.

:class:`ScoreContext` binds one call of :func:`f3ocus.layer_scores`. Its building blocks are computed
on first use and cached, so a score only pays for what it reads:

- :meth:`ScoreContext.gradient`: the batch-loss gradient $g = \nabla_\theta L$ with
  $L = \frac1N \sum_n \ell_n$, $\ell_n$ the entries of ``loss_fn(output, targets)``: one forward and one
  backward pass;
- :meth:`ScoreContext.hessian_gradient`: $g$ and the Hessian-vector product $H g$,
  $H = \nabla^2_\theta L$, by double backward (Pearlmutter, Neural Computation 1994);
- :meth:`ScoreContext.per_sample_blocks` / :meth:`ScoreContext.per_sample_gradients`: the rows
  $\nabla_{\theta_l} \ell_n$ of every layer, from the per-sample engine of :mod:`f3ocus.ntk` (one
  forward, one backward, local per-sample contractions).

$\theta$ here is the set of *scored* parameters (the trainable ones of the resolved layers); frozen
parameters and buffers are constants. All derivatives are taken on detached copies through
``torch.func.functional_call``: the model's parameters are never written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from f3ocus.layers import resolve_layers
from f3ocus.scoring._engine import NTKProblem, per_sample_blocks, scoring_problem

__all__ = ["ScoreContext"]


@dataclass(frozen=True, eq=False)
class ScoreContext:
    """One scoring call, bound: read by score functions, built by :func:`f3ocus.layer_scores`.

    Attributes:
        model: The model (in eval mode while the score runs).
        batch: The batch as the user passed it (``None`` allowed for ``needs="nothing"`` scores).
        layers_arg: The ``layers=`` argument as passed (see :func:`f3ocus.resolve_layers`).
        output_fn: ``output_fn=`` as passed, or ``None`` for the default.
        loss_fn: ``loss_fn(output, targets)`` -> ``(N,)`` per-sample losses, or ``None``.
        targets: The targets, or ``None``.
        dtype: The compute dtype override, or ``None``.
        needs: The score's ``needs`` (decides the kernel of :attr:`problem`).
        reduction: ``"sum"`` or ``"mean"`` (``None`` for scores without a per-parameter form).
        seed: The ``seed=`` of the call (``None``: fresh randomness).
        generator: A ``numpy.random.Generator`` made from ``seed``: the call's only source of randomness.
        options: Extra keyword options of the call (given to the score function too).
    """

    model: nn.Module
    batch: Any
    layers_arg: Any = None
    output_fn: Callable | None = None
    loss_fn: Callable | None = None
    targets: Any = None
    dtype: torch.dtype | None = None
    needs: str = "loss"
    reduction: str | None = "sum"
    seed: int | None = None
    generator: np.random.Generator = field(default_factory=np.random.default_rng)
    options: Mapping[str, Any] = field(default_factory=dict)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    stats: dict = field(default_factory=dict, repr=False)

    # -- the problem ----------------------------------------------------------------------------
    @property
    def problem(self) -> NTKProblem:
        """The validated :class:`~f3ocus.ntk.NTKProblem` (``kernel="loss"`` for loss scores, else ``"sum"``).

        Built on first access: the arguments are checked and one forward pass without gradients checks
        the outputs (and the losses).
        """
        if "problem" not in self._cache:
            loss = self.needs == "loss"
            self._cache["problem"] = self._stack.enter_context(
                scoring_problem(
                    self.model,
                    self.batch,
                    layers=self.layers_arg,
                    output_fn=self.output_fn,
                    kernel="loss" if loss else "sum",
                    loss_fn=self.loss_fn if loss else None,
                    targets=self.targets if loss else None,
                    dtype=self.dtype,
                )
            )
        return self._cache["problem"]

    @property
    def layers(self) -> dict[str, list[str]]:
        """Layer name -> names of its trainable parameters, in model order (tied ones once)."""
        if "layers" not in self._cache:
            if self.needs == "nothing":
                self._cache["layers"] = resolve_layers(self.model, self.layers_arg)
            else:
                self._cache["layers"] = self.problem.layers
        return self._cache["layers"]

    @property
    def num_samples(self) -> int | None:
        """$N$, or ``None`` for a score that does not read the batch."""
        return None if self.needs == "nothing" else self.problem.num_samples

    def parameters(self) -> dict[str, Tensor]:
        """Scored parameter name -> detached tensor (in the compute dtype for scores that read the batch)."""
        if "params" not in self._cache:
            if self.needs == "nothing":
                named = dict(self.model.named_parameters())
                self._cache["params"] = {
                    n: _compute(named[n].detach(), self.dtype) for names in self.layers.values() for n in names
                }
            else:
                self._cache["params"] = self.problem.layer_params()
        return self._cache["params"]

    def layer_sizes(self) -> dict[str, int]:
        """Layer name -> $P_l$, its number of trainable scalars."""
        params = self.parameters()
        return {layer: sum(params[n].numel() for n in names) for layer, names in self.layers.items()}

    # -- helpers for score functions ------------------------------------------------------------
    def flat(self, layer: str, tensors: Mapping[str, Tensor]) -> Tensor:
        """The tensors of ``layer``'s parameters, flattened and concatenated in layer order: ``(P_l,)``."""
        return torch.cat([tensors[name].reshape(-1) for name in self.layers[layer]])

    def reduce(self, values: Tensor) -> Tensor:
        """Aggregate a per-scalar quantity of one layer: ``values.sum()`` or ``values.mean()`` (:attr:`reduction`)."""
        return values.mean() if self.reduction == "mean" else values.sum()

    # -- building blocks ------------------------------------------------------------------------
    def _live(self) -> dict[str, Tensor]:
        return {k: v.detach().requires_grad_(True) for k, v in self.parameters().items()}

    def _batch_loss(self, live: Mapping[str, Tensor]) -> Tensor:
        return self.problem.outputs(live).mean()

    def gradient(self) -> dict[str, Tensor]:
        """$\\nabla_\\theta L$ of every scored parameter (one forward and one backward pass, cached)."""
        if "gradient" not in self._cache:
            live = self._live()
            with torch.enable_grad():
                loss = self._batch_loss(live)
                grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
            self._cache["gradient"] = self._finite(dict(zip(live, _zeros_for_none(grads, live), strict=True)), "gradient")
            self.stats["backward_passes"] = self.stats.get("backward_passes", 0) + 1
        return self._cache["gradient"]

    def hessian_gradient(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """$(g, Hg)$ with $g = \\nabla_\\theta L$ and $H = \\nabla^2_\\theta L$ over the scored parameters.

        One forward pass, one backward pass that keeps its graph, and one backward pass through it
        ($Hg = \\nabla_\\theta (g^\\top \\bar g)$ with $\\bar g$ the detached $g$). Cached.
        Scaled-dot-product attention runs on its math kernel here (fused kernels have no double backward).
        """
        if "hvp" not in self._cache:
            live = self._live()
            # fused attention kernels have no double backward: the math kernel (same values) has
            with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
                loss = self._batch_loss(live)
                grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True, create_graph=True)
                grads = _zeros_for_none(grads, live)
                used = [(p, g) for p, g in zip(live.values(), grads, strict=True) if g.requires_grad]
                hv = (
                    torch.autograd.grad([g for _, g in used], [p for p, _ in used],
                                        grad_outputs=[g.detach() for _, g in used], allow_unused=True)
                    if used
                    else ()
                )
            by_param = {id(p): h for (p, _), h in zip(used, hv, strict=True)}
            hvp = {k: by_param.get(id(p)) for k, p in live.items()}
            hvp = {k: torch.zeros_like(live[k]) if h is None else h for k, h in hvp.items()}
            g = {k: v.detach() for k, v in zip(live, grads, strict=True)}
            self._cache["hvp"] = (self._finite(g, "gradient"), self._finite(hvp, "Hessian-vector product"))
            self.stats["backward_passes"] = self.stats.get("backward_passes", 0) + 2
        return self._cache["hvp"]

    def per_sample_blocks(self) -> dict[str, list[Tensor]]:
        """Layer name -> one ``(N, numel)`` block per parameter of the layer: row $n$ is
        $\\nabla_{\\theta_p} \\ell_n$ (cached; no copy of the engine's output).

        From the per-sample engine of :mod:`f3ocus.ntk` with the loss kernel: one forward pass, one
        backward pass and a local per-sample contraction per hooked module.
        """
        if "blocks" not in self._cache:
            if self.problem.kernel != "loss":
                raise RuntimeError("per-sample gradients need a loss: register the score with needs='loss'.")
            with torch.enable_grad():
                blocks = per_sample_blocks(self.problem)
            names = {f"{layer}[{i}]": b for layer, parts in blocks.items() for i, b in enumerate(parts)}
            self._finite(names, "per-sample gradient", by_layer=True)
            self._cache["blocks"] = blocks
            self.stats["backward_passes"] = self.stats.get("backward_passes", 0) + 1
        return self._cache["blocks"]

    def per_sample_gradients(self) -> dict[str, Tensor]:
        """Layer name -> ``(N, P_l)``: row $n$ is $\\nabla_{\\theta_l} \\ell_n$, the blocks of
        :meth:`per_sample_blocks` side by side (cached)."""
        if "rows" not in self._cache:
            self._cache["rows"] = {layer: torch.cat(parts, dim=1) for layer, parts in self.per_sample_blocks().items()}
        return self._cache["rows"]

    def _finite(self, tensors: dict[str, Tensor], what: str, *, by_layer: bool = False) -> dict[str, Tensor]:
        # one sum per tensor: NaN and Inf propagate through it (cheaper than an elementwise isfinite)
        sums = torch.stack([t.sum() for t in tensors.values()]) if tensors else torch.zeros(0)
        if bool(torch.isfinite(sums).all()):
            return tensors
        for name, t in tensors.items():
            if not torch.isfinite(t).all():
                layer = name.rsplit("[", 1)[0] if by_layer else next(k for k, v in self.layers.items() if name in v)
                where = f"layer {layer!r}" if by_layer else f"parameter {name!r} (layer {layer!r})"
                raise ValueError(
                    f"the {what} of the loss holds NaN/Inf values at {where}. Check loss_fn and targets "
                    "(e.g. a log or sqrt of zero, a label out of range) or score in float64 (dtype=torch.float64)."
                )
        return tensors


def _compute(t: Tensor, dtype: torch.dtype | None) -> Tensor:
    """``t`` in the compute dtype: ``dtype`` if given, float32 for float16/bfloat16, else its own."""
    if not t.is_floating_point():
        return t
    if dtype is not None:
        return t.to(dtype)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _zeros_for_none(grads: tuple, live: Mapping[str, Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, live.values(), strict=True)]
