"""Outputs that couple samples: found by the probe, scored exactly or refused, never a wrong number.

Each coupled case is scored with ``method="auto"`` (which must pick an exact method and agree with the
dense reference in float64) and with every method that assumes independent samples (which must
refuse with a message naming an ``output_fn`` that fixes it).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from ntk_helpers import assert_scores_close
from torch import nn

from cases import build
from f3ocus import ntk_layer_importance
from f3ocus.ntk.importance import scoring_problem

F64 = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class TwoTower(nn.Module):
    """A CLIP-like pair of towers: image n against every text of the batch."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4))
        self.text = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4))
        self.logit_scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x, t):
        a = F.normalize(self.image(x), dim=-1)
        b = F.normalize(self.text(t), dim=-1)
        return self.logit_scale.exp().to(a.device) * a @ b.T  # (N images, N texts)


class BatchStatsNet(nn.Module):
    """BatchNorm with batch statistics (no running stats: also in eval mode)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6, track_running_stats=False)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x))))


def _model(cls):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return cls().double()


def _two_tower_batch(n=4):
    return (torch.randn(n, 5, dtype=F64, generator=_gen(1)), torch.randn(n, 3, dtype=F64, generator=_gen(2)))


def _contrastive(out, labels):
    return F.cross_entropy(out, labels, reduction="none")  # row n: image n against the batch's texts


COUPLED = {
    "logits_per_image": lambda: (_model(TwoTower), _two_tower_batch(), {}),
    "logits_per_text": lambda: (_model(TwoTower), _two_tower_batch(), {"output_fn": lambda out: out.T}),
    "sum_of_pair_logits": lambda: (_model(TwoTower), _two_tower_batch(), {"kernel": "sum"}),
    "contrastive_loss": lambda: (
        _model(TwoTower),
        _two_tower_batch(),
        {"kernel": "loss", "loss_fn": _contrastive, "targets": torch.arange(4)},
    ),
    "batchnorm_batch_stats": lambda: (_model(BatchStatsNet), torch.randn(5, 4, dtype=F64, generator=_gen(3)), {}),
}


@pytest.mark.parametrize("name", list(COUPLED))
def test_auto_scores_coupled_outputs_exactly(name):
    model, batch, kw = COUPLED[name]()
    ref = ntk_layer_importance(model, batch, method="dense", **kw)
    got = ntk_layer_importance(model, batch, seed=0, **kw)
    assert got.stats["coupled"] and got.stats["method"] in ("dense", "lanczos")
    assert_scores_close(got, ref, rel=1e-6)


@pytest.mark.parametrize("method", ["persample", "factored"])
@pytest.mark.parametrize("name", list(COUPLED))
def test_per_sample_methods_refuse_coupled_outputs(name, method):
    model, batch, kw = COUPLED[name]()
    with pytest.raises(ValueError, match=r"couple the samples of the batch.*output_fn=lambda out: out\.logits_per_image"):
        ntk_layer_importance(model, batch, method=method, **kw)


def test_lanczos_is_exact_for_coupled_outputs():
    model, batch, kw = COUPLED["logits_per_image"]()
    ref = ntk_layer_importance(model, batch, method="dense", **kw)
    got = ntk_layer_importance(model, batch, method="lanczos", seed=0, **kw)
    assert_scores_close(got, ref, rel=1e-6)


def test_the_per_sample_diagonal_is_not_coupled_and_every_method_agrees():
    model, batch, _ = COUPLED["logits_per_image"]()
    kw = {"output_fn": lambda out: out.diagonal()[:, None]}
    ref = ntk_layer_importance(model, batch, method="dense", **kw)
    for method in ("persample", "factored", "auto"):
        got = ntk_layer_importance(model, batch, method=method, seed=0, **kw)
        assert got.stats["coupled"] is None
        assert_scores_close(got, ref, rel=1e-8)


def test_auto_with_options_only_per_sample_methods_take_refuses_coupled_outputs():
    model, batch, kw = COUPLED["batchnorm_batch_stats"]()
    with pytest.raises(ValueError, match=r"none of the methods that take the given options"):
        ntk_layer_importance(model, batch, eig="gram", **kw)


@pytest.mark.parametrize("name", ["mlp", "cnn_groupnorm_batchnorm", "hf_bert", "embedding", "vit_sdpa"])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_the_probe_finds_no_coupling_in_per_sample_models(name, dtype):
    case = build(name, dtype, "cpu")
    with scoring_problem(case.model, case.batch, **case.kwargs) as problem:
        assert problem.coupled is None


def test_a_model_that_cannot_run_one_sample_counts_as_coupled():
    class NeedsPairs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            if x.shape[0] < 2:
                raise RuntimeError("needs two samples")
            return self.fc(x)

    model = NeedsPairs().double()
    with scoring_problem(model, torch.randn(3, 2, dtype=F64)) as problem:
        assert "does not run on sample 0 alone" in problem.coupled
