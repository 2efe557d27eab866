"""The learning-rate sweep script on a tiny task: its summary agrees with the cells it ran."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from f3ocus.demo.assets import DEMO_MODULES
from f3ocus.demo.run import TaskConfig

HAS_ASSETS = all(importlib.util.find_spec(m) is not None for m in DEMO_MODULES)
pytestmark = [
    pytest.mark.demo,
    pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'"),
]
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep_lr.py"
TINY = TaskConfig(
    rounds=3,
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


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("sweep_lr", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_of_curves_by_hand(script):
    curves = [[0.5, 0.6, 0.4, 0.7], [0.6, 0.5, 0.8, 0.9]]
    s = script._summary(curves)
    assert s["final"] == pytest.approx(80.0)
    assert s["final_sd"] == pytest.approx(np.std([70.0, 90.0], ddof=1))
    assert s["last3"] == pytest.approx(np.mean([60, 40, 70, 50, 80, 90]))
    assert s["largest_drop_below_start"] == pytest.approx(10.0)  # 0.5 -> 0.4 and 0.6 -> 0.5
    assert s["roughness"] == pytest.approx(np.mean([20, 30, 30, 10]))


def test_tiny_sweep_matches_its_cells(script, tmp_path, one_thread):
    path = tmp_path / "sweep.json"
    result = script.sweep(
        TINY,
        tmp_path / "runs",
        lrs=(1e-5, 1e-3),
        head_lrs=(1e-3,),
        schedules=("constant", "cosine"),
        seeds=(0, 1),
        jobs=1,
        json_path=path,
        log=lambda line: None,
    )
    assert json.loads(path.read_text()) == json.loads(json.dumps(result))
    keys = [
        f"lr={lr},head_lr=0.001,schedule={s}" for s in ("constant", "cosine") for lr in ("1e-05", "0.001")
    ]
    assert list(result["runs"]) == keys
    assert "lr_schedule" not in result["task"]
    for key, entry in result["runs"].items():
        for strategy in ("full", "head"):
            cells = [
                json.loads(
                    (
                        tmp_path / "runs" / key / "cells" / "alpha=0.5" / f"seed={s}" / f"{strategy}.json"
                    ).read_text()
                )
                for s in (0, 1)
            ]
            assert entry[strategy]["accuracy_all"] == [c["accuracy_all"] for c in cells]
            assert entry[strategy]["final"] == pytest.approx(
                100 * np.mean([c["accuracy_all"][-1] for c in cells])
            )
    for schedule in ("constant", "cosine"):
        # The head-only reference trains no encoder layer: the encoder lr cannot change it.
        low, high = (
            result["runs"][f"lr={lr},head_lr=0.001,schedule={schedule}"] for lr in ("1e-05", "0.001")
        )
        assert low["head"]["accuracy_all"] == high["head"]["accuracy_all"]
    # The schedule reaches the runs: the same lr pair ends elsewhere once the rates decay.
    constant, cosine = (
        result["runs"][f"lr=0.001,head_lr=0.001,schedule={s}"] for s in ("constant", "cosine")
    )
    assert constant["full"]["accuracy_all"] != cosine["full"]["accuracy_all"]
