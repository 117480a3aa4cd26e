"""Output folders with automatic resume (docs/architecture.md, Conventions: resume).

A command writes ``settings.json`` into its ``--out`` folder before any work. Pointed at a folder
that already holds settings, it resumes when they are equal and stops with an error naming the first
setting that differs otherwise (unless it holds no work yet, only the settings of a run refused or
stopped before its first file: those are replaced); ``fresh=True`` (``--fresh``) empties the folder first, but only a
folder diffaudit made (one holding its ``settings.json``) or an empty one: a mistyped ``--out`` must
never delete a user's own files.

A folder that already held files when diffaudit first wrote into it (the user's own, or an input
such as a membership matrix) records their names in its settings (``kept_on_fresh``): ``--fresh``
deletes only what diffaudit added there, never the whole folder.

``--fresh`` first renames the folder to a hidden sibling ``.<name>.deleting-<pid>-<random>`` and
only then deletes that: a deletion killed part-way (Ctrl-C, a crash) leaves ``--out`` either intact
or gone, never as shards without the settings that made them, which a later run with other
settings would take for its own work. Such leftovers are removed by the next run on the same
``--out``.

A refusal names each setting by the flag that sets it where the command says so (:func:`flag_names`:
``--n``, not the recorded ``per_prompt``; a nested setting too: ``--image-size``, not
``data.options.image_size``), and by its recorded (dotted) key where no flag sets it.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from diffaudit.core import folder_lock
from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.core.io import make_private_dir, read_json, remove_stale_temps, write_json_atomic

SETTINGS_FILE = "settings.json"
#: Key of the settings record listing what a folder held before diffaudit first wrote into it.
FOREIGN_KEY = "kept_on_fresh"


def _normalise(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


#: Longest repr of a setting's value shown as it is; longer ones are shortened (a list of 10,000
#: prompts must not become a message of 600,000 characters that never says which prompt changed).
SHORT_REPR = 80
#: How a setting that one side does not record is shown.
UNSET = "<unset>"


def _short(value: Any, limit: int = SHORT_REPR) -> str:
    """``repr(value)``, cut in the middle to at most about ``limit`` characters when longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    head = (limit - 5) * 2 // 3
    return f"{text[:head]} ... {text[len(text) - (limit - 5 - head):]}"


