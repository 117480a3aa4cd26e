"""Whether a report was written redacted, so that writing it again keeps it so unless asked otherwise.

A redacted report (``--redact``) is made to be shared; one written over it without ``--redact`` (a
``diffaudit report`` of the folder, an audit ``--redo``) used to show the training images again without
a word, and so did a report of a redacted audit written to a new file. :func:`resolve_redact` makes an
unasked ``--redact`` follow the report being replaced, or the redacted report the folder already has
(:func:`redacted_report`); ``--no-redact`` shows the images.
"""

from __future__ import annotations

from pathlib import Path

#: The mark a redacted report carries in its head (templates/report.html).
REDACTED_META = b'<meta name="diffaudit-redacted" content="true">'
#: What a redacted report of an earlier version shows in its header, and carries in its first bytes.
_OLDER_MARK = b'<span class="badge">training images redacted</span>'
_HEAD_BYTES = 1 << 16


def was_redacted(report: Path) -> bool:
    """Whether ``report`` (an HTML file diffaudit wrote) is redacted; False when it is not there or unreadable."""
    try:
        with open(report, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except OSError:
        return False
    return REDACTED_META in head or _OLDER_MARK in head


def redacted_report(out: Path, result_dir: Path) -> Path | None:
    """The redacted report a new report of ``result_dir`` written to ``out`` follows, None when there is none:
    the report ``out`` replaces, else the folder's own (``RESULT_DIR/report.html``, as ``audit --redact``
    wrote it), else that of the audit whose stage folder ``result_dir`` is."""
    from diffaudit.core.outdir import recorded_command

    folder = Path(result_dir)
    candidates = [Path(out), folder / "report.html"]
    if recorded_command(folder.parent) == "audit":
        candidates.append(folder.parent / "report.html")
    return next((c for c in candidates if was_redacted(c)), None)


def resolve_redact(asked: bool | None, was: bool) -> tuple[bool, bool]:
    """``(redact, kept)``: ``asked`` (``--redact`` True, ``--no-redact`` False) where given, else ``was``
    (:func:`was_redacted` of the report written over); ``kept`` is True when ``was`` decided it."""
    return (asked, False) if asked is not None else (was, was)
