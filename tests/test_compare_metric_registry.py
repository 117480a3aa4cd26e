"""``compare``: every metric's kind (count, rate, AUC, score) and better direction are declared in a
registry and carried by its row; the table prints a row by its declared kind, never by its name."""

from __future__ import annotations

import json

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.results import write_result
from diffaudit.defenses.compare import DIRECTIONS, KINDS, METRICS, MetricSpec, compare_summaries, measure, metric_spec
from diffaudit.report.compare_table import format_rows


def _cells(table: str) -> dict[str, list[str]]:
    """{metric: [a, b, change]} of a Markdown table."""
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in table.splitlines()[2:]}


def test_rows_print_by_their_declared_kind_whatever_their_name():
    """Names that the former inference (": AUC" at the end -> 3 decimals, ": TPR at " inside -> a percentage,
    else by Python type) would have printed wrongly."""
    rows = [
        {"metric": "canaries: TPR at 1% FPR", "kind": "count", "better": "lower", "a": 3, "b": 5, "change": 2},
        {"metric": "extraction: AUC", "kind": "count", "better": "lower", "a": 1280, "b": 986, "change": -294},
        {"metric": "mia lira: TPR at 1% FPR: AUC", "kind": "auc", "better": "lower", "a": 0.9, "b": 0.6, "change": -0.3},
        {"metric": "canaries x8: mean exposure", "kind": "rate", "better": "lower", "a": 0.5, "b": 0.25, "change": -0.25},
        {"metric": "model: DP epsilon", "kind": "score", "better": "lower", "a": 8.0, "b": 50.0, "change": 42.0},
    ]
    cells = _cells(format_rows(rows, "a", "b"))
    assert cells["canaries: TPR at 1% FPR"] == ["3", "5", "+2"]  # a count, not 300.0%
    assert cells["extraction: AUC"] == ["1280", "986", "-294"]  # a count, not 1280.000
    assert cells["mia lira: TPR at 1% FPR: AUC"] == ["0.900", "0.600", "-0.300"]
    assert cells["canaries x8: mean exposure"] == ["50.0%", "25.0%", "-25.0 pp"]  # declared a rate
    assert cells["model: DP epsilon"] == ["8", "50", "+42"]


def test_a_row_without_a_declared_kind_is_an_error_not_a_guess():
    for row in ({"metric": "mia lira: AUC", "a": 0.9, "b": 0.6, "change": -0.3},  # e.g. an older result.json's row
                {"metric": "mia lira: AUC", "kind": "pct", "a": 0.9, "b": 0.6, "change": -0.3}):
        with pytest.raises(DiffauditError, match=r"compare row 'mia lira: AUC' declares kind .* not one of count, rate, auc, score"):
            format_rows([row], "a", "b")
    with pytest.raises(DiffauditError, match=r"compare knows no metric 'mia_f1'; known: extraction_unique"):
        metric_spec("mia_f1")
    with pytest.raises(ValueError, match="kind 'percent' must be one of"):
        MetricSpec("x", "x", "percent", "lower", "x")


def test_every_row_carries_its_registered_kind_and_direction():
    a = {"extraction": {"unique_extracted": 12, "n_samples": 512, "baseline_unique_extracted": 1, "baseline_n_images": 900,
                        "prompt_checks_extracted": 2, "prompt_checks_n": 9},
         "mia": {"lira": {"auc": 0.9, "tpr_at_fpr": {"0.01": 0.5, "0.001": 0.2},
                          "mean_loss": {"members": 0.03, "nonmembers": 0.05, "gap": 0.02}}},
         "inpainting": {"auc": 0.75, "n_targets": 8},
         "canaries": {"n_extracted": 1, "by_repeats": [{"repeats": 64, "mean_exposure": 5.0}]},
         "dedup": {"n_groups": 4, "n_in_groups": 9}, "model": {"steps": 600, "n_train": 1997}}
    measured = measure(a, {"epsilon": 8.0})
    assert {m.spec.key for m in measured} == set(METRICS)  # this summary holds every registered metric
    rows = compare_summaries(a, a, dp_a={"epsilon": 8.0}, dp_b={"epsilon": 8.0})
    by_name = {r["metric"]: r for r in rows}
    for m in measured:
        assert (by_name[m.name]["kind"], by_name[m.name]["better"]) == (m.spec.kind, m.spec.better)
        assert m.spec.kind in KINDS and m.spec.better in DIRECTIONS
    assert by_name["mia lira: TPR at 0.1% FPR"]["kind"] == "rate" and by_name["mia lira: AUC"]["kind"] == "auc"
    assert by_name["canaries x64: mean exposure"]["kind"] == "score" and by_name["dedup: groups"]["kind"] == "count"
    budgets = {r["metric"] for r in rows if r["better"] == "none"}  # how much was searched, not how much leaked
    assert budgets == {"extraction: generations", "extraction: baseline (never-seen set)", "extraction: baseline set size",
                       "extraction: train-map checks", "inpainting: targets", "model: training steps",
                       "model: training images"}
    assert (by_name["inpainting: AUC"]["kind"], by_name["inpainting: AUC"]["a"]) == ("auc", 0.75)
    assert (by_name["mia lira: held-out loss"]["a"], by_name["mia lira: loss gap"]["a"]) == (0.05, 0.02)
    assert all(r["key"] == METRICS[r["key"]].key for r in rows)


def test_canary_rows_follow_the_repeat_counts():
    can = {"canaries": {"n_extracted": 0, "by_repeats": [{"repeats": r, "mean_exposure": 1.0} for r in (1, 4, 2, 16, 8)]}}
    names = [m.name for m in measure(can)]
    assert names[1:] == [f"canaries x{r}: mean exposure" for r in (1, 2, 4, 8, 16)]


def test_attack_names_that_read_like_other_metrics_keep_their_kinds():
    """An attack's name is free text (a folder name where the result names none)."""
    a = {"mia": {"t=100: TPR at 1% FPR": {"auc": 0.61, "tpr_at_fpr": {"0.01": 0.02}},
                 "lira: AUC": {"auc": 0.98, "tpr_at_fpr": {"0.01": 0.9}}}}
    b = {"mia": {"t=100: TPR at 1% FPR": {"auc": 0.55, "tpr_at_fpr": {"0.01": 0.011}},
                 "lira: AUC": {"auc": 0.7, "tpr_at_fpr": {"0.01": 0.1}}}}
    rows = compare_summaries(a, b)
    kinds = {r["metric"]: r["kind"] for r in rows}
    assert kinds["mia t=100: TPR at 1% FPR: AUC"] == "auc" and kinds["mia lira: AUC: TPR at 1% FPR"] == "rate"
    cells = _cells(format_rows(rows, "a", "b"))
    assert cells["mia t=100: TPR at 1% FPR: AUC"] == ["0.610", "0.550", "-0.060"]
    assert cells["mia lira: AUC: TPR at 1% FPR"] == ["90.0%", "10.0%", "-80.0 pp"]


def test_compare_json_rows_declare_kind_and_direction(tmp_path, capsys):
    for name, n in (("plain", 12), ("dedup", 3)):
        write_result(tmp_path / name / "verify" / "result.json", "verify", {}, {}, unique_extracted=n, n_samples=1000,
                     extracted=[], rule="ratio")
    assert main(["--json", "compare", str(tmp_path / "plain"), str(tmp_path / "dedup")]) == 0
    rows = {r["metric"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert rows["extraction: unique extracted"]["kind"] == "count" and rows["extraction: unique extracted"]["better"] == "lower"
    assert rows["extraction: generations"]["better"] == "none"
