"""Local training, evaluation and the scoring batch of the demo.

Local training (one client, one round): ``steps`` Adam steps (Kingma & Ba, ICLR 2015) on minibatches of
``batch_size`` questions drawn with replacement from the client's split, minimizing the cross-entropy
$\\frac{1}{B}\\sum_i -\\log \\mathrm{softmax}(f(x_i))_{y_i}$ over the parameters that are trainable at that
moment (the client's assigned layers, see :func:`f3ocus.fl.train_only`). The optimizer state starts fresh
every round, as in FedAvg (McMahan et al., AISTATS 2017).

Every minibatch encodes each distinct image and question once (:meth:`VQAModel.forward_indexed`), which
gives the same logits and gradients as the per-sample forward pass. An encoder that the client does not
train is a fixed function during its local training, so its features of the whole (shared) image table
or question table can be computed once per round from the global model (:func:`frozen_features`) and
looked up: the same logits and gradients again, several times cheaper.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from f3ocus.demo.data import Split, VQAData
from f3ocus.demo.model import VQAModel

__all__ = [
    "child_generator",
    "evaluate",
    "frozen_features",
    "indexed_logits",
    "local_train",
    "scoring_batch",
]


def child_generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator for the stream ``(seed, *keys)`` (e.g. round and client), via numpy's SeedSequence.

    Streams with different keys are independent, and the same keys give the same stream in every strategy,
    so all strategies see the same minibatches.
    """
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _trains(model: VQAModel, encoder: str) -> bool:
    return any(p.requires_grad for p in getattr(model, encoder).parameters())


@torch.no_grad()
def frozen_features(
    model: VQAModel, data: VQAData, split: Split, *, chunk: int = 256, skip=()
) -> dict[str, Tensor]:
    """Features of ``split``'s whole image table and of every question: ``{"image": (M, 1280),
    "text": (Q, 384)}``, to be reused while an encoder's parameters do not change.

    Args:
        skip: Entries not to compute (e.g. those still valid in a cache).
    """
    out = {}
    if "image" not in skip:
        out["image"] = torch.cat([model.image_features(x) for x in split.images.split(chunk)])
    if "text" not in skip:
        out["text"] = model.text_features(data.input_ids, data.attention_mask)
    return out


def indexed_logits(
    model: VQAModel, data: VQAData, split: Split, index: Tensor, features: dict | None = None
) -> Tensor:
    """Logits of ``split``'s questions ``index``, each distinct image and question encoded once.

    Args:
        features: Optional :func:`frozen_features` of ``split``; an encoder none of whose parameters
            requires grad is looked up there instead of run.
    """
    image_index, question_index = split.image_index[index], split.question_index[index]
    if features is not None and not _trains(model, "image"):
        u = features["image"][image_index]
    else:
        images, image_inv = torch.unique(image_index, return_inverse=True)
        u = model.image_features(split.images[images])[image_inv]
    if features is not None and not _trains(model, "text"):
        t = features["text"][question_index]
    else:
        questions, question_inv = torch.unique(question_index, return_inverse=True)
        t = model.text_features(data.input_ids[questions], data.attention_mask[questions])[question_inv]
    return model.head(u, t)


def local_train(
    model: VQAModel,
    data: VQAData,
    split: Split,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
    features: dict | None = None,
    head_lr: float | None = None,
    max_grad_norm: float | None = None,
) -> int:
    """Train the currently trainable parameters of ``model`` on ``split`` (see the module docs).

    Args:
        features: Optional :func:`frozen_features` of the global model on ``split`` (see
            :func:`indexed_logits`); it must come from the weights ``model`` starts from.
        head_lr: Learning rate of the fusion head's parameters (default ``lr``); the encoder layers use
            ``lr``. A new head needs a larger step than pretrained layers.
        max_grad_norm: If given, the gradient of all trained parameters is rescaled to at most this
            Euclidean norm before every step (``torch.nn.utils.clip_grad_norm_``).

    Returns:
        The client's FedAvg weight: its number of questions.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return len(split)
    head = {id(p) for p in model.head.parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in head], "lr": lr},
        {"params": [p for p in params if id(p) in head], "lr": lr if head_lr is None else head_lr},
    ]
    optimizer = torch.optim.Adam([g for g in groups if g["params"]])
    for _ in range(steps):
        index = torch.randint(len(split), (batch_size,), generator=generator).to(split.answers.device)
        loss = torch.nn.functional.cross_entropy(
            indexed_logits(model, data, split, index, features), split.answers[index]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
    return len(split)


@torch.no_grad()
def evaluate(
    model: VQAModel,
    data: VQAData,
    split: Split,
    *,
    chunk: int = 256,
    features: dict | None = None,
    types: dict[str, list[int]] | None = None,
) -> dict[str, float]:
    """Accuracy of ``model`` on ``split``: overall and per answer type.

    Args:
        model: The model.
        data: The token table.
        split: The questions to answer.
        chunk: Images per encoder call.
        features: Optional cache of encoder outputs: its ``"image"`` / ``"text"`` entries are reused when
            present and stored when computed. Drop an entry when that encoder's parameters change.
        types: Answer type -> answer classes (default :func:`f3ocus.demo.data.answer_types`).

    Returns:
        ``{"all": accuracy, <type>: accuracy on the questions whose true answer has that type, ...}``
        (``nan`` for a type with no question).
    """
    from f3ocus.demo.data import answer_types

    features = {} if features is None else features
    if "image" not in features:
        features["image"] = torch.cat([model.image_features(x) for x in split.images.split(chunk)])
    if "text" not in features:
        features["text"] = model.text_features(data.input_ids, data.attention_mask)
    logits = model.head(features["image"][split.image_index], features["text"][split.question_index])
    right = (logits.argmax(dim=-1) == split.answers).float()
    out = {"all": float(right.mean())}
    for name, classes in (types or answer_types(data.answers)).items():
        mask = torch.isin(split.answers, torch.tensor(classes, device=split.answers.device))
        out[name] = float(right[mask].mean()) if bool(mask.any()) else float("nan")
    return out


def scoring_batch(
    data: VQAData, split: Split, size: int, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """``size`` distinct questions of ``split`` for NTK scoring: the per-sample model input and the answers."""
    index = torch.randperm(len(split), generator=generator)[: min(size, len(split))].to(split.answers.device)
    return data.batch(split, index), split.answers[index]
