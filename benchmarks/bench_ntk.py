"""Layer-wise NTK scoring: every method against the torch.func tutorial method and one forward+backward.

For each batch size and kernel it times, on the same model and batch:

- ``fwd+bwd``: one forward and backward pass of the batch (``model(x)`` summed, ``.backward()``), the
  unit of every ratio;
- ``tutorial``: the torch.func NTK tutorial recipe, ``vmap(jacrev)`` of the whole per-sample Jacobian,
  an einsum Gram per layer and ``eigvalsh``
  (https://pytorch.org/tutorials/intermediate/neural_tangent_kernels.html);
- every f3ocus method asked for (``auto`` is the default ``ntk_layer_importance(model, x)``).

Every run is paired with a fresh ``fwd+bwd`` run just before it and the ratio is taken per pair (so
that ratios hold while the machine's load changes). Times and ratios are medians over ``--repeats``
pairs after ``--warmup`` pairs (a run slower than ``--slow`` seconds is
not repeated); wall-clock and process CPU time are both recorded (CPU time is the steadier measure on a
shared machine). Peak memory: ``torch.cuda.max_memory_allocated`` above the starting allocation on CUDA; on
CPU the peak resident-set size above the starting RSS, sampled every 2 ms by a thread (a proxy).
Results go to ``benchmarks/results/ntk_<device>.json`` with the device, torch version and threads.

    python benchmarks/bench_ntk.py                          # small ViT, CPU, N = 8 16 32
    python benchmarks/bench_ntk.py --model vit_base --device cuda --n 32
    python benchmarks/bench_ntk.py --quick                  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, vmap

sys.path.insert(0, str(Path(__file__).parent))
from models import vit_base, vit_small_cifar  # noqa: E402

from f3ocus import ntk_layer_importance  # noqa: E402
from f3ocus.layers import resolve_layers  # noqa: E402

MODELS = {"vit_small": (vit_small_cifar, 32), "vit_base": (vit_base, 224)}


# -- measurement ------------------------------------------------------------------------------------
class PeakMemory:
    """Peak extra memory of a block: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._rss()
            self._top = self._start
            self._stop = threading.Event()

            def poll() -> None:
                while not self._stop.is_set():
                    self._top = max(self._top, self._rss())
                    time.sleep(0.002)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._top, self._rss()) - self._start


def _once(fn, device: torch.device) -> tuple[float, float, int, object]:
    with PeakMemory(device) as mem:
        start, cpu_start = time.perf_counter(), time.process_time()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return seconds, cpu_seconds, mem.peak, result


def timed(fn, base, device: torch.device, *, repeats: int, warmup: int, slow: float) -> dict:
    """Median seconds, peak memory and ratios of ``fn()`` to ``base()``, each run paired with a fresh
    ``base()`` run just before it (so that ratios hold on a machine whose load changes).

    The last result of ``fn`` is kept under ``"result"``.
    """
    rows, result = [], None
    for i in range(warmup + repeats):
        b_sec, b_cpu, _, _ = _once(base, device)
        seconds, cpu_seconds, peak, result = _once(fn, device)
        if i >= warmup or seconds > slow:
            rows.append((seconds, cpu_seconds, peak, seconds / b_sec, cpu_seconds / b_cpu, b_sec))
        if seconds > slow and rows:
            break
    cols = list(zip(*rows, strict=True))
    return {
        "seconds": statistics.median(cols[0]),
        "cpu_seconds": statistics.median(cols[1]),
        "peak_bytes": max(cols[2]),
        "ratio": statistics.median(cols[3]),
        "cpu_ratio": statistics.median(cols[4]),
        "base_seconds": statistics.median(cols[5]),
        "runs": len(rows),
        "result": result,
    }


# -- the baselines ----------------------------------------------------------------------------------
def forward_backward(model, x):
    def run():
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    return run


