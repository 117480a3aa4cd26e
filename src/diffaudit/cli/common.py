"""Flags every command shares (docs/architecture.md, Conventions) and output helpers.

``--data`` a dataset; ``--samples`` generations; ``--model`` a run or diffusers directory;
``--membership`` a membership-matrix file; ``--out``; ``--seed``; ``--device``; plus ``--fresh``,
``--quiet`` and ``--json``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import json
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator


def add_data_args(p: argparse.ArgumentParser, *, required: bool = False, default: str | None = "digits",
                  cache: bool = False) -> None:
    """``--data`` and the loader options (resize, crop, subset, mode, skip-bad, cifar root); with
    ``cache``, also ``--data-cache`` (see :func:`load_data`)."""
    g = p.add_argument_group("dataset")
    g.add_argument("--data", required=required, default=None if required else default,
                   help="dataset: built-in name (digits, cifar10, cifar10-test), image folder, "
                        "WebDataset shards (.tar, a brace pattern like x-{000000..000004}.tar, or a quoted glob 'x-*.tar'), .npz with uint8 "
                        "`images` (generations in a sample store are --samples)" + ("" if required else " (default: %(default)s)"))
    g.add_argument("--image-size", type=int, default=None, help="resize to this square size in pixels (bilinear); default: keep the size")
    g.add_argument("--center-crop", type=int, default=None, help="centre-crop to this square size first; default: no crop")
    g.add_argument("--subset", type=int, default=None, help="use a seeded random subset of N examples, in dataset order; default: all")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of --subset (default: %(default)s)")
    g.add_argument("--mode", choices=["L", "RGB"], default=None,
                   help="convert to grayscale (L) or RGB; default: keep (a mix of gray and colour becomes RGB)")
    g.add_argument("--skip-bad", action=argparse.BooleanOptionalAction, default=False,
                   help="skip unreadable images and damaged shards (counted and reported) instead of failing")
    g.add_argument("--cifar-root", default=None,
                   help="folder of the CIFAR-10 shards; default: $DIFFAUDIT_CIFAR10, else ../shared/data/cifar10 "
                        "found from the repository or the current directory")
    if cache:
        g.add_argument("--data-cache", default=None, metavar="DIR",
                       help="decode the datasets once into uint8 .npy parts in DIR and read them memory-mapped from "
                            "there, for training sets larger than memory (reused by later runs with the same dataset "
                            "and options; an interrupted decode resumes; --fresh decodes again); default: decode into memory")


#: Nested settings whose entries are options by their destination: a data record (``data``: ``spec`` is
#: ``--data``; a training run's ``membership``, ``model_index``, ``dedup``), its loader options
#: (``data.options``, as train, shadows, mia and inpaint record them; ``data_options`` beside a ``data`` path,
#: as canaries, dedup, prompts and verify do: :func:`data_options`) and a training configuration (``train``:
#: ``TrainConfig``'s fields are the training options' destinations).
OPTION_GROUPS = ("data", "data.options", "data_options", "train", "attack")


def nested_setting_flags(flags: dict[str, str]) -> dict[str, str]:
    """The flag of each nested setting that an option of the command sets, ``flags`` its options'
    destinations -> flags: ``data.spec`` is ``--data``, ``data.options.image_size`` and
    ``data_options.image_size`` are ``--image-size``, ``train.steps`` is ``--steps``, ``attack.sweep`` is
    ``--sweep`` (:data:`OPTION_GROUPS`). A nested setting that no option of the command sets has no entry, so a
    refusal names it by its key (a shadow run's ``data.model_index`` under ``diffaudit shadows``)."""
    names = {f"{group}.{dest}": flag for group in OPTION_GROUPS for dest, flag in flags.items()}
    if "data" in flags:
        names["data.spec"] = flags["data"]
    return names


def load_data(args: argparse.Namespace, spec: str, *, need_captions: bool = True, **options: Any):
    """The dataset ``spec`` loaded with ``options``: into memory, or through ``--data-cache`` when the
    command has it and it is set (then its images are a memory-mapped ShardedImages). ``need_captions=False``
    for a load whose captions the command never uses (see :func:`~diffaudit.data.loader.load_dataset`; not
    one of the recorded :func:`data_options`)."""
    from diffaudit.data import load_dataset  # here, not at the top: `diffaudit --help` stays free of numpy/torch
    from diffaudit.data.decoded import load_dataset_to_disk

    cache = getattr(args, "data_cache", None)
    if cache:
        refuse_files_for_folders(args, {"data_cache": "a folder for the decoded images"})  # not blamed on --out
        return load_dataset_to_disk(spec, cache, fresh=bool(getattr(args, "fresh", False)), need_captions=need_captions,
                                    **options)
    return load_dataset(spec, need_captions=need_captions, **options)


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The loader keyword arguments from ``add_data_args`` flags (recorded in settings)."""
    return {
        "image_size": args.image_size,
        "center_crop": args.center_crop,
        "subset": args.subset,
        "subset_seed": args.subset_seed,
        "mode": args.mode,
        "skip_bad": args.skip_bad,
        "cifar_root": canonical_path(args.cifar_root),
    }


def canonical_path(spec: str | os.PathLike | None) -> str | None:
    """How settings record the path of an input, so that every spelling of one file or folder compares
    equal on a resume (``cond.npz``, ``./cond.npz``, its absolute path, a link to it): an existing path
    resolved (absolute, links followed); a WebDataset brace pattern (``dir/x-{000000..000003}.tar``, not
    a path itself) with its folder resolved; an object store's URL with its protocol in lower case and no
    trailing slash; a built-in dataset name (``digits``: the loader reads it
    as a name even where a file of that name exists), None, and anything else (a path that does not
    exist, which the command refuses anyway) as given."""
    if spec is None:
        return None
    from diffaudit.data.builtin import BUILTIN_NAMES  # here: `diffaudit --help` stays free of numpy

    text = os.fspath(spec)
    if text in BUILTIN_NAMES or not text:
        return text
    if "://" in text:
        from diffaudit.store.location import OBJECT_PROTOCOLS, canonical_url, local_path, url_protocol

        protocol = url_protocol(text)
        if protocol in OBJECT_PROTOCOLS:  # an object store's URL (a sample store)
            return canonical_url(text)
        if protocol is None:  # file:// names a local path
            text = str(local_path(text))
    path = Path(text).expanduser()
    if path.exists():
        return str(path.resolve())
    if "{" in path.name and path.parent.is_dir():
        return str(path.parent.resolve() / path.name)
    return text


def out_file(out: str, name: str) -> Path:
    """The file a file-writing ``--out`` names: ``out/name`` when ``out`` is a folder (one that exists, a
    path written with a trailing separator, or a new path without a suffix, as every other ``--out`` is a
    folder), else ``out`` itself."""
    path = Path(out)
    folder = out.endswith(("/", os.sep)) or path.is_dir() or (not path.exists() and not path.suffix)
    return path / name if folder else path


#: The options naming a path whose empty value (an unset variable in a script) is refused before any work:
#: read as a path, "" is the current folder ("--out . already holds 31 files of yours").
PATH_OPTIONS = ("out", "data", "samples", "model", "membership", "shadows", "target", "heldout", "data_cache", "shadow",
                "baseline", "train_map", "from_extract", "prompts", "dedup", "calibrate", "loss_cache", "fid_features",
                "config", "repeat", "extend", "mask", "canary_pool", "clip_model")


def check_paths(args: argparse.Namespace, command: str, *, out_object_store: bool = False) -> None:
    """Refuse, before any work, a path option given empty, and an ``--out`` that names an object store where
    the command (``command``) writes local files only (``out_object_store``: it writes to one, ``sample``):
    read as a path, ``s3://bucket/x`` becomes a local folder ``s3:/bucket/x`` without a word. A ``file://``
    ``--out`` becomes its path. An ``--out`` inside a folder the command reads as data is refused
    (:func:`refuse_out_inside_data`)."""
    from diffaudit.core.errors import DiffauditError

    for dest in PATH_OPTIONS:
        value = getattr(args, dest, None)
        if isinstance(value, str) and not value.strip():
            raise DiffauditError(f"--{dest.replace('_', '-')} is empty: give a path")
    out = getattr(args, "out", None)
    if isinstance(out, str) and "://" in out:
        _out_url(args, command, out_object_store)
    refuse_out_inside_data(args, command)


def _out_url(args: argparse.Namespace, command: str, out_object_store: bool) -> None:
    """:func:`check_paths` of an ``--out`` given as a URL: a ``file://`` one becomes its path, an object
    store is refused unless the command writes to one."""
    from diffaudit.core.errors import DiffauditError
    from diffaudit.data.local_paths import file_url_path
    from diffaudit.store.location import url_protocol

    out = args.out
    if url_protocol(out) is None:  # file://
        path = file_url_path(out)
        if path is None:
            raise DiffauditError(f"--out {out}: not a path of this machine; give a local or mounted path")
        args.out = path
    elif not out_object_store:
        raise DiffauditError(
            f"--out {out}: `diffaudit {command}` writes to a local or mounted folder, not to an object store (of the "
            "commands, only `sample --out` writes to one); write to a local folder and copy it there (`aws s3 sync`), "
            "or mount the bucket (s3fs, gcsfuse) and give its path")


def ray_address(value: str) -> str:
    """``--ray``'s value as given; an empty one is refused (an unset variable in a script, ``--ray "$ADDR"``,
    would otherwise run everything in this one process without a word)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("empty: give a Ray address HOST:PORT, `auto` or `local`, or leave --ray out "
                                         "to work in this process")
    return value


