"""Two audits side by side: did a defence (deduplication, DP-SGD) reduce memorization?

Works on the ``summary.json`` dictionaries of :func:`diffaudit.report.summary.build_summary`
(audit folders or single command folders): unique extracted images (paper: 1,280 before and 986
after deduplicating CIFAR-10), membership-inference AUC and TPR at 1 % and 0.1 % FPR per attack, the
attacked model's held-out loss (utility: what a defence costs) and its members' loss gap,
the inpainting attack's AUC, canaries extracted and their mean exposure, the DP ε of the trained
model, near-duplicate groups.
A metric one side lacks is null on that side; counts are ints; AUC and TPR rows carry the confidence
intervals the summaries record. ``change`` = b − a.

Every metric compare knows is declared in :data:`METRICS` (a registry, :class:`MetricSpec`): its row
name, its ``kind`` (``count``, ``rate``, ``auc`` or ``score``: what its values are and how they print)
and which change is ``better`` (``lower`` for every row that counts or scores memorization, and for the
held-out loss, which measures the model's quality rather than its leakage; ``none``
for the rows that only say how many generations or images were searched or checked, to compare at
equal budgets, and for the false-positive baseline's matches, which measure the rule, not the model). Each row carries its ``kind`` and ``better``, so nothing downstream reads them from
the name; a key the registry lacks is an error, never a guess.
"""

from __future__ import annotations

import json
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffaudit.core.errors import DiffauditError

FPR_TARGETS = ("0.01", "0.001")

#: What a metric's values are: ``count`` (a whole number of images, generations, canaries or groups;
#: JSON ints), ``rate`` (a fraction in [0, 1], shown as a percentage, its change in percentage points),
#: ``auc`` (an area under the ROC curve in [0, 1]), ``score`` (another real number: exposure in bits, DP ε).
KINDS = ("count", "rate", "auc", "score")
#: Which change is better: ``lower`` (less memorization or leakage), ``higher``, or ``none`` (the row
#: says how much was searched or checked, the budget to compare at, not how much leaked).
DIRECTIONS = ("lower", "higher", "none")


@dataclass(frozen=True)
class MetricSpec:
    """One metric compare knows.

    Attributes:
        key: its registry key (:data:`METRICS`).
        template: its row name; ``{attack}``, ``{fpr}`` (percent) and ``{repeats}`` are filled per row.
        kind: one of :data:`KINDS`.
        better: one of :data:`DIRECTIONS`.
        meaning: what it measures, in a line.
    """

    key: str
    template: str
    kind: str
    better: str
    meaning: str

    def __post_init__(self):
        if self.kind not in KINDS or self.better not in DIRECTIONS:
            raise ValueError(f"metric {self.key!r}: kind {self.kind!r} must be one of {KINDS} and better "
                             f"{self.better!r} one of {DIRECTIONS}")

    def name(self, **fields: Any) -> str:
        """The row name, the template's fields filled in."""
        return self.template.format(**fields)

    def read(self, x: Any) -> float | int | None:
        """A summary value as this metric's value: an int for a whole count, a finite float, else None."""
        return _count(x) if self.kind == "count" else _num(x)


