"""Two audits side by side as a person reads them: the table of :func:`diffaudit.defenses.compare.compare_summaries`
rows (values and changes at the values' precision, confidence intervals, a "within noise" mark), the
folders' default labels, and warnings when the two were made on different datasets, searched different
numbers of generations for extracted images or, for canary runs, inserted canaries of another kind or used
another number of references (exposures not comparable).

How a row prints follows the ``kind`` it declares (:data:`diffaudit.defenses.compare.KINDS`), never its
name: ``auc`` to 3 decimals, ``rate`` as a percentage (changes in percentage points), ``count`` as an
integer, ``score`` to 4 significant digits. A row without a known kind is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffaudit.core.errors import DiffauditError
from diffaudit.data.options import data_flags
from diffaudit.defenses.compare import KINDS, metric_spec, query_differences
from diffaudit.report.fmt import fmt, fmt_p, fmt_pct, zero_width_reason
from diffaudit.report.summary import CHANCE_AUC, at_chance, data_record, same_data, separates


def dataset_of(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The dataset a folder's results were made on: the first ``--data`` its settings record (an audit's
    own first), with the digest of the first stage that read that same data and recorded one. An
    audit's verify stage reads only the target's training examples, so its digest never stands for
    the dataset (nor do the training-set digests of a run: a deduplicated run trains on fewer)."""
    records = [r for s in (summary.get("settings") or {}).values() if isinstance(s, dict) and (r := data_record(s))]
    if not records:
        return None
    first = records[0]
    same = (r["digest"] for r in records if (r["spec"], r["options"]) == (first["spec"], first["options"]))
    return {**first, "digest": next((d for d in same if d), None)}


def _describe(data: dict[str, Any], other: dict[str, Any]) -> str:
    """``data``'s spec with the loader options that differ from ``other``'s, and its digest."""
    differing = {k: v for k, v in data["options"].items() if other["options"].get(k) != v}
    return data_flags(data["spec"], differing) + (f" [data digest {data['digest']}]" if data["digest"] else "")


def dataset_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """A warning when summaries ``a`` and ``b`` were made on different datasets: other data digests where
    both recorded one (the same data under two paths is the same), else another spec or loader options."""
    da, db = dataset_of(a), dataset_of(b)
    if da is None or db is None:
        return []
    if same_data(da, db):
        return []
    la, lb = labels
    return [f"{la} and {lb} were made on different datasets, {la} on {_describe(da, db)} and {lb} on "
            f"{_describe(db, da)}: the changes may come from the data, not the models"]


def query_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """A warning per membership attack that summaries ``a`` and ``b`` ran with other queries (another
    ``--timesteps``, ``--draws`` or ``--flips``: :func:`~diffaudit.defenses.compare.query_differences`):
    its losses, AUC and TPR measure other things on the two sides, so their changes are the attack's,
    not the models'."""
    la, lb = labels
    out = []
    for attack, found in query_differences(a, b).items():
        what = ", ".join(f"{flag} {va} and {vb}" for flag, va, vb in found)
        flags = " and ".join(flag for flag, _, _ in found)
        out.append(f"{la} and {lb} ran the membership attack {attack} with other queries ({what}, {la}'s first): "
                   "the denoising loss depends on the timestep and the noise it is read at, so its held-out loss, loss "
                   "gap, AUC and TPRs measure different things on the two sides, and their changes may come from the "
                   f"attack, not the models; compare runs with the same {flags}")
    return out


