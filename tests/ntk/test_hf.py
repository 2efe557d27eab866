"""Hugging Face families with the automatic layers, every method against the dense reference in float64.

ViLT (VQA head; its embeddings add position embeddings in place and draw patches with
``torch.multinomial``), BLIP VQA (answer loss), CLIP (``diag(logits_per_image)``), a LLaVA-style model
(vision tower, projector, Llama decoder, next-token loss), a MiniLM-style encoder, and peft LoRA on
ViLT (only the adapters and the saved head are scored).
"""

from __future__ import annotations

import pytest
import torch
from ntk_helpers import assert_scores_close

from f3ocus import ntk_layer_importance, resolve_layers

pytest.importorskip("transformers")
from hf_cases import HF_CASES  # noqa: E402

F64 = torch.float64
_refs: dict = {}


def _case_and_ref(name):
    if name not in _refs:
        if name.endswith("lora"):
            pytest.importorskip("peft")
        case = HF_CASES[name](F64)
        _refs[name] = case, ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)
    return _refs[name]


# Every method on every family.
METHODS = {
    "vilt": ("auto", "persample", "factored", "lanczos"),
    "blip_vqa": ("auto", "persample", "factored", "lanczos"),
    "clip": ("auto", "persample", "factored", "lanczos"),
    "llava": ("auto", "persample", "factored", "lanczos"),
    "minilm": ("auto", "persample", "factored", "lanczos"),
    "vilt_lora": ("auto", "persample", "factored", "lanczos"),
}


@pytest.mark.parametrize(
    ("name", "method"), [(name, method) for name, methods in METHODS.items() for method in methods]
)
def test_hf_family_matches_dense(name, method):
    case, ref = _case_and_ref(name)
    got = ntk_layer_importance(case.model, case.batch, method=method, seed=0, **case.kwargs)
    assert got.stats["coupled"] is None
    assert_scores_close(got, ref, rel=1e-6)


def test_auto_layers_of_every_family_cover_embeddings_towers_and_heads():
    layers = {name: list(_case_and_ref(name)[1]) for name in HF_CASES}
    assert layers["vilt"][0] == "vilt.embeddings" and layers["vilt"][-1] == "classifier"
    assert "vilt.encoder.layer.1" in layers["vilt"]
    assert {"text_model.encoder.layers.1", "vision_model.encoder.layers.1", "logit_scale"} <= set(layers["clip"])
    assert {"model.multi_modal_projector", "model.language_model.layers.1", "lm_head"} <= set(layers["llava"])
    assert "model.vision_tower.encoder.layers.0" in layers["llava"]
    assert {"vision_model.encoder.layers.1", "text_decoder.bert.encoder.layer.1"} <= set(layers["blip_vqa"])
    assert layers["minilm"] == ["embeddings", "encoder.layer.0", "encoder.layer.1"]


def test_lora_scores_only_adapters_and_adapter_layers_agree_with_resolve_layers():
    case, ref = _case_and_ref("vilt_lora")
    from f3ocus.fl import adapter_layers

    trainable = {n for n, p in case.model.named_parameters() if p.requires_grad}
    scored = {p for names in resolve_layers(case.model).values() for p in names}
    assert scored == trainable and all("lora_" in p or "modules_to_save" in p for p in scored)
    assert adapter_layers(case.model) == resolve_layers(case.model)
    assert list(ref)[-1] == "base_model.model.classifier"  # the saved nn.Sequential head is one layer


@pytest.mark.parametrize("name", ["vilt", "minilm"])
def test_bfloat16_models_are_scored_in_float32(name):
    case = HF_CASES[name](torch.bfloat16)
    got = ntk_layer_importance(case.model, case.batch, seed=0, **case.kwargs)
    ref = ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)
    assert got.stats["dtype"] == "float32"
    assert_scores_close(got, ref, rel=2e-3)