_SPECS = (
    MetricSpec("extraction_unique", "extraction: unique extracted", "count", "lower",
               "unique training images extracted (each counted once, duplicates as one)"),
    MetricSpec("extraction_generations", "extraction: generations", "count", "none", "generations verified"),
    MetricSpec("extraction_baseline", "extraction: baseline (never-seen set)", "count", "none",
               "unique images of the never-seen set the same verification matched (false-positive baseline)"),
    MetricSpec("extraction_baseline_size", "extraction: baseline set size", "count", "none",
               "images in the never-seen baseline set"),
    MetricSpec("extraction_train_map_matches", "extraction: train-map matches", "count", "lower",
               "generations within delta of their own prompt's training image (--train-map)"),
    MetricSpec("extraction_train_map_checks", "extraction: train-map checks", "count", "none",
               "generations checked against their own prompt's training image"),
    MetricSpec("mia_auc", "mia {attack}: AUC", "auc", "lower", "membership-inference AUC of the attack"),
    MetricSpec("mia_tpr", "mia {attack}: TPR at {fpr}% FPR", "rate", "lower",
               "membership-inference true-positive rate at a fixed false-positive rate"),
    MetricSpec("mia_heldout_loss", "mia {attack}: held-out loss", "score", "lower",
               "utility: the attacked model's mean denoising loss on its non-members at the attack's timesteps "
               "(a defence that raises it costs sample quality)"),
    MetricSpec("mia_loss_gap", "mia {attack}: loss gap", "score", "lower",
               "the attacked model's mean loss on non-members minus on members (0: it fits its members no better)"),
    MetricSpec("inpaint_auc", "inpainting: AUC", "auc", "lower",
               "inpainting attack AUC: members against non-members by how close the best inpaintings come"),
    MetricSpec("inpaint_targets", "inpainting: targets", "count", "none", "images the inpainting attack masked and filled in"),
    MetricSpec("canaries_extracted", "canaries: extracted", "count", "lower", "canaries extracted by generations"),
    MetricSpec("canaries_exposure", "canaries x{repeats}: mean exposure", "score", "lower",
               "mean exposure, in bits, of the canaries inserted that many times"),
    MetricSpec("model_steps", "model: training steps", "count", "none",
               "optimisation steps the audited model trained for (memorization grows with them)"),
    MetricSpec("model_train_images", "model: training images", "count", "none",
               "distinct images the audited model trained on (a deduplicated run trains on fewer)"),
    MetricSpec("dp_epsilon", "model: DP epsilon", "score", "lower", "the model's DP-SGD epsilon (null: not private)"),
    MetricSpec("dedup_groups", "dedup: groups", "count", "lower", "near-duplicate groups in the training data"),
    MetricSpec("dedup_in_groups", "dedup: images in groups", "count", "lower",
               "training images in near-duplicate groups"),
)
#: The registry: every metric compare knows, by key.
METRICS: dict[str, MetricSpec] = {spec.key: spec for spec in _SPECS}
#: Rows that describe the audited model rather than measure what it leaks: shown beside the measured
#: rows, never a comparison on their own.
DESCRIBES_MODEL = frozenset({"model_steps", "model_train_images"})
#: Rows that say how a model was trained, its DP-SGD epsilon among them, rather than what it leaks: two training
#: runs compared share only these until each is audited.
DESCRIBES_TRAINING = DESCRIBES_MODEL | {"dp_epsilon"}


def metric_spec(key: str) -> MetricSpec:
    """The registered metric ``key``; a :class:`DiffauditError` naming the known keys otherwise."""
    try:
        return METRICS[key]
    except KeyError:
        raise DiffauditError(f"compare knows no metric {key!r}; known: {', '.join(METRICS)}") from None


#: What a value may be besides exact: ``at_least`` (a lower bound: canaries at the exposure ceiling,
#: rank 1, whose exposure is at least the ceiling's), ``n/a`` (missing because it cannot be measured:
#: a TPR at an FPR below 1/non-members) or ``unbounded`` (infinite: the ε of a DP-SGD run without
#: noise, which no accountant bounds; the value is null).
QUALIFIERS = ("at_least", "n/a", "unbounded")


@dataclass
class Measured:
    """One metric's value in one summary: ``name`` (the row), ``spec``, ``value`` (None: not measured),
    ``qualifier`` (None: exact, else one of :data:`QUALIFIERS`) and ``fields``, what the row's name was
    filled with (``attack``, ``fpr``, ``repeats``): a script reads them rather than parse the name."""

    name: str
    spec: MetricSpec
    value: float | int | None
    qualifier: str | None = None
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if v == v and abs(v) != float("inf") else None


