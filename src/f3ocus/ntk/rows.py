r"""Per-sample, per-output Jacobian rows of every layer, from one forward pass and batched backward passes.

The layer Jacobian $J_l \in \mathbb{R}^{NM \times P_l}$ (row $nM + m$, see :mod:`f3ocus.ntk.problem`)
is assembled per parameter in one of two ways.

*Grad samplers* (:mod:`f3ocus.ntk.grad_samplers`), for parameters owned by modules of a registered type:
one forward pass with forward hooks records each module call's inputs $a$ and output $y$; then, for a
chunk of $K$ kernel outputs $m$ at a time, one backward pass batched over the chunk
(``torch.autograd.grad(..., is_grads_batched=True)``) returns the backprops
$G_m = \partial (\sum_n F_{nm}) / \partial y$ for every hooked call at once. Samples do not interact
(eval mode), so row $n$ of $G_m$ is $\partial F_{nm} / \partial y$ and the sampler turns
$(a, G)$ into the rows $\partial F_{nm} / \partial \theta$ locally (e.g. $\sum_s g_{s} a_s^\top$ for a
Linear layer). A module called several times, and a parameter owned by several modules (weight
tying), accumulate every call. Cost: one forward and $M$ backprop-only backward passes for the whole
model, plus one per-sample weight-gradient contraction per call, $O(NM \cdot S \cdot P)$.

*Taps* (:mod:`f3ocus.ntk.taps`), for raw parameters used through ordinary tensor operations, and,
where the taps cannot classify a use (data-dependent code such as ViLT's per-sample patch selection),
*owner rows*: the innermost module around the parameter that returns a batch-first tensor $y$ keeps
that output, its backprop $G_m$ comes from the same batched backward pass, and row $(n, m)$ is
$\partial \langle G_m[n], y_n \rangle / \partial p$, one backward pass through that module's part of
the graph per row (batched). Both are checked: their rows must sum over samples to the batch gradient.

*torch.func fallback*, for every other parameter (a raw ``nn.Parameter`` used in ``forward``,
``nn.MultiheadAttention.in_proj_weight``, custom modules): ``vmap`` over samples of ``jacrev`` of
:meth:`~f3ocus.ntk.problem.NTKProblem.sample_outputs` with respect to those parameters only. It is
exact for any model but costs another $M$ backward passes (or $NM$, for models that cannot be
``vmap``-ed over samples).

Both are tested against the dense reference :func:`f3ocus.ntk.reference.dense_layer_jacobians` in
float64, and against each other (``use_hooks=False`` sends every parameter to the fallback).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from f3ocus.ntk.grad_samplers import GradSampler, get_grad_sampler
from f3ocus.ntk.problem import NTKProblem
from f3ocus.ntk.taps import ParameterTaps

__all__ = ["JacobianPlan", "jacobian_plan", "per_sample_jacobian_blocks", "per_sample_jacobians"]


@dataclass(frozen=True)
class JacobianPlan:
    """Which parameters are served by grad samplers and which by the torch.func fallback.

    Attributes:
        hooked: parameter name -> list of ``(module, local name)`` owners (every owner has a sampler).
        fallback: parameter names for the torch.func path.
        modules: the distinct hooked modules, with their samplers.
    """

    hooked: dict[str, list[tuple[nn.Module, str]]]
    fallback: list[str]
    modules: list[tuple[nn.Module, GradSampler]] = field(default_factory=list)


def jacobian_plan(
    problem: NTKProblem, *, use_hooks: bool = True, exclude: frozenset[int] = frozenset()
) -> JacobianPlan:
    """Split the scored parameters between grad samplers and the fallback.

    A parameter is hooked when every module that owns it (directly, as in ``module._parameters``) has
    a registered sampler that supports its configuration; otherwise it goes to the fallback.
    Modules whose ``id`` is in ``exclude`` count as having no sampler. Parameters used outside their
    owners' ``forward`` (e.g. ``F.linear(x, self.fc.weight)`` in a parent module) are not detectable by
    hooks: use the fallback for such models (``use_hooks=False``).
    """
    scored = [name for names in problem.layers.values() for name in names]
    if not use_hooks:
        return JacobianPlan(hooked={}, fallback=scored)
    by_id = dict(problem.model.named_parameters())
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in _unique_modules(problem.model):
        for local, p in module._parameters.items():
            if p is not None:
                owners.setdefault(id(p), []).append((module, local))
    hooked: dict[str, list[tuple[nn.Module, str]]] = {}
    fallback: list[str] = []
    modules: dict[int, tuple[nn.Module, GradSampler]] = {}
    for name in scored:
        own = owners.get(id(by_id[name]), [])
        samplers = [None if id(m) in exclude else get_grad_sampler(m) for m, _ in own]
        if own and all(s is not None for s in samplers):
            hooked[name] = own
            for (m, _), s in zip(own, samplers, strict=True):
                modules[id(m)] = (m, s)
        else:
            fallback.append(name)
    return JacobianPlan(hooked=hooked, fallback=fallback, modules=list(modules.values()))


def per_sample_jacobians(
    problem: NTKProblem,
    *,
    chunk_size: int | None = None,
    use_hooks: bool = True,
    batched: bool = True,
) -> dict[str, Tensor]:
    """Every layer's Jacobian $J_l$ as an ``(N·M, P_l)`` matrix, from grad samplers and the fallback.

    Args:
        problem: the scoring problem.
        chunk_size: kernel outputs ``m`` per batched backward pass (and per fallback ``jacrev`` chunk);
            ``None`` does all ``M`` at once. Results do not depend on it.
        use_hooks: ``False`` computes every parameter with the torch.func fallback (for checking).
        batched: one backward pass vmapped over the chunk (``is_grads_batched``) if True, else one
            plain backward pass per output.

    Returns:
        Layer name -> $J_l$, in ``problem.layers`` order, rows sample-major (``n*M + m``), columns in
        the order of the layer's parameters, each flattened row-major (as in the dense reference).
    """
    blocks = per_sample_jacobian_blocks(problem, chunk_size=chunk_size, use_hooks=use_hooks, batched=batched)
    return {layer: torch.cat(parts, dim=1) for layer, parts in blocks.items()}


def per_sample_jacobian_blocks(
    problem: NTKProblem,
    *,
    chunk_size: int | None = None,
    use_hooks: bool = True,
    batched: bool = True,
    sample_major: bool = True,
) -> dict[str, list[Tensor]]:
    """Like :func:`per_sample_jacobians`, without concatenating: layer -> one ``(N·M, numel)`` block per parameter.

    $\\Theta_l = \\sum_p J_p J_p^\\top$ over the blocks, so nothing is copied into one big matrix.
    With ``sample_major=False`` the rows come output-major (row ``m*N + n``): the same kernel up to a
    symmetric permutation (same eigenvalues), and the layout the backward passes produce, so the blocks
    are views and no copy is made.
    """
    plan = jacobian_plan(problem, use_hooks=use_hooks)
    params = problem.layer_params()
    n, m = problem.num_samples, problem.num_outputs
    rows: dict[str, Tensor] = {}
    rest = plan.fallback
    if plan.hooked or (use_hooks and plan.fallback):
        got = _hooked_rows(problem, plan, params, chunk_size=chunk_size, batched=batched)
        if isinstance(got, frozenset):  # some modules do not see the batch first: send them to the fallback
            plan = jacobian_plan(problem, use_hooks=use_hooks, exclude=got)
            got = _hooked_rows(problem, plan, params, chunk_size=chunk_size, batched=batched, tap=use_hooks)
        hooked, rest = got
        rows.update(hooked)  # (M, N, *shape)
    if rest:
        fallback = _fallback_rows(problem, rest, params, chunk_size=chunk_size)  # (N, M, *shape)
        rows.update({k: v.transpose(0, 1) for k, v in fallback.items()})
    if sample_major:
        rows = {k: v.transpose(0, 1) for k, v in rows.items()}
    return {
        layer: [rows[name].reshape(n * m, -1) for name in names] for layer, names in problem.layers.items()
    }


def _unique_modules(model: nn.Module) -> Iterable[nn.Module]:
    seen: set[int] = set()
    for module in model.modules():
        if id(module) not in seen:
            seen.add(id(module))
            yield module


def _hooked_rows(
    problem: NTKProblem,
    plan: JacobianPlan,
    params: dict[str, Tensor],
    *,
    chunk_size: int | None,
    batched: bool,
    tap: bool = True,
    stop_early: bool = False,
) -> tuple[dict[str, Tensor], list[str]] | frozenset[int]:
    """Rows ``(M, N, *shape)`` of the hooked and tapped parameters: one forward, batched backprop passes.

    The fallback parameters of ``plan`` are tapped (:mod:`f3ocus.ntk.taps`) when ``tap`` is set.
    Returns the rows and the parameters the taps could not serve; or, if some hooked module's inputs
    or output do not carry the batch first (a sequence-first transformer), the ids of those modules,
    so that the caller can re-plan without them. With ``stop_early`` the forward pass stops at the
    first such module (its id alone is returned): cheap when it comes early, such as a position
    embedding called on shared position ids.
    """
    n, m = problem.num_samples, problem.num_outputs
    calls: list[tuple[nn.Module, GradSampler, tuple, Tensor, dict]] = []
    samplers = {id(mod): s for mod, s in plan.modules}
    unbatched: set[int] = set()

    def hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if not (
            isinstance(output, Tensor)
            and output.dim() > 0
            and output.shape[0] == n
            and inputs
            and isinstance(inputs[0], Tensor)
            and inputs[0].dim() > 0
            and inputs[0].shape[0] == n
        ):
            unbatched.add(id(module))
            if stop_early:
                raise _Unbatched
            return
        # Snapshot the tensors the module holds during this call (functional_call swaps them).
        state = {**module._parameters, **module._buffers}
        saved = tuple(i.detach() if isinstance(i, Tensor) else i for i in inputs)
        calls.append((module, samplers[id(module)], saved, output, state))

    tapped = list(plan.fallback) if tap else []
    live = {
        k: (v.detach().requires_grad_(True) if k in plan.hooked or k in tapped else v)
        for k, v in params.items()
    }
    taps = ParameterTaps({k: live[k] for k in tapped}, n)
    handles = [mod.register_forward_hook(hook) for mod, _ in plan.modules]
    # The owner of every tapped parameter keeps its (batch-first) output: where the taps cannot
    # classify a use (data-dependent code such as ViLT's patch selection), the rows come from the
    # backprop of that output instead (see _owner_rows).
    owner_of, owner_out = _owners(problem.model, tapped)
    for module in {id(o): o for chain in owner_of.values() for o in chain}.values():
        handles.append(module.register_forward_hook(_capture(owner_out, n)))
    try:
        with torch.enable_grad(), taps if tapped else nullcontext():
            out = problem.outputs(live)  # (N, M)
    except _Unbatched:
        pass
    finally:
        for h in handles:
            h.remove()
    if unbatched:
        return frozenset(unbatched)
    local_to_name = {(id(mod), local): name for name, own in plan.hooked.items() for mod, local in own}
    by_owner: dict[int, list[str]] = {}  # owner -> the tapped parameters it holds
    for k in tapped:  # the innermost module around the parameter that returned a batch-first tensor
        o = next((o for o in owner_of.get(k, []) if isinstance(owner_out.get(id(o)), Tensor)), None)
        if o is not None:
            by_owner.setdefault(id(o), []).append(k)
    outputs = {i: owner_out[i] for i in by_owner}
    kept: dict[int, list[tuple[int, int, Tensor]]] = {i: [] for i in by_owner}  # backprops, per chunk
    from_owner = {k for names in by_owner.values() for k in names if k in taps.bad}
    served = [k for k in tapped if k not in taps.bad or k in from_owner]
    result: dict[str, Tensor] = {}  # name -> (M, N, *shape), output-major: the layout the backprops have
    owned: set[str] = set()

    def add(name: str, start: int, stop: int, value: Tensor) -> None:
        if name not in result and start == 0 and stop == m:
            result[name] = value  # the whole Jacobian in one piece: keep it, no copy
            return
        if name not in owned:
            whole = value.new_zeros(m, *value.shape[1:])
            if name in result:
                whole += result[name]
            result[name] = whole
            owned.add(name)
        result[name][start:stop] += value

    totals = {name: params[name].new_zeros(m, *params[name].shape) for name in served}
    targets = [c[3] for c in calls] + [t.out for t in taps.taps] + list(outputs.values()) + [live[k] for k in served]
    step = m if chunk_size is None else max(1, min(chunk_size, m))
    for start in range(0, m, step):
        stop = min(start + step, m)
        k = stop - start
        cot = out.new_zeros(k, n, m)
        cot[torch.arange(k), :, torch.arange(start, stop)] = 1.0
        grads = _backprops(out, targets, cot, batched=batched)
        for i, (module, sampler, inputs, _, state) in enumerate(calls):
            g, grads[i] = grads[i], None  # release each backprop once its rows are built
            if g is None:
                continue
            with _swapped(module, state):
                per_param = sampler(module, inputs, g)
            del g
            for local, per_sample in per_param.items():
                name = local_to_name.get((id(module), local))
                if name is not None:
                    add(name, start, stop, per_sample)
        for t, g in zip(taps.taps, grads[len(calls) :], strict=False):
            if g is not None and t.root in served and t.root not in from_owner:
                add(t.root, start, stop, taps.rows(t, g))
        first = len(calls) + len(taps.taps)
        for (i, y), g in zip(outputs.items(), grads[first : first + len(outputs)], strict=True):
            if g is None:
                continue
            kept[i].append((start, stop, g))
            names = [k for k in by_owner[i] if k in from_owner]
            if not names:
                continue
            for name, rows in zip(names, _owner_rows(y, [live[k] for k in names], g, batched), strict=True):
                add(name, start, stop, rows)
        for name, g in zip(served, grads[first + len(outputs) :], strict=True):
            if g is not None:
                totals[name][start:stop] = g
    for name in [*plan.hooked, *served]:  # parameters that no call reached: zero rows
        if name not in result:
            result[name] = params[name].new_zeros(m, n, *params[name].shape)
    # The taps must account for every use: their rows sum over samples to the batch gradient.
    def complete(k: str) -> bool:
        scale = 1 + totals[k].abs().max().item()
        return torch.allclose(result[k].sum(1), totals[k], rtol=1e-4, atol=1e-6 * scale)

    missed = [k for k in served if not complete(k)]
    for k in missed:  # a use the taps missed: the rows from the owner's output, else the fallback
        del result[k]
        owner = next((i for i, names in by_owner.items() if k in names), None)
        if owner is None or k in from_owner:
            continue
        owned.discard(k)
        for start, stop, g in kept[owner]:
            add(k, start, stop, _owner_rows(outputs[owner], [live[k]], g, batched)[0])
        if k in result and not complete(k):
            del result[k]
    return result, [k for k in plan.fallback if k not in result]


class _Unbatched(Exception):
    """Stops a hooked forward pass at a module that does not see the batch first (``stop_early``)."""


def _owners(model: nn.Module, names: list[str]) -> tuple[dict[str, list[nn.Module]], dict[int, Any]]:
    """Parameter name -> the modules around it, innermost first, and an empty record of their outputs."""
    owner_of: dict[str, list[nn.Module]] = {}
    for name in names:
        parts = name.split(".")[:-1]
        chain = []
        for i in range(len(parts), -1, -1):
            try:
                chain.append(model.get_submodule(".".join(parts[:i])))
            except AttributeError:
                continue
        owner_of[name] = chain
    return owner_of, {}


def _capture(record: dict[int, Any], n: int):
    """A forward hook that records a module's batch-first output tensor (``None`` if called twice)."""

    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        y = output
        if isinstance(output, (tuple, list)):
            y = next((o for o in output if isinstance(o, Tensor)), None)
        ok = isinstance(y, Tensor) and y.dim() > 0 and y.shape[0] == n and y.requires_grad
        record[id(module)] = None if id(module) in record or not ok else y

    return hook


