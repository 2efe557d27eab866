r"""Do the outputs couple samples? A cheap probe, run once per scoring problem.

``"persample"`` and ``"factored"`` build row $(n, m)$ of $J_l$ from the backprop of $\sum_n F_{nm}$,
which is right only if $F_{nm}$ depends on sample $n$ alone. Outputs that mix samples break this:
CLIP's ``logits_per_image`` (row $n$ scores image $n$ against every text of the batch), a contrastive
loss, BatchNorm with batch statistics (``track_running_stats=False``), anything centred over the batch.
``"dense"`` and ``"lanczos"`` differentiate the whole batch and stay exact.

The probe evaluates the kernel outputs of sample 0 alone (a batch of one: $1/N$ of a forward pass)
and compares them with row 0 of the batch's outputs. Where sample 0's outputs depend on other samples
they change (or change shape) when the other samples are gone. A model that does not run on one
sample alone counts as coupled. A probe can miss a coupling that leaves sample 0's values unchanged
at a batch of one; none of the usual couplings does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from f3ocus.ntk.problem import NTKProblem

__all__ = ["COUPLED_HINT", "coupling_probe"]

COUPLED_HINT = (
    "pass an output_fn whose row n depends on sample n alone, e.g. for CLIP "
    "output_fn=lambda out: out.logits_per_image.diagonal()[:, None] (each image against its own text), "
    "or score with method='dense' or method='lanczos' (exact for coupled outputs; method='auto' picks "
    "one of them by itself)"
)


def _rtol(dtype: torch.dtype) -> float:
    return 1e-7 if dtype == torch.float64 else 2e-3


def coupling_probe(problem: NTKProblem, full: Tensor) -> str | None:
    """Why the kernel outputs couple samples, or ``None`` if the probe finds no coupling.

    Args:
        problem: the scoring problem (``num_outputs`` not needed).
        full: its ``(N, M)`` kernel outputs on the whole batch, already computed.
    """
    n = problem.num_samples
    if n == 1:
        return None
    one = tree_map(lambda t: t[0], problem.per_sample_inputs())
    try:
        # The same one-sample pass counts the forward multiply-adds for the cost models
        # (:func:`f3ocus.ntk.problem.forward_flops`), so that ``method="auto"`` needs no pass of its own.
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            row = problem.sample_outputs(problem.layer_params(), *one).reshape(-1)
    except Exception as err:  # noqa: BLE001 - any failure means the model needs the whole batch
        return f"the model does not run on sample 0 alone ({type(err).__name__}: {str(err)[:120]})"
    bound = float(n * sum(problem.layer_sizes().values()))
    problem._cache.setdefault("forward_flops", max(bound, n * counter.get_total_flops() / 2.0))
    ref = full[0].reshape(-1)
    if row.numel() != ref.numel():
        return (
            f"sample 0 has {ref.numel()} kernel outputs in the batch of {n} but {row.numel()} alone "
            "(the output has one entry per pair of samples)"
        )
    scale = float(full.abs().max()) if full.numel() else 0.0
    err = float((row - ref).abs().max())
    if err > _rtol(full.dtype) * max(scale, 1e-30):
        return (
            f"sample 0's kernel outputs change by {err:.3g} (scale {scale:.3g}) when the other samples are "
            "left out"
        )
    return None
