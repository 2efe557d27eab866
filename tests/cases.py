"""The shared case table: small models and batches that every scoring method is tested on.

Each entry of :data:`CASES` is a factory ``(dtype, device) -> Case`` that builds a freshly initialized,
deterministic model (same weights on every call), a batch, and the extra keyword arguments of
``ntk_layer_importance`` the case needs (``kernel``, ``loss_fn``, ``targets``, ``output_fn``, ``layers``).
Use :func:`build` (which skips a case whose optional dependency is missing) and :data:`CASE_NAMES`::

    from tests.cases import CASE_NAMES, build

    @pytest.mark.parametrize("name", CASE_NAMES)
    def test_my_method(name):
        case = build(name, torch.float64, "cpu")
        got = ntk_layer_importance(case.model, case.batch, method="mine", **case.kwargs)
        ref = ntk_layer_importance(case.model, case.batch, method="dense", **case.kwargs)

Models are tiny (N·M at most a few dozen) so that the dense reference and brute-force loops are fast.
Cases that stress a method: ``vit_sdpa``/``torch_transformer``/``hf_bert`` (fused SDPA: no forward-mode
AD), ``hf_bert`` (HF masking branches on mask values: no ``vmap`` over samples), ``weight_sharing`` and
``tied_weights`` (one parameter used twice), ``cnn_groupnorm_batchnorm`` (BatchNorm scored in eval
mode), ``frozen_inside_layer``, ``lora`` (only adapters trainable), ``embedding`` (integer inputs).
Weights come from a forked global RNG, so building a case does not change the caller's RNG state.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CASES", "CASE_NAMES", "Case", "build"]


@dataclass
class Case:
    """One test case: ``ntk_layer_importance(case.model, case.batch, **case.kwargs)``."""

    model: nn.Module
    batch: Any
    kwargs: dict = field(default_factory=dict)


# -- models -----------------------------------------------------------------------------------------
class TinyCNN(nn.Module):
    """Conv + GroupNorm, Conv + BatchNorm (scored in eval mode, non-trivial running stats), Linear."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, classes)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        x = torch.relu(self.gn(self.conv1(x)))
        x = torch.relu(self.bn(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))


class Attention(nn.Module):
    """timm-style attention: fused qkv projection and F.scaled_dot_product_attention."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """timm-style ViT: patch_embed, cls_token and pos_embed parameters, ``blocks`` (nn.Sequential), head."""

    def __init__(self, dim: int = 8, depth: int = 2, patches: int = 4, patch_dim: int = 6, classes: int = 3):
        super().__init__()
        self.patch_embed = nn.Linear(patch_dim, dim)
        self.cls_token = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(0.1 * torch.randn(1, patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, 2) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


class TorchTransformer(nn.Module):
    """nn.TransformerEncoderLayer (nn.MultiheadAttention, SDPA inside, LayerNorm, dropout) + head."""

    def __init__(self, dim: int = 8, classes: int = 2) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        return self.head(self.encoder(x).mean(dim=1))


class EmbeddingBag(nn.Module):
    """Embedding of integer tokens, mean over positions, Linear."""

    def __init__(self, vocab: int = 11, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens).mean(dim=1)))


class Shared(nn.Module):
    """One Linear applied twice (weight sharing), then a head."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(4, 5)
        self.shared = nn.Linear(5, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.shared(h))
        h = torch.tanh(self.shared(h))
        return self.head(h)


