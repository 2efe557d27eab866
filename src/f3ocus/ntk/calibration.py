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

LANCZOS_STEPS = 13
"""Lanczos steps per layer that the cost models expect.

The median over the blocks of the small ViT at $N = 16$ and the default float32 ``tol`` (1e-4), with
the Linear weights solved by factored Lanczos (``eig="lanczos"``): 10, 11, 13, 14, 12, 15 steps for
blocks 0-5 (median 12.5; the head, of low rank, takes 4). At 13 the cost model prefers the factored
Gram for those blocks by a factor 0.86, and so does the clock: in the same run the default (Gram)
path cost 11.9x one forward+backward and every layer by Lanczos 28.6x
(``python benchmarks/vit_small_ntk.py --n 16 --repeats 7``,
``benchmarks/results/ntk_cpu_vit_small_n16.json``, a 2-core CPU shared with other jobs).
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
"""Default ``tol`` in float32: the bound on the relative error of each layer's top eigenvalue.

The loosest power of ten at which stops on the second member of a close pair are rare: over 100
random starts each of nine spectra with top pairs 0.5-2% apart, a triple, a multiplicity, a cluster,
flat, ViT-like and geometric spectra, the relative error exceeded ``tol`` in 3 of 900 runs at 1e-4
(each a pair under 1% apart, so an error under 0.5%), in 28 at 1e-3 and 52 at 1e-2
(``benchmarks/lanczos_stopping.py``, ``benchmarks/results/lanczos_stopping.json``; the guarantee is in
:mod:`f3ocus.ntk.linalg`). On the small ViT at $N = 16$ it keeps the layer ranking of the dense
float64 reference (``benchmarks/results/ntk_cpu_vit_small_n16.json``) and on every case of the shared
test table (``tests/ntk/test_lanczos_accuracy.py``).
"""

DEFAULT_TOL_FLOAT64 = 1e-8
"""Default ``tol`` in float64 (reference-quality scores)."""
