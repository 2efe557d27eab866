"""Self-contained benchmark models (no timm / torchvision needed).

``vit_small_cifar``: depth 6, width 192, 32x32 inputs, patch 4 (65 tokens), 10 classes.
``vit_base``: ViT-B/16 (depth 12, width 768, 224x224 inputs, 197 tokens), 10 classes.

The layout follows timm's ``VisionTransformer`` (Dosovitskiy et al., ICLR 2021): a patch-embedding
convolution, a class token and a learned position embedding, pre-norm blocks of multi-head attention
(``F.scaled_dot_product_attention``) and a GELU MLP, a final LayerNorm and a linear head on the class
token. Parameter names match timm (``patch_embed.proj``, ``blocks.{i}.attn.qkv``, ``norm``, ``head``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["HF_MODELS", "VisionTransformer", "clip_b32", "llava_small", "vilt_b", "vit_base", "vit_small_cifar"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens, by a ``patch x patch`` convolution with stride ``patch``."""

    def __init__(self, img_size: int, patch: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch) ** 2
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (N, T, dim)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A timm-style ViT classifier on the class token."""

    def __init__(
        self,
        *,
        img_size: int,
        patch: int,
        dim: int,
        depth: int,
        heads: int,
        num_classes: int,
        in_chans: int = 3,
        mlp_ratio: float = 4.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch, in_chans, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)
        self._init(generator)

    @torch.no_grad()
    def _init(self, generator: torch.Generator | None) -> None:
        # Truncated-normal-like init (std 0.02) as in timm, drawn from one generator.
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.copy_(torch.randn(p.shape, generator=generator).clamp_(-2, 2) * 0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit_small_cifar(num_classes: int = 10, generator: torch.Generator | None = None) -> VisionTransformer:
    """Depth 6, width 192, 3 heads, 32x32 inputs, patch 4: 2.7 M parameters, 65 tokens."""
    return VisionTransformer(
        img_size=32, patch=4, dim=192, depth=6, heads=3, num_classes=num_classes, generator=generator
    )


def vit_base(num_classes: int = 10, generator: torch.Generator | None = None) -> VisionTransformer:
    """ViT-B/16: depth 12, width 768, 12 heads, 224x224 inputs: 86 M parameters, 197 tokens."""
    return VisionTransformer(
        img_size=224, patch=16, dim=768, depth=12, heads=12, num_classes=num_classes, generator=generator
    )


# -- Hugging Face vision-language models at real sizes, built from configs (random weights) -----------
def _next_token_loss(logits: Tensor, labels: Tensor) -> Tensor:
    pred, gold = logits[:, :-1], labels[:, 1:]
    tok = F.cross_entropy(pred.reshape(-1, pred.shape[-1]), gold.reshape(-1), reduction="none", ignore_index=-100)
    return tok.reshape(gold.shape).sum(1) / (gold != -100).sum(1).clamp(min=1)


def _seeded(make, seed: int = 0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make().eval()


def vilt_b(n: int, answers: int = 3129):
    """ViLT-B/32 VQA (hidden 768, 12 layers, 384x384 images, 40 text tokens), ``answers`` outputs.

    Returns ``(model, batch, kernels)``: ``kernels`` maps each kernel to the scoring keywords.
    """
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(num_labels=answers, max_image_length=-1)
    model = _seeded(lambda: ViltForQuestionAnswering(config))
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1000, 20000, (n, 40), generator=g),
        "attention_mask": torch.ones(n, 40, dtype=torch.long),
        "pixel_values": torch.randn(n, 3, 384, 384, generator=g),
        "pixel_mask": torch.ones(n, 384, 384, dtype=torch.long),
    }
    targets = torch.randint(0, answers, (n,), generator=g)
    ce = {"kernel": "loss", "targets": targets, "loss_fn": lambda out, y: F.cross_entropy(out, y, reduction="none")}
    return model, batch, {"output": {}, "sum": {"kernel": "sum"}, "loss": ce}


def clip_b32(n: int):
    """CLIP ViT-B/32 with its 12-layer text tower (16 tokens); each image scored against its own text."""
    from transformers import CLIPConfig, CLIPModel

    model = _seeded(lambda: CLIPModel(CLIPConfig()))
    g = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(1000, 40000, (n, 16), generator=g), "pixel_values": torch.randn(n, 3, 224, 224, generator=g)}

    def diag(out):
        return out.logits_per_image.diagonal()[:, None]

    def pairs(out):  # image n against every text of the batch: couples samples (scored exactly)
        return out.logits_per_image

    return model, batch, {"output": {"output_fn": diag}, "pairs": {"output_fn": pairs}, "sum": {"kernel": "sum", "output_fn": diag}}


def llava_small(n: int):
    """LLaVA-style, about 130 M parameters: CLIP ViT-B/32 vision tower, projector, 8-layer Llama (width 512).

    49 image tokens and 24 text tokens per sample; per-sample next-token loss on the text.
    """
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    text = LlamaConfig(
        vocab_size=32000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8, num_attention_heads=8,
        num_key_value_heads=8, max_position_embeddings=256, pad_token_id=0,
    )
    config = LlavaConfig(vision_config=CLIPVisionConfig(), text_config=text, image_token_id=31999)
    model = _seeded(lambda: LlavaForConditionalGeneration(config))
    g = torch.Generator().manual_seed(1)
    words = torch.randint(3, 31000, (n, 24), generator=g)
    ids = torch.cat([torch.full((n, 49), 31999), words], dim=1)
    labels = torch.cat([torch.full((n, 49), -100), words], dim=1)
    batch = {"input_ids": ids, "pixel_values": torch.randn(n, 3, 224, 224, generator=g), "attention_mask": torch.ones_like(ids)}
    return model, batch, {"loss": {"kernel": "loss", "loss_fn": _next_token_loss, "targets": labels}}


HF_MODELS = {"vilt_b": vilt_b, "clip_b32": clip_b32, "llava_small": llava_small}
