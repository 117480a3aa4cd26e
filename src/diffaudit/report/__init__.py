"""The report a person reads: ``summary.json`` and one self-contained HTML file (issue 7).

- :func:`build_summary` ``(result_dir) -> dict``: the audit's numbers (extraction, membership
  inference, inpainting, canaries, settings, seeds, versions).
- :func:`write_summary` ``(result_dir, out_file=None, redact=False) -> Path``: the same, written owner-only
  (``redact``: its paths labelled as a redacted report labels them).
- :func:`render_report` ``(result_dir, out_file=None, redact=False) -> Path``: the HTML report.

``result_dir`` is an audit folder (one sub-folder per stage) or one command's result folder.
"""

from diffaudit.report.html import render_html, render_report
from diffaudit.report.summary import build_summary, write_summary

__all__ = ["build_summary", "render_html", "render_report", "write_summary"]
