r"""The ``"factored"`` scoring method: Linear weights kept as activations and backprops.

For an ``nn.Linear`` weight $W$ (``o x i``) the Jacobian rows are $\partial F_{kn}/\partial W =
\sum_s B_{kns} A_{ns}^\top$, with $A$ ``(N, S, i)`` the recorded inputs and $B$ ``(K, N, S, o)`` the
backprops of the $K = M$ kernel outputs. ``"persample"`` builds all these rows (``K N`` small GEMMs with
inner dimension $S$, written to memory) and then a Gram per layer. Here one hooked pass keeps $A$ and
$B$ instead, and each layer is solved in the cheaper of two ways (``eig="auto"``, by
:func:`_layer_costs`):

*Gram*: $\Theta_l = J_l J_l^\top$ is accumulated weight by weight from the factors, building the rows
of a chunk of output features at a time (about 4 MB on a CPU, so they stay in cache) and adding
their Gram; or, when few tokens are left, from token kernels,
$\Theta_{kn,jp} = \sum_{s,t} (B_{kns} \cdot B_{jpt})(A_{ns} \cdot A_{pt})$. Then ``eigvalsh``:
exact and deterministic. Cost $NM S\, o i + (NM)^2 o i$ per weight.

*Lanczos*: batched Lanczos on the $NM$-dimensional output space with the factored products

$$ J^\top v = \sum_{n,s} \Big(\sum_k v_{kn} B_{kns}\Big) A_{ns}^\top
   \quad (\text{one GEMM } o \times NS \times i), $$

$$ (J u)_{kn} = \sum_s B_{kns} \cdot (u A_{ns}) \quad (\text{one GEMM } NS \times i \times o), $$

from random starts, stopped on the relative residual (:func:`f3ocus.ntk.linalg.lanczos_max_eig`).
Cost $2 N S (i + M) o$ per weight and step, about two forward passes of that weight.

The Grams grow as $N^2$ and the Lanczos steps as $N$: on the small ViT of ``benchmarks/bench_ntk.py`` the
blocks take the Gram up to $N \approx 16$-$24$ and Lanczos above. A weight used by several calls (a
module called twice, weights tied between Linear modules) joins the calls' tokens, which sums them in
both ways. Tokens whose backprops vanish for every output and sample (after the last attention layer of
a classifier that reads one token, only that token is left) are dropped from both factors. Every other
scored parameter (Linear biases, norms, embeddings, convolutions, raw parameters, the torch.func
fallback) keeps its per-sample rows, exactly as ``"persample"`` builds them in the same hooked pass
(:mod:`f3ocus.ntk.rows`), and enters the Gram as $R R^\top$ and the matvec as $R (R^\top v)$.

Cost model (multiply-adds; see :mod:`f3ocus.ntk.methods.persample`): one forward and $M$ backprop-only passes,
$(1 + M) F$ with $F$ the forward multiply-adds (:func:`f3ocus.ntk.problem.forward_flops`), the other
parameters' rows, and per layer the cheaper of the Gram and $k$ = :data:`~f3ocus.ntk.calibration.LANCZOS_STEPS` Lanczos steps (weighted
:data:`~f3ocus.ntk.calibration.FACTORED_LANCZOS_WEIGHT`), with $S \approx F / (N P)$. Memory: the activations and backprops,
$N S (i + M o)$ elements per Linear weight, the stored rows of the other parameters and the Lanczos
basis; layers are grouped so that each group fits ``max_memory`` (one more pass per group).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from f3ocus._checks import check_choice
from f3ocus.ntk.calibration import (
    FACTORED_LANCZOS_WEIGHT,
    GEMV_WEIGHT,
    GRAM_CHUNK_CPU,
    GRAM_CHUNK_GPU,
    LANCZOS_STEPS,
    ROWS_WEIGHT,
)
from f3ocus.ntk.factors import (
    factored_matvec,
    hooked_factors,
    linear_shapes,
    tokens_of,
    tokens_per_sample,
    weight_gram,
    weight_gram_costs,
)
from f3ocus.ntk.grouping import consecutive_groups, subproblem
from f3ocus.ntk.linalg import gram_top_eig, lanczos_max_eig, layer_eig, random_start, rows_top_eigs
from f3ocus.ntk.problem import NTKProblem, forward_flops
from f3ocus.ntk.registry import Cost, LayerEig, MethodResult, register_method

logger = logging.getLogger("f3ocus.ntk")

__all__ = ["factored_cost", "factored_groups", "factored_method"]


def factored_cost(problem: NTKProblem, max_memory: int | None = None) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"factored"`` (see the module docstring).

    Stored rows (every parameter but the Linear weights) are costed as in
    :func:`~f3ocus.ntk.methods.persample.persample_cost`: their per-sample contractions, then per layer without a
    Linear weight the cheaper of Gram and Lanczos on the rows, and in the other layers one GEMV pair per
    Lanczos step, weighted 4x like every GEMV step. The memory is that of the largest layer (layers
    are grouped under ``max_memory``), doubled for the pass's own tensors, plus the Lanczos basis;
    each group beyond the first adds a forward and $M$ backprop passes.
    """
    n, m = problem.num_samples, problem.num_outputs
    rows = n * m
    sizes = problem.layer_sizes()
    total = max(sum(sizes.values()), 1)
    linear = linear_shapes(problem)
    s = tokens_per_sample(problem)
    fwd = forward_flops(problem)
    flops = (1 + m) * fwd * len(factored_groups(problem, max_memory))
    for layer, names in problem.layers.items():
        fact = [linear[k] for k in names if k in linear]
        rows_p = max(sizes[layer] - sum(o * i for o, i in fact), 0)
        flops += ROWS_WEIGHT * m * fwd * rows_p / total  # per-sample rows of the other parameters
        if fact:
            flops += min(_layer_costs(n, m, [(o, i, s) for o, i in fact], rows_p))
        else:
            flops += min(rows * rows, 2 * GEMV_WEIGHT * 2 * LANCZOS_STEPS * rows) * rows_p
    largest = max(_layer_bytes(problem).values(), default=0.0)
    memory = 2 * largest + len(sizes) * LANCZOS_STEPS * rows * problem.itemsize
    return Cost(flops=float(flops), memory=float(memory))


