"""Placeholder: resolve_layers lands here."""


def resolve_layers(model, layers=None):
    raise NotImplementedError
