"""Find and read the results a report renders: one command's folder or a whole audit folder.

A single command's folder holds ``result.json`` whose ``command`` names it (``verify``, ``mia``,
...). An audit folder holds one sub-folder per stage (``train/``, ``samples/``, ``extract/``,
``verify/``, ``mia/`` or ``mia-<attack>/``, ``inpaint/``, ``canaries/``, ``dedup/``), each with its
own ``result.json``, plus ``audit.json``. Everything here tolerates missing or partial stages: a
report renders what exists.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from diffaudit.core import interrupt
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import loads_json, read_json
from diffaudit.core.outdir import SETTINGS_FILE

RESULT_FILE = "result.json"
AUDIT_FILES = ("audit.json",)
#: What an audit records when one of its stages stops it (``diffaudit audit``): ``stage``, ``exit`` (130, 143 or
#: 129: interrupted, by Ctrl-C, SIGTERM or SIGHUP) and ``error`` (what the stage's command said, None when it said nothing a record keeps).
STAGE_STOPPED = "stage_stopped.json"


@dataclass
class Stage:
    """One command's result: its folder, its ``result.json`` and the command that wrote it."""

    name: str
    command: str
    path: Path
    result: dict[str, Any]
    #: A training run read for the model the results were made on (an audit's target, the run a folder of
    #: separate results names, the model a canaries run trained in its folder): not a result folder of its own.
    model_record: bool = False

    @property
    def settings(self) -> dict[str, Any]:
        s = self.result.get("settings")
        return s if isinstance(s, dict) else {}

    @property
    def seeds(self) -> dict[str, Any]:
        s = self.result.get("seeds")
        return s if isinstance(s, dict) else {}

    @property
    def versions(self) -> dict[str, Any]:
        s = self.result.get("versions")
        return s if isinstance(s, dict) else {}


@dataclass
class ResultSet:
    """Every stage found under ``root``.

    Attributes:
        root: the folder given to the report.
        command: ``audit`` for an audit folder, else the single command's name.
        stages: in folder order; a command may occur several times (``mia-loss``, ``mia-lira``).
        audit: the content of ``audit.json`` (or of an ``audit`` result.json), {} when absent.
        store_dirs: sample stores found (folders holding ``manifest.json``).
        unreadable: why each result file found could not be read (it is left out of the report).
        unfinished: an audit folder whose audit has not finished (its ``settings.json`` names
            ``audit`` but it holds no audit ``result.json``): the stages found are the finished ones,
            and ``audit`` holds the recorded settings.
        stopped: of an unfinished audit, the stage that stopped it (:data:`STAGE_STOPPED`), None when
            none did (it is running, or was killed).
        memo: what the report derives from the stages' files more than once (summary and views),
            computed once: (name, stage folder) -> value (see :meth:`memo_of`).
    """

    root: Path
    command: str
    stages: list[Stage] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)
    store_dirs: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    unfinished: bool = False
    stopped: dict[str, Any] | None = None
    memo: dict[tuple[str, Path], Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def audit_settings(self) -> dict[str, Any]:
        """The audit's own settings: ``audit.json``'s ``settings``, or the file itself when it is a bare config."""
        s = self.audit.get("settings")
        if isinstance(s, dict):
            return s
        envelope = ("schema_version", "command", "settings", "seeds", "versions")
        return {k: v for k, v in self.audit.items() if k not in envelope and not isinstance(v, list)}

    def holds(self, path: Path) -> bool:
        """Whether ``path``, links followed, lies inside the reported folder (see :func:`contained`).

        A stage folder that is a link out of it is some other folder on this machine: the report shows
        its numbers but embeds none of the images it names."""
        return contained(path, self.root) is not None

    def of(self, command: str) -> list[Stage]:
        """The stages written by ``command``."""
        return [s for s in self.stages if s.command == command]

    def first(self, command: str) -> Stage | None:
        found = self.of(command)
        return found[0] if found else None

    def memo_of(self, name: str, stage: Stage, compute: Callable[[], Any]) -> Any:
        """``compute()`` for ``stage``, computed on the first call for (``name``, the stage's folder) and
        kept: the summary and the views read what it derives from the stage's files once."""
        key = (name, stage.path)
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]


#: The stages of ``diffaudit audit`` in the order it runs them, and the command behind each folder.
AUDIT_STAGES = ("train", "sample", "extract", "verify", "mia", "outliers", "inpaint")
_STAGE_OF_COMMAND = {"shadows": "train", **{s: s for s in AUDIT_STAGES}}


