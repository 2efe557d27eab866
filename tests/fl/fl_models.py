"""Small models shared by the federated-loop tests."""

from __future__ import annotations

import torch
from torch import nn


class BlockNet(nn.Module):
    """``blocks.0 .. blocks.{n-1}`` (Linear + tanh) and a ``head``: n + 1 layers."""

    def __init__(self, width: int = 4, depth: int = 3, out: int = 2, *, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
        self.head = nn.Linear(width, out)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def block_map(model: BlockNet) -> dict[str, list[str]]:
    """Layer name -> parameter names, written out by hand."""
    out = {f"blocks.{i}": [f"blocks.{i}.weight", f"blocks.{i}.bias"] for i in range(len(model.blocks))}
    out["head"] = ["head.weight", "head.bias"]
    return out


def make_data(n: int, width: int = 4, out: int = 2, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A linearly separable toy task."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, width, generator=g)
    w = torch.randn(width, out, generator=torch.Generator().manual_seed(1234))
    return x, (x @ w).argmax(dim=1)


def sgd_train(model: nn.Module, data, *, steps: int = 5, lr: float = 0.1) -> int:
    """Full-batch SGD on the trainable parameters; returns the number of samples."""
    x, y = data
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return len(x)
