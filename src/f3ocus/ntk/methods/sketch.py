r"""The ``"sketch"`` method: an estimate of $\lambda_{\max}(\Theta_l)$ for wide outputs, with its error.

Exact methods need, per layer, either the $NM$ Jacobian rows (``"factored"``, ``"persample"``: $M$
backprop passes) or per-layer vjp/jvp pairs at every Krylov step (``"lanczos"``: steps $\times L$
passes). With thousands of outputs (a VQA head of 3129 answers, a vocabulary) both cost hundreds of
forward+backward passes. This method trades exactness for passes shared by all layers:

1. *A shared output subspace* by randomized block Krylov on the total kernel
   $\Theta = \sum_l \Theta_l$ (Musco & Musco, "Randomized Block Krylov Methods for Stronger and Faster
   Approximate Singular Value Decomposition", NeurIPS 2015): from a Gaussian block
   $\Omega \in \mathbb{R}^{NM \times b}$, the blocks $\Theta\Omega, \dots, \Theta^q\Omega$ (one vjp and one
   jvp per vector for all layers together, :meth:`~f3ocus.ntk.operator.LayerKernelOperator.total`).
   Every sample's slice of every vector is a direction in $\mathbb{R}^M$; their orthonormal basis
   $U \in \mathbb{R}^{M \times s}$ (``s = rank``, lower powers first) is shared by all samples.
2. *Rayleigh-Ritz on the product subspace* $\mathcal{Y} = \{y : y_n \in \mathrm{range}(U)\ \forall n\}$
   of dimension $Ns$: the kernel outputs are projected, $\tilde F = F U \in \mathbb{R}^{N \times s}$, so
   $\tilde\Theta_l = (I_N \otimes U)^\top \Theta_l (I_N \otimes U)$, and its Grams come from the factored
   pass of :mod:`f3ocus.ntk.methods.factored` with $s$ backprop passes instead of $M$. Then

   $$ \theta_l = \lambda_{\max}(\tilde\Theta_l) \le \lambda_{\max}(\Theta_l) $$

   (Cauchy interlacing: $I_N \otimes U$ has orthonormal columns), for every layer. It is exact when
   $\mathcal{Y}$ holds the top eigenvector of $\Theta_l$, and always for ``rank`` $\ge M$. Its accuracy
   below that depends on how fast the spectrum decays; a last ``Linear(d, M)`` does not make it exact
   at ``rank`` $= d$, since that layer's own kernel $(HH^\top + 1) \otimes I_M$ spreads the Krylov
   slices over all of $\mathbb{R}^M$.
3. *The error estimate*: the same Gram restricted to the leading half of $U$ (a principal block) gives
   $\theta_l'$ on a nested subspace; $(\theta_l - \theta_l') / \theta_l$ is reported as
   ``stats["errors"][layer]``. It is an *estimate* of the remaining relative error (the increase of the
   Ritz value as the subspace doubles), not a bound, and it can understate the error badly: on a ViLT
   VQA head with 3129 answers (``benchmarks/accuracy_sketch.py``) it reported at most 6% where the
   values were 37-55% below the exact ones (``rank=16, power=1``; with ``power=2`` it was of the right
   size, 11-36% below at ranks 32-128). The lower bound itself is rigorous.

The result says it is an estimate: ``stats["extra"]["estimate"]`` is ``True`` and
``stats["extra"]["lower_bound"]`` names the guarantee; ``method="auto"`` never picks this method (it
has no cost model). Accuracy measured against ``"dense"`` / ``"lanczos"`` is in ``docs/scoring.md``.
With ``rank >= M`` (small outputs, and always for ``kernel="sum"``/``"loss"``) the subspace is the
whole output space and the method is ``"factored"``, exact.

Cost: $b q$ vjp/jvp pairs of the whole model ($b = \lceil s / (N q) \rceil$), then one forward and $s$
backprop passes and the factored Grams of $Ns$ rows per layer (:func:`projected_grams`), whatever
$M$ is: linear in nothing but $s$. Options: ``rank`` ($s$, default 32) and ``power`` ($q$, default 2).
Outputs that couple samples are refused, as for ``"factored"``.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import Tensor

from f3ocus._checks import check_int
from f3ocus.ntk.calibration import GRAM_CHUNK_CPU, GRAM_CHUNK_GPU
from f3ocus.ntk.factors import hooked_factors, tokens_of, weight_gram
from f3ocus.ntk.grouping import subproblem
from f3ocus.ntk.linalg import small_eig_threads
from f3ocus.ntk.methods.factored import factored_groups, factored_method
from f3ocus.ntk.operator import LayerKernelOperator
from f3ocus.ntk.problem import NTKProblem
from f3ocus.ntk.registry import LayerEig, MethodResult, register_method

__all__ = ["output_basis", "projected_grams", "projected_problem", "sketch_method"]


def output_basis(
    problem: NTKProblem, rank: int, power: int, *, generator: torch.Generator | None
) -> tuple[Tensor, int]:
    r"""An orthonormal basis $U$ ``(M, rank)`` of the sample slices of $\Theta\Omega, \dots, \Theta^q\Omega$.

    Returns ``(U, vjp/jvp pairs spent)``. The columns come power by power (lower powers first), so
    the leading columns span the slices of the first blocks. Each block is scaled to unit norm per
    vector (the direction is all that matters). Where the slices span fewer than ``rank``
    directions, QR completes the basis with other orthonormal directions (still a valid subspace).
    """
    n, m = problem.num_samples, problem.num_outputs
    per_block = max(1, math.ceil(rank / (n * power)))
    op = LayerKernelOperator(problem)
    where = generator.device if generator is not None else "cpu"
    y = torch.randn(per_block, n * m, generator=generator, dtype=problem.dtype, device=where).to(problem.device)
    slices = []
    for _ in range(power):
        y = op.total(y)
        y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
        slices.append(y.reshape(per_block * n, m))
    cols = torch.cat(slices).T[:, :rank]  # (M, <= rank)
    if cols.shape[1] < rank:  # fewer slices than asked: pad with random directions
        extra = torch.randn(m, rank - cols.shape[1], generator=generator, dtype=cols.dtype, device=where)
        cols = torch.cat([cols, extra.to(cols.device)], dim=1)
    basis = torch.linalg.qr(cols.to(torch.float64))[0].to(problem.dtype)
    return basis, per_block * power


def projected_problem(problem: NTKProblem, basis: Tensor) -> NTKProblem:
    r"""``problem`` with kernel outputs $F U$ ``(N, s)``: $\tilde\Theta_l = (I \otimes U)^\top \Theta_l (I \otimes U)$."""
    output_fn = problem.output_fn

    def projected(out):
        y = output_fn(out)
        return y.reshape(y.shape[0], -1) @ basis

    cache = {"tensors": problem._named_tensors()}
    return dataclasses.replace(problem, output_fn=projected, num_outputs=basis.shape[1], _cache=cache)


def projected_grams(
    problem: NTKProblem, *, chunk_size: int | None, max_memory: int | None
) -> dict[str, Tensor]:
    r"""Every layer's $\Theta_l$ ``(N M, N M)``, output-major (row ``m N + n``), from factored passes.

    Linear weights through their activations and backprops (:func:`f3ocus.ntk.factors.weight_gram`),
    every other parameter through its stored rows; layers in groups whose factors fit ``max_memory``
    (one pass each). Meant for a small ``M`` (:func:`projected_problem`).
    """
    n, m = problem.num_samples, problem.num_outputs
    size = n * m
    chunk = GRAM_CHUNK_CPU if problem.device.type == "cpu" else GRAM_CHUNK_GPU
    grams: dict[str, Tensor] = {}
    for group in factored_groups(problem, max_memory):
        sub = subproblem(problem, group)
        factors, rows = hooked_factors(sub, chunk_size=chunk_size)
        for layer in group:
            theta = torch.zeros(size, size, dtype=problem.dtype, device=problem.device)  # sample-major
            for name in sub.layers[layer]:
                if factors.get(name):
                    weight_gram(*tokens_of(factors[name], n, m), theta, chunk=chunk)
            theta = theta.reshape(n, m, n, m).permute(1, 0, 3, 2).reshape(size, size)  # output-major
            for name in sub.layers[layer]:
                if name in rows and rows[name].numel() > 0:
                    r = rows[name].reshape(size, -1)
                    theta.addmm_(r, r.T)
            grams[layer] = theta
        del factors, rows
    return grams


def _top(gram: Tensor) -> float:
    if gram.numel() == 0:
        return 0.0
    with small_eig_threads(gram.device):
        return max(torch.linalg.eigvalsh(gram.to(torch.float64))[-1].item(), 0.0)


@register_method("sketch", options=("rank", "power"))
def sketch_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    rank: int = 32,
    power: int = 2,
) -> MethodResult:
    r"""Rayleigh-Ritz lower bounds on $\lambda_{\max}(\Theta_l)$ from a shared output subspace (an estimate).

    Options (pass them to :func:`f3ocus.ntk_layer_importance` as keywords, with ``method="sketch"``):
        rank: $s$, the dimension of the shared output subspace (per sample); ``rank >= M`` is exact.
        power: $q$, the Krylov powers of the total kernel that build it.

    ``tol`` and ``maxiter`` only reach ``"factored"`` when ``rank >= M``. Every value is a lower bound
    on the exact score; ``stats["errors"]`` holds the estimated relative error (see the module).
    """
    rank = check_int("rank", rank, low=1)
    power = check_int("power", power, low=1)
    n, m = problem.num_samples, problem.num_outputs
    if rank >= m:
        exact = factored_method(
            problem, tol=tol, maxiter=maxiter, generator=generator, chunk_size=chunk_size, max_memory=max_memory
        )
        extra = {**exact.extra, "estimate": False, "lower_bound": None, "rank": m, "power": 0}
        return dataclasses.replace(exact, extra=extra)
    basis, pairs = output_basis(problem, rank, power, generator=generator)
    projected = projected_problem(problem, basis)
    grams = projected_grams(projected, chunk_size=chunk_size, max_memory=max_memory)
    half = max(1, rank // 2) * n  # the leading half of the basis: a principal block (output-major rows)
    eigs: dict[str, LayerEig] = {}
    for layer, gram in grams.items():
        value = _top(gram)
        inner = _top(gram[:half, :half])
        error = max(value - inner, 0.0) / value if value > 0 else 0.0
        eigs[layer] = LayerEig(value=value, residual=error, iterations=power, converged=True, error=error)
    return MethodResult(
        eigs={layer: eigs[layer] for layer in problem.layers},
        backward_passes=pairs + len(factored_groups(projected, max_memory)) * rank,
        matvecs=pairs,
        extra={
            "estimate": True,
            "lower_bound": "every value is at most the exact score (Rayleigh-Ritz on a subspace)",
            "rank": rank,
            "power": power,
            "krylov_vectors": pairs,
        },
    )
