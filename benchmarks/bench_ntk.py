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
    python benchmarks/bench_ntk.py --model vilt_b --n 4 --kernels loss sum output   # HF, 3129 answers

Hugging Face models (``vilt_b``, ``clip_b32``, ``llava_small``; ``benchmarks/models.py``) are built from
configs at their real sizes with random weights; each kernel is scored with ``method="auto"`` and, where
the Jacobian has at most ``--dense-max-rows`` rows, with ``method="dense"`` as the error reference.
Their results go to ``benchmarks/results/ntk_hf_<model>_<device>.json``.
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
from models import HF_MODELS, vit_base, vit_small_cifar  # noqa: E402

from f3ocus import ntk_layer_importance  # noqa: E402
from f3ocus.layers import resolve_layers  # noqa: E402
from f3ocus.ntk.prepare import default_output_fn  # noqa: E402

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
    parser.add_argument("--model", choices=sorted(MODELS) + sorted(HF_MODELS), default=None)
    parser.add_argument("--dense-max-rows", type=int, default=64, help="HF models: dense reference up to N*M rows")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--n", type=int, nargs="+", default=None, help="batch sizes")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--kernels", nargs="+", default=["output", "sum"])
    parser.add_argument("--methods", nargs="+", default=["auto", "lanczos"])
    parser.add_argument(
        "--matfree-max-n", type=int, default=8, help="largest N for the (slow) matrix-free 'lanczos' method"
    )
    parser.add_argument("--no-tutorial", action="store_true", help="skip the tutorial baseline")
    parser.add_argument(
        "--hf-methods", nargs="*", default=["auto"], help="HF models: methods to time (after the dense reference)"
    )
    parser.add_argument(
        "--sketch", nargs="*", default=[], metavar="RANK:POWER",
        help="HF models, kernel 'output': also time method='sketch' with these rank:power settings",
    )
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
    if model_name in HF_MODELS:
        return run_hf(args, model_name, device)
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


def hf_forward_backward(model, batch, kw):
    """One forward and backward pass of the summed kernel outputs (the unit of the HF ratios)."""
    output_fn = kw.get("output_fn") or default_output_fn

    def run():
        model.zero_grad(set_to_none=True)
        y = output_fn(model(**batch))
        if kw.get("kernel") == "loss":
            y = kw["loss_fn"](y, kw["targets"])
        y.sum().backward()

    return run


def run_hf(args, model_name: str, device: torch.device) -> dict:
    """Every kernel of one HF model: ``auto`` against one forward+backward, ``dense`` where it fits."""
    tag = device_tag(device)
    print(json.dumps(tag), flush=True)
    rows: list[dict] = []
    opts = {"repeats": args.repeats, "warmup": args.warmup, "slow": args.slow}
    for n in args.n or [4]:
        model, batch, kernels = HF_MODELS[model_name](n)
        model.to(device)
        batch = {k: v.to(device) for k, v in batch.items()}
        for kernel in args.kernels if args.model and set(args.kernels) <= set(kernels) else list(kernels):
            kw = dict(kernels[kernel])
            if "targets" in kw:
                kw["targets"] = kw["targets"].to(device)
            fb = hf_forward_backward(model, batch, kw)
            ref = None
            runs = [("dense", {})] + [(m, {}) for m in args.hf_methods]
            if kw.get("kernel", "output") == "output":
                runs += [("sketch", dict(zip(("rank", "power"), map(int, rp.split(":")), strict=True))) for rp in args.sketch]
            for method, options in runs:
                def fn(method=method, model=model, batch=batch, kw=kw, options=options):
                    s = ntk_layer_importance(model, batch, method=method, seed=0, throw=False, **kw, **options)
                    return dict(s), s.stats

                if method == "dense":
                    with torch.no_grad():
                        y = (kw.get("output_fn") or default_output_fn)(model(**batch))
                    rows_needed = n * (y[0].numel() if kw.get("kernel", "output") == "output" else 1)
                    if rows_needed > args.dense_max_rows:
                        continue
                    got = timed(fn, fb, device, repeats=1, warmup=0, slow=args.slow)
                    ref = got["result"][0]
                    continue
                got = timed(fn, fb, device, **opts)
                values, stats = got["result"]
                err = None if ref is None else max(abs(values[k] - ref[k]) / max(abs(ref[k]), 1e-30) for k in ref)
                row = {
                    "n": n, "kernel": kernel, "method": method, "chosen": stats["method"],
                    "num_outputs": stats["num_outputs"], "coupled": stats["coupled"], "layers": len(values),
                    "seconds": got["seconds"], "runs": got["runs"], "ratio_to_fwd_bwd": got["ratio"],
                    "cpu_ratio_to_fwd_bwd": got["cpu_ratio"], "peak_bytes": got["peak_bytes"],
                    "fwd_bwd_seconds": got["base_seconds"], "max_rel_err_to_dense": err,
                    "parameters": sum(p.numel() for p in model.parameters()),
                    "options": options,
                    "estimate": bool(stats["extra"].get("estimate", False)),
                    "max_estimated_error": max(stats["errors"].values(), default=0.0),
                    "scores": values,
                    "errors": stats["errors"],
                }
                rows.append(row)
                print(
                    f"N={n} {kernel:6s} {method}->{stats['method']:9s} {options or ''} {got['seconds']:8.2f}s {got['ratio']:6.2f}x "
                    f"fwd+bwd (cpu {got['cpu_ratio']:.2f}x) peak {got['peak_bytes'] / 2**20:.0f} MiB "
                    f"err {err if err is None else f'{err:.1e}'}",
                    flush=True,
                )
                out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"ntk_hf_{model_name}_{device.type}.json"
                out.write_text(json.dumps({"benchmark": "ntk_layer_importance_hf", "model": model_name, "tag": tag,
                                           "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    return {"rows": rows}


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