def _layer_bytes(problem: NTKProblem) -> dict[str, float]:
    """Estimated bytes per layer: its Linear weights' activations and backprops plus its other rows."""
    n, m = problem.num_samples, problem.num_outputs
    linear = linear_shapes(problem)
    s = tokens_per_sample(problem)
    sizes = problem.layer_sizes()
    out = {}
    for layer, names in problem.layers.items():
        fact = [linear[k] for k in names if k in linear]
        rows_p = max(sizes[layer] - sum(o * i for o, i in fact), 0)
        out[layer] = (sum(n * s * (i + m * o) for o, i in fact) + n * m * rows_p) * problem.itemsize
    return out


def factored_groups(problem: NTKProblem, max_memory: int | None) -> list[list[str]]:
    """Consecutive layer groups whose factors fit ``max_memory`` (at least one layer each)."""
    return consecutive_groups(_layer_bytes(problem), max_memory)


@register_method("factored", cost=factored_cost, options=("eig",))
def factored_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    eig: str = "auto",
) -> MethodResult:
    r"""Linear weights kept as activations x backprops; per layer a Gram or a batched Lanczos.

    Options (pass them to :func:`f3ocus.ntk_layer_importance` as keywords):
        eig: ``"auto"`` (per layer, the cheaper by the cost model), ``"gram"`` (every layer:
            $\Theta_l$ built from the factors a chunk of rows at a time, then ``eigvalsh``) or
            ``"lanczos"`` (every layer: batched Lanczos from random starts on the factored products).

    Layers are processed in consecutive groups whose factors fit ``max_memory``; each group costs one
    more forward pass and $M$ backprop passes. ``chunk_size`` only chunks the torch.func fallback
    (kernel outputs per ``jacrev`` chunk); the hooked pass keeps the backprops of all ``M`` outputs.
    """
    check_choice("eig", eig, ("auto", "gram", "lanczos"))
    groups = factored_groups(problem, max_memory)
    eigs: dict[str, LayerEig] = {}
    paths: dict[str, str] = {}
    factored: list[str] = []
    steps = 0
    for index, group in enumerate(groups):
        if len(groups) > 1:
            logger.info("layer group %d of %d (%d layers)", index + 1, len(groups), len(group))
        sub = subproblem(problem, group)
        got, names, used, path = _solve(
            sub, tol=tol, maxiter=maxiter, generator=generator, chunk_size=chunk_size, eig=eig
        )
        eigs.update(got)
        paths.update(path)
        factored += names
        steps += used
    return MethodResult(
        eigs={layer: eigs[layer] for layer in problem.layers},
        backward_passes=len(groups) * problem.num_outputs,
        matvecs=steps,
        extra={
            "factored": sorted(factored),
            "groups": len(groups),
            "steps": max((e.iterations for e in eigs.values()), default=0),
            "path": {layer: paths[layer] for layer in problem.layers},
        },
    )


