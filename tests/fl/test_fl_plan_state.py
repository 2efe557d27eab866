"""train_only flags (restored, also on exceptions) and layer_state / load_layer_state."""

from __future__ import annotations

import pytest
import torch
from fl_models import BlockNet, block_map
from hypothesis import given, settings
from hypothesis import strategies as st

from f3ocus.fl import layer_state, load_layer_state, train_only


def flags(model):
    return {n: p.requires_grad for n, p in model.named_parameters()}


def test_exactly_the_given_layers_are_trainable_inside():
    model = BlockNet()
    lmap = block_map(model)
    with train_only(model, ["blocks.1", "head"], layer_map=lmap) as params:
        inside = flags(model)
    expected = {n: n.startswith(("blocks.1.", "head.")) for n in inside}
    assert inside == expected
    assert [id(p) for p in params] == [id(p) for n, p in model.named_parameters() if expected[n]]
    assert all(flags(model).values())


def test_mixed_flags_restored_after_exception():
    model = BlockNet()
    model.blocks[0].weight.requires_grad_(False)
    model.head.bias.requires_grad_(False)
    before = flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        with train_only(model, ["blocks.0"], layer_map=block_map(model)):
            assert model.blocks[0].weight.requires_grad
            raise RuntimeError("boom")
    assert flags(model) == before


def test_only_assigned_layers_change_under_training():
    model = BlockNet()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with train_only(model, ["blocks.2"], layer_map=block_map(model)) as params:
        opt = torch.optim.SGD(params, lr=0.5)
        model(x).square().sum().backward()
        opt.step()
    for n, p in model.named_parameters():
        assert (not torch.equal(p, before[n])) == n.startswith("blocks.2."), n


def test_nested_blocks_restore_in_order():
    model = BlockNet()
    lmap = block_map(model)
    with train_only(model, ["head"], layer_map=lmap):
        with train_only(model, [], layer_map=lmap):
            assert not any(flags(model).values())
        assert flags(model)["head.weight"] and not flags(model)["blocks.0.weight"]
    assert all(flags(model).values())


def test_default_layer_map_is_resolve_layers():
    from f3ocus import resolve_layers

    model = BlockNet()
    try:
        lmap = resolve_layers(model)
    except NotImplementedError:
        pytest.skip("resolve_layers not available yet")
    layer = next(iter(lmap))
    with train_only(model, [layer]):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(lmap[layer])


@pytest.mark.parametrize(
    ("layers", "layer_map", "error", "match"),
    [
        ("head", None, TypeError, r"layers must be a list of layer names.*Write \['head'\]"),
        (["hed"], None, ValueError, r"layers contains 'hed'.*Did you mean 'head'\?"),
        (["head"], [("head", ["head.weight"])], TypeError, "layer_map must be a mapping"),
        (["head"], {"head": "head.weight"}, TypeError, r"layer_map\['head'\] must be a list"),
        (["head"], {"head": ["head.wieght"]}, ValueError, r"names 'head.wieght'.*Did you mean 'head.weight'"),
    ],
)
def test_train_only_errors(layers, layer_map, error, match):
    model = BlockNet()
    lmap = block_map(model) if layer_map is None else layer_map
    before = flags(model)
    with pytest.raises(error, match=match):
        with train_only(model, layers, layer_map=lmap):
            pass
    assert flags(model) == before


def test_train_only_rejects_non_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with train_only({"a": 1}, [], layer_map={}):
            pass


def test_layer_state_roundtrip():
    src, dst = BlockNet(seed=0), BlockNet(seed=1)
    lmap = block_map(src)
    state = layer_state(src, ["blocks.0", "head"], layer_map=lmap)
    assert list(state) == ["blocks.0.weight", "blocks.0.bias", "head.weight", "head.bias"]
    assert all(not v.requires_grad for v in state.values())
    with torch.no_grad():
        src.head.weight.add_(1.0)  # a clone: the state does not move
    assert not torch.equal(state["head.weight"], src.head.weight)
    untouched = dst.blocks[1].weight.detach().clone()
    load_layer_state(dst, state)
    torch.testing.assert_close(dst.blocks[0].weight, src.blocks[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(dst.head.weight, state["head.weight"], rtol=0, atol=0)
    torch.testing.assert_close(dst.blocks[1].weight, untouched, rtol=0, atol=0)


def test_load_layer_state_buffers_and_casts():
    model = torch.nn.BatchNorm1d(3)
    load_layer_state(model, {"running_mean": torch.ones(3, dtype=torch.float64), "weight": torch.zeros(3)})
    assert model.running_mean.dtype == torch.float32 and model.running_mean.sum() == 3
    assert model.weight.sum() == 0


@pytest.mark.parametrize(
    ("state", "error", "match"),
    [
        ([("head.weight", torch.zeros(2, 4))], TypeError, "state must be a mapping"),
        (
            {"head.wieght": torch.zeros(2, 4)},
            ValueError,
            r"state\['head.wieght'\] is not a parameter.*Did you mean",
        ),
        ({"head.weight": [0.0]}, TypeError, r"state\['head.weight'\] must be a torch.Tensor"),
        (
            {"head.weight": torch.zeros(4, 2)},
            ValueError,
            r"has shape \(4, 2\) but the model's 'head.weight' has shape \(2, 4\)",
        ),
    ],
)
def test_load_layer_state_errors_write_nothing(state, error, match):
    model = BlockNet()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if isinstance(state, dict):
        state = {"blocks.0.bias": torch.full((4,), 9.0), **state}
    with pytest.raises(error, match=match):
        load_layer_state(model, state)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.lists(st.sampled_from(["blocks.0", "blocks.1", "blocks.2", "head"]), max_size=4),
    st.booleans(),
)
def test_flags_inside_and_after_any_plan(initial, layers, fail):
    """For any initial flags and any layer subset: inside, exactly the chosen parameters are
    trainable; after, also when the block raises, every flag is what it was."""
    model = BlockNet()
    for p, flag in zip(model.parameters(), initial, strict=True):
        p.requires_grad_(flag)
    before = flags(model)
    chosen = {f"{layer}.{kind}" for layer in layers for kind in ("weight", "bias")}
    try:
        with train_only(model, layers, layer_map=block_map(model)):
            assert flags(model) == {n: n in chosen for n in before}
            if fail:
                raise KeyboardInterrupt  # not an Exception: restoration must not depend on the type
    except KeyboardInterrupt:
        pass
    assert flags(model) == before