def _first_difference(a: Any, b: Any) -> int | None:
    """Index of the first entry at which sequences ``a`` and ``b`` differ (None: one is a prefix of the other)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def _describe_list_change(a: list | tuple, b: list | tuple) -> str:
    """How two long lists differ: how many entries (or their lengths) and the first differing one."""
    i = _first_difference(a, b)
    at = "" if i is None else f"first at [{i}]: was {_short(a[i])}, now {_short(b[i])}"
    if len(a) == len(b):
        n = sum(x != y for x, y in zip(a, b))
        return f"{n} of {len(a)} entries differ; {at}"
    lengths = f"was {len(a)} entries, now {len(b)}"
    return f"{lengths}; {at}" if at else f"{lengths}; the first {min(len(a), len(b))} are equal"


def _describe_change(a: Any, b: Any) -> str:
    """``was X, now Y`` for a setting that changed from ``a`` to ``b``, short enough to read.

    Short values are shown whole; two long lists by the number of differing entries (or their
    lengths) and the first one that differs; two long strings by where they first differ; any other
    long value shortened in the middle. A switch reads ``was off, now on``; a group of settings that one
    side has and the other lacks (DP-SGD's), ``was not set, now set``.
    """
    if isinstance(a, bool) and isinstance(b, bool):
        return f"was {'on' if a else 'off'}, now {'on' if b else 'off'}"
    if UNSET in (a, b) and isinstance(b if a == UNSET else a, dict):
        return "was not set, now set" if a == UNSET else "was set, now not set"
    if len(repr(a)) <= SHORT_REPR and len(repr(b)) <= SHORT_REPR:
        return f"was {a!r}, now {b!r}"
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return _describe_list_change(a, b)
    text = f"was {_short(a)}, now {_short(b)}"
    if isinstance(a, str) and isinstance(b, str):
        i = _first_difference(a, b)
        text += f"; first differs at character {min(len(a), len(b)) if i is None else i}"
    return text


#: Setting (dotted for nested settings) -> the flag that sets it, for the command being run (:func:`flag_names`).
_FLAG_NAMES: ContextVar[Mapping[str, str]] = ContextVar("diffaudit_flag_names", default={})


@contextmanager
def flag_names(names: Mapping[str, str]) -> Iterator[None]:
    """Within this block, a settings mismatch names each setting in ``names`` by its flag (``per_prompt``
    as ``--n``): the CLI sets them for the command it runs, so folders that library code opens (a
    sample store, a training run) are named by flag too."""
    token = _FLAG_NAMES.set(dict(names))
    try:
        yield
    finally:
        _FLAG_NAMES.reset(token)


def diff_settings(old: dict[str, Any], new: dict[str, Any], prefix: str = "",
                  names: Mapping[str, str] | None = None) -> list[str]:
    """The settings that differ between ``old`` and ``new``, each as ``name (was X, now Y)`` (dotted
    names for nested settings, or the flag ``names`` gives for one; long values described briefly, see
    :func:`_describe_change`). A setting given on one side only (``baseline``: a path, then None) says
    its by-products too: the settings named after it (``baseline_seed``, ``baseline_digest``) that are
    likewise unset on that side are not listed again. So, in a nested record of another kind (its
    ``name`` differs: ``--embedder pixel``, then ``phash``), are the settings only one of the kinds has, and
    the spec and options of data whose recorded digest is the same (:func:`_same_data_spelled_otherwise`)."""
    names = names or {}
    out = []
    keys = sorted(set(old) | set(new))
    toggled = [key for key in keys if _unset(old.get(key, UNSET)) != _unset(new.get(key, UNSET))]
    same_data = _same_data_spelled_otherwise(old, new)
    for key in keys:
        a, b = old.get(key, UNSET), new.get(key, UNSET)
        if key in same_data:
            continue
        if any(key.startswith(t + "_") and _unset(a) != _unset(b) and _unset(old.get(t, UNSET)) == _unset(a)
               for t in toggled):
            continue  # a by-product of an input given on one side only, which is listed
        if isinstance(a, dict) and isinstance(b, dict):
            if "name" in a and "name" in b and a["name"] != b["name"]:  # another kind: only what both kinds set
                a, b = ({k: v for k, v in d.items() if k in a and k in b} for d in (a, b))
            out += diff_settings(a, b, f"{prefix}{key}.", names)
        elif a != b:
            out.append(f"{_setting_name(prefix + key, names)} ({_describe_change(a, b)})")
    return out


#: How a command records its data: (the spec, its loader options, the digest of the images loaded), nested
#: (``data: {spec, options, digest}``) or flat (``data``, ``data_options``, ``data_digest``).
DATA_RECORDS = (("spec", "options", "digest"), ("data", "data_options", "data_digest"))


def _same_data_spelled_otherwise(old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    """The keys of a data record not to compare: its spec and options, where both sides record the same
    digest of the images loaded (pixels, keys, labels, captions: :func:`~diffaudit.data.digest.dataset_digest`),
    so the same data named another way (``cifar10``, and the glob of its shards) is no other work."""
    out: set[str] = set()
    for spec, options, digest in DATA_RECORDS:
        a, b = old.get(digest), new.get(digest)
        if isinstance(a, str) and a and a == b:
            out |= {spec, options}
    return out


def _unset(value: Any) -> bool:
    """Whether a recorded setting is unset: None (an option not given) or absent."""
    return value is None or value is UNSET


def _setting_name(key: str, names: Mapping[str, str]) -> str:
    """How a difference names setting ``key``: its flag (``names``); a digest of what a flag names
    (``model_digest`` beside ``--model``, ``samples_identity`` beside ``--samples``, ``data.digest`` inside
    ``--data``'s record; ``shadow_digests.model-00`` of one of ``--shadows``' models) as that input's
    contents; the digests of the examples a run trains on and of their pixels in words; else the key itself."""
    if key in names:
        return names[key]
    head, _, member = key.partition(".")
    base = head.removesuffix("_digests")
    flag = names.get(base, names.get(base + "s")) if base != head and member else None
    if flag is not None:  # shadow_digests.model-00: one of the models --shadows names
        return f"the contents of {flag} ({member})"
    base = key.removesuffix("_members_digest")  # model_members_digest: the train_ids.json in --model's folder
    if base != key and base in names:
        return f"the training set {names[base]}'s train_ids.json names"
    for suffix in ("_digest", "_identity", ".digest"):
        base = key.removesuffix(suffix)
        if base != key and base in names:
            return f"the contents of {names[base]}"
    if key.endswith("training_pixels_digest") and "data" in names:
        return "the pixels of the training images (--data)"
    if key.endswith("training_set_digest") and "data" in names:
        return "which examples it trains on (--data, --subset, --membership, --repeat, --dedup)"
    return key


def named_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """:func:`diff_settings` named as the command's flags (:func:`flag_names`), each difference said once:
    settings that one flag sets alike (a seed recorded in two places) read as one."""
    return list(dict.fromkeys(diff_settings(old, new, names=_FLAG_NAMES.get())))


def _diffaudit_record(path: Path) -> dict[str, Any] | None:
    """The ``settings.json`` record :func:`prepare_out_dir` wrote in ``path``, or None (none, unreadable,
    or not diffaudit's)."""
    try:
        record = read_json(path / SETTINGS_FILE)
    except (DiffauditError, OSError, ValueError):
        return None
    return record if is_diffaudit_record(record) else None


def is_diffaudit_record(record: Any) -> bool:
    """Whether ``record`` (a ``settings.json`` document) is one diffaudit wrote: a command and its settings."""
    return isinstance(record, dict) and isinstance(record.get("command"), str) and isinstance(record.get("settings"), dict)


def read_settings_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The ``settings.json`` record (command, settings) of diffaudit's output folder ``path``; None when it holds none."""
    return _diffaudit_record(Path(path))


def recorded_command(path: str | os.PathLike) -> str | None:
    """The command whose output folder ``path`` is (its ``settings.json``), or None (no such record)."""
    record = _diffaudit_record(Path(path))
    return None if record is None else record["command"]


def recorded_settings(path: str | os.PathLike, command: str) -> dict[str, Any] | None:
    """The settings ``command`` recorded in folder ``path`` (its ``settings.json``), or None when it holds
    none of that command's (before a first run, after another command's, unreadable)."""
    record = _diffaudit_record(Path(path))
    return record["settings"] if record is not None and record["command"] == command else None


#: A file name's longest form in bytes on common file systems (ext4, xfs, APFS, NTFS in UTF-16 units).
NAME_MAX = 255


def _deleting_stem(name: str) -> str:
    """``name`` as it appears in its hidden deletion name: itself, or when that name would pass
    :data:`NAME_MAX` (a legal 240-character --out), its first 120 bytes' worth of characters and a
    digest of the whole name."""
    if len(os.fsencode(name)) <= NAME_MAX - 64:
        return name
    import hashlib

    head = name[:120]
    while len(os.fsencode(head)) > 120:
        head = head[:-1]
    return f"{head}~{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"


def _deleting_name(name: str) -> str:
    """Hidden name a folder ``name`` is renamed to while ``--fresh`` deletes it (unique per call)."""
    return f".{_deleting_stem(name)}.deleting-{os.getpid()}-{secrets.token_hex(4)}"


def remove_deletion_leftovers(path: Path) -> int:
    """Delete the hidden folders :func:`remove_for_fresh` left beside ``path`` when it was killed
    while deleting (named ``.<name>.deleting-<pid>-<hex>``, for this ``name`` only); returns how many.

    They are already out of the user's way, so this only frees their space; a folder another process
    is deleting at the same moment is garbage too, and any error (a race, a permission) leaves it.
    """
    try:
        target = path.resolve()
        stem = _deleting_stem(target.name)
        pattern = re.compile(rf"^\.{re.escape(stem)}\.deleting-\d+-[0-9a-f]+$")
        found = [p for p in target.parent.glob(f".{glob.escape(stem)}.deleting-*") if pattern.match(p.name)]
    except (OSError, RuntimeError):  # an unreadable parent, a link loop: nothing to clean that we could see
        return 0
    removed = 0
    for leftover in found:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
            removed += not leftover.exists()
    return removed


def _foreign_entries(record: dict[str, Any]) -> set[str]:
    """Names a settings ``record`` lists as there before diffaudit first wrote into its folder."""
    names = record.get(FOREIGN_KEY)
    return {n for n in names if isinstance(n, str)} if isinstance(names, list) else set()


def _move_own_entries(target: Path, aside: Path, foreign: set[str]) -> None:
    """Move every entry of ``target`` but the ``foreign`` ones into the new folder ``aside``,
    ``settings.json`` last: a move killed part-way leaves the settings, so the folder is still
    diffaudit's and a re-run refuses or resumes it instead of taking what is left for its own."""
    try:
        aside.mkdir(mode=0o700)
        own = sorted(p.name for p in target.iterdir() if p.name not in foreign and p.name != SETTINGS_FILE)
        for name in [*own, SETTINGS_FILE]:
            if (target / name).exists() or (target / name).is_symlink():
                os.rename(target / name, aside / name)
    except OSError as exc:
        raise DiffauditError(
            f"--fresh could not move diffaudit's files in {target} aside ({exc.strerror or exc}); "
            "delete them yourself, or choose another --out"
        ) from exc


def remove_for_fresh(path: Path, command: str | None = None) -> None:
    """Delete the output folder ``path`` for ``--fresh``; refuse anything diffaudit did not make, and
    (given ``command``) the output of another command (an audit given as `compare --out`: a typo would
    delete its models and results).

    The folder is first renamed to a hidden sibling (:func:`_deleting_name`) in one step and then
    deleted, so a deletion killed part-way never leaves ``path`` holding part of the old work
    (shards without the settings that made them); the hidden leftover is removed by the next run.
    In a folder whose settings record entries it held before diffaudit (``kept_on_fresh``), only
    diffaudit's entries are moved aside, ``settings.json`` last (:func:`_move_own_entries`), and the
    folder with those entries stays.

    Raises :class:`DiffauditError` when ``path`` is a file or a link, holds the working directory, or
    is a non-empty folder without diffaudit's ``settings.json`` or with another command's, or cannot be
    renamed; nothing is deleted then.
    """
    if not path.exists():
        remove_deletion_leftovers(path)
        return
    if not path.is_dir() or path.is_symlink():
        raise DiffauditError(f"--fresh: {path} is a file or a link, not a folder diffaudit made; choose another --out")
    cwd, target = Path.cwd().resolve(), path.resolve()
    if cwd == target or target in cwd.parents:
        raise DiffauditError(f"--fresh would delete {target}, which holds the current directory; choose another --out")
    record = _diffaudit_record(path)
    if any(path.iterdir()) and record is None:
        raise DiffauditError(
            f"--fresh deletes only folders diffaudit made, and {path} holds no diffaudit {SETTINGS_FILE}; "
            "choose another --out, or empty it yourself"
        )
    found = record.get("command") if record is not None else None
    if command is not None and found is not None and found != command:
        raise DiffauditError(f"--fresh starts over the output of `diffaudit {command}`, and {path} holds that of "
                             f"`diffaudit {found}`; choose another --out, or delete it yourself if you mean to")
    foreign = _foreign_entries(record) if record is not None else set()
    if foreign:
        aside = target.parent / _deleting_name(target.name)
        _move_own_entries(target, aside, foreign)
        shutil.rmtree(aside, ignore_errors=True)
        return
    delete_aside(target, "--fresh")


def delete_aside(path: Path, why: str = "diffaudit") -> None:
    """Delete the folder ``path``: renamed to a hidden sibling (:func:`_deleting_name`) in one step, then
    deleted, so a deletion killed part-way never leaves ``path`` holding part of its old contents; the
    hidden leftover is removed by the next run (:func:`remove_deletion_leftovers`). ``why``: who asks,
    for the error when the rename fails (nothing is deleted then)."""
    target = path.resolve()
    aside = target.parent / _deleting_name(target.name)
    try:
        os.rename(target, aside)
    except OSError as exc:
        raise DiffauditError(
            f"{why} could not move {target} aside to delete it ({exc.strerror or exc}); nothing was deleted. "
            "Delete it yourself, or choose another --out"
        ) from exc
    shutil.rmtree(aside, ignore_errors=True)  # what an error leaves is out of the way; the next run removes it
    remove_deletion_leftovers(target)


#: What every command writes into its --out (beside ``settings.json``): a file of that name already there
#: when diffaudit first writes into the folder is refused, never written over (:func:`refuse_taken_names`).
WRITTEN_BY_EVERY_COMMAND = ("result.json",)


def refuse_taken_names(path: Path, foreign: list[str], command: str, writes: tuple[str, ...]) -> None:
    """Refuse a first write into ``path`` whose entries ``foreign`` (there before diffaudit, no
    ``settings.json`` beside them) include a name ``command`` writes (``writes`` and
    :data:`WRITTEN_BY_EVERY_COMMAND`): the user's own file would be written over, or an earlier run's
    work, whose settings file was removed, taken as this run's without its settings being compared."""
    taken = sorted(set(foreign) & {*WRITTEN_BY_EVERY_COMMAND, *writes})
    if taken:
        names = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        it = "it" if len(taken) == 1 else "them"
        raise DiffauditError(f"--out {path} already holds {names}, which `diffaudit {command}` writes, with no "
                             f"{SETTINGS_FILE} of diffaudit's beside {it} (your own, or a run's whose {SETTINGS_FILE} was "
                             f"removed): it would write over {it} or take {it} for its own work; choose another --out, "
                             f"or move {it} out of it")


def prepare_out_dir(out: str | os.PathLike, command: str, settings: dict[str, Any], *, fresh: bool = False,
                    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                    refuse_foreign: str | None = None, writes: tuple[str, ...] = (),
                    setup_files: tuple[str, ...] = ()) -> tuple[Path, bool]:
    """Create or reopen ``out`` for ``command`` with ``settings``.

    ``upgrade``: the command's reading of settings an earlier version recorded (keys since dropped
    because they never shaped the result, keys since added at the value the earlier version used);
    a folder whose upgraded settings match is resumed, and its settings file rewritten (kept as it is on
    read-only storage: it is read the same way next time).

    ``refuse_foreign``: why the command refuses a folder that already holds files diffaudit did not
    write (``export``: its generated images are never mixed with real ones); None records and keeps them,
    unless one has a name the command writes (``writes``, and ``result.json``): refused, never written over.

    ``setup_files``: what the command writes from its settings before any work (``train``'s config and
    training ids, a sample store's manifest). They are no work: a folder holding only them and the
    settings of a run refused or stopped before its first result is started over, and they are removed.

    Returns ``(path, resumed)``; ``resumed`` is True when the folder held the same settings.
    Raises :class:`SettingsMismatchError` when it holds different ones.
    """
    path = Path(out)
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        raise DiffauditError(f"--out {path}: the name {long[:40]}... is {len(os.fsencode(long))} bytes long; file "
                             f"systems allow at most {NAME_MAX}: choose a shorter --out")
    folder_lock.hold(path)  # one process at a time from here: never deleted, read or written by two
    if fresh:
        remove_for_fresh(path, command)
    else:
        remove_deletion_leftovers(path)  # of a --fresh killed while deleting
    sfile = path / SETTINGS_FILE
    foreign = sorted(p.name for p in path.iterdir()) if path.is_dir() and not sfile.exists() else []
    if foreign and refuse_foreign:
        raise DiffauditError(f"--out {path} already holds {len(foreign)} file{'s' * (len(foreign) != 1)} of yours (e.g. "
                             f"{foreign[0]}); {refuse_foreign}")
    refuse_taken_names(path, foreign, command, writes)
    make_private_dir(path)
    record = settings_record(command, settings)
    if foreign:  # what the folder held before diffaudit first wrote into it: never deleted by --fresh
        record[FOREIGN_KEY] = foreign
    if sfile.exists():
        old = read_json(sfile)
        try:
            rewrite = resumed_record(str(path), old, record, upgrade)
        except SettingsMismatchError as e:
            if not holds_no_work(path, old, command, setup_files):
                raise
            from diffaudit.core.progress import stage_line

            # a run refused or stopped before its first result: nothing of the earlier settings to keep
            for name in setup_files:  # written from the earlier settings
                (path / name).unlink(missing_ok=True)
            stage_line(f"{path} held no work yet, only the settings of an earlier run ({'; '.join(e.differences)}); "
                       "starting over with these")
            write_json_atomic(sfile, _keeping_foreign(record, old))
            return path, False
        if rewrite is not None:
            try:
                write_json_atomic(sfile, rewrite)  # an earlier version's record of the same work
            except DiffauditError:  # read-only storage: the earlier record stays, and is read the same way next time
                pass
        remove_stale_temps(path)  # partial files of a run killed mid-write
        return path, True
    write_json_atomic(sfile, record)
    return path, False


def holds_no_work(path: Path, old: Any, command: str, setup_files: tuple[str, ...] = ()) -> bool:
    """True when ``path``, holding ``command``'s settings record ``old``, holds nothing else of diffaudit's:
    no file besides ``settings.json``, the command's ``setup_files`` (see :func:`prepare_out_dir`) and what
    the folder held before (``kept_on_fresh``), empty folders aside. Such a folder is what a run refused or
    stopped before its first result leaves."""
    if not isinstance(old, dict) or old.get("command") != command:
        return False
    kept = _foreign_entries(old)
    for p in path.iterdir():
        if p.name == SETTINGS_FILE or p.name in kept or (p.name in setup_files and p.is_file()):
            continue
        if p.is_dir() and not p.is_symlink() and not any(not q.is_dir() or q.is_symlink() for q in p.rglob("*")):
            continue
        return False
    return True


def moved_roots(old_path: str, new_path: str) -> tuple[str, str] | None:
    """(old root, new root) of two paths: each without the trailing components they share
    (``/a/mvA/models`` and ``/a/mvB/models``: ``/a/mvA`` and ``/a/mvB``); None when they are equal."""
    a, b = Path(old_path).parts, Path(new_path).parts
    n = 0
    while n < min(len(a), len(b)) - 1 and a[-1 - n] == b[-1 - n]:
        n += 1
    old_root, new_root = str(Path(*a[:len(a) - n])), str(Path(*b[:len(b) - n]))
    return None if old_root == new_root else (old_root, new_root)


def _moved_tree(old: Any, new: Any, where: str) -> tuple[str, str] | None:
    """(old root, new root) when output folder ``where`` was moved with what lies beside it: the first
    two absolute paths that differ between settings ``old`` and ``new`` differ only in a root
    (:func:`moved_roots`) that holds ``where`` now and no longer exists where it was (an audit renamed
    from ``mvA`` to ``mvB``: its mia stage recorded ``--shadows /a/mvA/models``, and is asked for
    ``/a/mvB/models``). None otherwise: a folder not moved, or one moved alone, compares its paths as
    recorded. What the paths hold is compared on its own (the digests of data and models), so a moved
    tree is resumed only on the same inputs."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() & new.keys():
            found = _moved_tree(old[key], new[key], where)
            if found is not None:
                return found
        return None
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return next((f for f in (_moved_tree(a, b, where) for a, b in zip(old, new)) if f is not None), None)
    if not (isinstance(old, str) and isinstance(new, str) and old != new and os.path.isabs(old) and os.path.isabs(new)):
        return None
    roots = moved_roots(old, new)
    if roots is None or os.path.exists(roots[0]):
        return None
    here = Path(where).resolve()
    return roots if here == Path(roots[1]) or Path(roots[1]) in here.parents else None


def _remapped(value: Any, old_root: str, new_root: str) -> Any:
    """``value`` (settings) with every string that is ``old_root`` or a path inside it moved to ``new_root``."""
    if isinstance(value, dict):
        return {k: _remapped(v, old_root, new_root) for k, v in value.items()}
    if isinstance(value, list):
        return [_remapped(v, old_root, new_root) for v in value]
    if isinstance(value, str) and (value == old_root or value.startswith(old_root.rstrip(os.sep) + os.sep)):
        return new_root + value[len(old_root):]
    return value


def resumed_record(where: str, old: dict[str, Any], record: dict[str, Any],
                   upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """Check that the settings record ``old`` found in output ``where`` is the work ``record`` asks for.

    Returns None when ``old`` is ``record`` as it stands, or the record to write in its place when
    ``old`` is an earlier version's record of the same work (read through ``upgrade``; what it listed
    as kept on ``--fresh`` stays), or the record of a folder since moved with what lies beside it
    (:func:`_moved_tree`). Raises :class:`SettingsMismatchError` naming the output of another
    command, or up to five settings that differ (by their flags, :func:`flag_names`).
    """
    command = record["command"]
    if not isinstance(old, dict) or old.get("command") != command:
        found = old.get("command") if isinstance(old, dict) else None
        held = (f"the output of `diffaudit {found}`, not `{command}`" if isinstance(found, str) and found else
                f"a {SETTINGS_FILE} that names no command (not the output of `diffaudit {command}`)")
        raise SettingsMismatchError(f"{where} holds {held}; choose another --out")
    recorded = old.get("settings", {})
    moved = _moved_tree(recorded, record["settings"], where)
    if moved is not None:  # renamed or moved since: the paths it recorded inside the moved tree, at their new place
        recorded = _remapped(recorded, *moved)
    diffs = named_differences(recorded, record["settings"])
    if diffs and upgrade is not None:  # an earlier version's record, read as today's: only real differences
        diffs = named_differences(_normalise(upgrade(dict(recorded))), record["settings"])
    if diffs:
        raise SettingsMismatchError(
            f"{where} holds work made with other settings: {'; '.join(diffs[:5])}. "
            "Use the same settings to resume, another --out, or --fresh to start over.",
            differences=tuple(diffs[:5]),
        )
    if old.get("settings", {}) == record["settings"]:  # not moved, nor an earlier version's record
        return None
    return _keeping_foreign(record, old)


def _keeping_foreign(record: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    """``record`` with what ``old`` lists as there before diffaudit first wrote into the folder (kept on --fresh)."""
    return {**record, **({FOREIGN_KEY: old[FOREIGN_KEY]} if FOREIGN_KEY in old else {})}


def settings_record(command: str, settings: dict[str, Any]) -> dict[str, Any]:
    """What ``settings.json`` holds for ``command`` run with ``settings`` (normalised as JSON reads them back)."""
    return {"command": command, "settings": _normalise(settings)}
