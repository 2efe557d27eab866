r"""Client constraints of :func:`~f3ocus.selection.select_layers`, checked and turned into arrays.

- ``costs``: a length-$L$ array of positive layer costs $c_l$, or ``"params"`` / ``"bytes"`` (the layers'
  sizes from ``LayerScores.num_params``; bytes are 4 per parameter, float32, unless every client's
  ``LayerScores.stats["num_bytes"]`` maps each layer to its bytes). Then ``budget`` is each client's
  capacity $B_k$ in the same units: $\sum_l m_{kl} c_l \le B_k$ (at most; the count budget is gone).
- ``required``: cells every plan trains (e.g. the task head). With ``required_in_budget=True`` (default)
  they use the client's budget; with ``False`` the budget is for the other layers only, i.e. client $k$'s
  budget grows by its required count (or cost).
- ``forbidden`` / ``allowed``: cells a plan may not / may train (one of the two).
- ``min_coverage``: each layer trained by at least this many clients (an int, one per layer, or a
  mapping layer name -> int).
- ``previous`` (a ``LayerAssignment`` or a ``(K, L)`` bool mask) with ``churn_penalty`` $\lambda$: the
  objective loses $\lambda$ per cell that differs from ``previous``.
- ``max_changes`` (with ``previous``): a hard limit, row $k$ of the plan differs from row $k$ of
  ``previous`` in at most ``max_changes[k]`` cells (an int, or one int per client).

Cell sets (``required``, ``forbidden``, ``allowed``) are a ``(K, L)`` bool mask, an ``(L,)`` bool mask (the
same for every client), a list of layer names or column indices (every client), or one such list per
client.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from f3ocus._checks import close_matches, describe

__all__ = ["as_capacities", "as_cells", "as_costs", "as_coverage", "as_max_changes", "as_previous", "check_feasible"]


def _name_index(argname: str, item: Any, names: Sequence[str] | None, L: int) -> int:  # noqa: N803
    if isinstance(item, str):
        if names is None:
            raise ValueError(
                f"{argname} names a layer ({item!r}), but the scores are a plain array without layer names; "
                "use column indices or pass the scores as LayerScores / mappings."
            )
        if item not in names:
            near = close_matches(item, names, n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"{argname} names layer {item!r}, which does not exist.{hint} Layers: {list(names)}.")
        return list(names).index(item)
    if isinstance(item, (numbers.Integral, np.integer)) and not isinstance(item, bool):
        if not 0 <= int(item) < L:
            raise ValueError(f"{argname} has column index {int(item)}, outside 0..{L - 1}.")
        return int(item)
    raise TypeError(f"{argname} entries must be layer names or column indices, got {describe(item)}.")


def as_cells(argname: str, value: Any, K: int, L: int, names: Sequence[str] | None) -> np.ndarray | None:  # noqa: N803
    """A ``(K, L)`` bool mask from any accepted form of a cell set (see the module docstring)."""
    if value is None:
        return None
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray) and value.dtype == bool:
        if value.shape == (L,):
            return np.broadcast_to(value, (K, L)).copy()
        if value.shape == (K, L):
            return value.copy()
        raise ValueError(f"{argname} as a bool mask must have shape (K, L) = ({K}, {L}) or (L,) = ({L},), got {value.shape}.")
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{argname} must be a bool mask, a list of layer names, or one list per client, got {describe(value)}."
        )
    items = list(value)
    if items and all(isinstance(v, (list, tuple, set, frozenset)) for v in items):  # one list per client
        if len(items) != K:
            raise ValueError(f"{argname} has {len(items)} per-client lists, but there are K={K} clients.")
        mask = np.zeros((K, L), dtype=bool)
        for k, row in enumerate(items):
            for item in row:
                mask[k, _name_index(f"{argname}[{k}]", item, names, L)] = True
        return mask
    if items and all(isinstance(v, (bool, np.bool_)) for v in items):
        return as_cells(argname, np.asarray(items, dtype=bool), K, L, names)
    row = np.zeros(L, dtype=bool)
    for item in items:
        row[_name_index(argname, item, names, L)] = True
    return np.broadcast_to(row, (K, L)).copy()


def as_costs(costs: Any, scores: Any, L: int) -> np.ndarray | None:  # noqa: N803
    """``(L,)`` positive float64 costs from an array or ``"params"`` / ``"bytes"``."""
    if costs is None:
        return None
    if isinstance(costs, str):
        if costs not in ("params", "bytes"):
            near = close_matches(costs, ["params", "bytes"], n=1)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"costs={costs!r} is not valid.{hint} Use 'params', 'bytes' or a length-L array.")
        clients = list(scores) if isinstance(scores, Sequence) and not isinstance(scores, (str, bytes)) else []
        counts = [getattr(c, "num_params", None) for c in clients]
        if not clients or any(c is None for c in counts):
            raise ValueError(
                f"costs={costs!r} takes the layer sizes from LayerScores.num_params, but the scores "
                "carry none; pass LayerScores from ntk_layer_importance / layer_scores, or a length-L array of costs."
            )
        names = list(clients[0].keys())
        values = np.array([float(counts[0][n]) for n in names])
        if costs == "bytes":
            per = [getattr(c, "stats", {}).get("num_bytes") for c in clients]
            values = np.array([float(per[0][n]) for n in names]) if all(isinstance(p, Mapping) for p in per) else 4.0 * values
        array = values
    else:
        if hasattr(costs, "detach"):
            costs = costs.detach().cpu().numpy()
        try:
            array = np.asarray(costs, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"costs must be a length-L array of numbers, 'params' or 'bytes', got {describe(costs)}.") from err
    if array.shape != (L,):
        raise ValueError(f"costs has shape {array.shape}, but there are L={L} layers; pass one cost per layer.")
    bad = np.flatnonzero(~np.isfinite(array) | (array <= 0))
    if bad.size:
        j = int(bad[0])
        raise ValueError(
            f"costs must be finite and > 0 (a layer that costs nothing needs no budget): costs[{j}] = {array[j]}."
        )
    return array


def as_capacities(budget: Any, K: int) -> np.ndarray:  # noqa: N803
    """``(K,)`` float64 capacities from a number or one number per client (with ``costs``)."""
    if hasattr(budget, "detach"):
        budget = budget.detach().cpu().numpy()
    if isinstance(budget, numbers.Real) and not isinstance(budget, bool):
        array = np.full(K, float(budget))
    elif isinstance(budget, (str, bytes, Mapping)) or not hasattr(budget, "__len__"):
        raise TypeError(f"with costs, budget must be a capacity or one capacity per client, got {describe(budget)}.")
    else:
        array = np.asarray(budget, dtype=np.float64)
        if array.shape != (K,):
            raise ValueError(f"budget has {array.size} capacities, but there are K={K} clients.")
    bad = np.flatnonzero(~np.isfinite(array) | (array < 0))
    if bad.size:
        raise ValueError(f"with costs, budget[{int(bad[0])}] = {array[bad[0]]} must be a finite capacity >= 0.")
    return array


def as_coverage(value: Any, K: int, L: int, names: Sequence[str] | None) -> np.ndarray | None:  # noqa: N803
    """``(L,)`` int coverage from an int, one int per layer, or a mapping layer -> int."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        out = np.zeros(L, dtype=np.int64)
        for key, v in value.items():
            out[_name_index("min_coverage", key, names, L)] = _count("min_coverage", v, K)
        return out
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        return np.full(L, _count("min_coverage", value, K), dtype=np.int64)
    array = np.asarray(value)
    if array.shape != (L,):
        raise ValueError(f"min_coverage must be an int or one int per layer (L={L}), got shape {array.shape}.")
    items = list(value) if array.dtype == object or isinstance(value, (list, tuple)) else array.tolist()
    return np.array([_count(f"min_coverage[{j}]", v, K) for j, v in enumerate(items)], dtype=np.int64)


