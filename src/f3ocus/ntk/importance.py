r"""``ntk_layer_importance``: score every layer of a model by its layer-wise empirical NTK.

For a batch of $N$ samples with kernel outputs $F(\theta) \in \mathbb{R}^{N \times M}$ and the
trainable parameters $\theta_l$ of layer $l$,

$$ J_l = \frac{\partial\, \mathrm{vec}\, F}{\partial \theta_l}, \qquad \Theta_l = J_l J_l^\top,
   \qquad \text{score}_l = \lambda_{\max}(\Theta_l) = \sigma_{\max}(J_l)^2 , $$

(F³OCUS, Saha et al., CVPR 2025; the empirical NTK of Jacot et al., NeurIPS 2018). This module
validates the arguments, builds the :class:`~f3ocus.ntk.problem.NTKProblem`, picks a method from the
registry (:mod:`f3ocus.ntk.methods`), runs it with the model in eval mode, restores the model's state,
and returns a :class:`~f3ocus.LayerScores`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map

import f3ocus.ntk.fast  # noqa: F401  (registers "persample" and "lanczos")
import f3ocus.ntk.reference  # noqa: F401  (registers "dense")
from f3ocus._checks import check_choice, check_int, check_positive_float, describe
from f3ocus.errors import NotConvergedError
from f3ocus.layers import resolve_layers
from f3ocus.ntk.methods import Cost, MethodEntry, available_methods, get_method
from f3ocus.ntk.problem import KERNELS, NTKProblem
from f3ocus.scores import LayerScores

__all__ = ["ntk_layer_importance", "scoring_problem", "default_output_fn", "preserved_state"]

_CPU_MEMORY_BUDGET = 4 * 2**30


def default_output_fn(output: Any) -> Tensor:
    """The tensor whose Jacobian is taken, from common model outputs.

    A Tensor is returned as is; an object with a tensor ``.logits`` (Hugging Face ``ModelOutput``) gives
    ``.logits``; a Mapping gives ``output["logits"]``; a tuple or list gives its first element.

    Raises:
        TypeError: None of these applies; pass ``output_fn=`` to :func:`ntk_layer_importance`.
    """
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping) and isinstance(output.get("logits"), Tensor):
        return output["logits"]
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if isinstance(output, Mapping):
        what = f"a {type(output).__name__} with keys {list(output)[:8]}"
    elif isinstance(output, (tuple, list)):
        what = f"a {type(output).__name__} of {[type(x).__name__ for x in output[:8]]}"
    else:
        what = describe(output)
    raise TypeError(
        f"the model returned {what}, which is not a tensor and has no tensor 'logits' "
        "(attribute or key) or first element. Pass output_fn=... that maps the model's output to the "
        "(N, ...) tensor to score, e.g. output_fn=lambda out: out['scores']."
    )


@contextlib.contextmanager
def preserved_state(model: nn.Module) -> Iterator[None]:
    """Run the body with ``model`` in eval mode; afterwards (also on error) restore exactly the training
    flag of every submodule and the ``requires_grad`` flag and ``.grad`` of every parameter."""
    modes = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, requires_grad, grad in params:
            if p.requires_grad != requires_grad:
                p.requires_grad_(requires_grad)
            if p.grad is not grad:
                p.grad = grad


def _split_batch(batch: Any) -> tuple[tuple, dict]:
    if isinstance(batch, Tensor):
        return (batch,), {}
    if isinstance(batch, (tuple, list)):
        return tuple(batch), {}
    if isinstance(batch, Mapping):
        bad = [k for k in batch if not isinstance(k, str)]
        if bad:
            raise TypeError(f"batch is a Mapping, so its keys must be str argument names; got {bad[0]!r}.")
        return (), dict(batch)
    raise TypeError(
        f"batch must be a Tensor (called as model(batch)), a tuple/list (model(*batch)) or a Mapping "
        f"(model(**batch)), got {describe(batch)}."
    )


def _num_samples(args: tuple, kwargs: dict) -> int:
    for leaf in tree_flatten((args, kwargs))[0]:
        if isinstance(leaf, Tensor) and leaf.dim() >= 1:
            if leaf.shape[0] == 0:
                raise ValueError(
                    f"batch is empty: its first tensor is {describe(leaf)} with 0 samples. Pass at least one sample."
                )
            return int(leaf.shape[0])
    raise TypeError(
        f"batch holds no tensor with a batch dimension (got {describe((args, kwargs))}). "
        "Pass the model's input tensors, leading dimension = number of samples."
    )


def _check_finite(tree: Any, argname: str) -> None:
    for path, leaf in tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, Tensor) and leaf.is_floating_point() and not torch.isfinite(leaf).all():
            bad = int((~torch.isfinite(leaf)).sum())
            raise ValueError(
                f"{argname}{keystr(path)} holds {bad} NaN/Inf value(s) ({describe(leaf)}). "
                "The kernel of non-finite inputs is undefined: clean or drop those samples."
            )


def _model_device_dtype(model: nn.Module, layers: dict[str, list[str]]) -> tuple[torch.device, torch.dtype]:
    params = dict(model.named_parameters())
    first = params[next(iter(layers.values()))[0]]
    dtype = first.dtype if first.is_floating_point() else torch.float32
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return first.device, dtype


@contextlib.contextmanager
def scoring_problem(
    model: nn.Module,
    batch: Any,
    *,
    layers: Any = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    kernel: str = "output",
    loss_fn: Callable | None = None,
    targets: Any = None,
    dtype: torch.dtype | None = None,
) -> Iterator[NTKProblem]:
    """Validate the scoring arguments and yield the :class:`NTKProblem`, with the model in eval mode.

    The arguments are those of :func:`ntk_layer_importance`. The model's state (training flags,
    ``requires_grad``, ``.grad``) is restored when the block exits, also on error.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}.")
    check_choice("kernel", kernel, KERNELS)
    if kernel == "loss":
        missing = [name for name, v in (("loss_fn", loss_fn), ("targets", targets)) if v is None]
        if missing:
            raise ValueError(
                f"kernel='loss' needs loss_fn and targets, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing. Pass e.g. loss_fn=lambda out, y: "
                "torch.nn.functional.cross_entropy(out, y, reduction='none'), targets=y."
            )
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {describe(loss_fn)}.")
    elif loss_fn is not None or targets is not None:
        raise ValueError(
            f"loss_fn and targets are only used with kernel='loss', but kernel={kernel!r}. "
            "Pass kernel='loss' or drop them."
        )
    if output_fn is not None and not callable(output_fn):
        raise TypeError(f"output_fn must be callable, got {describe(output_fn)}.")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {describe(dtype)}.")
    args, kwargs = _split_batch(batch)
    n = _num_samples(args, kwargs)
    resolved = resolve_layers(model, layers)
    device, model_dtype = _model_device_dtype(model, resolved)
    compute = dtype or model_dtype

    def prepare(leaf: Any) -> Any:
        if isinstance(leaf, Tensor):
            leaf = leaf.to(device)
            if leaf.is_floating_point():
                leaf = leaf.to(compute)
        return leaf

    args, kwargs = tree_map(prepare, args), tree_map(prepare, kwargs)
    _check_finite(args[0] if isinstance(batch, Tensor) else (kwargs if kwargs else args), "batch")
    if kernel == "loss":
        targets = tree_map(prepare, targets)
        _check_finite(targets, "targets")
        leaves = [x for x in tree_flatten(targets)[0] if isinstance(x, Tensor)]
        if not leaves or any(x.dim() == 0 or x.shape[0] != n for x in leaves):
            raise ValueError(
                f"targets must hold tensors with leading dimension {n} (the batch size), got {describe(targets)}."
            )
    with preserved_state(model):
        problem = NTKProblem(
            model=model,
            args=args,
            kwargs=kwargs,
            layers=resolved,
            output_fn=output_fn or default_output_fn,
            kernel=kernel,
            loss_fn=loss_fn,
            targets=targets,
            num_samples=n,
            num_outputs=1,
            dtype=compute,
            device=device,
        )
        m = _check_outputs(problem, custom=output_fn is not None)
        yield dataclasses.replace(problem, num_outputs=m)