def _owner_rows(y: Tensor, params: list[Tensor], g: Tensor, batched: bool) -> list[Tensor]:
    r"""Rows ``(K, N, *p.shape)`` of ``params`` from the backprops ``g`` ``(K, N, ...)`` of their owner's output.

    Row $(k, n)$ is $\partial \langle g_k[n], y_n \rangle / \partial p$: one backward pass through the
    owner's part of the graph per row (batched), with the cotangent masked to sample $n$.
    """
    k, n = g.shape[:2]
    mask = torch.eye(n, dtype=g.dtype, device=g.device).reshape(1, n, n, *[1] * (g.dim() - 2))
    cot = (g.unsqueeze(1) * mask).reshape(k * n, *g.shape[1:])
    grads = _backprops(y, params, cot, batched=batched)
    return [
        p.new_zeros(k, n, *p.shape) if gr is None else gr.reshape(k, n, *p.shape)
        for p, gr in zip(params, grads, strict=True)
    ]


@contextmanager
def _swapped(module: nn.Module, state: dict[str, Tensor | None]) -> Iterator[None]:
    """Temporarily give ``module`` the parameters and buffers it held during a recorded call."""
    old_p, old_b = dict(module._parameters), dict(module._buffers)
    try:
        for k, v in state.items():
            (module._parameters if k in old_p else module._buffers)[k] = v
        yield
    finally:
        module._parameters.update(old_p)
        module._buffers.update(old_b)


