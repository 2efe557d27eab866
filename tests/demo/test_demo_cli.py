"""`f3ocus demo` end to end in a tiny configuration, its error messages, and the missing-extra message."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from f3ocus.cli import main
from f3ocus.demo.assets import DEMO_MODULES, require_demo_assets
from f3ocus.errors import MissingExtraError

HAS_ASSETS = all(importlib.util.find_spec(m) is not None for m in DEMO_MODULES)
needs_assets = pytest.mark.skipif(not HAS_ASSETS, reason="needs the demo extra: pip install 'f3ocus[demo]'")

TINY = [
    "demo",
    "--quick",
    "--seeds",
    "0",
    "1",
    "--rounds",
    "1",
    "--clients",
    "2",
    "--budgets",
    "1",
    "2",
    "--samples-per-client",
    "16",
    "--test-images",
    "2",
    "--image-size",
    "32",
    "--jobs",
    "1",
    "--no-progress",
]


@pytest.mark.demo
@needs_assets
@pytest.mark.usefixtures("one_thread")
def test_tiny_demo_prints_the_paired_difference_and_writes_the_report(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("summary.json", "table.md", "accuracy.png", "forest.png", "study.json"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert table in printed
    assert "F³OCUS (NTK + exact) − client-only NTK top-k" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["pairing_problems"] == []
    d = summary["summary"]["0.5"]["pairs"]["f3ocus-exact - topk"]["final"]
    sentence = re.search(
        r"alpha=0.5: F3OCUS \(NTK \+ exact\) - client-only NTK top-k = ([+-][0-9.]+) points, 95% CI \[([+-][0-9.]+), ([+-][0-9.]+)\]"
        r" \(paired t over 2 seeds\), Wilcoxon p = ([0-9.]+): (.*?)\. (.*)\.$",
        printed,
        flags=re.MULTILINE,
    )
    assert sentence is not None, printed
    assert float(sentence.group(1)) == pytest.approx(100 * d["mean"], abs=0.06)
    assert float(sentence.group(2)) == pytest.approx(100 * d["low"], abs=0.06)
    assert sentence.group(5) == d["verdict"]
    distinguishable = d["low"] > 0 or d["high"] < 0
    assert ("NOT distinguishable from zero" in sentence.group(6)) == (not distinguishable)
    for seed in ("0", "1"):
        for s in ("f3ocus-exact", "topk"):
            rec = json.loads((tmp_path / "cells" / "alpha=0.5" / f"seed={seed}" / f"{s}.json").read_text())
            assert len(rec["accuracy_all"]) == 2 and np.array(rec["plans"][0]).sum(axis=1).tolist() == [1, 2]
    # the run is resumable: nothing is left to do
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    assert "Ran 0 runs" in capsys.readouterr().out


def test_missing_demo_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # makes `import easy_vqa` fail
    with pytest.raises(
        MissingExtraError, match=r"'easy_vqa' \(the easy-VQA dataset\).*pip install 'f3ocus\[demo\]'"
    ):
        require_demo_assets()
    assert main(["demo", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "f3ocus demo: error:" in err and "pip install 'f3ocus[demo]'" in err and "easy_vqa" in err


@pytest.mark.demo
@needs_assets
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--solver", "nsga"], r"--solver='nsga' is not a valid choice. Did you mean 'nsga2'\?"),
        (["--jobs", "0"], r"--jobs must lie in \[1, inf\], got 0"),
        (["--threads", "0"], r"--threads must lie in \[1, inf\], got 0"),
        (["--clients", "2", "--budgets", "1", "2", "3"], r"budgets has 3 entries but clients=2"),
        (["--rounds", "0"], r"rounds must lie in \[1, inf\], got 0"),
        (["--strategies", "f3ocus", "best"], r"strategies\[...\]='best' is not a valid choice"),
        (["--seeds", "1", "1"], r"seeds has repeated entries"),
        (["--lr", "-1"], r"lr must be a finite number > 0, got -1.0"),
        (["--head-lr", "0"], r"head_lr must be a finite number > 0, got 0.0"),
        (["--lr-schedule", "linear"], r"lr_schedule='linear' is not a valid choice"),
        (["--max-grad-norm", "-1"], r"max_grad_norm must be a finite number > 0, got -1.0"),
        (["--device", "nodevice"], r"--device 'nodevice' is not a torch device"),
    ],
)
def test_demo_argument_errors(argv, message, capsys, tmp_path):
    assert main(["demo", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("f3ocus demo: error:")
    assert __import__("re").search(message, err), err


@pytest.mark.demo
@needs_assets
def test_cuda_without_a_gpu_is_an_error(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert main(["demo", "--device", "cuda"]) == 2
    assert "torch sees no CUDA device; use --device cpu" in capsys.readouterr().err


def test_max_grad_norm_zero_turns_clipping_off_and_the_head_lr_reaches_the_task():
    from f3ocus.cli import _task, build_parser

    args = build_parser().parse_args(["study", "--max-grad-norm", "0", "--head-lr", "2e-3"])
    task = _task(args)
    assert task.max_grad_norm is None and task.head_lr == 2e-3
    assert _task(build_parser().parse_args(["study"])).max_grad_norm == 1.0


def test_lr_schedule_reaches_the_task():
    from f3ocus.cli import _task, build_parser

    assert _task(build_parser().parse_args(["study"])).lr_schedule == "cosine"
    args = build_parser().parse_args(["demo", "--lr-schedule", "constant"])
    assert _task(args).lr_schedule == "constant"


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert "demo" in out and "study" in out


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "f3ocus", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--seeds" in done.stdout and "--solver" in done.stdout


@pytest.mark.parametrize(
    ("low", "high", "words"),
    [
        (0.01, 0.05, r"F3OCUS \(NTK \+ exact\) is ahead of top-k, and the difference is distinguishable"),
        (-0.05, -0.01, r"Top-k is ahead of F3OCUS \(NTK \+ exact\), and the difference is distinguishable"),
        (-0.01, 0.05, r"The difference is NOT distinguishable from zero with 4 seeds\."),
    ],
)
def test_demo_verdict_says_in_words_whether_the_difference_is_distinguishable(low, high, words):
    from f3ocus.cli import demo_verdict

    final = {"mean": (low + high) / 2, "low": low, "high": high, "n": 4, "p_wilcoxon": 0.125, "verdict": "v"}
    summary = {"0.5": {"pairs": {"f3ocus-exact - topk": {"final": final}}}}
    line = demo_verdict(summary)
    assert line.startswith("alpha=0.5: F3OCUS (NTK + exact) - client-only NTK top-k = ")
    assert re.search(words, line), line
