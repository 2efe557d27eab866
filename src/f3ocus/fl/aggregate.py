"""Masked federated averaging: each layer averaged over the clients that trained it.

FedAvg (McMahan et al., AISTATS 2017) averages every parameter over all clients, weighted by their
sample counts. Under a layer plan (F³OCUS, Saha et al., CVPR 2025) client $k$ trains and sends only its
layers $S_k$, so the average of parameter $\\theta$ runs over the clients that sent it:

$$
\\theta^{\\text{new}} \\;=\\;
\\begin{cases}
\\dfrac{\\sum_{k \\in C(\\theta)} n_k\\, \\theta_k}{\\sum_{k \\in C(\\theta)} n_k} & C(\\theta) \\neq \\emptyset, \\\\
\\theta^{\\text{global}} & C(\\theta) = \\emptyset,
\\end{cases}
\\qquad C(\\theta) = \\{k : \\theta \\in \\text{state}_k\\},
$$

with $n_k > 0$ the number of samples client $k$ trained on. A layer nobody trained keeps its value.
:func:`f3ocus.fl.reference.masked_fedavg_reference` computes the same by stacking dense arrays.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from f3ocus._checks import describe

__all__ = ["masked_fedavg", "check_client_states"]


def check_client_states(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    num_samples: Sequence[float],
) -> list[float]:
    """Validate the arguments of :func:`masked_fedavg`; return ``num_samples`` as floats.

    Raises:
        TypeError: a state is not a mapping of tensors, or a count is not a real number.
        ValueError: lengths differ, a count is not > 0, a client sends a name the global state lacks,
            or a shape differs from the global one.
    """
    if not isinstance(global_state, Mapping):
        raise TypeError(
            f"global_state must be a mapping name -> tensor (e.g. dict(model.named_parameters())), "
            f"got {describe(global_state)}."
        )
    if isinstance(client_states, Mapping) or not isinstance(client_states, Sequence):
        raise TypeError(
            f"client_states must be a list with one state dict per client, got {describe(client_states)}."
        )
    if isinstance(num_samples, str | bytes) or not isinstance(num_samples, Sequence):
        try:
            num_samples = list(num_samples)
        except TypeError:
            raise TypeError(
                f"num_samples must be a list with one count per client, got {describe(num_samples)}."
            ) from None
    if len(num_samples) != len(client_states):
        raise ValueError(
            f"num_samples has {len(num_samples)} entries but client_states has {len(client_states)}; "
            f"pass one sample count per client."
        )
    counts: list[float] = []
    for k, n in enumerate(num_samples):
        if isinstance(n, torch.Tensor) and n.numel() == 1:
            n = n.item()
        if isinstance(n, bool) or not isinstance(n, numbers.Real):
            raise TypeError(f"num_samples[{k}] must be a number, got {describe(n)}.")
        n = float(n)
        if not (math.isfinite(n) and n > 0):
            raise ValueError(
                f"num_samples[{k}] must be a finite number > 0, got {n!r}. "
                f"Leave a client that trained on nothing out of client_states."
            )
        counts.append(n)
    for k, state in enumerate(client_states):
        if not isinstance(state, Mapping):
            raise TypeError(f"client_states[{k}] must be a mapping name -> tensor, got {describe(state)}.")
        for name, value in state.items():
            if name not in global_state:
                raise ValueError(
                    f"client_states[{k}] contains {name!r}, which global_state lacks. "
                    f"Send only names of the global model (f3ocus.fl.layer_state produces them)."
                )
            if not isinstance(value, torch.Tensor):
                raise TypeError(
                    f"client_states[{k}][{name!r}] must be a torch.Tensor, got {describe(value)}."
                )
            if tuple(value.shape) != tuple(global_state[name].shape):
                raise ValueError(
                    f"client_states[{k}][{name!r}] has shape {tuple(value.shape)} but global_state has "
                    f"{tuple(global_state[name].shape)}."
                )
    return counts


def masked_fedavg(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    num_samples: Sequence[float],
) -> dict[str, torch.Tensor]:
    """Sample-weighted mean of each parameter over the clients whose state contains it.

    See the module docstring for the formula. Sums are accumulated in float64 (complex128 for complex
    tensors) and cast back to the global tensor's dtype and device; integer tensors (e.g. BatchNorm's
    ``num_batches_tracked``) are rounded to the nearest integer.

    Args:
        global_state: ``{name: tensor}`` of the current global model; names that no client sends are
            copied unchanged.
        client_states: One ``{name: tensor}`` per client, each with a subset of the global names (e.g.
            :func:`f3ocus.fl.layer_state` of the layers it trained).
        num_samples: One count $n_k > 0$ per client (its weight).

    Returns:
        A new ``{name: tensor}`` with the same names, order, dtypes and devices as ``global_state``.
        No tensor aliases an input.

    Raises:
        TypeError: see :func:`check_client_states`.
        ValueError: see :func:`check_client_states`.

    Examples:
        >>> import torch
        >>> g = {"a": torch.zeros(1), "b": torch.zeros(1)}
        >>> out = masked_fedavg(g, [{"a": torch.ones(1)}, {"a": torch.full((1,), 4.0)}], [3, 1])
        >>> out["a"].item(), out["b"].item()  # (3*1 + 1*4) / 4, and b kept
        (1.75, 0.0)
    """
    counts = check_client_states(global_state, client_states, num_samples)
    out: dict[str, torch.Tensor] = {}
    for name, g in global_state.items():
        num = None
        den = 0.0
        for state, n in zip(client_states, counts, strict=True):
            value = state.get(name)
            if value is None:
                continue
            acc_dtype = torch.complex128 if value.is_complex() or g.is_complex() else torch.float64
            term = value.detach().to(device=g.device, dtype=acc_dtype) * n
            num = term if num is None else num + term
            den += n
        if num is None:
            out[name] = g.detach().clone()
            continue
        mean = num / den
        if not (g.is_floating_point() or g.is_complex()):
            mean = torch.round(mean.real if mean.is_complex() else mean)
        out[name] = mean.to(dtype=g.dtype)
    return out