def _generations(summary: dict[str, Any]) -> int | None:
    """The generations a summary's extraction searched: all that were sampled (``n_samples_total``, for a
    verify of clique medoids), else those verified; None without an extraction or a recorded count."""
    ex = summary.get("extraction")
    if not isinstance(ex, dict):
        return None
    n = ex.get("n_samples_total", ex.get("n_samples"))
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def budget_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """A warning when summaries ``a`` and ``b`` searched different numbers of generations for extracted
    images: the unique extracted count grows with the generations searched (the paper extracts 1,280
    CIFAR-10 images from 2^20 generations, fewer from fewer), so its change measures the budget as well
    as the models. A count one side does not record is no warning. Another when one side's count pools
    other numbers of models' generations (:func:`_pooled_models`)."""
    ga, gb = _generations(a), _generations(b)
    la, lb = labels
    out = []
    models = [_pooled_models(a), _pooled_models(b)]
    if models[0] != models[1]:  # a pool's count is over several models' generations (`diffaudit pool`)
        sides = " and ".join(f"{label} {'one model' if n is None else f'{n} models pooled'}"
                             for label, n in zip(labels, models))
        out.append(f"{la} and {lb} counted extracted images over the generations of different numbers of models "
                   f"({sides}): a pooled count credits each image to the first model that extracted it, so its change "
                   "says how many models were pooled as well as how much they memorize")
    if ga is not None and gb is not None and ga != gb:
        out.append(f"{la} and {lb} searched different numbers of generations for extracted images, {la} {ga:,} and {lb} "
                   f"{gb:,}: unique extracted grows with the generations searched, so its change may come from the "
                   "budget, not the models; compare runs that generated as many (audit --n-samples, sample --n or "
                   "--per-prompt)")
    return out


def _pooled_models(summary: dict[str, Any]) -> int | None:
    """How many models' stores a summary's extraction pooled (`diffaudit pool`), None for one store's."""
    ex = summary.get("extraction")
    pool = ex.get("pool") if isinstance(ex, dict) else None
    n = pool.get("n_members") if isinstance(pool, dict) else None
    return n if isinstance(n, int) and not isinstance(n, bool) else None


def attack_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """A warning when both summaries ran membership attacks but none in common: every membership row then
    has a value on one side only (an attack's AUC and TPR, and the held-out loss and loss gap read with it),
    so no membership measure is compared."""
    ma, mb = a.get("mia"), b.get("mia")
    if not (isinstance(ma, dict) and isinstance(mb, dict) and ma and mb) or set(ma) & set(mb):
        return []
    la, lb = labels
    return [f"{la} and {lb} ran different membership attacks, {la} {', '.join(sorted(ma))} and {lb} "
            f"{', '.join(sorted(mb))}: no membership row is compared; run the same attack on both (audit --mia, or mia "
            "--attack)"]


def _attacked(entry: dict[str, Any]) -> str | None:
    """Whom a membership attack (a summary ``mia`` entry) attacked, in words: every shadow model in turn (its rows
    pooled), or the one run it names; None where it records neither."""
    if entry.get("pooled"):
        n = entry.get("n_models")
        return f"the {n} shadow models in turn, pooled" if isinstance(n, int) else "every shadow model in turn, pooled"
    return f"the model {entry['model']}" if isinstance(entry.get("model"), str) else None


def target_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """A warning for each membership attack both summaries ran on different targets: one model against the
    rows of every shadow model pooled (leave-one-out), or two pooled sets of other sizes. Their AUCs then
    measure other things (one model's members; every model's), so the change is not the models'. Two single
    models are what a comparison compares, and no warning."""
    ma, mb = a.get("mia"), b.get("mia")
    if not (isinstance(ma, dict) and isinstance(mb, dict)):
        return []
    la, lb = labels
    out = []
    for attack in sorted(set(ma) & set(mb)):
        ea, eb = ma[attack], mb[attack]
        if not (isinstance(ea, dict) and isinstance(eb, dict)) or not (ea.get("pooled") or eb.get("pooled")):
            continue
        wa, wb = _attacked(ea), _attacked(eb)
        if wa and wb and wa != wb:
            out.append(f"{la} and {lb} ran {attack} on different targets, {la} {wa} and {lb} {wb}: pooled rows measure "
                       "every model's members at once, one model its own, so the change is not one model against another; "
                       "attack the same kind of target on both (mia --target or --target-index, or neither)")
    return out


