"""Drawing a :class:`~f3ocus.selection.assignment.LayerAssignment` (needs the ``plot`` extra).

matplotlib is imported lazily; without it the call raises
:class:`~f3ocus.errors.MissingExtraError` naming the extra to install.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from f3ocus._checks import require_extra

if TYPE_CHECKING:  # pragma: no cover
    from f3ocus.selection.assignment import LayerAssignment

__all__ = ["plot_assignment"]


def plot_assignment(assignment: LayerAssignment, *, figsize: tuple[float, float] | None = None) -> Any:
    """Plan heatmap (clients x layers), layer histogram ($n_l$) and, when there is one, the front.

    Args:
        assignment: the plan to draw.
        figsize: matplotlib figure size; default scales with the plan.

    Returns:
        The matplotlib ``Figure``.
    """
    require_extra("matplotlib", "plot", "LayerAssignment.plot()")
    import matplotlib.pyplot as plt

    panels = 3 if assignment.front is not None else 2
    K, L = assignment.K, assignment.L  # noqa: N806
    if figsize is None:
        figsize = (4.5 * panels, max(3.0, min(8.0, 0.12 * K + 2.0)))
    fig, axes = plt.subplots(1, panels, figsize=figsize, squeeze=False)
    ax_plan, ax_hist = axes[0, 0], axes[0, 1]

    ax_plan.imshow(assignment.mask, aspect="auto", interpolation="nearest", cmap="Greys")
    ax_plan.set_xlabel("layer")
    ax_plan.set_ylabel("client")
    ax_plan.set_title("plan (black: trained)")

    counts = assignment.counts
    ax_hist.bar(np.arange(L), counts, color="tab:blue")
    ax_hist.axhline(counts.mean(), color="k", linestyle="--", linewidth=1, label=r"$\bar n$")
    ax_hist.set_xlabel("layer")
    ax_hist.set_ylabel("clients training it")
    ax_hist.set_title(f"layer counts (diversity {assignment.diversity:.3g})")
    ax_hist.legend()
    if assignment.layer_names is not None and L <= 40:
        for ax in (ax_plan, ax_hist):
            ax.set_xticks(np.arange(L))
            ax.set_xticklabels(assignment.layer_names, rotation=90, fontsize=6)

    if assignment.front is not None:
        ax_front = axes[0, 2]
        front = assignment.front
        ax_front.plot(front.diversity, front.importance, "o-", color="tab:gray", markersize=4, label="front")
        ax_front.plot(
            [assignment.diversity], [assignment.importance], "*", color="tab:red", markersize=14, label="chosen"
        )
        ax_front.set_xlabel("diversity (minimize)")
        ax_front.set_ylabel("importance (maximize)")
        how = "knee" if assignment.tradeoff is None else f"tradeoff {assignment.tradeoff:g}"
        ax_front.set_title(f"front ({len(front)} plans, {how})")
        ax_front.legend()
    fig.tight_layout()
    return fig
