"""The study runner: strategies x seeds x heterogeneity levels, paired by seed, resumable, in parallel.

A study is a list of **blocks** ``(alpha, strategies)`` run in that order (most important first), each for
every seed. A **cell** is one ``(alpha, seed, strategy)``: one federated run of
:func:`f3ocus.demo.run.run_seed`. Each finished cell is written at once to its own JSON file,

    <out>/cells/alpha=<alpha>/seed=<seed>/<strategy>.json

so an interrupted study resumes where it stopped (cells already on disk are skipped), and a study can be
extended with more seeds, strategies or blocks into the same folder. ``<out>/study.json`` holds the task;
resuming with a different task is an error (the cells would not be comparable).

Cells of one ``(alpha, seed)`` are paired: same split, same warm start, same minibatches. A worker runs
the missing cells of one ``(alpha, seed, block)`` in one process, from one split and warm start; cells of
the same ``(alpha, seed)`` in different blocks are recomputed identically (single-threaded CPU torch is
deterministic), and :func:`check_pairing` verifies it from the digests the cells record.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any

from f3ocus._checks import check_int, check_positive_float
from f3ocus.demo.run import TaskConfig
from f3ocus.demo.strategies import check_strategy

__all__ = ["Block", "StudyConfig", "cell_path", "check_pairing", "load_cells", "rounding_differences", "run_study"]


@dataclasses.dataclass(frozen=True)
class Block:
    """Strategies to run at one heterogeneity level, for every seed of the study."""

    alpha: float
    strategies: tuple[str, ...]

    def __post_init__(self) -> None:
        check_positive_float("alpha", self.alpha)
        if not self.strategies:
            raise ValueError("a block needs at least one strategy, got strategies=().")
        for s in self.strategies:
            check_strategy("strategies[...]", s)


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A study: the task, the seeds and the blocks (in priority order).

    Attributes:
        task: The federated task; its ``alpha`` is replaced by each block's.
        seeds: Seeds (replicates) of every block.
        blocks: ``(alpha, strategies)`` blocks, run in this order.
    """

    task: TaskConfig
    seeds: tuple[int, ...]
    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds is empty; pass at least one seed, e.g. seeds=(0,).")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds has repeated entries: {list(self.seeds)}; pass each seed once.")
        for s in self.seeds:
            check_int("seeds[...]", s, low=0)
        if not self.blocks:
            raise ValueError("blocks is empty; pass at least one Block(alpha, strategies).")

    def tasks(self) -> list[tuple[float, int, tuple[str, ...]]]:
        """``(alpha, seed, strategies)`` per worker task, in run order: block by block, seed by seed."""
        return [(b.alpha, s, b.strategies) for b in self.blocks for s in self.seeds]


def _alpha_key(alpha: float) -> str:
    return f"alpha={alpha:g}"


def cell_path(out: str | Path, alpha: float, seed: int, strategy: str) -> Path:
    """Where the cell ``(alpha, seed, strategy)`` is stored."""
    return Path(out) / "cells" / _alpha_key(alpha) / f"seed={seed}" / f"{strategy}.json"


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)  # atomic: a cell file is either absent or complete