def given_options(argv: Iterable[str]) -> set[str]:
    """The destinations of the options written in ``argv`` (``--grad-clip=0.5`` -> ``grad_clip``): what the
    user gave, told apart from defaults."""
    return {a.split("=")[0].lstrip("-").replace("-", "_") for a in argv if a.startswith("--")}


def refuse_files_for_folders(args: argparse.Namespace, flags: dict[str, str]) -> None:
    """Refuse a file given where an option (``flags``: destination -> what folder it takes) names a folder,
    before anything is read or written: the checks below would word it as a folder missing a file inside
    (``RUN/train_ids.json/train_ids.json``) or blame the output folder for a cache that cannot be written."""
    for dest, what in flags.items():
        value = getattr(args, dest, None)
        if isinstance(value, str) and Path(value).is_file():
            from diffaudit.core.errors import DiffauditError

            flag = "--" + dest.replace("_", "-")
            raise DiffauditError(f"{flag} {value} is a file, not {what}; the folder holding it is {Path(value).parent}")


def refuse_stores_for_models(args: argparse.Namespace, dests: Iterable[str], what: str | None = None) -> None:
    """Refuse a sample store (``diffaudit sample --out``) given where an option (``dests``) names a model
    folder, naming the model the store records it sampled: read as a model, it was a folder without a
    ``train_ids.json``, and the advice was to write one into it. ``what``: what the options name instead
    of a model (``--shadows``: the folder of `diffaudit shadows`, which called the store's shadow model 0
    missing)."""
    from diffaudit.store.sample_store import SampleStore

    for dest in dests:
        value = getattr(args, dest, None)
        if not isinstance(value, str) or not Path(value).is_dir() or not SampleStore.is_store(value):
            continue
        from diffaudit.core.errors import DiffauditError

        try:
            sampler = SampleStore.open(value).manifest.get("sampler")
        except DiffauditError:
            sampler = None
        model = sampler.get("model") if isinstance(sampler, dict) else None
        made = f" (it records that model {model} made it)" if isinstance(model, str) and model else ""
        instead = f"{what}: give that" if what else f"a model: give the model folder{made}"
        raise DiffauditError(f"--{dest.replace('_', '-')} {value} is a sample store written by `diffaudit sample`, not "
                             f"{instead}")