def tutorial(model, x, kernel: str, layers: dict[str, list[str]]):
    """The torch.func NTK tutorial: vmap(jacrev) per-sample Jacobians, einsum Gram, eigvalsh."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def fnet_single(p, xi):
        out = functional_call(model, p, (xi.unsqueeze(0),)).squeeze(0)
        return out.sum(dim=-1, keepdim=True) if kernel == "sum" else out

    def run():
        jac = vmap(jacrev(fnet_single), (None, 0))(params, x)  # name -> (N, M, *shape)
        n, m = x.shape[0], jac[next(iter(jac))].shape[1]
        eigs = {}
        for layer, names in layers.items():
            j = torch.cat([jac[k].reshape(n, m, -1) for k in names], dim=2)
            gram = torch.einsum("naf,mbf->namb", j, j).reshape(n * m, n * m)
            eigs[layer] = torch.linalg.eigvalsh(gram)[-1].item()
        return eigs

    return run


def scoring(model, x, kernel: str, method: str):
    def run():
        scores = ntk_layer_importance(model, x, kernel=kernel, method=method, seed=0, throw=False)
        return dict(scores), scores.stats["method"]

    return run


# -- the run ----------------------------------------------------------------------------------------
def device_tag(device: torch.device) -> dict:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
        except (OSError, StopIteration):
            pass
    return {
        "device": str(device),
        "name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def markdown_table(result: dict) -> str:
    """The rows of a results JSON as a Markdown table (used for docs/benchmarks.md)."""
    lines = [
        "| N | kernel | method | chosen | seconds | x fwd+bwd (wall) | x fwd+bwd (CPU time) | peak memory | max rel. diff |",
        "| ---: | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in result["rows"]:
        if "error" in r:
            lines.append(f"| {r['n']} | {r['kernel']} | {r['method']} | | {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['n']} | {r['kernel']} | {r['method']} | {r['chosen']} | {r['seconds']:.2f} | "
            f"{r['ratio_to_fwd_bwd']:.1f} | {r['cpu_ratio_to_fwd_bwd']:.1f} | "
            f"{r['peak_bytes'] / 2**20:.0f} MiB | {r['max_rel_diff_to_first']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default=None)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--kernels", nargs="+", default=["output", "sum"])
    parser.add_argument("--methods", nargs="+", default=["auto", "lanczos"])
    parser.add_argument(
        "--matfree-max-n", type=int, default=8, help="largest N for the (slow) matrix-free 'lanczos' method"
    )
    parser.add_argument("--no-tutorial", action="store_true", help="skip the tutorial baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--slow", type=float, default=60.0, help="seconds above which a run is not repeated")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--table", default=None, help="print a results JSON as a Markdown table and exit")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batch, one repeat")
    parser.add_argument(
        "--out", default=None, help="JSON path (default benchmarks/results/ntk_<device>.json)"
    )
    args = parser.parse_args(argv)
    if args.table:
        result = json.loads(Path(args.table).read_text())
        print(markdown_table(result))
        return result

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    model_name = args.model or ("vit_base" if device.type == "cuda" else "vit_small")
    sizes = args.n or ([32] if model_name == "vit_base" else [8, 16, 32])
    if args.quick:
        sizes, args.repeats, args.warmup = [2], 1, 0
    make, img = MODELS[model_name]
    generator = torch.Generator().manual_seed(0)
    model = make(num_classes=args.classes, generator=generator).to(device).eval()
    layers = resolve_layers(model)
    tag = device_tag(device)
    print(json.dumps(tag), flush=True)

    rows: list[dict] = []
    save = _save_factory(args, model_name, layers, model, tag, device)
    for n in sizes:
        x = torch.randn(n, 3, img, img, generator=generator).to(device)
        opts = {"repeats": args.repeats, "warmup": args.warmup, "slow": args.slow}
        fb = forward_backward(model, x)
        base = timed(fb, lambda: None, device, **opts)
        print(f"N={n} fwd+bwd {base['seconds']:.3f}s peak {base['peak_bytes'] / 2**20:.0f} MiB", flush=True)
        for kernel in args.kernels:
            entries = []
            if not args.no_tutorial:
                entries.append(("tutorial", tutorial(model, x, kernel, layers)))
            entries += [
                (m, scoring(model, x, kernel, m))
                for m in args.methods
                if m != "lanczos" or n <= args.matfree_max_n
            ]
            reference = None
            for name, fn in entries:
                try:
                    got = timed(fn, fb, device, **opts)
                except (torch.cuda.OutOfMemoryError, MemoryError) as err:
                    print(f"  {kernel:6s} {name:10s} out of memory: {err}", flush=True)
                    rows.append({"n": n, "kernel": kernel, "method": name, "error": "out of memory"})
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                values, chosen = (got["result"], name) if name == "tutorial" else got["result"]
                reference = reference or values
                err = max(abs(values[k] - reference[k]) / max(abs(reference[k]), 1e-30) for k in values)
                row = {
                    "n": n,
                    "kernel": kernel,
                    "method": name,
                    "chosen": chosen,
                    "seconds": got["seconds"],
                    "runs": got["runs"],
                    "ratio_to_fwd_bwd": got["ratio"],
                    "cpu_seconds": got["cpu_seconds"],
                    "cpu_ratio_to_fwd_bwd": got["cpu_ratio"],
                    "peak_bytes": got["peak_bytes"],
                    "fwd_bwd_seconds": got["base_seconds"],
                    "fwd_bwd_peak_bytes": base["peak_bytes"],
                    "max_rel_diff_to_first": err,
                }
                rows.append(row)
                print(
                    f"  {kernel:6s} {name:10s} ({chosen:9s}) {got['seconds']:8.3f}s "
                    f"{row['ratio_to_fwd_bwd']:7.2f}x fwd+bwd (cpu time {row['cpu_ratio_to_fwd_bwd']:6.2f}x)  peak {got['peak_bytes'] / 2**20:8.0f} MiB  "
                    f"rel.diff {err:.1e}",
                    flush=True,
                )
        save(rows, final=False)
    return save(rows, final=True)


def _save_factory(args, model_name: str, layers: dict, model, tag: dict, device: torch.device):
    def save(rows: list[dict], *, final: bool) -> dict:
        return _write(args, model_name, layers, model, tag, device, rows, final=final)

    return save


def _write(args, model_name, layers, model, tag, device, rows, *, final: bool) -> dict:
    result = {
        "benchmark": "ntk_layer_importance",
        "model": model_name,
        "classes": args.classes,
        "layers": len(layers),
        "parameters": sum(p.numel() for p in model.parameters()),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "tag": tag,
        "complete": final,
        "rows": rows,
    }
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"ntk_{device.type}.json"
    if not args.quick or args.out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        if final:
            print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
