r"""The change of the objective under one budget-keeping move, in closed form (the one home of the formula).

The objective is $f(m) = \sum_{kl} m_{kl} w_{kl} - t\, D(n)$ with $w$ the linear coefficients
(:attr:`~f3ocus.selection.problem.SelectionProblem.linear`: the scores, minus the churn price
$\lambda (1 - 2p_{kl})$ against a previous plan $p$) and $n_l = \sum_k m_{kl}$. Both couplings are
$D(n) = \frac{\sigma}{L}\sum_l n_l^2 + h(N)$ with $N = \sum_l n_l$:

- ``"spread"`` (F³OCUS, the variance of the counts): $\sigma = 1$, $h(N) = -N^2/L^2$;
- ``"agree"`` (Sun et al. 2024, $\frac{1}{L}\sum_l n_l (K - n_l)$): $\sigma = -1$, $h(N) = K N / L$.

A *move* takes one unit of client $k$'s budget out of slot $a$ and puts it into slot $c$; a slot is a
layer $0 \le l < L$ or the empty slot $L$ (an unused unit: $a = L$ adds $c$, $c = L$ drops $a$). Then

$$
\Delta f(a \to c) = \text{in}_c - \text{out}_a - t\,\bigl(h(N + \Delta N) - h(N)\bigr),\quad
\text{in}_c = w_{kc} - \frac{t\sigma}{L}(2 n_c + 1),\quad \text{out}_a = w_{ka} + \frac{t\sigma}{L}(1 - 2 n_a),
$$

with $\text{in}_L = \text{out}_L = 0$ and $\Delta N = [c < L] - [a < L]$; for a swap of the spread
coupling $w_{kc} - w_{ka} - \frac{2t}{L}(n_c - n_a + 1)$. An *exchange* (client $k_1$ gives $a$ and takes
$c$, client $k_2$ the opposite) keeps every count, so
$\Delta f = (w_{k_1 c} - w_{k_2 c}) - (w_{k_1 a} - w_{k_2 a})$.

Every solver that scores moves (mutation tournaments, SA, ABC, ACO, MOPSO, the greedy start and the
polish) takes its numbers from here; the tests check each against a full re-evaluation in float64.
"""

from __future__ import annotations

import numpy as np

from f3ocus.selection.problem import SelectionProblem

__all__ = ["add_gains", "exchange_gain", "remove_losses", "total_term"]


def _sigma_t(sel: SelectionProblem, tradeoff: float) -> float:
    return float(tradeoff) if sel.coupling == "spread" else -float(tradeoff)


def add_gains(sel: SelectionProblem, tradeoff: float, linear: np.ndarray, n: np.ndarray) -> np.ndarray:
    r"""$\text{in}_l = w_l - \frac{t\sigma}{L}(2 n_l + 1)$ (broadcast over ``linear`` and counts ``n``)."""
    ts = _sigma_t(sel, tradeoff)
    return linear - ts * (2.0 * n + 1.0) / sel.L


def remove_losses(sel: SelectionProblem, tradeoff: float, linear: np.ndarray, n: np.ndarray) -> np.ndarray:
    r"""$\text{out}_l = w_l + \frac{t\sigma}{L}(1 - 2 n_l)$ (broadcast over ``linear`` and counts ``n``)."""
    ts = _sigma_t(sel, tradeoff)
    return linear + ts * (1.0 - 2.0 * n) / sel.L


def total_term(sel: SelectionProblem, tradeoff: float, N: np.ndarray, dn) -> np.ndarray:  # noqa: N803
    r"""$-t\,(h(N + \Delta N) - h(N))$, the part of $\Delta f$ that depends on the total only."""
    t = float(tradeoff)
    if sel.coupling == "agree":
        return -t * sel.K * np.asarray(dn, dtype=np.float64) / sel.L
    return t * ((N + dn) ** 2 - N**2) / sel.L**2


def exchange_gain(linear1: np.ndarray, linear2: np.ndarray) -> np.ndarray:
    r"""$d_l = w_{k_1 l} - w_{k_2 l}$: an exchange $a \leftrightarrow c$ gains $d_c - d_a$."""
    return linear1 - linear2
