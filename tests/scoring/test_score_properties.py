"""Properties of the layer scores: hypothesis over shapes, reductions, seeds, transforms, custom scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from score_helpers import LOSS_SCORES, case_with_loss, ce, square_loss
from torch import nn

from f3ocus import LayerScores, available_scores, layer_scores, register_score, select_layers
from f3ocus.scoring import TRANSFORMS, make_nonnegative, reference_scores, unregister_score

F64 = torch.float64


def _mlp(widths: list[int], bias: bool, seed: int) -> nn.Module:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b, bias=bias), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(F64)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=F64))
    return model


@settings(max_examples=12)
@given(
    widths=st.lists(st.integers(1, 5), min_size=2, max_size=4),
    n=st.integers(1, 6),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fast_paths_match_the_loops_on_random_shapes(widths, n, bias, seed):
    model = _mlp(widths, bias, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, widths[0], generator=g, dtype=F64)
    targets = torch.randn(n, widths[-1], generator=g, dtype=F64)
    for score in [*LOSS_SCORES, "synflow", "magnitude"]:
        if score == "snr" and n == 1:
            continue  # undefined for one sample (tested as an error)
        kw = {"loss_fn": square_loss, "targets": targets, "eps": 1e-9} if score in ("rgn", "snr") else {}
        if score in LOSS_SCORES and not kw:
            kw = {"loss_fn": square_loss, "targets": targets}
        got = layer_scores(model, x, score, **kw)
        ref = reference_scores(model, x, score, **kw)
        assert list(got) == list(ref)
        for layer in ref:
            assert got[layer] == pytest.approx(ref[layer], rel=1e-6, abs=1e-12), (score, layer)


@pytest.mark.parametrize("score", ["snip", "fisher", "grasp", "gradflow", "synflow", "magnitude", "snr", "grad_norm", "rgn"])
def test_sum_and_mean_differ_by_the_layer_size(score):
    case, kw = case_with_loss("cnn_groupnorm_batchnorm")
    s = layer_scores(case.model, case.batch, score, reduction="sum", **kw)
    m = layer_scores(case.model, case.batch, score, reduction="mean", **kw)
    for layer, p in s.num_params.items():
        factor = {"grad_norm": p**0.5, "rgn": 1.0}.get(score, p)
        assert s[layer] == pytest.approx(factor * m[layer], rel=1e-10)


@pytest.mark.parametrize("score", ["grad_norm", "rgn", "fisher", "snip", "grasp", "gradflow"])
def test_batch_mean_scores_do_not_change_when_every_sample_is_repeated(score):
    case, kw = case_with_loss("mlp_loss")
    twice = torch.cat([case.batch, case.batch])
    once = layer_scores(case.model, case.batch, score, **kw)
    doubled = layer_scores(case.model, twice, score, loss_fn=kw["loss_fn"], targets=torch.cat([kw["targets"]] * 2))
    for layer in once:
        assert doubled[layer] == pytest.approx(once[layer], rel=1e-10)


def test_random_is_seeded_and_uniform():
    case, _ = case_with_loss("vit_sdpa")
    a = layer_scores(case.model, None, "random", seed=3)
    b = layer_scores(case.model, case.batch, "random", seed=3)
    c = layer_scores(case.model, None, "random", seed=4)
    assert dict(a) == dict(b) != dict(c)
    assert list(a) == list(layer_scores(case.model, case.batch, "magnitude"))
    assert all(0.0 <= v < 1.0 for v in a.values()) and a.stats["seed"] == 3
    assert dict(a) == reference_scores(case.model, None, "random", seed=3)


def test_available_scores_lists_the_design_names_first():
    assert available_scores()[:10] == [
        "ntk", "grad_norm", "rgn", "snr", "fisher", "snip", "grasp", "synflow", "magnitude", "random",
    ]
    assert "gradflow" in available_scores()


def test_result_is_json_round_trippable_and_records_its_stats():
    case, kw = case_with_loss("lora")
    s = layer_scores(case.model, case.batch, "fisher", **kw)
    assert LayerScores.from_json(s.to_json()) == s
    st_ = s.stats
    assert (st_["score"], st_["reduction"], st_["needs"], st_["signed"]) == ("fisher", "sum", "loss", False)
    assert st_["num_samples"] == 5 and st_["backward_passes"] == 1 and st_["seconds"] > 0
    assert all(v > 0 for v in s.values())


def test_only_lora_adapters_are_scored():
    case, kw = case_with_loss("lora")
    s = layer_scores(case.model, case.batch, "snip", **kw)
    trainable = sum(p.numel() for p in case.model.parameters() if p.requires_grad)
    assert sum(s.num_params.values()) == trainable < sum(p.numel() for p in case.model.parameters())


@settings(max_examples=40)
@given(
    values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=8),
    how=st.sampled_from(TRANSFORMS),
    negate=st.booleans(),
)
def test_transforms_are_non_negative_and_keep_what_they_promise(values, how, negate):
    s = LayerScores({f"l{i}": v for i, v in enumerate(values)}, stats={"score": "grasp"})
    t = make_nonnegative(s, how, negate=negate)
    v, out = -s.to_numpy() if negate else s.to_numpy(), t.to_numpy()
    assert list(t) == list(s) and (out >= 0).all()
    assert t.stats["transform"] == {"how": how, "negate": negate} and t.stats["score"] == "grasp"
    i, j = np.meshgrid(range(len(v)), range(len(v)))
    if how == "rank":  # order kept: v_i < v_j implies t_i < t_j
        assert (out[i] < out[j])[v[i] < v[j]].all()
    if how == "shift":  # order kept up to rounding of the shift: v_i < v_j implies t_i <= t_j
        assert (out[i] <= out[j])[v[i] < v[j]].all()
    if how == "shift":
        assert out.min() == 0.0
    if how == "abs":
        assert np.array_equal(out, np.abs(v))
    if how == "clip":
        assert np.array_equal(out, np.maximum(v, 0))


def test_signed_grasp_feeds_selection_after_a_transform():
    case, kw = case_with_loss("vit_sdpa")
    raw = layer_scores(case.model, case.batch, "grasp", **kw)
    shifted = layer_scores(case.model, case.batch, "grasp", transform="shift", **kw)
    assert min(raw.values()) < 0 <= min(shifted.values())
    assert dict(shifted) == dict(make_nonnegative(raw, "shift"))
    plan = select_layers([shifted, make_nonnegative(raw, "rank")], 2, solver="exact", tradeoff=0.0)
    assert plan.mask.sum(axis=1).tolist() == [2, 2]
    with pytest.raises(ValueError, match=r">= 0"):  # selection refuses signed scores
        select_layers([raw], 2, solver="exact", tradeoff=0.0)


def test_a_custom_score_plugs_in_with_the_context_building_blocks():
    @register_score("mean_abs_grad", needs="loss", reduction="mean")
    def mean_abs_grad(ctx):
        g = ctx.gradient()
        return {layer: float(ctx.reduce(ctx.flat(layer, g).abs())) for layer in ctx.layers}

    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        x, y = torch.randn(6, 3, dtype=F64), torch.tensor([0, 1, 1, 0, 1, 0])
        got = layer_scores(model, x, "mean_abs_grad", loss_fn=ce, targets=y)
        ce(model(x), y).mean().backward()
        want = {k: float(torch.cat([model[int(k)].weight.grad.reshape(-1), model[int(k)].bias.grad]).abs().mean())
                for k in ("0", "2")}
        assert dict(got) == pytest.approx(want, rel=1e-12)
        assert "mean_abs_grad" in available_scores() and got.stats["reduction"] == "mean"
    finally:
        unregister_score("mean_abs_grad")


def test_half_precision_models_are_scored_in_float32():
    for score in ("magnitude", "snip"):
        case, kw = case_with_loss("mlp")
        kw = {} if score == "magnitude" else kw
        ref = reference_scores(case.model, case.batch, score, **kw)
        half = case.model.to(torch.bfloat16)
        s = layer_scores(half, case.batch.to(torch.bfloat16), score, **kw)
        assert s.stats["dtype"] == "float32"
        assert dict(s) == pytest.approx(ref, rel=5e-2)


def test_ntk_takes_the_loss_kernel_with_a_loss_unless_told_otherwise():
    from f3ocus import ntk_layer_importance

    case, kw = case_with_loss("mlp_loss")
    loss = layer_scores(case.model, case.batch, "ntk", method="dense", **kw)
    output = layer_scores(case.model, case.batch, "ntk", method="dense", kernel="output", **kw)
    assert loss.stats["ntk"]["kernel"] == "loss" and output.stats["ntk"]["kernel"] == "output"
    assert dict(output) == pytest.approx(dict(ntk_layer_importance(case.model, case.batch, method="dense")), rel=1e-10)
    assert dict(loss) == pytest.approx(dict(ntk_layer_importance(case.model, case.batch, method="dense", kernel="loss", **kw)), rel=1e-10)
