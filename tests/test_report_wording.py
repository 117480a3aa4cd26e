"""What the report says, in words a new reader can check: how sure the extraction verdict is (an exact
test against the false-positive baseline), when a correlation means nothing (an attack at
chance), and the unit of every count (training images, generations, settings, targets).

Result folders are written the way the commands write them (``test_report._envelope``); the HTML is
parsed, not grepped, where a number must be found in a given place.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from html import unescape
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from diffaudit.report.summary import CHANCE_AUC, baseline_pvalue
from diffaudit.report.view_extraction import MAX_PAIRS, SIGNIFICANCE, verdict
from test_report import Page, _envelope


def _ex(n: int, b: int | None, n_train: int | None = 1000, n_base: int | None = 1000, **more) -> dict:
    """An ``extraction`` summary section: n training images extracted, b on the baseline set."""
    ex = {"unique_extracted": n, "baseline_unique_extracted": b, "n_samples": 4096, "n_train": n_train,
          "baseline_n_images": n_base, **more}
    return {k: v for k, v in ex.items() if v is not None}


def _exact_tail(n: int, b: int, n_train: int, n_base: int) -> Fraction:
    """P(X ≥ n), X hypergeometric: n + b matched images drawn from n_train training and n_base
    baseline images (Fisher's exact test, one-sided), in exact rational arithmetic."""
    m = n + b
    total = math.comb(n_train + n_base, m)
    return sum((Fraction(math.comb(n_train, k) * math.comb(n_base, m - k), total) for k in range(n, min(m, n_train) + 1)),
               Fraction(0))


# --- 1. the extraction verdict: "yes" only when the extracted count is significantly above the baseline


def test_a_count_just_above_the_baseline_is_not_evidence():
    """3 against 2 on equal sets is what chance gives (p = P(X ≥ 3), X ~ Bin(5, 1/2) = 1/2): unsure."""
    v = verdict(_ex(3, 2))
    assert v["level"] == "unsure"
    assert "against 2 false positives among 1,000 never-seen images" in v["text"]
    assert "not significantly above the baseline" in v["text"] and "p = 0.5" in v["text"]


def test_an_inconclusive_count_against_a_small_baseline_says_how_many_would_be_needed():
    """Against a never-seen set smaller than the training set (a --heldout of CIFAR-10's test split against its
    50,000 training images) even no baseline match leaves 5 training matches inconclusive: the verdict says
    the fewest that the same test would call significant, checked against the exact tail on both sides
    of it; with equal sets it says nothing of the kind."""
    from diffaudit.report.view_extraction import needed_count

    v = verdict(_ex(5, 0, n_train=50_000, n_base=10_000))
    assert v["level"] == "unsure"
    k = needed_count(_ex(5, 0, n_train=50_000, n_base=10_000), 0)
    assert _exact_tail(k, 0, 50_000, 10_000) < 0.05 <= _exact_tail(k - 1, 0, 50_000, 10_000)
    assert k == 17 and ("With only 10,000 never-seen images against 50,000 training images, at least 17 training images "
                        "would have to match (against 0 baseline matches) to be significant") in v["text"]
    k = needed_count(_ex(5, 2, n_train=500, n_base=40), 2)
    assert _exact_tail(k, 2, 500, 40) < 0.05 <= _exact_tail(k - 1, 2, 500, 40)
    assert "would have to match" not in verdict(_ex(3, 2))["text"]
    assert "no count of the 500 training images could be significant" in verdict(_ex(5, 5, n_train=500, n_base=5))["text"]


def test_matches_closer_than_any_baseline_match_are_said_beside_an_inconclusive_count(tmp_path):
    """2 against 2 is no evidence by count; a pixel-exact copy among them, nearer than any never-seen image came,
    is said beside it (the count weighs every match alike), and the level stays what the test says."""
    v = verdict(_ex(2, 2, extracted_l2_median=0.07, extracted_l2_min=0.0, baseline_l2_min=0.13,
                    extracted_closer_than_baseline=1))
    assert v["level"] == "unsure"
    assert "1 of the training matches is closer than any baseline match (the closest training match at ℓ2 0.000): a copy no " \
           "never-seen image came as near to." in v["text"]
    assert "closer than any" not in verdict(_ex(2, 2, extracted_l2_median=0.2, extracted_l2_min=0.15, baseline_l2_min=0.13,
                                                extracted_closer_than_baseline=0))["text"]
    summary = build_summary(_verify_folder_with_an_exact_copy(tmp_path))
    assert summary["extraction"]["extracted_closer_than_baseline"] == 1


def test_a_count_above_chance_with_no_match_closer_than_the_baseline_is_no_extracted_copy():
    """8 against 2 among 300 of each is significant by count, but with every training match farther than the
    closest never-seen one (0.178 against 0.132) no copy was emitted: "Above chance, but no copy", not "Yes"; one
    match closer than every baseline match makes it "Yes"; a record without the distances keeps the count's answer."""
    far = dict(extracted_l2_median=0.178, extracted_l2_min=0.160, baseline_l2_min=0.132)
    v = verdict(_ex(8, 0, n_train=300, n_base=300, **far, extracted_closer_than_baseline=0))
    assert v["level"] == "unsure" and v["text"].startswith("Above chance, but no copy: 8 training images were matched")
    assert "yet none lies closer than the closest baseline match (ℓ2 0.132; the training matches at median ℓ2 0.178)" in v["text"]
    assert "not an extracted copy" in v["text"] and "Yes" not in v["text"]
    near = verdict(_ex(8, 0, n_train=300, n_base=300, **{**far, "extracted_l2_min": 0.01}, extracted_closer_than_baseline=1))
    assert near["level"] == "yes" and near["text"].startswith("Yes: 8 training images were extracted")
    assert verdict(_ex(8, 0, n_train=300, n_base=300))["level"] == "yes"


def _verify_folder_with_an_exact_copy(root: Path) -> Path:
    res = root / "verify"
    write_json_atomic(res / "result.json", _envelope(
        "verify", {"rule": "ratio"}, {}, n_samples=48, n_train=12, rule="ratio", unique_extracted=2,
        baseline_unique_extracted=2, baseline={"n_images": 12, "extracted": [
            {"sample": "p1-i0", "train_id": 0, "train_key": "h0", "l2": 0.13}, {"sample": "p2-i0", "train_id": 1, "l2": 0.149}]},
        extracted=[{"sample": "p0-i2", "train_id": 4, "train_key": "npz:4", "l2": 0.146, "closest_sample": "p7-i1",
                    "closest_l2": 0.0, "closest_train_id": 4, "closest_train_key": "npz:4"},
                   {"sample": "p3-i0", "train_id": 5, "train_key": "npz:5", "l2": 0.149}]))
    return res


def test_one_match_against_none_is_not_evidence():
    """b = 0, n = 1 on equal sets: p = 1/2, unsure (a coin decides where one chance match falls)."""
    v = verdict(_ex(1, 0))
    assert v["level"] == "unsure" and "p = 0.5" in v["text"]
    assert "0 false positives among 1,000 never-seen images" in v["text"]


def test_five_matches_against_none_is_evidence():
    """n = 5, b = 0 on equal sets: p = 1/32 < 0.05, yes; n = 4: p = 1/16, not yet."""
    assert SIGNIFICANCE == 0.05
    v = verdict(_ex(5, 0))
    assert v["level"] == "yes" and "p = 0.031" in v["text"]
    assert "against 0 false positives among 1,000 never-seen images" in v["text"]
    assert verdict(_ex(4, 0))["level"] == "unsure"


def test_unequal_sets_are_weighed_by_the_test():
    """2 false positives among 100 never-seen images is 10 times the rate of 3 matches among 1,000
    training images: no evidence; 3 against 2 among 10,000 never-seen ones is."""
    small = verdict(_ex(3, 2, n_train=1000, n_base=100))
    assert small["level"] == "unsure" and "among 100 never-seen images" in small["text"]
    assert "weighs the 100 never-seen images against the 1,000 training images" in small["text"]
    large = verdict(_ex(3, 2, n_train=1000, n_base=10_000))
    assert large["level"] == "yes" and "among 10,000 never-seen images" in large["text"]


def test_unrecorded_sizes_are_taken_as_equal_and_said_so():
    v = verdict(_ex(3, 2, n_train=None, n_base=None))
    assert v["level"] == "unsure" and "p = 0.5" in v["text"]
    assert "never-seen images (their number not recorded: taken as equal to the training set)" in v["text"]


def test_matches_without_a_baseline_are_not_a_yes():
    """The ratio rule matched 14 of 32 never-seen digits in the built-in audit: without a baseline a count
    of matches says nothing about how many are chance."""
    v = verdict(_ex(32, None))
    assert v["level"] == "unsure" and v["text"].startswith("Unsure: 32 training images were matched")
    assert "no false-positive baseline was run" in v["text"]


def test_a_significant_excess_says_how_many_matches_chance_would_give():
    """14 matches among 19 training images against 6 of 19 never-seen ones: significant, but about 6 of
    the 14 are what chance gives."""
    v = verdict(_ex(14, 6, n_train=19, n_base=19))
    assert v["level"] == "yes" and "about 6 of the 19 training images would match by chance" in v["text"]
    assert "the excess of the 14 matches over that, about 8, is what the count alone attributes" in v["text"]
    assert "by chance" not in verdict(_ex(5, 0))["text"].split("(")[-1]  # nothing expected: no sentence


def test_a_p_value_near_the_threshold_never_prints_as_the_threshold():
    from diffaudit.report.fmt import fmt_p

    assert (fmt_p(0.0497), fmt_p(0.0503), fmt_p(0.031), fmt_p(6.6e-06)) == ("0.0497", "0.0503", "0.031", "6.6e-06")


def test_the_l2_sentence_is_kept():
    v = verdict(_ex(9, 1, extracted_l2_median=0.031, baseline_l2_min=0.12))
    assert v["level"] == "yes"
    assert "median ℓ2 0.031; the closest baseline match is at ℓ2 0.120" in v["text"]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), b=st.integers(0, 40), n_train=st.integers(40, 5000), n_base=st.integers(40, 5000))