def file_in_folder(spec: str | None, name: str) -> str | None:
    """An input file flag's value: ``spec/name`` when ``spec`` is a folder holding ``name`` (the output folder
    of the command that writes it: a dedup folder's ``keep.json``), else ``spec`` as given. A folder without
    ``name`` (another command's output, an audit folder given as ``--dedup``) is refused, saying so."""
    if spec and Path(spec).is_dir():
        if (Path(spec) / name).is_file():
            return str(Path(spec) / name)
        from diffaudit.core.errors import DiffauditError

        raise DiffauditError(f"{spec} is a folder without {name}: give that file, or the output folder of the command "
                             f"that writes it")
    return spec


def _setting(settings: Any, key: str) -> Any:
    """The value at dotted ``key`` (``data.spec``) of nested ``settings``; None where there is none."""
    for name in key.split("."):
        settings = settings.get(name) if isinstance(settings, dict) else None
    return settings


def _replace_paths(settings: dict[str, Any], keys: Iterable[str], change: Callable[[str, str], str]) -> dict[str, Any]:
    """A copy of ``settings`` with each string at dotted ``keys`` replaced by ``change(key, value)``."""
    out = copy.deepcopy(settings)
    for key in keys:
        parent, _, name = key.rpartition(".")
        holder = _setting(out, parent) if parent else out
        if isinstance(holder, dict) and isinstance(holder.get(name), str):
            holder[name] = change(key, holder[name])
    return out