def _check_outputs(problem: NTKProblem, *, custom: bool) -> int:
    """One forward pass without gradients; returns M, the kernel outputs per sample."""
    n = problem.num_samples
    with torch.no_grad():
        out = problem._call(problem.layer_params(), problem.args, problem.kwargs)
        y = problem.output_fn(out)
        what = "output_fn(model output)" if custom else "the model output"
        if not isinstance(y, Tensor):
            raise TypeError(f"output_fn must return a tensor, got {describe(y)}.")
        if not y.is_floating_point():
            raise TypeError(f"{what} must be a floating tensor, got {describe(y)}.")
        if y.dim() == 0 or y.shape[0] != n:
            raise ValueError(
                f"{what} must have leading dimension {n} (the batch size), got {describe(y)}. "
                "Pass output_fn=... returning one row per sample."
            )
        if not torch.isfinite(y).all():
            raise ValueError(
                f"{what} holds NaN/Inf values ({describe(y)}); the kernel is undefined. Check the model "
                "and the batch (e.g. a forward pass in eval mode on these inputs)."
            )
        if problem.kernel == "loss":
            loss = problem.loss_fn(y, problem.targets)
            if not isinstance(loss, Tensor) or loss.numel() != n:
                raise ValueError(
                    f"loss_fn must return one loss per sample ({n} values), got {describe(loss)}. "
                    "Use an unreduced loss, e.g. reduction='none'."
                )
            if not torch.isfinite(loss).all():
                raise ValueError("loss_fn returned NaN/Inf losses; check loss_fn and targets.")
            return 1
        return 1 if problem.kernel == "sum" else int(y[0].numel())


