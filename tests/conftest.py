"""Shared test set-up.

- ``tests/`` is on ``sys.path``, so test modules anywhere below import the shared case table with
  ``from cases import CASE_NAMES, build`` (see ``tests/cases.py``).
- Hugging Face libraries run offline (models in the case table are built from configs).
- The ``f3ocus`` hypothesis profile drops the per-example deadline (the first torch call in a process is
  slow) and is loaded by default. Torch thread settings are left at their defaults.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import settings

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

settings.register_profile("f3ocus", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "f3ocus"))


def pytest_configure(config: pytest.Config) -> None:
    # vmap over the backward of fused CPU attention falls back to a loop and says so; results are exact.
    config.addinivalue_line("filterwarnings", "ignore:There is a performance drop because we have not yet implemented")


@pytest.fixture
def f64() -> torch.dtype:
    """The dtype of reference comparisons."""
    return torch.float64