def _stopped(root: Path) -> dict[str, Any] | None:
    """An unfinished audit's :data:`STAGE_STOPPED` record (``stage`` a known stage, ``exit`` an int, ``error``
    a string or None), None when it has none or it is not such a record."""
    record = read_object(root / STAGE_STOPPED) if (root / STAGE_STOPPED).is_file() else None
    if not record or record.get("stage") not in AUDIT_STAGES or not isinstance(record.get("exit"), int):
        return None
    error = record.get("error")
    return {"stage": record["stage"], "exit": record["exit"], "error": error if isinstance(error, str) else None}


def stopped_words(stopped: dict[str, Any] | None) -> str:
    """"its mia stage failed (exit 2)" (or "was interrupted") of a :data:`STAGE_STOPPED` record, "" without one."""
    if not stopped:
        return ""
    how = "was interrupted" if interrupt.stopped_status(stopped["exit"]) else f"failed (exit {stopped['exit']})"
    return f"its {stopped['stage']} stage {how}"


def finished_stages(rs: ResultSet) -> list[str]:
    """The audit stages ``rs`` holds results of, in the order the audit runs them (a ``shadows`` folder is
    its ``train`` stage). A training run read for the model's record (:attr:`Stage.model_record`: the
    ``--model`` an audit was given, which it trains nothing for) is no stage the audit ran; where the audit
    trained its target, its ``shadows`` folder is that stage."""
    found = {_STAGE_OF_COMMAND.get(st.command) for st in rs.stages if not st.model_record}
    return [s for s in AUDIT_STAGES if s in found]


#: Levels of nesting a result file may hold. diffaudit's own files nest a few; a deeper document is
#: refused, so that nothing the report does with it (flattening settings, rendering) recurses past
#: Python's limit.
MAX_DEPTH = 64


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How many levels of lists and objects ``value`` nests (a scalar: 0, ``[]``: 1), counted level by
    level without recursion, and only up to ``limit + 1``."""
    depth, level = 0, [value] if isinstance(value, (dict, list)) else []
    while level and depth <= limit:
        depth += 1
        level = [v for x in level for v in (x.values() if isinstance(x, dict) else x) if isinstance(v, (dict, list))]
    return depth


def too_deep(source: Any) -> str:
    """Why a JSON file nested deeper than :data:`MAX_DEPTH` levels (but within what Python's parser follows,
    past which :func:`~diffaudit.core.io.nested_too_deeply` says so) is left out."""
    return (f"{source} is nested too deeply to be read as JSON (diffaudit's files nest a few levels; this one more "
            f"than {MAX_DEPTH}): is it the right file?")


def parse_json(text: str, source: Any) -> Any:
    """:func:`~diffaudit.core.io.loads_json` of ``text``, raising ValueError (as ``json.loads`` does for
    text that is not JSON) for a document nested deeper than Python's parser follows
    (:func:`~diffaudit.core.io.nested_too_deeply`) or than :data:`MAX_DEPTH` levels (:func:`too_deep`)."""
    try:
        data = loads_json(text, source)
    except DiffauditError as exc:
        raise ValueError(str(exc)) from None
    if nesting_depth(data) > MAX_DEPTH:
        raise ValueError(too_deep(source))
    return data


def read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(the JSON object in ``path``, None), or (None, why it cannot be read): missing, unreadable, not
    JSON, nested too deeply (deeper than Python's parser follows: :func:`~diffaudit.core.io.read_json`
    says so; than :data:`MAX_DEPTH`: :func:`too_deep`) or not an object."""
    try:
        data = read_json(path)
    except (DiffauditError, OSError) as exc:
        return None, str(exc)
    if nesting_depth(data) > MAX_DEPTH:
        return None, too_deep(path)
    if not isinstance(data, dict):
        return None, f"{path} holds JSON but no object (a {type(data).__name__})"
    return data, None


