r"""Checking and normalizing the inputs of :func:`~f3ocus.selection.select_layers`.

Client normalization (F³OCUS, Saha et al., CVPR 2025) puts every client on the same footing before the
server compares them:

- ``"sum"`` (the paper's): $S_{kl} = \lambda_{kl} / \sum_{l'} \lambda_{kl'}$, each row sums to 1;
- ``"max"``: $S_{kl} = \lambda_{kl} / \max_{l'} \lambda_{kl'}$, each row's best layer scores 1;
- ``"rank"``: $S_{kl} = r_{kl} / L$ with $r_{kl} \in \{1..L\}$ the rank of $\lambda_{kl}$ within row $k$
  (ties share their average rank), invariant to any increasing transform of a client's scores;
- ``"none"``: $S = \lambda$ as given.

The first three are invariant to a client's scale: a client whose eigenvalues are $10^6$ times larger
gets exactly the same normalized row.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

from f3ocus._checks import check_choice, describe

__all__ = ["NORMALIZATIONS", "as_budgets", "as_score_matrix", "normalize_scores"]

NORMALIZATIONS = ("sum", "max", "rank", "none")


def _mapping_rows(scores: Sequence[Mapping[str, Any]]) -> tuple[list[list[Any]], tuple[str, ...]]:
    names = tuple(str(n) for n in scores[0].keys())
    if len(set(names)) != len(names):
        raise ValueError(f"scores[0] has repeated layer names: {list(names)}.")
    reference = set(names)
    rows = []
    for k, client in enumerate(scores):
        if not isinstance(client, Mapping):
            raise TypeError(
                f"scores[{k}] is {describe(client)}, but scores[0] is a mapping; pass one mapping "
                "(e.g. a LayerScores) per client, or a (K, L) array."
            )
        keys = {str(n) for n in client.keys()}
        if keys != reference:
            missing, extra = sorted(reference - keys), sorted(keys - reference)
            raise ValueError(
                f"scores[{k}] has different layer names than scores[0]: missing {missing}, extra {extra}. "
                "Every client must score the same layers (score them with the same `layers=`)."
            )
        by_name = {str(n): v for n, v in client.items()}
        rows.append([by_name[n] for n in names])
    return rows, names


def as_score_matrix(scores: Any) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """``(K, L)`` float64 raw scores and the layer names (``None`` for array input), fully checked.

    Raises:
        TypeError: not an array-like or a sequence of mappings; non-numeric values.
        ValueError: wrong shape, ragged rows, mismatched layer names, NaN/Inf or negative values.
    """
    names: tuple[str, ...] | None = None
    if isinstance(scores, Mapping):
        raise TypeError(
            f"scores is a single mapping ({type(scores).__name__} with {len(scores)} layers); pass a list "
            "with one mapping per client, e.g. select_layers([scores_client0, scores_client1, ...], budget)."
        )
    if isinstance(scores, Sequence) and not isinstance(scores, (str, bytes)) and len(scores) > 0:
        if isinstance(scores[0], Mapping):
            rows, names = _mapping_rows(scores)
            if not names:
                raise ValueError("scores[0] has no layers; every client needs at least one layer score.")
            scores = rows
    if isinstance(scores, (str, bytes)):
        raise TypeError(f"scores must be a (K, L) array-like or a sequence of mappings, got {describe(scores)}.")
    if hasattr(scores, "detach"):  # a torch tensor
        scores = scores.detach().cpu().numpy()
    try:
        array = np.asarray(scores)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(
            f"scores has ragged rows (clients with different numbers of layers): {err}. "
            "Every client must score the same L layers."
        ) from err
    if array.dtype == object:
        lengths = {len(r) for r in scores} if all(isinstance(r, Sequence) for r in scores) else set()
        if len(lengths) > 1:
            raise ValueError(
                f"scores has ragged rows: clients have {sorted(lengths)} layers. Every client must score "
                "the same L layers."
            )
        try:
            array = array.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"scores must hold real numbers, got {describe(array)}.") from err
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.number)):
        raise TypeError(f"scores must hold real numbers, got {describe(array)}.")
    if np.iscomplexobj(array):
        raise TypeError(f"scores must be real, got {describe(array)}.")
    if array.ndim != 2:
        raise ValueError(
            f"scores must be 2-D (K clients x L layers), got shape {array.shape}. "
            "For one client pass [scores] (shape (1, L))."
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"scores must have at least one client and one layer, got shape {array.shape}.")
    array = array.astype(np.float64)
    bad = ~np.isfinite(array)
    if bad.any():
        k, j = map(int, np.argwhere(bad)[0])
        raise ValueError(
            f"scores must be finite: scores[{k}, {j}] = {array[k, j]} ({int(bad.sum())} non-finite entries). "
            "Check the client's scoring run."
        )
    if (array < 0).any():
        k, j = map(int, np.argwhere(array < 0)[0])
        raise ValueError(
            f"scores must be >= 0: scores[{k}, {j}] = {array[k, j]}. Signed layer scores (e.g. score='grasp') "
            "need a transform first: f3ocus.scoring.make_nonnegative(scores, 'shift') keeps order and gaps, "
            "'rank' keeps only the order; or pass transform='shift' to f3ocus.layer_scores."
        )
    return array, names


def normalize_scores(raw: np.ndarray, normalize: str) -> np.ndarray:
    """Row-wise client normalization (see the module docstring)."""
    check_choice("normalize", normalize, NORMALIZATIONS)
    if normalize == "none":
        return raw.copy()
    if normalize == "rank":
        return rankdata(raw, axis=1) / raw.shape[1]
    denom = raw.sum(axis=1) if normalize == "sum" else raw.max(axis=1)
    zero = np.flatnonzero(denom <= 0)
    if zero.size:
        raise ValueError(
            f"scores[{int(zero[0])}] is all zeros, so normalize={normalize!r} cannot scale it. Drop that "
            "client, or use normalize='rank' or 'none'."
        )
    return raw / denom[:, None]


def as_budgets(budget: Any, K: int, L: int) -> np.ndarray:  # noqa: N803
    """``(K,)`` int64 budgets from an int or one int per client, each in ``[1, L]``."""
    if isinstance(budget, numbers.Integral) and not isinstance(budget, bool):
        values = np.full(K, int(budget), dtype=np.int64)
        if not 1 <= int(budget) <= L:
            raise ValueError(f"budget={int(budget)} must lie in 1..L = 1..{L} (the number of layers).")
        return values
    if hasattr(budget, "detach"):
        budget = budget.detach().cpu().numpy()
    if isinstance(budget, (str, bytes, Mapping)) or not hasattr(budget, "__len__"):
        raise TypeError(f"budget must be an int or a sequence of K={K} ints, got {describe(budget)}.")
    array = np.asarray(budget)
    if array.ndim != 1 or array.shape[0] != K:
        raise ValueError(
            f"budget has {array.shape[0] if array.ndim == 1 else array.shape} entries, but there are K={K} "
            "clients; pass one int per client or a single int for all."
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"budget must hold integers, got {describe(array)}.")
    out_of_range = np.flatnonzero((array < 1) | (array > L))
    if out_of_range.size:
        k = int(out_of_range[0])
        raise ValueError(f"budget[{k}]={int(array[k])} must lie in 1..L = 1..{L} (the number of layers).")
    return array.astype(np.int64)
