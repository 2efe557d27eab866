"""The "factored" method (Linear weights as activations x backprops) against the dense reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ntk_helpers import F64, assert_scores_close, dense_scores, kernel_kwargs

from cases import CASE_NAMES, build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.factors import hooked_factors as _pass
from f3ocus.ntk.factors import live_tokens as _live_tokens
from f3ocus.ntk.factors import weight_gram as _weight_gram
from f3ocus.ntk.factors import weight_gram_costs as _weight_gram_costs
from f3ocus.ntk.importance import scoring_problem
from f3ocus.ntk.methods import available_methods, get_method
from f3ocus.ntk.methods.factored import _layer_bytes, _layer_costs, factored_cost


@pytest.mark.parametrize("eig", ("auto", "gram", "lanczos"))
@pytest.mark.parametrize("kernel", ("output", "sum"))
@pytest.mark.parametrize("name", CASE_NAMES)
def test_factored_matches_dense_reference(name, kernel, eig):
    ref = dense_scores(name, kernel)
    if ref is None:
        pytest.skip(f"case {name!r} fixes its own kernel")
    case = build(name, F64, "cpu")
    got = ntk_layer_importance(
        case.model, case.batch, method="factored", seed=0, eig=eig, **kernel_kwargs(case, kernel)
    )
    assert_scores_close(got, ref)
    assert got.stats["method"] == "factored" and got.stats["converged"]
    paths = set(got.stats["extra"]["path"].values()) - {"zero"}
    if eig != "auto":
        assert paths <= {eig}


def test_factored_is_registered_with_a_cost_model():
    assert "factored" in available_methods()
    assert get_method("factored").cost is factored_cost


def test_factored_keeps_linear_weights_out_of_the_rows():
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(F64)
    x = torch.randn(4, 7, 6, generator=g, dtype=F64)  # 7 tokens per sample

    def pooled(out):
        return out.mean(dim=1)

    got = ntk_layer_importance(model, x, output_fn=pooled, method="factored", seed=0)
    ref = ntk_layer_importance(model, x, output_fn=pooled, method="dense")
    assert_scores_close(got, ref)
    assert got.stats["extra"]["factored"] == ["0.weight", "2.weight"]
    with scoring_problem(model, x, output_fn=pooled) as problem:
        cost = factored_cost(problem)
    assert cost.flops > 0 and cost.memory > 0


def test_tokens_without_backprops_are_dropped_and_the_scores_stay_exact():
    """Only token 0 reaches the output: the other tokens' activations and backprops are dropped."""
    g = torch.Generator().manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).to(F64)
    x = torch.randn(4, 7, 6, generator=g, dtype=F64)

    def first_token(out):
        return out[:, 0]

    got = ntk_layer_importance(model, x, output_fn=first_token, method="factored", seed=0)
    ref = ntk_layer_importance(model, x, output_fn=first_token, method="dense")
    assert_scores_close(got, ref)
    with scoring_problem(model, x, output_fn=first_token) as problem:
        factors, _ = _pass(problem, chunk_size=None)
    for calls in factors.values():
        for a, b, _ in calls:
            assert a.shape[0] == 4  # one token per sample is left
            assert b.shape[-1] == 5 or b.shape[-1] == 3


@settings(max_examples=40, deadline=None)
@given(
    live=st.lists(st.booleans(), min_size=1, max_size=9),
    k=st.integers(1, 3),
    n=st.integers(1, 3),
    o=st.integers(1, 4),
    seed=st.integers(0, 1000),
)
def test_live_tokens_finds_exactly_the_tokens_with_a_nonzero_backprop(live, k, n, o, seed):
    g = torch.Generator().manual_seed(seed)
    back = torch.randn(k, n, len(live), o, generator=g, dtype=F64)
    back[:, :, [i for i, keep in enumerate(live) if not keep]] = 0.0
    if any(live):  # a live token may be zero in feature 0 (the cheap test) and nonzero elsewhere
        first = live.index(True)
        back[..., first, 0] = 0.0
        back[0, 0, first, -1] = 1.0
    got = _live_tokens(back)
    if all(live) or len(live) == 1:
        assert got is None
    else:
        assert got.tolist() == [i for i, keep in enumerate(live) if keep]


def test_factored_splits_layers_into_groups_under_a_memory_budget():
    case = build("vit_sdpa", F64, "cpu")
    whole = ntk_layer_importance(case.model, case.batch, method="factored", seed=0)
    with scoring_problem(case.model, case.batch) as problem:
        largest = max(_layer_bytes(problem).values())
    split = ntk_layer_importance(
        case.model, case.batch, method="factored", seed=0, max_memory=int(2 * largest)
    )
    assert whole.stats["extra"]["groups"] == 1 and split.stats["extra"]["groups"] > 1
    assert split.stats["backward_passes"] == split.stats["extra"]["groups"] * whole.stats["backward_passes"]
    assert_scores_close(split, whole, rel=1e-7)


