"""The complete loop of docs/guide/pytorch.md runs as written, and learns."""

from __future__ import annotations

import re
from pathlib import Path

import torch

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "pytorch.md"


def test_pytorch_guide_loop_runs_and_fits(capsys):
    code = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.S)[0]
    namespace: dict = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread avoids oversubscription on a busy machine
    try:
        exec(compile(code, str(GUIDE), "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    model, clients = namespace["model"], namespace["clients"]
    x = torch.cat([c[0] for c in clients])
    y = torch.cat([c[1] for c in clients])
    with torch.no_grad():
        loss = torch.nn.functional.cross_entropy(model(x), y).item()
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 5 and all("of full fine-tuning" in line for line in printed)
    assert loss < 0.9  # well below chance (log 3 = 1.10) on the pooled client data
