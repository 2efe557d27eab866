"""Where the time of ``kernel="output"`` scoring goes, in seconds and in floating-point operations.

On the small ViT of ``bench_ntk.py`` it times, medians over ``--repeats`` runs:

- ``fwd+bwd``: one forward and backward pass of the batch (the unit of every ratio);
- ``backprops``: the forward pass and the $M$ backprop-only backward passes (vmapped), alone;
- ``factored_lanczos`` / ``factored_gram``: the whole ``"factored"`` method with every layer solved by
  Lanczos (``eig="lanczos"``) or by a Gram built from the factors (``eig="gram"``), its hooked pass
  (forward, backprops, factors) and the rest of each (``lanczos_part``, ``gram_part``);
- ``persample``: the whole ``"persample"`` method, its per-sample rows and the rest (Grams, eigvalsh).

and counts (``torch.utils.flop_counter`` for passes, closed forms for the rest):

- ``fwd_bwd_flops``: one forward+backward;
- ``backprop_flops``: the forward and the $M$ backprop passes;
- ``gram_flops``: $\\sum_l 2 (NM)^2 P_l$; ``rows_flops``: the per-sample weight gradients of the Linear
  layers, $\\sum 2 NM S\\, i\\, o$;
- ``lanczos_step_flops``: one factored Lanczos step over all layers, $\\sum 2 \\cdot 2 N S (i + M) o$,
  and ``lanczos_all_steps``: the steps the run took, layer by layer.

Each is also given in units of ``fwd_bwd_flops``, a machine-independent view of the floors. Results go
to ``benchmarks/results/ntk_breakdown_<device>.json``.

``--count-only`` skips the timings and counts on one sample, scaled by $N$ (every count is linear in $N$
but the Grams, whose closed form is exact), with Linear shapes and token counts from forward hooks and
``--steps`` Lanczos steps per layer with a Linear weight (no token is dropped): the arithmetic floors of
a model too large to time here, e.g. ViT-B/16 at $N = 32$ (written to ``ntk_breakdown_<model>_count.json``).

    python benchmarks/breakdown_ntk.py --n 16
    python benchmarks/breakdown_ntk.py --model vit_base --n 32 --count-only
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_ntk import device_tag  # noqa: E402
from models import vit_base, vit_small_cifar  # noqa: E402

from f3ocus import ntk_layer_importance  # noqa: E402
from f3ocus.ntk.factors import hooked_factors as _pass  # noqa: E402
from f3ocus.ntk.prepare import scoring_problem  # noqa: E402
from f3ocus.ntk.rows import per_sample_jacobian_blocks  # noqa: E402


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def flops_of(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def backprops(model: torch.nn.Module, x: torch.Tensor, m: int) -> None:
    """Forward, then the ``m`` backprop-only passes to every Linear output, vmapped (as the methods do)."""
    outs: list[torch.Tensor] = []
    linears = [mod for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    handles = [mod.register_forward_hook(lambda mod, i, o: outs.append(o)) for mod in linears]
    try:
        with torch.enable_grad():
            for p in model.parameters():
                p.requires_grad_(True)
            out = model(x)
            cot = out.new_zeros(m, *out.shape)
            cot[torch.arange(m), :, torch.arange(m)] = 1.0
            torch.autograd.grad(out, outs, cot, is_grads_batched=True)
    finally:
        for h in handles:
            h.remove()


def count_only(model: torch.nn.Module, img: int, n: int, m: int, steps: int) -> dict:
    """Closed-form operation counts on one sample, scaled by ``n`` (see the module docstring)."""
    from f3ocus.layers import resolve_layers

    x1 = torch.randn(1, 3, img, img)
    shapes: dict[int, tuple[int, int, int]] = {}  # id(weight) -> (tokens, i, o)

    def hook(mod: torch.nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        shapes[id(mod.weight)] = (inputs[0].numel() // mod.in_features, mod.in_features, mod.out_features)

    linears = [mod for mod in model.modules() if type(mod) is torch.nn.Linear]
    handles = [mod.register_forward_hook(hook) for mod in linears]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        model(x1).sum().backward()

    params = dict(model.named_parameters())
    layers = resolve_layers(model)
    rows = n * m
    flops = {
        "fwd_bwd": n * flops_of(fwd_bwd),
        "backprops": n * flops_of(lambda: backprops(model, x1, m)),
        "gram": sum(2.0 * rows * rows * sum(params[k].numel() for k in names) for names in layers.values()),
        "rows": 0.0,
        "lanczos_step": 0.0,
    }
    for names in layers.values():
        for k in names:
            if id(params[k]) in shapes:
                tokens, i, o = shapes[id(params[k])]
                flops["rows"] += 2.0 * rows * tokens * i * o
                flops["lanczos_step"] += 4.0 * n * tokens * (i + m) * o
    flops["lanczos_all_steps"] = steps * flops["lanczos_step"]
    return flops


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("vit_small", "vit_base"), default="vit_small")
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--count-only", action="store_true", help="operation counts only, no timings")
    parser.add_argument("--steps", type=int, default=13, help="Lanczos steps per layer for --count-only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    if args.count_only:
        make, img = {"vit_small": (vit_small_cifar, 32), "vit_base": (vit_base, 224)}[args.model]
        model = make(num_classes=args.classes, generator=torch.Generator().manual_seed(0)).eval()
        flops = count_only(model, img, args.n, args.classes, args.steps)
        result = {
            "benchmark": "ntk_breakdown_count",
            "model": args.model,
            "n": args.n,
            "classes": args.classes,
            "steps": args.steps,
            "flops": flops,
            "flops_in_fwd_bwd": {k: v / flops["fwd_bwd"] for k, v in flops.items()},
        }
        name = f"ntk_breakdown_{args.model}_count.json"
        out = Path(args.out or Path(__file__).parent / "results" / name)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print("flops_in_fwd_bwd", {k: round(v, 2) for k, v in result["flops_in_fwd_bwd"].items()})
        print(f"wrote {out}")
        return result
    if args.model != "vit_small":
        parser.error("timings run on vit_small only; use --count-only for vit_base")
    generator = torch.Generator().manual_seed(0)
    model = vit_small_cifar(num_classes=args.classes, generator=generator).eval()
    x = torch.randn(args.n, 3, 32, 32, generator=generator)
    m, n = args.classes, args.n

    def fwd_bwd() -> None:
        model.zero_grad(set_to_none=True)
        model(x).sum().backward()

    seconds = {
        "fwd_bwd": median_seconds(fwd_bwd, args.repeats),
        "backprops": median_seconds(lambda: backprops(model, x, m), args.repeats),
    }
    runs = {
        "factored_lanczos": dict(method="factored", eig="lanczos"),
        "factored_gram": dict(method="factored", eig="gram"),
        "persample": dict(method="persample"),
    }
    for key, kw in runs.items():
        seconds[key] = median_seconds(
            lambda kw=kw: ntk_layer_importance(model, x, seed=0, **kw), args.repeats
        )
    with scoring_problem(model, x) as problem:
        seconds["factored_pass"] = median_seconds(lambda: _pass(problem, chunk_size=None), args.repeats)
        seconds["persample_rows"] = median_seconds(
            lambda: per_sample_jacobian_blocks(problem, sample_major=False), args.repeats
        )
        factors, _ = _pass(problem, chunk_size=None)
        sizes = problem.layer_sizes()
    seconds["lanczos_part"] = seconds["factored_lanczos"] - seconds["factored_pass"]
    seconds["gram_part"] = seconds["factored_gram"] - seconds["factored_pass"]
    seconds["persample_grams"] = seconds["persample"] - seconds["persample_rows"]
    steps = ntk_layer_importance(model, x, method="factored", eig="lanczos", seed=0).stats["iterations"]

    rows = n * m
    flops = {
        "fwd_bwd": flops_of(fwd_bwd),
        "backprops": flops_of(lambda: backprops(model, x, m)),
        "gram": sum(2.0 * rows * rows * p for p in sizes.values()),
        "rows": 0.0,
        "lanczos_step": 0.0,
    }
    for calls in factors.values():
        for a, _, o in calls:
            tokens, i = a.shape[0] // n, a.shape[1]  # live tokens per sample
            flops["rows"] += 2.0 * rows * tokens * i * o
            flops["lanczos_step"] += 4.0 * n * tokens * (i + m) * o
    # Each layer runs its own number of steps; a step of one layer costs its share of lanczos_step.
    per_layer_step: dict[str, float] = {}
    for name, calls in factors.items():
        layer = next(k for k, names in problem.layers.items() if name in names)
        for a, _, o in calls:
            tokens, i = a.shape[0] // n, a.shape[1]
            per_layer_step[layer] = per_layer_step.get(layer, 0.0) + 4.0 * n * tokens * (i + m) * o
    flops["lanczos_all_steps"] = sum(per_layer_step[k] * steps[k] for k in per_layer_step)
    result = {
        "benchmark": "ntk_breakdown",
        "model": "vit_small",
        "n": n,
        "classes": m,
        "tag": device_tag(device),
        "repeats": args.repeats,
        "seconds": seconds,
        "ratio_to_fwd_bwd": {k: v / seconds["fwd_bwd"] for k, v in seconds.items()},
        "flops": flops,
        "flops_in_fwd_bwd": {k: v / flops["fwd_bwd"] for k, v in flops.items()},
        "lanczos_steps": steps,
    }
    out = Path(args.out or Path(__file__).parent / "results" / f"ntk_breakdown_{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for key in ("ratio_to_fwd_bwd", "flops_in_fwd_bwd"):
        print(key, {k: round(v, 2) for k, v in result[key].items()})
    print("lanczos steps", steps)
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
