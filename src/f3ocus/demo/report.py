"""The demo's outputs: a markdown table, JSON, accuracy curves and plan heatmaps.

Files written by :func:`write_report` into the output folder:

- ``results.json``: everything :func:`f3ocus.demo.run.run_demo` recorded, plus the ``summary``;
- ``table.md``: the markdown table of :func:`markdown_table`;
- ``accuracy.png``: test accuracy after every round, mean over seeds with a band of $\\pm$ one std;
- ``plans_<strategy>.png``: the client x layer plan of every round (first seed) for each strategy that
  selects layers, with the clients' NTK scores where the strategy used them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from f3ocus.demo.run import summarize

__all__ = ["markdown_table", "plot_accuracy", "plot_plans", "write_report"]

_LABELS = {
    "f3ocus": "F³OCUS (NTK + {solver})",
    "topk": "client-only NTK top-k",
    "random": "random",
    "lastk": "last-k layers",
    "full": "full fine-tuning (reference)",
}


def _label(strategy: str, results: dict[str, Any]) -> str:
    return _LABELS.get(strategy, strategy).format(solver=results["config"]["solver"])


def markdown_table(results: dict[str, Any]) -> str:
    """One row per strategy: test accuracy after the last round and averaged over the last (up to 3)
    rounds (mean ± std over seeds), trainable parameters per client per round, MB uploaded per round and
    MB up + down per round (all clients together)."""
    summary = summarize(results)
    seeds = len(results["runs"])
    acc0 = np.mean([run["warmup_accuracy"] for run in results["runs"].values()])
    rounds = results["config"]["rounds"]
    tail = next(iter(summary.values()))["last_rounds"]
    plural = "s" if seeds > 1 else ""
    lines = [
        f"| strategy | test accuracy after round {rounds} | mean of rounds {rounds - tail + 1}-{rounds} "
        "| trainable params / client | MB up / round | MB up+down / round |",
        "| --- | --- | --- | --- | --- | --- |",
    ]

    def pct(mean: float, std: float) -> str:
        return f"{100 * mean:.1f} ± {100 * std:.1f} %" if seeds > 1 else f"{100 * mean:.1f} %"

    for s, row in summary.items():
        lines.append(
            f"| {_label(s, results)} | {pct(row['final_accuracy_mean'], row['final_accuracy_std'])} "
            f"| {pct(row['last_rounds_accuracy_mean'], row['last_rounds_accuracy_std'])} "
            f"| {row['trainable_params_per_client'] / 1e6:.2f} M "
            f"| {row['mb_up_per_round']:.1f} | {row['mb_total_per_round']:.1f} |"
        )
    lines.append("")
    lines.append(
        f"{seeds} seed{plural}{' (mean ± std over seeds)' if seeds > 1 else ''}. Start of every strategy "
        "(after the shared head "
        f"warm-up): {100 * acc0:.1f} % test accuracy. "
        f"Budgets (layers per client): {results['budgets']} of {len(results['layers'])} layers."
    )
    return "\n".join(lines) + "\n"


def plot_accuracy(results: dict[str, Any], path: str | Path) -> None:
    """Test accuracy after every round (round 0 = after the warm-up), mean ± std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(results["runs"].values())
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for s in runs[0]["strategies"]:
        acc = 100 * np.array([run["strategies"][s]["accuracy"] for run in runs])
        x = np.arange(acc.shape[1])
        mean = acc.mean(axis=0)
        ax.plot(x, mean, marker="o", ms=3, label=_label(s, results))
        if acc.shape[0] > 1:
            std = acc.std(axis=0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"easy-VQA, {results['config']['clients']} non-IID clients, {len(runs)} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_plans(results: dict[str, Any], strategy: str, path: str | Path, *, seed: str | None = None) -> None:
    """The ``K x L`` plan of every round of ``strategy`` (one panel per round), first seed by default.

    Trained cells are coloured by the client's normalized NTK score $S_{kl} = \\lambda_{kl} /
    \\sum_{l'} \\lambda_{kl'}$ where the strategy used scores, otherwise drawn as 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seed = seed if seed is not None else next(iter(results["runs"]))
    rec = results["runs"][seed]["strategies"][strategy]
    names = results["layers"]
    rounds = len(rec["plans"])
    fig, axes = plt.subplots(
        rounds, 1, figsize=(9.0, 0.35 * len(rec["plans"][0]) * rounds + 1.6), squeeze=False
    )
    for r, ax in enumerate(axes[:, 0]):
        mask = np.array(rec["plans"][r], dtype=float)
        if rec["scores"][r] is not None:
            scores = np.array(rec["scores"][r])
            shown = np.where(mask > 0, scores / scores.sum(axis=1, keepdims=True), np.nan)
            im = ax.imshow(shown, aspect="auto", cmap="viridis", vmin=0)
            fig.colorbar(im, ax=ax, pad=0.01, label="S_kl")
        else:
            ax.imshow(np.where(mask > 0, 1.0, np.nan), aspect="auto", cmap="Greys", vmin=0, vmax=1.2)
        ax.set_yticks(range(mask.shape[0]))
        ax.set_yticklabels([f"client {k} ({int(mask[k].sum())})" for k in range(mask.shape[0])], fontsize=7)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names if r == rounds - 1 else [], rotation=90, fontsize=7)
        ax.set_xticks(np.arange(-0.5, len(names)), minor=True)
        ax.set_yticks(np.arange(-0.5, mask.shape[0]), minor=True)
        ax.grid(which="minor", color="0.85", lw=0.5)
        ax.tick_params(which="minor", length=0)
        ax.set_title(f"round {r + 1}", fontsize=8, loc="left")
    fig.suptitle(f"{_label(strategy, results)}: layers trained per client (seed {seed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(results: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``results.json``, ``table.md``, ``accuracy.png`` and ``plans_<strategy>.png`` into ``out_dir``.

    Returns:
        File kind -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = dict(results, summary=summarize(results))
    paths = {"json": out / "results.json", "table": out / "table.md", "accuracy": out / "accuracy.png"}
    paths["json"].write_text(json.dumps(results, indent=1))
    paths["table"].write_text(markdown_table(results))
    plot_accuracy(results, paths["accuracy"])
    for s in next(iter(results["runs"].values()))["strategies"]:
        if s != "full":
            paths[f"plans_{s}"] = out / f"plans_{s}.png"
            plot_plans(results, s, paths[f"plans_{s}"])
    return paths
