r"""``ntk_layer_importance``: score every layer of a model by its layer-wise empirical NTK.

For a batch of $N$ samples with kernel outputs $F(\theta) \in \mathbb{R}^{N \times M}$ and the
trainable parameters $\theta_l$ of layer $l$,

$$ J_l = \frac{\partial\, \mathrm{vec}\, F}{\partial \theta_l}, \qquad \Theta_l = J_l J_l^\top,
   \qquad \text{score}_l = \lambda_{\max}(\Theta_l) = \sigma_{\max}(J_l)^2 , $$

(F³OCUS, Saha et al., CVPR 2025; the empirical NTK of Jacot et al., NeurIPS 2018). The driver
validates the arguments and builds the :class:`~f3ocus.ntk.problem.NTKProblem`
(:func:`~f3ocus.ntk.prepare.scoring_problem`), picks a method from the registry (:mod:`f3ocus.ntk.methods`),
runs it with the model in eval mode, restores the model's state,
and returns a :class:`~f3ocus.LayerScores`.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import f3ocus.ntk.methods  # noqa: F401  (registers the methods)
from f3ocus._checks import check_int, check_positive_float
from f3ocus.errors import NotConvergedError
from f3ocus.ntk.calibration import CPU_MEMORY_BUDGET, DEFAULT_TOL_FLOAT32, DEFAULT_TOL_FLOAT64
from f3ocus.ntk.coupling import COUPLED_HINT
from f3ocus.ntk.prepare import scoring_problem
from f3ocus.ntk.problem import NTKProblem
from f3ocus.ntk.registry import Cost, MethodEntry, check_options, get_method
from f3ocus.scores import LayerScores

__all__ = ["ntk_layer_importance", "scoring_problem"]

logger = logging.getLogger("f3ocus.ntk")

def _default_max_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    return CPU_MEMORY_BUDGET


def _choose(
    problem: NTKProblem, max_memory: int, candidates: list[str]
) -> tuple[MethodEntry, dict[str, list[float]]]:
    """The candidate method with the fewest estimated flops whose memory fits ``max_memory``."""
    costs: dict[str, Cost] = {}
    for name in candidates:
        entry = get_method(name)
        if entry.cost is not None:
            costs[name] = entry.estimate(problem, max_memory)
    fits = [name for name, c in costs.items() if c.memory <= max_memory]
    if fits:
        best = min(fits, key=lambda name: costs[name].flops)
    else:
        best = min(costs, key=lambda name: costs[name].memory)
    return get_method(best), {k: [c.flops, c.memory] for k, c in costs.items()}


def _exact_for_coupled(problem: NTKProblem, entry: MethodEntry | None, candidates: list[str]) -> list[str]:
    """The candidates that stay exact when samples are coupled; raise if there are none."""
    exact = [name for name in candidates if get_method(name).coupled]
    if entry is not None and not entry.coupled:
        raise ValueError(
            f"method={entry.name!r} assumes that each sample's outputs depend on that sample alone, but "
            f"these outputs couple the samples of the batch: {problem.coupled}. Its scores would be wrong: "
            f"{COUPLED_HINT}."
        )
    if not exact:
        raise ValueError(
            f"these outputs couple the samples of the batch ({problem.coupled}), and none of the methods "
            f"that take the given options ({candidates}) is exact for them: {COUPLED_HINT}."
        )
    return exact


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def ntk_layer_importance(
    model: nn.Module,
    batch: Any,
    *,
    layers: Any = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    kernel: str = "output",
    loss_fn: Callable | None = None,
    targets: Any = None,
    method: str = "auto",
    seed: int | None = None,
    tol: float | None = None,
    maxiter: int = 500,
    chunk_size: int | None = None,
    max_memory: int | None = None,
    dtype: torch.dtype | None = None,
    throw: bool = True,
    **options: Any,
) -> LayerScores:
    r"""Score every layer by the top eigenvalue of its layer-wise empirical NTK.

    $$ \text{score}_l = \lambda_{\max}(\Theta_l), \quad \Theta_l = J_l J_l^\top, \quad
       J_l = \partial\, \mathrm{vec}\, F(\theta) / \partial \theta_l , $$

    with $F$ the ``(N, M)`` kernel outputs: the flattened model outputs (``kernel="output"``,
    $\Theta_l$ is $NC \times NC$), their per-sample sums (``"sum"``, $N \times N$) or the per-sample
    losses (``"loss"``, $N \times N$). Saha et al., "F³OCUS", CVPR 2025.

    Progress (the method chosen, layer groups, Lanczos steps) goes to the ``"f3ocus.ntk"`` logger at
    level INFO: ``logging.basicConfig(level=logging.INFO)`` shows it.

    The model is evaluated in **eval mode** (dropout off, BatchNorm on its running statistics), so the
    kernel is deterministic; its training flags, ``requires_grad`` flags and ``.grad`` are restored
    afterwards, also when an error is raised. Parameters are never written.

    Args:
        model: The model, on its device (CPU or CUDA), in float32/float64 (float16/bfloat16 models are
            scored with float32 arithmetic).
        batch: A Tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a Mapping
            (``model(**batch)``). Tensors are moved to the model's device; floating ones are cast to
            the compute dtype. A tensor whose leading dimension is not $N$ is shared by all samples.
        layers: ``None`` (automatic), a sequence of module names or a mapping layer name -> module or
            parameter name(s); see :func:`f3ocus.resolve_layers`. Only ``requires_grad=True``
            parameters count.
        output_fn: Model output -> the ``(N, ...)`` tensor to score. The default takes a Tensor,
            ``.logits``, ``["logits"]`` or the first element of a tuple.
        kernel: ``"output"``, ``"sum"`` or ``"loss"``.
        loss_fn: ``kernel="loss"`` only: ``loss_fn(output, targets)`` -> ``(N,)`` per-sample losses.
        targets: ``kernel="loss"`` only: the targets, leading dimension $N$.
        method: ``"auto"`` or a registered method (:func:`f3ocus.ntk.available_methods`): ``"dense"``
            (the reference), ``"persample"``, ``"lanczos"``, ``"factored"``. ``"auto"`` takes the method
            with the fewest estimated flops whose estimated memory fits ``max_memory``.
        seed: Seeds the one ``torch.Generator`` (on the model's device) that iterative methods draw
            start vectors from. ``None``: a fresh random seed.
        tol: Bound on the relative error of each $\lambda_{\max}$ for iterative methods: they stop
            when $\lVert \Theta_l v - \lambda v \rVert \le$ ``tol`` $\cdot \lambda$, and then
            $0 \le \lambda_{\max} - \lambda \le$ ``tol`` $\cdot \lambda$ unless the random start
            missed the top eigenvector (the exact guarantee: :mod:`f3ocus.ntk.linalg`).
            ``stats["errors"]`` holds each layer's estimated relative eigenvalue error (Kato-Temple).
            Default: 1e-8 in float64, 1e-4 in float32 (:mod:`f3ocus.ntk.calibration`).
        maxiter: Most iterations per layer of an iterative method (Lanczos is exact after $NM$).
        chunk_size: Samples or rows per vectorized batch; bounds memory. ``None``: the method decides.
        max_memory: Bytes the method may use beyond the model; steers ``"auto"`` and chunking.
            Default: half the free CUDA memory, or 4 GiB on CPU.
        dtype: Compute dtype override, e.g. ``torch.float64`` to score a float32 model more precisely.
        throw: If an iterative method does not converge for a layer, raise
            :class:`~f3ocus.errors.NotConvergedError` (``True``) or warn and return its best estimate.
        **options: The method's own options (e.g. ``eig="gram"`` for ``"persample"``/``"factored"``,
            ``mode="vjp"`` for ``"lanczos"``). An option that the named method does not take, or (with
            ``method="auto"``) that no method takes, raises ``ValueError`` before any work; ``"auto"``
            only chooses among the methods that take every given option.

    Returns:
        A :class:`~f3ocus.LayerScores` in layer order; ``.num_params`` holds $P_l$ and ``.stats`` holds
        ``method``, ``kernel``, ``dtype``, ``device``, ``num_samples``, ``num_outputs``,
        ``backward_passes``, ``matvecs``, ``residuals``, ``iterations``, ``converged``, ``seconds`` (the
        wall time of the whole call), ``method_seconds`` (the method's share),
        ``peak_memory_bytes`` (CUDA only, else ``None``), ``was_training`` and the method's ``extra``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> scores = ntk_layer_importance(model, torch.randn(6, 4), seed=0)
        >>> list(scores), round(sum(scores.normalized("sum").values()), 12)
        (['0', '2'], 1.0)
    """
    called = time.perf_counter()
    if seed is not None:
        seed = check_int("seed", seed, low=0)
    if method != "auto":
        entry: MethodEntry | None = get_method(method)
    else:
        entry = None
    candidates = check_options(method, options)
    maxiter = check_int("maxiter", maxiter, low=1)
    if chunk_size is not None:
        chunk_size = check_int("chunk_size", chunk_size, low=1)
    if max_memory is not None:
        max_memory = check_int("max_memory", max_memory, low=1)
    if tol is not None:
        tol = check_positive_float("tol", tol)
    was_training = model.training if isinstance(model, nn.Module) else False
    with scoring_problem(
        model, batch, layers=layers, output_fn=output_fn, kernel=kernel, loss_fn=loss_fn, targets=targets, dtype=dtype
    ) as problem:
        budget = max_memory if max_memory is not None else _default_max_memory(problem.device)
        costs: dict[str, list[float]] = {}
        if problem.coupled is not None:
            candidates = _exact_for_coupled(problem, entry, candidates)
        if entry is None:
            entry, costs = _choose(problem, budget, candidates)
        if tol is None:
            tol = DEFAULT_TOL_FLOAT64 if problem.dtype == torch.float64 else DEFAULT_TOL_FLOAT32
        generator = torch.Generator(device=problem.device)
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(seed)
        cuda = problem.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(problem.device)
            torch.cuda.reset_peak_memory_stats(problem.device)
            base = torch.cuda.memory_allocated(problem.device)
        logger.info(
            "scoring %d layers of %d samples x %d outputs with method=%r%s",
            len(problem.layers), problem.num_samples, problem.num_outputs, entry.name,
            f" (outputs coupled: {problem.coupled})" if problem.coupled else "",
        )
        start = time.perf_counter()
        with torch.enable_grad():
            result = entry(
                problem,
                tol=tol,
                maxiter=maxiter,
                generator=generator,
                chunk_size=chunk_size,
                max_memory=budget,
                **options,
            )
        if cuda:
            torch.cuda.synchronize(problem.device)
        method_seconds = time.perf_counter() - start
        logger.info("method=%r done in %.2f s", entry.name, method_seconds)
        peak = torch.cuda.max_memory_allocated(problem.device) - base if cuda else None
        sizes = problem.layer_sizes()
    _check_result(result, problem, entry.name)
    failed = [k for k, e in result.eigs.items() if not e.converged]
    if failed:
        message = (
            f"method={entry.name!r} did not reach tol={tol:g} within maxiter={maxiter} for layer(s) "
            f"{failed}. Raise maxiter, loosen tol, or use method='dense'."
        )
        if throw:
            raise NotConvergedError(message)
        warnings.warn(message, RuntimeWarning, stacklevel=2)
    stats = {
        "method": entry.name,
        "kernel": problem.kernel,
        "dtype": str(problem.dtype).removeprefix("torch."),
        "device": str(problem.device),
        "num_samples": problem.num_samples,
        "num_outputs": problem.num_outputs,
        "backward_passes": int(result.backward_passes),
        "matvecs": int(result.matvecs),
        "residuals": {k: float(e.residual) for k, e in result.eigs.items()},
        "errors": {k: float(e.error) for k, e in result.eigs.items()},
        "iterations": {k: int(e.iterations) for k, e in result.eigs.items()},
        "converged": not failed,
        "tol": tol,
        "seconds": time.perf_counter() - called,
        "method_seconds": method_seconds,
        "peak_memory_bytes": peak,
        "was_training": was_training,
        "coupled": problem.coupled,
        "auto_costs": costs,
        "extra": _jsonable(result.extra),
    }
    return LayerScores({k: e.value for k, e in result.eigs.items()}, sizes, stats)


def _check_result(result: Any, problem: NTKProblem, name: str) -> None:
    if not hasattr(result, "eigs") or list(result.eigs) != list(problem.layers):
        raise RuntimeError(f"method {name!r} returned layers that differ from the problem's {list(problem.layers)}.")
    for layer, eig in result.eigs.items():
        if not math.isfinite(eig.value):
            raise RuntimeError(f"method {name!r} returned a non-finite eigenvalue for layer {layer!r}.")
