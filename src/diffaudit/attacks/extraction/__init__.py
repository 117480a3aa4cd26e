"""Extraction attacks of Carlini et al. (2023): generate-and-filter and verification.

- :mod:`.cliques`: exact maximum clique with a deterministic expansion bound;
- :mod:`.graph`: the tiled-ℓ2 near-duplicate graph, medoids, mean internal distances;
- :mod:`.filter`: per-prompt filtering of conditional generations (paper §4.1), the next prompt's
  graph on the GPU while the CPU searches the current one's clique;
- :mod:`.blackbox`: cliques among unconditional generations without the training set;
- :mod:`.calibration`: precision/recall over edge thresholds and clique sizes;
- :mod:`.verification`: (ℓ2, δ) and normalised-distance extraction, eidetic k, unique counting;
- :mod:`.crops`: ℓ2 under every crop alignment; :mod:`.knn_cache`: resumable kNN chunks;
- :mod:`.grid`: the default tile grid of the tiled ℓ2 (fewer tiles on small images);
- :mod:`.inputs`: the generations (``--samples``) an extraction command reads.
"""

from diffaudit.attacks.extraction.blackbox import CliqueGroup, UnconditionalResult, extract_unconditional
from diffaudit.attacks.extraction.calibration import CalibrationPoint, calibrate
from diffaudit.attacks.extraction.cliques import CliqueResult, disjoint_cliques, max_clique
from diffaudit.attacks.extraction.filter import FilterSettings, PromptResult, filter_conditional, filter_prompt, filter_prompts
from diffaudit.attacks.extraction.graph import NearDuplicateGraph, near_duplicate_graph
from diffaudit.attacks.extraction.verification import Extraction, Verification, VerifySettings, verify

__all__ = [
    "CalibrationPoint", "CliqueGroup", "CliqueResult", "Extraction", "FilterSettings", "NearDuplicateGraph",
    "PromptResult", "UnconditionalResult", "Verification", "VerifySettings", "calibrate", "disjoint_cliques",
    "extract_unconditional", "filter_conditional", "filter_prompt", "filter_prompts", "max_clique", "near_duplicate_graph", "verify",
]