def _canary_run(summary: dict[str, Any]) -> dict[str, Any] | None:
    """{"kind", "n_reference", "ceiling"} of the canaries run a summary reads (its first ``canaries``
    stage, as :func:`~diffaudit.report.summary.build_summary` does): the kind from that stage's settings
    (``--kind``), the reference count and exposure ceiling from the summary's ``canaries`` (the settings'
    ``--n-reference`` where the result records none); a field not recorded is None. None without a
    canaries run."""
    can = summary.get("canaries")
    if not isinstance(can, dict):
        return None
    stage = next((st.get("name") for st in summary.get("stages") or []
                  if isinstance(st, dict) and st.get("command") == "canaries"), None)
    settings = (summary.get("settings") or {}).get(stage) if stage is not None else None
    settings = settings if isinstance(settings, dict) else {}
    kind = settings.get("kind")
    n_ref = can.get("n_reference", settings.get("n_reference"))
    return {"kind": kind if isinstance(kind, str) else None, "n_reference": n_ref if isinstance(n_ref, int) else None,
            "ceiling": can.get("exposure_ceiling")}


def canary_warnings(a: dict[str, Any], b: dict[str, Any], labels: list[str]) -> list[str]:
    """Warnings when summaries ``a`` and ``b`` both hold a canaries run and their exposures do not compare:
    canaries of another ``--kind`` (noise or held-out images, each ranked among never-inserted candidates
    of its own kind), or another ``--n-reference`` (another exposure ceiling, log2(n_reference + 1)). A
    setting one side does not record is no warning."""
    ca, cb = _canary_run(a), _canary_run(b)
    if ca is None or cb is None:
        return []
    la, lb = labels
    out = []
    if ca["kind"] and cb["kind"] and ca["kind"] != cb["kind"]:
        out.append(f"{la} and {lb} inserted canaries of different kinds, {la} {ca['kind']} and {lb} {cb['kind']} "
                   "(--kind): each exposure ranks a canary among never-inserted candidates of its own kind, so "
                   "exposures and canaries extracted do not compare: a change may come from the kind, not the "
                   "models; compare runs of the same --kind")
    if ca["n_reference"] is not None and cb["n_reference"] is not None and ca["n_reference"] != cb["n_reference"]:
        ceilings = ("" if ca["ceiling"] is None or cb["ceiling"] is None
                    else f" ({fmt(ca['ceiling'], 'auto')} and {fmt(cb['ceiling'], 'auto')} bits)")
        out.append(f"{la} and {lb} measured exposure against different numbers of never-inserted references, "
                   f"{la} {ca['n_reference']:,} and {lb} {cb['n_reference']:,} (--n-reference): their exposure ceilings, "
                   f"log2(n_reference + 1), differ{ceilings}, so exposures at or near a ceiling, and means over them, "
                   "do not compare; compare runs with the same --n-reference")
    return out


def _pct_decimals(rate: float) -> int:
    """The decimals :func:`~diffaudit.report.fmt.fmt_pct` shows for ``rate`` ("0.61%": 2)."""
    text = fmt_pct(rate).removesuffix("%")
    return 6 if "e" in text else len(text.partition(".")[2])


def _kind(row: dict[str, Any]) -> str:
    """The row's declared kind (one of :data:`~diffaudit.defenses.compare.KINDS`); an error naming the
    metric when it declares none or another (a row not made by ``compare_summaries``)."""
    kind = row.get("kind")
    if kind not in KINDS:
        raise DiffauditError(f"compare row {row.get('metric')!r} declares kind {kind!r}, not one of {', '.join(KINDS)}: "
                             "rows come from compare_summaries, which declares every metric's kind")
    return kind


def _value(kind: str, value: float | int | None) -> str:
    """A value as the report prints it: an AUC to 3 decimals, a rate as a percentage, a count as an
    integer (a non-whole one, and a score, to 4 significant digits), a missing value as "-"."""
    if value is None:
        return "-"
    if kind == "auc":
        return f"{value:.3f}"
    if kind == "rate":
        return fmt_pct(value)
    if kind == "count" and isinstance(value, int):
        return str(value)
    return fmt(float(value), "auto")