def _task_fields(task: TaskConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(task)
    fields.pop("alpha")
    fields.pop("device")
    if fields["budgets"] is not None:
        fields["budgets"] = list(fields["budgets"])
    return fields


def _check_study_file(out: Path, task: TaskConfig) -> None:
    path = out / "study.json"
    fields = _task_fields(task)
    if path.exists():
        stored = json.loads(path.read_text())["task"]
        if stored != fields:
            diff = {k: (stored.get(k), v) for k, v in fields.items() if stored.get(k) != v}
            raise ValueError(
                f"out={str(out)!r} holds a study of another task (stored vs asked: {diff}); "
                "use another --out folder or the same task settings."
            )
    else:
        _write_json(path, {"task": fields})


_LOADED: dict[str, Any] = {}


def _exit_with_parent(interval: float = 1.0) -> threading.Thread:
    """Start a daemon thread that ends this (worker) process once its parent is gone.

    A worker of a killed study (``kill <pid>`` reaches the parent only) would otherwise run its task to the
    end and hold the cores. When the parent dies the worker is re-parented, so ``os.getppid()`` changes.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    thread = threading.Thread(target=watch, name="f3ocus-exit-with-parent", daemon=True)
    thread.start()
    return thread


def _init_worker(threads: int | None, device: str, image_size: int, worker: bool = False) -> None:
    import torch

    if worker:
        _exit_with_parent()

    from f3ocus.demo.run import load_model

    if threads is not None:
        torch.set_num_threads(threads)
    _LOADED["model"] = load_model(device, image_size)


def _run_task(task: TaskConfig, out: str, alpha: float, seed: int, strategies, progress: bool, position: int):
    from f3ocus.demo.run import run_seed

    def save(strategy: str, record: dict) -> None:
        _write_json(cell_path(out, alpha, seed, strategy), record)

    config = dataclasses.replace(task, alpha=alpha)
    run_seed(config, seed, strategies, _LOADED["model"], progress=progress, position=position, on_result=save)
    return alpha, seed, list(strategies)


def run_study(
    config: StudyConfig,
    out: str | Path,
    *,
    jobs: int = 1,
    threads: int | None = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every missing cell of ``config`` into ``out`` (module docs) and return all cells on disk.

    Args:
        config: The study.
        out: Output folder (created; reused to resume).
        jobs: Worker processes; each loads the model once and runs one ``(alpha, seed, block)`` at a time.
            Results do not depend on ``jobs``.
        threads: Torch CPU threads per worker (1 is steadiest on a shared machine).
        progress: tqdm bars on stderr: one for the study (cells done) and one per running task.

    Returns:
        :func:`load_cells` of ``out`` plus ``seconds`` (this call's wall time) and ``ran`` (cells computed).
    """
    jobs = check_int("jobs", jobs, low=1)
    if threads is not None:
        check_int("threads", threads, low=1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _check_study_file(out, config.task)
    began = time.perf_counter()
    todo = []
    for alpha, seed, strategies in config.tasks():
        missing = tuple(s for s in strategies if not cell_path(out, alpha, seed, s).exists())
        if missing:
            todo.append((alpha, seed, missing))
    total = sum(len(t[2]) for t in todo)
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="study cells", unit="cell", position=0)
    task = config.task
    try:
        if jobs == 1 or len(todo) == 1:
            import torch

            previous = torch.get_num_threads()
            _init_worker(threads, task.device, task.image_size)
            try:
                for alpha, seed, strategies in todo:
                    _run_task(task, str(out), alpha, seed, strategies, progress, 1)
                    if bar is not None:
                        bar.update(len(strategies))
            finally:
                torch.set_num_threads(previous)
        elif todo:
            context = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(
                min(jobs, len(todo)),
                mp_context=context,
                initializer=_init_worker,
                initargs=(threads, task.device, task.image_size, True),
            ) as pool:
                futures = [
                    pool.submit(_run_task, task, str(out), a, s, st, progress, 1 + i % jobs)
                    for i, (a, s, st) in enumerate(todo)
                ]
                for future in concurrent.futures.as_completed(futures):
                    _, _, done = future.result()
                    if bar is not None:
                        bar.update(len(done))
    finally:
        if bar is not None:
            bar.close()
    cells = load_cells(out)
    return {**cells, "seconds": time.perf_counter() - began, "ran": total}


def load_cells(out: str | Path, config: StudyConfig | None = None) -> dict[str, Any]:
    """Every cell on disk: ``{"task": ..., "cells": {alpha: {seed: {strategy: record}}}}``.

    Args:
        out: The study folder.
        config: Keep only this study's seeds and blocks (default: everything found).
    """
    out = Path(out)
    stored = json.loads((out / "study.json").read_text())["task"] if (out / "study.json").exists() else {}
    cells: dict[float, dict[int, dict[str, dict]]] = {}
    wanted = None
    if config is not None:
        wanted = {(b.alpha, s, st) for b in config.blocks for s in config.seeds for st in b.strategies}
    for path in sorted((out / "cells").glob("alpha=*/seed=*/*.json")):
        alpha = float(path.parent.parent.name.split("=", 1)[1])
        seed = int(path.parent.name.split("=", 1)[1])
        strategy = path.stem
        if wanted is not None and (alpha, seed, strategy) not in wanted:
            continue
        cells.setdefault(alpha, {}).setdefault(seed, {})[strategy] = json.loads(path.read_text())
    return {"task": stored, "cells": cells}


def _same_start_accuracy(strategies: dict[str, dict]) -> bool:
    views = [k for k in ("accuracy_all", "accuracy_yes/no", "accuracy_other") if k in next(iter(strategies.values()))]
    return all(len({rec.get(k, [None])[0] for rec in strategies.values()}) == 1 for k in views)


def _pairing(cells: dict[float, dict[int, dict[str, dict]]]) -> tuple[list[str], list[str]]:
    problems, rounding = [], []
    for alpha, seeds in sorted(cells.items()):
        for seed, strategies in sorted(seeds.items()):
            differs = {}
            for key in ("data_digest", "warmstart_digest", "batch_digest"):
                values = {s: rec.get(key) for s, rec in strategies.items()}
                if len(set(values.values())) > 1:
                    differs[key] = values
            if set(differs) == {"warmstart_digest"} and _same_start_accuracy(strategies):
                groups: dict[str, list[str]] = {}
                for s, digest in differs["warmstart_digest"].items():
                    groups.setdefault(digest, []).append(s)
                rounding.append(
                    f"alpha={alpha:g} seed={seed}: warm starts equal up to floating-point rounding "
                    f"(same split and minibatches, same start accuracy, different weight bits): "
                    f"{sorted(groups.values())}"
                )
                continue
            problems += [f"alpha={alpha:g} seed={seed}: {key} differs: {values}" for key, values in differs.items()]
    return problems, rounding


def check_pairing(cells: dict[float, dict[int, dict[str, dict]]]) -> list[str]:
    """Problems with the pairing: cells of one ``(alpha, seed)`` whose split, warm start or minibatch
    draws differ (their digests). An empty list means every comparison is paired.

    A warm start whose weight bits differ while the split and minibatch digests agree and the start
    accuracies (overall, yes/no, other) are identical is not a problem but a difference of floating-point
    rounding, e.g. runs made on CPUs with different kernels (AVX2 against AVX-512); those are listed by
    :func:`rounding_differences`.
    """
    return _pairing(cells)[0]


def rounding_differences(cells: dict[float, dict[int, dict[str, dict]]]) -> list[str]:
    """The ``(alpha, seed)`` groups whose warm starts agree up to floating-point rounding only (see
    :func:`check_pairing`), with the strategies grouped by their warm start's bits. Such runs are paired
    in the split, the warm start's predictions and the minibatches, not bitwise: on another machine a run's
    later rounds can differ by a few tenths of a point."""
    return _pairing(cells)[1]


def default_blocks() -> tuple[Block, ...]:
    """The full study's blocks, most important first: at alpha 0.5, F³OCUS, top-k, random, full fine-tuning
    and the head-only reference; the same at a second heterogeneity level (alpha 1.0: milder label skew);
    at alpha 0.5 F³OCUS with the exact solver, the tradeoff sweep of the exact solver at 3 and 10 times the
    knee tradeoff and last-k; top-k and F³OCUS on the Fisher score (alpha 0.5); top-k and F³OCUS on the
    gradient norm, then on SNIP (alpha 0.5) last: the score rows of the paper's Table 1."""
    return (
        Block(0.5, ("f3ocus", "topk", "random", "full", "head")),
        Block(1.0, ("f3ocus", "topk", "random", "full", "head")),
        Block(0.5, ("f3ocus-exact", "exact-x3", "exact-x10", "lastk")),
        Block(0.5, ("topk-fisher", "f3ocus-fisher")),
        Block(0.5, ("topk-grad_norm", "f3ocus-grad_norm")),
        Block(0.5, ("topk-snip", "f3ocus-snip")),
    )