def _audited_models(root: Path) -> list[Path]:
    """Where the model an audit folder audited may lie: its ``result.json``'s ``target`` and the ``--model``
    its settings record (paths as recorded; an unfinished audit's ``settings.json``), else ``models/model-00``
    (the target an audit trains). With ``--model`` recorded, ``model-00`` is never read: it is a link to
    that model or, with shadows, a shadow, which trains with DP-SGD like a DP-SGD target but has its own epsilon."""
    from diffaudit.core.outdir import recorded_settings

    try:
        rec = json.loads((root / "result.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = None
    finished = isinstance(rec, dict) and rec.get("command") == "audit"
    settings = (rec.get("settings") if finished else recorded_settings(root, "audit")) or {}
    if not isinstance(settings, dict):
        settings = {}
    target = rec.get("target") if finished else None
    named = [Path(p) for p in (target, settings.get("model")) if isinstance(p, str) and p]
    return named if settings.get("model") else named + [root / "models" / "model-00"]


def find_dp_record(folder: str | Path) -> dict[str, Any] | None:
    """The ``dp.json`` of a DP-SGD run: ``folder`` itself, the model an audit folder audited (its
    recorded target, else ``models/model-00``; links followed), or one level below (``train/``)."""
    root = Path(folder)
    candidates = [root / "dp.json"]
    if root.is_dir():
        candidates += [m / "dp.json" for m in _audited_models(root)] + sorted(root.glob("*/dp.json"))
    for c in candidates:
        if c.is_file():
            try:
                data = json.loads(c.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                return data
    return None


def _count(x: Any) -> int | float | None:
    """A count as an int (JSON ``512``, not ``512.0``); a non-whole value stays a float, a missing one None."""
    v = _num(x)
    return int(v) if v is not None and v.is_integer() else v


def _auc_name(attack: str) -> str:
    return METRICS["mia_auc"].name(attack=attack)


def _tpr_name(attack: str, key: str) -> str:
    return METRICS["mia_tpr"].name(attack=attack, fpr=f"{float(key) * 100:g}")


def measure(summary: dict[str, Any], dp: dict[str, Any] | None = None) -> list[Measured]:
    """Every registered metric one summary (and the model's ``dp.json`` record, if any) holds, in row
    order; a value is read as its spec's kind (:meth:`MetricSpec.read`)."""
    out: list[Measured] = []

    def put(key: str, value: Any, qualifier: str | None = None, **fields: Any) -> None:
        spec = metric_spec(key)
        out.append(Measured(spec.name(**fields), spec, spec.read(value), qualifier, fields))

    ex = summary.get("extraction") or {}
    if ex:
        put("extraction_unique", ex.get("unique_extracted"))
        put("extraction_generations", ex.get("n_samples"))
        put("extraction_baseline", ex.get("baseline_unique_extracted"))
        if ex.get("baseline_n_images") is not None:
            put("extraction_baseline_size", ex.get("baseline_n_images"))
        if ex.get("prompt_checks_extracted") is not None:  # a --train-map-only verify: its own count
            put("extraction_train_map_matches", ex.get("prompt_checks_extracted"))
            put("extraction_train_map_checks", ex.get("prompt_checks_n"))
    for attack, m in sorted((summary.get("mia") or {}).items()):
        put("mia_auc", m.get("auc"), attack=attack)
        tpr = m.get("tpr_at_fpr") or {}
        n_non = _count(m.get("n_nonmembers"))
        for key in FPR_TARGETS:
            # missing for want of non-members: fewer than 1/FPR of them cannot measure that FPR
            na = tpr.get(key) is None and isinstance(n_non, int) and n_non * float(key) < 1
            put("mia_tpr", tpr.get(key), "n/a" if na else None, attack=attack, fpr=f"{float(key) * 100:g}")
        loss = m.get("mean_loss") if isinstance(m.get("mean_loss"), dict) else None
        if loss:  # recorded by mia from this version on
            put("mia_heldout_loss", loss.get("nonmembers"), attack=attack)
            put("mia_loss_gap", loss.get("gap"), attack=attack)
    inp = summary.get("inpainting") or {}
    if inp:
        put("inpaint_auc", inp.get("auc"))
        put("inpaint_targets", inp.get("n_targets"))
    can = summary.get("canaries") or {}
    if can:
        put("canaries_extracted", can.get("n_extracted"))
        rows = [r for r in can.get("by_repeats") or [] if isinstance(r, dict)]
        for row in sorted(rows, key=lambda r: _num(r.get("repeats")) or 0):  # x1, x2, x4, ...: as inserted
            bound = "at_least" if (_count(row.get("n_at_ceiling")) or 0) > 0 else None  # a mean over canaries at the ceiling
            put("canaries_exposure", row.get("mean_exposure"), bound, repeats=row.get("repeats"),
                n_canaries=_count(row.get("n")))
    model = summary.get("model") if isinstance(summary.get("model"), dict) else {}
    if model.get("steps") is not None:  # a diffaudit run's (a model trained elsewhere records none)
        put("model_steps", model.get("steps"))
    if model.get("n_train") is not None:
        put("model_train_images", model.get("n_train"))
    if dp is not None:  # null ε: no finite bound (no noise): ε is infinite, not private
        put("dp_epsilon", dp.get("epsilon"), "unbounded" if _num(dp.get("epsilon")) is None else None)
    dd = summary.get("dedup") or {}
    if dd:
        put("dedup_groups", dd.get("n_groups"))
        put("dedup_in_groups", dd.get("n_in_groups"))
    return out


def metrics(summary: dict[str, Any], dp: dict[str, Any] | None = None) -> dict[str, float | int | None]:
    """Flat {metric name: value} of one summary (and the model's ``dp.json`` record, if any); counts
    are ints, rates and scores floats (:func:`measure`)."""
    return {m.name: m.value for m in measure(summary, dp)}


def _interval(ci: Any) -> list[float] | None:
    """[low, high] of a summary's interval dict, None when it is not a finite pair."""
    if not isinstance(ci, dict):
        return None
    low, high = _num(ci.get("low")), _num(ci.get("high"))
    return None if low is None or high is None else [low, high]


def intervals(summary: dict[str, Any]) -> dict[str, list[float]]:
    """{metric name: [low, high]} of the confidence intervals a summary records (membership AUC and TPR)."""
    out: dict[str, list[float] | None] = {}
    for attack, m in sorted((summary.get("mia") or {}).items()):
        ci = m.get("ci") or {}
        out[_auc_name(attack)] = _interval(ci.get("auc"))
        for key in FPR_TARGETS:
            out[_tpr_name(attack, key)] = _interval((ci.get("tpr_at_fpr") or {}).get(key))
    return {k: v for k, v in out.items() if v is not None}


#: The queries of a membership attack a summary records (its ``mia`` entry), by the flag that sets each.
QUERY_FLAGS = {"timesteps": "--timesteps", "n_draws": "--draws", "flips": "--flips"}


def _query_value(key: str, value: Any) -> str:
    if key == "timesteps" and isinstance(value, list):
        return ",".join(str(t) for t in value)
    if key == "flips":
        return "on" if value else "off"
    return str(value)


def query_differences(a: dict[str, Any], b: dict[str, Any]) -> dict[str, list[tuple[str, str, str]]]:
    """{attack: [(flag, a's value, b's value), ...]} for each membership attack both summaries ran with
    other queries (:data:`QUERY_FLAGS`: the timesteps, noise draws and flips, where both record them).
    The denoising loss depends on the timestep and the noise it is read at (at t = 300 it is a fraction
    of that at t = 100), so such an attack's losses, and the AUC and TPR read from them, measure
    different things on the two sides."""
    out: dict[str, list[tuple[str, str, str]]] = {}
    mia_a, mia_b = a.get("mia") or {}, b.get("mia") or {}
    for attack in sorted(set(mia_a) & set(mia_b)):
        ea, eb = mia_a[attack], mia_b[attack]
        if not isinstance(ea, dict) or not isinstance(eb, dict):
            continue
        found = [(flag, _query_value(k, ea[k]), _query_value(k, eb[k])) for k, flag in QUERY_FLAGS.items()
                 if ea.get(k) is not None and eb.get(k) is not None and ea[k] != eb[k]]
        if found:
            out[attack] = found
    return out


def _attack_metrics(attack: str) -> set[str]:
    """The names of the rows one membership attack gives (:func:`measure`)."""
    return {_auc_name(attack), *(_tpr_name(attack, key) for key in FPR_TARGETS),
            metric_spec("mia_heldout_loss").name(attack=attack), metric_spec("mia_loss_gap").name(attack=attack)}


#: Fields of a :class:`Measured` that are each side's own, not the row's (carried as ``a_<field>`` and ``b_<field>``):
#: how many canaries a mean exposure averages.
SIDE_FIELDS = ("n_canaries",)


def _json_fields(fields: dict[str, Any]) -> dict[str, Any]:
    """A row's name fields as its JSON carries them: ``attack``, ``repeats`` (an int), and ``fpr`` as the
    fraction its TPR is read at (0.01, not the name's "1")."""
    out = {k: v for k, v in fields.items() if k not in SIDE_FIELDS}
    if "fpr" in out:
        out["fpr"] = round(float(out["fpr"]) / 100, 12)
    return out


def compare_summaries(a: dict[str, Any], b: dict[str, Any], *, dp_a: dict[str, Any] | None = None,
                      dp_b: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Rows {metric, key, kind, better, a, b, change} over the union of both summaries' metrics (a's order first),
    with the fields the metric's name was filled with (``attack``, ``fpr``, ``repeats``: :func:`_json_fields`).

    ``key``, ``kind`` and ``better`` are the metric's declared :class:`MetricSpec` fields. A row whose metric has
    a confidence interval on either side also carries ``a_ci`` and ``b_ci`` ([low, high] or null) and,
    with both, ``within_noise``: true when the two intervals overlap (the change is not told apart from
    sampling noise). A row with a value that is not exact carries ``a_qualifier`` and ``b_qualifier``
    (:data:`QUALIFIERS`, null for exact) and, when a value is a lower bound, ``change_bound``: the
    change is ``at_most`` (a's value is a lower bound) or ``at_least`` (b's) what it says; null
    ``change`` when both are. The unique-extracted row carries ``a_pvalue`` and ``b_pvalue``: each
    side's one-sided exact test of its count against its false-positive baseline (null without one). The
    rows of a membership attack the two sides ran with other queries (:func:`query_differences`) carry
    ``other_queries``: true. A canary exposure row carries ``a_n_canaries`` and ``b_n_canaries``: how many
    canaries each side's mean is over (:data:`SIDE_FIELDS`).
    """
    ma, mb = measure(a, dp_a), measure(b, dp_b)
    specs = {m.name: m.spec for m in ma}
    fields = {m.name: m.fields for m in [*mb, *ma]}  # a's where both have the row (the same fields)
    for m in mb:
        if specs.setdefault(m.name, m.spec) != m.spec:
            raise DiffauditError(f"compare: the row {m.name!r} names two metrics ({specs[m.name].key} and "
                                 f"{m.spec.key}); rename the attack folder")
    va_, vb_ = {m.name: m.value for m in ma}, {m.name: m.value for m in mb}
    qa_, qb_ = {m.name: m.qualifier for m in ma}, {m.name: m.qualifier for m in mb}
    ca, cb = intervals(a), intervals(b)
    fa, fb = ({m.name: m.fields for m in side} for side in (ma, mb))
    other_queries = set().union(*(_attack_metrics(attack) for attack in query_differences(a, b)))
    rows = []
    for k, spec in specs.items():
        va, vb = va_.get(k), vb_.get(k)
        row = {"metric": k, "key": spec.key, "kind": spec.kind, "better": spec.better, **_json_fields(fields[k]),
               "a": va, "b": vb, "change": None if va is None or vb is None else vb - va}
        qa, qb = qa_.get(k), qb_.get(k)
        if qa or qb:
            row.update(a_qualifier=qa, b_qualifier=qb)
            if row["change"] is not None and "at_least" in (qa, qb):  # b - a, with a or b a lower bound
                if qa == qb:
                    row["change"] = None
                else:
                    row["change_bound"] = "at_most" if qa == "at_least" else "at_least"
        if spec.key == "extraction_unique":  # how far each count stands above its own false-positive baseline
            pa, pb = (_num((x.get("extraction") or {}).get("baseline_pvalue")) for x in (a, b))
            if pa is not None or pb is not None:
                row.update(a_pvalue=pa, b_pvalue=pb)
        if k in ca or k in cb:
            row.update(a_ci=ca.get(k), b_ci=cb.get(k))
        if k in ca and k in cb:
            row["within_noise"] = ca[k][0] <= cb[k][1] and cb[k][0] <= ca[k][1]
        if k in other_queries:
            row["other_queries"] = True
        for f in SIDE_FIELDS:
            if any(f in side.get(k, {}) for side in (fa, fb)):
                row.update({f"a_{f}": fa.get(k, {}).get(f), f"b_{f}": fb.get(k, {}).get(f)})
        rows.append(row)
    return rows
