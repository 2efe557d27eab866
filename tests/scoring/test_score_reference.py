"""Every layer score against its brute-force reference in float64, on every case of the shared table."""

from __future__ import annotations

import pytest
import torch
from score_helpers import LOSS_SCORES, case_with_loss

from cases import CASE_NAMES, build
from f3ocus import layer_scores, ntk_layer_importance
from f3ocus.scoring import reference_scores

F64 = torch.float64
REL = 1e-6


def _assert_close(got, ref):
    assert list(got) == list(ref)
    scale = max(abs(v) for v in ref.values()) or 1.0
    for layer in ref:
        assert got[layer] == pytest.approx(ref[layer], rel=REL, abs=REL * scale * 1e-3), layer


@pytest.mark.parametrize("score", [*LOSS_SCORES, "synflow", "magnitude"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_score_matches_reference(name, score):
    case, kw = case_with_loss(name)
    if score == "snr" and _num_samples(case.batch) < 2:
        pytest.skip("snr is undefined for one sample (no standard deviation); its error is tested")
    got = layer_scores(case.model, case.batch, score, **kw)
    ref = reference_scores(case.model, case.batch, score, **kw)
    _assert_close(got, ref)
    assert got.num_params is not None and set(got.num_params) == set(ref)
    assert got.stats["score"] == score and got.stats["dtype"] == "float64"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_ntk_score_is_ntk_layer_importance(name):
    case = build(name, F64, "cpu")
    got = layer_scores(case.model, case.batch, "ntk", method="dense", **case.kwargs)
    ref = ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)
    _assert_close(got, ref)
    assert got.num_params == ref.num_params and got.stats["ntk"]["method"] == "dense"


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("score", ["fisher", "snr", "grasp", "synflow", "grad_norm"])
def test_other_reduction_matches_reference(score, reduction):
    case, kw = case_with_loss("tied_weights")
    got = layer_scores(case.model, case.batch, score, reduction=reduction, **kw)
    ref = reference_scores(case.model, case.batch, score, reduction=reduction, **kw)
    _assert_close(got, ref)
    assert got.stats["reduction"] == reduction


def _num_samples(batch):
    leaf = batch if isinstance(batch, torch.Tensor) else (batch[0] if isinstance(batch, (tuple, list)) else next(iter(batch.values())))
    return leaf.shape[0]


def _centred_ce(out, t):
    """A loss that couples samples: sample n's loss depends on the batch mean of the logits."""
    return torch.nn.functional.cross_entropy(out - out.mean(0, keepdim=True), t, reduction="none")


def _contrastive(out, t):
    """InfoNCE over the batch: every sample's loss reads every other sample's embedding."""
    z = torch.nn.functional.normalize(out, dim=1)
    return torch.nn.functional.cross_entropy(z @ t.T / 0.5, torch.arange(len(z)), reduction="none")


@pytest.mark.parametrize("score", LOSS_SCORES)
@pytest.mark.parametrize("loss", ["centred", "contrastive"])
def test_losses_that_couple_samples_match_the_reference(score, loss):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).to(F64)
    x = torch.randn(5, 4, dtype=F64)
    if loss == "centred":
        kw = {"loss_fn": _centred_ce, "targets": torch.randint(0, 3, (5,))}
    else:
        kw = {"loss_fn": _contrastive, "targets": torch.randn(5, 3, dtype=F64)}
    got = layer_scores(model, x, score, **kw)
    ref = reference_scores(model, x, score, **kw)
    _assert_close(got, ref)
    # the per-sample row engine alone would be wrong here: the sample-alone losses differ from the batch's
    alone = torch.cat([kw["loss_fn"](model(x[i : i + 1]), kw["targets"][i : i + 1]) for i in range(5)])
    assert not torch.allclose(alone, kw["loss_fn"](model(x), kw["targets"]))
