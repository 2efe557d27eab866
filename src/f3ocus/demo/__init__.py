"""The offline demo behind ``f3ocus demo``: F³OCUS on a small pretrained vision-language model.

Federated fine-tuning of EfficientNet-Lite0 + MiniLM-L6 with a fusion head on easy-VQA, split non-IID
over clients with heterogeneous layer budgets; F³OCUS (NTK scores + :func:`f3ocus.select_layers`)
against client-only NTK top-k, random and last-k layers, and full fine-tuning.

- :mod:`f3ocus.demo.data`: easy-VQA and the Dirichlet split;
- :mod:`f3ocus.demo.model`: the model and its 22 selectable layers;
- :mod:`f3ocus.demo.train`: local training, evaluation, scoring batches;
- :mod:`f3ocus.demo.strategies`: the plans compared;
- :mod:`f3ocus.demo.run`: the experiment (:func:`run_demo`);
- :mod:`f3ocus.demo.report`: table, JSON and plots.

The assets come with ``pip install 'f3ocus[demo]'``; importing this package does not need them.
"""

from f3ocus.demo.run import TaskConfig, run_seed

__all__ = ["TaskConfig", "run_seed"]
