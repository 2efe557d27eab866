r"""``layer_scores``: every layer score of the table under one call, returned as a :class:`~f3ocus.LayerScores`."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from f3ocus._checks import check_choice, check_int, describe
from f3ocus.scores import LayerScores
from f3ocus.scoring._engine import preserved_state
from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.registry import REDUCTIONS, ScoreSpec, get_score
from f3ocus.scoring.transforms import TRANSFORMS, make_nonnegative

__all__ = ["layer_scores"]


def layer_scores(
    model: nn.Module,
    batch: Any,
    score: str = "ntk",
    *,
    layers: Any = None,
    loss_fn: Callable | None = None,
    targets: Any = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    reduction: str | None = None,
    transform: str | None = None,
    seed: int | None = None,
    dtype: torch.dtype | None = None,
    **options: Any,
) -> LayerScores:
    r"""Score every layer of ``model`` with one score of the table (:func:`available_scores`).

    Each score is computed per layer over the layer's trainable parameters $\theta_l$ (``requires_grad``
    ones; frozen parameters and buffers are constants). Loss-based scores use the batch-mean loss
    $L = \frac1N \sum_n \ell_n$ with $\ell$ = ``loss_fn(output, targets)``, one entry per sample; per-sample
    scores read $\nabla_{\theta_l} \ell_n$.

    | ``score`` | $s_l$ | default reduction | needs |
    | --- | --- | --- | --- |
    | ``"ntk"`` | $\lambda_{\max}(J_l J_l^\top)$ | -- | batch |
    | ``"grad_norm"`` | $\lVert g_l \rVert$ | sum | loss |
    | ``"rgn"`` | $\lVert g_l \rVert / \lVert \theta_l \rVert$ | sum (= mean) | loss |
    | ``"snr"`` | $\mathrm{mean}_i\, \lvert \bar g_i \rvert / \sigma_i$ | mean | loss, $N \ge 2$ |
    | ``"fisher"`` | $\sum_i \frac1N \sum_n g_{n,i}^2$ | sum | loss |
    | ``"snip"`` | $\sum_i \lvert \theta_i g_i \rvert$ | sum | loss |
    | ``"grasp"`` | $-\sum_i \theta_i (H g)_i$ (signed) | sum | loss |
    | ``"gradflow"`` | $\sum_i \lvert \theta_i (H g)_i \rvert$ | sum | loss |
    | ``"synflow"`` | $\sum_i \lvert \theta_i\, \partial R / \partial \theta_i \rvert$ | sum | input shapes |
    | ``"magnitude"`` | $\mathrm{mean}_i \lvert \theta_i \rvert$ | mean | nothing |
    | ``"random"`` | $U[0, 1)$ | -- | nothing |

    The model runs in **eval mode**; its parameters are never written, and its training flags,
    ``requires_grad`` flags and ``.grad`` are restored afterwards, also on error.

    Args:
        model: The model (CPU or CUDA; float16/bfloat16 models are scored in float32).
        batch: A Tensor (``model(batch)``), a tuple/list (``model(*batch)``) or a Mapping
            (``model(**batch)``); ``None`` is allowed for scores that need nothing.
        score: A registered score name.
        layers: ``None`` (automatic), module names, or a mapping layer -> names; see
            :func:`f3ocus.resolve_layers`.
        loss_fn: ``loss_fn(output, targets)`` -> ``(N,)`` per-sample losses (an unreduced loss, e.g.
            ``reduction="none"``). Needed by the loss scores; the others ignore it (``"ntk"`` then uses
            its loss kernel).
        targets: The targets, leading dimension $N$.
        output_fn: Model output -> the ``(N, ...)`` tensor that ``loss_fn`` (and ``"ntk"``, ``"synflow"``)
            read. Default: a Tensor, ``.logits``, ``["logits"]`` or the first element of a tuple.
        reduction: ``"sum"`` or ``"mean"`` over the layer's scalars; ``None`` keeps the score's default.
            Refused by ``"ntk"`` and ``"random"``.
        transform: ``None``, or a transform of :func:`f3ocus.scoring.make_nonnegative` (``"shift"``,
            ``"rank"``, ``"abs"``, ``"clip"``) applied to the result, e.g. for the signed ``"grasp"``.
        seed: Seeds the call's one generator (``"random"``, and ``"ntk"``'s iterative methods).
        dtype: Compute dtype override, e.g. ``torch.float64``.
        **options: Options of the score (``eps`` of ``"rgn"``/``"snr"``; ``kernel``, ``method``, ... of
            ``"ntk"``).

    Returns:
        A :class:`~f3ocus.LayerScores` in layer order with ``num_params`` and ``stats``: ``score``,
        ``reduction``, ``signed``, ``needs``, ``num_samples``, ``dtype``, ``device``, ``backward_passes``,
        ``seconds``, ``was_training``, ``seed`` (and ``ntk``: the stats of ``ntk_layer_importance``).

    Example:
        >>> import torch
        >>> import torch.nn.functional as F
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        >>> x, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
        >>> ce = lambda out, y: F.cross_entropy(out, y, reduction="none")
        >>> s = layer_scores(model, x, "fisher", loss_fn=ce, targets=y)
        >>> list(s), s.stats["reduction"]
        (['0', '2'], 'sum')
    """
    spec = get_score(score)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {describe(model)}.")
    reduction = _check_reduction(spec, reduction)
    if transform is not None:
        check_choice("transform", transform, TRANSFORMS)
    if seed is not None:
        seed = check_int("seed", seed, low=0)
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype such as torch.float64, got {describe(dtype)}.")
    _check_needs(spec, batch, loss_fn, targets)
    _check_options(spec, options)
    was_training = model.training
    ctx = ScoreContext(
        model=model,
        batch=batch,
        layers_arg=layers,
        output_fn=output_fn,
        loss_fn=loss_fn,
        targets=targets,
        dtype=dtype,
        needs=spec.needs,
        reduction=reduction,
        seed=seed,
        generator=np.random.default_rng(seed),
        options=dict(options),
    )
    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(model), ctx._stack:
        if spec.min_samples > 1 and ctx.num_samples < spec.min_samples:
            raise ValueError(
                f"score={spec.name!r} needs at least {spec.min_samples} samples, but batch holds "
                f"{ctx.num_samples}. Pass a larger batch."
            )
        result = spec.fn(ctx, **options)
        if isinstance(result, LayerScores) and result.num_params is not None:
            sizes = result.num_params
        else:
            sizes = ctx.layer_sizes()
            _check_layers(spec, result, ctx.layers)
        num_samples, compute, device = _where(ctx)
    seconds = time.perf_counter() - start
    values = _check_values(spec, result)
    stats = {
        "score": spec.name,
        "reduction": reduction,
        "signed": spec.signed,
        "needs": spec.needs,
        "num_samples": num_samples,
        "dtype": compute,
        "device": device,
        "backward_passes": int(ctx.stats.get("backward_passes", 0)),
        "seconds": seconds,
        "was_training": was_training,
        "seed": seed,
        **{k: v for k, v in ctx.stats.items() if k != "backward_passes"},
    }
    scores = LayerScores(values, sizes, stats)
    return make_nonnegative(scores, transform) if transform is not None else scores


def _where(ctx: ScoreContext) -> tuple[int | None, str | None, str | None]:
    """``(num_samples, dtype, device)`` of the run, without building anything new."""
    problem = ctx._cache.get("problem")
    if problem is not None:
        return problem.num_samples, str(problem.dtype).removeprefix("torch."), str(problem.device)
    if "ntk" in ctx.stats:
        ntk = ctx.stats["ntk"]
        return ntk.get("num_samples"), ntk.get("dtype"), ntk.get("device")
    first = next(iter(ctx._cache.get("params", {}).values()), None)
    if first is None:
        return None, None, None
    return None, str(first.dtype).removeprefix("torch."), str(first.device)


def _check_reduction(spec: ScoreSpec, reduction: Any) -> str | None:
    if reduction is None:
        return spec.reduction
    if spec.reduction is None:
        raise ValueError(
            f"score={spec.name!r} has no per-parameter form, so reduction={reduction!r} does not apply. "
            "Drop reduction=."
        )
    return check_choice("reduction", reduction, REDUCTIONS)


def _check_needs(spec: ScoreSpec, batch: Any, loss_fn: Any, targets: Any) -> None:
    if spec.needs != "nothing" and batch is None:
        raise ValueError(
            f"score={spec.name!r} reads the batch, but batch=None. Pass the model's inputs "
            "(a Tensor, a tuple or a Mapping, leading dimension = number of samples)."
        )
    if spec.needs == "loss":
        missing = [name for name, v in (("loss_fn", loss_fn), ("targets", targets)) if v is None]
        if missing:
            raise ValueError(
                f"score={spec.name!r} needs a per-sample loss, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} missing (the model's own output is not a loss). "
                "Pass e.g. loss_fn=lambda out, y: torch.nn.functional.cross_entropy(out, y, "
                "reduction='none'), targets=y; or use a score that needs no loss: 'ntk', 'synflow', "
                "'magnitude', 'random'."
            )
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(output, targets), got {describe(loss_fn)}.")


def _check_options(spec: ScoreSpec, options: Mapping[str, Any]) -> None:
    try:
        params = inspect.signature(spec.fn).parameters
    except (TypeError, ValueError):  # no signature: let the call decide
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    known = [name for i, name in enumerate(params) if i > 0]
    unknown = [k for k in options if k not in known]
    if unknown:
        takes = f"its options are {', '.join(map(repr, known))}" if known else "it takes no options"
        raise TypeError(f"score={spec.name!r} got unknown option(s) {', '.join(map(repr, unknown))}; {takes}.")


def _check_layers(spec: ScoreSpec, result: Any, layers: Mapping[str, list[str]]) -> None:
    if not isinstance(result, Mapping) or list(result) != list(layers):
        got = list(result) if isinstance(result, Mapping) else describe(result)
        raise RuntimeError(
            f"score {spec.name!r} must return a mapping with one value per layer, in order {list(layers)}; got {got}."
        )


def _check_values(spec: ScoreSpec, result: Mapping[str, Any]) -> dict[str, float]:
    values = {k: float(v) for k, v in result.items()}
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise ValueError(
            f"score={spec.name!r} is not finite for layer(s) {bad}. Check loss_fn and targets, or pass "
            "dtype=torch.float64."
        )
    if not spec.signed and any(v < 0 for v in values.values()):
        raise RuntimeError(f"score {spec.name!r} is registered as unsigned but returned negative values: {values}.")
    return values
