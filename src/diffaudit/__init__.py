"""diffaudit: audit image diffusion models for memorized training data.

Implements the methods of "Extracting Training Data from Diffusion Models"
(Carlini et al., USENIX Security 2023, arXiv 2301.13188). Layers (each imports only from the
layers listed before it): core, data, models, sampling, store, distances, attacks, defenses,
evaluation, report, cli.
"""

__version__ = "0.1.0"
