"""Placeholder: ntk_layer_importance lands here."""


def ntk_layer_importance(model, batch, **kwargs):
    raise NotImplementedError