def canonical_settings(settings: dict[str, Any], keys: Iterable[str]) -> dict[str, Any]:
    """``settings`` with the paths at ``keys`` (dotted for nested settings: ``data.spec``) recorded as
    :func:`canonical_path` records them. Applied to the settings an earlier version recorded (the path
    as typed), a relative path is read from the current directory: a folder re-run from where it was
    made, with the same spelling, resumes (see :func:`upgrading_paths`)."""
    return _replace_paths(settings, keys, lambda _, value: canonical_path(value))


def upgrading_paths(keys: Iterable[str], then: Callable[[dict[str, Any]], dict[str, Any]] | None = None
                    ) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The ``upgrade`` hook of :func:`~diffaudit.core.outdir.prepare_out_dir` for a command whose settings
    hold paths at ``keys``: :func:`canonical_settings` of an earlier version's record, then the command's
    own reading of it (``then``).

    A ``functools.partial`` of a module-level function, so it pickles (a training run's hook travels to
    the worker process that opens the run) whenever ``then`` does."""
    return functools.partial(_upgraded_paths, tuple(keys), then)


def _upgraded_paths(keys: tuple[str, ...], then: Callable[[dict[str, Any]], dict[str, Any]] | None,
                    old: dict[str, Any]) -> dict[str, Any]:
    """:func:`upgrading_paths`' hook applied to the ``old`` settings."""
    settings = canonical_settings(old, keys)
    return then(settings) if then is not None else settings


#: The options whose value may be a folder a command reads images (or shards) from.
DATA_FOLDER_OPTIONS = ("data", "heldout", "canary_pool", "cifar_root")


