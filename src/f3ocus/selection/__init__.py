"""Placeholder: select_layers lands here."""


class LayerAssignment:
    pass


def select_layers(scores, budget, **kwargs):
    raise NotImplementedError


def register_solver(name):
    raise NotImplementedError


def available_solvers():
    raise NotImplementedError
