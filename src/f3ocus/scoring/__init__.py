"""Layer scores beyond the NTK: every baseline of layer selection under one call.

:func:`layer_scores` computes one score per layer over the layer's trainable parameters and returns a
:class:`~f3ocus.LayerScores`, so any score can feed :func:`f3ocus.select_layers`. The built-in scores
(``"ntk"``, ``"grad_norm"``, ``"rgn"``, ``"snr"``, ``"fisher"``, ``"snip"``, ``"grasp"``, ``"synflow"``,
``"magnitude"``, ``"random"``, ``"gradflow"``) are registered on import; :func:`register_score` adds one.
:func:`reference_scores` is the brute-force reference every score is tested against;
:func:`make_nonnegative` transforms signed scores (``"grasp"``) before selection.
"""

import f3ocus.scoring.datafree  # noqa: F401  (registers "synflow", "magnitude", "random")
import f3ocus.scoring.gradient  # noqa: F401  (registers "grad_norm", "rgn", "snip", "grasp", "gradflow")
import f3ocus.scoring.ntk  # noqa: F401  (registers "ntk")
import f3ocus.scoring.samples  # noqa: F401  (registers "fisher", "snr")
from f3ocus.scoring.api import layer_scores
from f3ocus.scoring.context import ScoreContext
from f3ocus.scoring.reference import reference_scores
from f3ocus.scoring.registry import ScoreSpec, available_scores, get_score, register_score, unregister_score
from f3ocus.scoring.transforms import TRANSFORMS, check_nonnegative, make_nonnegative

__all__ = [
    # scoring
    "layer_scores",
    # signed scores
    "make_nonnegative",
    "check_nonnegative",
    "TRANSFORMS",
    # reference
    "reference_scores",
    # extending
    "register_score",
    "unregister_score",
    "available_scores",
    "get_score",
    "ScoreSpec",
    "ScoreContext",
]
