"""Communication accounting: what a layer plan sends, against full fine-tuning.

For client $k$ with layer set $S_k$ and $|\\theta_l|$ the number of (trainable) parameters of layer $l$:

$$
\\text{up}_k = \\sum_{l \\in S_k} |\\theta_l|, \\qquad
\\text{down}_k = \\begin{cases} \\sum_{l} |\\theta_l| & \\texttt{download="all"} \\\\
\\sum_{l \\in S_k} |\\theta_l| & \\texttt{download="assigned"} \\end{cases}, \\qquad
\\text{full} = \\sum_l |\\theta_l|,
$$

the sums over $l$ running over the layers of the layer map (the model's selectable part: all its
trainable layers, or all adapter layers of a PEFT model). Full fine-tuning sends ``full`` parameters up
and down for every client. ``download="all"`` is the safe default: another client may have changed any
layer since client $k$ last synchronized. Bytes are parameters times ``bytes_per_param`` (default: each
tensor's element size). Selection adds $L$ scores per client on the way up
(``score_bytes_up``, 8 bytes each as JSON float64), the only data-dependent upload besides the layers
(F³OCUS, Saha et al., CVPR 2025).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from f3ocus._checks import check_choice, check_int, describe
from f3ocus.fl.plan import layer_parameter_names, resolve_layer_map

__all__ = ["CommunicationCost", "communication_cost"]


@dataclasses.dataclass(frozen=True)
class CommunicationCost:
    """Per-client, per-round communication of a layer plan and of full fine-tuning.

    Attributes:
        layers: The layer names of each client.
        params_up: Parameters each client uploads.
        params_down: Parameters each client downloads.
        bytes_up: Bytes each client uploads (layers only).
        bytes_down: Bytes each client downloads.
        full_params: Parameters one client sends each way under full fine-tuning.
        full_bytes: Bytes one client sends each way under full fine-tuning.
        score_bytes_up: Bytes of the layer scores each client uploads for selection ($8L$).
        download: ``"all"`` or ``"assigned"`` (see the module docstring).
    """

    layers: tuple[tuple[str, ...], ...]
    params_up: tuple[int, ...]
    params_down: tuple[int, ...]
    bytes_up: tuple[int, ...]
    bytes_down: tuple[int, ...]
    full_params: int
    full_bytes: int
    score_bytes_up: int
    download: str

    @property
    def num_clients(self) -> int:
        """Number of clients $K$."""
        return len(self.layers)

    @property
    def total_bytes_up(self) -> int:
        """$\\sum_k$ bytes_up$_k$."""
        return sum(self.bytes_up)

    @property
    def total_bytes_down(self) -> int:
        """$\\sum_k$ bytes_down$_k$."""
        return sum(self.bytes_down)

    @property
    def up_fraction(self) -> float:
        """Upload of the plan over upload of full fine-tuning, $\\sum_k \\text{up}_k / (K \\cdot
        \\text{full})$ in bytes (nan without clients or parameters)."""
        denom = self.num_clients * self.full_bytes
        return self.total_bytes_up / denom if denom else float("nan")

    @property
    def total_fraction(self) -> float:
        """Up plus down traffic of the plan over that of full fine-tuning, in bytes."""
        denom = 2 * self.num_clients * self.full_bytes
        return (self.total_bytes_up + self.total_bytes_down) / denom if denom else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (lists for tuples, plus the derived fractions)."""
        d = dataclasses.asdict(self)
        d["layers"] = [list(x) for x in self.layers]
        for key in ("params_up", "params_down", "bytes_up", "bytes_down"):
            d[key] = list(d[key])
        d["up_fraction"] = self.up_fraction
        d["total_fraction"] = self.total_fraction
        return d

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict`."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> CommunicationCost:
        """Inverse of :meth:`to_json`."""
        d = json.loads(text)
        d.pop("up_fraction", None)
        d.pop("total_fraction", None)
        d["layers"] = tuple(tuple(x) for x in d["layers"])
        for key in ("params_up", "params_down", "bytes_up", "bytes_down"):
            d[key] = tuple(d[key])
        return cls(**d)


def _layers_per_client(layers_per_client: Any) -> list[list[str]]:
    if hasattr(layers_per_client, "layers") and hasattr(layers_per_client, "mask"):
        layers_per_client = layers_per_client.layers
    if isinstance(layers_per_client, str) or not isinstance(layers_per_client, Sequence):
        raise TypeError(
            "layers_per_client must be a LayerAssignment or a list with one list of layer names per "
            f"client, got {describe(layers_per_client)}."
        )
    return [list(x) if not isinstance(x, str) else x for x in layers_per_client]


def communication_cost(
    model: nn.Module,
    layers_per_client: Sequence[Sequence[str]],
    *,
    layer_map: Mapping[str, Sequence[str]] | None = None,
    bytes_per_param: int | None = None,
    download: str = "all",
) -> CommunicationCost:
    """Parameters and bytes up and down per client per round, and the same for full fine-tuning.

    Args:
        model: The global model.
        layers_per_client: A :class:`f3ocus.LayerAssignment` or one list of layer names per client.
        layer_map: Layer name -> parameter names. Default: :func:`f3ocus.resolve_layers`; for PEFT
            models :func:`f3ocus.fl.adapter_layers`.
        bytes_per_param: Bytes per parameter on the wire (e.g. 2 for bf16 transport). Default: the
            element size of each parameter's dtype.
        download: ``"all"`` (clients download every layer of the map) or ``"assigned"`` (only their
            own layers).

    Returns:
        A :class:`CommunicationCost`.

    Raises:
        TypeError: ``layers_per_client`` is not a list of lists, or ``bytes_per_param`` is not an int.
        ValueError: a layer is unknown, ``bytes_per_param < 1``, or ``download`` is not a valid choice.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
        >>> lmap = {"0": ["0.weight", "0.bias"], "1": ["1.weight", "1.bias"]}
        >>> cost = communication_cost(model, [["0"], ["1"]], layer_map=lmap)
        >>> cost.params_up, cost.full_params, cost.bytes_up
        ((12, 4), 16, (48, 16))
    """
    download = check_choice("download", download, ["all", "assigned"])
    if bytes_per_param is not None:
        bytes_per_param = check_int("bytes_per_param", bytes_per_param, low=1)
    per_client = _layers_per_client(layers_per_client)
    lmap = resolve_layer_map(model, layer_map)
    params = dict(model.named_parameters())

    def size(names: list[str]) -> tuple[int, int]:
        n = sum(params[p].numel() for p in names)
        b = sum(params[p].numel() * (bytes_per_param or params[p].element_size()) for p in names)
        return n, b

    full_params, full_bytes = size(layer_parameter_names(list(lmap), lmap))
    up, down, bup, bdown = [], [], [], []
    for k, layers in enumerate(per_client):
        n, b = size(layer_parameter_names(layers, lmap, argname=f"layers_per_client[{k}]"))
        up.append(n)
        bup.append(b)
        if download == "all":
            down.append(full_params)
            bdown.append(full_bytes)
        else:
            down.append(n)
            bdown.append(b)
    return CommunicationCost(
        layers=tuple(tuple(x) for x in per_client),
        params_up=tuple(up),
        params_down=tuple(down),
        bytes_up=tuple(bup),
        bytes_down=tuple(bdown),
        full_params=full_params,
        full_bytes=full_bytes,
        score_bytes_up=8 * len(lmap),
        download=download,
    )
