"""communication_cost against hand counts."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from fl_models import BlockNet, block_map

from f3ocus.fl import CommunicationCost, communication_cost

# BlockNet(width=4, depth=3, out=2): each block 4*4 + 4 = 20 parameters, head 4*2 + 2 = 10; total 70.


def test_hand_counts_float32():
    model = BlockNet()
    cost = communication_cost(
        model, [["blocks.0", "head"], [], ["blocks.1", "blocks.2"]], layer_map=block_map(model)
    )
    assert cost.params_up == (30, 0, 40)
    assert cost.params_down == (70, 70, 70)
    assert cost.bytes_up == (120, 0, 160)
    assert cost.full_params == 70 and cost.full_bytes == 280
    assert cost.score_bytes_up == 8 * 4
    assert cost.up_fraction == pytest.approx(70 / 210)
    assert cost.total_fraction == pytest.approx((70 + 210) / 420)


def test_assigned_download_bytes_per_param_and_mixed_dtypes():
    model = BlockNet().to(torch.float64)
    model.head.to(torch.float16)
    lmap = block_map(model)
    cost = communication_cost(model, [["blocks.0", "head"]], layer_map=lmap, download="assigned")
    assert cost.bytes_up == (20 * 8 + 10 * 2,) and cost.bytes_down == cost.bytes_up
    assert cost.full_bytes == 60 * 8 + 10 * 2
    cost2 = communication_cost(model, [["head"]], layer_map=lmap, bytes_per_param=1)
    assert cost2.bytes_up == (10,) and cost2.full_bytes == 70


def test_accepts_an_assignment_and_roundtrips_json():
    model = BlockNet()
    plan = types.SimpleNamespace(layers=[["head"], ["blocks.0"]], mask=np.zeros((2, 4), bool))
    cost = communication_cost(model, plan, layer_map=block_map(model))
    assert cost.params_up == (10, 20)
    assert CommunicationCost.from_json(cost.to_json()) == cost


@pytest.mark.parametrize(
    ("plan", "kwargs", "error", "match"),
    [
        ("head", {}, TypeError, "layers_per_client must be a LayerAssignment or a list"),
        ([["head"], "head"], {}, TypeError, r"layers_per_client\[1\] must be a list of layer names"),
        ([["nope"]], {}, ValueError, r"layers_per_client\[0\] contains 'nope'"),
        ([["head"]], {"bytes_per_param": 0}, ValueError, r"bytes_per_param must lie in \[1, inf\]"),
        ([["head"]], {"bytes_per_param": 2.0}, TypeError, "bytes_per_param must be an int"),
        ([["head"]], {"download": "some"}, ValueError, "download='some' is not a valid choice"),
    ],
)
def test_errors(plan, kwargs, error, match):
    model = BlockNet()
    with pytest.raises(error, match=match):
        communication_cost(model, plan, layer_map=block_map(model), **kwargs)