def test_pvalue_is_fishers_exact_tail(n, b, n_train, n_base):
    p = baseline_pvalue(_ex(n, b, n_train=n_train, n_base=n_base))
    expected = 1.0 if n == 0 else float(_exact_tail(n, b, n_train, n_base))
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_a_saturated_count_is_weighed_exactly():
    """All 32 training images matched against 14 of 32 never-seen ones (the built-in demo): each image
    is matched or not, so the count cannot exceed its set. Fisher's test gives p = C(32,14)/C(64,46)
    ≈ 1.3e-7; a binomial on the 46 matches (as if counts were unbounded) would give 0.0057."""
    p = baseline_pvalue(_ex(32, 14, n_train=32, n_base=32))
    assert p == pytest.approx(math.comb(32, 14) / math.comb(64, 46), rel=1e-9)
    assert "Fisher exact test" in verdict(_ex(32, 14, n_train=32, n_base=32))["text"]
    # without recorded sizes: the binomial on equal sets, and the text says which test ran
    assert baseline_pvalue(_ex(3, 2, n_train=None, n_base=None)) == pytest.approx(0.5)
    assert "exact binomial test (equal sets assumed)" in verdict(_ex(3, 2, n_train=None, n_base=None))["text"]


def _verify_folder(root: Path, n: int, b: int, n_train: int, n_base: int) -> Path:
    """A verify result.json as `diffaudit verify --baseline` writes it (baseline size under ``baseline``)."""
    rows = [{"sample": f"p{i}-i0", "train_id": i, "train_key": f"npz:{i}", "l2": 0.02, "ratio": 0.1, "eidetic_k": 1}
            for i in range(n)]
    write_json_atomic(root / "result.json", _envelope(
        "verify", {"data": "x.npz", "rule": "l2", "baseline": "b.npz"}, {"seed": 0}, n_samples=64, n_train=n_train,
        rule="l2", extracted=rows, unique_extracted=n, n_extracting_samples=n, baseline_unique_extracted=b,
        baseline={"source": "b.npz", "n_images": n_base, "equal_size": n_base == n_train, "extracted": rows[:b]}))
    return root


