"""The federated loop around layer selection.

- :func:`train_only`: a context manager that makes exactly a client's assigned layers trainable.
- :func:`layer_state` / :func:`load_layer_state`: send and receive the state of a subset of layers.
- :func:`masked_fedavg`: each layer averaged over the clients that trained it.
- :func:`communication_cost`: traffic of a plan against full fine-tuning.
- :func:`run_round`: one plain-PyTorch round (local training + masked aggregation).
- :func:`add_lora` / :func:`adapter_layers`: PEFT adapters on all blocks, each block's adapters one layer.
"""

from f3ocus.fl.aggregate import masked_fedavg
from f3ocus.fl.comm import CommunicationCost, communication_cost
from f3ocus.fl.peft import adapter_layers, add_lora
from f3ocus.fl.plan import train_only
from f3ocus.fl.round import RoundResult, run_round
from f3ocus.fl.state import layer_state, load_layer_state

__all__ = [
    # client side
    "train_only",
    "layer_state",
    "load_layer_state",
    # server side
    "masked_fedavg",
    "run_round",
    "RoundResult",
    # accounting
    "communication_cost",
    "CommunicationCost",
    # PEFT adapters as layers
    "add_lora",
    "adapter_layers",
]
