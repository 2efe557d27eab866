"""The study's outputs: summary with confidence intervals, markdown tables and plots.

:func:`summarize` turns the cells of :func:`f3ocus.demo.study.load_cells` into, per heterogeneity level
$\\alpha$ and strategy, the 95 % Student-t confidence intervals over seeds of

- the final test accuracy (after the last round), overall and on yes/no and other answers,
- the mean accuracy of the last 3 rounds,
- the accuracy after every round (the curve, round 0 = the shared warm start),

and, per pair of strategies, the **paired** difference over the seeds both have (paired t interval of the
mean difference and the exact Wilcoxon signed-rank p-value, :mod:`f3ocus.demo.stats`). It also gives
the mean plan diversity of every strategy (for the tradeoff sweep) and the checks: drop of the mean curve
below its start, and the pairing digests.

Files written by :func:`write_report`: ``summary.json``, ``table.md``, ``accuracy.png`` (curves with
95 % bands, one panel per $\\alpha$), ``forest.png`` (paired differences with 95 % CIs) and, where the
sweep ran, ``tradeoff.png`` (final accuracy against mean plan diversity).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from f3ocus.demo.stats import mean_ci, paired_difference

__all__ = ["LABELS", "PAIRS", "markdown_table", "summarize", "write_report"]

LABELS = {
    "f3ocus": "F³OCUS (NTK + nsga2)",
    "f3ocus-exact": "F³OCUS (NTK + exact)",
    "topk": "client-only NTK top-k",
    "random": "random",
    "lastk": "last-k layers",
    "full": "full fine-tuning",
    "head": "head only (no encoder layer)",
}

_SCORE_LABELS = {"grad_norm": "grad norm", "fisher": "Fisher", "snip": "SNIP"}

#: Pairs (a, b) whose difference a - b is reported, where both ran.
PAIRS = (
    ("f3ocus", "topk"),
    ("f3ocus", "random"),
    ("f3ocus", "lastk"),
    ("f3ocus-exact", "topk"),
    ("f3ocus-exact", "random"),
    ("f3ocus", "f3ocus-exact"),
    ("topk", "random"),
    ("full", "f3ocus"),
    ("f3ocus", "head"),
    ("topk", "head"),
    ("exact-x3", "topk"),
    ("exact-x10", "topk"),
    ("exact-x3", "f3ocus-exact"),
    ("exact-x10", "f3ocus-exact"),
    ("exact-x10", "random"),
    ("f3ocus-grad_norm", "topk-grad_norm"),
    ("f3ocus-fisher", "topk-fisher"),
    ("f3ocus-snip", "topk-snip"),
    ("f3ocus-grad_norm", "f3ocus"),
    ("topk-grad_norm", "topk"),
    ("f3ocus-fisher", "f3ocus"),
    ("topk-fisher", "topk"),
    ("f3ocus-snip", "f3ocus"),
    ("topk-snip", "topk"),
)

_TAIL = 3


def label(strategy: str) -> str:
    """Display name of a strategy (``exact-x3`` -> ``exact, t = 3 t*``)."""
    if strategy.startswith("exact-x"):
        return f"exact, t = {strategy[7:]}·t*"
    for prefix, name in (("topk-", "top-k"), ("f3ocus-", "F³OCUS")):
        score = strategy[len(prefix) :]
        if strategy.startswith(prefix) and score in _SCORE_LABELS:
            return f"{name} on {_SCORE_LABELS[score]}"
    return LABELS.get(strategy, strategy)


def _order(strategies) -> list[str]:
    known = [s for s in LABELS if s in strategies]
    return known + sorted(s for s in strategies if s not in LABELS)


def summarize(cells: dict[float, dict[int, dict[str, dict]]], level: float = 0.95) -> dict[str, Any]:
    """The summary of the module docs, JSON-ready: ``{alpha: {"strategies": ..., "pairs": ...}}``."""
    out: dict[str, Any] = {}
    for alpha in sorted(cells):
        seeds = cells[alpha]
        names = _order({s for per in seeds.values() for s in per})
        per_strategy = {}
        for s in names:
            recs = {seed: per[s] for seed, per in sorted(seeds.items()) if s in per}
            acc = np.array([rec["accuracy_all"] for rec in recs.values()])
            start = acc[:, 0]
            curve = [mean_ci(acc[:, r], level).to_dict() for r in range(acc.shape[1])]
            mean_curve = acc.mean(axis=0)
            tail = min(_TAIL, acc.shape[1] - 1)
            entry = {
                "seeds": list(recs),
                "final": mean_ci(acc[:, -1], level).to_dict(),
                "last_rounds": mean_ci(acc[:, -tail:].mean(axis=1), level).to_dict(),
                "last_rounds_count": tail,
                "start": mean_ci(start, level).to_dict(),
                "gain": mean_ci(acc[:, -1] - start, level).to_dict(),
                "max_drop_below_start": float(max(0.0, mean_curve[0] - mean_curve.min())),
                "curve": curve,
                "diversity": float(
                    np.mean([np.mean([st["diversity"] for st in rec["plan_stats"]]) for rec in recs.values()])
                ),
                "params_up_per_client": float(np.mean([np.mean(rec["params_up"]) for rec in recs.values()])),
                "mb_up_per_round": float(
                    np.mean([np.mean(np.sum(rec["bytes_up"], axis=1)) for rec in recs.values()]) / 1e6
                ),
                "seconds": float(np.mean([rec["seconds"] for rec in recs.values()])),
            }
            for kind in ("yes/no", "other"):
                entry[f"final_{kind}"] = mean_ci(
                    [rec[f"accuracy_{kind}"][-1] for rec in recs.values()]
                ).to_dict()
            per_strategy[s] = entry
        pairs = {}
        for a, b in PAIRS:
            common = sorted(seed for seed, per in seeds.items() if a in per and b in per)
            if len(common) < 1:
                continue
            fa = [seeds[x][a]["accuracy_all"][-1] for x in common]
            fb = [seeds[x][b]["accuracy_all"][-1] for x in common]
            la = [np.mean(seeds[x][a]["accuracy_all"][-_TAIL:]) for x in common]
            lb = [np.mean(seeds[x][b]["accuracy_all"][-_TAIL:]) for x in common]
            pairs[f"{a} - {b}"] = {
                "a": a,
                "b": b,
                "seeds": common,
                "final": paired_difference(fa, fb, level).to_dict(),
                "last_rounds": paired_difference(la, lb, level).to_dict(),
            }
        out[f"{alpha:g}"] = {"strategies": per_strategy, "pairs": pairs}
    return out


def format_p(p: float) -> str:
    """A p-value with three decimals, ``"< 0.001"`` below that (never a misleading ``0.000``)."""
    if p != p:
        return "n/a"
    return "< 0.001" if p < 0.0005 else f"{p:.3f}"


def _pct(ci: dict) -> str:
    if ci["n"] < 2:
        return f"{100 * ci['mean']:.1f}"
    return f"{100 * ci['mean']:.1f} ± {100 * ci['half_width']:.1f}"


def markdown_table(summary: dict[str, Any], task: dict[str, Any] | None = None) -> str:
    """Per $\\alpha$: a table of strategies (accuracies with 95 % CIs) and one of paired differences."""
    lines: list[str] = []
    for alpha, block in summary.items():
        strategies = block["strategies"]
        any_entry = next(iter(strategies.values()))
        rounds = len(any_entry["curve"]) - 1
        tail = any_entry["last_rounds_count"]
        lines += [
            f"**Dirichlet α = {alpha}** (test accuracy in %, mean ± 95 % CI half-width over seeds; Student t)",
            "",
            f"| strategy | seeds | after round {rounds} | mean of last {tail} rounds | yes/no | other "
            "| start | largest drop of the mean curve below start | plan diversity | MB up / round |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for s, e in strategies.items():
            lines.append(
                f"| {label(s)} | {len(e['seeds'])} | {_pct(e['final'])} | {_pct(e['last_rounds'])} "
                f"| {_pct(e['final_yes/no'])} | {_pct(e['final_other'])} | {_pct(e['start'])} "
                f"| {100 * e['max_drop_below_start']:.1f} | {e['diversity']:.2f} | {e['mb_up_per_round']:.1f} |"
            )
        if block["pairs"]:
            lines += [
                "",
                "| paired difference (final accuracy) | seeds | mean, 95 % CI (paired t) | Wilcoxon p "
                "| wins / losses / ties | verdict |",
                "| --- | --- | --- | --- | --- | --- |",
            ]
            for p in block["pairs"].values():
                d = p["final"]
                ci = "n/a" if d["n"] < 2 else f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]"
                lines.append(
                    f"| {label(p['a'])} − {label(p['b'])} | {d['n']} | {100 * d['mean']:+.1f} points, {ci} "
                    f"| {format_p(d['p_wilcoxon'])} | {d['wins']} / {d['losses']} / {d['ties']} | {d['verdict']} |"
                )
        lines.append("")
    if task:
        lines.append(
            f"Task: {task.get('clients')} clients, {task.get('samples_per_client')} questions per client on "
            f"average, budgets {task.get('budgets') or 'default (2..6)'} encoder layers + the head, warm start "
            f"{task.get('warmup_rounds')} head-only rounds × {task.get('warmup_steps')} steps, "
            f"{task.get('rounds')} rounds × {task.get('local_steps')} local Adam steps of "
            f"{task.get('batch_size')} questions at lr {task.get('lr')} (encoder) and "
            f"{task.get('head_lr', task.get('lr'))} (head), {task.get('lr_schedule', 'constant')} learning-rate "
            f"schedule (warm-up peak lr {task.get('warmup_lr')}), gradients clipped to norm "
            f"{task.get('max_grad_norm')}, NTK {task.get('kernel')!r} kernel on "
            f"{task.get('score_samples')} questions per client, {task.get('test_images')} test images, "
            f"{task.get('image_size')}×{task.get('image_size')} pixels."
        )
    return "\n".join(lines) + "\n"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def strategy_colors(summary: dict[str, Any]) -> dict[str, Any]:
    """One distinct colour per strategy, the same in every panel (tab10, tab20 beyond 10 strategies)."""
    import matplotlib

    names = list(dict.fromkeys(s for block in summary.values() for s in block["strategies"]))
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {s: cmap(i % cmap.N) for i, s in enumerate(names)}


def plot_accuracy(summary: dict[str, Any], path: str | Path) -> None:
    """Mean test accuracy after every round with its 95 % CI band, one panel per $\\alpha$."""
    plt = _plt()
    colors = strategy_colors(summary)
    fig, axes = plt.subplots(1, len(summary), figsize=(6.0 * len(summary), 4.2), squeeze=False)
    for ax, (alpha, block) in zip(axes[0], summary.items(), strict=True):
        for s, e in block["strategies"].items():
            mean = 100 * np.array([c["mean"] for c in e["curve"]])
            low = 100 * np.array([c["low"] for c in e["curve"]])
            high = 100 * np.array([c["high"] for c in e["curve"]])
            x = np.arange(mean.size)
            ax.plot(x, mean, marker="o", ms=3, color=colors[s], label=f"{label(s)} (n={len(e['seeds'])})")
            if len(e["seeds"]) > 1:
                ax.fill_between(x, low, high, color=colors[s], alpha=0.12)
        ax.set_xlabel("round (0 = shared warm start)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"Dirichlet α = {alpha}: mean and 95 % CI over seeds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_forest(summary: dict[str, Any], path: str | Path) -> None:
    """Paired differences of final accuracy with 95 % CIs (paired t), one row per pair and $\\alpha$."""
    plt = _plt()
    rows = [(alpha, p) for alpha, block in summary.items() for p in block["pairs"].values()]
    fig, ax = plt.subplots(figsize=(7.5, 0.38 * len(rows) + 1.2))
    for i, (_alpha, p) in enumerate(rows):
        d = p["final"]
        y = len(rows) - 1 - i
        ax.plot(100 * d["mean"], y, "o", color="C0" if d["low"] > 0 or d["high"] < 0 else "0.4")
        if d["n"] > 1:
            ax.plot([100 * d["low"], 100 * d["high"]], [y, y], "-", color="C0")
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(
        [f"α={a}: {label(p['a'])} − {label(p['b'])} (n={p['final']['n']})" for a, p in rows][::-1], fontsize=7
    )
    ax.set_xlabel("difference of final test accuracy (points), 95 % CI (paired t)")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def sweep_points(block: dict[str, Any]) -> list[tuple[str, float, dict]]:
    """The tradeoff sweep of one $\\alpha$: ``(strategy, c, summary entry)`` for top-k (c = 0),
    ``f3ocus-exact`` (the knee of the exact front, placed at c = 1) and every ``exact-x<c>``, sorted by c."""
    points = []
    for s, e in block["strategies"].items():
        if s == "topk":
            c = 0.0
        elif s == "f3ocus-exact":
            c = 1.0
        elif s.startswith("exact-x"):
            c = float(s[7:])
        else:
            continue
        points.append((s, c, e))
    return sorted(points, key=lambda p: p[1])


def plot_tradeoff(summary: dict[str, Any], path: str | Path) -> bool:
    """Final accuracy (95 % CI) against mean plan diversity along the exact solver's tradeoff sweep.

    Returns:
        False (and writes nothing) when no $\\alpha$ has more than two sweep points.
    """
    blocks = {a: sweep_points(b) for a, b in summary.items()}
    blocks = {a: p for a, p in blocks.items() if len(p) > 2}
    if not blocks:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.2))
    for alpha, points in blocks.items():
        x = [e["diversity"] for _, _, e in points]
        y = [100 * e["final"]["mean"] for _, _, e in points]
        err = [100 * e["final"]["half_width"] for _, _, e in points]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"α = {alpha}")
        for (s, c, _), xi, yi in zip(points, x, y, strict=True):
            text = {"topk": "t=0 (top-k)", "f3ocus-exact": "knee (F³OCUS exact)"}.get(s, f"t={c:g}·t*")
            ax.annotate(text, (xi, yi), textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.set_xlabel("plan diversity (variance of the layer counts, mean over rounds; lower = more balanced)")
    ax.set_ylabel("final test accuracy (%), 95 % CI")
    ax.set_title("exact solver: importance − t · diversity", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def _pairing_line(problems: list[str], rounding: list[str]) -> str:
    if problems:
        where = ", ".join(dict.fromkeys(p.split(":", 1)[0] for p in problems))
        return f"\nPairing problems in {where} (see `pairing_problems` in summary.json).\n"
    if rounding:
        return (
            f"\nPairing: every seed's runs share the split and the minibatches; in {len(rounding)} seed groups "
            "some warm starts are equal to the others only up to floating-point rounding (the same start "
            "accuracy, other weight bits: runs made on a CPU with other kernels; see "
            "`pairing_rounding_differences` in summary.json).\n"
        )
    return "\nPairing: every seed's runs share the split, the warm start and the minibatches, bit for bit.\n"


def _machine(cells: dict[str, Any]) -> dict[str, Any]:
    import os
    import platform

    import torch

    recs = [rec for seeds in cells["cells"].values() for per in seeds.values() for rec in per.values()]
    return {
        "device": sorted({rec.get("device", "cpu") for rec in recs}),
        "cpu_capability": sorted({rec.get("cpu_capability", "not recorded") for rec in recs}),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "run_seconds_total": float(sum(rec["seconds"] + rec.get("setup_seconds", 0.0) for rec in recs)),
    }


def write_report(cells: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``summary.json``, ``table.md`` and the plots into ``out_dir``.

    Args:
        cells: :func:`f3ocus.demo.study.load_cells`'s result.
        out_dir: The folder.

    Returns:
        File kind -> path.
    """
    from f3ocus.demo.study import check_pairing, rounding_differences

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(cells["cells"])
    paths = {"summary": out / "summary.json", "table": out / "table.md", "accuracy": out / "accuracy.png"}
    problems = check_pairing(cells["cells"])
    rounding = rounding_differences(cells["cells"])
    paths["summary"].write_text(
        json.dumps(
            {
                "task": cells["task"],
                "machine": _machine(cells),
                "pairing_problems": problems,
                "pairing_rounding_differences": rounding,
                "summary": summary,
            },
            indent=1,
        )
    )
    paths["table"].write_text(markdown_table(summary, cells["task"]) + _pairing_line(problems, rounding))
    plot_accuracy(summary, paths["accuracy"])
    if any(block["pairs"] for block in summary.values()):
        paths["forest"] = out / "forest.png"
        plot_forest(summary, paths["forest"])
    if plot_tradeoff(summary, out / "tradeoff.png"):
        paths["tradeoff"] = out / "tradeoff.png"
    return paths
