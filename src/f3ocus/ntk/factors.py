r"""Factored Jacobians of ``nn.Linear`` weights: activations and backprops instead of rows.

For an ``nn.Linear`` weight $W$ (``o x i``) the Jacobian rows are $\partial F_{kn}/\partial W =
\sum_s B_{kns} A_{ns}^\top$, with $A$ ``(N, S, i)`` the recorded inputs and $B$ ``(K, N, S, o)`` the
backprops of the $K = M$ kernel outputs. One hooked pass (:func:`hooked_factors`) keeps $A$ and $B$ for
every Linear weight and the per-sample rows of every other scored parameter
(:mod:`f3ocus.ntk.rows`). From the factors:

*the Gram* (:func:`weight_gram`), weight by weight, building the rows of a chunk of output features at
a time, or, when few tokens are left, from token kernels
$\Theta_{kn,jp} = \sum_{s,t} (B_{kns} \cdot B_{jpt})(A_{ns} \cdot A_{pt})$;

*the products* (:func:`factored_matvec`) for Lanczos on the $NM$-dimensional output space,

$$ J^\top v = \sum_{n,s} \Big(\sum_k v_{kn} B_{kns}\Big) A_{ns}^\top, \qquad
   (J u)_{kn} = \sum_s B_{kns} \cdot (u A_{ns}), $$

one GEMM each, about two forward passes of that weight per step. A weight used by several calls joins
the calls' tokens. Tokens whose backprops vanish for every output and sample (after the last attention
layer of a classifier that reads one token) are dropped from both factors (:func:`live_tokens`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from f3ocus.ntk.grad_samplers import GradSampler, _tokens
from f3ocus.ntk.problem import NTKProblem, forward_flops
from f3ocus.ntk.rows import JacobianPlan, _fallback_rows, _hooked_rows, jacobian_plan

__all__ = [
    "factored_matvec",
    "factored_names",
    "hooked_factors",
    "linear_shapes",
    "live_tokens",
    "tokens_of",
    "tokens_per_sample",
    "weight_gram",
    "weight_gram_costs",
]


def factored_names(problem: NTKProblem, plan: JacobianPlan) -> set[str]:
    """Hooked weights whose every owner is an exact ``nn.Linear`` (tied Linear weights included)."""
    return {
        name
        for name, owners in plan.hooked.items()
        if owners and all(type(m) is nn.Linear and local == "weight" for m, local in owners)
    }


def linear_shapes(problem: NTKProblem) -> dict[str, tuple[int, int]]:
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


def tokens_per_sample(problem: NTKProblem) -> float:
    """Rough sequence length $S$: forward multiply-adds per sample over the parameter count (at least 1)."""
    total = sum(problem.layer_sizes().values())
    return max(1.0, forward_flops(problem) / max(problem.num_samples * total, 1))


def live_tokens(g: Tensor) -> Tensor | None:
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


def capturing_sampler(
    local_to_name: dict[tuple[int, str], str], factors: dict[str, list[tuple[Tensor, Tensor, int]]]
) -> GradSampler:
    """An ``nn.Linear`` grad sampler that records ``(A, B)`` for the weights in ``factors`` instead of rows.

    The first call of such a weight returns a zero-stride stand-in for its rows, so that the pass
    allocates nothing for it (the stand-in is dropped afterwards); biases and other weights get rows.
    Tokens whose backprops are all zero are dropped from both factors (:func:`live_tokens`).
    """
    placed: set[str] = set()

    def capture(module: nn.Module, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
        a, g = _tokens(inputs[0], backprops, module.in_features)
        out: dict[str, Tensor] = {}
        name = local_to_name.get((id(module), "weight"))
        if name in factors:
            live = live_tokens(g)
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


def embedding_names(plan: JacobianPlan) -> set[str]:
    """Hooked weights whose every owner is an exact ``nn.Embedding`` (their rows are kept compressed)."""
    return {
        name
        for name, owners in plan.hooked.items()
        if owners and all(type(m) is nn.Embedding and local == "weight" for m, local in owners)
    }


def capturing_embedding(
    local_to_name: dict[tuple[int, str], str], calls: dict[str, list[tuple[Tensor, Tensor, int | None]]]
) -> GradSampler:
    """An ``nn.Embedding`` grad sampler that records ``(ids, backprops, padding_idx)`` per call instead of rows.

    Like :func:`capturing_sampler`, the first call returns a zero-stride stand-in for the rows;
    :func:`embedding_rows` builds them afterwards on the table rows the batch uses only.
    """
    placed: set[str] = set()

    def capture(module: nn.Module, inputs: tuple, backprops: Tensor) -> dict[str, Tensor]:
        name = local_to_name[(id(module), "weight")]
        k, n = backprops.shape[:2]
        g = backprops.reshape(k, n, -1, module.embedding_dim)
        calls[name].append((inputs[0].reshape(n, -1), g, module.padding_idx))
        if name in placed:
            return {}
        placed.add(name)
        return {"weight": g.new_zeros(()).expand(k, n, *module.weight.shape)}

    return capture


def embedding_rows(calls: list[tuple[Tensor, Tensor, int | None]]) -> Tensor:
    r"""Rows ``(M, N, U, dim)`` of an embedding table on the $U$ table rows that the calls' ids use.

    Row $(m, n)$ of the full Jacobian is zero outside those table rows, so the compressed rows have
    the same Gram $J J^\top$ and the same products; ``(M, N, num_embeddings, dim)`` is never formed (a
    30522-word table with 16 kernel outputs would take 6 GB for 4 samples).
    """
    ids = torch.cat([i for i, _, _ in calls], dim=1)  # (N, S), calls joined along the tokens
    g = torch.cat([b for _, b, _ in calls], dim=2)  # (M, N, S, dim)
    used, inverse = torch.unique(ids, return_inverse=True)
    m, n, s, dim = g.shape
    out = g.new_zeros(m, n, used.numel(), dim)
    out.scatter_add_(2, inverse.reshape(1, n, s, 1).expand(m, n, s, dim), g)
    pad = calls[0][2]
    if pad is not None:
        out[:, :, used == pad] = 0.0
    return out


def hooked_factors(problem: NTKProblem, *, chunk_size: int | None, use_hooks: bool = True):
    """One hooked pass: ``(factors, rows)``.

    ``factors``: weight name -> list of ``(A (N*S, i), B (N, M, S, o) (a view), o)`` per call;
    ``rows``: every other scored parameter -> rows ``(M, N, *shape)`` (output-major), as
    :mod:`f3ocus.ntk.rows` builds them; embedding tables -> ``(M, N, U, dim)`` on the $U$ table rows
    the batch uses (:func:`embedding_rows`).
    """
    params = problem.layer_params()
    exclude: frozenset[int] = frozenset()
    # The first pass stops at the first module that does not see the batch first; the second runs to
    # the end and finds all others; the third then has none.
    for stop_early in (True, False, False):
        plan = jacobian_plan(problem, exclude=exclude)
        factored = factored_names(problem, plan)
        local_to_name = {(id(mod), local): name for name, own in plan.hooked.items() for mod, local in own}
        factors: dict[str, list[tuple[Tensor, Tensor, int]]] = {name: [] for name in factored}
        capture = capturing_sampler(local_to_name, factors)
        embeds: dict[str, list[tuple[Tensor, Tensor, int | None]]] = {name: [] for name in embedding_names(plan)}
        lookup = capturing_embedding(local_to_name, embeds)
        modules = [
            (mod, capture if type(mod) is nn.Linear else lookup if _compressed(mod, embeds, local_to_name) else s)
            for mod, s in plan.modules
        ]
        plan = JacobianPlan(hooked=plan.hooked, fallback=plan.fallback, modules=modules)
        # All M outputs in one batched backward pass: the factors keep every backprop anyway.
        got = _hooked_rows(
            problem, plan, params, chunk_size=None, batched=True, tap=use_hooks, stop_early=stop_early
        )
        if not isinstance(got, frozenset):
            break
        exclude = exclude | got  # modules that do not see the batch first: re-plan without them
    else:  # pragma: no cover - the third plan excludes every unbatched module
        raise RuntimeError("factored: could not plan the hooked pass")
    rows, rest = got
    rows = {k: v for k, v in rows.items() if k not in factors}
    rows.update({k: embedding_rows(calls) for k, calls in embeds.items() if calls})
    if rest:
        fallback = _fallback_rows(problem, rest, params, chunk_size=chunk_size)  # (N, M, *shape)
        rows.update({k: v.transpose(0, 1) for k, v in fallback.items()})
    return factors, rows


def _compressed(module: nn.Module, embeds: dict, local_to_name: dict) -> bool:
    return type(module) is nn.Embedding and local_to_name.get((id(module), "weight")) in embeds


def tokens_of(calls: list[tuple[Tensor, Tensor, int]], n: int, m: int) -> tuple[Tensor, Tensor]:
    r"""One weight's calls as ``A`` ``(N, S, i)`` and ``B`` ``(N, M, S, o)``, calls joined along the tokens.

    The rows are $\sum_{\text{calls}} \sum_s B_s A_s^\top$, a sum over the joined token axis.
    """
    a = [a.reshape(n, -1, a.shape[-1]) for a, _, _ in calls]
    b = [g.reshape(n, m, -1, o) for _, g, o in calls]  # views
    if len(calls) == 1:
        return a[0], b[0]
    return torch.cat(a, dim=1), torch.cat(b, dim=2)


def weight_gram_costs(n: int, m: int, o: int, i: int, s: float) -> tuple[float, float, bool]:
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


def weight_gram(a: Tensor, b: Tensor, out: Tensor, *, how: str = "auto", chunk: int = 2**20) -> None:
    r"""Add $J_W J_W^\top$ of one Linear weight to ``out`` ``(N M, N M)``, rows sample-major (``n*M + k``).

    ``a`` ``(N, S, i)`` and ``b`` ``(N, M, S, o)`` (:func:`tokens_of`). ``how``: ``"rows"``,
    ``"kernel"`` or ``"auto"`` (the cheaper that fits, :func:`weight_gram_costs`). By rows, the
    rows of ``chunk`` elements' worth of output features are built at a time, so nothing of size
    $NM \times oi$ is ever held.
    """
    n, m, s, o = b.shape
    i = a.shape[-1]
    if how == "auto":
        by_rows, by_kernel, fits = weight_gram_costs(n, m, o, i, s)
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


def factored_matvec(
    rows: list[list[Tensor]], factors: list[list[tuple[Tensor, Tensor]]], n: int, m: int
):
    """The batched operator ``V (B, N M) -> (Θ_b V_b)_b`` of ``B`` layers, rows output-major (``m*N + n``).

    Args:
        rows: per layer, its stored row blocks ``(N M, p)`` (output-major).
        factors: per layer, its weights' ``(A (N, S, i), B (N, M, S, o))`` from :func:`tokens_of`.
        n, m: samples and kernel outputs per sample.
    """
    flat = [
        [(a.reshape(-1, a.shape[-1]), b.reshape(n, m, -1), b.shape[-1]) for a, b in layer] for layer in factors
    ]

    def matvec(v: Tensor) -> Tensor:
        out = torch.zeros_like(v)
        for idx in range(len(flat)):
            vb = v[idx]
            if not bool(vb.any()):  # a converged layer: Lanczos passes zeros
                continue
            acc = out[idx]
            for r in rows[idx]:
                acc += r @ (r.T @ vb)
            vn = vb.reshape(m, n).T.unsqueeze(1)  # (N, 1, M)
            for a, b, o in flat[idx]:
                # J^T v = (sum_k v_kn B_kns)^T A_ns: (o, N S) x (N S, i)
                ut = (torch.bmm(vn, b).reshape(-1, o).T @ a).T.contiguous()  # (i, o)
                # (J u)_kn = sum_s B_kns . (u A_ns): (N S, i) x (i, o), then one dot per (n, k)
                y = (a @ ut).reshape(n, 1, -1)  # (N, 1, S o)
                acc += torch.bmm(y, b.transpose(1, 2)).reshape(n, m).T.reshape(-1)
        return out

    return matvec
