"""How many generations a verified medoid stands for, when ``verify --from-extract`` checked only the
medoids of the cliques that ``extract`` flagged.

Such a verify result counts medoids: its ``n_matching_samples`` (per extracted training image) and
``n_extracting_samples`` are numbers of medoids, not of the generations that copy the image. Each medoid
represents its clique, generations near-identical to it (tiled ℓ2 at most the edge threshold between
every two of them) that were not themselves verified. This module finds the cliques of the extract
result the verify settings name (``from_extract``) and counts, per extracted training image, the
generations in the cliques whose medoid was credited to it.

A medoid is credited as :func:`~diffaudit.attacks.extraction.verification.count_unique` credits a
generation: to the record of its nearest training image, else to the first record (in the result's
order, the crediting order) that lists that image among its ``duplicates``. The per-medoid outcome comes
from verify's ``per_sample.npz`` (``sample``, ``train_id``, ``extracted``); without it, only records
credited with one medoid (their own ``sample``) can be counted.
"""

from __future__ import annotations

import zipfile
from typing import Any

import numpy as np

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import open_npz
from diffaudit.core.npz_arrays import read_npz_array
from diffaudit.report.results import ResultSet, Stage, read_object, records, resolve_path


def from_extract(verify: Stage) -> bool:
    """Whether ``verify`` checked only the medoids of an extract result (``--from-extract``)."""
    return bool(verify.settings.get("from_extract")) or isinstance(verify.result.get("verified_medoids"), list)


def clique_members(extract_result: dict[str, Any]) -> dict[str, list[str]]:
    """Medoid id -> the ids of its clique's members: the flagged prompts' largest cliques (conditional) or
    the groups (unconditional) of an extract result."""
    prompts = records(extract_result, "members", preferred=("prompts", "groups", "cliques", "results"))
    unconditional = extract_result.get("mode") == "unconditional" or (prompts and not any("flagged" in p for p in prompts))
    return {str(p["medoid"]): [str(m) for m in p.get("members") or []] for p in prompts
            if p.get("medoid") is not None and (unconditional or p.get("flagged"))}


def named_extract(rs: ResultSet, verify: Stage) -> dict[str, Any] | None:
    """The extract result ``verify`` names in its ``from_extract`` setting (relative paths tried against
    the verify and report folders), else the report's own extract stage when its cliques hold every
    verified medoid; None when neither is found."""
    path = resolve_path(verify.settings.get("from_extract"), verify.path, rs.root, verify.path.parent, rs.root.parent)
    found = read_object(path) if path is not None and path.is_file() else None
    if found is not None:
        return found
    extract = rs.first("extract")
    medoids = verify.result.get("verified_medoids")
    if extract is not None and isinstance(medoids, list) and set(map(str, medoids)) <= set(clique_members(extract.result)):
        return extract.result
    return None


def _extracting_medoids(verify: Stage, extracted: list[dict[str, Any]]) -> list[tuple[str, int]] | None:
    """(medoid, nearest training id) of every medoid verify found to extract, in verification order, from
    its per-sample file; without the file, the records' own samples when each was credited with one
    medoid; None when neither tells."""
    name = verify.result.get("per_sample_file")
    path = verify.path / str(name) if isinstance(name, str) else None
    if path is not None and path.is_file():
        try:
            with open_npz(path) as z:  # each array's declared size checked before it is allocated
                hit = np.asarray(read_npz_array(z, path, "extracted"), bool)
                samples, train_ids = (read_npz_array(z, path, k) for k in ("sample", "train_id"))
                return [(str(s), int(t)) for s, t in zip(samples[hit], train_ids[hit])]
        except (DiffauditError, OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile):
            pass
    if all(e.get("n_matching_samples", 1) == 1 for e in extracted):
        return [(str(e.get("sample")), int(e["train_id"])) for e in extracted if isinstance(e.get("train_id"), int)]
    return None


def credited_medoids(extracted: list[dict[str, Any]], hits: list[tuple[str, int]]) -> list[list[str]] | None:
    """Per extracted record, the medoids credited to it (module docstring); None when a medoid matches no
    record or the counts disagree with the records' ``n_matching_samples``."""
    out: list[list[str]] = [[] for _ in extracted]
    for medoid, train_id in hits:
        own = [i for i, e in enumerate(extracted) if e.get("train_id") == train_id]
        near = [i for i, e in enumerate(extracted) if train_id in (e.get("duplicates") or [])]
        where = own or near
        if not where:
            return None
        out[where[0]].append(medoid)
    if any(len(m) != e.get("n_matching_samples", len(m)) for m, e in zip(out, extracted)):
        return None
    return out


def clique_counts(rs: ResultSet, verify: Stage) -> dict[str, Any] | None:
    """For a ``verify --from-extract`` result: ``per_record`` (per extracted record, in the result's order,
    the number of generations in the cliques of its credited medoids, or None where unknown) and
    ``n_generations`` (the generations in the cliques of every extracting medoid, each counted once; None
    when unknown). None for a verify that checked every generation, or when the cliques are not found.

    Computed once per report (the summary and the gallery both ask): the extract result and verify's
    per-sample file are read on the first call only (:meth:`ResultSet.memo_of`)."""
    return rs.memo_of("clique_counts", verify, lambda: _clique_counts(rs, verify))


def _clique_counts(rs: ResultSet, verify: Stage) -> dict[str, Any] | None:
    """:func:`clique_counts`, computed."""
    if not from_extract(verify) or not isinstance(verify.result.get("extracted"), list):  # not searched whole
        return None
    extracted = [e for e in verify.result["extracted"] if isinstance(e, dict)]
    extract = named_extract(rs, verify)
    if extract is None:
        return None
    members = clique_members(extract)
    hits = _extracting_medoids(verify, extracted)
    credited = credited_medoids(extracted, hits) if hits is not None else None
    if credited is None or any(m not in members for group in credited for m in group):
        return None
    per_record = [len({g for m in group for g in members[m]}) for group in credited]
    union = {g for group in credited for m in group for g in members[m]}
    return {"per_record": per_record, "n_generations": len(union)}
