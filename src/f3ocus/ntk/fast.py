r"""The fast exact scoring methods, ``"persample"`` and ``"lanczos"``, with their cost models.

``"persample"``: the rows of every $J_l$ from one forward pass and $M$ batched backprop-only passes
(:mod:`f3ocus.ntk.persample`), then per layer either the Gram $\Theta_l = J_l J_l^\top$ and
``eigvalsh`` (cost $(NM)^2 P_l$, one GEMM), or Lanczos on the stored rows,
$v \mapsto J_l (J_l^\top v)$ (cost $4 k\, NM P_l$ for $k$ steps), whichever the cost model says is
cheaper. Layers are processed in groups whose Jacobians fit ``max_memory`` (each group costs one more
forward and backward sweep).

``"lanczos"``: fully matrix-free (:mod:`f3ocus.ntk.matfree`): batched Lanczos over all layers, each
step one vmapped vjp and one vmapped jvp (or double vjp) per layer. Memory is tiny, work is large.

Cost model (multiply-adds; only the ordering matters). With $N$ samples, $M$ kernel outputs,
$P = \sum_l P_l$ scored parameters, $L$ layers and $F \ge NP$ the multiply-adds of a forward pass
(:func:`forward_flops`, counted on one sample, so it sees sequence lengths):

- persample: $(1 + 3M) F$ (forward, $M$ backprop passes, per-sample contractions weighted 2x:
  every row is written to fresh memory, which runs at about a third of GEMM speed) plus, per layer,
  $\min\big((NM)^2 P_l,\ 16 k NM P_l\big)$ (GEMV steps weighted 4x); memory $2 NM \max_l P_l$
  elements (the largest Jacobian group, plus the backprops).
- lanczos: $k \cdot L \cdot 3 \cdot 2 F$; memory $\min(L, \text{chunk}) \cdot P$ elements plus the
  Lanczos basis $L k NM$.

with $k$ = 30 expected Lanczos steps (a random start and no structure to exploit).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from f3ocus._checks import check_choice
from f3ocus.ntk.lanczos import lanczos_max_eig, small_eig_threads
from f3ocus.ntk.matfree import LayerKernelOperator
from f3ocus.ntk.methods import Cost, LayerEig, MethodResult, register_method
from f3ocus.ntk.persample import per_sample_jacobian_blocks
from f3ocus.ntk.problem import NTKProblem, forward_flops

__all__ = [
    "forward_flops",
    "jacobian_eigs",
    "lanczos_cost",
    "lanczos_method",
    "persample_cost",
    "persample_method",
]

EXPECTED_STEPS = 30
# Per-sample contractions that write every row to fresh memory ran at 54 GFLOPS on the CPU benchmark,
# against 160-170 for the Grams' GEMMs: the cost models weigh them 2x.
ROWS_WEIGHT = 2.0


def _uses_gram(rows: int, steps: int = EXPECTED_STEPS) -> bool:
    """Gram + eigvalsh ($n^2 P$ in one GEMM) versus Lanczos on stored rows ($4 k n P$ in GEMVs)."""
    # GEMV steps run at a fraction of GEMM speed: weight them 4x.
    return rows * rows <= 4 * 4 * steps * rows


def jacobian_eigs(
    jacobians: dict[str, Tensor | list[Tensor]],
    *,
    eig: str = "auto",
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, LayerEig], dict[str, str]]:
    """$\\lambda_{\\max}(J_l J_l^\top)$ for every stored Jacobian.

    Args:
        jacobians: layer -> $J_l$ ``(n, P_l)``, or a list of column blocks of it, all with the same ``n``.
        eig: ``"gram"`` (form $\\Theta_l = \\sum_b J_b J_b^\top$, ``eigvalsh``), ``"lanczos"`` (batched
            Lanczos on $v \\mapsto \\sum_b J_b (J_b^\top v)$), or ``"auto"`` (per the cost model).
        tol, maxiter, generator: Lanczos settings (see :func:`f3ocus.ntk.lanczos.lanczos_max_eig`).

    Returns:
        ``(eigs, path)``: a :class:`LayerEig` per layer and the path taken per layer.
    """
    check_choice("eig", eig, ("auto", "gram", "lanczos"))
    blocks = {
        k: [b for b in (v if isinstance(v, list) else [v]) if b.shape[1] > 0] for k, v in jacobians.items()
    }
    eigs: dict[str, LayerEig] = {}
    path: dict[str, str] = {}
    krylov = []
    grams: dict[str, Tensor] = {}
    for layer, parts in blocks.items():
        rows = parts[0].shape[0] if parts else 0
        use_gram = eig == "gram" or (eig == "auto" and _uses_gram(rows))
        if not parts:
            eigs[layer], path[layer] = LayerEig(value=0.0), "zero"
        elif use_gram or rows == 1:
            grams[layer] = sum(b @ b.T for b in parts)
        else:
            krylov.append(layer)
    # All GEMMs first, then the small eigenproblems (float64, one CPU thread: see small_eig_threads).
    for layer, gram in grams.items():
        eigs[layer], path[layer] = gram_top_eig(gram), "gram"
    if krylov:
        first = blocks[krylov[0]][0]
        v0 = torch.randn(
            len(krylov), first.shape[0], generator=generator, dtype=first.dtype, device=_gen_device(generator)
        ).to(first.device)

        def matvec(v: Tensor) -> Tensor:
            return torch.stack([sum(b @ (b.T @ v[i]) for b in blocks[k]) for i, k in enumerate(krylov)])

        results = lanczos_max_eig(matvec, v0, tol=tol, maxiter=maxiter)
        for layer, res in zip(krylov, results, strict=True):
            eigs[layer] = _layer_eig(res)
            path[layer] = "lanczos"
    return {k: eigs[k] for k in jacobians}, path


def gram_top_eig(gram: Tensor) -> LayerEig:
    """$\\lambda_{\\max}$ of a PSD Gram by ``eigvalsh`` in float64 (one CPU thread: :func:`small_eig_threads`)."""
    with small_eig_threads(gram.device):
        top = torch.linalg.eigvalsh(gram.to(torch.float64))[-1].item()
    return LayerEig(value=max(top, 0.0))


def _gen_device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


def _layer_eig(res: Any) -> LayerEig:
    return LayerEig(
        value=res.value,
        residual=res.residual / max(res.value, 1e-300),
        iterations=res.iterations,
        converged=res.converged,
    )


def _consecutive_groups(needs: dict[str, float], max_memory: int | None) -> list[list[str]]:
    """Split layers, in order, into groups whose needs sum to at most ``max_memory / 2`` (at least one each).

    Half the budget: the other half is for the pass that produces them (backprops, activations).
    """
    budget = float("inf") if max_memory is None else max_memory / 2
    groups: list[list[str]] = [[]]
    used = 0.0
    for layer, need in needs.items():
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(layer)
        used += need
    return groups


def _subproblem(problem: NTKProblem, group: list[str]) -> NTKProblem:
    """``problem`` restricted to the layers of ``group`` (``problem`` itself when that is all of them)."""
    if len(group) == len(problem.layers):
        return problem
    return dataclasses.replace(problem, layers={k: problem.layers[k] for k in group})


def _groups(problem: NTKProblem, max_memory: int | None) -> list[list[str]]:
    """Consecutive layer groups whose Jacobians ``(N M, sum P_l)`` fit ``max_memory`` (at least one each)."""
    row_bytes = problem.num_samples * problem.num_outputs * problem.itemsize
    return _consecutive_groups({k: p * row_bytes for k, p in problem.layer_sizes().items()}, max_memory)


def persample_cost(problem: NTKProblem, max_memory: int | None = None) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"persample"`` (see the module docstring).

    With ``max_memory``, each layer group beyond the first adds a forward and $M$ backprop passes.
    """
    n, m = problem.num_samples, problem.num_outputs
    sizes = problem.layer_sizes()
    rows = n * m
    eig = sum(min(rows * rows, 4 * 4 * EXPECTED_STEPS * rows) * p for p in sizes.values())
    sweeps = len(_groups(problem, max_memory))
    flops = (
        (1 + m + ROWS_WEIGHT * m) * forward_flops(problem)
        + (sweeps - 1) * (1 + m) * forward_flops(problem)
        + eig
    )
    memory = 2.0 * rows * max(sizes.values(), default=0) * problem.itemsize
    return Cost(flops=float(flops), memory=memory)