def _cell(kind: str, value: float | int | None, ci: list[float] | None, qualifier: str | None = None) -> str:
    """A value with its confidence interval beside it, when recorded: ``0.497 [0.485, 0.509]``; a lower
    bound as ``≥ 12.3``, a value that cannot be measured as ``n/a`` (the report's words for both), an
    unbounded ε as ``∞ (no noise)``."""
    if value is None and qualifier == "n/a":
        return "n/a"
    if value is None and qualifier == "unbounded":
        return UNBOUNDED
    text = _value(kind, value)
    if qualifier == "at_least" and value is not None:
        text = "≥ " + text
    return text if ci is None or value is None else f"{text} [{_value(kind, ci[0])}, {_value(kind, ci[1])}]"


def _signed(value: float, spec: str) -> str:
    """``value`` formatted by ``spec`` with its sign; one that rounds to zero without a sign."""
    text = format(value, "+" + spec)
    return text[1:] if float(text) == 0 else text


def _change(kind: str, row: dict[str, Any]) -> str:
    """A row's change at the precision of its values (a TPR's in percentage points, pp, to the decimals
    of the coarser of its two values), flagged
    "(within noise)" when the two confidence intervals overlap."""
    change = row["change"]
    if change is None:
        return "unknown (both bounds)" if row.get("a_qualifier") == row.get("b_qualifier") == "at_least" else "-"
    if kind == "auc":
        text = _signed(change, ".3f")
    elif kind == "rate":
        text = _signed(100 * change, f".{min(_pct_decimals(row['a']), _pct_decimals(row['b']))}f") + " pp"
    else:
        text = _signed(change, "d" if kind == "count" and isinstance(change, int) else ".4g")
    bound = {"at_most": "≤ ", "at_least": "≥ "}.get(row.get("change_bound"), "")
    return (bound + text + (" (within noise)" if row.get("within_noise") else "")
            + (" (other queries)" if row.get("other_queries") else ""))


#: The DP epsilon row's cell for a side without a DP-SGD record (a plain model, or one not found).
NO_DP = "no DP-SGD"
#: The DP epsilon row's cell for a DP-SGD run that no accountant bounds (no noise): not private.
UNBOUNDED = "∞ (no noise)"


def _baseline_notes(rows: list[dict[str, Any]], labels: tuple[str, str]) -> list[str]:
    """A line per side whose unique-extracted count is not significantly above its own false-positive
    baseline (the report's "inconclusive"): that count, and a change from or to it, is not evidence."""
    from diffaudit.report.view_extraction import SIGNIFICANCE

    out = []
    for r in rows:
        for side, label in zip(("a", "b"), labels):
            p = r.get(f"{side}_pvalue")
            if p is not None and p >= SIGNIFICANCE and r.get(side):
                out.append(f"\n{label}: {r[side]} extracted is not significantly above its false-positive baseline "
                           f"(p = {fmt_p(p)}): by itself no evidence of extraction, nor is a change from it evidence "
                           "of a defence")
    return out


#: Held-out losses of the two sides that differ by more than this fraction (of the lower) are said to differ in quality.
LOSS_RISE = 0.10


def _attack_entry(row: dict[str, Any], side: str) -> dict[str, Any]:
    """One side of an AUC row as a ``mia`` summary entry ({auc, ci}), for
    :func:`~diffaudit.report.summary.at_chance` and :func:`~diffaudit.report.summary.separates`. A row
    carries no rank test: with few members or non-members, at-chance is read from the interval alone."""
    ci = row.get(f"{side}_ci")
    return {"auc": row[side], "ci": {"auc": {"low": ci[0], "high": ci[1]}} if ci else {}}


def _chance_words(row: dict[str, Any], side: str) -> str:
    """Why one side's attack is at chance: "AUC 0.518 [0.479, 0.555], an interval that holds 0.5", or
    "AUC 0.55, below 0.6 (no interval recorded)"."""
    ci = row.get(f"{side}_ci")
    if ci:
        return f"AUC {fmt(row[side])} [{fmt(ci[0])}, {fmt(ci[1])}], an interval that holds 0.5"
    return f"AUC {fmt(row[side])}, below {CHANCE_AUC:g} (no interval recorded)"


