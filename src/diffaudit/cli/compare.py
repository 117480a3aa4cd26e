"""``diffaudit compare``: two audits (or command results) side by side, e.g. before and after a defence."""

from __future__ import annotations

import argparse
import sys

from diffaudit.cli.common import emit
from diffaudit.core.outdir import prepare_out_dir
from diffaudit.core.results import envelope, write_result
from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.compare import compare_summaries, find_dp_record, format_table
from diffaudit.report.summary import build_summary

NAME = "compare"
HELP = "compare two audits side by side (extracted images, MIA TPR at FPR 0.01, canaries, DP epsilon)"
DESCRIPTION = (
    "Put two audit folders (or single command folders: verify, mia, canaries, dedup, ...) side by side: unique "
    "extracted training images, membership-inference AUC and TPR at 1% and 0.1% FPR, canaries extracted and their "
    "exposure, the DP epsilon of the model, near-duplicate groups; change = B - A. Prints a table (or JSON with "
    "--json); with --out also writes result.json there."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("audit_a", metavar="AUDIT_A", help="first audit or result folder (e.g. the undefended model)")
    p.add_argument("audit_b", metavar="AUDIT_B", help="second audit or result folder (e.g. after --dedup or DP-SGD)")
    p.add_argument("--labels", default="A,B", help="column names, comma-separated")
    p.add_argument("--out", default=None, help="also write result.json into this folder")
    p.add_argument("--fresh", action="store_true", help="empty --out first (result.json is rewritten on every run anyway)")


def run(args: argparse.Namespace) -> int:
    labels = [s.strip() for s in args.labels.split(",")]
    if len(labels) != 2 or not all(labels):
        raise DiffauditError(f"--labels needs two comma-separated names (e.g. plain,dedup); got {args.labels!r}")
    settings = {"audit_a": str(args.audit_a), "audit_b": str(args.audit_b), "labels": labels}
    # Always recomputed (it only reads two folders' JSON): a result kept from an earlier run would be
    # stale once either folder's results change, and the settings hold only their paths.
    out = prepare_out_dir(args.out, NAME, settings, fresh=args.fresh)[0] if args.out else None
    a, b = build_summary(args.audit_a), build_summary(args.audit_b)
    rows = compare_summaries(a, b, dp_a=find_dp_record(args.audit_a), dp_b=find_dp_record(args.audit_b))
    fields = {"labels": labels, "rows": rows, "a": {"path": str(args.audit_a), "command": a.get("command")},
              "b": {"path": str(args.audit_b), "command": b.get("command")}}
    result = write_result(out / "result.json", NAME, settings, {}, **fields) if out else envelope(NAME, settings, {}, **fields)
    table = format_table(rows, *labels)
    if not rows:
        table += "\n(no comparable metric found in either folder)"
    emit(args, result, table)
    if not rows:
        print("diffaudit compare: neither folder holds extraction, MIA, canary, DP or dedup results", file=sys.stderr)
    return 0