def test_auto_picks_factored_when_the_grams_dominate_and_it_matches_dense():
    """Many kernel rows (N M = 192) and few tokens: the (NM)^2 Grams of "persample" cost most."""
    g = torch.Generator().manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 8)).to(F64)
    x = torch.randn(24, 3, 12, generator=g, dtype=F64)  # 3 tokens per sample

    def pooled(out):
        return out.mean(dim=1)

    got = ntk_layer_importance(model, x, output_fn=pooled, seed=0)
    assert got.stats["method"] == "factored"
    costs = got.stats["auto_costs"]
    assert costs["factored"][0] < costs["persample"][0]
    # Few tokens, many rows: the factored Lanczos is cheaper than any Gram, in every layer.
    assert set(got.stats["extra"]["path"].values()) == {"lanczos"}
    assert_scores_close(got, ntk_layer_importance(model, x, output_fn=pooled, method="dense"))


def test_auto_builds_the_gram_from_the_factors_when_rows_are_few_and_tokens_many():
    """N M = 6 rows, 40 tokens: a 6 x 6 Gram built a chunk of rows at a time beats any Lanczos."""
    g = torch.Generator().manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.GELU(), torch.nn.Linear(16, 3)).to(F64)
    x = torch.randn(2, 40, 12, generator=g, dtype=F64)

    def pooled(out):
        return out.mean(dim=1)

    got = ntk_layer_importance(model, x, output_fn=pooled, method="factored", seed=0)
    assert set(got.stats["extra"]["path"].values()) == {"gram"}
    assert got.stats["matvecs"] == 0 and got.stats["extra"]["factored"] == ["0.weight", "2.weight"]
    gram, lanczos = _layer_costs(2, 3, [(16, 12, 40.0)], 16)
    assert gram < lanczos
    assert_scores_close(got, ntk_layer_importance(model, x, output_fn=pooled, method="dense"))


def test_factored_rejects_an_unknown_eig_option():
    case = build("mlp", F64, "cpu")
    with pytest.raises(ValueError, match=r"eig.*'dense'.*auto.*gram.*lanczos"):
        ntk_layer_importance(case.model, case.batch, method="factored", eig="dense")


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 4),
    m=st.integers(1, 3),
    s=st.integers(1, 6),
    o=st.integers(1, 5),
    i=st.integers(1, 5),
    chunk=st.integers(1, 200),
    how=st.sampled_from(("rows", "kernel", "auto")),
    seed=st.integers(0, 1000),
)
def test_weight_gram_matches_the_gram_of_explicit_rows(n, m, s, o, i, chunk, how, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, s, i, generator=g, dtype=F64)
    b = torch.randn(n, m, s, o, generator=g, dtype=F64)
    rows = torch.einsum("nkso,nsi->nkoi", b, a).reshape(n * m, o * i)  # d F_nk / d W, sample-major
    got = torch.full((n * m, n * m), 0.5, dtype=F64)  # it adds to what is there
    _weight_gram(a, b, got, how=how, chunk=chunk)
    torch.testing.assert_close(got, rows @ rows.T + 0.5, rtol=1e-12, atol=1e-12)


def test_weight_gram_costs_prefer_token_kernels_only_when_few_tokens_are_left():
    by_rows, by_kernel, fits = _weight_gram_costs(16, 10, 768, 192, 1.0)  # class token only
    assert fits and by_kernel < by_rows / 100
    by_rows, by_kernel, _ = _weight_gram_costs(16, 10, 768, 192, 65.0)  # every token
    assert by_rows < by_kernel


class _TwoLookups(torch.nn.Module):
    """One padded embedding table looked up twice (two id tensors), summed, then a Linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(30, 3, padding_idx=0)
        self.head = torch.nn.Linear(3, 4)

    def forward(self, a, b):
        return self.head(torch.tanh(self.embed(a).mean(1) + self.embed(b).mean(1)))


def test_embedding_rows_are_compressed_to_the_used_table_rows_and_stay_exact():
    torch.manual_seed(0)
    model = _TwoLookups().to(F64)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 8, (3, 5), generator=g), torch.randint(0, 8, (3, 2), generator=g)
    a[0, 0] = 0  # the padding row has no gradient
    with scoring_problem(model, (a, b)) as problem:
        _, rows = _pass(problem, chunk_size=None)
        used = torch.unique(torch.cat([a.flatten(), b.flatten()])).numel()
        assert rows["embed.weight"].shape == (4, 3, used, 3)
    ref = ntk_layer_importance(model, (a, b), method="dense")
    got = ntk_layer_importance(model, (a, b), method="factored", eig="gram")
    assert_scores_close(got, ref, rel=1e-10)
