"""Server-side layer selection: scores in, a budget-keeping plan out (F³OCUS, Saha et al., CVPR 2025).

The public entry point is :func:`select_layers`; :class:`LayerAssignment` is its result. Solvers live in
one table (:func:`available_solvers`, :func:`register_solver`). :class:`SelectionProblem` is the
problem as data, and :mod:`f3ocus.selection.reference` holds brute-force references for tiny instances.
"""

from f3ocus.selection.api import select_layers, solve_problem
from f3ocus.selection.assignment import LayerAssignment, ParetoFront
from f3ocus.selection.exact import exact_front, exact_optimum
from f3ocus.selection.problem import SelectionProblem, SelectionPymooProblem
from f3ocus.selection.reference import brute_force_front, brute_force_optimum, enumerate_plans
from f3ocus.selection.solvers import available_solvers, register_solver

__all__ = [
    # the API
    "select_layers",
    "LayerAssignment",
    "ParetoFront",
    "register_solver",
    "available_solvers",
    # the problem and its exact solution
    "SelectionProblem",
    "SelectionPymooProblem",
    "solve_problem",
    "exact_optimum",
    "exact_front",
    # brute-force references (tiny instances)
    "brute_force_optimum",
    "brute_force_front",
    "enumerate_plans",
]