def test_summary_records_the_baseline_size_and_pvalue(tmp_path):
    """The equal-size baseline's size and the test's p-value are in summary.json and on the card."""
    root = _verify_folder(tmp_path, 3, 2, 500, 500)
    ex = build_summary(root)["extraction"]
    assert ex["baseline_n_images"] == 500 and ex["baseline_pvalue"] == pytest.approx(0.5)
    page = Page(render_html(root))
    metrics = {p: text.strip() for p, _, text in page.metrics}
    assert metrics["extraction.baseline_n_images"] == "500" and metrics["extraction.baseline_pvalue"] == "0.5"
    assert [a["data-verdict"] for t, a in page.tags if "data-verdict" in a] == ["unsure"]


# --- 2. the outliers section: no correlation reported for an attack at chance


def _outlier_audit(root: Path, auc: float, ci: tuple[float, float] | None) -> Path:
    """An audit folder with a ``mia`` stage of the given AUC and the ``outliers`` stage that reads its scores."""
    write_json_atomic(root / "audit.json", {"settings": {"data": "digits"}, "seeds": {"seed": 0}})
    fields = {"ci": {"auc": {"low": ci[0], "high": ci[1], "level": 0.95}}} if ci else {}
    write_json_atomic(root / "mia" / "result.json", _envelope(
        "mia", {"data": "digits"}, {"seed": 0}, attack="loss", auc=auc, tpr_at_fpr={"0.01": 0.01}, n_members=32,
        n_nonmembers=1765, **fields))
    bins = [{"outlier_lo": 0.3 + i / 10, "outlier_hi": 0.4 + i / 10, "n": 6, "mean_mia_score": -0.01 * i} for i in range(3)]
    write_json_atomic(root / "outliers" / "result.json", _envelope(
        "outliers", {"k": 31}, {"seed": 0}, population="member", k=31, spearman={"rho": -0.454, "pvalue": 0.0091, "n": 32},
        bins=bins))
    return root


def _section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}">')
    return html[start:html.index("</section>", start)]


@pytest.mark.parametrize("auc, ci", [(0.51, None), (0.59, None), (0.52, (0.48, 0.56)), (0.7, (0.45, 0.9))])
def test_outlier_correlation_of_an_attack_at_chance_is_not_a_finding(tmp_path, auc, ci):
    root = _outlier_audit(tmp_path, auc, ci)
    assert build_summary(root)["outliers"]["attack_at_chance"] is True
    section = _section(render_html(root), "outliers")
    text = " ".join("".join(Page(section).text).split())
    assert "is at chance" in text and "not meaningful" in text
    assert "-0.454" not in text and "more exposed here" not in text and "Spearman correlation of" not in text


@pytest.mark.parametrize("auc, ci", [(0.9, (0.85, 0.95)), (0.58, (0.57, 0.59))])
def test_outlier_correlation_of_a_working_attack_is_reported(tmp_path, auc, ci):
    """An attack whose AUC interval excludes 0.5 is not guessing, however weak (0.58 [0.57, 0.59])."""
    assert CHANCE_AUC == 0.6
    root = _outlier_audit(tmp_path, auc, ci)
    s = build_summary(root)["outliers"]
    assert s["attack"] == "loss" and s["attack_auc"] == auc and s["attack_at_chance"] is False
    text = " ".join("".join(Page(_section(render_html(root), "outliers")).text).split())
    assert "-0.454" in text and "typical images are more exposed here" in text and "at chance" not in text


# --- 3. units and legends


def test_gallery_counts_training_images_not_generations(tmp_path):
    """Each verify record is one distinct training image (its copies collapsed): the lede says so."""
    root = _verify_folder(tmp_path, MAX_PAIRS + 13, 0, 1000, 1000)
    text = " ".join("".join(Page(_section(render_html(root), "extracted")).text).split())
    assert f"Showing {MAX_PAIRS} of {MAX_PAIRS + 13} extracted training images." in text
    assert "extracted generations" not in text