def _layer_costs(
    n: int, m: int, weights: list[tuple[int, int, float]], rows_p: int, steps: int = LANCZOS_STEPS
) -> tuple[float, float]:
    """``(Gram, Lanczos)`` multiply-adds of one layer with factored ``weights`` ``(o, i, S)`` and ``rows_p``
    other parameters (stored rows); the Lanczos side weighted by :data:`FACTORED_LANCZOS_WEIGHT`.

    Gram: each weight's cheaper Gram (:func:`weight_gram_costs`), the rows' Gram $(NM)^2 P$ and a
    dense eigensolve; Lanczos: ``steps`` factored matvecs, the stored rows' GEMV pairs weighted 4x.
    """
    rows = float(n * m)
    gram = rows * rows * rows_p + 4.0 * rows**3
    for o, i, s in weights:
        by_rows, by_kernel, fits = weight_gram_costs(n, m, o, i, s)
        gram += min(by_rows, by_kernel) if fits else by_rows
    step = sum(2.0 * n * s * (i + m) * o for o, i, s in weights) + 2 * GEMV_WEIGHT * rows * rows_p
    return gram, FACTORED_LANCZOS_WEIGHT * steps * step


def _solve(
    problem: NTKProblem,
    *,
    tol: float,
    maxiter: int,
    generator: torch.Generator | None,
    chunk_size: int | None,
    eig: str = "auto",
) -> tuple[dict[str, LayerEig], list[str], int, dict[str, str]]:
    """Eigenvalues of every layer of ``problem`` from one hooked pass.

    Returns ``(eigs, factored weights, Lanczos steps, path per layer)``.
    """
    n, m = problem.num_samples, problem.num_outputs
    size = n * m
    factors, rows = hooked_factors(problem, chunk_size=chunk_size)
    layers = list(problem.layers)
    dense: dict[str, list[Tensor]] = {}
    fact: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for layer in layers:
        names = problem.layers[layer]
        dense[layer] = [rows[k].reshape(size, -1) for k in names if k in rows and rows[k].numel() > 0]
        fact[layer] = [tokens_of(factors[k], n, m) for k in names if k in factors and factors[k]]
    names = sorted(factors)
    del factors
    eigs: dict[str, LayerEig] = {}
    path: dict[str, str] = {}
    # Layers with stored rows only: exact, as "persample" does.
    plain = {layer: dense[layer] for layer in layers if not fact[layer]}
    if plain and size > 0:
        got, how = rows_top_eigs(plain, eig=eig, tol=tol, maxiter=maxiter, generator=generator)
        eigs.update(got)
        path.update(how)
    else:
        eigs.update({layer: LayerEig(value=0.0) for layer in plain})
        path.update({layer: "zero" for layer in plain})
    with_factors = [layer for layer in layers if fact[layer]]
    if size == 0:
        eigs.update({layer: LayerEig(value=0.0) for layer in with_factors})
        path.update({layer: "zero" for layer in with_factors})
        return eigs, names, 0, path
    chunk = GRAM_CHUNK_CPU if problem.device.type == "cpu" else GRAM_CHUNK_GPU
    krylov = []
    for layer in with_factors:
        if eig == "auto":
            weights = [(b.shape[-1], a.shape[-1], float(a.shape[1])) for a, b in fact[layer]]
            gram, lanczos = _layer_costs(n, m, weights, sum(r.shape[1] for r in dense[layer]))
            use_gram = gram <= lanczos
        else:
            use_gram = eig == "gram"
        if not use_gram:
            krylov.append(layer)
            continue
        theta = torch.zeros(size, size, dtype=problem.dtype, device=problem.device)  # sample-major
        for a, b in fact[layer]:
            weight_gram(a, b, theta, chunk=chunk)
        theta = theta.reshape(n, m, n, m).permute(1, 0, 3, 2).reshape(size, size)  # output-major
        for r in dense[layer]:
            theta.addmm_(r, r.T)
        eigs[layer], path[layer] = gram_top_eig(theta), "gram"
        fact[layer] = dense[layer] = []  # release this layer's factors
    if not krylov:
        return eigs, names, 0, path
    matvec = factored_matvec([dense[layer] for layer in krylov], [fact[layer] for layer in krylov], n, m)
    v0 = random_start(len(krylov), size, generator=generator, dtype=problem.dtype, device=problem.device)
    results = lanczos_max_eig(matvec, v0, tol=tol, maxiter=maxiter)
    for layer, res in zip(krylov, results, strict=True):
        eigs[layer], path[layer] = layer_eig(res), "lanczos"
    return eigs, names, sum(r.iterations for r in results), path
