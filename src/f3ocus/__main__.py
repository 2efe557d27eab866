"""``python -m f3ocus``: the ``f3ocus`` command (see :mod:`f3ocus.cli`)."""

import sys

from f3ocus.cli import main

if __name__ == "__main__":
    sys.exit(main())
