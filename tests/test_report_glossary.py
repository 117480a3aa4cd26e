"""The report's "Terms used here": each section's terms, in plain words, with the numbers of the run."""

from __future__ import annotations

from test_report import _envelope, make_audit, visible_text

from diffaudit.core.io import write_json_atomic
from diffaudit.report import render_html
from diffaudit.report.glossary import glossary


def _dts(html: str) -> list[str]:
    """The terms (dt texts) in the order shown."""
    import re

    return [visible_text(m) for m in re.findall(r"<dt>(.*?)</dt>", html)]


def test_every_section_of_a_full_audit_has_its_terms(tmp_path):
    html = render_html(make_audit(tmp_path))
    assert _dts(html) == ["generation", "ℓ2 (distance)", "extracted", "false-positive baseline", "k (eidetic memorization)",
                          "tiled ℓ2", "clique", "medoid", "member, non-member", "AUC", "TPR at 1% FPR",
                          "95% CI [low, high]", "p", "loss, timestep t", "ROC curve", "LiRA, shadow models",
                          "inpainting attack", "canary, exposure"]
    text = visible_text(html)
    assert '<a href="#terms">Terms</a>' in html
    # the rule verify ran, with its numbers: α and the neighbours it used (50 asked, 12 training images)
    assert "at most α = 0.5 times as far from it as its 12 nearest training images" in text
    assert "a copy by this rule can be further than 0.05 from its training image" in text
    assert "with the 50 nearest; here every training image, as there are fewer)" in text
    # make_audit's extract ran on the default grid; its baseline (1,000 images) is not the training set's size
    assert "on a grid of tiles (4 x 4 by default)" in text and "so the two counts compare directly" not in text
    assert "lie within ℓ2 0.1 of the copied training image" in text


def test_a_membership_result_alone_names_only_its_terms(tmp_path):
    root = tmp_path / "mia-only"
    write_json_atomic(root / "result.json", _envelope(
        "mia", {"data": {"spec": "digits", "options": {}}}, {}, attack="loss", auc=0.6, tpr_at_fpr={}, n_members=20,
        n_nonmembers=20))
    terms = _dts(render_html(root))
    assert "member, non-member" in terms and "AUC" in terms
    assert not {"clique", "extracted", "LiRA, shadow models", "canary, exposure"} & set(terms)


def test_the_extraction_rule_speaks_of_the_rule_verify_ran():
    l2 = dict(glossary({"summary": {"extraction": {"rule": "l2", "delta": 0.12}}}))
    assert l2["extracted"].startswith("a generation copies a training image when their ℓ2 is at most δ = 0.12")
    # the ℓ2 term spoke of a rule that "measures a copy against its neighbours" (the ratio rule) under the l2 rule
    assert "against its neighbours" not in l2["ℓ2 (distance)"] and "one δ below" in l2["ℓ2 (distance)"]
    ratio = dict(glossary({"summary": {"extraction": {"rule": "ratio", "n_train": 100}}}))
    assert "measures a copy against its neighbours" in ratio["ℓ2 (distance)"]
    unverified = dict(glossary({"summary": {"extraction": {"rule": None, "n_cliques": 3}}, "cliques": {"unconditional": True}}))
    assert "extracted" not in unverified and "false-positive baseline" not in unverified  # nothing was verified
    assert "for one prompt" not in unverified["clique"]
    assert "for one prompt" in dict(glossary({"cliques": {"unconditional": False}}))["clique"]
    assert glossary({"summary": {}}) == []
    dp = dict(glossary({"summary": {"model": {"dp": {"epsilon": 8.0}}}}))
    assert list(dp) == ["ε (DP-SGD)"]
    equal = dict(glossary({"summary": {"extraction": {"rule": "ratio", "n_train": 16, "baseline_n_images": 16}},
                           "cliques": {"unconditional": True, "grid": 2}}))
    assert "as many never-seen images as there are training images (16), so the two counts compare directly" in \
        equal["false-positive baseline"]
    assert "(2 x 2 here)" in equal["tiled ℓ2"] and "connected component" in equal


def test_the_settings_table_says_how_many_neighbours_the_ratio_rule_used():
    """verify's --n-neighbors 50 against 12 training images averages over 12: the settings row said 50 beside
    the rule's "against the 12 nearest training images"; it now says both."""
    from diffaudit.report.view_misc import settings_view

    def verify_rows(extraction: dict) -> dict[str, str]:
        view = settings_view({"extraction": extraction, "settings": {"verify": {"rule": extraction["rule"], "n_neighbors": 50}}})
        return dict(view["settings"][0][1])

    assert verify_rows({"rule": "ratio", "n_neighbors": 12, "n_train": 12})["n_neighbors"] == \
        "50 (12 used: the training set holds 12 images)"
    # older results recorded the n asked for: the n used is still at most the training set
    assert verify_rows({"rule": "ratio", "n_neighbors": 50, "n_train": 12})["n_neighbors"].startswith("50 (12 used")
    assert verify_rows({"rule": "ratio", "n_neighbors": 50, "n_train": 5000})["n_neighbors"] == "50"
    assert verify_rows({"rule": "l2", "n_neighbors": 12, "n_train": 12})["n_neighbors"] == "50"  # the l2 rule uses none


def test_the_settings_table_says_which_sweep_timesteps_mia_ran():
    """The audit's --sweep ...,1000 ran as ...,999 (the last of 1,000 timesteps): the Settings table showed 1000
    beside mia's 999 with nothing to join them; the audit's row now says what ran. A sweep that ran as given,
    and one mia did not record, stay as given."""
    from diffaudit.report.view_misc import settings_view

    def sweep_row(given: str, ran) -> str:
        mia = {} if ran is None else {"attack": {"sweep": ran}}
        view = settings_view({"settings": {"audit": {"sweep": given}, "mia": mia}})
        return dict(view["settings"][0][1])["sweep"]

    assert sweep_row("10,50,1000", [10, 50, 999]) == \
        "10,50,1000 (mia ran t = 10, 50, 999: a t equal to the number of timesteps means the last of them)"
    assert sweep_row("50,10", [10, 50]) == "50,10"
    assert sweep_row("10,1000", None) == "10,1000" and sweep_row("10,1000", []) == "10,1000"
    assert dict(settings_view({"settings": {"audit": {"sweep": "10"}, "mia": {"attack": "loss"}}})["settings"][0][1])["sweep"] == "10"
