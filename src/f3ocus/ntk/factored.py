r"""The ``"factored"`` scoring method: Linear weights kept as activations and backprops.

For an ``nn.Linear`` weight $W$ (``o x i``) the Jacobian rows are $\partial F_{kn}/\partial W =
\sum_s B_{kns} A_{ns}^\top$, with $A$ ``(N, S, i)`` the recorded inputs and $B$ ``(K, N, S, o)`` the
backprops of the $K = M$ kernel outputs. ``"persample"`` builds all these rows (``K N`` small GEMMs with
inner dimension $S$, written to memory) and then a Gram per layer. Here one hooked pass keeps $A$ and
$B$ instead, and each layer is solved in the cheaper of two ways (``eig="auto"``, by
:func:`_layer_costs`):

*Gram*: $\Theta_l = J_l J_l^\top$ is accumulated weight by weight from the factors, building the rows
of a chunk of output features at a time (about 4 MB on a CPU, so they stay in cache) and adding
their Gram; or, when few tokens are left, from token kernels,
$\Theta_{kn,jp} = \sum_{s,t} (B_{kns} \cdot B_{jpt})(A_{ns} \cdot A_{pt})$. Then ``eigvalsh``:
exact and deterministic. Cost $NM S\, o i + (NM)^2 o i$ per weight.

*Lanczos*: batched Lanczos on the $NM$-dimensional output space with the factored products

$$ J^\top v = \sum_{n,s} \Big(\sum_k v_{kn} B_{kns}\Big) A_{ns}^\top
   \quad (\text{one GEMM } o \times NS \times i), $$

$$ (J u)_{kn} = \sum_s B_{kns} \cdot (u A_{ns}) \quad (\text{one GEMM } NS \times i \times o), $$

from random starts, stopped on the relative residual (:func:`f3ocus.ntk.lanczos.lanczos_max_eig`).
Cost $2 N S (i + M) o$ per weight and step, about two forward passes of that weight.

The Grams grow as $N^2$ and the Lanczos steps as $N$: on the small ViT of ``benchmarks/bench_ntk.py`` the
blocks take the Gram up to $N \approx 16$-$24$ and Lanczos above. A weight used by several calls (a
module called twice, weights tied between Linear modules) joins the calls' tokens, which sums them in
both ways. Tokens whose backprops vanish for every output and sample (after the last attention layer of
a classifier that reads one token, only that token is left) are dropped from both factors. Every other
scored parameter (Linear biases, norms, embeddings, convolutions, raw parameters, the torch.func
fallback) keeps its per-sample rows, exactly as ``"persample"`` builds them in the same hooked pass
(:mod:`f3ocus.ntk.persample`), and enters the Gram as $R R^\top$ and the matvec as $R (R^\top v)$.

Cost model (multiply-adds; see :mod:`f3ocus.ntk.fast`): one forward and $M$ backprop-only passes,
$(1 + M) F$ with $F$ the forward multiply-adds (:func:`f3ocus.ntk.problem.forward_flops`), the other
parameters' rows, and per layer the cheaper of the Gram and $k = 15$ Lanczos steps (weighted
:data:`LANCZOS_WEIGHT`), with $S \approx F / (N P)$. Memory: the activations and backprops,
$N S (i + M o)$ elements per Linear weight, the stored rows of the other parameters and the Lanczos
basis; layers are grouped so that each group fits ``max_memory`` (one more pass per group).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from f3ocus._checks import check_choice
from f3ocus.ntk.fast import EXPECTED_STEPS as FAST_STEPS
from f3ocus.ntk.fast import (
    ROWS_WEIGHT,
    _consecutive_groups,
    _gen_device,
    _layer_eig,
    _subproblem,
    gram_top_eig,
    jacobian_eigs,
)
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
        flops += ROWS_WEIGHT * m * fwd * rows_p / total  # per-sample rows of the other parameters
        if fact:
            flops += min(_layer_costs(n, m, [(o, i, s) for o, i in fact], rows_p))
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
            # A (N*S, i) and B (N, K, S, o), a view of the backprops: the Grams copy a chunk at a time
            # anyway, and only a layer solved by Lanczos lays B out (N, K, S*o) contiguously.
            factors[name].append((a_w.reshape(-1, a_w.shape[-1]), g_w.transpose(0, 1), g_w.shape[-1]))
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

    ``factors``: weight name -> list of ``(A (N*S, i), B (N, M, S, o) (a view), o)`` per call;
    ``rows``: every other scored parameter -> rows ``(M, N, *shape)`` (output-major), as
    :mod:`f3ocus.ntk.persample` builds them.
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
    eig: str = "auto",
) -> MethodResult:
    r"""Linear weights kept as activations x backprops; per layer a Gram or a batched Lanczos.

    Options (pass them to :func:`f3ocus.ntk_layer_importance` as keywords):
        eig: ``"auto"`` (per layer, the cheaper by the cost model), ``"gram"`` (every layer:
            $\Theta_l$ built from the factors a chunk of rows at a time, then ``eigvalsh``) or
            ``"lanczos"`` (every layer: batched Lanczos from random starts on the factored products).

    Layers are processed in consecutive groups whose factors fit ``max_memory``; each group costs one
    more forward pass and $M$ backprop passes. ``chunk_size`` only chunks the torch.func fallback
    (kernel outputs per ``jacrev`` chunk); the hooked pass keeps the backprops of all ``M`` outputs.
    """
    check_choice("eig", eig, ("auto", "gram", "lanczos"))
    groups = _factored_groups(problem, max_memory)
    eigs: dict[str, LayerEig] = {}
    paths: dict[str, str] = {}
    factored: list[str] = []
    steps = 0
    for group in groups:
        sub = _subproblem(problem, group)
        got, names, used, path = _solve(
            sub, tol=tol, maxiter=maxiter, generator=generator, chunk_size=chunk_size, eig=eig
        )
        eigs.update(got)
        paths.update(path)
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
            "path": {layer: paths[layer] for layer in problem.layers},
        },
    )


def _tokens_of(calls: list[tuple[Tensor, Tensor, int]], n: int, m: int) -> tuple[Tensor, Tensor]:
    r"""One weight's calls as ``A`` ``(N, S, i)`` and ``B`` ``(N, M, S, o)``, calls joined along the tokens.

    The rows are $\sum_{\text{calls}} \sum_s B_s A_s^\top$, a sum over the joined token axis.
    """
    a = [a.reshape(n, -1, a.shape[-1]) for a, _, _ in calls]
    b = [g.reshape(n, m, -1, o) for _, g, o in calls]  # views
    if len(calls) == 1:
        return a[0], b[0]
    return torch.cat(a, dim=1), torch.cat(b, dim=2)


def _weight_gram_costs(n: int, m: int, o: int, i: int, s: float) -> tuple[float, float, bool]:
    r"""Multiply-adds of one weight's Gram, ``(by rows, by token kernels, token kernels fit)``.

    By rows: build $\partial F_{nk} / \partial W$ in chunks of output features ($N M S o i$) and
    accumulate their Gram ($(NM)^2 o i$). By token kernels:
    $\Theta_{nk, pj} = \sum_{s,t} (B_{nks} \cdot B_{pjt}) (A_{ns} \cdot A_{pt})$, which costs
    $(NS)^2 i + (NMS)^2 o + (NM S)^2$ and holds $(NMS)^2$ numbers: cheap when few tokens are left
    (e.g. only the class token after the last attention layer). They "fit" when they take no more
    memory than the rows would.
    """
    rows = float(n * m)
    by_rows = rows * s * o * i + rows * rows * o * i
    by_kernel = (n * s) ** 2 * i + (rows * s) ** 2 * (o + 1)
    return by_rows, by_kernel, (rows * s) ** 2 <= max(rows * o * i, 2.0**22)


def _weight_gram(a: Tensor, b: Tensor, out: Tensor, *, how: str = "auto", chunk: int = 2**20) -> None:
    r"""Add $J_W J_W^\top$ of one Linear weight to ``out`` ``(N M, N M)``, rows sample-major (``n*M + k``).

    ``a`` ``(N, S, i)`` and ``b`` ``(N, M, S, o)`` (:func:`_tokens_of`). ``how``: ``"rows"``,
    ``"kernel"`` or ``"auto"`` (the cheaper that fits, :func:`_weight_gram_costs`). By rows, the
    rows of ``chunk`` elements' worth of output features are built at a time, so nothing of size
    $NM \times oi$ is ever held.
    """
    n, m, s, o = b.shape
    i = a.shape[-1]
    if how == "auto":
        by_rows, by_kernel, fits = _weight_gram_costs(n, m, o, i, s)
        how = "kernel" if fits and by_kernel < by_rows else "rows"
    if how == "kernel":
        aa = (a.reshape(n * s, i) @ a.reshape(n * s, i).T).reshape(n, s, n, s)
        bf = b.reshape(n * m * s, o)
        bb = (bf @ bf.T).reshape(n, m, s, n, m, s)
        out += torch.einsum("nkspjt,nspt->nkpj", bb, aa).reshape(n * m, n * m)
        return
    step = max(1, chunk // max(n * m * i, 1))
    for start in range(0, o, step):
        stop = min(start + step, o)
        bc = b[..., start:stop].transpose(-1, -2).reshape(n, m * (stop - start), s)
        x = torch.bmm(bc, a).reshape(n * m, -1)  # rows (n, k) of d F / d W[start:stop]
        out.addmm_(x, x.T)


# Factored Lanczos multiply-adds run at about 2/3 the speed of the Grams' GEMMs (CPU benchmark:
# 80-95 GFLOPS against 160-170), so the per-layer choice weighs them by this factor.
LANCZOS_WEIGHT = 1.5


def _layer_costs(
    n: int, m: int, weights: list[tuple[int, int, float]], rows_p: int, steps: int = EXPECTED_STEPS
) -> tuple[float, float]:
    """``(Gram, Lanczos)`` multiply-adds of one layer with factored ``weights`` ``(o, i, S)`` and ``rows_p``
    other parameters (stored rows); the Lanczos side weighted by :data:`LANCZOS_WEIGHT`.

    Gram: each weight's cheaper Gram (:func:`_weight_gram_costs`), the rows' Gram $(NM)^2 P$ and a
    dense eigensolve; Lanczos: ``steps`` factored matvecs, the stored rows' GEMV pairs weighted 4x.
    """
    rows = float(n * m)
    gram = rows * rows * rows_p + 4.0 * rows**3
    for o, i, s in weights:
        by_rows, by_kernel, fits = _weight_gram_costs(n, m, o, i, s)
        gram += min(by_rows, by_kernel) if fits else by_rows
    step = sum(2.0 * n * s * (i + m) * o for o, i, s in weights) + 4 * 4.0 * rows * rows_p
    return gram, LANCZOS_WEIGHT * steps * step


def _solve(
    problem: NTKProblem,
    *,
    tol: float,
    maxiter: int,
    generator: torch.Generator | None,
    chunk_size: int | None,
    eig: str = "auto",
) -> tuple[dict[str, LayerEig], list[str], int, dict[str, str]]:
    """Eigenvalues of every layer of ``problem`` from one hooked pass.

    Returns ``(eigs, factored weights, Lanczos steps, path per layer)``.
    """
    n, m = problem.num_samples, problem.num_outputs
    size = n * m
    factors, rows = _pass(problem, chunk_size=chunk_size)
    layers = list(problem.layers)
    dense: dict[str, list[Tensor]] = {}
    fact: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for layer in layers:
        names = problem.layers[layer]
        dense[layer] = [rows[k].reshape(size, -1) for k in names if k in rows and rows[k].numel() > 0]
        fact[layer] = [_tokens_of(factors[k], n, m) for k in names if k in factors and factors[k]]
    names = sorted(factors)
    del factors
    eigs: dict[str, LayerEig] = {}
    path: dict[str, str] = {}
    # Layers with stored rows only: exact, as "persample" does.
    plain = {layer: dense[layer] for layer in layers if not fact[layer]}
    if plain and size > 0:
        got, how = jacobian_eigs(plain, eig=eig, tol=tol, maxiter=maxiter, generator=generator)
        eigs.update(got)
        path.update(how)
    else:
        eigs.update({layer: LayerEig(value=0.0) for layer in plain})
        path.update({layer: "zero" for layer in plain})
    with_factors = [layer for layer in layers if fact[layer]]
    if size == 0:
        eigs.update({layer: LayerEig(value=0.0) for layer in with_factors})
        path.update({layer: "zero" for layer in with_factors})
        return eigs, names, 0, path
    # Rows per Gram chunk: a few MB stay in a CPU's cache; a GPU wants few, large GEMMs.
    chunk = 2**20 if problem.device.type == "cpu" else 2**26
    krylov = []
    for layer in with_factors:
        if eig == "auto":
            weights = [(b.shape[-1], a.shape[-1], float(a.shape[1])) for a, b in fact[layer]]
            gram, lanczos = _layer_costs(n, m, weights, sum(r.shape[1] for r in dense[layer]))
            use_gram = gram <= lanczos
        else:
            use_gram = eig == "gram"
        if not use_gram:
            krylov.append(layer)
            continue
        theta = torch.zeros(size, size, dtype=problem.dtype, device=problem.device)  # sample-major
        for a, b in fact[layer]:
            _weight_gram(a, b, theta, chunk=chunk)
        theta = theta.reshape(n, m, n, m).permute(1, 0, 3, 2).reshape(size, size)  # output-major
        for r in dense[layer]:
            theta.addmm_(r, r.T)
        eigs[layer], path[layer] = gram_top_eig(theta), "gram"
        fact[layer] = dense[layer] = []  # release this layer's factors
    if not krylov:
        return eigs, names, 0, path
    kd = [dense[layer] for layer in krylov]
    # Per weight: A (N S, i) and B (N, M, S o), so that both products are batched GEMMs over n.
    kf = [
        [(a.reshape(-1, a.shape[-1]), b.reshape(n, m, -1), b.shape[-1]) for a, b in fact[layer]]
        for layer in krylov
    ]

    def matvec(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for idx in range(len(krylov)):
            vb = v[idx]
            if not bool(vb.any()):  # a converged layer: Lanczos passes zeros
                continue
            acc = out[idx]
            for r in kd[idx]:
                acc += r @ (r.T @ vb)
            vn = vb.reshape(m, n).T.unsqueeze(1)  # (N, 1, M)
            for a, b, o in kf[idx]:
                # J^T v = (sum_k v_kn B_kns)^T A_ns: (o, N S) x (N S, i)
                ut = (torch.bmm(vn, b).reshape(-1, o).T @ a).T.contiguous()  # (i, o)
                # (J u)_kn = sum_s B_kns . (u A_ns): (N S, i) x (i, o), then one dot per (n, k)
                y = (a @ ut).reshape(n, 1, -1)  # (N, 1, S o)
                acc += torch.bmm(y, b.transpose(1, 2)).reshape(n, m).T.reshape(-1)
        return out

    v0 = torch.randn(
        len(krylov), size, generator=generator, dtype=problem.dtype, device=_gen_device(generator)
    )
    results = lanczos_max_eig(matvec, v0.to(problem.device), tol=tol, maxiter=maxiter)
    for layer, res in zip(krylov, results, strict=True):
        eigs[layer], path[layer] = _layer_eig(res), "lanczos"
    return eigs, names, sum(r.iterations for r in results), path