def _loss_notes(rows: list[dict[str, Any]], labels: tuple[str, str]) -> list[str]:
    """A line per attack whose held-out loss differs by more than :data:`LOSS_RISE` between the two
    sides (an attack run with other queries on the two sides has no such line: its losses are on other
    scales), read against the same attack's AUC: when the side that denoises never-seen images worse is
    also attacked less well, its lower leakage is bought (at least in part) with the model's quality (as
    a defence such as DP-SGD buys it); when it is attacked no less well, the lost quality bought nothing.

    The attack cannot say either when the side that denoises better is itself attacked at chance
    (:func:`~diffaudit.report.summary.at_chance`: there was no measured leakage to remove, unless the
    other side is attacked measurably better), or when the attack identifies every member of both
    (:func:`~diffaudit.report.summary.separates`: saturated, it shows no difference either way): the
    line then says that the comparison cannot tell, and why."""
    auc = {r["metric"]: r for r in rows if r.get("key") == "mia_auc"}
    out = []
    for r in rows:
        a, b = r["a"], r["b"]
        if (r.get("key") != "mia_heldout_loss" or r.get("other_queries") or a is None or b is None or a <= 0
                or abs(b - a) <= LOSS_RISE * min(a, b)):
            continue
        worse, better = (labels[1], labels[0]) if b > a else labels
        line = (f"\n{r['metric']}: {worse}'s model denoises never-seen images {max(a, b) / min(a, b):.2f}x worse "
                f"than {better}'s (held-out loss {fmt(max(a, b), 'auto')} against {fmt(min(a, b), 'auto')})")
        attack = auc.get(r["metric"].rsplit(": ", 1)[0] + ": AUC")
        aucs = None if attack is None or attack["a"] is None or attack["b"] is None else (attack["a"], attack["b"])
        if aucs is None:
            line += ": lower leakage that comes with it is bought with sample quality"
        else:
            worse_side, better_side = ("b", "a") if b > a else ("a", "b")
            auc_worse, auc_better = attack[worse_side], attack[better_side]
            pair = f"AUC {fmt(auc_worse)} against {fmt(auc_better)}"
            measurably_higher = attack.get("within_noise") is False and auc_worse > auc_better
            if at_chance(_attack_entry(attack, better_side)) and not measurably_higher:
                line += (f", but the attack cannot tell what that bought: {better}'s model is itself attacked at chance "
                         f"({_chance_words(attack, better_side)}), so there was no measured leakage to remove; "
                         "only a stronger attack, or more members and non-members, can tell whether the lost "
                         "quality bought privacy")
            elif separates(_attack_entry(attack, worse_side)) and separates(_attack_entry(attack, better_side)):
                line += (f", but the attack cannot tell what that bought: it identifies every member of both ({pair}), "
                         "so it is saturated and shows no difference either way; compare measures it does not "
                         "saturate, such as the loss gap and extraction")
            elif attack.get("within_noise"):
                line += f", yet it is attacked about as well ({pair}, within noise): the quality it lost bought no measured privacy"
            elif auc_worse < auc_better:
                line += f": its lower leakage ({pair}) is bought, at least in part, with sample quality"
            else:
                line += f", yet it is attacked no less well ({pair}): the quality it lost bought no privacy"
        out.append(line)
    return out


def _zero_width_note(rows: list[dict[str, Any]]) -> str:
    """The line that explains intervals every bootstrap resample agreed on, "" without one: why each did
    (:func:`~diffaudit.report.fmt.zero_width_reason`): at 1.000 or 100% the attack identifies every member,
    at 0 none, and elsewhere the examples are too few to bound it. None of them is certainty."""
    values = [ci[0] for r in rows for ci in (r.get("a_ci"), r.get("b_ci")) if ci is not None and ci[0] == ci[1]]
    if not values:
        return ""
    ends = [(lambda v: v >= 1, "at 1.000 or 100%"), (lambda v: v <= 0, "at 0"), (lambda v: 0 < v < 1, "elsewhere")]
    found = [(where, zero_width_reason(next(v for v in values if test(v)))) for test, where in ends
             if any(test(v) for v in values)]
    if len(found) == 1 and found[0][0] == "elsewhere":
        why = found[0][1]
    else:
        why = "; ".join(f"{where}: {reason}" for where, reason in found)
    return f"\n[x, x]: every bootstrap resample gave the same value ({why}): not certainty"


