"""Placeholder: the `f3ocus` command lands here."""


def main(argv=None):
    raise NotImplementedError
