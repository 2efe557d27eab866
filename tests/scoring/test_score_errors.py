"""Bad input to layer_scores, register_score and the transforms: one clear error each, naming the argument."""

from __future__ import annotations

import pytest
import torch
from score_helpers import ce
from torch import nn

from f3ocus import LayerScores, layer_scores, register_score
from f3ocus.scoring import check_nonnegative, make_nonnegative, unregister_score

F64 = torch.float64


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(5, 4, dtype=F64)
    y = torch.tensor([0, 2, 1, 1, 0])
    return model, x, y


def test_unknown_score_suggests_the_closest_name(mlp):
    model, x, _ = mlp
    with pytest.raises(ValueError, match=r"score='fishr' is not a registered layer score\. Did you mean 'fisher'\?.*'ntk'"):
        layer_scores(model, x, "fishr")
    with pytest.raises(ValueError, match=r"score=3 is not a registered"):
        layer_scores(model, x, 3)


@pytest.mark.parametrize(
    ("kwargs", "missing"),
    [({}, "loss_fn and targets are missing"), ({"loss_fn": ce}, "targets is missing"),
     ({"targets": torch.zeros(5)}, "loss_fn is missing")],
)
def test_loss_score_without_a_loss(mlp, kwargs, missing):
    model, x, _ = mlp
    with pytest.raises(ValueError, match=rf"score='snip' needs a per-sample loss, but {missing}.*reduction='none'"):
        layer_scores(model, x, "snip", **kwargs)


def test_loss_fn_must_be_callable(mlp):
    model, x, y = mlp
    with pytest.raises(TypeError, match=r"loss_fn must be callable as loss_fn\(output, targets\), got 'ce'"):
        layer_scores(model, x, "fisher", loss_fn="ce", targets=y)


def test_a_reduced_loss_is_refused(mlp):
    model, x, y = mlp
    with pytest.raises(ValueError, match=r"loss_fn must return one loss per sample \(5 values\).*reduction='none'"):
        layer_scores(model, x, "grad_norm", loss_fn=lambda out, t: ce(out, t).mean(), targets=y)


def test_model_output_without_a_tensor_needs_output_fn(mlp):
    _, x, y = mlp

    class Boxed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3).double()

        def forward(self, x):
            return {"scores": self.fc(x)}

    with pytest.raises(TypeError, match=r"Pass output_fn=\.\.\."):
        layer_scores(Boxed(), x, "fisher", loss_fn=ce, targets=y)
    got = layer_scores(Boxed(), x, "fisher", loss_fn=ce, targets=y, output_fn=lambda out: out["scores"])
    assert list(got) == ["fc"]


def test_batch_none_only_for_data_free_scores(mlp):
    model, _, _ = mlp
    with pytest.raises(ValueError, match=r"score='synflow' reads the batch, but batch=None"):
        layer_scores(model, None, "synflow")
    assert list(layer_scores(model, None, "magnitude")) == ["0", "2"]


def test_reduction_is_checked(mlp):
    model, x, y = mlp
    with pytest.raises(ValueError, match=r"score='random' has no per-parameter form, so reduction='mean'"):
        layer_scores(model, x, "random", reduction="mean")
    with pytest.raises(ValueError, match=r"reduction='avg' is not a valid choice\..*'sum', 'mean'"):
        layer_scores(model, x, "snip", loss_fn=ce, targets=y, reduction="avg")


def test_transform_and_seed_are_checked(mlp):
    model, x, y = mlp
    with pytest.raises(ValueError, match=r"transform='shfit' is not a valid choice\. Did you mean 'shift'\?"):
        layer_scores(model, x, "grasp", loss_fn=ce, targets=y, transform="shfit")
    with pytest.raises(ValueError, match=r"seed must lie in \[0, inf\], got -1"):
        layer_scores(model, x, "random", seed=-1)


def test_dtype_is_checked(mlp):
    model, _, _ = mlp
    with pytest.raises(TypeError, match=r"dtype must be a floating torch\.dtype such as torch\.float64, got 'float64'"):
        layer_scores(model, None, "magnitude", dtype="float64")


def test_unknown_option_lists_the_score_options(mlp):
    model, x, y = mlp
    with pytest.raises(TypeError, match=r"score='rgn' got unknown option\(s\) 'epsilon'; its options are 'eps'"):
        layer_scores(model, x, "rgn", loss_fn=ce, targets=y, epsilon=1.0)
    with pytest.raises(TypeError, match=r"score='fisher' got unknown option\(s\) 'eps'; it takes no options"):
        layer_scores(model, x, "fisher", loss_fn=ce, targets=y, eps=1.0)


def test_snr_needs_two_samples(mlp):
    model, x, y = mlp
    with pytest.raises(ValueError, match=r"score='snr' needs at least 2 samples, but batch holds 1"):
        layer_scores(model, x[:1], "snr", loss_fn=ce, targets=y[:1])


