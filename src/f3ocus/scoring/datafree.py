r"""Scores that read no data (the batch gives at most the input shapes): ``"synflow"``, ``"magnitude"``,
``"random"``."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call
from torch.utils._pytree import tree_map

from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.registry import register_score

__all__ = ["magnitude", "ones_like_sample", "random", "synflow"]


def ones_like_sample(tree: Any, num_samples: int) -> Any:
    """Replace every per-sample tensor leaf (leading dimension ``num_samples``) by ones of one sample's
    shape, batch dimension 1 kept, same dtype; shared leaves are kept as they are."""

    def one(leaf: Any) -> Any:
        if isinstance(leaf, Tensor) and leaf.dim() >= 1 and leaf.shape[0] == num_samples:
            return torch.ones((1, *leaf.shape[1:]), dtype=leaf.dtype, device=leaf.device)
        return leaf

    return tree_map(one, tree)


@register_score("synflow", needs="data", reduction="sum")
def synflow(ctx: ScoreContext) -> dict[str, float]:
    r"""Synaptic flow (Tanaka et al., "Pruning neural networks without any data by iteratively conserving
    synaptic flow", NeurIPS 2020), summed over the layer.

    Every floating parameter and buffer $\theta$ of the model is replaced by $\lvert\theta\rvert$, the
    input by ones ($\mathbb 1$, one sample of the batch's shape; integer inputs such as token ids become
    1), and

    $$ R = \mathbb 1^\top f(\mathbb 1;\, \lvert\theta\rvert), \qquad
       s_l = \sum_{i \in l} \Big\lvert \lvert\theta_i\rvert\, \frac{\partial R}{\partial \lvert\theta_i\rvert}
       \Big\rvert \quad (\texttt{"sum"}; \texttt{"mean"} \text{ divides by } P_l), $$

    with $f$ the output of ``output_fn`` (the absolute value is the original code's; for ReLU networks
    every term is already non-negative). The model runs on copies through ``functional_call``, so its
    weights are never written and stay exactly as they were. Cost: one forward and one backward pass
    of one sample. Use ``dtype=torch.float64`` for deep networks whose products overflow float32.
    """
    problem = ctx.problem
    params = problem.layer_params()
    others = problem.other_tensors()
    absolute = {k: v.abs() if v.is_floating_point() else v for k, v in others.items()}
    live = {k: v.abs().requires_grad_(True) for k, v in params.items()}
    args = ones_like_sample(problem.args, problem.num_samples)
    kwargs = ones_like_sample(problem.kwargs, problem.num_samples)
    with torch.enable_grad():
        out = functional_call(problem.model, {**absolute, **live}, args, kwargs, tie_weights=True, strict=False)
        r = problem.output_fn(out).sum()
        grads = torch.autograd.grad(r, list(live.values()), allow_unused=True)
    ctx.stats["backward_passes"] = ctx.stats.get("backward_passes", 0) + 1
    terms = {k: (p * g).abs() if g is not None else torch.zeros_like(p) for (k, p), g in zip(live.items(), grads, strict=True)}
    for k, t in terms.items():
        if not torch.isfinite(t).all():
            raise ValueError(
                f"score='synflow' overflowed at parameter {k!r}: the product of |weights| on an all-ones "
                "input is not finite. Pass dtype=torch.float64."
            )
    return {layer: float(ctx.reduce(ctx.flat(layer, terms).detach())) for layer in ctx.layers}


@register_score("magnitude", needs="nothing", reduction="mean")
def magnitude(ctx: ScoreContext) -> dict[str, float]:
    r"""Mean absolute weight of the layer (magnitude pruning, Han et al., NeurIPS 2015).

    $$ s_l = \frac{1}{P_l} \sum_{i \in l} \lvert \theta_i \rvert \quad (\texttt{"mean"};
       \texttt{"sum"} \text{ drops } 1/P_l). $$

    Reads no data: ``batch`` may be ``None``. Cost: no pass through the model.
    """
    params = ctx.parameters()
    return {layer: float(ctx.reduce(ctx.flat(layer, params).abs())) for layer in ctx.layers}


@register_score("random", needs="nothing", reduction=None)
def random(ctx: ScoreContext) -> dict[str, float]:
    r"""Independent uniform draws $s_l \sim U[0, 1)$, one per layer, from the generator made from
    ``seed`` (the random baseline of layer selection). Reads no data."""
    values = ctx.generator.random(len(ctx.layers))
    return dict(zip(ctx.layers, values.tolist(), strict=True))
