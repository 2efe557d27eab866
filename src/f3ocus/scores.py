"""Placeholder: LayerScores lands here."""


class LayerScores:
    pass
