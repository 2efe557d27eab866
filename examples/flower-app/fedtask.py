"""Model and data of the example: a 4-layer MLP on a synthetic, label-skewed 5-class task.

The classes overlap (class centers drawn with standard deviation 0.7 per feature, unit noise), so that a
few local steps per round keep improving the global model over many rounds instead of solving the task
in one.
"""

from __future__ import annotations

import torch
from torch import nn

NUM_FEATURES = 12
NUM_CLASSES = 5


class Net(nn.Module):
    """``stem``, ``blocks.0``, ``blocks.1``, ``head``: the four layers the server assigns."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(NUM_FEATURES, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(2)])
        self.head = nn.Linear(width, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.tanh(self.stem(x))
        for block in self.blocks:
            x = x + torch.tanh(block(x))
        return self.head(x)


def initial_model(seed: int) -> Net:
    """The same initial weights on every machine (seeded generator, no global seeding)."""
    model = Net()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5)
    return model


def load_data(partition_id: int | None, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition_id``'s samples: class centers shared by all, half of each client's samples
    from its favourite class. ``partition_id=None``: a balanced held-out set."""
    centers = 0.7 * torch.randn(NUM_CLASSES, NUM_FEATURES, generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed + 1 + (10_000 if partition_id is None else partition_id))
    probs = torch.full((NUM_CLASSES,), 1.0 / NUM_CLASSES)
    if partition_id is not None:
        probs = torch.full((NUM_CLASSES,), 0.5 / (NUM_CLASSES - 1))
        probs[partition_id % NUM_CLASSES] = 0.5
    y = torch.multinomial(probs, n, replacement=True, generator=g)
    x = centers[y] + torch.randn(n, NUM_FEATURES, generator=g)
    return x, y


def train(model: nn.Module, data, steps: int, lr: float) -> float:
    """Full-batch SGD on the trainable parameters; returns the last loss."""
    x, y = data
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return float(loss.detach())


@torch.no_grad()
def evaluate(model: nn.Module, data) -> tuple[float, float]:
    """(loss, accuracy)."""
    x, y = data
    out = model(x)
    return float(nn.functional.cross_entropy(out, y)), float((out.argmax(1) == y).float().mean())
