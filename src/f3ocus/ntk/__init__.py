"""Client-side scoring: layer-wise empirical NTK eigenvalues.

:func:`ntk_layer_importance` is the entry point. The dense reference (:func:`dense_layer_jacobians`,
:func:`dense_layer_kernels`, :func:`ntk_reference`, with :func:`scoring_problem` to build the
problem they take) is public so that custom models, output functions
and methods can be checked against it; :func:`register_method` adds a scoring method.
"""

from f3ocus.ntk import methods as _methods  # noqa: F401  (registers the methods)
from f3ocus.ntk.importance import ntk_layer_importance
from f3ocus.ntk.prepare import scoring_problem
from f3ocus.ntk.problem import NTKProblem
from f3ocus.ntk.reference import dense_layer_jacobians, dense_layer_kernels, ntk_reference
from f3ocus.ntk.registry import Cost, LayerEig, MethodResult, available_methods, get_method, register_method

__all__ = [
    # scoring
    "ntk_layer_importance",
    # reference
    "ntk_reference",
    "dense_layer_jacobians",
    "dense_layer_kernels",
    "scoring_problem",
    # extending
    "NTKProblem",
    "register_method",
    "available_methods",
    "get_method",
    "Cost",
    "LayerEig",
    "MethodResult",
]
