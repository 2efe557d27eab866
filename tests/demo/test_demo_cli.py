"""`f3ocus demo` end to end in a tiny configuration, its error messages, and the missing-extra message."""

from __future__ import annotations

import importlib.util
import json
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
    "--rounds",
    "1",
    "--clients",
    "2",
    "--budgets",
    "2",
    "3",
    "--samples-per-client",
    "16",
    "--test-images",
    "2",
    "--no-progress",
]


@pytest.mark.demo
@needs_assets
@pytest.mark.usefixtures("one_thread")
def test_tiny_demo_writes_table_plots_and_consistent_json(tmp_path, capsys):
    assert main([*TINY, "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    for name in ("results.json", "table.md", "accuracy.png", "plans_f3ocus.png", "plans_random.png"):
        assert (tmp_path / name).stat().st_size > 0
    table = (tmp_path / "table.md").read_text()
    assert table in printed
    for label in ("F³OCUS (NTK + nsga2)", "client-only NTK top-k", "random", "last-k", "full fine-tuning"):
        assert label in table

    results = json.loads((tmp_path / "results.json").read_text())
    layers = results["layers"]
    assert len(layers) == 22 and results["budgets"] == [2, 3]
    run = results["runs"]["0"]
    assert set(run["strategies"]) == {"f3ocus", "topk", "random", "lastk", "full"}
    full_params = sum(results["layer_params"].values())
    for name, rec in run["strategies"].items():
        assert len(rec["accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in rec["accuracy"])
        assert rec["accuracy"][0] == run["warmup_accuracy"]
        mask = np.array(rec["plans"][0], dtype=bool)
        assert mask.shape == (2, 22)
        params_up = [sum(results["layer_params"][layers[j]] for j in np.flatnonzero(row)) for row in mask]
        assert rec["params_up"][0] == params_up
        if name == "full":
            assert mask.all() and params_up == [full_params, full_params]
        else:
            assert mask.sum(axis=1).tolist() == [2, 3]
    lastk = np.array(run["strategies"]["lastk"]["plans"][0], dtype=bool)
    assert lastk[0, -2:].all() and lastk[1, -3:].all()
    # both scored strategies start from the same model, so their round-1 scores are the same numbers
    s_f3, s_top = (np.array(run["strategies"][s]["scores"][0]) for s in ("f3ocus", "topk"))
    assert s_f3.shape == (2, 22) and (s_f3 > 0).all() and np.array_equal(s_f3, s_top)
    topk = np.array(run["strategies"]["topk"]["plans"][0], dtype=bool)
    for k, b in enumerate([2, 3]):  # client-only top-k: each client's b_k largest scores
        assert set(np.flatnonzero(topk[k])) == set(np.argsort(-s_top[k])[:b])
    assert results["summary"]["full"]["trainable_params_per_client"] == full_params


def test_missing_demo_extra_names_the_install_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "easy_vqa", None)  # makes `import easy_vqa` fail
    with pytest.raises(
        MissingExtraError, match=r"'easy_vqa' \(the easy-VQA dataset\).*pip install 'f3ocus\[demo\]'"
    ):
        require_demo_assets()
    assert main(["demo", "--quick"]) == 2
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
        (["--lr", "-1"], r"lr must be a finite number > 0, got -1.0"),
        (["--device", "nodevice"], r"--device 'nodevice' is not a torch device"),
    ],
)
def test_demo_argument_errors(argv, message, capsys):
    assert main(["demo", *argv]) == 2
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


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "f3ocus", "demo", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--seeds" in done.stdout and "--solver" in done.stdout
