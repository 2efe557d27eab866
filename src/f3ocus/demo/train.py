"""Local training, evaluation and the scoring batch of the demo.

Local training (one client, one round): ``steps`` Adam steps (Kingma & Ba, ICLR 2015) on minibatches of
``batch_size`` questions drawn with replacement from the client's split, minimizing the cross-entropy
$\\frac{1}{B}\\sum_i -\\log \\mathrm{softmax}(f(x_i))_{y_i}$ over the parameters that are trainable at that
moment (the client's assigned layers, see :func:`f3ocus.fl.train_only`). The optimizer state starts fresh
every round, as in FedAvg (McMahan et al., AISTATS 2017).

Every minibatch encodes each distinct image and question once (:meth:`VQAModel.forward_indexed`), which
gives the same logits and gradients as the per-sample forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from f3ocus.demo.data import Split, VQAData
from f3ocus.demo.model import VQAModel

__all__ = ["child_generator", "evaluate", "indexed_logits", "local_train", "scoring_batch"]


def child_generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator for the stream ``(seed, *keys)`` (e.g. round and client), via numpy's SeedSequence.

    Streams with different keys are independent, and the same keys give the same stream in every strategy,
    so all strategies see the same minibatches.
    """
    state = np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def indexed_logits(model: VQAModel, data: VQAData, split: Split, index: Tensor) -> Tensor:
    """Logits of ``split``'s questions ``index``, each distinct image and question encoded once."""
    images, image_inv = torch.unique(split.image_index[index], return_inverse=True)
    questions, question_inv = torch.unique(split.question_index[index], return_inverse=True)
    return model.forward_indexed(
        split.images[images],
        image_inv,
        data.input_ids[questions],
        data.attention_mask[questions],
        question_inv,
    )


def local_train(
    model: VQAModel,
    data: VQAData,
    split: Split,
    *,
    steps: int,
    batch_size: int,
    lr: float,
    generator: torch.Generator,
) -> int:
    """Train the currently trainable parameters of ``model`` on ``split`` (see the module docs).

    Returns:
        The client's FedAvg weight: its number of questions.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return len(split)
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(steps):
        index = torch.randint(len(split), (batch_size,), generator=generator).to(split.answers.device)
        loss = torch.nn.functional.cross_entropy(
            indexed_logits(model, data, split, index), split.answers[index]
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(split)


@torch.no_grad()
def evaluate(
    model: VQAModel, data: VQAData, split: Split, *, chunk: int = 256, features: dict | None = None
) -> float:
    """Accuracy of ``model`` on ``split`` (fraction of questions answered right).

    Args:
        model: The model.
        data: The token table.
        split: The questions to answer.
        chunk: Images per encoder call.
        features: Optional cache of encoder outputs: its ``"image"`` / ``"text"`` entries are reused when
            present and stored when computed. Drop an entry when that encoder's parameters change.
    """
    features = {} if features is None else features
    if "image" not in features:
        features["image"] = torch.cat([model.image_features(x) for x in split.images.split(chunk)])
    if "text" not in features:
        features["text"] = model.text_features(data.input_ids, data.attention_mask)
    logits = model.head(features["image"][split.image_index], features["text"][split.question_index])
    return float((logits.argmax(dim=-1) == split.answers).float().mean())


def scoring_batch(
    data: VQAData, split: Split, size: int, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """``size`` distinct questions of ``split`` for NTK scoring: the per-sample model input and the answers."""
    index = torch.randperm(len(split), generator=generator)[: min(size, len(split))].to(split.answers.device)
    return data.batch(split, index), split.answers[index]