def refuse_out_inside_data(args: argparse.Namespace, command: str) -> None:
    """Refuse an ``--out`` of ``command`` that lies inside another command's output folder
    (:func:`refuse_out_inside_runs`), or is, or lies inside, a folder the command reads as data
    (:data:`DATA_FOLDER_OPTIONS`): what the command writes there (plots, samples, model folders) would be
    listed with that folder's images by the next read, so a resume would find other data, and with
    ``--image-size`` the plots would be trained on. A built-in dataset name is not a folder."""
    from diffaudit.core.errors import DiffauditError
    from diffaudit.data.builtin import BUILTIN_NAMES

    out = getattr(args, "out", None)
    if not isinstance(out, str) or not out or "://" in out:
        return
    target = Path(out).expanduser().resolve()
    result_dir = getattr(args, "result_dir", None) if command == "report" else None
    refuse_out_inside_runs(out, target, Path(result_dir).expanduser().resolve() if isinstance(result_dir, str) else None)
    for name in DATA_FOLDER_OPTIONS:
        value = getattr(args, name, None)
        if not isinstance(value, str) or value in BUILTIN_NAMES or not Path(value).expanduser().is_dir():
            continue
        folder = Path(value).expanduser().resolve()
        if target == folder or folder in target.parents:
            flag = "--" + name.replace("_", "-")
            raise DiffauditError(f"--out {out} lies inside {flag} {value}: what this command writes there (plots, "
                                 f"samples, models) would be read as part of {flag} the next time, and the data would "
                                 f"no longer be the same; choose an --out outside {value}")


#: Commands whose output folder holds the folders of the commands they run (an audit's stages, the training
#: runs of `shadows` and `canaries`): an --out inside one of those is allowed. Every other command's folder
#: holds only what it writes itself: another command's --out inside one (`export --out STORE/png`,
#: `train --out RUN/unet`, `membership --out MIA/m.npz`) filled it with unrelated files, which a sample store
#: then read as a dataset, another result's report replaced the folder's own, and the owner's --fresh deleted.
CONTAINER_FOLDERS = ("audit", "shadows", "canaries")


def refuse_out_inside_runs(out: str, target: Path, reported: Path | None = None) -> None:
    """Refuse an ``--out`` (``target``, resolved) that lies inside another command's output folder, unless
    that command's folder holds others' (:data:`CONTAINER_FOLDERS`), naming the folder. ``reported``: the
    result folder a `report` renders, into which its report.html and summary.json go by design."""
    from diffaudit.core.errors import DiffauditError
    from diffaudit.core.outdir import recorded_command

    for parent in target.parents:
        command = recorded_command(parent) if (parent / "settings.json").is_file() else None
        if command is None or command in CONTAINER_FOLDERS or parent == reported:
            continue
        what = {"sample": "a sample store", "train": "the folder of a `diffaudit train` run"}.get(
            command, f"the result folder of `diffaudit {command}`")
        raise DiffauditError(f"--out {out} lies inside {parent}, {what}, which holds only what `diffaudit "
                             f"{command}` writes there: choose an --out outside it")