def read_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when the file is missing, unreadable or holds no object."""
    return read_result(path)[0]


def contained(path: Path, folder: Path) -> Path | None:
    """``path`` with every link followed, when that lies inside ``folder`` (its links followed too); None
    when it leads out of it (an absolute path, ``..``, a link to a file elsewhere) or does not exist.

    A result folder may come from someone else: the files it names are shown only from inside it, so
    that reporting it never embeds a file of this machine's (a private photo) into the HTML.
    """
    try:
        resolved = Path(path).resolve(strict=True)
        return resolved if resolved.is_relative_to(Path(folder).resolve(strict=True)) else None
    except (OSError, RuntimeError, ValueError):  # missing, a loop of links, a NUL in the name
        return None


def links_out(folder: Path, within: Path) -> Path | None:
    """The first link under ``folder`` (walked without following links) that leads out of ``within``,
    else None: a folder whose own path lies inside ``within`` may still hold links to files elsewhere."""
    stack = [Path(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue
        for e in entries:
            if e.is_symlink():
                if contained(Path(e.path), within) is None:
                    return Path(e.path)
            elif e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return None


def _command_of(result: dict[str, Any], folder: Path) -> str:
    cmd = result.get("command")
    if isinstance(cmd, str) and cmd:
        return cmd
    # Fall back on the folder's name: ``mia-lira`` -> ``mia``.
    return folder.name.split("-")[0]


#: Commands that train the model they measure inside their folder, and where (canaries: ``model/``).
TRAINED_INSIDE = {"canaries": "model"}


def _trained_inside(stage: Stage, read: Callable[[Path], dict[str, Any] | None]) -> list[Stage]:
    """The training run a command trained in its own folder (:data:`TRAINED_INSIDE`), as a ``train``
    stage, so that the summary's model (steps, training images, DP-SGD's ε) is the one it measured."""
    sub = TRAINED_INSIDE.get(stage.command)
    path = stage.path / sub / RESULT_FILE if sub else None
    data = read(path) if path is not None and path.is_file() else None
    if data is None or _command_of(data, path.parent) != "train":
        return []
    return [Stage(f"{stage.name}/{sub}", "train", path.parent, data, model_record=True)]


def _subdirs(root: Path) -> Iterator[Path]:
    try:
        yield from sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return


#: Commands whose folder alone holds no measurement (inputs of later commands), and what to do with each.
NOTHING_TO_REPORT = {
    "sample": "it is a store of generations. `diffaudit export --samples FOLDER --out PNGS` writes them as images; "
              "`diffaudit extract` and `verify` measure them, and their folders have a report",
    "export": "it holds generations exported as PNG files, to look at as they are",
    "pool": "it lists sample stores read as one set of generations; `diffaudit verify --samples FOLDER` counts the "
            "training images extracted over all of them, and its folder has a report",
    "prompts": "its prompts.txt (and their duplicate counts, in result.json) are what `diffaudit sample --prompts` "
               "generates from",
    "membership": "its membership matrix is what `diffaudit shadows` trains on and `diffaudit mia` attacks with",
}


def load_results(result_dir: str | Path) -> ResultSet:
    """Read ``result_dir`` as a single command's folder or an audit folder.

    Raises :class:`DiffauditError` when the folder does not exist or holds no result at all.
    """
    root = Path(result_dir)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"  # e.g. an audit stopped before it made its folder
        raise DiffauditError(f"{root} {what}; give the output folder of `diffaudit audit` or of one command")
    unreadable: list[str] = []

    def read(path: Path) -> dict[str, Any] | None:
        data, why = read_result(path)
        if why is not None:
            unreadable.append(why)
        return data

    top = read(root / RESULT_FILE) if (root / RESULT_FILE).exists() else None
    audit: dict[str, Any] = {}
    for name in AUDIT_FILES:
        if (root / name).exists():
            data = read(root / name)
            if data:
                audit = data
    if top is not None and _command_of(top, root) == "compare":  # a table of two folders' numbers, not a result
        raise DiffauditError(f"{root} holds the output of `diffaudit compare`, which has no HTML report: its table is what "
                             "`diffaudit compare A B` prints (the rows are in its result.json); report each of the two "
                             "folders it compares")
    if top is not None and not audit and _command_of(top, root) in NOTHING_TO_REPORT:
        raise DiffauditError(f"{root} holds the output of `diffaudit {_command_of(top, root)}`, which measures nothing for a "
                             f"report to show: {NOTHING_TO_REPORT[_command_of(top, root)]}")
    if top is not None and _command_of(top, root) != "audit" and not audit:
        stage = Stage(root.name, _command_of(top, root), root, top)
        stores = [root] if (root / "manifest.json").exists() else []
        stages = [stage] + _trained_inside(stage, read)
        return ResultSet(root=root, command=stage.command, stages=stages, store_dirs=stores, unreadable=unreadable)
    if top is not None and not audit:
        audit = top
    unfinished = False
    if top is None and not audit:  # an audit under way (or stopped) has recorded its settings only
        record = read_object(root / SETTINGS_FILE) if (root / SETTINGS_FILE).is_file() else None
        if record and record.get("command") == "audit" and isinstance(record.get("settings"), dict):
            audit, unfinished = {"settings": record["settings"]}, True
    rs = ResultSet(root=root, command="audit", audit=audit, unreadable=unreadable, unfinished=unfinished,
                   stopped=_stopped(root) if unfinished else None)
    for sub in _subdirs(root):
        if (sub / "manifest.json").exists():
            rs.store_dirs.append(sub)
        if (sub / RESULT_FILE).exists():
            data = read(sub / RESULT_FILE)
            if data is not None:
                rs.stages.append(Stage(sub.name, _command_of(data, sub), sub, data))
    _add_target_run(rs)
    if not audit:
        _check_gathered(rs)
    if not rs.stages and not audit:
        if unreadable:
            raise DiffauditError(f"{root} holds no result that can be read: " + "; ".join(unreadable))
        raise DiffauditError(
            f"{root} holds no {RESULT_FILE} (nor stage folders with one); give the output folder of "
            "`diffaudit audit` or of one command (extract, verify, mia, inpaint, canaries, dedup)"
        )
    return rs


#: Commands whose several results one report shows side by side (each membership attack its own entry).
SHOWN_SIDE_BY_SIDE = ("mia",)


def _check_gathered(rs: ResultSet) -> None:
    """Refuse a folder of separate results that one report cannot show truthfully: one that holds whole
    audits (each is its own report), or two results of one command (a report shows one of each, so the
    others would be left out while its headline speaks for the folder)."""
    audits = [st.name for st in rs.stages if st.command == "audit"]
    if audits:
        raise DiffauditError(f"{rs.root} is not one audit but holds {len(audits)} audit folder(s) ({', '.join(audits)}): "
                             f"report each (`diffaudit report {rs.root / audits[0]}`), or put two side by side with "
                             "`diffaudit compare`")
    by_command: dict[str, list[str]] = {}
    for st in rs.stages:
        if st.command not in SHOWN_SIDE_BY_SIDE:
            by_command.setdefault(st.command, []).append(st.name)
    twice = {cmd: names for cmd, names in by_command.items() if len(names) > 1}
    if twice:
        cmd, names = next(iter(twice.items()))
        raise DiffauditError(f"{rs.root} holds {len(names)} results of `{cmd}` ({', '.join(names)}), and a report shows "
                             f"one result of each command but `{'`, `'.join(SHOWN_SIDE_BY_SIDE)}` (whose results it shows "
                             "side by side): report each folder alone, put two side by side with `diffaudit compare`, or "
                             "gather one of each command in a folder of its own")


def model_used(settings: dict[str, Any]) -> dict[str, Any] | None:
    """The model a command's recorded settings say its result was made on, None when they name none.

    ``{"run": path}`` for one model: ``model`` (sample, inpaint, canaries, an audit's ``--model``), or
    the run mia attacked as its ``target`` records it (``--target RUN``; ``--target-index K``: the shadow
    model ``model-0K`` of its ``shadows`` folder). ``{"pooled": M, "shadows": path}`` for mia's default
    leave-one-out, where every one of the M shadow models is the target in turn and their rows are
    pooled: a result of no one model (M and the folder None where not recorded)."""
    if isinstance(settings.get("model"), str) and settings["model"]:
        return {"run": settings["model"]}
    target = settings.get("target")
    if not isinstance(target, dict):
        return None
    shadows = settings.get("shadows") if isinstance(settings.get("shadows"), str) and settings["shadows"] else None
    if isinstance(target.get("run"), str) and target["run"]:
        return {"run": target["run"]}
    index = target.get("index")
    if target.get("mode") == "shadow" and isinstance(index, int) and not isinstance(index, bool) and shadows:
        return {"run": os.path.join(shadows, f"model-{index:02d}")}  # shadow_run_dirs' names
    if target.get("mode") == "leave-one-out":
        return {"pooled": _n_models(settings), "shadows": shadows}
    return None


def _n_models(settings: dict[str, Any]) -> int | None:
    """How many shadow models a mia run's settings record (``membership.models``, else its shadow digests)."""
    membership = settings.get("membership") if isinstance(settings.get("membership"), dict) else {}
    n = membership.get("models")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    digests = settings.get("shadow_digests")
    return len(digests) if isinstance(digests, dict) and digests else None


def _target_runs(rs: ResultSet) -> list[tuple[str, Path]]:
    """Where the training run of an audit's target may lie, as (stage name, folder), first first.

    Without ``--model`` the audit trains its target as model 0 of its ``shadows`` folder
    (``models/model-00``). With ``--model`` the target is that run: ``models/model-00`` when there
    are no shadows (a link to it), then the recorded ``target`` and ``--model`` paths (relative to
    the audit folder or its parent when the report runs elsewhere).

    A folder of separate results has no target of its own: there it is each run its results name
    (:func:`model_used`), in folder order; none when they name none (membership attacks pooled over
    every shadow model are of no one model, and a ``shadows`` folder beside them names none either).
    """
    s = rs.audit_settings
    if not rs.audit:
        runs = [(st, used["run"]) for st in rs.stages if (used := model_used(st.settings)) and used.get("run")]
        found = [path for st, run in runs if (path := resolve_path(run, st.path, rs.root, rs.root.parent)) is not None]
        return [(_name_in(path, rs.root), path) for path in dict.fromkeys(found)]
    if not s.get("model"):
        return [(f"{st.name}/model-00", st.path / "model-00") for st in rs.of("shadows")]
    found = [] if s.get("shadows") else [("model", rs.root / "models" / "model-00")]
    for value in (rs.audit.get("target"), s.get("model")):
        path = resolve_path(value, rs.root, rs.root.parent)
        if path is not None:
            found.append(("model", path))
    return found


def _name_in(path: Path, root: Path) -> str:
    """``path`` as a stage's name: relative to ``root`` where it lies inside (``shadows/model-00``), else its name."""
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (OSError, RuntimeError, ValueError):
        return path.name


def _add_target_run(rs: ResultSet) -> None:
    """Add the target's training run (``result.json`` of ``train``) as a ``train`` stage, unless the audit
    folder holds one already; nothing when no candidate of :func:`_target_runs` holds one."""
    if rs.first("train") is not None:
        return
    for name, folder in _target_runs(rs):
        data = read_object(folder / RESULT_FILE) if (folder / RESULT_FILE).is_file() else None
        if data is not None and _command_of(data, folder) == "train":
            rs.stages.append(Stage(name, "train", folder, data, model_record=True))
            return


def records(result: dict[str, Any], *required: str, preferred: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The list of per-item records in ``result`` whose items carry all ``required`` keys.

    Looks first at the keys in ``preferred``, then at every list value, so a renamed field still
    renders. Returns [] when none is found.
    """
    candidates = [result.get(k) for k in preferred] + list(result.values())
    for value in candidates:
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            if all(all(k in v for k in required) for v in value):
                return value
    return []


def read_jsonl(path: Path, limit: int = 200_000) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; unreadable lines (a torn last line) are skipped."""
    rows: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    break
                try:
                    row = parse_json(line, path)
                except ValueError:  # json.JSONDecodeError, or nested too deeply
                    continue
                if isinstance(row, dict):
                    rows.append(row)
    except OSError:
        return []
    return rows


def resolve_path(value: Any, *bases: Path, exists: Callable[[Path], bool] = Path.exists) -> Path | None:
    """An existing path for a recorded ``value``: as given, or relative to one of ``bases``.

    Recorded paths may be relative to the working folder of the command that wrote them; the report
    may run elsewhere, so each base (the stage folder, the audit folder, their parents) is tried,
    and last the base name inside each base. ``exists`` says whether a candidate is there (a brace
    pattern of shards is when its shards are).
    """
    if not isinstance(value, (str, Path)) or not str(value):
        return None
    p = Path(value)
    candidates = [p, *([] if p.is_absolute() else [base / p for base in bases]), *[base / p.name for base in bases]]
    return next((c for c in candidates if exists(c)), None)


def closest(e: dict[str, Any]) -> dict[str, Any]:
    """A verify record as the report shows it: by the closest of the generations counted for its training
    image (``closest_*``, the strongest evidence), not by the first one the count credits; records from
    before they were kept show the first."""
    if not isinstance(e.get("closest_sample"), str) or not e["closest_sample"]:
        return e
    return {**e, "sample": e["closest_sample"], "l2": e.get("closest_l2"), "ratio": e.get("closest_ratio"),
            "train_id": e.get("closest_train_id"), "train_key": e.get("closest_train_key")}
