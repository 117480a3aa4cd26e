"""Defences and ground truth (paper Sections 4.2.1 and 7): near-duplicate search, prompt selection,
outliers, canaries, DP-SGD training.

- :mod:`.embedders`: ``pixel`` / ``phash`` / ``clip`` embedders (registry: :func:`.embedders.get_embedder`).
- :mod:`.neighbours`: faiss edges above a similarity threshold (flat, IVF, HNSW), connected groups, the greedy keep list.
- :mod:`.dedup`: :func:`.dedup.find_duplicates` -> groups, per-image duplicate counts, keep lists.
- :mod:`.calibration`: planted duplicates and the measured thresholds (table in its docstring).
- :mod:`.prompts`: captions of the most duplicated images as a prompt file.
- :mod:`.outliers`: mean k-NN embedding distance and its Spearman correlation with MIA scores.
- :mod:`.canaries`, :mod:`.canary_run`: canaries inserted 1..64 times, exposure, extraction.
- :mod:`.dp_training`: DP-SGD through opacus, same run-directory layout as plain training.
- :mod:`.compare`: two audits side by side.
"""