def _count(argname: str, v: Any, K: int) -> int:  # noqa: N803
    if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
        raise TypeError(f"{argname} must be an int, got {describe(v)}.")
    if not 0 <= int(v) <= K:
        raise ValueError(f"{argname}={int(v)} must lie in 0..K = 0..{K} (clients per layer).")
    return int(v)


def as_previous(previous: Any, K: int, L: int) -> np.ndarray | None:  # noqa: N803
    """``(K, L)`` bool plan from a ``LayerAssignment`` or a mask."""
    if previous is None:
        return None
    mask = getattr(previous, "mask", previous)
    array = np.asarray(mask)
    if array.shape != (K, L):
        raise ValueError(f"previous must be a (K, L) = ({K}, {L}) plan or LayerAssignment, got shape {array.shape}.")
    if array.dtype != bool and not np.all(np.isin(array, (0, 1))):
        raise ValueError("previous must be a 0/1 (bool) plan.")
    return array.astype(bool)


def as_max_changes(
    value: Any, previous: np.ndarray | None, K: int,  # noqa: N803
    required: np.ndarray | None = None, allowed: np.ndarray | None = None,
) -> np.ndarray | None:
    """``(K,)`` int limits from an int or one int per client, checked against ``previous``."""
    if value is None:
        return None
    if previous is None:
        raise ValueError(
            f"max_changes={describe(value)} limits the changes against previous=, but previous is None; "
            "pass last round's LayerAssignment (or (K, L) mask) as previous=."
        )
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    if isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool):
        items = [value] * K
    elif isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__len__"):
        raise TypeError(f"max_changes must be an int or one int per client, got {describe(value)}.")
    else:
        items = list(np.asarray(value).tolist() if isinstance(value, np.ndarray) else value)
        if len(items) != K:
            raise ValueError(
                f"max_changes has {len(items)} entries, but there are K={K} clients; pass one int or one per client."
            )
    for k, v in enumerate(items):
        if isinstance(v, bool) or not isinstance(v, (numbers.Integral, np.integer)):
            raise TypeError(f"max_changes[{k}] must be an int (cells that may change), got {describe(v)}.")
        if int(v) < 0:
            raise ValueError(f"max_changes[{k}] = {int(v)} must be >= 0 (0 keeps the previous row).")
    limit = np.array([int(v) for v in items], dtype=np.int64)
    forced = np.zeros(K, dtype=np.int64)  # changes no plan avoids: required cells previous lacks, and
    if required is not None:  # forbidden cells previous trained
        forced += (required & ~previous).sum(axis=1)
    if allowed is not None:
        forced += (~allowed & previous).sum(axis=1)
    short = np.flatnonzero(forced > limit)
    if short.size:
        k = int(short[0])
        raise ValueError(
            f"max_changes[{k}] = {int(limit[k])}, but client {k}'s required and forbidden cells already differ "
            f"from previous in {int(forced[k])} cells; raise max_changes or change previous."
        )
    return limit


