"""resolve_layers: automatic block detection on common model families, explicit forms, validation."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from cases import Shared, TinyViT, build
from f3ocus import resolve_layers
from f3ocus.layers import find_block_lists, layer_num_params


def _all_trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def _check_partition(model, layers):
    """Every trainable parameter is in exactly one layer, in model order."""
    flat = [n for names in layers.values() for n in names]
    assert sorted(flat) == sorted(_all_trainable(model))
    assert len(flat) == len(set(flat))


def test_plain_mlp_each_parametrized_child_is_a_layer():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    layers = resolve_layers(model)
    assert layers == {
        "0": ["0.weight", "0.bias"],
        "2": ["2.weight", "2.bias"],
        "4": ["4.weight", "4.bias"],
    }


def test_timm_style_vit_blocks():
    model = TinyViT(depth=3)
    layers = resolve_layers(model)
    assert list(layers) == ["cls_token", "pos_embed", "patch_embed", "blocks.0", "blocks.1", "blocks.2", "norm", "head"]
    assert find_block_lists(model) == ["blocks"]
    _check_partition(model, layers)


def test_hf_bert_encoder_layer_n():
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=8)
    model = BertForSequenceClassification(config)
    layers = resolve_layers(model)
    assert list(layers) == [
        "bert.embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "bert.encoder.layer.2",
        "bert.pooler", "classifier",
    ]
    _check_partition(model, layers)


def test_hf_decoder_model_layers_n_with_tied_embeddings():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    layers = resolve_layers(model)
    # the tied weight is listed once, in the first layer that uses it; lm_head has nothing left
    assert list(layers) == ["model.embed_tokens", "model.layers.0", "model.layers.1", "model.norm"]
    assert layers["model.embed_tokens"] == ["model.embed_tokens.weight"]
    _check_partition(model, layers)


class Tower(nn.Module):
    def __init__(self, depth):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList([nn.TransformerEncoderLayer(8, 2, 16, batch_first=True) for _ in range(depth)])
        self.final_norm = nn.LayerNorm(8)


class TwoTower(nn.Module):
    def __init__(self):
        super().__init__()
        self.vision_model = Tower(2)
        self.text_model = Tower(3)
        self.visual_projection = nn.Linear(8, 4, bias=False)
        self.text_projection = nn.Linear(8, 4, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))


def test_two_tower_clip_like_model_one_block_list_per_tower():
    model = TwoTower()
    assert find_block_lists(model) == ["vision_model.encoder.layers", "text_model.encoder.layers"]
    layers = resolve_layers(model)
    assert list(layers) == [
        "logit_scale",
        "vision_model.embed", "vision_model.encoder.layers.0", "vision_model.encoder.layers.1",
        "vision_model.final_norm",
        "text_model.embed", "text_model.encoder.layers.0", "text_model.encoder.layers.1",
        "text_model.encoder.layers.2", "text_model.final_norm",
        "visual_projection", "text_projection",
    ]
    _check_partition(model, layers)


def test_peft_lora_only_adapters_are_grouped():
    pytest.importorskip("peft")
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=8, max_position_embeddings=8)
    lora = LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    model = get_peft_model(BertForSequenceClassification(config), lora)
    layers = resolve_layers(model)
    assert list(layers) == [
        "base_model.model.bert.encoder.layer.0",
        "base_model.model.bert.encoder.layer.1",
        "base_model.model.classifier",  # the new head stays trainable (modules_to_save)
    ]
    assert all("modules_to_save" in n for n in layers["base_model.model.classifier"])
    for layer in ("base_model.model.bert.encoder.layer.0", "base_model.model.bert.encoder.layer.1"):
        assert layers[layer] and all("lora_" in n for n in layers[layer])
    _check_partition(model, layers)


def test_lora_case_from_the_table():
    case = build("lora")
    assert list(resolve_layers(case.model)) == ["base_model.model.fc1", "base_model.model.fc2"]


def test_frozen_parameters_are_left_out():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    for p in model[2].parameters():
        p.requires_grad_(False)
    assert resolve_layers(model) == {"0": ["0.weight"]}


def test_tied_parameter_goes_to_the_first_layer():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    layers = resolve_layers(model)
    assert layers == {"0": ["0.weight", "0.bias"], "2": ["2.bias"]}


def test_explicit_sequence_of_module_and_parameter_names_keeps_order():
    model = TinyViT()
    layers = resolve_layers(model, ["head", "blocks.1.attn", "cls_token"])
    assert list(layers) == ["head", "blocks.1.attn", "cls_token"]
    assert layers["blocks.1.attn"] == [
        "blocks.1.attn.qkv.weight", "blocks.1.attn.qkv.bias", "blocks.1.attn.proj.weight", "blocks.1.attn.proj.bias",
    ]
    assert layers["cls_token"] == ["cls_token"]


def test_explicit_mapping_groups_several_names():
    model = TinyViT()
    layers = resolve_layers(model, {"embed": ["patch_embed", "cls_token", "pos_embed"], "top": "head"})
    assert layers == {
        "embed": ["cls_token", "pos_embed", "patch_embed.weight", "patch_embed.bias"],
        "top": ["head.weight", "head.bias"],
    }


def test_layer_num_params():
    model = Shared()
    layers = resolve_layers(model)
    assert layer_num_params(model, layers) == {"inp": 25, "shared": 30, "head": 12}


# -- errors ------------------------------------------------------------------------------------------
def test_unknown_name_lists_close_matches():
    with pytest.raises(ValueError, match=r"layers='blocks\.0\.atn' is neither a module nor a parameter.*'blocks\.0\.attn'"):
        resolve_layers(TinyViT(), ["blocks.0.atn"])


def test_unknown_name_in_mapping_names_the_entry():
    with pytest.raises(ValueError, match=r"layers\['x'\]='hed' is neither.*'head'"):
        resolve_layers(TinyViT(), {"x": "hed"})


def test_layer_without_trainable_parameters():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model[2].requires_grad_(False)
    with pytest.raises(ValueError, match=r"layer '2' has no trainable parameters.*requires_grad=True"):
        resolve_layers(model, ["0", "2"])
    with pytest.raises(ValueError, match=r"layer '1' has no trainable parameters"):
        resolve_layers(model, ["0", "1"])


def test_parameter_in_two_explicit_layers():
    with pytest.raises(ValueError, match=r"parameter 'blocks\.0\.attn\.qkv\.weight' is in two layers, 'a' and 'b'"):
        resolve_layers(TinyViT(), {"a": "blocks.0", "b": "blocks.0.attn.qkv"})


def test_tied_parameter_in_two_explicit_layers():
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))
    model[2].weight = model[0].weight
    with pytest.raises(ValueError, match=r"parameter '0\.weight' is in two layers, '0' and '2'"):
        resolve_layers(model, ["0", "2"])


def test_model_without_trainable_parameters():
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match=r"model has no parameter with requires_grad=True"):
        resolve_layers(model)


@pytest.mark.parametrize(
    ("layers", "error", "match"),
    [
        ("head", TypeError, r"Did you mean layers=\['head'\]\?"),
        (3, TypeError, r"layers must be None, a sequence of module names or a mapping"),
        ([3], TypeError, r"layers must hold module or parameter names \(str\), got 3"),
        (["head", "head"], ValueError, r"layers lists 'head' twice"),
        ([], ValueError, r"layers is empty"),
        ({1: "head"}, TypeError, r"layers keys must be str layer names"),
        ({"x": 5}, TypeError, r"layers\['x'\] must be a name or a list of names"),
    ],
)
def test_bad_layers_argument(layers, error, match):
    with pytest.raises(error, match=match):
        resolve_layers(TinyViT(), layers)


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module"):
        resolve_layers("bert")


class _Unit(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.norm = nn.LayerNorm(2)


@given(
    depth=st.integers(0, 4),
    frozen=st.lists(st.booleans(), min_size=6, max_size=6),
    wrap=st.integers(0, 2),
)
@settings(max_examples=40)
def test_auto_layers_partition_and_block_detection(depth, frozen, wrap):
    """Auto layers partition the trainable parameters; blocks of a list of >= 2 are separate layers."""
    core = nn.Module()
    core.stem = nn.Linear(2, 2)
    core.blocks = nn.ModuleList([_Unit() for _ in range(depth)])
    core.head = nn.Linear(2, 2)
    units = [core.stem, *core.blocks, core.head]
    for unit, freeze in zip(units, frozen, strict=False):
        unit.requires_grad_(not freeze)
    model, prefix = core, ""
    for _ in range(wrap):  # single-child wrappers are looked through
        outer = nn.Module()
        outer.inner = model
        model, prefix = outer, "inner." + prefix
    if not any(p.requires_grad for p in model.parameters()):
        with pytest.raises(ValueError, match="no parameter with requires_grad=True"):
            resolve_layers(model)
        return
    layers = resolve_layers(model)
    _check_partition(model, layers)
    names = ["stem"] + ([f"blocks.{i}" for i in range(depth)] if depth >= 2 else ["blocks"] * depth) + ["head"]
    expected = []
    for name, unit in zip(names, units, strict=True):
        if any(p.requires_grad for p in unit.parameters()) and prefix + name not in expected:
            expected.append(prefix + name)
    if len(expected) == 1 and depth < 2:  # a single trainable module is itself unwrapped into its parts
        assert all(k.startswith(expected[0]) for k in layers)
    else:
        assert list(layers) == expected
