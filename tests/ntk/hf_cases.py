"""Tiny Hugging Face vision-language and text models, built from configs (no download), as scoring cases.

One factory per family, each ``(dtype) -> Case`` with the ``output_fn`` / ``loss_fn`` that
``docs/scoring.md`` recommends for it; the layers are the automatic ones. These cases are local to the
scoring tests (several couple samples unless given the recommended ``output_fn``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cases import Case, _model

__all__ = ["HF_CASES", "BlipVQALogits", "next_token_loss"]


def _ids(n: int, s: int, vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(3, vocab, (n, s), generator=torch.Generator().manual_seed(seed))


def _pixels(n: int, size: int, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g, dtype=torch.float64).to(dtype)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample next-token loss: mean over the positions whose label is not -100."""
    pred, gold = logits[:, :-1], labels[:, 1:]
    tok = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1), reduction="none", ignore_index=-100)
    tok = tok.reshape(gold.shape)
    return tok.sum(1) / (gold != -100).sum(1).clamp(min=1)


def vilt(dtype) -> Case:
    """ViltForQuestionAnswering (VQA head over the answers), text + image, output kernel over the answers."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        image_size=8, patch_size=4, max_position_embeddings=12, num_labels=5, max_image_length=-1,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = _model(lambda: ViltForQuestionAnswering(config), dtype, "cpu")
    n = 3
    batch = {
        "input_ids": _ids(n, 5, 40, 1),
        "attention_mask": torch.ones(n, 5, dtype=torch.long),
        "pixel_values": _pixels(n, 8, dtype, 2),
        "pixel_mask": torch.ones(n, 8, 8, dtype=torch.long),
    }
    return Case(model, batch)


class BlipVQALogits(nn.Module):
    """BLIP VQA whose forward returns the answer decoder's logits (the HF forward returns only the batch loss).

    The submodules are those of ``BlipForQuestionAnswering`` (``vision_model``, ``text_encoder``,
    ``text_decoder``), so layer names and trained weights carry over.
    """

    def __init__(self, blip: nn.Module) -> None:
        super().__init__()
        self.vision_model = blip.vision_model
        self.text_encoder = blip.text_encoder
        self.text_decoder = blip.text_decoder

    def forward(self, input_ids, pixel_values, decoder_input_ids, attention_mask=None):
        image = self.vision_model(pixel_values=pixel_values).last_hidden_state
        image_mask = torch.ones(image.shape[:-1], dtype=torch.long, device=image.device)
        question = self.text_encoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image,
            encoder_attention_mask=image_mask,
        )[0]
        return self.text_decoder(
            input_ids=decoder_input_ids, encoder_hidden_states=question, encoder_attention_mask=attention_mask,
        ).logits


def blip_vqa(dtype) -> Case:
    """BLIP VQA (vision tower, question encoder, answer decoder): per-sample answer loss."""
    from transformers import BlipConfig, BlipForQuestionAnswering

    config = BlipConfig(
        text_config=dict(
            vocab_size=40, hidden_size=16, encoder_hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=16, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8,
            patch_size=4,
        ),
    )
    model = _model(lambda: BlipVQALogits(BlipForQuestionAnswering(config)), dtype, "cpu")
    n = 3
    answers = _ids(n, 3, 40, 3)
    batch = {"input_ids": _ids(n, 4, 40, 1), "pixel_values": _pixels(n, 8, dtype, 2), "decoder_input_ids": answers}
    return Case(model, batch, {"kernel": "loss", "loss_fn": next_token_loss, "targets": answers})


def clip(dtype) -> Case:
    """CLIP two towers, each image scored against its own text: ``diag(logits_per_image)``."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(
            vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=12, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8,
            patch_size=4,
        ),
        projection_dim=8,
    )
    model = _model(lambda: CLIPModel(config), dtype, "cpu")
    n = 3
    batch = {"input_ids": _ids(n, 5, 40, 1), "pixel_values": _pixels(n, 8, dtype, 2)}
    return Case(model, batch, {"output_fn": lambda out: out.logits_per_image.diagonal()[:, None]})


def llava(dtype) -> Case:
    """LLaVA-style: CLIP vision tower, projector, Llama decoder; per-sample next-token loss."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=8,
        patch_size=4,
    )
    text = LlamaConfig(
        vocab_size=48, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32, pad_token_id=0,
    )
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=47, vision_feature_layer=-1)
    model = _model(lambda: LlavaForConditionalGeneration(config), dtype, "cpu")
    n = 2
    image_tokens = (8 // 4) ** 2 + 1  # patches + class token ("default" feature select keeps all)
    if getattr(config, "vision_feature_select_strategy", "default") == "default":
        image_tokens -= 1
    text_ids = _ids(n, 4, 40, 1)
    ids = torch.cat([torch.full((n, image_tokens), 47), text_ids], dim=1)
    labels = torch.cat([torch.full((n, image_tokens), -100), text_ids], dim=1)
    batch = {"input_ids": ids, "pixel_values": _pixels(n, 8, dtype, 2), "attention_mask": torch.ones_like(ids)}
    return Case(model, batch, {"kernel": "loss", "loss_fn": next_token_loss, "targets": labels})


def minilm(dtype) -> Case:
    """A MiniLM-style sentence encoder (BertModel): the mean-pooled last hidden state."""
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    model = _model(lambda: BertModel(config, add_pooling_layer=False), dtype, "cpu")
    ids = _ids(3, 4, 30, 1)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]])

    def pooled(out):
        return out.last_hidden_state.mean(dim=1)

    return Case(model, {"input_ids": ids, "attention_mask": mask}, {"output_fn": pooled})


def vilt_lora(dtype) -> Case:
    """peft LoRA on ViLT's attention and a fully trained VQA head (``modules_to_save``)."""
    from peft import LoraConfig, get_peft_model

    case = vilt(dtype)

    def make():
        model = get_peft_model(
            case.model,
            LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], modules_to_save=["classifier"]),
        )
        for name, p in model.named_parameters():
            if "lora_B" in name:
                nn.init.normal_(p, std=0.3)
        return model

    return Case(_model(make, dtype, "cpu"), case.batch)


HF_CASES = {
    "vilt": vilt,
    "blip_vqa": blip_vqa,
    "clip": clip,
    "llava": llava,
    "minilm": minilm,
    "vilt_lora": vilt_lora,
}