def test_non_finite_gradient_names_the_layer(mlp):
    model, x, y = mlp

    def sqrt_loss(out, t):  # finite loss values, infinite gradient
        return (out[:, 0] - out[:, 0].detach()).sqrt()

    with pytest.raises(ValueError, match=r"gradient of the loss holds NaN/Inf values at parameter '0\.weight' \(layer '0'\)"):
        layer_scores(model, x, "grad_norm", loss_fn=sqrt_loss, targets=y)
    with pytest.raises(ValueError, match=r"per-sample gradient of the loss holds NaN/Inf values at layer '0'"):
        layer_scores(model, x, "fisher", loss_fn=sqrt_loss, targets=y)


def test_nan_batch_and_nan_targets(mlp):
    model, x, y = mlp
    bad = x.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"batch holds 1 NaN/Inf value"):
        layer_scores(model, bad, "snip", loss_fn=ce, targets=y)


def test_empty_batch(mlp):
    model, x, y = mlp
    with pytest.raises(ValueError, match=r"batch is empty: .* with 0 samples"):
        layer_scores(model, x[:0], "fisher", loss_fn=ce, targets=y[:0])


def test_rgn_of_an_all_zero_layer(mlp):
    model, x, y = mlp
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    with pytest.raises(ValueError, match=r"score='rgn' is undefined for layer '2'.*Pass eps=1e-12"):
        layer_scores(model, x, "rgn", loss_fn=ce, targets=y)
    assert layer_scores(model, x, "rgn", loss_fn=ce, targets=y, eps=1e-12)["2"] >= 0


def test_synflow_overflow_says_to_use_float64():
    model = nn.Sequential(*[nn.Linear(4, 4) for _ in range(4)])
    with torch.no_grad():  # a zero batch has finite outputs; the all-ones input's products reach ~1e50
        for layer in model:
            layer.weight.fill_(1e12)
            layer.bias.zero_()
    with pytest.raises(ValueError, match=r"score='synflow' overflowed.*Pass dtype=torch\.float64"):
        layer_scores(model, torch.zeros(2, 4), "synflow")
    assert layer_scores(model, torch.zeros(2, 4), "synflow", dtype=F64).stats["dtype"] == "float64"


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch\.nn\.Module, got"):
        layer_scores(lambda x: x, torch.zeros(2, 2), "magnitude")


def test_register_score_checks_its_arguments():
    with pytest.raises(ValueError, match=r"register_score\(name='my score'\): use a non-empty identifier"):
        register_score("my score")
    with pytest.raises(ValueError, match=r"needs='labels' is not a valid choice"):
        register_score("mine", needs="labels")
    with pytest.raises(TypeError, match=r"register_score\('mine'\) decorates a function"):
        register_score("mine")(3)


def test_custom_score_must_return_every_layer_in_order(mlp):
    model, x, _ = mlp

    @register_score("broken_layers", needs="nothing", reduction=None)
    def broken_layers(ctx):
        return {"2": 1.0}

    @register_score("broken_sign", needs="nothing", reduction=None)
    def broken_sign(ctx):
        return {k: -1.0 for k in ctx.layers}

    try:
        with pytest.raises(RuntimeError, match=r"one value per layer, in order \['0', '2'\]; got \['2'\]"):
            layer_scores(model, x, "broken_layers")
        with pytest.raises(RuntimeError, match=r"registered as unsigned but returned negative values"):
            layer_scores(model, x, "broken_sign")
    finally:
        unregister_score("broken_layers")
        unregister_score("broken_sign")


def test_per_sample_gradients_need_a_loss_score(mlp):
    model, x, _ = mlp

    @register_score("rows_without_loss", needs="data", reduction=None)
    def rows_without_loss(ctx):
        return {k: float(v.sum()) for k, v in ctx.per_sample_gradients().items()}

    try:
        with pytest.raises(RuntimeError, match=r"per-sample gradients need a loss: register the score with needs='loss'"):
            layer_scores(model, x, "rows_without_loss")
    finally:
        unregister_score("rows_without_loss")


def test_transform_errors():
    with pytest.raises(TypeError, match=r"scores must be a LayerScores"):
        make_nonnegative({"a": -1.0})
    with pytest.raises(ValueError, match=r"how='log' is not a valid choice"):
        make_nonnegative(LayerScores({"a": -1.0}), "log")


def test_check_nonnegative_names_the_transform():
    signed = LayerScores({"a": -2.0, "b": 1.0}, stats={"score": "grasp"})
    with pytest.raises(
        ValueError,
        match=r"scores must be >= 0 for selection, but the score='grasp' scores are signed: 1 of 2 layers are "
        r"negative \(lowest -2 at layer 'a'\)\. Transform them first: f3ocus\.scoring\.make_nonnegative\(scores, 'shift'\)",
    ):
        check_nonnegative(signed)
    assert check_nonnegative(make_nonnegative(signed)) == {"a": 0.0, "b": 3.0}
