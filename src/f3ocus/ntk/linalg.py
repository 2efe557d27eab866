"""Linear algebra of scoring: batched Lanczos, the top eigenvalue of a Gram, and the one chooser between them.

:func:`lanczos_max_eig` runs many Lanczos recurrences at once; :func:`gram_top_eig` takes the top
eigenvalue of an explicit Gram; :func:`uses_gram` is the single cost rule that decides between them
for stored Jacobian rows; :func:`rows_top_eigs` applies it to a dict of layer Jacobians.

Batched Lanczos for the largest eigenvalue of many symmetric PSD operators at once.

One call runs ``B`` independent Lanczos recurrences in lock step, so that every iteration costs one
*batched* matrix-vector product ``matvec(V) -> AV`` with ``V`` of shape ``(B, n)``. This is the shape
of the layer-wise NTK problem: ``B`` layers, each with an ``n x n`` kernel
$\\Theta_l = J_l J_l^\\top$ (``n = N M`` rows), and one backward pass through the model serves every
layer's product at once.

For each problem the recurrence (Lanczos 1950; Golub & Van Loan, *Matrix Computations*, Alg. 10.1.1)
builds an orthonormal basis $Q_k = [q_1, \\dots, q_k]$ of the Krylov space
$\\mathcal K_k(A, q_1)$ and the tridiagonal $T_k = Q_k^\\top A Q_k$,

$$A q_j = \\beta_{j-1} q_{j-1} + \\alpha_j q_j + \\beta_j q_{j+1}, \\qquad
  \\alpha_j = q_j^\\top A q_j, \\quad \\beta_j = \\lVert r_j \\rVert .$$

The largest Ritz pair $(\\theta_1, y = Q_k s)$ of $T_k$ has the residual
$r_1 = \\lVert A y - \\theta_1 y \\rVert = \\beta_k \\lvert s_k \\rvert$ (Paige 1971).

**What ``tol`` guarantees.** ``tol`` bounds the relative error of $\\lambda_{\\max}$: a problem stops
once $r_1 \\le$ ``tol`` $\\cdot\\, \\theta_1$, and then

1. $\\theta_1 \\le \\lambda_{\\max}$, always (a Rayleigh quotient; Cauchy interlacing): the value is never
   too large, whatever the tolerance and the start;
2. some eigenvalue lies in $[\\theta_1 - r_1, \\theta_1 + r_1]$ (the residual bound; Parlett, *The
   Symmetric Eigenvalue Problem*, Thm. 4-5-1), so that
   $0 \\le \\lambda_{\\max} - \\theta_1 \\le r_1 \\le$ ``tol`` $\\cdot\\, \\theta_1$ unless an eigenvalue
   above $\\theta_1 + r_1$ is missing from the Krylov space;
3. if moreover $\\lambda_2 \\le \\theta_1 - \\delta$ for a known $\\delta > r_1$, then
   $\\lambda_{\\max} - \\theta_1 \\le r_1^2 / \\delta$ (Kato-Temple; Kato 1949, Parlett Thm. 11-7-1).

No a-posteriori test on one Krylov space can exclude the missing eigenvalue of 2.: for a start
orthogonal to the top eigenvector every computed quantity is that of the operator without its top
eigenvalue. The exclusion is therefore probabilistic, over the Gaussian start: the top eigenvector's
share $c_1^2$ of the start is small only with small probability ($P(c_1^2 < t) \\approx \\sqrt{2nt/\\pi}$),
and every step multiplies its weight against the next eigenvector's. The gap-free bound of Kuczyński &
Woźniakowski (SIAM J. Matrix Anal. Appl. 13(4), 1992; they also show that no deterministic start
works), $P\\big((\\lambda_{\\max} - \\theta_1)/\\lambda_{\\max} > \\varepsilon\\big) \\le 1.648 \\sqrt n\\,
e^{-\\sqrt{\\varepsilon}(2k - 1)}$ after $k$ steps, holds for every spectrum but asks for about 40
steps at $\\varepsilon = 10^{-2}$, $n = 160$ and confidence 0.99, several times what layer kernels need.

Each result also reports an *estimate* of the eigenvalue error, 3. with $\\delta$ estimated by the next
Ritz pair, $\\max\\big(\\min(r_1, r_1^2/\\delta),\\ \\theta_1^{(k)} - \\theta_1^{(k-1)}\\big)$,
$\\delta = \\theta_1 - \\theta_2 - r_2$. It is not used to stop, because it is optimistic exactly when the
top is not yet resolved: $\\theta_2 \\le \\lambda_2$ by interlacing, so $\\theta_1 - \\theta_2$ overstates
the true gap. On 100 random starts each of nine spectra with close top pairs (0.5-2% apart), a
triple, a multiplicity, a cluster, flat and geometric spectra ($n = 160$;
``benchmarks/lanczos_stopping.py``, table in ``docs/scoring.md``), stopping on the estimate at 1e-4
left a relative error above 1e-4 in 151 of 900 runs, stopping on the residual in 3 (at 1e-3: 28),
each a stop on the second member of a pair under 1% apart. Block Lanczos (Golub & Underwood 1977)
with two vectors missed 0 of 360 at 1e-4 but spent 21.4 products against 15.4 on the pair 2% apart,
and at 1e-2, where it spends as many as single vectors at 1e-4, it missed as often (2 of 360), so
the single-vector recurrence is kept, with the default float32 ``tol`` of 1e-4
(:data:`~f3ocus.ntk.calibration.DEFAULT_TOL_FLOAT32`).
Every new vector is reorthogonalized against the whole
basis (classical Gram-Schmidt, twice: Giraud et al. 2005), so the identity holds to working accuracy
and no spurious copies of converged eigenvalues appear. When $\\beta_k$ vanishes the Krylov space is
invariant and $\\theta$ is an exact eigenvalue; after ``n`` steps the space is the whole space and
the answer is exact (the ``maxiter >= n`` case). A repeated top eigenvalue is found once, with its
exact value.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from f3ocus._checks import check_choice, check_int, check_positive_float, describe
from f3ocus.errors import NotConvergedError
from f3ocus.ntk.calibration import GEMV_WEIGHT, LANCZOS_STEPS
from f3ocus.ntk.registry import LayerEig

__all__ = [
    "LanczosResult",
    "gram_top_eig",
    "lanczos_max_eig",
    "eigenvalue_error",
    "layer_eig",
    "random_start",
    "rows_top_eigs",
    "small_eig_threads",
    "uses_gram",
]

_DEFAULT_MAXITER = 200
logger = logging.getLogger("f3ocus.ntk")


@dataclass(frozen=True, eq=False)
class LanczosResult:
    """Largest Ritz pair of one operator.

    Attributes:
        value: the largest Ritz value $\\theta$ (a lower bound on, and after convergence equal to,
            $\\lambda_{\\max}$; ``0.0`` for the zero operator).
        vector: the unit Ritz vector $y$, shape ``(n,)``, on the operator's device.
        residual: $\\lVert A y - \\theta y \\rVert$ (absolute), from the Lanczos identity.
        iterations: Lanczos steps taken (matrix-vector products spent on this operator).
        converged: ``residual <= tol * value``, or an invariant subspace / the whole space was reached.
        error: an estimate of $\\lambda_{\\max} - \\theta$ (absolute; 0 when exact), see the module.
    """

    value: float
    vector: Tensor
    residual: float
    iterations: int
    converged: bool
    error: float = 0.0


def lanczos_max_eig(
    matvec: Callable[[Tensor], Tensor],
    v0: Tensor,
    *,
    tol: float = 1e-8,
    maxiter: int | None = None,
    throw: bool = False,
) -> list[LanczosResult]:
    """Largest eigenpair of ``B`` symmetric PSD operators by batched Lanczos with full reorthogonalization.

    Args:
        matvec: pure function mapping ``V`` of shape ``(B, n)`` to ``(A_1 V_1, ..., A_B V_B)`` of the same
            shape. Rows of problems that have stopped are passed as zeros.
        v0: starting vectors, shape ``(B, n)``, nonzero rows (draw them from a seeded generator). They fix
            the device and dtype of the whole computation.
        tol: bound on the relative error of the top eigenvalue: stop a problem once
            ``||A y - theta y|| <= tol * theta``; then ``0 <= lambda_max - theta <= tol * theta`` unless
            the start missed the top eigenvector (see the module docstring for the exact guarantee),
            and the error is usually about ``(tol * theta)**2 / gap``.
        maxiter: most Lanczos steps per problem; ``None`` means ``min(n, 200)``. Capped at ``n``, where the
            result is exact.
        throw: raise :class:`f3ocus.errors.NotConvergedError` if some problem did not converge.

    Returns:
        One :class:`LanczosResult` per row of ``v0``.

    Raises:
        TypeError: ``v0`` is not a floating-point tensor.
        ValueError: ``v0`` is not 2-D or has a zero row, or ``tol`` / ``maxiter`` are invalid.

    Example:
        >>> A = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
        >>> v0 = torch.ones(1, 3, dtype=torch.float64)
        >>> res = lanczos_max_eig(lambda V: V @ A, v0, tol=1e-12)
        >>> round(res[0].value, 10), res[0].converged
        (5.0, True)
    """
    if not isinstance(v0, Tensor) or not v0.is_floating_point():
        raise TypeError(f"v0 must be a floating-point torch.Tensor of shape (B, n), got {describe(v0)}.")
    if v0.ndim != 2 or v0.shape[0] == 0 or v0.shape[1] == 0:
        raise ValueError(
            f"v0 must have shape (B, n) with B >= 1 and n >= 1 (one starting vector per problem), "
            f"got {describe(v0)}."
        )
    tol = check_positive_float("tol", tol)
    batch, n = v0.shape
    if maxiter is None:
        maxiter = min(n, _DEFAULT_MAXITER)
    maxiter = min(check_int("maxiter", maxiter, low=1), n)
    norms = torch.linalg.vector_norm(v0, dim=1)
    if bool((norms == 0).any()):
        rows = torch.nonzero(norms == 0).flatten().tolist()
        raise ValueError(f"v0 has all-zero rows {rows}; every starting vector must be nonzero.")

    dtype, device = v0.dtype, v0.device
    basis = torch.zeros(batch, maxiter, n, dtype=dtype, device=device)
    q = v0 / norms[:, None]
    alphas = torch.zeros(batch, maxiter, dtype=torch.float64)
    betas = torch.zeros(batch, maxiter, dtype=torch.float64)
    active = torch.ones(batch, dtype=torch.bool)  # host-side bookkeeping
    done_at = torch.full((batch,), maxiter, dtype=torch.long)
    exact = torch.zeros(batch, dtype=torch.bool)
    anorm = torch.zeros(batch, dtype=torch.float64)
    eps = torch.finfo(dtype).eps
    ritz = [None] * batch
    last = torch.zeros(batch, dtype=torch.float64)  # the top Ritz value of the previous step

    for j in range(maxiter):
        basis[:, j] = q
        w = matvec(q)
        if w.shape != q.shape:
            raise ValueError(
                f"matvec must return shape {tuple(q.shape)} for input of that shape, got {tuple(w.shape)}."
            )
        # Full reorthogonalization, classical Gram-Schmidt twice; the first pass yields alpha_j.
        coeff = torch.einsum("bkn,bn->bk", basis[:, : j + 1], w)
        w = w - torch.einsum("bkn,bk->bn", basis[:, : j + 1], coeff)
        coeff2 = torch.einsum("bkn,bn->bk", basis[:, : j + 1], w)
        w = w - torch.einsum("bkn,bk->bn", basis[:, : j + 1], coeff2)
        beta = torch.linalg.vector_norm(w, dim=1)
        host = torch.stack([coeff[:, j] + coeff2[:, j], beta]).to("cpu", torch.float64)
        alphas[:, j] = torch.where(active, host[0], 0.0)
        betas[:, j] = torch.where(active, host[1], 0.0)
        anorm = torch.maximum(anorm, torch.sqrt(alphas[:, j] ** 2 + betas[:, j] ** 2))

        idx = torch.nonzero(active).flatten()
        theta, s, theta2, s2 = _tridiagonal_top(alphas[idx, : j + 1], betas[idx, :j])
        est = betas[idx, j] * s[:, j].abs()
        err = eigenvalue_error(est, theta - theta2 - betas[idx, j] * s2[:, j].abs())
        # Ritz convergence: the top Ritz value only grows; its last increase is a floor on the error
        # (it catches a Krylov space that has not yet resolved the top of a close pair).
        err = torch.maximum(err, theta - last[idx])
        last[idx] = theta
        breakdown = betas[idx, j] <= 10 * n * eps * anorm[idx]
        finished = (est <= tol * theta) | breakdown | (j + 1 == n)
        for pos, b in enumerate(idx.tolist()):
            ritz[b] = (float(theta[pos]), s[pos], float(est[pos]), float(err[pos]))
            if bool(finished[pos]) or j + 1 == maxiter:
                active[b] = False
                done_at[b] = j + 1
                exact[b] = bool(breakdown[pos]) or j + 1 == n or bool(est[pos] <= tol * theta[pos])
        if not bool(active.any()):
            break
        if (j + 1) % 10 == 0:
            logger.info("Lanczos step %d: %d of %d problems still running", j + 1, int(active.sum()), batch)
        keep = active.to(device)[:, None]
        q = torch.where(keep, w / torch.where(beta > 0, beta, 1.0)[:, None], torch.zeros_like(w))

    results = []
    for b in range(batch):
        theta, s, est, err = ritz[b]
        k = int(done_at[b])
        if bool(exact[b]) and est > tol * max(theta, 0.0):
            err = 0.0  # an invariant subspace or the whole space: exact
        vector = torch.einsum("kn,k->n", basis[b, :k], s.to(dtype=dtype, device=device))
        results.append(
            LanczosResult(
                value=max(theta, 0.0),
                vector=vector,
                residual=est,
                iterations=k,
                converged=bool(exact[b]),
                error=err,
            )
        )
    if throw:
        failed = [b for b, r in enumerate(results) if not r.converged]
        if failed:
            worst = max(results[b].residual / max(results[b].value, 1e-300) for b in failed)
            raise NotConvergedError(
                f"Lanczos did not converge for problems {failed} within maxiter={maxiter} steps "
                f"(worst relative residual {worst:.3g} > tol={tol:g}); raise maxiter or tol."
            )
    return results


@contextmanager
def small_eig_threads(device: torch.device | str = "cpu") -> Iterator[None]:
    """Run small dense eigenproblems on CPU with one thread (restored afterwards).

    LAPACK's threaded symmetric eigensolvers spend seconds in thread hand-overs on matrices of a few
    hundred rows when the cores are busy (measured: 2.3 s versus 1 ms for a 160 x 160 ``eigvalsh``
    on a loaded 2-core machine); one thread is always fast at these sizes.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def eigenvalue_error(residual: Tensor, gap: Tensor) -> Tensor:
    r"""The bound on $\lambda_{\max} - \theta_1$: $r_1^2 / \delta$ (Kato-Temple) where $\delta > r_1$, else $r_1$.

    Args:
        residual: $r_1$, the top Ritz pair's residual norms.
        gap: $\delta = \theta_1 - \theta_2 - r_2$, the estimated distance to the rest of the spectrum.
    """
    kato = residual * residual / torch.where(gap > 0, gap, 1.0)
    return torch.where(gap > residual, torch.minimum(residual, kato), residual)


