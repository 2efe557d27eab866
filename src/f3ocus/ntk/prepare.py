r"""Argument validation for scoring: from ``(model, batch, layers, output_fn, kernel, ...)`` to an
:class:`~f3ocus.ntk.problem.NTKProblem`.

:func:`scoring_problem` checks every argument (the messages name the argument as the user wrote it,
show what arrived and say what to do), resolves the layers, fixes the compute dtype and device, runs
one forward pass to check the outputs, and yields the problem with the model in eval mode. On exit,
also on error, the model's training flags, ``requires_grad`` flags and ``.grad`` are restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import keystr, tree_flatten, tree_flatten_with_path, tree_map

from f3ocus._checks import check_choice, describe
from f3ocus.layers import resolve_layers
from f3ocus.ntk.coupling import coupling_probe
from f3ocus.ntk.problem import KERNELS, NTKProblem

__all__ = ["scoring_problem", "default_output_fn", "preserved_state"]


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
    probe: bool = True,
) -> Iterator[NTKProblem]:
    """Validate the scoring arguments and yield the :class:`NTKProblem`, with the model in eval mode.

    The arguments are those of :func:`ntk_layer_importance`; ``probe=False`` skips the check whether
    the outputs couple samples (:mod:`f3ocus.ntk.coupling`; then ``problem.coupled`` is ``None``). The
    model's state (training flags, ``requires_grad``, ``.grad``) is restored when the block exits,
    also on error.
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
    # inference mode would disable the autograd that every method needs; undo it for the scoring
    with torch.inference_mode(False):
        yield from _problem(model, batch, layers, output_fn, kernel, loss_fn, targets, dtype, probe)


def _problem(
    model: nn.Module,
    batch: Any,
    layers: Any,
    output_fn: Callable[[Any], Tensor] | None,
    kernel: str,
    loss_fn: Callable | None,
    targets: Any,
    dtype: torch.dtype | None,
    probe: bool = True,
) -> Iterator[NTKProblem]:
    args, kwargs = _split_batch(batch)
    n = _num_samples(args, kwargs)
    resolved = resolve_layers(model, layers)
    device, model_dtype = _model_device_dtype(model, resolved)
    compute = dtype or model_dtype

    def prepare(leaf: Any) -> Any:
        if isinstance(leaf, Tensor):
            leaf = leaf.to(device)
            if leaf.is_inference():  # made under torch.inference_mode: autograd needs a normal tensor
                leaf = leaf.clone()
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
        m, full = _check_outputs(problem, custom=output_fn is not None)
        coupled = coupling_probe(problem, full) if probe else None
        yield dataclasses.replace(problem, num_outputs=m, coupled=coupled)


def _check_outputs(problem: NTKProblem, *, custom: bool) -> tuple[int, Tensor]:
    """One forward pass without gradients; returns M, the kernel outputs per sample, and the outputs."""
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
        full = problem._kernel_outputs(out, problem.targets, n)
        return int(full.shape[1]), full
