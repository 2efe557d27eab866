"""The scoring methods, one file each, and the registry names under their earlier path.

- ``"dense"`` (:mod:`~f3ocus.ntk.methods.dense`): the reference, explicit Jacobians.
- ``"persample"`` (:mod:`~f3ocus.ntk.methods.persample`): stored per-sample rows, Gram or Lanczos.
- ``"lanczos"`` (:mod:`~f3ocus.ntk.methods.lanczos`): matrix-free Lanczos on vjp/jvp products.
- ``"factored"`` (:mod:`~f3ocus.ntk.methods.factored`): Linear weights as activations x backprops.
- ``"sketch"`` (:mod:`~f3ocus.ntk.methods.sketch`): an estimate for wide outputs (a lower bound with
  an error estimate; never chosen by ``"auto"``).

Each module holds the method, its cost model and its declared options, and registers itself on import.
"""

from f3ocus.ntk.methods import dense, factored, lanczos, persample, sketch  # noqa: F401  (register the methods)
from f3ocus.ntk.registry import (
    Cost,
    LayerEig,
    MethodEntry,
    MethodResult,
    available_methods,
    check_options,
    get_method,
    register_method,
)

__all__ = [
    "Cost",
    "LayerEig",
    "MethodEntry",
    "MethodResult",
    "available_methods",
    "check_options",
    "get_method",
    "register_method",
]
