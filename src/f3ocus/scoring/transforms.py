r"""Transforms that make signed layer scores non-negative, for :func:`f3ocus.select_layers`.

Selection needs scores $s_l \ge 0$ (the F³OCUS importance is a share $s_l / \sum_{l'} s_{l'}$). A signed
score such as ``"grasp"`` is transformed first, per client, with one of:

| ``how`` | $t_l$ | keeps |
| --- | --- | --- |
| ``"shift"`` | $s_l - \min_{l'} s_{l'}$ | order and gaps (the lowest layer gets 0) |
| ``"rank"`` | $r_l / L$, $r_l$ the ascending rank (ties averaged) | order only |
| ``"abs"`` | $\lvert s_l \rvert$ | size of the effect, not its sign |
| ``"clip"`` | $\max(s_l, 0)$ | the positive part (negative layers tie at 0) |

``negate=True`` applies the transform to $-s_l$: for ``"grasp"``, whose largest values are the weights
that Wang et al. (ICLR 2020) prune first, ``negate=True`` puts the layers that preserve gradient flow most
on top.
"""

from __future__ import annotations

import numpy as np

from f3ocus._checks import check_choice, describe
from f3ocus.scores import LayerScores

__all__ = ["TRANSFORMS", "check_nonnegative", "make_nonnegative"]

TRANSFORMS = ("shift", "rank", "abs", "clip")


def make_nonnegative(scores: LayerScores, how: str = "shift", *, negate: bool = False) -> LayerScores:
    """A new :class:`~f3ocus.LayerScores` with non-negative values (see the module docstring).

    Args:
        scores: One client's scores (possibly signed).
        how: ``"shift"``, ``"rank"``, ``"abs"`` or ``"clip"``.
        negate: Transform $-s_l$ instead of $s_l$.

    Returns:
        The transformed scores, same layers and parameter counts; ``stats["transform"]`` records
        ``how`` and ``negate``.

    Example:
        >>> s = LayerScores({"a": -2.0, "b": 1.0, "c": 0.5})
        >>> dict(make_nonnegative(s, "shift"))
        {'a': 0.0, 'b': 3.0, 'c': 2.5}
        >>> dict(make_nonnegative(s, "rank", negate=True))
        {'a': 1.0, 'b': 0.3333333333333333, 'c': 0.6666666666666666}
    """
    if not isinstance(scores, LayerScores):
        raise TypeError(f"scores must be a LayerScores (from f3ocus.layer_scores), got {describe(scores)}.")
    check_choice("how", how, TRANSFORMS)
    values = -scores.to_numpy() if negate else scores.to_numpy()
    if how == "shift":
        out = values - values.min() if len(values) else values
    elif how == "rank":
        out = LayerScores(dict(zip(scores, values.tolist(), strict=True))).normalized("rank").to_numpy()
    elif how == "abs":
        out = np.abs(values)
    else:
        out = np.maximum(values, 0.0)
    stats = {**scores.stats, "transform": {"how": how, "negate": bool(negate)}}
    return LayerScores(dict(zip(scores, (out + 0.0).tolist(), strict=True)), scores.num_params, stats)


def check_nonnegative(scores: LayerScores, argname: str = "scores") -> LayerScores:
    """Return ``scores`` if every value is >= 0, else raise a ``ValueError`` that names the transform to use.

    Raises:
        ValueError: Some score is negative; the message names the layer, the score and the transforms.
    """
    negative = [(k, v) for k, v in scores.items() if v < 0]
    if negative:
        layer, value = min(negative, key=lambda kv: kv[1])
        name = scores.stats.get("score")
        which = f"score={name!r} " if name else ""
        raise ValueError(
            f"{argname} must be >= 0 for selection, but the {which}scores are signed: {len(negative)} of "
            f"{len(scores)} layers are negative (lowest {value:.6g} at layer {layer!r}). Transform them first: "
            "f3ocus.scoring.make_nonnegative(scores, 'shift') keeps order and gaps, 'rank' keeps the order "
            "only ('abs' and 'clip' also exist); or pass transform='shift' to f3ocus.layer_scores."
        )
    return scores