def _backprops(out: Tensor, targets: list[Tensor], cot: Tensor, *, batched: bool) -> list[Tensor | None]:
    """``d <cot_k, out> / d target`` for every target, stacked over the ``K`` cotangents."""
    if batched and cot.shape[0] > 1:
        try:
            return list(
                torch.autograd.grad(
                    out, targets, cot, retain_graph=True, allow_unused=True, is_grads_batched=True
                )
            )
        except RuntimeError:  # a backward formula without a vmap rule: one plain pass per output
            pass
    per = [torch.autograd.grad(out, targets, c, retain_graph=True, allow_unused=True) for c in cot]
    return [None if per[0][i] is None else torch.stack([p[i] for p in per]) for i in range(len(targets))]


def _fallback_rows(
    problem: NTKProblem, names: list[str], params: dict[str, Tensor], *, chunk_size: int | None
) -> dict[str, Tensor]:
    """Rows ``(N, M, *shape)`` of ``names`` by ``vmap`` over samples of ``jacrev`` (any model)."""
    fixed = {k: v for k, v in params.items() if k not in names}
    free = {k: params[k] for k in names}
    args, kwargs, targets = problem.per_sample_inputs()

    def one_sample(a, kw, t):
        def f(p):
            return problem.sample_outputs({**fixed, **p}, a, kw, t)

        return jacrev(f, chunk_size=chunk_size)(free)

    try:
        return vmap(one_sample, randomness="different")(args, kwargs, targets)
    except RuntimeError:
        # The model does not vmap over samples (data-dependent control flow): differentiate the whole
        # batch instead, N*M reverse passes for these parameters (as the dense reference does).
        n, m = problem.num_samples, problem.num_outputs
        jac = jacrev(lambda p: problem.outputs({**fixed, **p}), chunk_size=chunk_size)(free)
        return {k: v.reshape(n, m, *free[k].shape) for k, v in jac.items()}