def _titled(page: Page, text_start: str) -> list[str]:
    """Titles of the elements whose title starts with ``text_start``."""
    return [a["title"] for _, a in page.tags if (a.get("title") or "").startswith(text_start)]


def test_plus_n_badges_have_a_tooltip_and_a_legend(tmp_path):
    members = [f"p0-i{i}" for i in range(15)]
    write_json_atomic(tmp_path / "result.json", _envelope("extract", {"samples": "none", "min_clique": 10}, {"seed": 0}, prompts=[
        {"prompt": "a cat", "n_generations": 500, "largest_clique": 15, "members": members, "medoid": "p0-i3",
         "mean_distance": 0.05, "flagged": True}]))
    html = render_html(tmp_path)
    page = Page(html)
    assert _titled(page, "3 more members of this clique") == ["3 more members of this clique, not shown"]
    text = " ".join("".join(page.text).split())
    assert "+3" in text and "“+N” after them counts the clique's further members, not shown" in text
    assert "clique of 15 of the prompt's 500 generations" in text


@pytest.fixture(scope="module")
def audit_html(tmp_path_factory) -> str:
    from test_report import make_audit

    return render_html(make_audit(tmp_path_factory.mktemp("wording")))


def test_duplicate_and_copy_counts_are_explained(audit_html):
    page = Page(audit_html)
    assert _titled(page, "this training image occurs 2 times") == [
        "this training image occurs 2 times in the training set (itself and its near-duplicates)"]
    assert _titled(page, "10 generations copy") == ["10 generations copy this training image"]
    text = " ".join("".join(page.text).split())
    assert "“duplicated ×N”: the training image occurs N times in the training set" in text


def test_inpainting_auc_shows_its_targets(audit_html):
    """The AUC of 3 targets is a coarse number: the card says on how many members and non-members."""
    page = Page(audit_html)
    metrics = {p: text.strip() for p, _, text in page.metrics}
    assert (metrics["inpainting.n_targets"], metrics["inpainting.n_members"], metrics["inpainting.n_nonmembers"]) == ("3", "2", "1")
    text = " ".join("".join(page.text).split())
    assert "on 3 targets: 2 members, 1 non-member" in text


def test_stage_setting_counts_carry_their_unit(audit_html):
    counts = re.findall(r'<span class="count">([^<]*)</span>', audit_html)
    assert len(counts) >= 8 and all(re.fullmatch(r"\d+ settings?", c) for c in counts), counts


# --- 4. what the header counts, the timestep sweep's axes, and the model a --model audit audited

#: The audit's own training options as `diffaudit audit` records them (its defaults).
AUDIT_TRAIN_DEFAULTS = {"preset": "tiny", "steps": 3000, "batch_size": 32, "lr": 0.001, "warmup_steps": 50, "grad_clip": 1.0,
                        "ema_decay": 0.999, "flip": False, "class_conditional": False, "checkpoint_every": 500,
                        "log_every": None, "no_bf16": False, "compile": False, "train_size": 32}


