"""``diffaudit report RESULT_DIR [--out FILE] [--redact]``: the HTML report and summary.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffaudit.cli.common import emit, out_file
from diffaudit.core.errors import DiffauditError

NAME = "report"
HELP = "render the self-contained HTML report (and summary.json) of an audit or of one command's result"
DESCRIPTION = (
    "Render RESULT_DIR (the output folder of `diffaudit audit`, or of extract, verify, mia, inpaint, "
    "canaries or dedup) as one self-contained HTML file: was training data extracted, how much, how "
    "sure; extracted pairs, flagged cliques, ROC curves, inpainting, canaries, settings and versions. "
    "Images are embedded; the page loads nothing from the network. It shows training images, so it is "
    "written owner-only; --redact replaces them, and the generations that copy them, by their ids, and names training "
    "examples by position, prompts by index and paths outside RESULT_DIR as (path N) (file names, captions and "
    "folders may name people). summary.json (the same numbers and the settings, without images, example names or "
    "captions; its paths labelled alike when redacted) is written beside the report: "
    "summary.json next to report.html, else <name>.summary.json."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("result_dir", metavar="RESULT_DIR", help="an audit folder or one command's output folder")
    p.add_argument("--out", default=None, metavar="FILE", help="HTML file to write, or a folder (an existing one, a path "
                   "ending in /, or a new path without a suffix) to write report.html into (default: RESULT_DIR/report.html)")
    p.add_argument("--redact", action=argparse.BooleanOptionalAction, default=None,
                   help="replace training images, the generations that copy them (verified pairs, clique members) "
                   "and inpainting grids by their ids; show training examples by their position in the training set "
                   "(not their file names), prompts by their index (not their captions) and paths outside RESULT_DIR "
                   "as (path N), in summary.json too. Default: redacted when the report written over is, or RESULT_DIR's own "
                   "report (or its audit's) is: a redacted audit stays redacted in every report of it; --no-redact shows "
                   "the images")


def summary_path(report: Path) -> Path:
    """Where summary.json goes: beside ``report.html``, else ``<name>.summary.json`` (never clobbers a neighbour's)."""
    return report.with_name("summary.json") if report.name == "report.html" else report.with_suffix(".summary.json")


#: What the first bytes of a file diffaudit wrote hold: a report's title, a summary's schema field.
REPORT_MARK, SUMMARY_MARK = b"<title>diffaudit report:", b'"schema_version"'


def refuse_replacing_foreign(path: Path, mark: bytes) -> None:
    """Refuse to write over ``path`` when it exists and is not a file diffaudit wrote (its first 4 KiB
    hold ``mark``): --out naming the user's own file must never replace it."""
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "rb") as f:
            ours = mark in f.read(4096)
    except OSError:
        ours = False
    if not ours:
        raise DiffauditError(f"{path} exists and is not a file diffaudit wrote; diffaudit never replaces a file of "
                             "yours: give --out another file name, or a folder")


def refuse_another_result_folder(out: Path, result_dir: Path) -> None:
    """Refuse an ``out`` that lies in another diffaudit output folder than ``result_dir`` (one holding diffaudit's
    ``settings.json``): there it would replace that folder's own report and summary.json, which its command reads
    back (`report dedup --out audit/report.html` turned an audit's summary into a dedup's)."""
    from diffaudit.core.outdir import recorded_command

    folder = out.parent
    command = recorded_command(folder) if folder.resolve() != Path(result_dir).resolve() else None
    if command is not None:
        raise DiffauditError(f"--out {out} lies in {folder}, the output of `diffaudit {command}`, where it would "
                             f"replace that folder's own report and summary.json; write the report of {result_dir} "
                             "elsewhere")


def run(args: argparse.Namespace) -> int:
    from diffaudit.core.io import read_json
    from diffaudit.core.progress import stage_line
    from diffaudit.core.results import envelope
    from diffaudit.report import render_report, write_summary
    from diffaudit.report.fmt import counted, fmt_int, fmt_pct
    from diffaudit.report.redaction import redacted_report, resolve_redact
    from diffaudit.report.results import stopped_words
    from diffaudit.report.view_extraction import baseline_phrase
    from diffaudit.report.view_misc import extraction_words

    out = out_file(args.out, "report.html") if args.out else Path(args.result_dir) / "report.html"
    refuse_another_result_folder(out, Path(args.result_dir))
    refuse_replacing_foreign(out, REPORT_MARK)
    refuse_replacing_foreign(summary_path(out), SUMMARY_MARK)
    follows = redacted_report(out, Path(args.result_dir))
    args.redact, kept = resolve_redact(args.redact, follows is not None)
    if kept:
        what = f"the report it replaces ({out})" if follows == out else str(follows)
        stage_line(f"report: redacted, as {what} is; --no-redact shows the training images")
    report = render_report(args.result_dir, out, redact=args.redact)
    spath = write_summary(args.result_dir, summary_path(report), redact=args.redact)
    summary = read_json(spath)
    ex = summary.get("extraction") or {}
    parts = []
    if ex.get("unique_extracted") is not None and ex.get("n_samples") == 0:  # as the report's verdict says
        parts.append("extraction not measured: no generation was verified")
    elif ex.get("unique_extracted") is not None:
        base = baseline_phrase(ex)
        what, caveat = extraction_words(ex["unique_extracted"], ex.get("data_vs_model"))
        parts.append(f"{fmt_int(ex['unique_extracted'])} {what} from {counted(ex.get('n_samples'), 'generation')}"
                     + (f" ({base})" if base else "") + caveat)
    for key, m in (summary.get("mia") or {}).items():
        tpr = (m.get("tpr_at_fpr") or {}).get("0.01")
        if tpr is not None:
            parts.append(f"{m.get('label') or key} TPR@1%FPR {fmt_pct(tpr)}")  # as the report names and prints it
    if summary.get("audit_finished") is False:
        stopped = stopped_words(summary.get("audit_stopped"))
        parts.insert(0, f"an unfinished audit: {stopped + '; ' if stopped else ''}its later stages have not run")
    human = f"report: {report}" + (f" ({'; '.join(parts)})" if parts else "") + f"\nsummary: {spath}"
    # attack and folder names come from the result files: emit prints their control characters escaped
    settings = {"result_dir": str(args.result_dir), "out": str(report), "redact": bool(args.redact)}
    emit(args, envelope(NAME, settings, report=str(report), summary_file=str(spath), summary=summary), human)
    return 0