def _default_max_memory(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.5 * free)
    return _CPU_MEMORY_BUDGET


def _choose(problem: NTKProblem, max_memory: int) -> tuple[MethodEntry, dict[str, list[float]]]:
    """The registered method with the fewest estimated flops whose memory fits ``max_memory``."""
    costs: dict[str, Cost] = {}
    for name in available_methods():
        entry = get_method(name)
        if entry.cost is not None:
            costs[name] = entry.cost(problem)
    fits = [name for name, c in costs.items() if c.memory <= max_memory]
    if fits:
        best = min(fits, key=lambda name: costs[name].flops)
    else:
        best = min(costs, key=lambda name: costs[name].memory)
    return get_method(best), {k: [c.flops, c.memory] for k, c in costs.items()}


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
            (the reference), ``"persample"``, ``"lanczos"``. ``"auto"`` takes the method with the
            fewest estimated flops whose estimated memory fits ``max_memory``.
        seed: Seeds the one ``torch.Generator`` (on the model's device) that iterative methods draw
            start vectors from. ``None``: a fresh random seed.
        tol: Iterative methods stop when the relative residual $\lVert \Theta_l v - \lambda v \rVert
            / \lambda \le$ ``tol`` (then $|\lambda - \lambda_{\max}| \le$ ``tol`` $\cdot \lambda$ for
            the converged Ritz value). Default: 1e-8 in float64, 1e-4 in float32.
        maxiter: Most iterations per layer of an iterative method (Lanczos is exact after $NM$).
        chunk_size: Samples or rows per vectorized batch; bounds memory. ``None``: the method decides.
        max_memory: Bytes the method may use beyond the model; steers ``"auto"`` and chunking.
            Default: half the free CUDA memory, or 4 GiB on CPU.
        dtype: Compute dtype override, e.g. ``torch.float64`` to score a float32 model more precisely.
        throw: If an iterative method does not converge for a layer, raise
            :class:`~f3ocus.errors.NotConvergedError` (``True``) or warn and return its best estimate.
        **options: Passed on to the method.

    Returns:
        A :class:`~f3ocus.LayerScores` in layer order; ``.num_params`` holds $P_l$ and ``.stats`` holds
        ``method``, ``kernel``, ``dtype``, ``device``, ``num_samples``, ``num_outputs``,
        ``backward_passes``, ``matvecs``, ``residuals``, ``iterations``, ``converged``, ``seconds`` (the
        method's wall time),
        ``peak_memory_bytes`` (CUDA only, else ``None``), ``was_training`` and the method's ``extra``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> scores = ntk_layer_importance(model, torch.randn(6, 4), seed=0)
        >>> list(scores), round(sum(scores.normalized("sum").values()), 12)
        (['0', '2'], 1.0)
    """
    if seed is not None:
        seed = check_int("seed", seed, low=0)
    if method != "auto":
        entry: MethodEntry | None = get_method(method)
    else:
        entry = None
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
        if entry is None:
            entry, costs = _choose(problem, budget)
        if tol is None:
            tol = 1e-8 if problem.dtype == torch.float64 else 1e-4
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
        seconds = time.perf_counter() - start
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
        "iterations": {k: int(e.iterations) for k, e in result.eigs.items()},
        "converged": not failed,
        "tol": tol,
        "seconds": seconds,
        "peak_memory_bytes": peak,
        "was_training": was_training,
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
