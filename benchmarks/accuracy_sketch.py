"""Accuracy of ``method="sketch"`` against an exact method on ViLT VQA heads with 3129 answers (CPU).

ViLT-B's exact output-kernel scores at 3129 answers cost hundreds of forward+backward passes, so the
reference here is a ViLT with the real head (hidden 768, ``Linear(768, 1536)``, LayerNorm, GELU,
``Linear(1536, 3129)``) and a shallower, smaller-image trunk, scored exactly by ``method="lanczos"``
(matrix-free, exact for any output). For each ``rank:power`` it records, per layer, the relative
error of the estimate (always a lower bound), the estimated error the method reports, and whether
the layer ranking matches the reference. Results go to ``benchmarks/results/sketch_accuracy_cpu.json``.

    python benchmarks/accuracy_sketch.py                       # 2 and 4 layers, N = 4
    python benchmarks/accuracy_sketch.py --layers 2 --sketch 32:2 16:1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_ntk import device_tag  # noqa: E402

from f3ocus import ntk_layer_importance  # noqa: E402


def vilt_head(layers: int, n: int, *, image: int = 96, text: int = 16, answers: int = 3129):
    """ViLT with the VQA head of ViLT-B (hidden 768, 3129 answers) and a ``layers``-deep trunk."""
    from transformers import ViltConfig, ViltForQuestionAnswering

    config = ViltConfig(num_hidden_layers=layers, image_size=image, num_labels=answers, max_image_length=-1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ViltForQuestionAnswering(config).eval()
    g = torch.Generator().manual_seed(1)
    batch = {
        "input_ids": torch.randint(1000, 20000, (n, text), generator=g),
        "attention_mask": torch.ones(n, text, dtype=torch.long),
        "pixel_values": torch.randn(n, 3, image, image, generator=g),
        "pixel_mask": torch.ones(n, image, image, dtype=torch.long),
    }
    return model, batch


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--sketch", nargs="+", default=["16:1", "32:2", "64:2"], metavar="RANK:POWER")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "sketch_accuracy_cpu.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for depth in args.layers:
        model, batch = vilt_head(depth, args.n)
        start = time.perf_counter()
        ref = ntk_layer_importance(model, batch, method="lanczos", seed=0, throw=False)
        ref_seconds = time.perf_counter() - start
        order = sorted(ref, key=ref.get)
        print(f"layers={depth}: lanczos {ref_seconds:.1f}s, converged {ref.stats['converged']}", flush=True)
        for spec in args.sketch:
            rank, power = map(int, spec.split(":"))
            start = time.perf_counter()
            got = ntk_layer_importance(model, batch, method="sketch", rank=rank, power=power, seed=0)
            seconds = time.perf_counter() - start
            rel = {k: (ref[k] - got[k]) / ref[k] for k in ref}
            row = {
                "layers": depth, "n": args.n, "answers": 3129, "rank": rank, "power": power,
                "seconds": seconds, "lanczos_seconds": ref_seconds, "reference_converged": ref.stats["converged"],
                "max_rel_err": max(abs(v) for v in rel.values()), "rel_err": rel,
                "estimated_err": got.stats["errors"], "same_ranking": sorted(got, key=got.get) == order,
                "reference": dict(ref), "sketch": dict(got),
            }
            rows.append(row)
            print(
                f"  rank={rank} power={power}: {seconds:.1f}s max rel. err {row['max_rel_err']:.3f} "
                f"(estimated up to {max(got.stats['errors'].values()):.3f}), same ranking {row['same_ranking']}",
                flush=True,
            )
            result = {"benchmark": "sketch_accuracy", "tag": device_tag(torch.device("cpu")), "rows": rows}
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return {"rows": rows}


if __name__ == "__main__":
    main()
