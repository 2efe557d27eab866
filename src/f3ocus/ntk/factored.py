r"""The ``"factored"`` scoring method: batched Lanczos with Linear weights kept as activations and backprops.

For an ``nn.Linear`` weight $W$ (``o x i``) the Jacobian rows are $\partial F_{kn}/\partial W =
\sum_s B_{kns} A_{ns}^\top$, with $A$ ``(N, S, i)`` the recorded inputs and $B$ ``(K, N, S, o)`` the
backprops of the $K = M$ kernel outputs. ``"persample"`` builds these rows (``K N`` small GEMMs with
inner dimension $S$) and then a Gram per layer. Here they are never formed: Lanczos on
$\Theta_l = J_l J_l^\top$ runs on the $NM$-dimensional output space with the factored products

$$ J^\top v = \sum_{n,s} \Big(\sum_k v_{kn} B_{kns}\Big) A_{ns}^\top
   \quad (\text{one GEMM } o \times NS \times i), $$

$$ (J u)_{kn} = \sum_s B_{kns} \cdot (u A_{ns}) \quad (\text{one GEMM } NS \times i \times o). $$

A weight used by several calls (a module called twice, weights tied between Linear modules) sums the
calls in both products. Tokens whose backprops vanish for every output and sample (after the last
attention layer of a classifier that reads one token, only that token is left) are dropped from both
factors. Every other scored parameter (Linear biases, norms, embeddings, convolutions, raw parameters,
the torch.func fallback) keeps its per-sample rows, exactly as ``"persample"`` builds them in the same
hooked pass (:mod:`f3ocus.ntk.persample`), and enters the same matvec as $R (R^\top v)$. Layers with no
factored weight are solved from their rows alone (a small Gram); the others run in one batched Lanczos
(:func:`f3ocus.ntk.lanczos.lanczos_max_eig`) from random starts, stopped on the relative residual.

Cost model (multiply-adds; see :mod:`f3ocus.ntk.fast`): one forward and $M$ backprop-only passes,
$(1 + M) F$ with $F$ the forward multiply-adds (:func:`f3ocus.ntk.problem.forward_flops`), plus $k = 15$
Lanczos steps of $2 N S (i + M) o$ per factored weight (two GEMMs and two batched contractions) and
$4 NM P_l$ per stored row block, with $S \approx F / (N P)$. Memory: the activations and backprops,
$N S (i + M o)$ elements per Linear weight, the stored rows of the other parameters and the Lanczos basis;
layers are grouped so that each group fits ``max_memory`` (one more pass per group).

Per Lanczos step a factored weight costs $2 N S i o$, about two forward passes of that weight: with
$k \approx 10$-$15$ steps the method does $(1 + M) + 2k$ forward passes' worth of work, against
$(1 + 2M)$ forward passes plus the Grams, $(NM)^2 P_l$ per layer, for ``"persample"``. The Grams grow
as $N^2$ and the factored steps as $N$, so ``"auto"`` picks this method from moderate batch sizes on,
and where the per-sample rows do not fit ``max_memory``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from f3ocus.ntk.fast import EXPECTED_STEPS as FAST_STEPS
from f3ocus.ntk.fast import _consecutive_groups, _gen_device, _layer_eig, _subproblem, jacobian_eigs
from f3ocus.ntk.grad_samplers import GradSampler, _tokens
from f3ocus.ntk.lanczos import lanczos_max_eig
from f3ocus.ntk.methods import Cost, LayerEig, MethodResult, register_method
from f3ocus.ntk.persample import JacobianPlan, _fallback_rows, _hooked_rows, jacobian_plan
from f3ocus.ntk.problem import NTKProblem, forward_flops

__all__ = ["factored_cost", "factored_method"]


def _factored_names(problem: NTKProblem, plan: JacobianPlan) -> set[str]:
    """Hooked weights whose every owner is an exact ``nn.Linear`` (tied Linear weights included)."""
    return {
        name
        for name, owners in plan.hooked.items()
        if owners and all(type(m) is nn.Linear and local == "weight" for m, local in owners)
    }


def _linear_shapes(problem: NTKProblem) -> dict[str, tuple[int, int]]:
    """Parameter name -> ``(o, i)`` for scored weights of exact ``nn.Linear`` modules (for the cost model)."""
    params = dict(problem.model.named_parameters())
    ids = {id(p): name for name, p in params.items()}
    scored = {name for names in problem.layers.values() for name in names}
    out: dict[str, tuple[int, int]] = {}
    for module in problem.model.modules():
        if type(module) is nn.Linear:
            name = ids.get(id(module.weight))
            if name in scored:
                out[name] = (module.out_features, module.in_features)
    return out


# Lanczos steps per layer that the cost model expects: 9-15 per block on the ViT benchmark at tol=1e-4
# (benchmarks/bench_ntk.py).
EXPECTED_STEPS = 15


def _tokens_per_sample(problem: NTKProblem) -> float:
    """Rough sequence length $S$: forward multiply-adds per sample over the parameter count (at least 1)."""
    total = sum(problem.layer_sizes().values())
    return max(1.0, forward_flops(problem) / max(problem.num_samples * total, 1))


def factored_cost(problem: NTKProblem, max_memory: int | None = None) -> Cost:
    """Estimated multiply-adds and peak bytes of ``"factored"`` (see the module docstring).

    Stored rows (every parameter but the Linear weights) are costed as in
    :func:`~f3ocus.ntk.fast.persample_cost`: their per-sample contractions, then per layer without a
    Linear weight the cheaper of Gram and Lanczos on the rows, and in the other layers one GEMV pair per
    Lanczos step, weighted 4x like every GEMV step. The memory is that of the largest layer (layers
    are grouped under ``max_memory``), doubled for the pass's own tensors, plus the Lanczos basis;
    each group beyond the first adds a forward and $M$ backprop passes.
    """
    n, m = problem.num_samples, problem.num_outputs
    rows = n * m
    sizes = problem.layer_sizes()
    total = max(sum(sizes.values()), 1)
    linear = _linear_shapes(problem)
    s = _tokens_per_sample(problem)
    fwd = forward_flops(problem)
    flops = (1 + m) * fwd * len(_factored_groups(problem, max_memory))
    for layer, names in problem.layers.items():
        fact = [linear[k] for k in names if k in linear]
        rows_p = max(sizes[layer] - sum(o * i for o, i in fact), 0)
        flops += m * fwd * rows_p / total  # per-sample rows of the other parameters
        if fact:
            step = sum(2.0 * n * s * (i + m) * o for o, i in fact) + 4 * 4.0 * rows * rows_p
            flops += EXPECTED_STEPS * step
        else:
            flops += min(rows * rows, 4 * 4 * FAST_STEPS * rows) * rows_p
    largest = max(_layer_bytes(problem).values(), default=0.0)
    memory = 2 * largest + len(sizes) * EXPECTED_STEPS * rows * problem.itemsize
    return Cost(flops=float(flops), memory=float(memory))


def _live_tokens(g: Tensor) -> Tensor | None:
    """Token positions where some backprop in ``g`` ``(K, N, S, o)`` is nonzero, or ``None`` if all are.

    A token whose backprops vanish for every output and sample (e.g. every token but the class token
    after the last attention layer of a ViT) adds nothing to $J$, so it can be dropped from both factors.
    Feature 0 decides most tokens cheaply (one strided read); ``g`` is read in full only when some token
    is zero there.
    """
    if g.shape[2] <= 1 or not bool((g[..., 0] == 0).all(dim=1).all(dim=0).any()):
        return None
    live = g.abs().amax(dim=-1).amax(dim=1).amax(dim=0) > 0  # (S,)
    if bool(live.all()):
        return None
    return torch.nonzero(live).flatten()


def _capturing_sampler(
    local_to_name: dict[tuple[int, str], str], factors: dict[str, list[tuple[Tensor, Tensor, int]]]
) -> GradSampler:
    """An ``nn.Linear`` grad sampler that records ``(A, B)`` for the weights in ``factors`` instead of rows.

    The first call of such a weight returns a zero-stride stand-in for its rows, so that the pass
    allocates nothing for it (the stand-in is dropped afterwards); biases and other weights get rows.
    Tokens whose backprops are all zero are dropped from both factors (:func:`_live_tokens`).
    """
    placed: set[str] = set()

    def capture(module: nn.Module, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
        a, g = _tokens(inputs[0], backprops, module.in_features)
        out: dict[str, Tensor] = {}
        name = local_to_name.get((id(module), "weight"))
        if name in factors:
            live = _live_tokens(g)
            a_w, g_w = (a, g) if live is None else (a[:, live], g[:, :, live])
            # A (N*S, i) and B laid out (N, K, S*o), so that both products are batched GEMMs over n.
            gp = g_w.transpose(0, 1).reshape(g_w.shape[1], g_w.shape[0], -1).contiguous()
            factors[name].append((a_w.reshape(-1, a_w.shape[-1]), gp, g_w.shape[-1]))
            if name not in placed:
                placed.add(name)
                out["weight"] = g.new_zeros(()).expand(*g.shape[:2], *module.weight.shape)
        elif name is not None:
            out["weight"] = torch.matmul(g.transpose(-1, -2), a)
        if module.bias is not None:
            out["bias"] = g.sum(dim=2)
        return out

    return capture


def _pass(problem: NTKProblem, *, chunk_size: int | None, use_hooks: bool = True):
    """One hooked pass: ``(factors, rows)``.

    ``factors``: weight name -> list of ``(A (N*S, i), B (N, M, S*o), o)`` per call; ``rows``: every other
    scored parameter -> rows ``(M, N, *shape)`` (output-major), as :mod:`f3ocus.ntk.persample` builds them.
    """
    params = problem.layer_params()
    exclude: frozenset[int] = frozenset()
    for _ in range(2):
        plan = jacobian_plan(problem, exclude=exclude)
        factored = _factored_names(problem, plan)
        local_to_name = {(id(mod), local): name for name, own in plan.hooked.items() for mod, local in own}
        factors: dict[str, list[tuple[Tensor, Tensor, int]]] = {name: [] for name in factored}
        capture = _capturing_sampler(local_to_name, factors)
        modules = [(mod, capture if type(mod) is nn.Linear else s) for mod, s in plan.modules]
        plan = JacobianPlan(hooked=plan.hooked, fallback=plan.fallback, modules=modules)
        # All M outputs in one batched backward pass: the factors keep every backprop anyway.
        got = _hooked_rows(problem, plan, params, chunk_size=None, batched=True, tap=use_hooks)
        if not isinstance(got, frozenset):
            break
        exclude = exclude | got  # modules that do not see the batch first: re-plan without them
    else:  # pragma: no cover - the second plan excludes every unbatched module
        raise RuntimeError("factored: could not plan the hooked pass")
    rows, rest = got
    rows = {k: v for k, v in rows.items() if k not in factors}
    if rest:
        fallback = _fallback_rows(problem, rest, params, chunk_size=chunk_size)  # (N, M, *shape)
        rows.update({k: v.transpose(0, 1) for k, v in fallback.items()})
    return factors, rows


def _layer_bytes(problem: NTKProblem) -> dict[str, float]:
    """Estimated bytes per layer: its Linear weights' activations and backprops plus its other rows."""
    n, m = problem.num_samples, problem.num_outputs
    linear = _linear_shapes(problem)
    s = _tokens_per_sample(problem)
    sizes = problem.layer_sizes()
    out = {}
    for layer, names in problem.layers.items():
        fact = [linear[k] for k in names if k in linear]
        rows_p = max(sizes[layer] - sum(o * i for o, i in fact), 0)
        out[layer] = (sum(n * s * (i + m * o) for o, i in fact) + n * m * rows_p) * problem.itemsize
    return out


