"""Every calibration constant of the scoring cost models, in one place, with the run it comes from.

The cost models (one per method, in :mod:`f3ocus.ntk.methods`) count multiply-adds in units of one
forward pass (:func:`f3ocus.ntk.problem.forward_flops`) and weigh operations that run slower than a
GEMM. Only the ordering between methods and paths matters, so the weights are rounded. They were
measured with ``benchmarks/bench_ntk.py`` and ``benchmarks/breakdown_ntk.py`` on the small ViT (depth
6, dim 192, N=16, C=10) on a 2-core CPU (``benchmarks/results/ntk_cpu.json``,
``benchmarks/results/ntk_breakdown_cpu.json``).
"""

from __future__ import annotations

__all__ = [
    "CPU_MEMORY_BUDGET",
    "DEFAULT_TOL_FLOAT32",
    "DEFAULT_TOL_FLOAT64",
    "GEMV_WEIGHT",
    "GRAM_CHUNK_CPU",
    "GRAM_CHUNK_GPU",
    "LANCZOS_STEPS",
    "FACTORED_LANCZOS_WEIGHT",
    "ROWS_WEIGHT",
]

LANCZOS_STEPS = 15
"""Lanczos steps per layer that the cost models expect.

9-15 per block on the ViT benchmark at the default float32 tolerance (``stats["iterations"]`` in
``benchmarks/results/ntk_cpu.json``); with the eigenvalue-error stopping rule of
:func:`f3ocus.ntk.linalg.lanczos_max_eig` it is at the low end.
"""

ROWS_WEIGHT = 2.0
"""Per-sample contractions that write every Jacobian row to fresh memory ran at 54 GFLOPS in the
breakdown, against 160-170 GFLOPS for the Grams' GEMMs: weighted 2x."""

GEMV_WEIGHT = 4.0
"""A Lanczos step on stored rows is a pair of GEMVs (memory-bound): weighted 4x a GEMM multiply-add."""

FACTORED_LANCZOS_WEIGHT = 1.5
"""Factored Lanczos products ran at 80-95 GFLOPS against 160-170 for the Grams (breakdown): 1.5x."""

GRAM_CHUNK_CPU = 2**20
"""Elements of Jacobian rows built at a time for a factored Gram on a CPU (about 4 MB: stays in cache)."""

GRAM_CHUNK_GPU = 2**26
"""The same on a GPU, which wants few, large GEMMs."""

CPU_MEMORY_BUDGET = 4 * 2**30
"""Default ``max_memory`` on a CPU (bytes); on CUDA the default is half the free memory."""

DEFAULT_TOL_FLOAT32 = 1e-4
"""Default ``tol`` (relative Lanczos residual) in float32.

On the hardest spectrum of ``tests/ntk/test_lanczos.py`` (top pair 2% apart, then 0.93, 0.89) every
one of 40 random starts finds the top eigenvalue at this residual, in 15.6 steps on average; an
eigenvalue-error stopping rule needs 1e-6 for the same (15.4 steps) and still missed pairs 1.5%
apart (see :mod:`f3ocus.ntk.linalg`).
"""

DEFAULT_TOL_FLOAT64 = 1e-8
"""Default ``tol`` in float64 (reference-quality scores)."""