def _tridiagonal_top(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Two largest eigenpairs of a batch of symmetric tridiagonal matrices (float64, on the host).

    Args:
        alpha: diagonals, shape ``(B, k)``.
        beta: off-diagonals, shape ``(B, k - 1)``.

    Returns:
        ``(theta, s, theta2, s2)``: the top eigenvalues ``(B,)`` and unit eigenvectors ``(B, k)``, and the
        second ones (``theta`` and zeros when ``k = 1``: no gap is known yet).
    """
    t = torch.diag_embed(alpha)
    if beta.shape[1] > 0:
        t = t + torch.diag_embed(beta, offset=1) + torch.diag_embed(beta, offset=-1)
    with small_eig_threads():
        evals, evecs = torch.linalg.eigh(t)
    if evals.shape[1] < 2:
        # no second Ritz value yet: no gap estimate (theta2 = theta), so the bound is the residual
        return evals[:, -1], evecs[:, :, -1], evals[:, -1], torch.zeros_like(evecs[:, :, -1])
    return evals[:, -1], evecs[:, :, -1], evals[:, -2], evecs[:, :, -2]


# -- Gram or Lanczos on stored rows ---------------------------------------------------------------
def uses_gram(rows: int, steps: int = LANCZOS_STEPS) -> bool:
    r"""Whether a Gram + ``eigvalsh`` beats Lanczos for an ``(n, P)`` Jacobian with ``n = rows``.

    Gram: $n^2 P$ multiply-adds in one GEMM. Lanczos on the rows: $2 k n P$ per $k$ steps, in GEMV
    pairs weighted :data:`~f3ocus.ntk.calibration.GEMV_WEIGHT`. $P$ cancels: the Gram wins while
    $n \le 2 \cdot$ ``GEMV_WEIGHT`` $\cdot k$.
    """
    return rows <= 2 * GEMV_WEIGHT * 2 * steps


def gram_top_eig(gram: Tensor) -> LayerEig:
    r"""$\lambda_{\max}$ of a PSD Gram by ``eigvalsh`` in float64 (one CPU thread: :func:`small_eig_threads`)."""
    if gram.numel() == 0:
        return LayerEig(value=0.0)
    with small_eig_threads(gram.device):
        top = torch.linalg.eigvalsh(gram.to(torch.float64))[-1].item()
    return LayerEig(value=max(top, 0.0))


def layer_eig(res: LanczosResult) -> LayerEig:
    """A :class:`~f3ocus.ntk.registry.LayerEig` from a Lanczos result (relative residual)."""
    return LayerEig(
        value=res.value,
        residual=res.residual / max(res.value, 1e-300),
        iterations=res.iterations,
        converged=res.converged,
        error=res.error / max(res.value, 1e-300),
    )


def random_start(
    batch: int, n: int, *, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """Starting vectors ``(batch, n)`` drawn from ``generator`` (on its own device), moved to ``device``."""
    where = generator.device if generator is not None else "cpu"
    return torch.randn(batch, n, generator=generator, dtype=dtype, device=where).to(device)


def rows_top_eigs(
    jacobians: dict[str, Tensor | list[Tensor]],
    *,
    eig: str = "auto",
    tol: float = 1e-8,
    maxiter: int = 500,
    generator: torch.Generator | None = None,
) -> tuple[dict[str, LayerEig], dict[str, str]]:
    """$\\lambda_{\\max}(J_l J_l^\top)$ for every stored Jacobian.

    Args:
        jacobians: layer -> $J_l$ ``(n, P_l)``, or a list of column blocks of it, all with the same ``n``.
        eig: ``"gram"`` (form $\\Theta_l = \\sum_b J_b J_b^\top$, ``eigvalsh``), ``"lanczos"`` (batched
            Lanczos on $v \\mapsto \\sum_b J_b (J_b^\top v)$), or ``"auto"`` (:func:`uses_gram`).
        tol, maxiter, generator: Lanczos settings (see :func:`lanczos_max_eig`).

    Returns:
        ``(eigs, path)``: a :class:`~f3ocus.ntk.registry.LayerEig` per layer and the path per layer.
    """
    check_choice("eig", eig, ("auto", "gram", "lanczos"))
    blocks = {
        k: [b for b in (v if isinstance(v, list) else [v]) if b.shape[1] > 0] for k, v in jacobians.items()
    }
    eigs: dict[str, LayerEig] = {}
    path: dict[str, str] = {}
    krylov = []
    grams: dict[str, Tensor] = {}
    for layer, parts in blocks.items():
        rows = parts[0].shape[0] if parts else 0
        use_gram = eig == "gram" or (eig == "auto" and uses_gram(rows))
        if not parts or rows == 0:
            eigs[layer], path[layer] = LayerEig(value=0.0), "zero"
        elif use_gram or rows == 1:
            grams[layer] = sum(b @ b.T for b in parts)
        else:
            krylov.append(layer)
    # All GEMMs first, then the small eigenproblems (float64, one CPU thread: see small_eig_threads).
    for layer, gram in grams.items():
        eigs[layer], path[layer] = gram_top_eig(gram), "gram"
    if krylov:
        first = blocks[krylov[0]][0]
        v0 = random_start(len(krylov), first.shape[0], generator=generator, dtype=first.dtype, device=first.device)

        def matvec(v: Tensor) -> Tensor:
            return torch.stack([sum(b @ (b.T @ v[i]) for b in blocks[k]) for i, k in enumerate(krylov)])

        results = lanczos_max_eig(matvec, v0, tol=tol, maxiter=maxiter)
        for layer, res in zip(krylov, results, strict=True):
            eigs[layer] = layer_eig(res)
            path[layer] = "lanczos"
    return {k: eigs[k] for k in jacobians}, path
