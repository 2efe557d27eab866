"""Brute-force references for the federated loop, in float64 numpy.

These are slow and simple on purpose: tests check the fast paths against them, and users can check
their own aggregation code against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["masked_fedavg_reference", "masked_server_step_reference"]


def masked_fedavg_reference(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    num_samples: Sequence[float],
) -> dict[str, np.ndarray]:
    """Masked FedAvg by dense stacking: $\\theta^{\\text{new}} = \\sum_k w_k \\theta_k$ with
    $w_k = m_k n_k / \\sum_j m_j n_j$, $m_k = 1$ if client $k$ sent the parameter (else its row is a
    zero placeholder), and the global value where $\\sum_j m_j = 0$.

    Args:
        global_state: ``{name: tensor}``.
        client_states: One ``{name: tensor}`` per client (subsets of the global names).
        num_samples: One positive count per client.

    Returns:
        ``{name: float64 ndarray}`` with the global names.
    """
    n = np.asarray(num_samples, dtype=np.float64)
    out: dict[str, np.ndarray] = {}
    for name, g in global_state.items():
        g64 = g.detach().cpu().to(torch.float64).numpy()
        rows = (
            np.stack(
                [
                    s[name].detach().cpu().to(torch.float64).numpy() if name in s else np.zeros_like(g64)
                    for s in client_states
                ]
            )
            if client_states
            else np.zeros((0, *g64.shape))
        )
        m = np.array([name in s for s in client_states], dtype=np.float64)
        if m.sum() == 0:
            out[name] = g64.copy()
            continue
        w = m * n / (m * n).sum()
        out[name] = np.tensordot(w, rows, axes=1)
    return out


def masked_server_step_reference(
    global_state: Mapping[str, torch.Tensor],
    client_states: Sequence[Mapping[str, torch.Tensor]],
    num_samples: Sequence[float],
    *,
    optimizer: str = "adam",
    state: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    server_round: int = 1,
    eta: float = 0.1,
    beta_1: float = 0.9,
    beta_2: float = 0.99,
    tau: float = 1e-3,
    server_momentum: float = 0.0,
    server_learning_rate: float = 1.0,
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """One server-optimizer step on the masked mean, by hand in float64 (Reddi et al., ICLR 2021).

    With $\\bar\\theta$ the masked mean (:func:`masked_fedavg_reference`; the global value where nobody
    sent a parameter) and $\\Delta = \\bar\\theta - \\theta$ (zero on untrained parameters):

    - ``"adam"``: $m \\leftarrow \\beta_1 m + (1-\\beta_1)\\Delta$, $v \\leftarrow \\beta_2 v + (1-\\beta_2)\\Delta^2$,
      $\\theta \\leftarrow \\theta + \\eta_r m / (\\sqrt v + \\tau)$ with
      $\\eta_r = \\eta \\sqrt{1-\\beta_2^{r+1}} / (1-\\beta_1^{r+1})$ (Flower's FedAdam);
    - ``"yogi"``: the same $m$, $v \\leftarrow v - (1-\\beta_2)\\Delta^2 \\operatorname{sign}(v - \\Delta^2)$,
      step $\\eta\\, m / (\\sqrt v + \\tau)$;
    - ``"adagrad"``: $m \\leftarrow \\Delta$ ($\\beta_1 = 0$), $v \\leftarrow v + \\Delta^2$, step as yogi;
    - ``"avgm"``: $u \\leftarrow \\mu u + (\\theta - \\bar\\theta)$ (or $u = \\theta - \\bar\\theta$ in the
      first step), $\\theta \\leftarrow \\theta - \\eta_s u$.

    Parameters that no client sent keep their value exactly, whatever the moments say.

    Args:
        global_state: ``{name: tensor}`` at the start of the round.
        client_states: One ``{name: tensor}`` per client (subsets of the global names).
        num_samples: One positive weight per client.
        optimizer: ``"adam"``, ``"yogi"``, ``"adagrad"`` or ``"avgm"``.
        state: The moments returned by the previous step (None in the first round).
        server_round: The round $r$ (FedAdam's bias correction).
        eta: FedOpt's server learning rate $\\eta$.
        beta_1: First-moment decay $\\beta_1$ (ignored by ``"adagrad"``).
        beta_2: Second-moment decay $\\beta_2$.
        tau: FedOpt's adaptivity $\\tau$.
        server_momentum: FedAvgM's $\\mu$.
        server_learning_rate: FedAvgM's $\\eta_s$.

    Returns:
        ``(new global state, new moments)`` as float64 arrays.
    """
    theta = {k: g.detach().cpu().to(torch.float64).numpy() for k, g in global_state.items()}
    mean = masked_fedavg_reference(global_state, client_states, num_samples)
    trained = {k for s in client_states for k in s}
    delta = {k: mean[k] - theta[k] for k in theta}
    old = {name: dict(values) for name, values in (state or {}).items()}
    if optimizer == "avgm":
        pg = {k: -d for k, d in delta.items()}
        u = {k: server_momentum * old["u"][k] + pg[k] for k in theta} if "u" in old else pg
        step = {k: -server_learning_rate * (u[k] if server_momentum > 0 else pg[k]) for k in theta}
        new_state = {"u": u}
    else:
        b1 = 0.0 if optimizer == "adagrad" else beta_1
        m0 = old.get("m", {k: np.zeros_like(t) for k, t in theta.items()})
        v0 = old.get("v", {k: np.zeros_like(t) for k, t in theta.items()})
        m = {k: b1 * m0[k] + (1 - b1) * delta[k] for k in theta}
        if optimizer == "adam":
            v = {k: beta_2 * v0[k] + (1 - beta_2) * delta[k] ** 2 for k in theta}
            lr = eta * np.sqrt(1 - beta_2 ** (server_round + 1.0)) / (1 - beta_1 ** (server_round + 1.0))
        elif optimizer == "yogi":
            v = {k: v0[k] - (1 - beta_2) * delta[k] ** 2 * np.sign(v0[k] - delta[k] ** 2) for k in theta}
            lr = eta
        elif optimizer == "adagrad":
            v = {k: v0[k] + delta[k] ** 2 for k in theta}
            lr = eta
        else:
            raise ValueError(
                f"optimizer={optimizer!r} is not a valid choice. Use one of: 'adam', 'yogi', 'adagrad', 'avgm'."
            )
        step = {k: lr * m[k] / (np.sqrt(v[k]) + tau) for k in theta}
        new_state = {"m": m, "v": v}
    new = {k: theta[k] + step[k] if k in trained else theta[k].copy() for k in theta}
    return new, new_state
