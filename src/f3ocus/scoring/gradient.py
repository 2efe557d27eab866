r"""Scores from the batch-loss gradient: ``"grad_norm"``, ``"rgn"``, ``"snip"``, ``"grasp"`` and ``"gradflow"``.

Throughout, $L = \frac1N \sum_n \ell_n$ is the batch-mean loss (``loss_fn(output, targets).mean()``),
$g = \nabla_\theta L$ its gradient over the scored parameters and, for layer $l$, $g_l$ and $\theta_l$
the entries of its $P_l$ trainable scalars. The sum forms are the defaults of ``"snip"`` and
``"grasp"``; ``reduction="mean"`` divides by $P_l$. For the norms, the reduction applies to the squares
under the root (``"mean"`` gives the root mean square).
"""

from __future__ import annotations

import torch

from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.registry import register_score

__all__ = ["grad_norm", "gradflow", "grasp", "rgn", "snip"]


def _norm(ctx: ScoreContext, values: torch.Tensor) -> torch.Tensor:
    return ctx.reduce(values.square()).sqrt()


@register_score("grad_norm", needs="loss", reduction="sum")
def grad_norm(ctx: ScoreContext) -> dict[str, float]:
    r"""Gradient norm of each layer on the batch (Sun et al., "Exploring Selective Layer Fine-Tuning in
    Federated Learning", ISIT 2025).

    $$ s_l = \lVert g_l \rVert_2 = \Big(\sum_{i \in l} g_i^2\Big)^{1/2} \quad (\texttt{"sum"}), \qquad
       s_l = \Big(\frac{1}{P_l}\sum_{i \in l} g_i^2\Big)^{1/2} \quad (\texttt{"mean"}). $$

    Cost: one forward and one backward pass.
    """
    g = ctx.gradient()
    return {layer: float(_norm(ctx, ctx.flat(layer, g))) for layer in ctx.layers}


@register_score("rgn", needs="loss", reduction="sum")
def rgn(ctx: ScoreContext, eps: float = 0.0) -> dict[str, float]:
    r"""Relative gradient norm (Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution
    Shifts", ICLR 2023).

    $$ s_l = \frac{\lVert g_l \rVert_2}{\lVert \theta_l \rVert_2 + \varepsilon} . $$

    With ``eps=0`` both reductions give the same value (the $P_l$ under the two roots cancel). A layer
    whose parameters are all zero has no relative gradient norm: pass ``eps > 0`` or use
    ``"grad_norm"``. Cost: one forward and one backward pass.
    """
    g, params = ctx.gradient(), ctx.parameters()
    out: dict[str, float] = {}
    for layer in ctx.layers:
        den = _norm(ctx, ctx.flat(layer, params)) + eps
        if float(den) == 0.0:
            raise ValueError(
                f"score='rgn' is undefined for layer {layer!r}: its trainable parameters are all zero "
                "(||theta_l|| = 0). Pass eps=1e-12 (or another small number), or use score='grad_norm'."
            )
        out[layer] = float(_norm(ctx, ctx.flat(layer, g)) / den)
    return out


@register_score("snip", needs="loss", reduction="sum")
def snip(ctx: ScoreContext) -> dict[str, float]:
    r"""SNIP connection sensitivity (Lee et al., "SNIP: Single-shot Network Pruning based on Connection
    Sensitivity", ICLR 2019), summed over the layer.

    $$ s_l = \sum_{i \in l} \lvert \theta_i\, g_i \rvert \quad (\texttt{"sum"}; \texttt{"mean"}
       \text{ divides by } P_l). $$

    Cost: one forward and one backward pass.
    """
    g, params = ctx.gradient(), ctx.parameters()
    return {layer: float(ctx.reduce((ctx.flat(layer, params) * ctx.flat(layer, g)).abs())) for layer in ctx.layers}


@register_score("grasp", needs="loss", reduction="sum", signed=True)
def grasp(ctx: ScoreContext) -> dict[str, float]:
    r"""GraSP, gradient signal preservation (Wang et al., "Picking Winning Tickets Before Training by
    Preserving Gradient Flow", ICLR 2020), summed over the layer.

    $$ s_l = -\sum_{i \in l} \theta_i\, (H g)_i, \qquad H = \nabla^2_\theta L , $$

    the first-order change of the gradient norm $\tfrac12 \lVert g \rVert^2$ when the layer is removed
    ($\theta_l \to 0$). $H$ is the Hessian over all scored parameters, so layers interact through it.
    Wang et al. prune the weights with the *largest* $s$ first (removing them hurts gradient flow
    least). The score is **signed**: transform it before selection with
    :func:`f3ocus.scoring.make_nonnegative` (``transform=`` of :func:`f3ocus.layer_scores`).

    Cost: one forward pass, one backward pass that keeps its graph and one backward through it
    (a Hessian-vector product, Pearlmutter 1994).
    """
    _, hg = ctx.hessian_gradient()
    params = ctx.parameters()
    return {layer: float(-ctx.reduce(ctx.flat(layer, params) * ctx.flat(layer, hg))) for layer in ctx.layers}


@register_score("gradflow", needs="loss", reduction="sum")
def gradflow(ctx: ScoreContext) -> dict[str, float]:
    r"""Gradient-flow preservation: the magnitude of GraSP's term, summed over the layer (Lubana and Dick,
    "A Gradient Flow Framework for Analyzing Network Pruning", ICLR 2021).

    $$ s_l = \sum_{i \in l} \lvert \theta_i\, (H g)_i \rvert , \qquad H = \nabla^2_\theta L . $$

    Lubana and Dick show that removing parameters should *preserve* the gradient norm rather than
    raise it (as GraSP's signed score favours), so the size of each parameter's second-order effect
    on $\tfrac12 \lVert g \rVert^2$ is its importance. Non-negative. Cost: as ``"grasp"`` (one
    Hessian-vector product).
    """
    _, hg = ctx.hessian_gradient()
    params = ctx.parameters()
    return {layer: float(ctx.reduce((ctx.flat(layer, params) * ctx.flat(layer, hg)).abs())) for layer in ctx.layers}