def _train_run(run: Path, *, dedup: bool = False, dp: dict | None = None) -> Path:
    """A run directory the way `diffaudit train [--dedup KEEP]` writes it (settings nested under train,
    unet, data), with `dropped_duplicates.json` for --dedup and a `dp` record for DP-SGD."""
    data = {"spec": "cifar10", "options": {"image_size": 16, "center_crop": None, "subset": 2000, "subset_seed": 0,
                                           "mode": None, "skip_bad": False, "cifar_root": None}}
    if dedup:
        data.update(dedup="dedup/keep.json", n_dropped_duplicates=3)
        write_json_atomic(run / "dropped_duplicates.json", {"keep_list": "dedup/keep.json", "keys": ["ship_1", "cat_2", "dog_3"]})
    settings = {"train": {"preset": "tiny", "steps": 600, "batch_size": 64, "lr": 0.0002, "warmup_steps": 100, "seed": 0},
                "unet": {"sample_size": 16, "in_channels": 3}, "data": data}
    write_json_atomic(run / "settings.json", {"command": "train", "settings": settings})
    extra = {"dp": dp} if dp else {}
    write_json_atomic(run / "result.json", _envelope("train", settings, {"seed": 0}, steps=600, n_parameters=164563,
                                                     n_train=1997, n_stream=1997, final_loss=0.108, **extra))
    (run / "loss_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1 / (1 + s)}) + "\n" for s in range(0, 600, 50)))
    return run


def _model_audit(root: Path, run: Path | None, *, shadows: int = 0, link: bool = True) -> Path:
    """`diffaudit audit --data cifar10 --model run-dedup` run from ``root`` (paths recorded relative to it): its
    result.json lists 4 stages; the folder also holds the outliers stage the audit adds."""
    audit = root / "audit-dedup"
    settings = {"data": "cifar10", "image_size": 16, "subset": None, "subset_seed": 0, "model": "run-dedup",
                "shadows": shadows, "mia": "loss", "n_samples": 512, "seed": 0, **AUDIT_TRAIN_DEFAULTS}
    write_json_atomic(audit / "result.json", _envelope("audit", settings, {"seed": 0}, stages=["sample", "extract", "verify", "mia"],
                                                       target="run-dedup", n_train=1997, n_nonmembers=48000,
                                                       n_excluded_duplicates=3))
    if run is not None and link:
        (audit / "models").mkdir()
        (audit / "models" / "model-00").symlink_to(run.resolve(), target_is_directory=True)
    write_json_atomic(audit / "extract" / "result.json", _envelope("extract", {"min_clique": 10}, {"seed": 0}, mode="unconditional",
                                                                   groups=[], n_groups=0, n_samples=512))
    write_json_atomic(audit / "verify" / "result.json", _envelope(
        "verify", {"data": "audit-dedup/members.view.json", "rule": "ratio"}, {"seed": 0}, n_samples=512, n_train=1997,
        rule="ratio", extracted=[], unique_extracted=0, baseline_unique_extracted=0,
        baseline={"n_images": 1997, "equal_size": True, "extracted": []}))
    write_json_atomic(audit / "mia" / "result.json", _envelope(
        "mia", {"data": {"spec": "cifar10", "options": {"image_size": 16}}}, {"seed": 0}, attack="loss", auc=0.498,
        tpr_at_fpr={"0.01": 0.0105, "0.001": 0.001}, n_members=1997, n_nonmembers=48000, n_excluded=3, timesteps=[100]))
    write_json_atomic(audit / "outliers" / "result.json", _envelope("outliers", {"k": 1000}, {"seed": 0}, population="member",
                                                                    k=1000, spearman={"rho": 0.01, "pvalue": 0.6, "n": 1997}))
    return audit


def _text(html: str) -> str:
    return " ".join("".join(Page(html).text).split())


def _facts(html: str) -> dict[str, str]:
    """{label: text} of the Training section's table of the model's training record."""
    return {k: unescape(v) for k, v in re.findall(r"<tr><th[^>]*>([^<]*)</th><td>([^<]*)</td></tr>", _section(html, "training"))}


def test_header_counts_the_stages_the_audit_ran(tmp_path):
    """The audit lists 4 stages; the folder holds 5 result folders (outliers too) and, with the model found, a
    sixth record: the header names the audit's stages, not a count of folders."""
    root = _model_audit(tmp_path, _train_run(tmp_path / "run-dedup"))
    assert build_summary(root)["audit_stages"] == ["sample", "extract", "verify", "mia"]
    header = _text(render_html(root).split("</header>")[0])
    assert "audit of 4 stages (sample, extract, verify, mia)" in header and "5 stages" not in header


def test_header_without_a_stage_list_counts_result_folders(audit_html):
    header = _text(audit_html.split("</header>")[0])
    assert re.search(r"audit of \d+ result folders", header) and " stages" not in header


def test_a_model_audit_reports_how_the_model_was_trained(tmp_path):
    """`audit --model RUN` of a deduplicated run: the summary's model section holds the run's training record
    (its options, data, and the --dedup keep list with the near-duplicates it dropped) and the report shows it."""
    root = _model_audit(tmp_path, _train_run(tmp_path / "run-dedup", dedup=True))
    model = build_summary(root)["model"]
    assert model["path"] == "run-dedup"
    assert (model["steps"], model["batch_size"], model["lr"], model["preset"], model["image_size"]) == (600, 64, 0.0002, "tiny", 16)
    assert model["data"] == {"spec": "cifar10", "options": {"image_size": 16, "subset": 2000}} and model["n_train"] == 1997
    assert model["dedup"] == {"keep_list": "dedup/keep.json", "n_dropped": 3} and model["dp"] is None
    html = render_html(root)
    assert "training" in Page(html).ids()
    facts = _facts(html)
    assert facts["training"] == "preset tiny, 600 steps, batch 64, learning rate 0.0002, 16×16 px"
    assert facts["data"] == "--data cifar10 --image-size 16 --subset 2000, 1,997 training images"
    assert facts["deduplicated"] == "yes: --dedup dedup/keep.json, 3 near-duplicates dropped from training"
    assert facts["DP-SGD"] == "no" and facts["run"] == "run-dedup"


def test_dropped_duplicates_are_counted_from_their_file_when_settings_do_not_say(tmp_path):
    run = _train_run(tmp_path / "run-dedup", dedup=True)
    result = json.loads((run / "result.json").read_text())
    del result["settings"]["data"]["n_dropped_duplicates"]
    write_json_atomic(run / "result.json", result)
    assert build_summary(_model_audit(tmp_path, run))["model"]["dedup"] == {"keep_list": "dedup/keep.json", "n_dropped": 3}


def test_a_dp_run_and_a_moved_audit_are_found(tmp_path):
    """No models/model-00 link: the recorded --model path, next to the audit folder, is the run; its DP-SGD
    record is in the summary and the report."""
    dp = {"epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "accountant": "rdp", "steps": 600}
    root = _model_audit(tmp_path, _train_run(tmp_path / "run-dedup", dp=dp), link=False)
    model = build_summary(root)["model"]
    assert model["dp"] == {"epsilon": 8.0, "delta": 1e-5, "noise_multiplier": 1.1, "max_grad_norm": 1.0, "accountant": "rdp"}
    assert model["dedup"] is None
    facts = _facts(render_html(root))
    assert facts["DP-SGD"] == "ε = 8 at δ = 1e-05 (noise multiplier 1.1, clipping norm 1)"
    assert facts["deduplicated"] == "no (trained without --dedup)"


def test_a_model_without_a_training_record_says_so(tmp_path):
    root = _model_audit(tmp_path, None)
    assert build_summary(root)["model"] == {"path": "run-dedup"}
    text = _text(_section(render_html(root), "training"))
    assert "No training record found for the audited model run-dedup" in text


def _settings_rows(html: str, stage: str) -> dict[str, str]:
    """{key: value} of one stage's table in the Settings section."""
    block = html.split(f"<summary>{stage} <span")[1].split("</details>")[0]
    return dict(re.findall(r"<tr><th[^>]*>([^<]*)</th><td><code>([^<]*)</code></td></tr>", block))


def test_the_audits_training_options_are_not_shown_as_used_for_a_model_audit(tmp_path):
    """--model without shadows trains nothing: the audit's training defaults (steps 3000, lr 0.001) are left
    out of its settings table and named as not used; the run's own settings are its own table."""
    run = _train_run(tmp_path / "run-dedup", dedup=True)
    html = render_html(_model_audit(tmp_path, run))
    rows = _settings_rows(html, "audit")
    assert not (set(AUDIT_TRAIN_DEFAULTS) - {"class_conditional"}) & set(rows)  # the run's own: it decides sampling
    assert rows["training options"].startswith("not used: --model run-dedup was audited")
    assert "steps" in rows["training options"] and rows["model"] == "run-dedup"
    assert _settings_rows(html, "model")["train.steps"] == "600"
    with_shadows = _settings_rows(render_html(_model_audit(tmp_path / "sh", run, shadows=4)), "audit")
    assert with_shadows["steps"] == "3000" and "training options" not in with_shadows  # the shadows trained with them


def test_the_baseline_card_names_the_excluded_near_duplicates(tmp_path):
    root = _model_audit(tmp_path, _train_run(tmp_path / "run-dedup", dedup=True))
    assert build_summary(root)["extraction"]["n_excluded_duplicates"] == 3
    html = render_html(root)
    assert ("extraction.n_excluded_duplicates", "3", "3") in Page(html).metrics
    card = _text(html.split('class="vs">false-positive baseline:')[1].split("</div>\n      </div>")[0])
    assert "3 near-duplicates the deduplicated model dropped left out of the baseline" in card


def test_timestep_sweep_axes_do_not_magnify_chance():
    """An attack at chance (AUC 0.490-0.498, TPR 0.85-1.2% at 1% FPR) must not fill the axes: the AUC axis
    holds 0.5 and at least [0.45, 0.55], TPR is in percent from 0 to at least 3x chance, chance is drawn."""
    from diffaudit.report.plots import timestep_sweep_figure

    t = [10, 50, 100, 200, 300, 500, 999]
    fig = timestep_sweep_figure([("loss", t, [0.497, 0.497, 0.498, 0.498, 0.498, 0.491, 0.490],
                                  [0.012, 0.0085, 0.011, 0.012, 0.011, 0.012, 0.010])])
    auc_ax, tpr_ax = fig.axes
    lo, hi = auc_ax.get_ylim()
    assert lo <= 0.45 and hi >= 0.55
    tlo, thi = tpr_ax.get_ylim()
    assert tlo == 0 and thi >= 3.0  # percent
    assert "%" in tpr_ax.get_title() and tpr_ax.yaxis.get_major_formatter().format_data(1.0).endswith("%")

    def dashed(ax):
        return [float(line.get_ydata()[0]) for line in ax.get_lines() if line.get_linestyle() == "--"]

    assert dashed(auc_ax) == [0.5] and dashed(tpr_ax) == [1.0]
    tpr_points = next(line for line in tpr_ax.get_lines() if line.get_label() == "loss").get_ydata()
    assert max(tpr_points) == pytest.approx(1.2)  # plotted in percent, like the tables
    strong = timestep_sweep_figure([("loss", [10, 100], [0.3, 1.0], [0.0, 1.0])]).axes
    assert strong[0].get_ylim()[0] <= 0.3 and 1.0 <= strong[0].get_ylim()[1] <= 1.02 and strong[1].get_ylim()[1] >= 100


def test_timestep_sweep_without_any_tpr_says_it_was_not_measured_and_shares_the_t_axis():
    """Under 100 non-members no TPR at 1% FPR is resolved: the panel says so rather than stay blank, and its
    t axis is the AUC panel's."""
    from diffaudit.report.plots import timestep_sweep_figure

    fig = timestep_sweep_figure([("loss", [10, 100, 500], [0.6, 0.8, 0.55], [None, None, None])])
    auc_ax, tpr_ax = fig.axes
    assert [t.get_text() for t in tpr_ax.texts] == ["not measured\n(needs 100 or more non-members)"]
    assert not auc_ax.texts and tpr_ax.get_xlim() == auc_ax.get_xlim()
    assert auc_ax.get_xlim()[0] < 10 and auc_ax.get_xlim()[1] > 500


def test_roc_is_drawn_from_the_smallest_fpr_the_evaluation_resolves():
    """With 20 non-members no FPR below 1/20 is measured: the curve starts there (its FPR-0 points are not
    drawn at the axis floor, which would claim a TPR at FPR 0.001), and the unmeasured part is shaded."""
    import numpy as np

    from diffaudit.report.plots import ROC_AXIS_FLOOR, roc_loglog_figure

    fig = roc_loglog_figure([("loss", np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.4, 0.9, 1.0]))], min_fpr=1 / 20)
    ax = fig.axes[0]
    curve = next(line for line in ax.get_lines() if line.get_label() == "loss")
    assert min(curve.get_xdata()) == pytest.approx(0.05)
    assert ax.get_xlim()[0] == pytest.approx(ROC_AXIS_FLOOR)
    assert any("not measured" in p.get_label() for p in ax.patches)
    resolved = roc_loglog_figure([("loss", np.array([0.0, 1e-4, 1.0]), np.array([0.0, 0.4, 1.0]))], min_fpr=1e-4).axes[0]
    assert resolved.get_xlim()[0] == pytest.approx(1e-4) and not resolved.patches  # all of it measured


