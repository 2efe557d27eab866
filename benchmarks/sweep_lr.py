"""Learning-rate sweep of the demo task on the two reference strategies only (never the compared ones).

For every triple (encoder lr, head lr, lr schedule) of the grid, full fine-tuning (every client trains all encoder layers
and the head) and the head-only reference run on the sweep seeds (kept apart from the study's seeds 0-9),
from the study's task otherwise. Every run is a resumable study cell under ``--out``; the summary JSON has
per triple the accuracy curves, the mean over seeds after the last round and of the last three rounds, the
largest drop below the warm start and the mean round-to-round change of the curve (its roughness).

    python benchmarks/sweep_lr.py --out /tmp/lr-sweep --json benchmarks/results/study_lr_sweep.json
    python benchmarks/sweep_lr.py --lrs 3e-5 --head-lrs 3e-4 --schedules constant cosine \
        --seeds 100 101 102 103 --out /tmp/schedule-sweep --json benchmarks/results/study_schedule_sweep.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from pathlib import Path

import numpy as np
import torch

from f3ocus.demo.run import TaskConfig
from f3ocus.demo.study import Block, StudyConfig, run_study


def _summary(curves: list[list[float]]) -> dict:
    acc = 100 * np.asarray(curves)  # (seeds, 1 + rounds)
    return {
        "final": float(acc[:, -1].mean()),
        "final_sd": float(acc[:, -1].std(ddof=1)) if len(acc) > 1 else None,
        "last3": float(acc[:, -3:].mean()),
        "largest_drop_below_start": float(max(0.0, (acc[:, :1] - acc[:, 1:]).max())),
        "roughness": float(np.abs(np.diff(acc[:, 1:], axis=1)).mean()),
    }


def sweep(
    base: TaskConfig,
    out: str | Path,
    *,
    lrs=(1e-5, 3e-5, 1e-4),
    head_lrs=(3e-4, 1e-3),
    schedules=("constant",),
    seeds=(100, 101),
    alpha: float = 0.5,
    jobs: int = 2,
    json_path: str | Path | None = None,
    log=print,
) -> dict:
    """Run the grid ``schedules x head_lrs x lrs`` (module docs) from the task ``base``; the summary is
    rewritten to ``json_path`` after every triple, so a cut-off sweep keeps what it finished (and resumes
    from ``out``)."""
    result: dict = {
        "what": "learning-rate sweep on full fine-tuning and the head-only reference only; accuracy in %",
        "device": f"cpu, torch {torch.__version__}, one thread per worker, {platform.processor() or platform.machine()}",
        "command": "python benchmarks/sweep_lr.py --out <folder> --json <file>",
        "seeds": list(seeds),
        "alpha": alpha,
        "task": {
            k: v
            for k, v in dataclasses.asdict(base).items()
            if k not in ("lr", "head_lr", "lr_schedule", "device")
        },
        "runs": {},
    }
    grid = [(lr, head_lr, schedule) for schedule in schedules for head_lr in head_lrs for lr in lrs]
    for lr, head_lr, schedule in grid:
        task = dataclasses.replace(base, lr=lr, head_lr=head_lr, lr_schedule=schedule)
        key = f"lr={lr:g},head_lr={head_lr:g},schedule={schedule}"
        cells = run_study(
            StudyConfig(task, tuple(seeds), (Block(alpha, ("full", "head")),)),
            Path(out) / key,
            jobs=jobs,
            progress=False,
        )["cells"][alpha]
        entry = {}
        for strategy in ("full", "head"):
            curves = [cells[s][strategy]["accuracy_all"] for s in seeds]
            entry[strategy] = {"accuracy_all": curves, **_summary(curves)}
        result["runs"][key] = entry
        if json_path is not None:
            Path(json_path).write_text(json.dumps(result, indent=1))
        full = entry["full"]
        log(
            f"{key}: full final {full['final']:.1f} last3 {full['last3']:.1f} "
            f"roughness {full['roughness']:.1f}; head final {entry['head']['final']:.1f}"
        )
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="folder of the runs (one study folder per triple)")
    parser.add_argument("--json", required=True, help="summary file to write")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4])
    parser.add_argument("--head-lrs", type=float, nargs="+", default=[3e-4, 1e-3])
    parser.add_argument("--schedules", nargs="+", default=["constant"], choices=["constant", "cosine"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    return sweep(
        TaskConfig(),
        args.out,
        lrs=args.lrs,
        head_lrs=args.head_lrs,
        schedules=args.schedules,
        seeds=args.seeds,
        alpha=args.alpha,
        jobs=args.jobs,
        json_path=args.json,
        log=lambda line: print(line, flush=True),
    )


if __name__ == "__main__":
    main()