def _factored_groups(problem: NTKProblem, max_memory: int | None) -> list[list[str]]:
    """Consecutive layer groups whose factors fit ``max_memory`` (at least one layer each)."""
    return _consecutive_groups(_layer_bytes(problem), max_memory)


@register_method("factored", cost=factored_cost)
def factored_method(
    problem: NTKProblem,
    *,
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
    max_memory: int | None = None,
) -> MethodResult:
    """Batched Lanczos over the layers with Linear weights, kept as activations x backprops.

    Layers without a factored weight are solved from their stored rows as ``"persample"`` does (Gram +
    ``eigvalsh``, or Lanczos on the rows), the others by one batched Lanczos from random starts.
    Layers are processed in consecutive groups whose factors fit ``max_memory``; each group costs one
    more forward pass and $M$ backprop passes.

    ``chunk_size`` only chunks the torch.func fallback (kernel outputs per ``jacrev`` chunk); the hooked
    pass keeps the backprops of all ``M`` outputs.
    """
    groups = _factored_groups(problem, max_memory)
    eigs: dict[str, LayerEig] = {}
    factored: list[str] = []
    steps = 0
    for group in groups:
        sub = _subproblem(problem, group)
        got, names, used = _solve(sub, tol=tol, maxiter=maxiter, generator=generator, chunk_size=chunk_size)
        eigs.update(got)
        factored += names
        steps += used
    return MethodResult(
        eigs={layer: eigs[layer] for layer in problem.layers},
        backward_passes=len(groups) * problem.num_outputs,
        matvecs=steps,
        extra={
            "factored": sorted(factored),
            "groups": len(groups),
            "steps": max((e.iterations for e in eigs.values()), default=0),
        },
    )


