"""What the server remembers across rounds, and saving it to (and resuming it from) a directory.

- Per node: the last plan it got (and in which round) and the last valid scores and budget it sent.
  Between selection rounds a sampled node keeps its own last plan, however many rounds it was absent.
- Per round: the coverage $n_l$ of every layer (how many clients trained it). The fallback gives a node
  its budget's worth of the layers with the least coverage over the last ``window`` rounds plus this
  round, so that clients on the fallback rotate through the layers instead of repeating the same ones.
- ``save_dir``: after every round ``arrays.npz`` (the global arrays, written atomically) and
  ``state.json`` (this memory and the round records); ``optimizer.npz`` holds a wrapped server
  optimizer's moments (FedOpt ``m_t``/``v_t``, FedAvgM ``momentum_vector``). Nothing is pickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

__all__ = ["PlanMemory", "least_covered", "save_round", "load_saved"]


class PlanMemory:
    """Per-node plans and scores, per-round coverage; JSON round trip with :meth:`to_dict`."""

    def __init__(self) -> None:
        self.plans: dict[int, tuple[int, list[str]]] = {}
        self.scores: dict[int, tuple[int, dict[str, float], int | None]] = {}
        self.coverage: dict[int, dict[str, int]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (node ids as strings)."""
        return {
            "plans": {str(n): [r, list(p)] for n, (r, p) in self.plans.items()},
            "scores": {str(n): [r, s, b] for n, (r, s, b) in self.scores.items()},
            "coverage": {str(r): c for r, c in self.coverage.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PlanMemory:
        """Inverse of :meth:`to_dict`."""
        m = cls()
        m.plans = {int(n): (int(r), list(p)) for n, (r, p) in d.get("plans", {}).items()}
        m.scores = {int(n): (int(r), dict(s), b) for n, (r, s, b) in d.get("scores", {}).items()}
        m.coverage = {int(r): dict(c) for r, c in d.get("coverage", {}).items()}
        return m


def least_covered(
    layers: Sequence[str],
    budget: int,
    current: Mapping[str, int],
    history: Mapping[int, Mapping[str, int]],
    server_round: int,
    window: int,
) -> list[str]:
    """The ``budget`` layers with the least coverage over rounds ``[r - window, r]``, in layer order.

    Ties go to the layer with the least coverage this round, then to the earlier layer.
    """
    recent = {name: 0 for name in layers}
    for r in range(server_round - window, server_round):
        for name, n in history.get(r, {}).items():
            if name in recent:
                recent[name] += n
    order = sorted(
        range(len(layers)),
        key=lambda i: (recent[layers[i]] + current.get(layers[i], 0), current.get(layers[i], 0), i),
    )
    return [layers[i] for i in sorted(order[:budget])]


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    tmp = path.with_suffix(".tmp.npz")
    with open(tmp, "wb") as f:
        np.savez(f, **{f"a{i}": v for i, v in enumerate(arrays.values())})
    os.replace(tmp, path)


def _read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[f"a{i}"] for i, k in enumerate(keys)}


def _optimizer_state(strategy: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for attr in ("m_t", "v_t"):
        value = getattr(strategy, attr, None)
        if isinstance(value, dict) and value:
            out[attr] = value
    mv = getattr(strategy, "momentum_vector", None)
    if isinstance(mv, list) and mv:
        out["momentum_vector"] = {str(i): v for i, v in enumerate(mv)}
    return out


def save_round(
    save_dir: Path, server_round: int, arrays: ArrayRecord, state: Mapping[str, Any], optimizer: Any
) -> None:
    """Write the global arrays, the JSON state and the optimizer moments of ``server_round``."""
    save_dir.mkdir(parents=True, exist_ok=True)
    keys = list(arrays.keys())
    _write_npz(save_dir / "arrays.npz", {k: arrays[k].numpy() for k in keys})
    opt = _optimizer_state(optimizer)
    opt_keys = {name: list(values) for name, values in opt.items()}
    if opt:
        flat = {f"{name}/{k}": v for name, values in opt.items() for k, v in values.items()}
        _write_npz(save_dir / "optimizer.npz", flat)
    doc = {"round": server_round, "array_keys": keys, "optimizer_keys": opt_keys, **state}
    tmp = save_dir / "state.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, save_dir / "state.json")


def load_saved(save_dir: Path, optimizer: Any) -> tuple[ArrayRecord, dict[str, Any]] | None:
    """Read what :func:`save_round` wrote (None if nothing was saved); restores the moments."""
    path = Path(save_dir) / "state.json"
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    arrays = _read_npz(Path(save_dir) / "arrays.npz", doc["array_keys"])
    opt_keys = doc.get("optimizer_keys", {})
    if opt_keys:
        flat_keys = [f"{name}/{k}" for name, keys in opt_keys.items() for k in keys]
        flat = _read_npz(Path(save_dir) / "optimizer.npz", flat_keys)
        for name, keys in opt_keys.items():
            values = {k: flat[f"{name}/{k}"] for k in keys}
            if name == "momentum_vector":
                optimizer.momentum_vector = [values[k] for k in keys]
            else:
                setattr(optimizer, name, values)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()}), doc
