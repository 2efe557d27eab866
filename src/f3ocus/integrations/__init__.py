"""Adapters to federated-learning frameworks.

Each adapter imports its framework lazily: ``import f3ocus`` never needs it, and importing the adapter
without the framework raises :class:`f3ocus.errors.MissingExtraError` naming the extra to install.

- :mod:`f3ocus.integrations.flower`: Flower 1.42 Message API (``pip install 'f3ocus[flower]'``).
"""
