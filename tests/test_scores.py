"""LayerScores: mapping semantics, normalization invariants (hypothesis), JSON round trip, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from f3ocus import LayerScores

names = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=12, unique=True)
# zero or normal magnitudes: scaling a subnormal by c < 1 would underflow and change its ratios
nonneg = st.one_of(st.just(0.0), st.floats(min_value=1e-100, max_value=1e12))


@st.composite
def scores(draw, values=nonneg):
    keys = draw(names)
    vals = draw(st.lists(values, min_size=len(keys), max_size=len(keys)))
    counts = draw(st.lists(st.integers(0, 10**9), min_size=len(keys), max_size=len(keys)))
    return LayerScores(dict(zip(keys, vals, strict=True)), dict(zip(keys, counts, strict=True)), {"method": "x"})


@given(scores())
def test_sum_normalization_sums_to_one_and_keeps_ratios(s):
    n = s.normalized("sum")
    assert list(n) == list(s)
    assert math.fsum(n.values()) == pytest.approx(1.0, rel=1e-12)
    total = math.fsum(s.values())
    if total > 0:
        for k in s:
            assert n[k] == pytest.approx(s[k] / total, rel=1e-12, abs=1e-300)
    else:
        assert set(n.values()) == {1.0 / len(s)}
    assert n.num_params == s.num_params and n.stats["normalized"] == "sum"


@given(scores())
def test_max_normalization_top_is_one(s):
    n = s.normalized("max")
    assert max(n.values()) == 1.0
    assert all(0.0 <= v <= 1.0 for v in n.values())


@given(scores(values=st.floats(-1e6, 1e6, allow_nan=False)))
def test_rank_normalization_depends_only_on_order(s):
    n = s.normalized("rank")
    keys = list(s)
    for a in keys:
        for b in keys:
            assert (s[a] < s[b]) == (n[a] < n[b])
            assert (s[a] == s[b]) == (n[a] == n[b])
    assert max(n.values()) <= 1.0
    assert math.fsum(n.values()) == pytest.approx((len(s) + 1) / 2)  # ranks 1..L sum to L(L+1)/2


@given(scores(), st.floats(min_value=1e-3, max_value=1e3))
def test_normalizations_are_scale_invariant(s, c):
    scaled = LayerScores({k: c * v for k, v in s.items()})
    for kind in ("sum", "max", "rank"):
        a, b = s.normalized(kind).to_numpy(), scaled.normalized(kind).to_numpy()
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-300)


@given(scores(values=st.floats(allow_nan=False, allow_infinity=False)))
def test_json_round_trip_is_exact(s):
    back = LayerScores.from_json(s.to_json())
    assert back == s
    assert list(back) == list(s)
    assert [v for v in back.values()] == [v for v in s.values()]
    assert LayerScores.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def test_none_is_identity_and_mapping_equality():
    s = LayerScores({"b": 2.0, "a": 1.0})
    assert s.normalized("none") == {"b": 2.0, "a": 1.0}
    assert list(s) == ["b", "a"] and s.layers == ["b", "a"] and len(s) == 2
    assert s.num_params is None
    assert s != LayerScores({"b": 2.0, "a": 1.0}, stats={"method": "dense"})


def test_rank_ties_share_their_average_rank():
    s = LayerScores({"a": 1.0, "b": 5.0, "c": 1.0, "d": 3.0})
    assert dict(s.normalized("rank")) == {"a": 1.5 / 4, "b": 1.0, "c": 1.5 / 4, "d": 3 / 4}


def test_immutable_and_copies():
    s = LayerScores({"a": 1.0}, {"a": 3}, {"extra": {"x": 1}})
    with pytest.raises(AttributeError, match="immutable"):
        s.foo = 1
    with pytest.raises(TypeError):
        s["a"] = 2.0
    s.stats["extra"]["x"] = 2
    s.num_params["a"] = 7
    assert s.stats == {"extra": {"x": 1}} and s.num_params == {"a": 3}


def test_repr_shows_scores_shares_and_counts():
    s = LayerScores({"embed": 3.0, "blocks.0": 1.0}, {"embed": 1200, "blocks.0": 5}, {"method": "dense", "kernel": "output"})
    text = repr(s)
    assert text.splitlines()[0] == "LayerScores(2 layers, method='dense', kernel='output')"
    assert "75.0%" in text and "1,200" in text and "blocks.0" in text
    assert "<table>" in s._repr_html_()


# -- errors -------------------------------------------------------------------------------------------
def test_errors():
    with pytest.raises(TypeError, match=r"scores must be a mapping layer name -> float"):
        LayerScores([1.0, 2.0])
    with pytest.raises(ValueError, match=r"scores\['a'\] must be a finite real number, got nan"):
        LayerScores({"a": float("nan")})
    with pytest.raises(TypeError, match=r"scores keys must be str layer names"):
        LayerScores({0: 1.0})
    with pytest.raises(ValueError, match=r"num_params must have the same layer names as scores; missing \['b'\]"):
        LayerScores({"a": 1.0, "b": 2.0}, {"a": 1})
    with pytest.raises(ValueError, match=r"num_params\['a'\] must be a non-negative int, got -3"):
        LayerScores({"a": 1.0}, {"a": -3})
    with pytest.raises(ValueError, match=r"stats must be JSON-serializable"):
        LayerScores({"a": 1.0}, stats={"t": object()})
    with pytest.raises(ValueError, match=r"kind='l1' is not a valid choice.*'sum', 'max', 'rank', 'none'"):
        LayerScores({"a": 1.0}).normalized("l1")
    with pytest.raises(ValueError, match=r"normalized\('sum'\) needs non-negative scores.*use 'rank' or 'none'"):
        LayerScores({"a": -1.0, "b": 2.0}).normalized("sum")
    with pytest.raises(ValueError, match=r"data is not a LayerScores dict"):
        LayerScores.from_dict({"scores": {"a": 1.0}})
