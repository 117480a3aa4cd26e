"""``diffaudit compare``: two audits (or command results) side by side, e.g. before and after a defence."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from diffaudit.cli.common import canonical_settings, emit, upgrading_paths
from diffaudit.core.outdir import prepare_out_dir, recorded_settings
from diffaudit.core.progress import stage_line, warning_line
from diffaudit.core.results import envelope, write_result
from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.defenses.compare import DESCRIBES_MODEL, DESCRIBES_TRAINING, compare_summaries, find_dp_record
from diffaudit.report.compare_table import (attack_warnings, budget_warnings, canary_warnings, dataset_warnings,
                                           default_labels, format_rows, query_warnings, target_warnings)
from diffaudit.report.summary import build_summary

NAME = "compare"
HELP = "compare two audits side by side (extracted images, MIA TPR at FPR 0.01, canaries, DP epsilon)"
DESCRIPTION = (
    "Put two audit folders (or single command folders: verify, mia, canaries, dedup, ...) side by side: unique "
    "extracted training images, membership-inference AUC and TPR at 1% and 0.1% FPR, the attacked model's held-out "
    "loss (its denoising error on images it never saw: what a defence costs in quality, said when it differs by more "
    "than 10%) and its members' loss gap, canaries extracted and their exposure, the DP epsilon of the model (∞ for a "
    "DP-SGD run without noise), near-duplicate groups, the false-positive baseline's size; change = "
    "second - first (TPR in percentage points, pp), flagged 'within noise' where both folders record confidence "
    "intervals and they overlap; '≥' marks a mean exposure over canaries at the ceiling (a lower bound, and the "
    "change a bound), 'n/a' a TPR at an FPR below 1/non-members (not measurable), '-' a value not found, '[x, x]' "
    "an interval every bootstrap resample agreed on (a perfect or null score, or too few examples: not certainty); an "
    "extracted count not significantly above its own false-positive baseline is said to be no evidence. Each row "
    "declares its kind (count, rate, auc or score: how it prints) and which change is better (lower, or none for the generations and images searched or checked, and the false-positive "
    "baseline's matches, which say how often the rule matches never-seen images: compare at equal budgets). "
    "Columns are named after the folders unless --labels names them. Warns when the "
    "folders were run on different datasets, searched different numbers of generations for extracted images (unique "
    "extracted grows with them), ran different membership attacks, ran a membership attack with other queries (--timesteps, --draws, "
    "--flips: its changes are then marked 'other queries'), or are canary runs of another --kind or --n-reference; "
    "two folders with "
    "none of these results are an error. Prints a table (or JSON with --json); with --out also writes result.json "
    "there (a folder of its own: an earlier comparison in it is replaced)."
)
#: Settings that hold the path of an input (recorded canonical, see :func:`~diffaudit.cli.common.canonical_path`).
PATH_SETTINGS = ("audit_a", "audit_b")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The two folders, ``--labels``, ``--out`` and ``--fresh``."""
    p.add_argument("audit_a", metavar="AUDIT_A", help="first audit or result folder (e.g. the undefended model)")
    p.add_argument("audit_b", metavar="AUDIT_B", help="second audit or result folder (e.g. after --dedup or DP-SGD)")
    p.add_argument("--labels", default=None,
                   help="column names, comma-separated (default: the two folders' names)")
    p.add_argument("--out", default=None, help="also write result.json into this folder")
    p.add_argument("--fresh", action="store_true", help="empty --out first (result.json is rewritten on every run anyway)")


def _labels(args: argparse.Namespace) -> list[str]:
    """``--labels`` as two names, or :func:`default_labels` of the two folders."""
    if args.labels is None:
        return default_labels(args.audit_a, args.audit_b)
    labels = [s.strip() for s in args.labels.split(",")]
    if len(labels) != 2 or not all(labels):
        raise DiffauditError(f"--labels needs two comma-separated names (e.g. plain,dedup); got {args.labels!r}")
    if labels[0] == labels[1]:  # two columns of one name, and "change (a - a)"
        raise DiffauditError(f"--labels names both folders {labels[0]!r}: give them two names (e.g. plain,dedup)")
    return labels


#: What compare reads, for the error when neither folder holds any of it.
READS = ("an audit folder (`diffaudit audit --out`), or the result folder of verify (extraction), mia (membership "
         "inference), inpaint, canaries or dedup, or a DP-SGD run (its dp.json)")


