"""How a masked round composes with the wrapped Flower strategy.

Client $k$ trains the layer set $S_k$ and sends those layers only. For parameter $\\theta$ of layer $l$ let
$C_l = \\{k : l \\in S_k, \\text{reply valid}\\}$ and $n_l = |C_l|$ (the layer's coverage).

- **Server optimizers and plain averaging** (``FedAvg``, ``FedProx``, ``FedAvgM``, ``FedAdam``,
  ``FedYogi``, ``FedAdagrad`` and any strategy not listed below): the strategy receives one reply whose
  arrays are the masked mean (:func:`f3ocus.masked_fedavg`)

  $$\\bar\\theta = \\frac{\\sum_{k \\in C_l} w_k \\theta_k}{\\sum_{k \\in C_l} w_k} \\ (n_l > 0), \\qquad
  \\bar\\theta = \\theta^{\\text{global}} \\ (n_l = 0),$$

  so its pseudo-gradient $\\bar\\theta - \\theta^{\\text{global}}$ is zero on the layers nobody trained, and
  it updates its moments or momentum exactly as it defines them (FedOpt: Reddi et al., ICLR 2021;
  FedAvgM: Hsu et al., 2019). Layers nobody trained keep their values bitwise, even where momentum
  from earlier rounds would move them, and the optimizer's output is cast to each array's dtype.
- **Robust aggregators** (``Krum``, ``MultiKrum``, ``Bulyan``, ``FedMedian``, ``FedTrimmedAvg``): the
  strategy's own ``aggregate_train`` runs once per layer over the replies of $C_l$ holding only that
  layer. A layer where it declines (e.g. Bulyan with $n_l < 4f + 3$) keeps its value, with a warning.
- **Central DP with server-side clipping** (``DifferentialPrivacyServerSideFixedClipping`` and
  ``...AdaptiveClipping`` around one of the above): each client's update of its layers,
  $\\Delta_k = \\theta_k - \\theta^{\\text{global}}$ over $S_k$, is clipped to norm $C$; the clipped states go
  through the wrapped strategy as above; then each trained layer gets Gaussian noise
  $\\mathcal N(0, \\sigma_l^2)$, $\\sigma_l = z C / n_l$, with $z$ the noise multiplier (Flower uses
  $zC/K$ for $K$ sampled clients). Per layer this is the Gaussian mechanism on the sum
  $\\sum_{k \\in C_l} \\Delta_{k,l}$ with noise $zC$; over all layers together a client changes the sums by
  at most $C$ in norm, so the release has the guarantee of the unmasked mechanism with multiplier $z$
  (McMahan et al., ICLR 2018; Andrew et al., NeurIPS 2021 for the adaptive norm, whose noisy
  clipped-count update is mirrored from Flower, with the noise drawn at the norm used for clipping).
  The layer scores and the plan are not covered by the guarantee.
- **Refused** at construction: client-side DP wrappers (their client mods reject partial replies),
  ``QFedAvg`` (its loss-based reweighting has no per-layer form) and the XGBoost strategies.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    Bulyan,
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvgM,
    FedMedian,
    FedTrimmedAvg,
    FedXgbBagging,
    FedXgbCyclic,
    MultiKrum,
    QFedAvg,
    Strategy,
)

from f3ocus.fl.aggregate import masked_fedavg

__all__ = ["Composition", "Update", "compose", "aggregate_masked"]

_PER_LAYER = (MultiKrum, Bulyan, FedMedian, FedTrimmedAvg)  # Krum is a MultiKrum
_DP_SERVER = (DifferentialPrivacyServerSideFixedClipping, DifferentialPrivacyServerSideAdaptiveClipping)
_DP_CLIENT = (DifferentialPrivacyClientSideFixedClipping, DifferentialPrivacyClientSideAdaptiveClipping)


@dataclasses.dataclass(frozen=True)
class Update:
    """A validated train reply: node, weight $w_k$ and the arrays of its layers (global dtypes)."""

    node: int
    weight: float
    arrays: Mapping[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Composition:
    """How the masked round meets the wrapped strategy.

    Attributes:
        kind: ``"mean"`` (the strategy sees the masked mean) or ``"per-layer"`` (it runs per layer).
        aggregator: The strategy whose ``aggregate_train`` is called (inside a DP wrapper, the inner).
        dp: The server-side DP wrapper, or None.
    """

    kind: str
    aggregator: Strategy
    dp: Strategy | None

    def describe(self) -> str:
        """One line for the start-up log."""
        name = type(self.aggregator).__name__
        text = (
            f"{name} sees the masked mean (zero pseudo-gradient on untrained layers)"
            if self.kind == "mean"
            else f"{name} runs per layer over the clients that trained it"
        )
        if self.dp is not None:
            text += f"; {type(self.dp).__name__}: per-client clipping, noise z*C/n_l per trained layer"
        return text


def _refuse(strategy: Strategy, why: str, instead: str) -> None:
    raise ValueError(f"F3ocusStrategy cannot wrap {type(strategy).__name__}: {why}. {instead}")


def compose(strategy: Strategy) -> Composition:
    """Classify ``strategy``; refuse the ones a layer plan would silently break.

    Raises:
        ValueError: a client-side DP wrapper, a DP wrapper with an accountant, ``QFedAvg``, an XGBoost
            strategy, or a nested ``F3ocusStrategy`` (the message names the strategy and what to use).
    """
    if isinstance(strategy, _DP_CLIENT):
        _refuse(
            strategy,
            "clients send only their assigned layers, and fixedclipping_mod/adaptiveclipping_mod reject a "
            "reply that holds fewer arrays than the client received",
            "Use DifferentialPrivacyServerSideFixedClipping (or ...ServerSideAdaptiveClipping) inside "
            "F3ocusStrategy instead: it clips each client's update of its layers and adds noise per layer "
            "calibrated to the number of clients that trained it.",
        )
    dp = None
    inner = strategy
    if isinstance(strategy, _DP_SERVER):
        if getattr(strategy, "accountant", None) is not None:
            _refuse(
                strategy,
                "its privacy accountant assumes noise zC/K on every array of an unmasked FedAvg",
                "Pass accountant=None and account each round as a Gaussian mechanism with the noise "
                "multiplier z (the masked release has the same guarantee; see docs/guide/flower.md).",
            )
        dp, inner = strategy, strategy.strategy
        if isinstance(inner, _DP_SERVER + _DP_CLIENT):
            _refuse(strategy, "it wraps another DP wrapper", "Use one DP wrapper.")
    if isinstance(inner, QFedAvg):
        _refuse(
            inner,
            "q-FedAvg reweights each client's whole-model update by its loss, which has no per-layer form",
            "Wrap FedAvg, FedProx or a server optimizer (FedAdam, FedYogi, FedAdagrad, FedAvgM).",
        )
    if isinstance(inner, FedXgbBagging | FedXgbCyclic):
        _refuse(inner, "it aggregates XGBoost trees, not layers", "Use it without F3ocusStrategy.")
    if type(inner).__name__ == "F3ocusStrategy":
        _refuse(inner, "it is already an F3ocusStrategy", "Wrap the inner strategy once.")
    kind = "per-layer" if isinstance(inner, _PER_LAYER) else "mean"
    return Composition(kind=kind, aggregator=inner, dp=dp)


@contextlib.contextmanager
def _quiet_flwr() -> Iterator[None]:
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def _reply(arrays: Mapping[str, np.ndarray | Array], weight: float, node: int, key: str) -> Message:
    record = ArrayRecord({k: v if isinstance(v, Array) else Array(np.asarray(v)) for k, v in arrays.items()})
    content = RecordDict({key: record, "metrics": MetricRecord({"num-examples": weight})})
    return Message(content, dst_node_id=node, message_type="train")


def _weight_key(strategy: Strategy) -> str:
    return getattr(strategy, "weighted_by_key", "num-examples")


def _array_key(strategy: Strategy) -> str:
    return getattr(strategy, "arrayrecord_key", "arrays")


def _masked_mean(
    global_np: Mapping[str, np.ndarray], updates: Sequence[Update], trained: set[str]
) -> dict[str, np.ndarray]:
    base = {k: torch.from_numpy(np.array(global_np[k])) for k in global_np if k in trained}
    states = [{k: torch.from_numpy(np.array(v)) for k, v in u.arrays.items()} for u in updates]
    mean = masked_fedavg(base, states, [u.weight for u in updates])
    return {k: t.numpy() for k, t in mean.items()}


def _clip(updates: Sequence[Update], global_np: Mapping[str, np.ndarray], norm: float) -> tuple[list, int]:
    """FlatClip of each client's update of its layers (Flower's ``compute_clip_model_update``)."""
    out, clipped = [], 0
    for u in updates:
        delta = {k: v.astype(np.float64) - global_np[k].astype(np.float64) for k, v in u.arrays.items()}
        size = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
        scale = min(1.0, norm / size) if size > 0 else 1.0
        clipped += scale < 1.0
        arrays = {
            k: (global_np[k].astype(np.float64) + d * scale).astype(global_np[k].dtype)
            for k, d in delta.items()
        }
        out.append(Update(u.node, u.weight, arrays))
    return out, clipped


def aggregate_masked(
    comp: Composition,
    server_round: int,
    global_record: ArrayRecord,
    updates: Sequence[Update],
    layer_keys: Mapping[str, Sequence[str]],
    rng: np.random.Generator,
) -> tuple[ArrayRecord, dict[str, Any]]:
    """The new global arrays of a masked round, composed with the wrapped strategy.

    Args:
        comp: From :func:`compose`.
        server_round: The round (passed to the strategy).
        global_record: The global arrays the round started from.
        updates: The valid replies.
        layer_keys: Layer name -> its array keys.
        rng: Source of the DP noise.

    Returns:
        ``(arrays, info)``: every global key in order (untrained ones are the global ``Array`` objects,
        bitwise), and ``{"coverage": {layer: n_l}, "kept": {layer: reason}, "noise_std": {layer: s}}``.
    """
    global_np = {k: np.asarray(a.numpy()) for k, a in global_record.items()}
    coverage = {
        layer: sum(all(k in u.arrays for k in keys) and bool(keys) for u in updates)
        for layer, keys in layer_keys.items()
    }
    info: dict[str, Any] = {"coverage": coverage, "kept": {}, "noise_std": {}}
    clip_norm = None
    if comp.dp is not None:
        clip_norm = float(comp.dp.clipping_norm)
        updates, clipped = _clip(updates, global_np, clip_norm)
        if isinstance(comp.dp, DifferentialPrivacyServerSideAdaptiveClipping) and updates:
            frac = float(rng.normal(clipped, comp.dp.clipped_count_stddev)) / len(updates)
            comp.dp.clipping_norm *= math.exp(
                -comp.dp.clip_norm_lr * (frac - comp.dp.target_clipped_quantile)
            )
        info["clipping_norm"] = clip_norm
    trained = {k for u in updates for k in u.arrays}
    new: dict[str, np.ndarray] = {}
    agg, akey = comp.aggregator, _array_key(comp.aggregator)
    if comp.kind == "mean" and trained:
        mean = _masked_mean(global_np, updates, trained)
        full = {k: (mean[k] if k in trained else global_record[k]) for k in global_record}
        total = float(sum(u.weight for u in updates))
        try:
            with _quiet_flwr():
                out, _ = agg.aggregate_train(server_round, [_reply(full, total, 0, akey)])
        except Exception as err:  # a strategy failing on the aggregate must not end the round
            info["kept"] = {
                layer: f"{type(agg).__name__} failed: {err}" for layer, n in coverage.items() if n
            }
            out = None
        if out is not None:
            new = {k: np.asarray(out[k].numpy()) for k in trained if k in out}
    elif comp.kind == "per-layer":
        for layer, keys in layer_keys.items():
            senders = [u for u in updates if keys and all(k in u.arrays for k in keys)]
            if not senders:
                continue
            subs = [_reply({k: u.arrays[k] for k in keys}, u.weight, u.node, akey) for u in senders]
            try:
                with _quiet_flwr():
                    out, _ = agg.aggregate_train(server_round, subs)
            except Exception as err:
                out, reason = None, f"{type(err).__name__}: {err}"
            else:
                reason = f"{type(agg).__name__} declined {len(senders)} sender(s)"
            if out is None or any(k not in out for k in keys):
                info["kept"][layer] = reason
                continue
            for k in keys:
                new[k] = np.asarray(out[k].numpy())
    if clip_norm is not None and comp.dp is not None:
        z = float(comp.dp.noise_multiplier)
        for layer, keys in layer_keys.items():
            if coverage[layer] and all(k in new for k in keys):
                std = z * clip_norm / coverage[layer]
                info["noise_std"][layer] = std
                for k in keys:
                    new[k] = new[k].astype(np.float64) + rng.normal(0.0, std, new[k].shape)
    arrays = ArrayRecord()
    for k, a in global_record.items():
        arrays[k] = Array(np.ascontiguousarray(new[k].astype(global_np[k].dtype))) if k in new else a
    if isinstance(agg, FedAvgM) and agg.current_arrays is not None:
        agg.current_arrays = arrays  # its next pseudo-gradient starts from what the clients receive
    return arrays, info