def _mia_folder(root: Path, **fields) -> Path:
    write_json_atomic(root / "result.json", _envelope("mia", {"data": "digits"}, {"seed": 0}, attack="loss", **fields))
    return root


def _headline(root: Path) -> str:
    html = render_html(root)
    start = html.index("Membership inference, TPR at 1% FPR")
    end = html.find('<div class="card">', start)
    return " ".join("".join(Page(html[start:end if end > 0 else html.index("</section>", start)]).text).split())


def test_the_mia_headline_of_an_attack_at_chance_says_it_guesses(tmp_path):
    """AUC 0.474 [0.368, 0.602] with TPR 9.4% at 1% FPR: the TPR is chance, not a finding."""
    root = _mia_folder(tmp_path / "a", auc=0.474, tpr_at_fpr={"0.01": 0.094}, n_members=40, n_nonmembers=128,
                       ci={"auc": {"low": 0.368, "high": 0.602, "level": 0.95}})
    assert "indistinguishable from guessing" in _headline(root)
    working = _mia_folder(tmp_path / "b", auc=0.9, tpr_at_fpr={"0.01": 0.3}, n_members=40, n_nonmembers=128,
                          ci={"auc": {"low": 0.85, "high": 0.95, "level": 0.95}})
    assert "indistinguishable from guessing" not in _headline(working)


