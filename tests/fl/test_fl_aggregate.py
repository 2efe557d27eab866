"""masked_fedavg against a hand-computed case, the dense reference, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from f3ocus.fl import masked_fedavg
from f3ocus.fl.reference import masked_fedavg_reference


def test_hand_computed_unequal_counts_and_untrained_layer():
    g = {"a": torch.tensor([0.0, 0.0]), "b": torch.tensor([5.0]), "c": torch.tensor([7.0])}
    c0 = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([1.0])}
    c1 = {"a": torch.tensor([4.0, 8.0])}
    out = masked_fedavg(g, [c0, c1], [1, 3])
    # a: (1*[1,2] + 3*[4,8]) / 4 ; b: only client 0 ; c: nobody -> kept
    torch.testing.assert_close(out["a"], torch.tensor([3.25, 6.5]))
    torch.testing.assert_close(out["b"], torch.tensor([1.0]))
    torch.testing.assert_close(out["c"], torch.tensor([7.0]))
    assert list(out) == ["a", "b", "c"]


def test_outputs_do_not_alias_inputs_and_keep_dtype():
    g = {"a": torch.zeros(2, dtype=torch.float16), "n": torch.tensor(3)}
    out = masked_fedavg(
        g, [{"a": torch.ones(2, dtype=torch.float32), "n": torch.tensor(4)}, {"n": torch.tensor(7)}], [1, 1]
    )
    assert out["a"].dtype == torch.float16 and out["n"].dtype == g["n"].dtype
    assert out["n"].item() == 6  # round(5.5) to even is 6
    out["a"].add_(1)
    assert g["a"].sum() == 0


def test_no_clients_keeps_everything():
    g = {"a": torch.arange(3.0)}
    out = masked_fedavg(g, [], [])
    torch.testing.assert_close(out["a"], g["a"])
    assert out["a"] is not g["a"]


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (([1], [], []), TypeError, "global_state must be a mapping"),
        (({"a": torch.zeros(1)}, {"a": torch.zeros(1)}, [1]), TypeError, "client_states must be a list"),
        (({"a": torch.zeros(1)}, [{"a": torch.zeros(1)}], 5), TypeError, "num_samples must be a list"),
        (({"a": torch.zeros(1)}, [{"a": torch.zeros(1)}], [1, 2]), ValueError, "num_samples has 2 entries"),
        (
            ({"a": torch.zeros(1)}, [{"a": torch.zeros(1)}], ["3"]),
            TypeError,
            r"num_samples\[0\] must be a number",
        ),
        (
            ({"a": torch.zeros(1)}, [{"a": torch.zeros(1)}], [0]),
            ValueError,
            r"num_samples\[0\] must be a finite number > 0",
        ),
        (({"a": torch.zeros(1)}, [{"a": torch.zeros(1)}], [float("nan")]), ValueError, "finite number > 0"),
        (({"a": torch.zeros(1)}, [[1.0]], [1]), TypeError, r"client_states\[0\] must be a mapping"),
        (
            ({"a": torch.zeros(1)}, [{"b": torch.zeros(1)}], [1]),
            ValueError,
            "contains 'b', which global_state lacks",
        ),
        (
            ({"a": torch.zeros(1)}, [{"a": 1.0}], [1]),
            TypeError,
            r"client_states\[0\]\['a'\] must be a torch.Tensor",
        ),
        (
            ({"a": torch.zeros(1)}, [{"a": torch.zeros(2)}], [1]),
            ValueError,
            r"has shape \(2,\) but global_state has \(1,\)",
        ),
    ],
)
def test_errors(args, error, match):
    with pytest.raises(error, match=match):
        masked_fedavg(*args)


@st.composite
def federations(draw):
    """A global state of 1-4 float64 tensors and 0-5 clients, each sending a random subset."""
    num_params = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))) for _ in range(num_params)]
    num_clients = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    names = [f"p{i}" for i in range(num_params)]
    global_state = {
        n: torch.randn(s, generator=g, dtype=torch.float64) for n, s in zip(names, shapes, strict=True)
    }
    masks = [
        draw(st.lists(st.booleans(), min_size=num_params, max_size=num_params)) for _ in range(num_clients)
    ]
    clients = [
        {
            n: torch.randn(s, generator=g, dtype=torch.float64)
            for n, s, m in zip(names, shapes, mask, strict=True)
            if m
        }
        for mask in masks
    ]
    counts = draw(st.lists(st.integers(1, 1000), min_size=num_clients, max_size=num_clients))
    return global_state, clients, counts


@settings(max_examples=60, deadline=None)
@given(federations())
def test_agrees_with_dense_reference_float64(fed):
    global_state, clients, counts = fed
    out = masked_fedavg(global_state, clients, counts)
    ref = masked_fedavg_reference(global_state, clients, counts)
    for name in global_state:
        np.testing.assert_allclose(out[name].numpy(), ref[name], rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(federations(), st.randoms(use_true_random=False))
def test_permutation_invariant(fed, rnd):
    global_state, clients, counts = fed
    order = list(range(len(clients)))
    rnd.shuffle(order)
    a = masked_fedavg(global_state, clients, counts)
    b = masked_fedavg(global_state, [clients[i] for i in order], [counts[i] for i in order])
    for name in global_state:
        torch.testing.assert_close(a[name], b[name], rtol=1e-12, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(federations(), st.floats(-10, 10), st.floats(0.01, 100))
def test_weights_sum_to_one_and_scale_free(fed, shift, scale):
    """Shifting every client value by s shifts the trained outputs by s (weights sum to 1); scaling
    all counts by one factor changes nothing; each output lies between the clients' extremes."""
    global_state, clients, counts = fed
    base = masked_fedavg(global_state, clients, counts)
    shifted = masked_fedavg(global_state, [{n: v + shift for n, v in c.items()} for c in clients], counts)
    rescaled = masked_fedavg(global_state, clients, [n * scale for n in counts])
    for name in global_state:
        sent = [c[name] for c in clients if name in c]
        expected = base[name] + shift if sent else global_state[name]
        torch.testing.assert_close(shifted[name], expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(rescaled[name], base[name], rtol=1e-9, atol=1e-9)
        if sent:
            stack = torch.stack(sent)
            assert torch.all(base[name] >= stack.min(0).values - 1e-12)
            assert torch.all(base[name] <= stack.max(0).values + 1e-12)


@settings(max_examples=40, deadline=None)
@given(federations())
def test_idempotent_when_all_clients_send_the_same_state(fed):
    global_state, clients, counts = fed
    if not clients:
        return
    same = clients[0]
    out = masked_fedavg(global_state, [same] * len(clients), counts)
    for name in global_state:
        torch.testing.assert_close(out[name], same.get(name, global_state[name]), rtol=1e-12, atol=1e-12)
    again = masked_fedavg(out, [same] * len(clients), counts)
    for name in global_state:
        torch.testing.assert_close(again[name], out[name], rtol=1e-12, atol=1e-12)
