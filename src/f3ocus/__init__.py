"""f3ocus: which layers should each federated client fine-tune?

Client side, :func:`ntk_layer_importance` scores every layer of a model by the principal eigenvalue of
its layer-wise empirical Neural Tangent Kernel. Server side, :func:`select_layers` turns the clients'
scores into a plan that trades total importance against balanced layer coverage under per-client
budgets (F³OCUS, Saha et al., CVPR 2025). :mod:`f3ocus.fl` holds the federated loop around them.
"""

from f3ocus.fl import masked_fedavg, train_only
from f3ocus.layers import resolve_layers
from f3ocus.ntk import ntk_layer_importance
from f3ocus.scores import LayerScores
from f3ocus.scoring import available_scores, layer_scores, register_score
from f3ocus.selection import LayerAssignment, available_solvers, register_solver, select_layers

__version__ = "0.1.0"

__all__ = [
    # client side: scoring
    "ntk_layer_importance",
    "resolve_layers",
    "LayerScores",
    "layer_scores",
    "register_score",
    "available_scores",
    # server side: selection
    "select_layers",
    "LayerAssignment",
    "register_solver",
    "available_solvers",
    # federated loop
    "masked_fedavg",
    "train_only",
]
