r"""Scores from per-sample loss gradients: ``"fisher"`` and ``"snr"``.

With $\ell_n$ the loss of sample $n$ (the entries of ``loss_fn(output, targets)``) and
$g_{n,i} = \partial \ell_n / \partial \theta_i$ its gradient, both scores read the $N \times P_l$ matrix
of per-sample gradients of each layer, from the per-sample engine of :mod:`f3ocus.ntk` (one forward
pass, one backward pass of the per-sample losses and one local contraction per hooked module; the
``torch.func`` fallback for other parameters).
"""

from __future__ import annotations

import torch

from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.registry import register_score

__all__ = ["fisher", "snr"]


@register_score("fisher", needs="loss", reduction="sum")
def fisher(ctx: ScoreContext) -> dict[str, float]:
    r"""Empirical Fisher information of the layer: the sum of its diagonal (FishMask, Sung et al.,
    "Training Neural Networks with Fixed Sparse Masks", NeurIPS 2021).

    $$ \hat F_{ii} = \frac1N \sum_{n=1}^N g_{n,i}^2, \qquad s_l = \sum_{i \in l} \hat F_{ii}
       \quad (\texttt{"sum"}; \texttt{"mean"} \text{ divides by } P_l). $$
    """
    blocks = ctx.per_sample_blocks()
    n = ctx.num_samples
    out: dict[str, float] = {}
    for layer, parts in blocks.items():  # sum_i (1/N) sum_n g_ni^2 = ||rows||_F^2 / N, one pass over the rows
        total = sum(torch.linalg.vector_norm(b).square() for b in parts) / n
        size = sum(b.shape[1] for b in parts)
        out[layer] = float(total / size if ctx.reduction == "mean" else total)
    return out


@register_score("snr", needs="loss", reduction="mean", min_samples=2)
def snr(ctx: ScoreContext, eps: float = 1e-12) -> dict[str, float]:
    r"""Gradient signal-to-noise ratio of the layer (Sun et al., "Exploring Selective Layer Fine-Tuning
    in Federated Learning", ISIT 2025; the gradient SNR of Liu et al., ICLR 2020).

    For every scalar $i$ of the layer, the mean of its per-sample gradients over their standard
    deviation (unbiased, $N - 1$), then the average over the layer:

    $$ \bar g_i = \frac1N \sum_n g_{n,i}, \quad \sigma_i^2 = \frac{1}{N-1} \sum_n (g_{n,i} - \bar g_i)^2,
       \quad s_l = \frac{1}{P_l} \sum_{i \in l} \frac{\lvert \bar g_i \rvert}{\sigma_i + \varepsilon}
       \quad (\texttt{"mean"}; \texttt{"sum"} \text{ drops } 1/P_l). $$

    Needs $N \ge 2$. ``eps`` (default 1e-12) keeps scalars whose gradient is the same on every sample
    finite; a scalar with zero gradient on every sample scores 0.
    """
    out: dict[str, float] = {}
    for layer, parts in ctx.per_sample_blocks().items():
        ratios = []
        for r in parts:
            mean = r.mean(0)
            std = (r - mean).square_().sum(0).div_(r.shape[0] - 1).sqrt_()  # two passes; faster than Tensor.std
            ratios.append(mean.abs_().div_(std.add_(eps)))
        out[layer] = float(ctx.reduce(torch.cat(ratios)))
    return out