def add_run_args(p: argparse.ArgumentParser, *, out_required: bool = True) -> None:
    """``--out --seed --device --fresh`` (``--quiet --json`` are global)."""
    p.add_argument("--out", required=out_required, help="output folder (resumed automatically when it holds finished work)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    p.add_argument("--fresh", action="store_true", help="delete what --out holds and start over")


def run_devices(args: argparse.Namespace, what: str, *, device: str | None = None,
                head_share: str | None = "this process's own share"):
    """``(head, workers)``: the devices ``--device`` (or ``device``) names for this process and for
    ``--ray``'s workers (both this process's without ``--ray``;
    :func:`~diffaudit.core.device.resolve_devices`). A head without the workers' GPU is said once, as
    ``what``, with ``head_share`` (None: it computes nothing itself) running on its CPU."""
    from diffaudit.core.device import resolve_devices
    from diffaudit.core.progress import stage_line

    name = args.device if device is None else device
    if not getattr(args, "ray", None):
        return resolve_devices(name)
    from diffaudit.core.ray_pool import cluster_gpus, connect

    head, workers = resolve_devices(name, cluster_gpus(connect(args.ray)))
    if head.type != workers.type:
        share = f", and {head_share} on the CPU" if head_share else ""
        stage_line(f"{what}: this machine has no CUDA; the Ray workers run on the cluster's GPUs{share}")
    return head, workers


def devices_record(args: argparse.Namespace, head, workers) -> dict[str, str]:
    """Where a command computed, for its result's ``runtime``: ``device``, and with ``--ray``
    ``ray_workers_device`` (:func:`run_devices`)."""
    return {"device": str(head), **({"ray_workers_device": str(workers)} if getattr(args, "ray", None) else {})}


@dataclasses.dataclass
class AuditStage:
    """The audit stage that runs in-process now: its ``name``, and the ``error`` its command refused with
    (the message it printed, set by :func:`~diffaudit.cli.main.main`), None while it has not."""

    name: str
    error: str | None = None


#: The audit stage that runs in-process now, None outside an audit: the command it runs speaks as that stage.
_AUDIT_STAGE: ContextVar[AuditStage | None] = ContextVar("diffaudit_audit_stage", default=None)


@contextmanager
def audit_stage(name: str) -> Iterator[AuditStage]:
    """Within this block the command an audit runs is its stage ``name`` (:func:`speaking_as`); yields the
    stage, whose ``error`` says why its command failed."""
    from diffaudit.core.progress import warnings_speak_as

    stage = AuditStage(name)
    token = _AUDIT_STAGE.set(stage)
    try:
        with warnings_speak_as(speaking_as(None)):  # warnings from lower layers name the stage too
            yield stage
    finally:
        _AUDIT_STAGE.reset(token)


def current_stage() -> AuditStage | None:
    """The audit stage running now (:func:`audit_stage`), None outside an audit."""
    return _AUDIT_STAGE.get()


def speaking_as(command: str | None) -> str | None:
    """How ``command`` names itself in its messages: ``audit (stage train)`` while an audit runs it (the
    target trains through ``shadows`` even without shadow models), else ``command``."""
    stage = _AUDIT_STAGE.get()
    return command if stage is None else f"audit (stage {stage.name})"


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM, SIGHUP) inside a command that another ran in-process (an audit's stage), which said
    so itself: the enclosing command ends with the stage's ``status`` (130, 143, 129) without saying it again."""

    def __init__(self, status: int = 130):
        super().__init__(status)
        self.status = status


class StdoutClosed(Exception):
    """Standard output's reader has gone (``diffaudit compare A B | head -1``): the output is cut short."""


def write_stdout(text: str) -> None:
    """Write ``text`` to standard output now (flushed); :class:`StdoutClosed` when its reader has gone."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise StdoutClosed(str(exc)) from exc


def emit(args: argparse.Namespace, result: dict[str, Any], human: str) -> None:
    """Print the result: JSON on stdout with ``--json``, else the human line (control characters
    escaped: it holds names from data)."""
    from diffaudit.core.progress import printable

    if getattr(args, "json", False):
        write_stdout(json.dumps(result, indent=2, default=str, allow_nan=False) + "\n")
    elif not getattr(args, "quiet", False):
        write_stdout(printable(human) + "\n")


def emit_finished(args: argparse.Namespace, out: Path, resumed: bool, summary: Callable[[dict[str, Any]], str], *,
                  stale: Callable[[dict[str, Any]], str | None] | None = None, stale_files: tuple[str, ...] = ()) -> bool:
    """On a resumed ``out`` that already holds ``result.json``: print it (``summary(result)`` plus
    "(already finished)") and return True; the command then returns 0 without redoing anything.

    ``stale(result)``: why a result an earlier version computed no longer holds, and what happens now
    (None: it holds); such a result, and the ``stale_files`` derived with it, are removed and False is
    returned, so the command computes them again from what it cached."""
    from diffaudit.core.io import read_json
    from diffaudit.core.progress import stage_line

    path = out / "result.json"
    if not (resumed and path.exists()):
        return False
    result = read_json(path)
    reason = stale(result) if stale is not None else None
    if reason:
        stage_line(f"{path} {reason}")
        for name in ("result.json", *stale_files):
            (out / name).unlink(missing_ok=True)
        return False
    emit(args, result, f"{summary(result)} (already finished in {out})")
    return True


def set_quiet(quiet: bool) -> None:
    if quiet:
        os.environ["DIFFAUDIT_QUIET"] = "1"