def _solve(
    problem: NTKProblem,
    *,
    tol: float,
    maxiter: int,
    generator: torch.Generator | None,
    chunk_size: int | None,
) -> tuple[dict[str, LayerEig], list[str], int]:
    """Eigenvalues of every layer of ``problem`` from one hooked pass: ``(eigs, factored weights, steps)``."""
    n, m = problem.num_samples, problem.num_outputs
    size = n * m
    factors, rows = _pass(problem, chunk_size=chunk_size)
    layers = list(problem.layers)
    dense: dict[str, list[Tensor]] = {}
    fact: dict[str, list[list[tuple[Tensor, Tensor, int]]]] = {}
    for layer in layers:
        names = problem.layers[layer]
        dense[layer] = [rows[k].reshape(size, -1) for k in names if k in rows and rows[k].numel() > 0]
        fact[layer] = [factors[k] for k in names if k in factors and factors[k]]
    eigs: dict[str, LayerEig] = {}
    # Layers with stored rows only: exact, as "persample" does.
    plain = {layer: dense[layer] for layer in layers if not fact[layer]}
    if plain and size > 0:
        got, _ = jacobian_eigs(plain, tol=tol, maxiter=maxiter, generator=generator)
        eigs.update(got)
    else:
        eigs.update({layer: LayerEig(value=0.0) for layer in plain})
    krylov = [layer for layer in layers if fact[layer]]
    if not krylov or size == 0:
        eigs.update({layer: LayerEig(value=0.0) for layer in krylov})
        return eigs, sorted(factors), 0
    kd = [dense[layer] for layer in krylov]
    kf = [fact[layer] for layer in krylov]

    def matvec(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for b in range(len(krylov)):
            vb = v[b]
            if not bool(vb.any()):  # a converged layer: Lanczos passes zeros
                continue
            acc = out[b]
            for r in kd[b]:
                acc += r @ (r.T @ vb)
            vn = vb.reshape(m, n).T.unsqueeze(1)  # (N, 1, K)
            for calls in kf[b]:
                # J^T v = sum_calls (sum_k v_kn B_kns)^T A_ns: (o, N S) x (N S, i)
                u = None
                for a, g, o in calls:
                    t = torch.bmm(vn, g).reshape(-1, o).T @ a
                    u = t if u is None else u + t
                ut = u.T.contiguous()  # (i, o)
                for a, g, _ in calls:
                    # (J u)_kn = sum_s B_kns . (u A_ns): (N S, i) x (i, o), then one dot per (n, k)
                    y = (a @ ut).reshape(n, 1, -1)  # (N, 1, S o)
                    acc += torch.bmm(y, g.transpose(1, 2)).reshape(n, m).T.reshape(-1)
        return out

    v0 = torch.randn(len(krylov), size, generator=generator, dtype=problem.dtype, device=_gen_device(generator))
    results = lanczos_max_eig(matvec, v0.to(problem.device), tol=tol, maxiter=maxiter)
    for layer, res in zip(krylov, results, strict=True):
        eigs[layer] = _layer_eig(res)
    return eigs, sorted(factors), sum(r.iterations for r in results)