def check_feasible(
    budgets: np.ndarray, exact: bool, costs: np.ndarray | None, capacities: np.ndarray | None,
    required: np.ndarray | None, allowed: np.ndarray | None, coverage: np.ndarray | None,
    names: Sequence[str] | None,
) -> None:
    """The simple reasons a request cannot be met, each as a ``ValueError`` that says which client or layer."""
    K = budgets.shape[0]  # noqa: N806
    label = (lambda j: repr(names[j])) if names is not None else (lambda j: str(j))
    if required is not None and allowed is not None:
        clash = np.argwhere(required & ~allowed)
        if clash.size:
            k, j = map(int, clash[0])
            raise ValueError(
                f"client {k} has layer {label(j)} both required and forbidden ({len(clash)} such cells); "
                "a cell can be one or the other."
            )
    if required is not None:
        if costs is None:
            over = np.flatnonzero(required.sum(axis=1) > budgets)
            if over.size:
                k = int(over[0])
                raise ValueError(
                    f"client {k} has {int(required[k].sum())} required layers but a budget of {int(budgets[k])}; "
                    "raise the budget or pass required_in_budget=False."
                )
        else:
            over = np.flatnonzero(required @ costs > capacities * (1 + 1e-12) + 1e-9)
            if over.size:
                k = int(over[0])
                raise ValueError(
                    f"client {k}'s required layers cost {float(required[k] @ costs):g} but its capacity is "
                    f"{capacities[k]:g}; raise the capacity or pass required_in_budget=False."
                )
    if costs is not None:
        cheapest = np.where(allowed if allowed is not None else True, costs[None, :], np.inf).min(axis=1)
        small = np.flatnonzero(capacities < cheapest)
        if small.size:
            k = int(small[0])
            raise ValueError(
                f"budget[{k}] = {capacities[k]:g} is smaller than the cheapest layer client {k} may train "
                f"({cheapest[k]:g}), so it could train nothing; raise its capacity or drop the client."
            )
    elif exact and allowed is not None:
        few = np.flatnonzero(allowed.sum(axis=1) < budgets)
        if few.size:
            k = int(few[0])
            raise ValueError(
                f"client {k} must train exactly {int(budgets[k])} layers but may train only "
                f"{int(allowed[k].sum())}; lower its budget, allow more layers, or pass exact_budget=False."
            )
    if coverage is not None:
        may = allowed.sum(axis=0) if allowed is not None else np.full(coverage.shape, K)
        short = np.flatnonzero(coverage > may)
        if short.size:
            j = int(short[0])
            raise ValueError(
                f"min_coverage asks {int(coverage[j])} clients for layer {label(j)}, but only {int(may[j])} may "
                "train it; lower min_coverage or allow it to more clients."
            )
        if costs is None and int(coverage.sum()) > int(budgets.sum()):
            raise ValueError(
                f"min_coverage asks for {int(coverage.sum())} client-layer pairs in all, but the budgets give "
                f"only {int(budgets.sum())}; lower min_coverage or raise the budgets."
            )
