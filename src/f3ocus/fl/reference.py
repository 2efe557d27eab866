"""Brute-force references for the federated loop, in float64 numpy.

These are slow and simple on purpose: tests check the fast paths against them, and users can check
their own aggregation code against them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

__all__ = ["masked_fedavg_reference"]


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
