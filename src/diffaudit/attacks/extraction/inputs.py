"""The generations that `extract` and `verify` read (``--samples``), and the check that an extract
result belongs to them.

A missing ``--samples`` path used to surface as the dataset loader's "dataset 'nope' not found:
expected a built-in name", which names neither the flag nor what a samples input is. And the ids
of generations (``p0-i17``) exist in every sample store, so an extract result made from other
generations would select medoids in the wrong store without any error: the samples identity that
`extract` records is compared with that of ``--samples``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import recorded_command
from diffaudit.data.dataset import ImageDataset
from diffaudit.store import SampleStore, read_samples
from diffaudit.store.location import is_object_url

#: What a ``--samples`` input is, for error messages.
SAMPLES_KINDS = ("a sample store (a folder or an object-store URL, written by `diffaudit sample`), a pool of stores "
                 "(`diffaudit pool`), an .npz with uint8 `images` (and optional "
                 "`prompts`), an image folder, or WebDataset shards (.tar or a brace pattern)")


def read_generations(spec: str, *, flag: str = "--samples") -> ImageDataset:
    """``spec`` read as generations (a sample store memory-mapped); a path that does not exist is
    refused naming ``flag`` and the kinds of input it takes. Errors about an existing input (a
    damaged store, a bad .npz) are the reader's own."""
    _refuse_other_outputs(spec, flag)
    try:
        return read_samples(spec, lazy=True)
    except DiffauditError:
        if Path(spec).exists() or "{" in str(spec) or is_object_url(spec):  # an existing input, a brace pattern, a URL
            raise
    raise DiffauditError(f"{flag} {spec}: no such file or folder; expected generations: {SAMPLES_KINDS}")


def _refuse_other_outputs(spec: str, flag: str) -> None:
    """Refuse another command's output folder as generations (read as an image folder, its plots would
    be "generations"), naming the sample store inside it when there is one (an audit's ``samples/``). The
    folder of ``diffaudit export`` is generations: one PNG per generation, named by its id."""
    path = Path(spec)
    command = recorded_command(path) if path.is_dir() else None
    if command in (None, "sample", "export", "pool"):  # export's folder is the generations, one PNG each
        return
    inner = path / "samples"
    where = (f"; its generations are in {inner}: pass {flag} {inner}" if recorded_command(inner) == "sample"
             else "; pass the sample store `diffaudit sample` wrote")
    raise DiffauditError(f"{flag} {spec} is the output folder of `diffaudit {command}`, not generations{where}")


def check_extract_samples(result: dict[str, Any], identity: str | None, *, path: str, samples: str,
                          samples_recorded_as: str | None = None) -> str | None:
    """Refuse an extract ``result`` made from other generations than ``samples`` (whose identity,
    from :func:`~diffaudit.store.samples_identity`, is ``identity``); the medoid ids it names would
    otherwise be looked up among the wrong generations. ``samples_recorded_as``: ``samples`` as settings
    record a path; when the extract ran on that same path, its generations were made again since (``sample
    --fresh``, an .npz rewritten), and the refusal says to extract again rather than to pass that path.

    Returns a warning (None when the identities match) when the check cannot be made: the result
    predates the recorded ``samples_identity`` (or ``identity`` is None). Raises
    :class:`DiffauditError` naming both identities and both paths when they differ.
    """
    settings = result.get("settings") if isinstance(result.get("settings"), dict) else {}
    recorded = settings.get("samples_identity")
    made_from = settings.get("samples")
    if recorded is None or identity is None:
        return (f"--from-extract {path} does not record which generations it was made from (an extract result of an "
                "earlier version): the medoids are looked up in --samples by id alone, so make sure --samples "
                f"{samples} is what the extract ran on{f' ({made_from})' if made_from else ''}, or re-run "
                "`diffaudit extract` to record it")
    if recorded != identity and made_from is not None and made_from == samples_recorded_as:
        remade = (f"the sample store at {samples} was made again" if SampleStore.is_store(samples)
                  else f"{samples} was rewritten")
        raise DiffauditError(f"--from-extract {path} was made from the generations --samples {samples} held when the extract "
                             f"ran (samples identity {recorded}); {remade} since (now {identity}), so those generations are "
                             f"gone: run `diffaudit extract --samples {samples}` again and verify with its result")
    if recorded != identity:
        raise DiffauditError(
            f"--from-extract {path} was made from other generations than --samples {samples}: the extract ran on "
            f"{made_from or 'unrecorded samples'} (samples identity {recorded}), --samples {samples} is {identity}; pass the "
            f"samples the extract ran on (--samples {made_from or '...'}) or run `diffaudit extract` on {samples}"
        )
    return None