def test_a_tpr_too_few_non_members_can_resolve_is_said_to_be_unmeasured(tmp_path):
    root = _mia_folder(tmp_path, auc=0.8, tpr_at_fpr={"0.01": None}, n_members=21, n_nonmembers=21)
    text = _headline(root)
    assert "not measured: 21 non-members resolve FPR only in steps of 4.8%" in text
    assert "no confidence interval recorded" not in text


def test_an_interval_of_width_zero_is_not_shown_as_certainty():
    """Every resample agreeing means too few examples inside the range, but at its ends (an AUC or TPR of
    1.0 or 0.0: every member identified, or none) it is what resampling perfectly told-apart examples gives,
    whatever their number (32 members and 1,765 non-members at AUC 1.0)."""
    from diffaudit.report.fmt import fmt_ci

    assert fmt_ci({"low": 0.75, "high": 0.75, "level": 0.95}) == \
        "95% CI [0.750, 0.750] (every resample agreed: too few examples to bound it)"
    assert fmt_ci({"low": 1.0, "high": 1.0, "level": 0.95}, "pct") == (
        "95% CI [100.0%, 100.0%] (every resample agreed: the attack identifies every one of these members, and "
        "resampling them cannot bound a perfect score from below)")
    assert fmt_ci({"low": 0.0, "high": 0.0}, "pct") == (
        "CI [0.0%, 0.0%] (every resample agreed: the attack identifies none of these members, and resampling them "
        "cannot bound a score of 0 from above)")
    assert fmt_ci({"low": 0.8, "high": 0.9, "level": 0.95}) == "95% CI [0.800, 0.900]"


def test_the_gallery_legend_names_the_eidetic_radius_verify_used(tmp_path):
    root = _verify_folder(tmp_path, 3, 0, 1000, 1000)
    text = " ".join("".join(Page(_section(render_html(root), "extracted")).text).split())
    assert "within 0.1 of the training image, itself included (eidetic memorization)" in text  # verify's default, where none is recorded
    result = json.loads((root / "result.json").read_text())
    result["settings"]["eidetic_delta"] = 0.05
    (root / "result.json").write_text(json.dumps(result))
    text = " ".join("".join(Page(_section(render_html(root), "extracted")).text).split())
    assert "k is the number of training images within 0.05 of the training image, itself included (eidetic memorization)" in text


def test_matches_to_images_the_model_never_trained_on_are_not_an_extraction():
    ex = _ex(5, 0)
    ex["data_vs_model"] = {"n_data": 64, "n_trained": 16, "n_not_trained": 64, "n_trained_missing": 16}
    v = verdict(ex)
    assert v["level"] == "unknown" and v["text"].startswith("Not measured: none of the 64 images verified against is")
    ex["data_vs_model"] = {"n_data": 64, "n_trained": 16, "n_not_trained": 48, "n_trained_missing": 0}
    assert verdict(ex)["level"] != "unknown"  # some are its training images: the count is judged, with a caveat


def test_one_line_results_separate_thousands_as_the_report_does(tmp_path):
    """"by 1384 of 1,400 generations", "1188 of 1400 mapped generations" and "from 1400 generations" stood
    beside the report's "1,400": every count in a one-line result is written with its separators."""
    from diffaudit.cli.audit import _head
    from diffaudit.cli.verify import _summary

    head = _head({"unique_extracted": 1234, "n_train": 50000, "n_samples": 1048576}, {})
    assert head == "1,234 of 50,000 training images extracted from 1,048,576 generations"
    line = _summary({"unique_extracted": 1384, "n_samples": 1400, "rule": "l2"}, tmp_path)
    assert line.startswith("verify: 1,384 unique training images extracted from 1,400 generations by rule l2")
    checks = [{"sample": f"p{i}", "train_key": f"k{i % 1200}", "extracted": i < 1188} for i in range(1400)]
    line = _summary({"unique_extracted": None, "n_samples": 1400, "rule": "l2", "prompt_checks": checks,
                     "prompt_checks_extracted": 1188}, tmp_path)
    assert line.startswith("verify: 1,188 of 1,400 mapped generations reproduce their own prompt's training image "
                           "(1,188 distinct training images)"), line