#: Below this many canaries a side's mean exposure at a repeat count is said to carry no noise estimate.
FEW_CANARIES = 3


def _few_canaries_note(rows: list[dict[str, Any]]) -> str:
    """The line that says which canary exposure rows average fewer than :data:`FEW_CANARIES` canaries on a
    side, "" without one: such a mean is one or two ranks among the references, with nothing to tell its
    change between the runs from chance; more canaries per repeat count (``--per-repeat``) give one."""
    few = [r for r in rows if any(isinstance(r.get(f"{s}_n_canaries"), int) and r[f"{s}_n_canaries"] < FEW_CANARIES
                                  for s in ("a", "b"))]
    if not few:
        return ""
    counts = sorted({r[f"{s}_n_canaries"] for r in few for s in ("a", "b") if isinstance(r.get(f"{s}_n_canaries"), int)})
    names = ", ".join(f"x{r['repeats']}" for r in few)
    return (f"\ncanaries {names}: each mean is over {' or '.join(map(str, counts))} canar{'y' if counts == [1] else 'ies'}, "
            "with no estimate of its noise, so a change between the runs may be chance; insert more per repeat count "
            "(canaries --per-repeat) to tell")


def format_rows(rows: list[dict[str, Any]], label_a: str, label_b: str) -> str:
    """The rows of :func:`~diffaudit.defenses.compare.compare_summaries` as a Markdown pipe table, with a
    line that explains "within noise", "≥" (a lower bound) and "n/a" (not measurable) when a row says
    it. The DP epsilon of a side with no ``dp.json`` reads "no DP-SGD", not "-"."""
    dp_row = metric_spec("dp_epsilon").name()
    table = [["metric", label_a, label_b, f"change ({label_b} - {label_a})"]]
    for r in rows:
        kind = _kind(r)
        cells = [NO_DP if r["metric"] == dp_row and r[s] is None and r.get(f"{s}_qualifier") is None
                 else _cell(kind, r[s], r.get(f"{s}_ci"), r.get(f"{s}_qualifier")) for s in ("a", "b")]
        table.append([r["metric"], *cells, _change(kind, r)])
    widths = [max(len(cells[i]) for cells in table) for i in range(4)]
    table.insert(1, ["-" * w for w in widths])
    text = "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in table)
    if any(r.get("within_noise") for r in rows):
        text += "\n[low, high]: confidence intervals; within noise: they overlap, so the change may be sampling noise"
    text += _zero_width_note(rows)
    text += "".join(_loss_notes(rows, (label_a, label_b)))
    text += "".join(_baseline_notes(rows, (label_a, label_b)))
    qualifiers = {r.get(f"{s}_qualifier") for r in rows for s in ("a", "b")}
    if "at_least" in qualifiers:
        text += ("\n≥: some canaries are at the exposure ceiling (a loss below every reference's), so the mean exposure "
                 "is a lower bound, and the change a bound")
    text += _few_canaries_note(rows)
    if "n/a" in qualifiers:
        text += "\nn/a: the FPR is below 1/non-members, so the TPR there cannot be measured"
    if any(r.get("other_queries") for r in rows):
        text += ("\nother queries: the two sides ran this attack at other timesteps, draws or flips, so the change is "
                 "not the models' (see the warning)")
    return text


def default_labels(audit_a: str, audit_b: str) -> list[str]:
    """Column names for two folders: their last path components, the last two where those are equal
    (``x/audit`` and ``y/audit``), and A, B for one folder given twice."""
    pa, pb = Path(audit_a).resolve(), Path(audit_b).resolve()
    for n in (1, 2):
        la, lb = "/".join(pa.parts[-n:]), "/".join(pb.parts[-n:])
        if la != lb:
            return [la, lb]
    return ["A", "B"]
