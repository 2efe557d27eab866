"""Brute-force references for :mod:`f3ocus.demo.stats`, slow and obviously right (used by the tests).

- :func:`wilcoxon_signed_rank_bruteforce`: the exact two-sided Wilcoxon signed-rank p-value by listing all
  $2^n$ sign patterns of the ranked nonzero differences (feasible for $n \\le 20$).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["wilcoxon_signed_rank_bruteforce"]


def wilcoxon_signed_rank_bruteforce(d: Sequence[float]) -> float:
    """Two-sided exact p-value of the signed-rank statistic $W^+$ over all $2^n$ sign patterns.

    Zeros are dropped, ties get average ranks (as in :func:`f3ocus.demo.stats.wilcoxon_signed_rank`).
    """
    d = np.asarray(d, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    if d.size > 20:
        raise ValueError(f"the brute force lists 2^n sign patterns; n={d.size} > 20 is too many.")
    ranks = sps.rankdata(np.abs(d))
    w = ranks[d > 0].sum()
    all_w = np.array([ranks[list(signs)].sum() for signs in itertools.product([False, True], repeat=d.size)])
    low = np.mean(all_w <= w + 1e-9)
    high = np.mean(all_w >= w - 1e-9)
    return float(min(1.0, 2 * min(low, high)))