def test_matches_in_data_the_model_never_trained_on_are_not_called_training_images(tmp_path):
    """verify against --data the model (mostly) never trained on: the pairs' section, its lede, its tags and the
    card's ℓ2 line call the matched images images of --data, not training images; a verify of the training set
    itself keeps the training words."""
    from diffaudit.report import render_html

    folder = _verify_folder_with_an_exact_copy(tmp_path / "untrained")
    record = json.loads((folder / "result.json").read_text())
    record.update(data_vs_model={"n_data": 12, "n_trained": 32, "n_not_trained": 12, "n_trained_missing": 32})
    write_json_atomic(folder / "result.json", record)
    text = " ".join(unescape(re.sub(r"<[^>]+>", " ", render_html(folder))).split())
    assert "Images of --data matched" in text and "Extracted training images" not in text
    assert ("Each pair is a generation (left) and the image of --data it matches (right), most exact first: the model never "
            "trained on 12 of --data's 12 images") in text
    assert "ℓ2 of --data matches: median" in text and "ℓ2 of training matches" not in text
    plain = _verify_folder_with_an_exact_copy(tmp_path / "trained")
    assert "Extracted training images" in " ".join(unescape(re.sub(r"<[^>]+>", " ", render_html(plain))).split())


def test_every_match_closer_than_the_baseline_is_said_as_all_with_the_farthest():
    """The demo's 32 matches all lie closer than any never-seen image came: it said "32 of the training matches are
    closer ... (the closest training match at ℓ2 0.013)", where the claim needs the farthest; now "All 32 ... (the
    farthest at ℓ2 0.025)". Some of them closer keeps the count and the closest."""
    near = dict(extracted_l2_median=0.018, extracted_l2_min=0.013, extracted_l2_max=0.025, baseline_l2_min=0.108)
    v = verdict(_ex(32, 14, n_train=32, n_base=32, **near, extracted_closer_than_baseline=32))
    assert ("All 32 training matches are closer than any baseline match (the farthest at ℓ2 0.025): copies that no "
            "never-seen image came as near to, so none of them is one of the chance matches the count allows for (about "
            "14 at the baseline's rate).") in v["text"] and "32 of the training matches" not in v["text"]
    # the closeness settles it: no "excess of 32 over 14, about 18" guess before it (the report reader's three counts)
    assert "excess" not in v["text"] and v["text"].count("14") == 2  # the baseline's count, and the chance matches
    some = verdict(_ex(32, 14, n_train=32, n_base=32, **near, extracted_closer_than_baseline=20))
    assert "20 of the training matches are closer than any baseline match (the closest training match at ℓ2 0.013)" in some["text"]
    assert "the excess of the 32 matches over that, about 18" in some["text"]  # some closer: the count's guess stays


def test_the_glossary_says_a_zero_width_interval_is_not_certainty():
    from diffaudit.report.glossary import glossary

    terms = dict(glossary({"summary": {}, "mia": {"rows": [{"key": "loss", "attack": "loss"}]}}))
    ci = next(v for k, v in terms.items() if k.startswith("95% CI"))
    assert "[1.000, 1.000]: every draw separated them perfectly, which is not certainty" in ci


def test_the_generations_that_copy_are_shown_beside_those_matching_never_seen_images(tmp_path):
    """"copied by 511 of 512 generations" had no comparison, though the same loose rule matches 159 of them to a
    never-seen image: the card now says both, from verify's baseline record."""
    import json

    from diffaudit.report import render_html
    from tests.test_report import visible_text

    folder = _verify_folder_with_an_exact_copy(tmp_path)
    result = json.loads((folder / "result.json").read_text())
    result["n_extracting_samples"] = 3
    result["baseline"]["n_extracting_samples"] = 2
    (folder / "result.json").write_text(json.dumps(result))
    text = visible_text(render_html(folder))
    assert "copied by 3 of 48 generations (by the same rule, 2 of them match a never-seen image)" in text


def test_the_verdict_of_a_pool_speaks_of_the_models():
    """A pool's count (``extraction.pool``: generations of several models, ``diffaudit pool``) is answered
    of "the models" in every sentence that names who made the generations; one store's of "the model"."""
    pool = {"n_members": 2, "members": []}
    far = dict(extracted_l2_median=0.178, extracted_l2_min=0.160, baseline_l2_min=0.132, extracted_closer_than_baseline=0)
    cases = [
        _ex(8, 0, n_train=300, n_base=300, **far),  # above chance, no copy
        _ex(3, None),  # no baseline
        {**_ex(0, 0), "n_samples": 0, "n_samples_total": 500},  # nothing verified
        _ex(3, 0, data_vs_model={"n_data": 1000, "n_not_trained": 1000}),  # --data none of them trained on
    ]
    for ex in cases:
        one, pooled = verdict(ex)["text"], verdict({**ex, "pool": pool})["text"]
        assert re.search(r"\b[Tt]he model\b", one) and not re.search(r"\b[Tt]he models\b", one), one
        assert re.search(r"\b[Tt]he models\b", pooled) and not re.search(r"\b[Tt]he model\b", pooled), pooled
        assert not re.search(r"\b(its training|it never|it trained|emits)\b", pooled), pooled
