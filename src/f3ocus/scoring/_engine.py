r"""The parts of :mod:`f3ocus.ntk` that the layer scores build on, in one place.

Every score reuses the NTK machinery instead of re-implementing it:

- :func:`scoring_problem` validates ``(model, batch, layers, output_fn, loss_fn, targets, dtype)`` and
  yields an :class:`~f3ocus.ntk.problem.NTKProblem` (the model as a pure function of its scored
  parameters; with ``kernel="loss"`` its outputs are the per-sample losses $\ell_n$);
- :func:`per_sample_blocks` returns, with ``kernel="loss"``, the per-sample loss gradients
  $\nabla_{\theta_l} \ell_n$ of every layer (grad samplers and the ``torch.func`` fallback);
- :func:`preserved_state` restores training flags, ``requires_grad`` and ``.grad`` (also on error);
- :func:`ntk_layer_importance` is the ``"ntk"`` score itself.

No other module of :mod:`f3ocus.scoring` imports from :mod:`f3ocus.ntk`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from f3ocus.ntk import ntk_layer_importance
from f3ocus.ntk.prepare import default_output_fn, preserved_state, scoring_problem
from f3ocus.ntk.problem import NTKProblem

try:  # the row engine's module; the older path re-exports it
    from f3ocus.ntk.rows import per_sample_jacobian_blocks
except ImportError:  # pragma: no cover - older layout
    from f3ocus.ntk.persample import per_sample_jacobian_blocks

__all__ = [
    "NTKProblem",
    "coupled_blocks",
    "default_output_fn",
    "ntk_layer_importance",
    "per_sample_blocks",
    "preserved_state",
    "scoring_problem",
]


def per_sample_blocks(problem: NTKProblem) -> dict[str, list[Tensor]]:
    r"""Layer name -> one ``(N, numel)`` block per parameter: the per-sample loss gradients
    $\nabla_{\theta_p} \ell_n$ for ``kernel="loss"`` ($M = 1$, so the output-major layout is sample-major
    and the blocks are views of what the backward passes produce: nothing is copied).

    Where the losses couple samples (``problem.coupled``: a contrastive or batch-centred loss, batch
    statistics), the row engine would be wrong; then row $n$ is the gradient of entry $n$ of the whole
    batch's losses, one reverse pass per sample (:func:`coupled_blocks`).
    """
    if problem.coupled:
        return coupled_blocks(problem)
    return per_sample_jacobian_blocks(problem, sample_major=False)


def coupled_blocks(problem: NTKProblem) -> dict[str, list[Tensor]]:
    """The per-sample loss gradients by $N$ reverse passes through one forward pass of the whole batch:
    exact whether or not the losses couple samples."""
    params = {k: v.detach().requires_grad_(True) for k, v in problem.layer_params().items()}
    losses = problem.outputs(params).reshape(-1)
    names = list(params)
    rows: list[list[Tensor]] = []
    for n in range(losses.numel()):
        grads = torch.autograd.grad(losses[n], [params[k] for k in names], retain_graph=True, allow_unused=True)
        rows.append([torch.zeros_like(params[k]) if g is None else g for k, g in zip(names, grads, strict=True)])
    stacked = {k: torch.stack([r[i].reshape(-1) for r in rows]) for i, k in enumerate(names)}
    return {layer: [stacked[k] for k in pnames] for layer, pnames in problem.layers.items()}
