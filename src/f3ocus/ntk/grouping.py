"""Layer grouping: consecutive layer groups that fit a memory budget, and a problem restricted to one.

Methods that store something per layer (Jacobian rows, activations and backprops) process the layers
in consecutive groups, one hooked pass per group, so that each group's storage fits ``max_memory``.
"""

from __future__ import annotations

import dataclasses

from f3ocus.ntk.problem import NTKProblem

__all__ = ["consecutive_groups", "row_groups", "subproblem"]


def consecutive_groups(needs: dict[str, float], max_memory: int | None) -> list[list[str]]:
    """Split layers, in order, into groups whose needs sum to at most ``max_memory / 2`` (at least one each).

    Half the budget: the other half is for the pass that produces them (backprops, activations).
    """
    budget = float("inf") if max_memory is None else max_memory / 2
    groups: list[list[str]] = [[]]
    used = 0.0
    for layer, need in needs.items():
        if groups[-1] and used + need > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(layer)
        used += need
    return groups


def subproblem(problem: NTKProblem, group: list[str]) -> NTKProblem:
    """``problem`` restricted to the layers of ``group`` (``problem`` itself when that is all of them)."""
    if len(group) == len(problem.layers):
        return problem
    return dataclasses.replace(problem, layers={k: problem.layers[k] for k in group})


def row_groups(problem: NTKProblem, max_memory: int | None) -> list[list[str]]:
    """Consecutive layer groups whose Jacobians ``(N M, sum P_l)`` fit ``max_memory`` (at least one each)."""
    row_bytes = problem.num_samples * problem.num_outputs * problem.itemsize
    return consecutive_groups({k: p * row_bytes for k, p in problem.layer_sizes().items()}, max_memory)
