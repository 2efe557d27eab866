r"""The scoring problem: a model, a batch and the layer groups, bound for functional calls.

:class:`NTKProblem` is what every scoring method receives. It is built and validated by
:func:`f3ocus.ntk_layer_importance`; methods only read it. It turns the model into the pure function

$$ \theta \mapsto F(\theta) \in \mathbb{R}^{N \times M}, $$

whose row $n$ holds the $M$ *kernel outputs* of sample $n$:

- ``kernel="output"``: the flattened model output, $M = C$ (e.g. the number of classes);
- ``kernel="sum"``: the model output summed over its non-batch entries, $M = 1$;
- ``kernel="loss"``: the per-sample loss $\ell(f(x_n), y_n)$, $M = 1$.

The layer-wise empirical NTK of layer $l$ (trainable parameters $\theta_l$) is

$$ \Theta_l = J_l J_l^\top, \qquad J_l = \frac{\partial\, \mathrm{vec}\, F(\theta)}{\partial \theta_l}
   \in \mathbb{R}^{NM \times P_l}, $$

with rows ordered sample-major (row $n M + m$), and the importance of layer $l$ is
$\lambda_{\max}(\Theta_l)$ (Saha et al., "F³OCUS", CVPR 2025, after Jacot et al., NeurIPS 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

__all__ = ["KERNELS", "NTKProblem", "forward_flops"]

KERNELS = ("output", "sum", "loss")


def _is_batched(leaf: Any, n: int) -> bool:
    return isinstance(leaf, Tensor) and leaf.dim() >= 1 and leaf.shape[0] == n


@dataclass(frozen=True, eq=False)
class NTKProblem:
    """Everything a scoring method needs, already validated.

    Built by :func:`f3ocus.ntk_layer_importance` (which also restores the model's state afterwards);
    scoring methods only call the functions below and never change the model.

    Batch convention: a tensor leaf of ``args``, ``kwargs`` or ``targets`` whose leading dimension is
    ``num_samples`` is per-sample data; every other leaf (non-tensors, tensors of another leading size
    such as a shared attention mask) is shared by all samples.

    Attributes:
        model: The model, in eval mode, on ``device``.
        args: Positional model inputs (floating tensors already cast to ``dtype``).
        kwargs: Keyword model inputs.
        layers: Layer name -> names (as in ``model.named_parameters()``) of its trainable parameters,
            in model order. A tied parameter appears once, under its first name.
        output_fn: Model output -> the ``(N, ...)`` tensor whose Jacobian is taken.
        kernel: ``"output"``, ``"sum"`` or ``"loss"`` (see the module docstring).
        loss_fn: For ``kernel="loss"``: ``loss_fn(output, targets)`` -> ``(N,)`` per-sample losses.
        targets: For ``kernel="loss"``: the targets, leading dimension ``N``.
        num_samples: ``N``.
        num_outputs: ``M``, the number of kernel outputs per sample.
        dtype: The compute dtype: the model's floating dtype, float32 for float16/bfloat16 models.
        device: The model's device.
        coupled: Why the kernel outputs of a sample depend on other samples (the probe of
            :mod:`f3ocus.ntk.coupling`), or ``None``. Methods that assume independent samples refuse a
            coupled problem.
    """

    model: nn.Module
    args: tuple
    kwargs: dict
    layers: dict[str, list[str]]
    output_fn: Callable[[Any], Tensor]
    kernel: str
    loss_fn: Callable | None
    targets: Any
    num_samples: int
    num_outputs: int
    dtype: torch.dtype
    device: torch.device
    coupled: str | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    # -- parameters ------------------------------------------------------------------------------
    def _named_tensors(self) -> dict[str, Tensor]:
        if "tensors" not in self._cache:
            tensors: dict[str, Tensor] = {}
            for name, p in self.model.named_parameters():
                tensors[name] = p.detach()
            for name, b in self.model.named_buffers():
                tensors[name] = b.detach()
            for name, t in tensors.items():
                if t.is_floating_point() and t.dtype != self.dtype:
                    tensors[name] = t.to(self.dtype)
            self._cache["tensors"] = tensors
        return self._cache["tensors"]

    def layer_params(self) -> dict[str, Tensor]:
        """Every scored parameter (detached, in ``dtype``), parameter name -> tensor, in layer order."""
        tensors = self._named_tensors()
        return {name: tensors[name] for names in self.layers.values() for name in names}

    def other_tensors(self) -> dict[str, Tensor]:
        """All parameters and buffers that are not scored (detached; floating ones in ``dtype``)."""
        scored = {name for names in self.layers.values() for name in names}
        return {k: v for k, v in self._named_tensors().items() if k not in scored}

    def layer_sizes(self) -> dict[str, int]:
        """Layer name -> ``P_l``, its number of scored scalars."""
        tensors = self._named_tensors()
        return {layer: sum(tensors[n].numel() for n in names) for layer, names in self.layers.items()}

    @property
    def itemsize(self) -> int:
        """Bytes per element of ``dtype``."""
        return torch.empty((), dtype=self.dtype).element_size()

    # -- the function F(theta) -------------------------------------------------------------------
    def _kernel_outputs(self, out: Any, targets: Any, n: int) -> Tensor:
        y = self.output_fn(out)
        if self.kernel == "output":
            return y.reshape(n, -1)
        if self.kernel == "sum":
            return y.reshape(n, -1).sum(dim=1, keepdim=True)
        return self.loss_fn(y, targets).reshape(n, 1)

    def _call(self, params: Mapping[str, Tensor], args: tuple, kwargs: dict) -> Any:
        tensors = {**self.other_tensors(), **params}
        return functional_call(self.model, tensors, args, kwargs, tie_weights=True, strict=False)

    def outputs(self, params: Mapping[str, Tensor]) -> Tensor:
        """The ``(N, M)`` kernel outputs $F(\\theta)$ of the whole batch.

        Args:
            params: Parameter name -> tensor, overriding those parameters (typically
                :meth:`layer_params` or a subset of it, possibly wrapped by ``torch.func``).

        Returns:
            Row ``n`` holds the kernel outputs of sample ``n``: the flattened output (``"output"``),
            its sum (``"sum"``, shape ``(N, 1)``) or the per-sample loss (``"loss"``, ``(N, 1)``).
        """
        out = self._call(params, self.args, self.kwargs)
        return self._kernel_outputs(out, self.targets, self.num_samples)

    # -- per-sample view (torch.func.vmap) -------------------------------------------------------
    def per_sample_inputs(self) -> tuple[tuple, dict, Any]:
        """``(args, kwargs, targets)`` holding only the per-sample tensors (leading dim ``N``).

        Shared leaves are replaced by ``()`` (an empty pytree node, which ``vmap`` skips), so every
        leaf is a tensor and the result can be passed to ``torch.func.vmap`` with ``in_dims=0``;
        :meth:`sample_outputs` puts the shared leaves back.

        Some models cannot be vmapped over samples: Hugging Face masking utilities branch on the
        values of the attention mask (``mask.all()``), which ``vmap`` refuses. Index the leaves with
        ``tree_map(lambda x: x[i], ...)`` and call :meth:`sample_outputs` in a loop instead.
        """
        n = self.num_samples

        def keep(leaf: Any) -> Any:
            return leaf if _is_batched(leaf, n) else ()

        return (
            tree_map(keep, self.args),
            tree_map(keep, self.kwargs),
            tree_map(keep, self.targets),
        )

    def _merge(self, full: Any, sample: Any) -> Any:
        """Put one sample's leaves (batch dim re-added) back into the full pytree ``full``."""
        n = self.num_samples
        full_leaves, spec = tree_flatten(full)
        # ``sample`` has the same structure with shared leaves as (): flatten it against ``full``.
        sample_leaves = _flatten_like(sample, full, n)
        merged = [s.unsqueeze(0) if _is_batched(f, n) else f for f, s in zip(full_leaves, sample_leaves, strict=True)]
        return tree_unflatten(merged, spec)

    def sample_outputs(self, params: Mapping[str, Tensor], args_i: tuple, kwargs_i: dict, targets_i: Any) -> Tensor:
        """The ``(M,)`` kernel outputs of ONE sample, for ``vmap`` over :meth:`per_sample_inputs`.

        Example::

            args, kwargs, targets = problem.per_sample_inputs()
            rows = torch.func.vmap(lambda a, k, t: problem.sample_outputs(params, a, k, t))(
                args, kwargs, targets)            # (N, M), equal to problem.outputs(params)

        Args:
            params: Parameter overrides, as in :meth:`outputs`.
            args_i: One sample's positional inputs from :meth:`per_sample_inputs` (no batch
                dimension; it is added back here, so the model sees a batch of one).
            kwargs_i: That sample's keyword inputs, likewise.
            targets_i: That sample's targets, likewise.
        """
        args = self._merge(self.args, args_i)
        kwargs = self._merge(self.kwargs, kwargs_i)
        targets = self._merge(self.targets, targets_i)
        out = self._call(params, args, kwargs)
        return self._kernel_outputs(out, targets, 1)[0]


def _flatten_like(sample: Any, full: Any, n: int) -> list[Any]:
    """Leaves of ``sample`` aligned with the leaves of ``full`` (``None`` where ``full`` is shared)."""
    full_leaves, _ = tree_flatten(full)
    sample_leaves, _ = tree_flatten(sample)
    it = iter(sample_leaves)
    return [next(it) if _is_batched(f, n) else None for f in full_leaves]


def forward_flops(problem: NTKProblem) -> float:
    r"""Multiply-adds of one forward pass over the batch, counted on one sample (cached on the problem).

    Uses ``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention) on sample 0
    and scales by $N$; falls back to the parameter count bound $N P$ where counting fails. Unlike
    $N P$ it sees sequence lengths (a token-wise Linear costs $S \cdot P_l$ per sample).
    """
    if "forward_flops" not in problem._cache:
        total = sum(problem.layer_sizes().values())
        estimate = float(problem.num_samples * total)
        try:
            from torch.utils._pytree import tree_map
            from torch.utils.flop_counter import FlopCounterMode

            one = tree_map(lambda t: t[0], problem.per_sample_inputs())
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                problem.sample_outputs(problem.layer_params(), *one)
            estimate = max(estimate, problem.num_samples * counter.get_total_flops() / 2.0)
        except Exception:  # noqa: BLE001 - an estimate only; the bound above stands
            pass
        problem._cache["forward_flops"] = estimate
    return problem._cache["forward_flops"]
