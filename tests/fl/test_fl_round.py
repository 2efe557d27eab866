"""run_round against a by-hand round, failure handling, and learning over rounds."""

from __future__ import annotations

import copy

import pytest
import torch
from fl_models import BlockNet, block_map, make_data, sgd_train

from f3ocus.fl import masked_fedavg, run_round
from f3ocus.fl.reference import masked_fedavg_reference


def by_hand(model, datasets, plan):
    """The round written out: copy, freeze by hand, train, average with the dense reference."""
    states, counts = [], []
    for data, layers in zip(datasets, plan, strict=True):
        local = copy.deepcopy(model)
        prefixes = tuple(f"{layer}." for layer in layers)
        for n, p in local.named_parameters():
            p.requires_grad_(n.startswith(prefixes))
        counts.append(sgd_train(local, data))
        states.append({n: p.detach().clone() for n, p in local.named_parameters() if n.startswith(prefixes)})
    g = {n: p.detach() for n, p in model.named_parameters()}
    return masked_fedavg_reference(g, states, counts)


def test_matches_by_hand_round_float64():
    model = BlockNet().double()
    datasets = [
        tuple(t.double() if t.is_floating_point() else t for t in make_data(n, seed=s))
        for n, s in [(12, 1), (5, 2), (9, 3)]
    ]
    plan = [["blocks.0", "head"], ["head"], ["blocks.1"]]  # blocks.2 trained by nobody
    expected = by_hand(model, datasets, plan)
    untouched = model.blocks[2].weight.detach().clone()
    result = run_round(model, datasets, plan, sgd_train, layer_map=block_map(model))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), torch.from_numpy(expected[n]), rtol=1e-12, atol=1e-12)
    assert torch.equal(model.blocks[2].weight, untouched)
    assert result.reported == (0, 1, 2) and result.num_samples == (12.0, 5.0, 9.0)
    assert set(result.updated) == {
        f"{layer}.{k}" for layer in ("blocks.0", "head", "blocks.1") for k in ("weight", "bias")
    }
    assert result.cost.params_up == (30, 10, 20)


def test_global_flags_untouched_and_failures():
    model = BlockNet()
    model.blocks[0].bias.requires_grad_(False)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = make_data(6)

    def flaky(m, client):
        if client == "bad":
            raise RuntimeError("lost connection")
        return sgd_train(m, data)

    lmap = block_map(model)
    with pytest.raises(RuntimeError, match="lost connection"):
        run_round(model, ["ok", "bad"], [["head"], ["blocks.1"]], flaky, layer_map=lmap)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    result = run_round(model, ["ok", "bad"], [["head"], ["blocks.1"]], flaky, layer_map=lmap, on_error="skip")
    assert result.reported == (0,) and result.failed == {1: "RuntimeError: lost connection"}
    assert torch.equal(model.blocks[1].weight, before["blocks.1.weight"])
    assert not torch.equal(model.head.weight, before["head.weight"])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_weights_from_num_samples_when_train_fn_returns_none():
    model = BlockNet()
    twin = copy.deepcopy(model)
    datasets = [make_data(4, seed=1), make_data(4, seed=2)]
    lmap = block_map(model)
    run_round(
        model,
        datasets,
        [["head"], ["head"]],
        lambda m, d: (sgd_train(m, d), None)[1],
        layer_map=lmap,
        num_samples=[1, 3],
    )
    states = []
    for d in datasets:
        local = copy.deepcopy(twin)
        for n, p in local.named_parameters():
            p.requires_grad_(n.startswith("head."))
        sgd_train(local, d)
        states.append({"head.weight": local.head.weight.detach()})
    expected = masked_fedavg({"head.weight": twin.head.weight.detach()}, states, [1, 3])["head.weight"]
    torch.testing.assert_close(model.head.weight.detach(), expected)


def test_loss_decreases_over_rounds():
    model = BlockNet(depth=2)
    datasets = [make_data(32, seed=s) for s in range(3)]
    x = torch.cat([d[0] for d in datasets])
    y = torch.cat([d[1] for d in datasets])
    lmap = block_map(model)
    loss0 = torch.nn.functional.cross_entropy(model(x), y).item()
    plans = [[["blocks.0", "head"], ["blocks.1"], ["head"]], [["head"], ["blocks.0"], ["blocks.1", "head"]]]
    for r in range(6):
        run_round(model, datasets, plans[r % 2], sgd_train, layer_map=lmap)
    loss = torch.nn.functional.cross_entropy(model(x), y).item()
    assert loss < 0.8 * loss0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"train_fn": 3}, TypeError, "train_fn must be callable"),
        ({"assignment": [["head"]]}, ValueError, "assignment has 1 clients but clients has 2"),
        ({"num_samples": [1]}, ValueError, "num_samples has 1 entries but clients has 2"),
        (
            {"train_fn": lambda m, c: None},
            ValueError,
            "train_fn returned None for client 0 and num_samples was not given",
        ),
        ({"train_fn": lambda m, c: "ten"}, TypeError, "train_fn must return the number of samples"),
        ({"on_error": "ignore"}, ValueError, "on_error='ignore' is not a valid choice"),
    ],
)
def test_errors(kwargs, error, match):
    model = BlockNet()
    args = {
        "clients": [0, 1],
        "assignment": [["head"], ["head"]],
        "train_fn": lambda m, c: 1,
        "layer_map": block_map(model),
        **kwargs,
    }
    with pytest.raises(error, match=match):
        run_round(model, args.pop("clients"), args.pop("assignment"), args.pop("train_fn"), **args)
