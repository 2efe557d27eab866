r"""The ``"ntk"`` score: :func:`f3ocus.ntk_layer_importance`, unchanged, under the score table."""

from __future__ import annotations

from typing import Any

from f3ocus.scores import LayerScores
from f3ocus.scoring._engine import ntk_layer_importance
from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.registry import register_score

__all__ = ["ntk"]


@register_score("ntk", needs="data", reduction=None)
def ntk(ctx: ScoreContext, **options: Any) -> LayerScores:
    r"""Principal eigenvalue of the layer-wise empirical NTK (Saha et al., "F³OCUS", CVPR 2025).

    $$ s_l = \lambda_{\max}(J_l J_l^\top), \qquad J_l = \partial\, \mathrm{vec}\, F / \partial \theta_l , $$

    computed by :func:`f3ocus.ntk_layer_importance`. With ``loss_fn`` and ``targets`` the kernel
    defaults to ``"loss"`` ($F$ = per-sample losses), else to ``"output"``; every other option
    (``kernel``, ``method``, ``tol``, ...) is passed on. Its stats are kept under ``stats["ntk"]``.
    """
    if ctx.loss_fn is not None and ctx.targets is not None:
        options.setdefault("kernel", "loss")
    loss = options.get("kernel") == "loss"
    scores = ntk_layer_importance(
        ctx.model,
        ctx.batch,
        layers=ctx.layers_arg,
        output_fn=ctx.output_fn,
        loss_fn=ctx.loss_fn if loss else None,
        targets=ctx.targets if loss else None,
        dtype=ctx.dtype,
        seed=ctx.seed,
        **options,
    )
    ctx.stats["ntk"] = scores.stats
    ctx.stats["backward_passes"] = scores.stats.get("backward_passes", 0)
    return scores  # a LayerScores: its parameter counts are kept
