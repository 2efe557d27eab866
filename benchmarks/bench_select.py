r"""Layer selection: every solver against the exact optimum and the exact front, on heavy-tailed instances.

Instances (seeded): raw scores $\lambda_{kl} = \exp(\sigma(\sqrt{\rho}\, g_l + \sqrt{1-\rho}\, e_{kl}))$ with
$g, e$ standard normal, $\sigma = 2$ (heavy-tailed, lognormal) and $\rho = 1/2$ (a layer effect shared by
the clients, so the clients' own top layers pile up on the same layers and the client-only top-k
baseline is far from balanced); ``normalize="sum"``; budgets uniform in 2..8; tradeoff
$t = \tau L / K$ for $\tau \in \{0.2, 1\}$ (the scale at which the diversity cost of one more client on a
layer, $2t\,n_l / L$, is comparable to a normalized score; top-k is 10-150% off the optimum there).

For every solver in ``available_solvers()`` and every $K \in \{10, 50, 200\}$, $L \in \{24, 48\}$, $\tau$:

- ``gap``: $(f^\star - f) / |f^\star|$ with $f = \text{importance} - t\cdot\text{diversity}$ of the
  returned plan and $f^\star$ the exact optimum (:func:`f3ocus.selection.exact.exact_optimum`);
- ``hv_ratio``: hypervolume of the solver's front (multi-objective solvers: ``plan.front``; single-objective
  ones: the one returned point) over the hypervolume of the exact supported front
  (:func:`f3ocus.selection.exact.exact_front`). Both are computed by ``pymoo.indicators.hv.HV`` in a
  normalized space: with $A$ the exact max-importance end and $B$ the exact min-diversity end of the
  front, $\hat f_1 = (I_A - I)/(I_A - I_B)$ and $\hat f_2 = (D - D_B)/(D_A - D_B)$ (both minimized, the exact
  front spans $[0,1]^2$) and the reference point is $(1.1, 1.1)$. Points beyond it add nothing. A front
  equal to the exact supported front has ratio 1 (the non-supported points between its vertices can push a
  front slightly above 1);
- the variant ``mopso:local_search=False`` shows MOPSO without its final local improvement pass;
- ``seconds``: the solver's wall time (``stats["seconds"]``, the exact reference excluded), and
  ``cpu_seconds``: the process CPU time of the ``select_layers`` call (all threads), the steadier number
  on a shared machine.

Then the exact solver alone for $K$ up to 1000 and $L$ up to 64. Results go to
``benchmarks/results/select_<device>.json`` with the CPU model, cores, library versions, git commit and
seeds.

    python benchmarks/bench_select.py            # the full table (tens of minutes on 2 cores)
    python benchmarks/bench_select.py --quick    # smoke run (K=10, L=24, one tradeoff)
    python benchmarks/bench_select.py --table benchmarks/results/select_cpu.json   # markdown tables
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pymoo
import scipy
from pymoo.indicators.hv import HV

import f3ocus
from f3ocus import available_solvers, select_layers
from f3ocus.selection.exact import exact_front, exact_optimum
from f3ocus.selection.inputs import normalize_scores
from f3ocus.selection.problem import SelectionProblem

REF_POINT = np.array([1.1, 1.1])


def instance(K: int, L: int, seed: int, sigma: float = 2.0, rho: float = 0.5, b_max: int = 8):  # noqa: N803
    """Raw heavy-tailed scores ``(K, L)`` and budgets uniform in ``2..min(b_max, L)``."""
    rng = np.random.default_rng(seed)
    z = np.sqrt(rho) * rng.standard_normal(L) + np.sqrt(1.0 - rho) * rng.standard_normal((K, L))
    return np.exp(sigma * z), rng.integers(2, min(b_max, L) + 1, size=K)


def device() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"kind": "cpu", "cpu": model, "cores": cores, "platform": platform.platform()}


def versions() -> dict:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {
        "f3ocus": f3ocus.__version__,
        "git_commit": commit,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pymoo": pymoo.__version__,
    }


class FrontNormalizer:
    """Maps (importance, diversity) to the normalized minimization space of the exact front."""

    def __init__(self, sel: SelectionProblem, front: np.ndarray) -> None:
        imp, div = sel.importance(front), sel.diversity(front)
        self.i_a, self.i_b = float(imp.max()), float(imp.min())
        self.d_a, self.d_b = float(div.max()), float(div.min())
        self.exact_hv = self.hv(imp, div)

    def hv(self, importance, diversity) -> float:
        di = max(self.i_a - self.i_b, 1e-12)
        dd = max(self.d_a - self.d_b, 1e-12)
        F = np.column_stack(
            [(self.i_a - np.asarray(importance)) / di, (np.asarray(diversity) - self.d_b) / dd]
        )  # noqa: N806
        return float(HV(ref_point=REF_POINT)(F))


def parse_variant(spec: str) -> tuple[str, dict]:
    """``"mopso:local_search=False,n_gen=50"`` -> ``("mopso", {"local_search": False, "n_gen": 50})``."""
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(",")):
        key, _, value = item.partition("=")
        options[key] = ast.literal_eval(value)
    return name, options


def bench_solvers(sizes, taus, seeds, solvers, log) -> list[dict]:
    rows = []
    for (K, L), seed in ((kl, s) for kl in sizes for s in seeds):  # noqa: N806
        raw, budgets = instance(K, L, seed)
        sel = SelectionProblem(normalize_scores(raw, "sum"), budgets)
        t0 = time.perf_counter()
        front = exact_front(sel)
        norm = FrontNormalizer(sel, front)
        log(f"K={K} L={L} seed={seed}: exact front {len(front)} points in {time.perf_counter() - t0:.2f}s")
        for tau in taus:
            t = tau * L / K
            optimum = float(sel.scalarized(exact_optimum(sel, t), t))
            for name in solvers:
                cpu = time.process_time()
                solver, options = parse_variant(name)
                plan = select_layers(raw, budgets, solver=solver, tradeoff=t, seed=seed, **options)
                cpu = time.process_time() - cpu
                value = float(sel.scalarized(plan.mask, t))
                if plan.front is not None:
                    hv = norm.hv(plan.front.importance, plan.front.diversity)
                else:
                    hv = norm.hv([plan.importance], [plan.diversity])
                row = {
                    "solver": name,
                    "K": K,
                    "L": L,
                    "seed": seed,
                    "tau": tau,
                    "tradeoff": t,
                    "optimum": optimum,
                    "value": value,
                    "gap": (optimum - value) / abs(optimum),
                    "hv": hv,
                    "hv_exact": norm.exact_hv,
                    "hv_ratio": hv / norm.exact_hv if norm.exact_hv > 0 else float("nan"),
                    "front_points": None if plan.front is None else len(plan.front),
                    "seconds": plan.stats["seconds"],
                    "cpu_seconds": cpu,
                    "evaluations": plan.stats.get("evaluations"),
                }
                rows.append(row)
                log(
                    f"  tau={tau:<4} {name:>7}: gap {row['gap']:8.4%}  hv/hv* {row['hv_ratio']:.3f}  "
                    f"{row['seconds']:7.2f}s wall {cpu:7.2f}s cpu"
                )
    return rows


def bench_exact(sizes, taus, seed, log, repeats=5) -> list[dict]:
    """``solve_exact`` (cycle canceling where it applies) against the flow LP baseline, interleaved.

    ``seconds`` is the median over ``repeats`` of the dispatched exact solver, ``lp_seconds`` the median
    of the windowed flow LP on the same instance, timed alternately in the same loop (the machine is
    shared); ``speedup = lp_seconds / seconds``. Both values must agree (both are exact).
    """
    from f3ocus.selection.exact import _solve_fixed_total, solve_exact

    rows = []
    for K, L in sizes:  # noqa: N806
        raw, budgets = instance(K, L, seed)
        sel = SelectionProblem(normalize_scores(raw, "sum"), budgets)
        for tau in taus:
            t = tau * L / K
            fast, slow = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                plan, info = solve_exact(sel, t)
                fast.append(time.perf_counter() - start)
                start = time.perf_counter()
                lp = _solve_fixed_total(sel, t, int(sel.budgets.sum()))
                slow.append(time.perf_counter() - start)
            value, lp_value = float(sel.scalarized(plan, t)), float(sel.scalarized(lp, t))
            if abs(value - lp_value) > 1e-9 * max(1.0, abs(lp_value)):
                raise RuntimeError(f"exact K={K} L={L} tau={tau}: {info['method']} {value} != LP {lp_value}")
            row = {"K": K, "L": L, "seed": seed, "tau": tau, "tradeoff": t, "method": info["method"],
                   "seconds": float(np.median(fast)), "lp_seconds": float(np.median(slow)), "repeats": repeats,
                   "value": value}
            row["speedup"] = row["lp_seconds"] / row["seconds"]
            rows.append(row)
            log(f"exact K={K:5d} L={L:3d} tau={tau:<4}: {row['seconds']:.3f}s ({info['method']}), "
                f"LP {row['lp_seconds']:.3f}s, x{row['speedup']:.1f}")
    return rows


def vilt_costs(L: int) -> np.ndarray:  # noqa: N803
    """ViLT-like layer sizes in parameters: embeddings, ``L - 4`` blocks, pooler, layernorm, VQA head."""
    return np.array([25.9e6] + [7.1e6] * (L - 4) + [0.6e6, 1.5e3, 6.0e6])


def constrained_instance(K: int, L: int, seed: int):  # noqa: N803
    """Heavy-tailed scores, ViLT-like costs, capacities of 10-40% of the model, 10% forbidden cells
    (never the head), the head (last layer) required."""
    raw, _ = instance(K, L, seed)
    rng = np.random.default_rng(seed + 1)
    costs = vilt_costs(L)
    capacities = rng.uniform(0.1, 0.4, K) * costs.sum()
    forbidden = rng.random((K, L)) < 0.1
    forbidden[:, L - 1] = False
    return raw, costs, capacities, forbidden


def bench_constrained(sizes, taus, seeds, solvers, log, time_limit=10.0) -> list[dict]:
    """Every solver at its defaults against the MIP on :func:`constrained_instance` (cost budgets)."""
    rows = []
    for (K, L), seed in ((kl, s) for kl in sizes for s in seeds):  # noqa: N806
        raw, costs, capacities, forbidden = constrained_instance(K, L, seed)
        kw = dict(costs=costs, required=[L - 1], forbidden=forbidden)
        for tau in taus:
            t = tau * L / K
            t0 = time.perf_counter()
            ex = select_layers(raw, capacities, solver="exact", tradeoff=t, time_limit=time_limit, **kw)
            mip_seconds = time.perf_counter() - t0
            best, bound = float(ex.stats["scalarized"]), float(ex.stats["bound"])
            row = {"K": K, "L": L, "seed": seed, "tau": tau, "tradeoff": t, "mip_seconds": mip_seconds,
                   "mip_value": best, "mip_bound": bound, "mip_gap": float(ex.stats["mip_gap"]), "solvers": {}}
            log(f"[constrained] K={K} L={L} tau={tau}: MIP {mip_seconds:.2f}s gap {row['mip_gap']:.2e}")
            for spec in solvers:
                name, options = parse_variant(spec)
                if name == "exact":
                    continue
                c0, w0 = time.process_time(), time.perf_counter()
                plan = select_layers(raw, capacities, solver=name, tradeoff=t, seed=seed, **kw, **options)
                value = float(plan.stats["scalarized"])
                best = max(best, value)
                row["solvers"][spec] = {"value": value, "seconds": time.perf_counter() - w0,
                                        "cpu_seconds": time.process_time() - c0,
                                        "gap_to_bound": (bound - value) / abs(bound)}
            row["best_value"] = best
            for entry in row["solvers"].values():
                entry["gap"] = (best - entry["value"]) / abs(best)
            log("   " + ", ".join(f"{k} {v['gap']:.2%} {v['seconds']:.1f}s" for k, v in row["solvers"].items()))
            rows.append(row)
    return rows


def render_exact(result: dict) -> str:
    """Markdown table of an ``--exact-only`` run: median seconds of the exact solver and of the flow LP."""
    lines = ["| K | L | tau | method | exact s | flow LP s | speedup |", "| ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    lines += [f"| {r['K']} | {r['L']} | {r['tau']} | {r['method']} | {r['seconds']:.3f} | {r['lp_seconds']:.3f} | "
              f"{r['speedup']:.1f}x |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def render_constrained(result: dict) -> str:
    """Markdown table of a ``--constrained`` run: gap to the best plan found, and CPU seconds."""
    rows = result["rows"]
    names = list(rows[0]["solvers"]) if rows else []
    head = "| K | L | tau | MIP s | MIP gap to bound | " + " | ".join(names) + " |\n"
    head += "|" + "---|" * (5 + len(names)) + "\n"
    lines = [
        f"| {r['K']} | {r['L']} | {r['tau']} | {r['mip_seconds']:.1f} | {r['mip_gap']:.2%} | "
        + " | ".join(f"{r['solvers'][n]['gap']:.2%} ({r['solvers'][n]['cpu_seconds']:.1f} s)" for n in names) + " |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def render_markdown(result: dict) -> str:
    """The tables of the docs page from a results JSON: a summary per solver and K (worst gap, slowest CPU
    seconds), then every cell at every tradeoff of the run, then the exact solver's scaling if it ran."""
    rows = result["solvers"]
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    ks = sorted({r["K"] for r in rows})
    taus = sorted({r["tau"] for r in rows})
    t_ref = 1.0 if 1.0 in taus else taus[-1]
    lines = [
        "| solver | "
        + " | ".join(f"worst gap K={k}" for k in ks)
        + " | "
        + " | ".join(f"max CPU s K={k}" for k in ks)
        + " |",
        "| --- |" + " ---: |" * (2 * len(ks)),
    ]
    for name in solvers:
        gaps = [max(r["gap"] for r in rows if r["solver"] == name and r["K"] == k) for k in ks]
        secs = [max(r.get("cpu_seconds", r["seconds"]) for r in rows if r["solver"] == name and r["K"] == k)
                for k in ks]
        lines.append(
            f"| `{name}` | "
            + " | ".join(f"{g:.2%}" for g in gaps)
            + " | "
            + " | ".join(f"{x:.2f}" for x in secs)
            + " |"
        )
    lines += [
        "",
        "| K | L | solver | " + " | ".join(f"gap τ={t:g}" for t in taus)
        + f" | HV / HV* (τ={t_ref:g}) | s (τ={t_ref:g}) | max CPU s |",
        "| ---: | ---: | --- |" + " ---: |" * (len(taus) + 3),
    ]
    for k, n_layers in sorted({(r["K"], r["L"]) for r in rows}):
        for name in solvers:
            cell = {r["tau"]: r for r in rows if r["solver"] == name and r["K"] == k and r["L"] == n_layers}
            one = cell.get(t_ref) or next(iter(cell.values()))
            gap = " | ".join(f"{cell[t]['gap']:.2%}" if t in cell else "" for t in taus)
            cpu = max(c.get("cpu_seconds", float("nan")) for c in cell.values())
            lines.append(
                f"| {k} | {n_layers} | `{name}` | {gap} | {one['hv_ratio']:.3f} | {one['seconds']:.2f} | {cpu:.2f} |"
            )
    exact = result.get("exact") or []
    if exact:
        e_taus = sorted({r["tau"] for r in exact})
        lines += ["", "| K | L | " + " | ".join(f"exact s (τ={t:g})" for t in e_taus) + " |",
                  "| ---: | ---: |" + " ---: |" * len(e_taus)]
        for k, n_layers in sorted({(r["K"], r["L"]) for r in exact}):
            secs = {r["tau"]: r["seconds"] for r in exact if r["K"] == k and r["L"] == n_layers}
            lines.append(f"| {k} | {n_layers} | " + " | ".join(f"{secs[t]:.3f}" if t in secs else "" for t in e_taus)
                         + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: K=10, L=24, one tradeoff")
    parser.add_argument(
        "--solvers",
        nargs="*",
        default=None,
        help="solver names, or variants 'name:option=value,...'; default: every available solver and "
        "'mopso:local_search=False' (MOPSO without its final local improvement pass)",
    )
    parser.add_argument("--seeds", nargs="*", type=int, default=[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--table", type=Path, default=None, help="print the markdown tables of a results JSON"
    )
    parser.add_argument(
        "--constrained", action="store_true",
        help="only the constrained instances (ViLT-like costs, required head, 10%% forbidden cells)",
    )
    parser.add_argument("--sizes", nargs="*", default=None, help="K,L pairs for --constrained, e.g. 50,48")
    parser.add_argument("--taus", nargs="*", type=float, default=None)
    parser.add_argument("--skip-exact", action="store_true", help="leave out the exact-solver scaling table")
    parser.add_argument("--exact-only", action="store_true",
                        help="only the exact-solver scaling table (select_exact_<device>.json)")
    args = parser.parse_args(argv)
    if args.table is not None:
        data = json.loads(args.table.read_text())
        render = {"select_constrained": render_constrained, "select_exact": render_exact}.get(
            data.get("benchmark"), render_markdown)
        print(render(data), end="")
        return args.table
    solvers = args.solvers or [*available_solvers(), "mopso:local_search=False"]
    if args.exact_only:
        return main_exact(args)
    if args.constrained:
        return main_constrained(args, [s for s in solvers if s != "mopso:local_search=False"])
    if args.quick:
        sizes, taus, exact_sizes = [(10, 24)], [1.0], [(10, 24), (200, 48)]
    else:
        sizes = [(K, L) for K in (10, 50, 200) for L in (24, 48)]
        taus = args.taus or [0.2, 1.0]
        if args.sizes:
            sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes]
        exact_sizes = [(K, L) for K in (10, 50, 200, 500, 1000) for L in (24, 48, 64)]

    def log(msg):
        print(msg, flush=True)

    dev = device()
    log(f"{dev['cpu']} ({dev['cores']} cores); solvers: {', '.join(solvers)}")
    result = {
        "benchmark": "select",
        "device": dev,
        "versions": versions(),
        "seeds": args.seeds,
        "instance": {
            "sigma": 2.0,
            "rho": 0.5,
            "budgets": "uniform 2..8",
            "normalize": "sum",
            "tradeoff": "tau * L / K",
        },
        "hv": {"space": "normalized to the exact supported front's ends", "ref_point": REF_POINT.tolist()},
        "quick": bool(args.quick),
        "solvers": bench_solvers(sizes, taus if not args.quick else [1.0], args.seeds, solvers, log),
        "exact": [] if args.skip_exact else bench_exact(exact_sizes, taus, args.seeds[0], log),
    }
    out = (
        args.out
        or Path(__file__).parent / "results" / f"select_{dev['kind']}{'_quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    log(f"wrote {out}")
    return out


def main_exact(args) -> Path:
    """``--exact-only``: the exact solver against the flow LP for K up to 1000, L up to 64."""
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes] if args.sizes else [
        (K, L) for K in (10, 50, 200, 500, 1000) for L in (24, 48, 64)]
    dev = device()
    out = args.out or Path(__file__).parent / "results" / f"select_exact_{dev['kind']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = bench_exact(sizes, args.taus or [0.2, 1.0], args.seeds[0], lambda m: print(m, flush=True))
    out.write_text(json.dumps({"benchmark": "select_exact", "device": dev, "versions": versions(),
                               "seeds": args.seeds[:1], "rows": rows}, indent=1))
    print(f"wrote {out}", flush=True)
    return out


def main_constrained(args, solvers) -> Path:
    """``--constrained``: the rows go to ``select_constrained_<device>.json`` after every instance."""
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes] if args.sizes else [
        (K, L) for K in (10, 50, 200) for L in (16, 48)]
    taus = args.taus or [0.2, 1.0]
    dev = device()
    out = args.out or Path(__file__).parent / "results" / f"select_constrained_{dev['kind']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": "select_constrained", "device": dev, "versions": versions(), "seeds": args.seeds,
              "instance": {"scores": "as the unconstrained table", "costs": "ViLT-like parameters",
                           "capacities": "uniform 10-40% of the model", "required": "head",
                           "forbidden": "10% of the cells", "tradeoff": "tau * L / K", "mip_time_limit": 10.0},
              "rows": []}
    for K, L in sizes:  # noqa: N806
        result["rows"] += bench_constrained([(K, L)], taus, args.seeds, solvers, lambda m: print(m, flush=True))
        out.write_text(json.dumps(result, indent=1))  # incremental: a killed run keeps what it finished
    print(f"wrote {out}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
