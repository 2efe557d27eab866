"""Lanczos stopping rules on spectra with close top pairs: how often each misses the top eigenvalue.

For each test spectrum ($n = 160$: top pairs 2%, 1% and 0.5% apart, a triple, a multiplicity of three,
a cluster of eight within 1.4%, a flat, a ViT-like and a geometric spectrum) and ``--starts`` Gaussian
random starts it runs Lanczos with full reorthogonalization in float64 (numpy, on the diagonal: the
spectrum is all that matters) and records, after every step, the top two Ritz values and their
residuals. Each stopping rule is then replayed on every trajectory; reported per rule and ``tol``:
the largest relative error, the runs whose relative error $(\\lambda_{\\max} - \\theta_1)/\\lambda_{\\max}$ exceeds ``tol`` and the
mean number of matrix-vector products. Rules:

- ``residual``: $r_1 \\le \\mathrm{tol}\\,\\theta_1$ (what :func:`f3ocus.ntk.linalg.lanczos_max_eig` uses);
- ``kato_temple``: $\\min(r_1, r_1^2/\\delta) \\le \\mathrm{tol}\\,\\theta_1$, $\\delta = \\theta_1 - \\theta_2 - r_2$;
- ``block2_residual``: block Lanczos with two start vectors (Rayleigh-Ritz on the block Krylov
  space), $r_1 \\le \\mathrm{tol}\\,\\theta_1$; products count both vectors.

Writes ``benchmarks/results/lanczos_stopping.json``.

    python benchmarks/lanczos_stopping.py --starts 100 --block-starts 40
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

TOLS = (1e-2, 1e-3, 1e-4)


def spectra() -> dict[str, np.ndarray]:
    tail = np.linspace(0.8, 0.0, 156) ** 3
    return {
        "pair 2%": np.r_[1.0, 0.98, 0.93, 0.89, tail],
        "pair 1%": np.r_[1.0, 0.99, 0.92, 0.90, tail],
        "pair 0.5%": np.r_[1.0, 0.995, 0.95, 0.90, tail],
        "triple": np.r_[1.0, 0.99, 0.98, 0.90, tail],
        "multiplicity 3": np.r_[1.0, 1.0, 1.0, 0.90, tail],
        "cluster of 8": np.r_[1.0 - 0.002 * np.arange(8), tail[:152]],
        "flat": np.linspace(1.0, 0.0, 160),
        "vit-like": np.r_[1.0, 0.9903, 0.9202, 0.898, 0.8089, 0.7213, 0.7 * np.linspace(1, 0, 154) ** 2],
        "geometric": 0.97 ** np.arange(160),
    }


def trajectory(lam: np.ndarray, start: np.ndarray, steps: int) -> list[tuple[float, float, float, float]]:
    """``(theta1, r1, theta2, r2)`` after each block step (Rayleigh-Ritz on an explicit basis)."""
    basis, _ = np.linalg.qr(start)
    width = basis.shape[1]
    images = lam[:, None] * basis
    out = []
    for _ in range(steps):
        t = basis.T @ images
        ev, s = np.linalg.eigh((t + t.T) / 2)
        ritz = basis @ s[:, -2:] if len(ev) > 1 else basis @ s[:, -1:]
        res = np.linalg.norm(images @ s[:, -len(ritz.T) :] - ritz * ev[-len(ritz.T) :], axis=0)
        if len(ev) > 1:
            out.append((ev[-1], res[-1], ev[-2], res[-2]))
        else:
            out.append((ev[-1], res[-1], ev[-1], 0.0))
        w = images[:, -width:]
        for _ in range(2):
            w = w - basis @ (basis.T @ w)
        if basis.shape[1] + width > len(lam) or np.linalg.norm(w) < 1e-13:
            break
        q, _ = np.linalg.qr(w)
        basis = np.hstack([basis, q])
        images = np.hstack([images, lam[:, None] * q])
    return out


def residual(step, tol):
    t1, r1, _, _ = step
    return r1 <= tol * t1


def kato_temple(step, tol):
    t1, r1, t2, r2 = step
    gap = t1 - t2 - r2
    return (min(r1, r1 * r1 / gap) if gap > r1 else r1) <= tol * t1


def replay(trajectories, rule, tol, lam, width):
    errors, products = [], []
    for traj in trajectories:
        k = next((i for i, step in enumerate(traj) if rule(step, tol)), len(traj) - 1)
        errors.append((lam.max() - traj[k][0]) / lam.max())
        products.append(width * (k + 1))
    return int(np.sum(np.array(errors) > tol)), float(np.mean(products)), float(np.max(errors))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=100)
    parser.add_argument("--block-starts", type=int, default=40)
    parser.add_argument("--steps", type=int, default=70)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "lanczos_stopping.json"))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for name, lam in spectra().items():
        single = [trajectory(lam, rng.standard_normal((len(lam), 1)), args.steps) for _ in range(args.starts)]
        block = [trajectory(lam, rng.standard_normal((len(lam), 2)), args.steps // 2) for _ in range(args.block_starts)]
        for rule, trajs, fn, width in (
            ("residual", single, residual, 1),
            ("kato_temple", single, kato_temple, 1),
            ("block2_residual", block, residual, 2),
        ):
            for tol in TOLS:
                misses, products, worst = replay(trajs, fn, tol, lam, width)
                rows.append({"spectrum": name, "rule": rule, "tol": tol, "starts": len(trajs),
                             "misses": misses, "mean_products": products, "max_rel_error": worst})
                print(f"{name:15s} {rule:16s} tol {tol:g}: {misses:3d}/{len(trajs)} missed, "
                      f"{products:5.1f} products, worst error {worst:.1e}", flush=True)
    summary = {}
    for rule in ("residual", "kato_temple", "block2_residual"):
        for tol in TOLS:
            sel = [r for r in rows if r["rule"] == rule and r["tol"] == tol]
            summary[f"{rule} {tol:g}"] = {"misses": sum(r["misses"] for r in sel),
                                          "runs": sum(r["starts"] for r in sel)}
    print(json.dumps(summary, indent=1))
    result = {"benchmark": "lanczos_stopping", "n": 160, "args": vars(args), "summary": summary, "rows": rows}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
