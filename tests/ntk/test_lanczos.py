"""Batched Lanczos against matrices with known spectra (float64)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from f3ocus.errors import NotConvergedError
from f3ocus.ntk.linalg import lanczos_max_eig

F64 = torch.float64


def _with_spectrum(spectrum, generator):
    """Random orthogonal conjugation Q diag(spectrum) Q^T: a matrix whose spectrum is known exactly."""
    n = len(spectrum)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=F64))
    return q @ torch.diag(torch.as_tensor(spectrum, dtype=F64)) @ q.T


def _batched(mats):
    stack = torch.stack(mats)
    return lambda v: torch.einsum("bij,bj->bi", stack, v)


def _solve(mats, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    v0 = torch.randn(len(mats), mats[0].shape[0], generator=g, dtype=F64)
    return lanczos_max_eig(_batched(mats), v0, **kw)


spectra = st.integers(1, 24).flatmap(
    lambda n: st.lists(
        st.one_of(st.just(0.0), st.floats(1e-6, 1e4, allow_nan=False, allow_infinity=False)),
        min_size=n,
        max_size=n,
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spectrum=spectra, seed=st.integers(0, 2**16))
def test_largest_eigenvalue_of_known_spectrum(spectrum, seed):
    g = torch.Generator().manual_seed(seed)
    a = _with_spectrum(spectrum, g)
    (res,) = _solve([a], seed=seed + 1, tol=1e-10, maxiter=len(spectrum))
    top = max(spectrum)
    assert res.converged
    assert res.value == pytest.approx(top, rel=1e-8, abs=1e-9 * max(top, 1.0))
    # The reported residual is the true one, and the vector is a unit vector.
    true_res = torch.linalg.vector_norm(a @ res.vector - res.value * res.vector).item()
    assert true_res <= 1e-6 * max(top, 1.0)
    assert torch.linalg.vector_norm(res.vector).item() == pytest.approx(1.0, abs=1e-8)


@settings(max_examples=20, deadline=None)
@given(sizes=st.lists(st.floats(0.1, 100.0), min_size=2, max_size=5), seed=st.integers(0, 1000))
def test_batch_members_are_independent(sizes, seed):
    """A batch gives the same answers as one solve per problem."""
    g = torch.Generator().manual_seed(seed)
    mats = [_with_spectrum([s, s / 2, s / 3, 0.0, s / 7, 1e-3], g) for s in sizes]
    batch = _solve(mats, seed=seed, tol=1e-12)
    for res, s in zip(batch, sizes, strict=True):
        assert res.value == pytest.approx(s, rel=1e-10)


@pytest.mark.parametrize(
    "spectrum",
    [
        [3.0],  # n = 1
        [0.0] * 6,  # zero operator
        [7.0, 0, 0, 0, 0, 0, 0, 0],  # rank one
        [5.0, 5.0, 5.0, 1.0, 0.5, 0.0],  # repeated top eigenvalue
        [1e6, 1e6 * (1 - 1e-9), 1.0, 1e-8, 1e-12, 0.0],  # ill-conditioned, clustered top
    ],
    ids=["n1", "zero", "rank1", "repeated", "illcond"],
)
def test_edge_cases(spectrum):
    g = torch.Generator().manual_seed(3)
    (res,) = _solve([_with_spectrum(spectrum, g)], tol=1e-12)
    assert res.converged
    assert res.value == pytest.approx(max(spectrum), rel=1e-9, abs=1e-12)


def test_early_breakdown_stops_at_the_invariant_subspace():
    """A rank-r operator and a random start: the Krylov space is invariant after at most r + 1 steps."""
    g = torch.Generator().manual_seed(0)
    a = _with_spectrum([4.0, 2.0, 1.0] + [0.0] * 17, g)
    (res,) = _solve([a], tol=1e-30, maxiter=20)
    assert res.converged
    assert res.iterations <= 4
    assert res.value == pytest.approx(4.0, rel=1e-12)


def test_maxiter_at_least_n_is_exact_even_without_tolerance():
    g = torch.Generator().manual_seed(1)
    spectrum = torch.linspace(1.0, 1.0001, 10, dtype=F64).tolist()  # tiny gaps: slow convergence
    (res,) = _solve([_with_spectrum(spectrum, g)], tol=1e-300, maxiter=50)
    assert res.iterations <= 10 and res.converged
    assert res.value == pytest.approx(1.0001, rel=1e-12)


def test_not_converged_is_reported_and_raised_with_throw():
    g = torch.Generator().manual_seed(2)
    spectrum = torch.linspace(0.0, 1.0, 200, dtype=F64).tolist()  # no gap: many steps needed
    a = _with_spectrum(spectrum, g)
    (res,) = _solve([a], tol=1e-12, maxiter=3)
    assert not res.converged and res.iterations == 3
    assert res.value < 1.0
    with pytest.raises(NotConvergedError, match=r"did not converge for problems \[0\] within maxiter=3"):
        _solve([a], tol=1e-12, maxiter=3, throw=True)


def test_float32_operator():
    g = torch.Generator().manual_seed(4)
    a = _with_spectrum([10.0, 3.0, 1.0, 0.0, 0.0], g).float()
    v0 = torch.randn(1, 5, generator=g)
    (res,) = lanczos_max_eig(lambda v: v @ a, v0, tol=1e-5)
    assert res.vector.dtype == torch.float32
    assert res.value == pytest.approx(10.0, rel=1e-5)


def test_errors_name_the_argument():
    mv = lambda v: v  # noqa: E731
    with pytest.raises(TypeError, match="v0 must be a floating-point torch.Tensor"):
        lanczos_max_eig(mv, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"v0 must have shape \(B, n\)"):
        lanczos_max_eig(mv, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match=r"v0 has all-zero rows \[1\]"):
        lanczos_max_eig(mv, torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=F64))
    with pytest.raises(ValueError, match="tol must be a finite number > 0"):
        lanczos_max_eig(mv, torch.ones(1, 2, dtype=F64), tol=0.0)
    with pytest.raises(ValueError, match=r"maxiter must lie in \[1, inf\], got 0"):
        lanczos_max_eig(mv, torch.ones(1, 2, dtype=F64), maxiter=0)
    with pytest.raises(ValueError, match=r"matvec must return shape \(1, 2\)"):
        lanczos_max_eig(lambda v: v[:, :1], torch.ones(1, 2, dtype=F64))


def test_random_starts_find_the_top_of_a_close_pair_at_the_default_float32_tolerance():
    """Top two eigenvalues 2% apart (as in ViT layer kernels): every seed converges to the larger one."""
    g = torch.Generator().manual_seed(5)
    spectrum = [1.0, 0.98, 0.93, 0.89] + torch.linspace(0.8, 0.0, 156, dtype=F64).pow(3).tolist()
    a = _with_spectrum(spectrum, g)
    for seed in range(40):
        (res,) = _solve([a], seed=seed, tol=1e-4)
        assert res.converged
        assert res.value == pytest.approx(1.0, rel=1e-6)


def test_the_reported_error_estimate_is_of_the_size_of_the_true_error():
    g = torch.Generator().manual_seed(3)
    spectrum = [1.0, 0.6, *(torch.rand(58, generator=g, dtype=F64) * 0.5).tolist()]
    a = _with_spectrum(spectrum, g)
    for tol in (1e-2, 1e-3):
        (res,) = _solve([a], seed=4, tol=tol, maxiter=60)
        true = 1.0 - res.value
        assert 0.0 <= true <= 2 * res.error + 1e-14
        assert res.error <= res.residual  # Kato-Temple is sharper than the residual once the gap shows
