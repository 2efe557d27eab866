"""PEFT adapters as selectable layers (skipped cleanly without peft)."""

from __future__ import annotations

import sys

import pytest
import torch
from fl_models import BlockNet, make_data, sgd_train

from f3ocus.errors import MissingExtraError
from f3ocus.fl import adapter_layers, add_lora, communication_cost, layer_state, run_round, train_only
from f3ocus.fl.peft import block_of


def test_block_of_rules():
    assert block_of("encoder.layer.3.attention.query.lora_A.default.weight") == "encoder.layer.3"
    assert (
        block_of("base_model.model.classifier.modules_to_save.default.weight")
        == "base_model.model.classifier"
    )
    assert block_of("head.lora_B.default.weight") == "head"
    assert block_of("head.weight") == "head"
    assert block_of("a.b.c.weight", blocks=["a", "a.b"]) == "a.b"
    with pytest.raises(ValueError, match=r"lies in none of blocks=\['x'\]"):
        block_of("a.b.weight", blocks=["x"])


def test_adapter_layers_whole_blocks_and_errors():
    model = BlockNet()
    assert adapter_layers(model) == {
        "blocks.0": ["blocks.0.weight", "blocks.0.bias"],
        "blocks.1": ["blocks.1.weight", "blocks.1.bias"],
        "blocks.2": ["blocks.2.weight", "blocks.2.bias"],
        "head": ["head.weight", "head.bias"],
    }
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="model has no trainable parameters"):
        adapter_layers(model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        adapter_layers("model")


def test_missing_peft_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'f3ocus\[peft\]'"):
        add_lora(BlockNet())


def test_lora_on_all_blocks_adapters_are_the_layers():
    pytest.importorskip("peft")
    base = BlockNet()
    x, y = make_data(16)
    reference_out = base(x).detach()
    model = add_lora(base, r=2)
    torch.testing.assert_close(model(x), reference_out)  # B = 0: same function at start
    lmap = adapter_layers(model)
    assert list(lmap) == [f"base_model.model.blocks.{i}" for i in range(3)]
    for block, names in lmap.items():
        assert sorted(n.split(".")[4] for n in names) == ["lora_A", "lora_B"], names
        assert all(n.startswith(block + ".") for n in names)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with train_only(model, ["base_model.model.blocks.1"], layer_map=lmap) as params:
        assert len(params) == 2
        sgd_train(model, (x, y), steps=3)
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())  # base weights never move
    b1 = after["base_model.model.blocks.1.lora_B.default.weight"]
    b0 = after["base_model.model.blocks.0.lora_B.default.weight"]
    assert b1.abs().sum() > 0 and b0.abs().sum() == 0
    state = layer_state(model, ["base_model.model.blocks.1"], layer_map=lmap)
    assert set(state) == set(lmap["base_model.model.blocks.1"])
    cost = communication_cost(model, [["base_model.model.blocks.1"]], layer_map=lmap)
    assert cost.params_up == (2 * 4 + 4 * 2,) and cost.full_params == 3 * 16


def test_whole_layers_vs_adapter_layers_round():
    pytest.importorskip("peft")
    datasets = [make_data(8, seed=s) for s in (1, 2)]
    model = add_lora(BlockNet(), r=2, modules_to_save=["head"])
    lmap = adapter_layers(model)
    assert list(lmap)[-1] == "base_model.model.head"
    result = run_round(
        model, datasets, [[*list(lmap)[:2]], ["base_model.model.head"]], sgd_train, layer_map=lmap
    )
    assert result.reported == (0, 1)
    assert all(".lora_" in n or "modules_to_save" in n for n in result.updated)


def test_transformers_model_lora_default_targets():
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    model = add_lora(transformers.BertModel(config), r=2)
    lmap = adapter_layers(model)
    assert list(lmap) == ["base_model.model.encoder.layer.0", "base_model.model.encoder.layer.1"]
    # query, key, value, attention.output.dense, intermediate.dense, output.dense: 6 adapted linears
    assert all(len(v) == 12 for v in lmap.values())
    ids = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(0))
    with train_only(model, ["base_model.model.encoder.layer.1"], layer_map=lmap) as params:
        model(input_ids=ids).last_hidden_state.sum().backward()
        assert all(p.grad is not None for p in params)
        assert all(p.grad is None for n, p in model.named_parameters() if "layer.0" in n)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"r": 0}, ValueError, r"r must lie in \[1, inf\]"),
        ({"alpha": -1.0}, ValueError, "alpha must be a finite number > 0"),
        ({"dropout": -0.1}, ValueError, "dropout must be a finite number >= 0"),
    ],
)
def test_add_lora_errors(kwargs, error, match):
    pytest.importorskip("peft")
    with pytest.raises(error, match=match):
        add_lora(BlockNet(), **kwargs)


def test_add_lora_without_blocks_asks_for_targets():
    pytest.importorskip("peft")
    with pytest.raises(ValueError, match="pass target_modules="):
        add_lora(torch.nn.Linear(2, 2))


def test_adapter_layers_agree_with_resolve_layers_on_lora_models():
    pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    from f3ocus import resolve_layers

    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
    )
    models = [
        add_lora(BlockNet(), r=2),
        add_lora(transformers.BertForSequenceClassification(config), r=2, modules_to_save=["classifier"]),
    ]
    for model in models:
        assert adapter_layers(model) == resolve_layers(model)