def lanczos_cost(problem: NTKProblem) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"lanczos"`` (see the module docstring)."""
    n, m = problem.num_samples, problem.num_outputs
    sizes = problem.layer_sizes()
    total = sum(sizes.values())
    layers = len(sizes)
    flops = EXPECTED_STEPS * layers * 3 * 2.0 * forward_flops(problem)
    memory = (2 * layers * total + layers * EXPECTED_STEPS * n * m) * problem.itemsize
    return Cost(flops=float(flops), memory=float(memory))


@register_method("persample", cost=persample_cost)
def persample_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    eig: str = "auto",
    use_hooks: bool = True,
    batched: bool = True,
) -> MethodResult:
    """Per-sample Jacobian rows, then Gram + ``eigvalsh`` or Lanczos per layer.

    Options (pass them to :func:`f3ocus.ntk_layer_importance` as keywords):
        eig: ``"auto"``, ``"gram"`` or ``"lanczos"`` (see :func:`jacobian_eigs`).
        use_hooks: ``False`` sends every parameter through the torch.func fallback.
        batched: ``False`` replaces the vmapped backward pass by one plain pass per output.

    ``chunk_size`` is the number of kernel outputs per batched backward pass.
    """
    eigs: dict[str, LayerEig] = {}
    paths: dict[str, str] = {}
    groups = _groups(problem, max_memory)
    for group in groups:
        sub = _subproblem(problem, group)
        jac = per_sample_jacobian_blocks(
            sub, chunk_size=chunk_size, use_hooks=use_hooks, batched=batched, sample_major=False
        )
        got, path = jacobian_eigs(jac, eig=eig, tol=tol, maxiter=maxiter, generator=generator)
        del jac
        eigs.update(got)
        paths.update(path)
    steps = sum(e.iterations for e in eigs.values())
    return MethodResult(
        eigs={k: eigs[k] for k in problem.layers},
        backward_passes=len(groups) * problem.num_outputs,
        matvecs=steps,
        extra={"groups": len(groups), "path": paths, "chunk_size": chunk_size},
    )


@register_method("lanczos", cost=lanczos_cost)
def lanczos_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    mode: str = "auto",
) -> MethodResult:
    """Matrix-free batched Lanczos on every layer kernel (:class:`~f3ocus.ntk.matfree.LayerKernelOperator`).

    Options:
        mode: ``"auto"``, ``"jvp"`` or ``"vjp"`` (how $J u$ is computed; see the operator).

    ``chunk_size`` is the number of layers per vmapped pass; ``None`` picks the largest that fits
    ``max_memory`` (two parameter copies per layer).
    """
    check_choice("mode", mode, ("auto", "jvp", "vjp"))
    layers = len(problem.layers)
    if chunk_size is None and max_memory is not None:
        per_layer = 2 * sum(problem.layer_sizes().values()) * problem.itemsize
        chunk_size = max(1, min(layers, int(max_memory // max(per_layer, 1))))
    op = LayerKernelOperator(problem, chunk_size=chunk_size, mode=mode)
    v0 = torch.randn(
        layers, op.size, generator=generator, dtype=problem.dtype, device=_gen_device(generator)
    ).to(problem.device)
    results = lanczos_max_eig(op, v0, tol=tol, maxiter=maxiter)
    return MethodResult(
        eigs={layer: _layer_eig(r) for layer, r in zip(problem.layers, results, strict=True)},
        backward_passes=op.backward_passes,
        matvecs=op.matvecs,
        extra={"mode": op.mode, "chunk_size": op.chunk_size},
    )
