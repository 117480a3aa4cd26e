"""``compare``: the attacked model's held-out loss (what a defence costs), degenerate intervals and an
unbounded ε are said in words."""

from __future__ import annotations

from diffaudit.defenses.compare import compare_summaries
from diffaudit.report.compare_table import UNBOUNDED, format_rows


def _mia(auc: float, members: float, nonmembers: float, ci=None) -> dict:
    entry = {"auc": auc, "tpr_at_fpr": {"0.01": 0.0, "0.001": None}, "n_nonmembers": 200,
             "mean_loss": {"members": members, "nonmembers": nonmembers, "gap": nonmembers - members}}
    if ci is not None:
        entry["ci"] = {"auc": {"low": ci[0], "high": ci[1]}, "tpr_at_fpr": {"0.01": {"low": 0.0, "high": 0.0}}}
    return {"mia": {"loss": entry}}


def _cells(table: str) -> dict[str, list[str]]:
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:5]] for line in table.splitlines()[2:]
            if line.startswith("|")}


def test_a_higher_held_out_loss_is_read_against_the_attacks_auc():
    plain, dp = _mia(0.95, 0.020, 0.040), _mia(0.52, 0.090, 0.091)
    rows = {r["metric"]: r for r in compare_summaries(plain, dp)}
    held = rows["mia loss: held-out loss"]
    assert (held["key"], held["kind"], held["better"], held["a"], held["b"]) == ("mia_heldout_loss", "score", "lower", 0.04, 0.091)
    assert rows["mia loss: loss gap"]["a"] == 0.02 and round(rows["mia loss: loss gap"]["b"], 6) == 0.001
    text = format_rows(list(rows.values()), "plain", "dp")
    assert _cells(text)["mia loss: held-out loss"] == ["0.04", "0.091", "+0.051"]
    assert "mia loss: held-out loss: dp's model denoises never-seen images 2.27x worse than plain's" in text
    assert "its lower leakage (AUC 0.520 against 0.950) is bought, at least in part, with sample quality" in text
    # a model that lost quality and is attacked as well as before bought nothing with it
    worse = format_rows(compare_summaries(plain, _mia(0.97, 0.080, 0.091)), "plain", "short")
    assert "short's model denoises never-seen images 2.27x worse" in worse
    assert "yet it is attacked no less well (AUC 0.970 against 0.950): the quality it lost bought no privacy" in worse
    noisy = format_rows(compare_summaries(_mia(0.95, 0.02, 0.04, ci=(0.8, 0.99)), _mia(0.9, 0.08, 0.091, ci=(0.75, 0.97))),
                        "plain", "dp")
    assert "attacked about as well (AUC 0.900 against 0.950, within noise)" in noisy
    # a change within 10% says nothing; a summary without losses (an older mia result) has no such rows
    same = format_rows(compare_summaries(plain, _mia(0.6, 0.030, 0.043)), "plain", "dedup")
    assert "worse than" not in same
    old = {"mia": {"loss": {"auc": 0.9, "tpr_at_fpr": {}}}}
    assert not {r["key"] for r in compare_summaries(old, old)} & {"mia_heldout_loss", "mia_loss_gap"}


def test_an_interval_every_resample_agreed_on_is_not_certainty():
    a, b = _mia(1.0, 0.02, 0.04, ci=(1.0, 1.0)), _mia(0.9, 0.02, 0.04, ci=(0.8, 0.97))
    text = format_rows(compare_summaries(a, b), "a", "b")
    assert "[x, x]: every bootstrap resample gave the same value" in text and "not certainty" in text
    only_wide = [r for r in compare_summaries(_mia(0.9, 0.02, 0.04, ci=(0.8, 0.97)), b) if "AUC" in r["metric"]]
    assert "[x, x]" not in format_rows(only_wide, "a", "b")


def test_a_dp_run_without_noise_reads_infinite_not_no_dp():
    s = {"dedup": {"n_groups": 1, "n_in_groups": 2}}
    rows = compare_summaries(s, s, dp_a={"epsilon": 8.0, "noise_multiplier": 1.1}, dp_b={"epsilon": None, "noise_multiplier": 0.0})
    row = next(r for r in rows if r["metric"] == "model: DP epsilon")
    assert (row["a"], row["b"], row["b_qualifier"], row["change"]) == (8.0, None, "unbounded", None)
    cells = _cells(format_rows(rows, "dp", "nonoise"))["model: DP epsilon"]
    assert cells[:2] == ["8", UNBOUNDED]
    # a side with no DP-SGD record at all still reads "no DP-SGD"
    plain = _cells(format_rows(compare_summaries(s, s, dp_b={"epsilon": 8.0}), "plain", "dp"))["model: DP epsilon"]
    assert plain[:2] == ["no DP-SGD", "8"]


def test_an_attack_run_with_other_queries_is_marked_and_its_losses_not_read_as_the_models():
    """The same model attacked at t = 100 and t = 300 has a held-out loss 3x apart: not "one model
    denoises 2.98x worse than the other"; the rows say "other queries" and a warning names the flag."""
    from diffaudit.report.compare_table import query_warnings

    t100, t300 = _mia(0.655, 0.395, 0.454), _mia(0.577, 0.143, 0.152)
    t100["mia"]["loss"].update(timesteps=[100], n_draws=1, flips=False)
    t300["mia"]["loss"].update(timesteps=[300], n_draws=1, flips=False)
    rows = {r["metric"]: r for r in compare_summaries(t100, t300)}
    assert {k for k, r in rows.items() if r.get("other_queries")} == {
        "mia loss: AUC", "mia loss: TPR at 1% FPR", "mia loss: TPR at 0.1% FPR", "mia loss: held-out loss",
        "mia loss: loss gap"}
    text = format_rows(list(rows.values()), "t100", "t300")
    assert "denoises never-seen images" not in text
    assert _cells(text)["mia loss: held-out loss"][2] == "-0.302 (other queries)"
    assert "other queries: the two sides ran this attack at other timesteps, draws or flips" in text
    (warning,) = query_warnings(t100, t300, ["t100", "t300"])
    assert warning.startswith("t100 and t300 ran the membership attack loss with other queries (--timesteps 100 and "
                              "300, t100's first)") and warning.endswith("compare runs with the same --timesteps")
    strong = _mia(0.7, 0.3, 0.4)
    strong["mia"]["loss"].update(timesteps=[100], n_draws=20, flips=True)
    (warning,) = query_warnings(t100, strong, ["a", "b"])
    assert "(--draws 1 and 20, --flips off and on, a's first)" in warning
    # the same queries (or a side that records none, an older result): no mark, no warning
    same = _mia(0.9, 0.1, 0.3)
    same["mia"]["loss"].update(timesteps=[100], n_draws=1, flips=False)
    assert not any(r.get("other_queries") for r in compare_summaries(t100, same))
    assert query_warnings(t100, same, ["a", "b"]) == [] == query_warnings(t100, _mia(0.9, 0.1, 0.3), ["a", "b"])
