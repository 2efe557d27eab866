"""Confidence intervals, paired differences and the Wilcoxon signed-rank test of the study."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from f3ocus.demo.reference import wilcoxon_signed_rank_bruteforce
from f3ocus.demo.stats import mean_ci, paired_difference, wilcoxon_signed_rank

values = st.lists(st.floats(-1, 1, allow_nan=False).map(lambda x: round(x, 3)), min_size=2, max_size=12)


@settings(max_examples=60, deadline=None)
@given(x=values, level=st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_mean_ci_is_scipys_t_interval(x, level):
    ci = mean_ci(x, level)
    assert ci.n == len(x) and ci.mean == pytest.approx(np.mean(x))
    if np.std(x) == 0:
        assert ci.low == pytest.approx(ci.mean) and ci.high == pytest.approx(ci.mean)
        return
    low, high = sps.t.interval(level, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert ci.low == pytest.approx(low, abs=1e-12) and ci.high == pytest.approx(high, abs=1e-12)


def test_mean_ci_closed_form_and_one_value():
    ci = mean_ci([1.0, 2.0, 3.0])
    assert ci.half_width == pytest.approx(4.302652729911275 / math.sqrt(3))  # t_{2, 0.975} * s / sqrt(n)
    one = mean_ci([0.7])
    assert one.mean == 0.7 and math.isnan(one.low) and math.isnan(one.half_width)


def test_t_interval_covers_the_mean_at_its_level():
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        ci = mean_ci(rng.normal(3.0, 2.0, size=10))
        hits += ci.low <= 3.0 <= ci.high
    assert 0.935 <= hits / 2000 <= 0.965


@settings(max_examples=40, deadline=None)
@given(a=values, shift=st.floats(-0.5, 0.5), seed=st.integers(0, 1000))
def test_paired_difference_is_the_t_interval_of_the_differences(a, shift, seed):
    rng = np.random.default_rng(seed)
    b = (np.array(a) - shift + rng.normal(0, 0.1, size=len(a))).round(3)
    p = paired_difference(a, b)
    d = np.array(a) - b
    assert p.ci.mean == pytest.approx(d.mean())
    assert p.wins + p.losses + p.ties == len(a) and p.wins == int((d > 0).sum())
    if np.std(d) > 0:
        res = sps.ttest_rel(a, b)
        low, high = res.confidence_interval(0.95)
        assert p.ci.low == pytest.approx(low, abs=1e-9) and p.ci.high == pytest.approx(high, abs=1e-9)
    assert p.p_wilcoxon == pytest.approx(wilcoxon_signed_rank(d))


@settings(max_examples=60, deadline=None)
@given(d=st.lists(st.integers(-6, 6), min_size=1, max_size=12))
def test_wilcoxon_matches_the_bruteforce_with_ties_and_zeros(d):
    assert wilcoxon_signed_rank(d) == pytest.approx(wilcoxon_signed_rank_bruteforce(d), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 25))
def test_wilcoxon_matches_scipy_exact_without_ties(seed, n):
    d = np.random.default_rng(seed).normal(0.3, 1.0, size=n)
    expected = sps.wilcoxon(d, method="exact").pvalue
    assert wilcoxon_signed_rank(d) == pytest.approx(expected, rel=1e-9)


def test_wilcoxon_smallest_p_of_ten_seeds_and_all_zero():
    assert wilcoxon_signed_rank(np.arange(1, 11)) == pytest.approx(2 / 2**10)
    assert wilcoxon_signed_rank([0.0, 0.0]) == 1.0


def test_verdicts():
    assert "positive" in paired_difference([2, 3, 4, 5], [0, 0, 1, 1]).verdict()
    assert "negative" in paired_difference([0, 0, 1, 1], [2, 3, 4, 5]).verdict()
    assert "not distinguishable" in paired_difference([1, -1, 2, -2], [0, 0, 0, 0]).verdict()
    assert paired_difference([1.0], [0.0]).verdict() == "one seed: no interval"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: mean_ci([]), r"values must be a non-empty 1-d sequence of numbers, got shape \(0,\)"),
        (lambda: mean_ci([1.0, float("nan")]), r"values must be finite, got \[1.0, nan\]; drop the failed"),
        (lambda: mean_ci([1.0, 2.0], level=95), r"level must be a number in \(0, 1\), e.g. 0.95, got 95"),
        (
            lambda: paired_difference([1, 2], [1, 2, 3]),
            r"a and b must be aligned by seed, got 2 and 3 values",
        ),
        (lambda: wilcoxon_signed_rank([[1, 2]]), r"d must be a non-empty 1-d sequence"),
    ],
)
def test_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_table_states_the_learning_rate_schedule_of_the_task():
    from f3ocus.demo.report import markdown_table

    task = {"lr": 3e-5, "head_lr": 3e-4, "warmup_lr": 1e-3, "lr_schedule": "cosine", "rounds": 5}
    line = markdown_table({}, task).strip().splitlines()[-1]
    assert "lr 3e-05 (encoder) and 0.0003 (head), cosine learning-rate schedule (warm-up peak lr 0.001)" in line
    # Tasks written before the schedule existed ran at constant rates.
    old = {k: v for k, v in task.items() if k != "lr_schedule"}
    assert "constant learning-rate schedule" in markdown_table({}, old)


@pytest.mark.parametrize(
    ("p", "text"), [(0.25, "0.250"), (0.0005, "0.001"), (0.000499, "< 0.001"), (1.9e-9, "< 0.001"), (1.0, "1.000")]
)
def test_p_values_below_a_thousandth_are_not_printed_as_zero(p, text):
    from f3ocus.demo.report import format_p

    assert format_p(p) == text
    assert format_p(float("nan")) == "n/a"


def test_every_strategy_keeps_one_distinct_colour_across_the_panels():
    pytest.importorskip("matplotlib")
    from f3ocus.demo.report import strategy_colors

    many = {f"s{i}": {} for i in range(12)}
    summary = {"0.5": {"strategies": many}, "1": {"strategies": {"s3": {}, "s0": {}}}}
    colors = strategy_colors(summary)
    assert list(colors) == list(many)  # first-seen order, each strategy once
    assert len(set(colors.values())) == 12  # tab20 beyond ten strategies: no colour reused
    few = strategy_colors({"0.5": {"strategies": {"a": {}, "b": {}}}, "1": {"strategies": {"b": {}, "c": {}}}})
    assert few["b"] != few["a"] != few["c"] and len(few) == 3
