"""Default scoring of the small ViT against one forward+backward, with its accuracy against dense.

On the small ViT of ``bench_ntk.py`` (depth 6, width 192, 10 classes) and one batch, per kernel
(``"output"``, ``"sum"``): ``ntk_layer_importance(model, x)`` with the default settings (and, for
``"output"``, ``method="factored", eig="lanczos"``: every layer by Lanczos), each run paired
with a fresh forward+backward just before it (``bench_ntk.timed``: medians over ``--repeats`` pairs
after ``--warmup``, wall-clock and process CPU time). Besides the ratios it records the method
``"auto"`` chose, the path and Lanczos steps per layer, the default ``tol``, the largest relative error
of the layer scores against the dense reference in float64 (``method="dense"``, ``dtype=float64``,
not timed), and whether the layer ranking equals the reference's. Writes
``benchmarks/results/ntk_<device>_vit_small_n<N>.json``.

    python benchmarks/vit_small_ntk.py --n 16 --repeats 7
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_ntk import device_tag, forward_backward, timed  # noqa: E402
from models import vit_small_cifar  # noqa: E402

from f3ocus import ntk_layer_importance  # noqa: E402


def ranking(scores: dict) -> list[str]:
    return sorted(scores, key=lambda k: -scores[k])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--kernels", nargs="+", default=["output", "sum"])
    parser.add_argument(
        "--no-lanczos-row", action="store_true", help="skip the output-kernel row with eig='lanczos'"
    )
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    model = vit_small_cifar(num_classes=args.classes, generator=generator).eval()
    x = torch.randn(args.n, 3, 32, 32, generator=generator)
    tag = device_tag(device)
    fb = forward_backward(model, x)
    rows = []
    runs = [(kernel, {}) for kernel in args.kernels]
    if "output" in args.kernels and not args.no_lanczos_row:
        runs.insert(1, ("output", {"method": "factored", "eig": "lanczos"}))  # the Lanczos steps
    refs = {}
    for kernel, options in runs:
        if kernel not in refs:
            refs[kernel] = dict(ntk_layer_importance(model, x, kernel=kernel, method="dense", dtype=torch.float64))
        ref = refs[kernel]

        def run(kernel=kernel, options=options):
            s = ntk_layer_importance(model, x, kernel=kernel, seed=0, **options)
            return dict(s), s.stats

        got = timed(run, fb, device, repeats=args.repeats, warmup=args.warmup, slow=float("inf"))
        values, stats = got["result"]
        err = max(abs(values[k] - ref[k]) / ref[k] for k in ref)
        row = {
            "n": args.n,
            "kernel": kernel,
            "options": options,
            "chosen": stats["method"],
            "tol": stats["tol"],
            "ratio_to_fwd_bwd": got["ratio"],
            "cpu_ratio_to_fwd_bwd": got["cpu_ratio"],
            "seconds": got["seconds"],
            "fwd_bwd_seconds": got["base_seconds"],
            "runs": got["runs"],
            "peak_bytes": got["peak_bytes"],
            "path": stats.get("extra", {}).get("path"),
            "lanczos_steps": stats["iterations"],
            "max_rel_err_to_dense": err,
            "ranking_equals_dense": ranking(values) == ranking(ref),
            "ranking": ranking(values),
        }
        rows.append(row)
        print(
            f"{kernel:6s} {options or 'defaults'} -> {row['chosen']:9s} {row['ratio_to_fwd_bwd']:6.2f}x fwd+bwd "
            f"(cpu {row['cpu_ratio_to_fwd_bwd']:.2f}x, fwd+bwd {row['fwd_bwd_seconds']:.3f}s) "
            f"err {err:.1e} ranking equal {row['ranking_equals_dense']}",
            flush=True,
        )
    result = {
        "benchmark": "ntk_layer_importance_defaults",
        "model": "vit_small",
        "classes": args.classes,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "tag": tag,
        "command": "python benchmarks/vit_small_ntk.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "rows": rows,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"ntk_cpu_vit_small_n{args.n}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
