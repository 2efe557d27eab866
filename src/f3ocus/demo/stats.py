"""Statistics of a study over seeds: confidence intervals, paired differences, the Wilcoxon signed-rank test.

Each seed is one independent replicate of the whole experiment (data split, warm start, minibatches), and
every strategy of a seed sees the same replicate, so strategies are compared **paired by seed**:

- :func:`mean_ci`: Student-t interval of a mean over $n$ seeds,
  $\\bar x \\pm t_{n-1,\\,1-(1-c)/2}\\; s / \\sqrt n$ with $s$ the sample standard deviation ($ddof = 1$).
- :func:`paired_difference`: the same interval on the per-seed differences $d_i = a_i - b_i$ (the paired
  t interval), with the two-sided Wilcoxon signed-rank p-value of $H_0$: $d$ is symmetric about 0
  (Wilcoxon, Biometrics Bulletin 1945), and the counts of seeds won, lost and tied.
- :func:`wilcoxon_signed_rank`: the test's exact null distribution. Zeros are dropped (Wilcoxon's
  convention, scipy's default), $|d_i|$ get average ranks, $W^+ = \\sum_{d_i > 0} r_i$. Under $H_0$ every
  sign pattern is equally likely; the distribution of $W^+$ over the $2^n$ patterns is counted exactly by
  dynamic programming over doubled (hence integer) ranks, ties included. The two-sided p-value is
  $\\min(1, 2 \\min(P(W^+ \\le w), P(W^+ \\ge w)))$. The brute-force enumeration of all $2^n$ sign patterns
  is :func:`f3ocus.demo.reference.wilcoxon_signed_rank_bruteforce`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import stats as sps

__all__ = ["Interval", "PairedDifference", "mean_ci", "paired_difference", "wilcoxon_signed_rank"]


@dataclasses.dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval.

    Attributes:
        mean: The sample mean.
        low: Lower end of the interval.
        high: Upper end.
        level: Confidence level, e.g. 0.95.
        n: Number of values.
        method: How the interval was formed (``"t"``: Student t on the sample standard deviation).
    """

    mean: float
    low: float
    high: float
    level: float
    n: int
    method: str = "t"

    @property
    def half_width(self) -> float:
        """$(high - low) / 2$ (``nan`` for one value)."""
        return (self.high - self.low) / 2

    def excludes_zero(self) -> bool:
        """Whether 0 lies outside ``[low, high]``."""
        return bool(self.low > 0 or self.high < 0)

    def to_dict(self) -> dict:
        """JSON-ready fields, with the half width."""
        return {**dataclasses.asdict(self), "half_width": self.half_width}


@dataclasses.dataclass(frozen=True)
class PairedDifference:
    """The paired comparison of two strategies over the same seeds, $d_i = a_i - b_i$.

    Attributes:
        ci: Paired t interval of the mean difference.
        p_wilcoxon: Two-sided exact Wilcoxon signed-rank p-value (1.0 when every $d_i$ is 0).
        wins: Seeds with $d_i > 0$.
        losses: Seeds with $d_i < 0$.
        ties: Seeds with $d_i = 0$.
    """

    ci: Interval
    p_wilcoxon: float
    wins: int
    losses: int
    ties: int

    def verdict(self) -> str:
        """In words: whether the interval excludes zero, and in which direction."""
        if self.ci.n < 2:
            return "one seed: no interval"
        if self.ci.low > 0:
            return "positive (the CI excludes 0)"
        if self.ci.high < 0:
            return "negative (the CI excludes 0)"
        return "not distinguishable from 0 (the CI contains 0)"

    def to_dict(self) -> dict:
        """JSON-ready fields."""
        return {
            **self.ci.to_dict(),
            "p_wilcoxon": self.p_wilcoxon,
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "verdict": self.verdict(),
        }


def _check_values(argname: str, values) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{argname} must be a non-empty 1-d sequence of numbers, got shape {x.shape}.")
    if not np.isfinite(x).all():
        raise ValueError(f"{argname} must be finite, got {x.tolist()}; drop the failed seeds first.")
    return x


def _check_level(level: float) -> float:
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), e.g. 0.95, got {level!r}.")
    return float(level)


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
    """Student-t confidence interval of the mean (see the module docs).

    Args:
        values: One value per seed.
        level: Confidence level.

    Returns:
        An :class:`Interval`; with one value its ends are ``nan``.

    Example:
        >>> ci = mean_ci([1.0, 2.0, 3.0])
        >>> round(ci.mean, 6), round(ci.half_width, 4)   # t_{2, 0.975} * 1 / sqrt(3)
        (2.0, 2.4841)
    """
    x = _check_values("values", values)
    level = _check_level(level)
    n, mean = x.size, float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, level, n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
    return Interval(mean, mean - half, mean + half, level, n)


def wilcoxon_signed_rank(d: Sequence[float]) -> float:
    """Two-sided exact p-value of the Wilcoxon signed-rank test on differences ``d`` (module docs).

    Returns:
        The p-value; 1.0 when every difference is 0.
    """
    d = _check_values("d", d)
    d = d[d != 0]
    n = d.size
    if n == 0:
        return 1.0
    ranks2 = np.rint(2 * sps.rankdata(np.abs(d))).astype(int)  # doubled average ranks are integers
    w = int(ranks2[d > 0].sum())
    counts = np.zeros(int(ranks2.sum()) + 1)
    counts[0] = 1.0
    for r in ranks2:  # each rank enters W+ or not, with probability 1/2
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[:-r]
        counts = counts + shifted
    probs = counts / counts.sum()
    low, high = probs[: w + 1].sum(), probs[w:].sum()
    return float(min(1.0, 2 * min(low, high)))


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> PairedDifference:
    """Paired comparison of ``a`` and ``b`` (aligned by seed): t interval of $a - b$ and Wilcoxon p-value.

    Raises:
        ValueError: the lengths differ or a value is not finite.
    """
    a = _check_values("a", a)
    b = _check_values("b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must be aligned by seed, got {a.size} and {b.size} values.")
    d = a - b
    return PairedDifference(
        ci=mean_ci(d, level),
        p_wilcoxon=wilcoxon_signed_rank(d),
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
        ties=int((d == 0).sum()),
    )
