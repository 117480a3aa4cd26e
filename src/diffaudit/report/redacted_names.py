"""How a redacted report names generations and training examples without their file names.

Generations. A sample store's ids (``p3-i17``: prompt 3, image 17) and an array's (``npz:12``) say where a
generation lies and nothing more. Generations given to extract or verify as an image folder or as
WebDataset shards are named by their files (``gen_MRN12351_DavidLee_2.png``), which may carry what a
redacted report hides. Redacted, such a generation is shown as ``generation N``: its rank, by id, among
the generations the report names, the same in every section, so that a clique's medoid and the verified
pair it gave still match.

Training examples. Extraction names one ``#N``, its position in the training set verify searched (an
audit's ``members.view.json``). Inpainting read another --data (an audit's: members and non-members), so
its own positions numbered other images alike: ``#10`` was one patient in one section and another in the
next. An inpainting target in that training set takes its ``#N`` there (:func:`training_positions`); one
that is not is ``--data #N``, its position in the --data inpaint read.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from diffaudit.core.errors import DiffauditError
from diffaudit.data.view import is_view, read_view
from diffaudit.report.images import data_spec
from diffaudit.report.results import ResultSet, records

#: Ids that name a position only: a sample store's (:func:`~diffaudit.store.sample_store.generation_id`),
#: also in a pool (``m2:p3-i17``, :func:`~diffaudit.store.pool.pooled_id`) and as the file `export` names by
#: it (``p3-i17.png``), and an array's rows (``npz:12``, :func:`~diffaudit.data.entries.array_entries`).
POSITION_ID = re.compile(r"(m\d+:)?p\d+-i\d+(\.png)?|[a-z]+:\d+")


def _shown_ids(rs: ResultSet) -> Iterator[str]:
    """Every generation id the report's extraction sections may show: verified pairs (their generation and
    the closest one counted for the same training image), --train-map checks, clique members and medoids."""
    verify = rs.first("verify")
    if verify is not None:
        for key in ("extracted", "prompt_checks"):
            rows = verify.result.get(key)
            for e in rows if isinstance(rows, list) else []:
                if isinstance(e, dict):
                    yield from (e[k] for k in ("sample", "closest_sample") if isinstance(e.get(k), str))
    extract = rs.first("extract")
    if extract is not None:
        for p in records(extract.result, "members", preferred=("prompts", "groups", "cliques", "results")):
            yield from (str(m) for m in p.get("members") or [])
            if p.get("medoid") is not None:
                yield str(p["medoid"])


def generation_names(rs: ResultSet) -> dict[str, str]:
    """``{id: "generation N"}`` for each generation id the report shows that is not a position
    (:data:`POSITION_ID`), numbered from 1 in the order of the ids; empty for a sample store's generations."""
    named = sorted({i for i in _shown_ids(rs) if not POSITION_ID.fullmatch(i)})
    return {i: f"generation {n}" for n, i in enumerate(named, 1)}


def shown_as(names: dict[str, str], generation: Any) -> Any:
    """How ``generation`` (an id, or None) is shown: its name in ``names``, else as it is."""
    return names.get(str(generation), generation) if generation is not None else None


def training_positions(rs: ResultSet) -> dict[str, int]:
    """``{key: N}``: each training example's position in the training set verify searched, the ``#N``
    extraction names it by, read from the keys of a view (an audit's ``members.view.json``: no pixels are
    loaded); empty without a verify stage, or when its --data is not a view (a folder, a built-in name) or
    cannot be read."""
    st = rs.first("verify")
    spec = data_spec(st.settings)[0] if st is not None else None
    if not isinstance(spec, str) or not is_view(spec):
        return {}
    try:
        parts = read_view(spec)
    except (DiffauditError, OSError, ValueError):
        return {}
    if any(p.keys is None for p in parts):  # a part kept whole: its keys are known only by loading it
        return {}
    keys = [k for p in parts for k in p.keys]
    return {k: n for n, k in enumerate(keys)}


def target_name(target: dict[str, Any], positions: dict[str, int], same_data: bool) -> str | None:
    """How a redacted report names an inpainting ``target`` (its result record: ``id``, the key, and
    ``index``, its position in inpaint's --data): ``#N`` in the training set extraction numbers
    (``positions``, or inpaint's own position where it read the same --data as verify, ``same_data``), else
    ``--data #N``; None without an index."""
    key, index = target.get("id"), target.get("index")
    if isinstance(key, str) and key in positions:
        return f"#{positions[key]}"
    if not isinstance(index, int) or isinstance(index, bool):
        return None
    return f"#{index}" if same_data else f"--data #{index}"
