"""An object-store prefix as a command's ``--out``: settings, resume and ``--fresh`` without rename or locks.

:func:`~diffaudit.core.outdir.prepare_out_dir` gives a local folder its guarantees with POSIX
calls: a lock held by one process, a rename that moves a whole folder aside for ``--fresh``. An
object store has neither, so the same guarantees are kept another way:

- ``settings.json`` is created only where none exists (a conditional write, S3's ``If-None-Match``):
  of two commands starting on one empty prefix, one records its settings and the other is compared
  with them (resumes with the same settings, is refused with others), never both;
- a prefix holding objects but no ``settings.json``, or a ``settings.json`` diffaudit did not write, is
  refused and nothing there is deleted (not diffaudit's, or another run's);
- ``--fresh`` deletes shard sidecars first, then everything else, then the manifest, and
  ``settings.json`` last: a deletion stopped part-way leaves the settings beside whatever remains,
  so a re-run resumes it (the same settings) or is refused (others), and never takes it for its own.

Without a lock, two commands with the same settings may fill one store at once; they write the same
shards (each image from its own seed), each object whole, and a shard one finished is kept by the
other. A command still writing when another's ``--fresh`` replaced the store may add a shard of
the old settings; `sample` finds such shards by their sidecars before it calls the store finished,
and makes them again (``SampleStore.stray_shards``).
"""

from __future__ import annotations

from typing import Any, Callable

from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import SETTINGS_FILE, is_diffaudit_record, resumed_record, settings_record
from diffaudit.store.location import MANIFEST, ObjectFolder, StoreReadError


def deletion_order(names: list[str]) -> list[list[str]]:
    """``names`` (objects of a store) in the groups ``--fresh`` deletes them in: shard sidecars (a shard
    without its sidecar is unfinished), the rest, the manifest, the settings."""
    sidecars = [n for n in names if n.startswith("shards/") and n.endswith(".json")]
    last = [MANIFEST, SETTINGS_FILE]
    rest = [n for n in names if n not in sidecars and n not in last]
    return [sidecars, rest, *[[n] for n in last if n in names]]


def recorded(loc: ObjectFolder) -> dict[str, Any] | None:
    """The diffaudit settings record under ``loc``, None where there is no ``settings.json``; refuses one
    that is not diffaudit's (another tool's file of that name). A store that fails to give it (access
    denied, a network error) is that error (:class:`~diffaudit.store.location.StoreReadError`)."""
    if not loc.exists(SETTINGS_FILE):
        return None
    try:
        record = loc.read_json(SETTINGS_FILE)
    except StoreReadError:
        raise
    except DiffauditError:  # not JSON
        record = None
    if not is_diffaudit_record(record):
        raise DiffauditError(
            f"{loc.name(SETTINGS_FILE)} is not a settings record diffaudit wrote, so {loc.url} is not diffaudit's output: "
            "nothing there is used or deleted. Choose another --out"
        )
    return record


def remove_object_out(loc: ObjectFolder) -> None:
    """Delete the store under ``loc`` for ``--fresh`` (:func:`deletion_order`); refuse a prefix holding
    objects but no diffaudit ``settings.json`` (nothing is deleted then)."""
    names = loc.all_objects()
    if not names:
        return
    if SETTINGS_FILE not in names or recorded(loc) is None:
        raise DiffauditError(
            f"--fresh deletes only what diffaudit made, and {loc.url} holds {len(names)} object(s) (e.g. {names[0]}) "
            f"but no {SETTINGS_FILE}; choose another --out, or delete them yourself"
        )
    for group in deletion_order(names):
        loc.remove(group)


def prepare_object_out(loc: ObjectFolder, command: str, settings: dict[str, Any], *, fresh: bool = False,
                       upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> bool:
    """Create or reopen the output ``loc`` for ``command`` with ``settings`` (as
    :func:`~diffaudit.core.outdir.prepare_out_dir` does a folder); returns whether it resumed.

    Raises :class:`~diffaudit.core.errors.SettingsMismatchError` when the prefix holds other settings,
    and :class:`DiffauditError` when it holds objects without settings.
    """
    if fresh:
        remove_object_out(loc)
    record = settings_record(command, settings)
    old = recorded(loc)
    if old is None:
        found = loc.all_objects()
        if found:
            raise DiffauditError(
                f"{loc.url} holds {len(found)} object(s) (e.g. {found[0]}) but no {SETTINGS_FILE}: they are not "
                f"diffaudit's, or left from an interrupted or other run that may have had other settings. Delete "
                "them yourself, or choose another --out"
            )
        if loc.write_json(SETTINGS_FILE, record, create=True):
            return False
        # another command created it between the look and the write: compared with it like any other
        old = recorded(loc)
        if old is None:
            raise DiffauditError(f"{loc.name(SETTINGS_FILE)} could not be created, and none is there (is an object named "
                                 f"{loc.url} in the way?); choose another --out")
    rewrite = resumed_record(loc.url, old, record, upgrade)
    if rewrite is not None:
        loc.write_json(SETTINGS_FILE, rewrite)
    return True
