"""No client can crash the server: random malformed replies, each round checked against a reference.

hypothesis draws, per node, what its train reply does wrong (arrays, weight, scores, budget, metrics)
and its evaluate reply. The ServerApp-side calls must never raise; layers no valid sender trained stay
bitwise equal; trained layers equal the weighted mean of the valid senders
(:func:`f3ocus.fl.reference.masked_fedavg_reference`); every bad reply is named in the round record.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
hypothesis = pytest.importorskip("hypothesis")
pytestmark = pytest.mark.flower

from flower_fixtures import InProcessGrid, Net, make_client_app  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from f3ocus import resolve_layers  # noqa: E402
from f3ocus.fl.reference import masked_fedavg_reference  # noqa: E402
from f3ocus.integrations.flower import SCORES_KEY, F3ocusStrategy, pack_scores  # noqa: E402

# what a train reply's arrays / weight do: (name, valid?)
ARRAYS = [
    ("ok", True),
    ("ok+other-layers", True),  # sends its whole model: the other layers are ignored
    ("error-reply", False),
    ("no-arrayrecord", False),
    ("two-arrayrecords", False),
    ("missing-key", False),
    ("unknown-key", False),
    ("wrong-shape", False),
    ("nan", False),
    ("inf", False),
    ("int-dtype", False),
    ("bytes-garbage", False),
]
WEIGHTS = [(10.0, True), (3, True), (1e300, True), (float("nan"), False), (float("inf"), False), (0, False)]
WEIGHTS += [(-5.0, False), ("missing", False), ([1.0, 2.0], False)]
SCORES = ["ok", "none", "nan", "inf", "negative", "list", "missing-layer", "extra-layer", "zeros", "config"]
BUDGETS = [None, 2, float("nan"), float("inf"), 2.5, 0, -3, 1e300, [1.0]]
METRICS = ["plain", "nan-metric", "list-metric", "other-keys"]


def _content(kind, weight, score, budget, metric, keys, glob, layers, rng):
    arrays = {k: rng.standard_normal(glob[k].shape).astype(np.float32) for k in keys}
    if kind == "ok+other-layers":
        arrays.update({k: v for k, v in glob.items() if k not in arrays})
    elif kind == "missing-key":
        arrays.pop(keys[0])
    elif kind == "unknown-key":
        arrays["not.a.parameter"] = np.zeros(2, np.float32)
    elif kind == "wrong-shape":
        arrays[keys[0]] = np.zeros(7, np.float32)
    elif kind in ("nan", "inf"):
        arrays[keys[-1]].flat[0] = np.nan if kind == "nan" else np.inf
    elif kind == "int-dtype":
        arrays[keys[0]] = arrays[keys[0]].astype(np.int64)
    record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
    if kind == "bytes-garbage":
        a = record[keys[0]]
        record[keys[0]] = Array(dtype=a.dtype, shape=a.shape, stype=a.stype, data=b"\x00garbage")
    metrics = {"loss": 0.5}
    if weight != "missing":
        metrics["num-examples"] = weight
    if metric == "nan-metric":
        metrics["loss"] = float("nan")
    elif metric == "list-metric":
        metrics["curve"] = [0.1, 0.2]
    elif metric == "other-keys":
        metrics = {**metrics, "extra": 1.0}
        metrics.pop("loss")
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if kind != "no-arrayrecord":
        content["arrays"] = record
    if kind == "two-arrayrecords":
        content["more"] = ArrayRecord({keys[0]: Array(arrays[keys[0]])})
        content["arrays2"] = content.pop("arrays")
    if score != "none":
        values = {name: float(rng.uniform(0.1, 2.0)) for name in layers}
        if score == "config":
            content[SCORES_KEY] = ConfigRecord({"f3ocus-score:" + n: v for n, v in values.items()})
        else:
            rec = pack_scores(values)
            first = "f3ocus-score:" + layers[0]
            if score in ("nan", "inf", "negative", "list"):
                rec[first] = {"nan": float("nan"), "inf": float("inf"), "negative": -1.0, "list": [1.0, 2.0]}[
                    score
                ]
            elif score == "missing-layer":
                del rec[first]
            elif score == "extra-layer":
                rec["f3ocus-score:ghost"] = 1.0
            elif score == "zeros":
                rec = pack_scores(dict.fromkeys(layers, 0.0))
            if budget is not None:
                rec["f3ocus-budget"] = budget
            content[SCORES_KEY] = rec
    return content


node_case = st.tuples(
    st.sampled_from(ARRAYS),
    st.sampled_from(WEIGHTS),
    st.sampled_from(SCORES),
    st.sampled_from(BUDGETS),
    st.sampled_from(METRICS),
    st.sampled_from(["ok", "error", "no-weight", "nan-weight", "other-keys", "two-metrics"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cases=st.lists(node_case, min_size=1, max_size=5), seed=st.integers(0, 2**16))
def test_malformed_replies_never_crash_and_valid_ones_are_averaged(identity, cases, seed):
    rng = np.random.default_rng(seed)
    model = Net()
    lmap = resolve_layers(model)
    layers = list(lmap)
    glob = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    start = ArrayRecord({k: Array(v) for k, v in glob.items()})
    nodes = [100 + i for i in range(len(cases))]
    strategy = F3ocusStrategy(
        FedAvg(fraction_evaluate=1.0, min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1),
        lmap,
        budget=2,
        first_round="fallback",
        score_with="train",
    )
    grid = InProcessGrid(make_client_app(), nodes)
    out = list(strategy.configure_train(1, start, ConfigRecord(), grid))
    by_node = {m.metadata.dst_node_id: m for m in out}
    replies, valid = [], {}
    for i, (node, (kind, weight, score, budget, metric, _)) in enumerate(zip(nodes, cases, strict=True)):
        msg = by_node[node]
        msg.metadata.__dict__["_message_id"] = f"m{i}"
        keys = [k for layer in strategy.plans[1][node] for k in lmap[layer]]
        if kind[0] == "error-reply":
            reply = Message(Error(code=0, reason="client crashed"), reply_to=msg)
            reply.metadata.__dict__["_src_node_id"] = 1
        else:
            content = _content(kind[0], weight[0], score, budget, metric, keys, glob, layers, rng)
            reply = Message(content, reply_to=msg)
            if kind[1] and weight[1]:
                valid[node] = (
                    float(weight[0]),
                    {k: torch.from_numpy(content["arrays"][k].numpy().copy()) for k in keys},
                )
        replies.append(reply)
    new, metrics = strategy.aggregate_train(1, replies)

    # the record names every bad reply, and only those
    assert set(strategy._round["failed"]) == set(nodes) - set(valid)
    if not valid:
        assert new is None
    else:
        result = {k: new[k].numpy() for k in glob}
        senders = [s for _, s in valid.values()]
        reference = masked_fedavg_reference(
            {k: torch.from_numpy(v) for k, v in glob.items()}, senders, [w for w, _ in valid.values()]
        )
        for k, g in glob.items():
            if any(k in s for s in senders):
                np.testing.assert_allclose(result[k], reference[k], rtol=1e-5, atol=1e-6)
            else:
                assert result[k].tobytes() == g.tobytes()  # bitwise
        assert metrics["f3ocus-clients"] == len(valid)

    # evaluate replies just as malformed, then the next (selection) round: still no exception
    arrays = new if new is not None else start
    evals = list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid))
    ereplies = []
    for i, m in enumerate(evals):
        m.metadata.__dict__["_message_id"] = f"e{i}"
        kind = cases[nodes.index(m.metadata.dst_node_id)][5]
        if kind == "error":
            ereplies.append(Message(Error(code=0, reason="x"), reply_to=m))
            continue
        rec = {"ok": {"num-examples": 5, "acc": 0.5}, "no-weight": {"acc": 0.5}}
        rec["nan-weight"] = {"num-examples": float("nan")}
        rec["other-keys"] = {"num-examples": 5, "other": 1.0}
        content = RecordDict({"metrics": MetricRecord(rec.get(kind, {"num-examples": 5}))})
        if kind == "two-metrics":
            content["more"] = MetricRecord({"num-examples": 1.0, "z": 2.0})
        ereplies.append(Message(content, reply_to=m))
    strategy.aggregate_evaluate(1, ereplies)
    assert strategy.history[1].failed.keys() >= set(nodes) - set(valid)
    nxt = list(strategy.configure_train(2, arrays, ConfigRecord(), grid))
    assert {m.metadata.dst_node_id for m in nxt} == set(nodes)
    for node in nodes:
        assert 1 <= len(strategy.plans[2][node]) <= len(layers)


class _QueryGrid(InProcessGrid):
    """Answers the round-1 score query with the drawn replies (None: no reply)."""

    def __init__(self, nodes, make_reply):
        super().__init__(make_client_app(), nodes)
        self.make_reply = make_reply

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for i, m in enumerate(messages):
            m.metadata.__dict__["_message_id"] = f"q{i}"
            reply = self.make_reply(m)
            if reply is not None:
                replies.append(reply)
        return replies


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cases=st.lists(
        st.tuples(st.sampled_from([*SCORES, "error", "silent"]), st.sampled_from(BUDGETS)),
        min_size=1,
        max_size=5,
    ),
    seed=st.integers(0, 2**16),
)
def test_malformed_query_replies_get_the_fallback(identity, cases, seed):
    rng = np.random.default_rng(seed)
    model = Net()
    lmap = resolve_layers(model)
    layers = list(lmap)
    nodes = [200 + i for i in range(len(cases))]
    kinds = dict(zip(nodes, cases, strict=True))

    def make_reply(m):
        score, budget = kinds[m.metadata.dst_node_id]
        if score == "silent":
            return None
        if score == "error":
            reply = Message(Error(code=0, reason="boom"), reply_to=m)
            reply.metadata.__dict__["_src_node_id"] = 1
            return reply
        content = _content("ok", 1.0, score, budget, "plain", [], {}, layers, rng)
        return Message(RecordDict({k: v for k, v in content.items() if k == SCORES_KEY}), reply_to=m)

    strategy = F3ocusStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1), lmap, budget=2)
    start = ArrayRecord({k: Array(v.detach().numpy()) for k, v in model.state_dict().items()})
    out = list(strategy.configure_train(1, start, ConfigRecord(), _QueryGrid(nodes, make_reply)))
    assert {m.metadata.dst_node_id for m in out} == set(nodes)
    ok = {n for n, (score, _) in kinds.items() if score == "ok"}
    assert set(strategy.fallbacks[1]) == set(nodes) - ok
    for node in set(nodes) - ok:
        reason = strategy._round["fallback"][node]
        expected = {"error": "error reply", "silent": "no reply", "none": "no scores"}.get(
            kinds[node][0], "invalid scores"
        )
        assert expected in reason, (kinds[node], reason)
    for node in ok:
        budget = kinds[node][1]
        valid_budget = (
            isinstance(budget, int | float) and not isinstance(budget, bool) and np.isfinite(budget)
        )
        valid_budget = valid_budget and budget == int(budget) and budget >= 1
        assert len(strategy.plans[1][node]) == (min(int(budget), len(layers)) if valid_budget else 2)
