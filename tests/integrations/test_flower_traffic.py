"""Bytes on the wire (exact message sizes, f3ocus against full FedAvg) and saving/resuming a run."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("flwr")
pytestmark = pytest.mark.flower

from flower_fixtures import NODES, InProcessGrid, initial_arrays, make_client_app  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvg  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from f3ocus import resolve_layers  # noqa: E402
from f3ocus.integrations.flower import F3ocusStrategy, RoundRecord  # noqa: E402
from f3ocus.integrations.flower.traffic import message_nbytes, message_nbytes_reference  # noqa: E402

names = st.text("abcxyz.-_é", min_size=0, max_size=12)
shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)
dtypes = st.sampled_from([np.float32, np.float64, np.int64, np.float16])
scalars = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=False), st.text(max_size=5), st.booleans()
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    arrays=st.dictionaries(names, st.tuples(shapes, dtypes), max_size=4),
    metrics=st.dictionaries(names, st.floats(allow_nan=False), max_size=3),
    config=st.dictionaries(names, scalars, max_size=3),
    node=st.integers(0, 2**63 - 1),
    error=st.booleans(),
)
def test_message_nbytes_is_the_serialized_size(identity, arrays, metrics, config, node, error):
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.ones(s, dtype=d)) for k, (s, d) in arrays.items()}),
            "metrics": MetricRecord(metrics),
            "config": ConfigRecord(config),
        }
    )
    msg = Message(content, dst_node_id=node, message_type="train", group_id="7")
    if error:
        msg = Message(Error(code=3, reason="lost"), reply_to=msg)
    assert message_nbytes(msg) == message_nbytes_reference(msg)


@pytest.mark.parametrize("first_round", ["fallback", "query"])
def test_f3ocus_moves_fewer_bytes_than_fedavg(identity, first_round):
    model, arrays = initial_arrays()
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=1.0, min_available_nodes=3),
        resolve_layers(model),
        budget=1,
        first_round=first_round,
    )
    grid = InProcessGrid(make_client_app(), NODES)
    result = strategy.start(grid=grid, initial_arrays=arrays, num_rounds=3)
    # the records count exactly the messages that went over the grid
    for rnd, record in strategy.history.items():
        sent = [m for m, r in zip(grid.sent, grid.sent_rounds, strict=True) if r == rnd]
        assert record.stats["bytes_down"] == sum(message_nbytes(m) for m in sent)
        assert set(record.bytes_up) == set(NODES) and RoundRecord.from_json(record.to_json()) == record
    ratios = [strategy.history[r].bytes_ratio for r in (1, 2, 3)]
    assert all(r < 1 for r in ratios[1:]) and sum(h.total_bytes for h in strategy.history.values()) < sum(
        h.fedavg_total_bytes for h in strategy.history.values()
    )
    if first_round == "fallback":
        assert ratios[0] < 1
    m = result.train_metrics_clientapp[2]
    assert m["f3ocus-bytes-up"] < m["f3ocus-fedavg-bytes-up"]
    assert sum(m[f"f3ocus-bytes-up:{n}"] for n in NODES) == m["f3ocus-bytes-up"]
    e = result.evaluate_metrics_clientapp[2]
    assert (e["f3ocus-round-bytes"], e["f3ocus-round-fedavg-bytes"]) == (
        strategy.history[2].total_bytes,
        strategy.history[2].fedavg_total_bytes,
    )


def test_save_dir_and_resume_continue_the_same_run(identity, tmp_path):
    model, arrays = initial_arrays()
    lmap = resolve_layers(model)

    def make(save_dir=None):
        inner = FedAdam(eta=0.05, fraction_evaluate=0.0, min_available_nodes=3)
        return F3ocusStrategy(inner, lmap, budget=1, tradeoff=1.0, save_dir=save_dir, reselect_every=2)

    straight = make()
    full = straight.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=arrays, num_rounds=4)
    first = make(tmp_path / "run")
    first.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=arrays, num_rounds=2)
    assert (tmp_path / "run" / "arrays.npz").exists() and (tmp_path / "run" / "state.json").exists()
    second = make(tmp_path / "run")
    saved = second.resume()
    assert second.plans == {r: straight.plans[r] for r in (1, 2)}
    resumed = second.start(grid=InProcessGrid(make_client_app(), NODES), initial_arrays=saved, num_rounds=2)
    assert second.plans == straight.plans and sorted(second.history) == [1, 2, 3, 4]
    for k in full.arrays:
        np.testing.assert_array_equal(resumed.arrays[k].numpy(), full.arrays[k].numpy())
    assert make(tmp_path / "empty").resume() is None