class TiedLM(nn.Module):
    """Tied embedding and output weights (``head.weight is embed.weight``), as in language models."""

    def __init__(self, vocab: int = 7, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        return self.head(torch.tanh(self.mix(self.embed(tokens).mean(dim=1))))


class TwoInputs(nn.Module):
    """Two positional inputs (batch given as a tuple), output as a dict with 'logits'."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(2, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x, z):
        return {"logits": self.head(torch.tanh(self.a(x) + self.b(z))), "aux": 0}


class MLP(nn.Module):
    def __init__(self, inp: int = 4, hidden: int = 6, out: int = 3) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inp, hidden)
        self.fc2 = nn.Linear(hidden, out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


# -- factories --------------------------------------------------------------------------------------
def _randn(*shape: int, dtype: torch.dtype, device: Any, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _model(make: Callable[[], nn.Module], dtype: torch.dtype, device: Any, seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = make()
    return model.to(device=device, dtype=dtype)


def mlp(dtype, device) -> Case:
    model = _model(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), dtype, device)
    return Case(model, _randn(5, 4, dtype=dtype, device=device, seed=1))


def mlp_sum(dtype, device) -> Case:
    case = mlp(dtype, device)
    return Case(case.model, case.batch, {"kernel": "sum"})


def mlp_loss(dtype, device) -> Case:
    case = mlp(dtype, device)
    targets = torch.tensor([0, 2, 1, 1, 0], device=device)

    def loss_fn(out, y):
        return F.cross_entropy(out, y, reduction="none")

    return Case(case.model, case.batch, {"kernel": "loss", "loss_fn": loss_fn, "targets": targets})


def batch_of_one(dtype, device) -> Case:
    case = mlp(dtype, device)
    return Case(case.model, case.batch[:1])


def single_output(dtype, device) -> Case:
    model = _model(lambda: MLP(4, 5, 1), dtype, device)
    return Case(model, _randn(6, 4, dtype=dtype, device=device, seed=2))


def cnn(dtype, device) -> Case:
    model = _model(TinyCNN, dtype, device)
    return Case(model, _randn(3, 2, 5, 5, dtype=dtype, device=device, seed=3))


def vit_sdpa(dtype, device) -> Case:
    model = _model(TinyViT, dtype, device)
    return Case(model, _randn(2, 4, 6, dtype=dtype, device=device, seed=4))


def torch_transformer(dtype, device) -> Case:
    model = _model(TorchTransformer, dtype, device)
    return Case(model, _randn(3, 4, 8, dtype=dtype, device=device, seed=5))


def embedding(dtype, device) -> Case:
    model = _model(EmbeddingBag, dtype, device)
    tokens = torch.tensor([[1, 2, 3], [4, 4, 0], [10, 1, 5], [7, 8, 9]], device=device)
    return Case(model, tokens)


def weight_sharing(dtype, device) -> Case:
    model = _model(Shared, dtype, device)
    return Case(model, _randn(4, 4, dtype=dtype, device=device, seed=6))


def tied_weights(dtype, device) -> Case:
    model = _model(TiedLM, dtype, device)
    return Case(model, torch.tensor([[1, 2], [3, 4], [6, 0]], device=device))


def frozen_inside_layer(dtype, device) -> Case:
    model = _model(lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)), dtype, device)
    model[0].bias.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    return Case(model, _randn(5, 4, dtype=dtype, device=device, seed=7))


def dict_output(dtype, device) -> Case:
    model = _model(TwoInputs, dtype, device)
    x = _randn(4, 3, dtype=dtype, device=device, seed=8)
    z = _randn(4, 2, dtype=dtype, device=device, seed=9)
    return Case(model, (x, z))


def hf_bert(dtype, device) -> Case:
    """A tiny Hugging Face BERT classifier built from a config (no download): .logits output, Mapping batch."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, num_labels=2, attn_implementation="sdpa",
    )
    model = _model(lambda: BertForSequenceClassification(config), dtype, device)
    input_ids = torch.tensor([[2, 5, 7, 9], [3, 3, 8, 1], [4, 6, 11, 0]], device=device)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], device=device)
    return Case(model, {"input_ids": input_ids, "attention_mask": mask})


def lora(dtype, device) -> Case:
    """peft LoRA on an MLP: only the adapters are trainable (and scored)."""
    from peft import LoraConfig, get_peft_model

    def make():
        base = MLP(4, 6, 3)
        model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["fc1", "fc2"], lora_dropout=0.1))
        for name, p in model.named_parameters():  # non-zero B so the adapters move the output
            if "lora_B" in name:
                nn.init.normal_(p, std=0.5)
        return model

    model = _model(make, dtype, device)
    return Case(model, _randn(5, 4, dtype=dtype, device=device, seed=10))


CASES: dict[str, Callable[[torch.dtype, Any], Case]] = {
    "mlp": mlp,
    "mlp_sum": mlp_sum,
    "mlp_loss": mlp_loss,
    "batch_of_one": batch_of_one,
    "single_output": single_output,
    "cnn_groupnorm_batchnorm": cnn,
    "vit_sdpa": vit_sdpa,
    "torch_transformer": torch_transformer,
    "embedding": embedding,
    "weight_sharing": weight_sharing,
    "tied_weights": tied_weights,
    "frozen_inside_layer": frozen_inside_layer,
    "dict_output_two_inputs": dict_output,
    "hf_bert": hf_bert,
    "lora": lora,
}
CASE_NAMES = list(CASES)
_NEEDS = {"hf_bert": ("transformers",), "lora": ("peft", "transformers")}


def build(name: str, dtype: torch.dtype = torch.float64, device: Any = "cpu") -> Case:
    """Build case ``name``; ``pytest.skip`` if its optional dependency is not installed."""
    for module in _NEEDS.get(name, ()):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"case {name!r} needs {module!r}")
    return CASES[name](dtype, torch.device(device))
