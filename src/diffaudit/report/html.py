"""The HTML report: one self-contained file (issue 7).

Everything is inside the file: CSS inline, images and plots as PNG ``data:`` URIs, no script.
A Content-Security-Policy meta tag allows only embedded images and inline style, so even a file
that was tampered with cannot fetch anything. Jinja2 autoescapes every value (captions, ids and
file names come from scraped data and must never run as markup). The file is written atomically
and owner-only (0o600): it shows training images, unless ``redact`` replaces them, and the
generations that copy them, by their ids.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from diffaudit.core.io import make_private_dir, write_bytes_atomic
from diffaudit.report.fmt import fmt, fmt_ci
from diffaudit.report.glossary import glossary
from diffaudit.report.path_redaction import FOLDER, hide_paths, path_labels
from diffaudit.report.results import finished_stages, load_results, stopped_words
from diffaudit.report.summary import summarise
from diffaudit.report.verdicts import verdicts
from diffaudit.report.view_extraction import cliques, gallery, rule_text
from diffaudit.report.view_mia import best_mia, mia_view, pooled_target
from diffaudit.report.view_misc import canaries_view, inpainting_view, mixed_inputs_view, settings_view, shadows_view
from diffaudit.report.view_model import training_view

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
TEMPLATES = Path(__file__).parent / "templates"


@functools.lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,  # every template, whatever its name
        undefined=jinja2.ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    def defined(v: Any) -> Any:
        return None if isinstance(v, jinja2.Undefined) else v

    env.filters["fmt"] = lambda v, kind="float": fmt(defined(v), kind)
    env.filters["ci"] = lambda v, kind="float": fmt_ci(defined(v), kind)
    # JSON of a value for data-value='...' (autoescape then escapes any quote in it).
    env.filters["jsonvalue"] = lambda v: json.dumps(defined(v), default=str)
    return env


def ensure_private_parent(path: Path) -> None:
    """Create ``path``'s folder owner-only when it does not exist (an existing folder is left as it is)."""
    if not path.parent.exists():
        make_private_dir(path.parent)


def shown_images(ctx: dict[str, Any]) -> dict[str, bool]:
    """Which pixels the rendered report embeds: ``training`` (verified pairs' training images,
    inpainting grids, which show their target) and ``generations`` (verified copies, flagged clique
    members). Both False with ``redact`` or when no pixels could be read (ids only)."""
    pairs = (ctx.get("gallery") or {}).get("items") or []
    members = [m for c in (ctx.get("cliques") or {}).get("items") or [] for m in c.get("members") or []]
    grids = (ctx.get("inpainting") or {}).get("grids") or []
    return {
        "training": any(p.get("train_uri") for p in pairs) or any(g.get("uri") for g in grids),
        "generations": any(p.get("gen_uri") for p in pairs) or any(m.get("uri") for m in members),
    }


def report_context(result_dir: str | os.PathLike, *, redact: bool = False) -> dict[str, Any]:
    """Everything the template renders: the summary and the per-section views."""
    rs = load_results(result_dir)
    summary = summarise(rs)
    ex = summary.get("extraction")
    headline = best_mia(summary)
    answers = verdicts(rs, summary)
    ctx = {
        "title": f"diffaudit report: {rs.root.resolve().name}",
        "source": rs.root.resolve().name,
        "command": rs.command,
        "redact": redact,
        "unreadable": rs.unreadable,  # result files left out, each with why
        "csp": CSP,
        "summary": summary,
        "verdict": answers["extraction"],
        "unfinished": finished_stages(rs) if rs.unfinished else None,  # the stages finished so far
        # the stage that stopped it; what it said may name files and examples, which --redact hides
        "stopped": rs.stopped and {**rs.stopped, "error": None if redact else rs.stopped["error"],
                                   "words": stopped_words(rs.stopped)},
        "rule": rule_text((ex or {}).get("rule"), (ex or {}).get("delta"), alpha=(ex or {}).get("alpha"),
                          n_neighbors=(ex or {}).get("n_neighbors"), n_train=(ex or {}).get("n_train")),
        "best_mia": headline,
        "membership_verdict": answers["membership"],
        "mixed": mixed_inputs_view(summary.get("mixed_inputs")),  # the models and datasets of separate results
        "pooled": pooled_target(summary),  # membership attacks of every shadow model in turn, of no one model
        "shadows": shadows_view(summary),
        "gallery": gallery(rs, redact=redact),
        "cliques": cliques(rs, redact=redact),
        "mia": mia_view(rs, summary),
        "inpainting": inpainting_view(rs, summary, redact=redact),
        "canaries": canaries_view(rs, summary),
        "training": training_view(rs, summary),
        "tables": settings_view(summary),
    }
    ctx["shown"] = shown_images(ctx)
    ctx["terms"] = glossary(ctx)
    if redact:  # where the data, models and results lie, and the folder's name: see path_redaction
        # (the title keeps "diffaudit report:", by which cli.report knows a file it wrote)
        ctx = {**hide_paths(ctx, path_labels(summary, rs.root)), "title": "diffaudit report: redacted",
               "source": f"{FOLDER} (folder name hidden)"}
    return ctx


def render_html(result_dir: str | os.PathLike, *, redact: bool = False) -> str:
    """The report's HTML text (nothing is written)."""
    return _environment().get_template("report.html").render(**report_context(result_dir, redact=redact))


def render_report(result_dir: str | os.PathLike, out_file: str | os.PathLike | None = None, redact: bool = False) -> Path:
    """Write the self-contained HTML report of ``result_dir`` to ``out_file`` (default ``result_dir/report.html``).

    ``result_dir`` is an audit folder or one command's result folder (told apart by ``result.json``'s
    ``command``). ``redact`` replaces every training image (and inpainting grid, which shows its
    target), verified copy and clique member by its id. The file is created owner-only (0o600); a missing parent folder is created
    owner-only (0o700). Returns the path written. Raises DiffauditError when nothing can be rendered.
    """
    out = Path(out_file) if out_file is not None else Path(result_dir) / "report.html"
    html = render_html(result_dir, redact=redact)
    ensure_private_parent(out)
    write_bytes_atomic(out, html.encode("utf-8", "backslashreplace"))  # undecodable file names show as \udcXX
    os.chmod(out, 0o600)
    return out