def _audit_first(args: argparse.Namespace, a: dict, b: dict) -> str:
    """For training runs among the two folders, how to measure what they leak: audit each first."""
    runs = [(str(f), s) for f, s in ((args.audit_a, a), (args.audit_b, b)) if s.get("command") == "train"]
    if not runs:
        return ""
    (first, summary), names = runs[0], " and ".join(f for f, _ in runs)
    spec = summary["dataset"].get("spec") if isinstance(summary.get("dataset"), dict) else None
    data = shlex.quote(spec) if isinstance(spec, str) and spec else "DATA"
    return (f". To compare what {names} leak, audit {'each' if len(runs) > 1 else 'it'} first, e.g. "
            f"`diffaudit audit --model {shlex.quote(first)} --data {data} --out audit-{Path(first).name}`, "
            "and compare the audits")


def _open_out(args: argparse.Namespace, settings: dict) -> Path:
    """``--out``, also when it holds the comparison of other folders: a comparison is recomputed on every run
    (it only reads the two folders' JSON), so it is replaced, and said to be, rather than refused. Never one of
    the compared folders, nor a folder inside one."""
    out = Path(args.out).resolve()
    for given in (args.audit_a, args.audit_b):
        if out == Path(given).resolve() or Path(given).resolve() in out.parents:
            raise DiffauditError(f"--out {args.out} is inside {given}, one of the folders compared: write the comparison "
                                 "into a folder of its own")
    try:
        return prepare_out_dir(args.out, NAME, settings, fresh=args.fresh, upgrade=upgrading_paths(PATH_SETTINGS))[0]
    except SettingsMismatchError as exc:
        if recorded_settings(Path(args.out), NAME) is None:  # another command's output: never replaced
            raise
        stage_line(f"compare: {args.out} held another comparison ({'; '.join(exc.differences)}); replacing it")
        return prepare_out_dir(args.out, NAME, settings, fresh=True)[0]


def run(args: argparse.Namespace) -> int:
    """Compare the two folders: the table (or JSON) on stdout, a dataset warning on stderr.

    Raises DiffauditError when neither folder holds a metric compare reads, and for --quiet without --out
    or --json, which would print the table nowhere and keep it nowhere.
    """
    if getattr(args, "quiet", False) and not args.out and not getattr(args, "json", False):
        raise DiffauditError("--quiet without --out or --json would neither print the comparison nor keep it: add "
                             "--out DIR (its result.json holds the table) or --json, or drop --quiet")
    labels = _labels(args)
    a, b = build_summary(args.audit_a), build_summary(args.audit_b)
    rows = compare_summaries(a, b, dp_a=find_dp_record(args.audit_a), dp_b=find_dp_record(args.audit_b))
    measured = [r for r in rows if r["key"] not in DESCRIBES_MODEL]
    if not measured:
        raise DiffauditError(f"nothing to compare: neither {args.audit_a} ({a.get('command')}) nor {args.audit_b} "
                             f"({b.get('command')}) holds extraction, membership-inference, inpainting, canary, DP or dedup results; "
                             f"compare reads {READS}" + _audit_first(args, a, b))
    settings = canonical_settings({"audit_a": str(args.audit_a), "audit_b": str(args.audit_b), "labels": labels}, PATH_SETTINGS)
    # Always recomputed (it only reads two folders' JSON): a result kept from an earlier run would be
    # stale once either folder's results change, and the settings hold only their paths.
    out = _open_out(args, settings) if args.out else None
    warnings = (dataset_warnings(a, b, labels) + budget_warnings(a, b, labels) + attack_warnings(a, b, labels)
                + target_warnings(a, b, labels) + query_warnings(a, b, labels) + canary_warnings(a, b, labels))
    if Path(args.audit_a).resolve() == Path(args.audit_b).resolve():
        warnings.append(f"{args.audit_a} is given twice: every change is 0 by construction")
    elif not any(r["a"] is not None and r["b"] is not None for r in measured):
        leaks = [r for r in measured if r["key"] not in DESCRIBES_TRAINING]  # what the models leak, not how they trained
        warnings.append(f"{labels[0]} and {labels[1]} share no measured metric ({labels[0]} holds "
                        f"{', '.join(r['metric'] for r in leaks if r['a'] is not None) or 'none'}; {labels[1]} "
                        f"{', '.join(r['metric'] for r in leaks if r['b'] is not None) or 'none'}): no measurement of "
                        "what they leak is compared" + (", only how the models were trained" if len(rows) > len(leaks) else "")
                        + _audit_first(args, a, b))
    fields = {"labels": labels, "rows": rows, "a": {"path": str(args.audit_a), "command": a.get("command")},
              "b": {"path": str(args.audit_b), "command": b.get("command")}, "warnings": warnings}
    result = write_result(out / "result.json", NAME, settings, {}, **fields) if out else envelope(NAME, settings, {}, **fields)
    for warning in warnings:
        warning_line("compare", warning)
    emit(args, result, format_rows(rows, *labels))
    return 0
