"""Whose membership results a report shows: `mia` attacks every shadow model in turn by default
(leave-one-out, its rows pooled), one shadow with --target-index, or a separate run with --target. A report
of a folder of such results said "model shadows/model-00" and "the model" for results pooled over every
shadow model, and named the wrong model where --target-index attacked another. Also: the glossary's
Strong LiRA says what the run's --strong-aggregate did, and a shadows folder's report lists its models.

Hand-written result files (as the commands write them), no model is trained."""

from __future__ import annotations

from pathlib import Path

from test_report import _envelope, visible_text

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html

DATA = {"spec": "digits", "options": {"image_size": 8, "subset": 200, "subset_seed": 0}, "digest": "8f03af74f8786a12"}
TRAIN_SIZES = (96, 98, 96, 110)


def _shadows(root: Path) -> Path:
    """A `diffaudit shadows` folder of 4 models, each with its training run's result.json."""
    folder = root / "shadows"
    models = [{"index": k, "run": f"model-{k:02d}", "n_train": n, "final_loss": 0.12 + k / 1000, "seed": k}
              for k, n in enumerate(TRAIN_SIZES)]
    write_json_atomic(folder / "result.json", _envelope(
        "shadows", {"data": DATA, "membership": {"digest": "m", "n_models": 4, "seed": 0}}, {"seed": 0},
        n_models=4, n_columns=4, n_examples=200, membership="membership.npz", models=models))
    for m in models:
        write_json_atomic(folder / m["run"] / "result.json", _envelope(
            "train", {"data": {**DATA, "model_index": m["index"]}, "train": {"preset": "tiny", "steps": 300}}, {"seed": 0},
            steps=300, n_train=m["n_train"], final_loss=m["final_loss"]))
    return folder


def _mia(folder: Path, shadows: Path, target: dict, *, attack: str = "lira-offline", auc: float = 0.729,
         n: int = 400, **fields) -> None:
    """A mia result of ``attack`` on ``target`` ({mode, index, run}), with the shadows of ``shadows``."""
    pooled = {"n_models": 4, "n_examples": 200} if target["mode"] == "leave-one-out" else {}
    settings = {"data": DATA, "membership": {"digest": "m", "models": 4}, "shadows": str(shadows), "target": target,
                "attack": {"attack": attack, "timesteps": [100], "strong_aggregate": "sum-llr"}}
    write_json_atomic(folder / "result.json", _envelope(
        "mia", settings, {"seed": 0}, attack=attack, auc=auc, tpr_at_fpr={"0.01": 0.182, "0.001": None},
        ci={"auc": {"low": auc - 0.03, "high": auc + 0.02, "level": 0.95}}, n_members=n, n_nonmembers=n,
        target=target, timesteps=[100], **pooled, **fields))


LOO = {"mode": "leave-one-out", "index": None, "run": None}


def _header(html: str) -> str:
    return visible_text(html.split("</header>")[0])


def _answer(html: str) -> str:
    return visible_text(html.split('<section id="answer"')[1].split('<div class="cards">')[0])


def test_results_pooled_over_every_shadow_model_are_not_credited_to_model_00(tmp_path):
    """A folder of leave-one-out attacks beside their shadows folder: no model is named, the header counts
    the result folders (not model-00's run), and the answer speaks of the 4 shadow models."""
    root = tmp_path / "rel"
    shadows = _shadows(root)
    _mia(root / "mia-lira-offline", shadows, LOO)
    _mia(root / "mia-loss", shadows, LOO, attack="loss", auc=0.615)
    summary = build_summary(root)
    assert summary["model"] is None and summary["dataset"]["n_train"] is None
    assert summary["mia"]["lira-offline"]["pooled"] and summary["mia"]["lira-offline"]["shadows"] == str(shadows)
    html = render_html(root)
    header = _header(html)
    assert "model-00" not in header and "96 training images" not in header
    assert "audit of 3 result folders" in header
    assert f"membership pooled over the 4 shadow models of {shadows}, each the target in turn" in header
    answer = _answer(html)
    assert "Do the models reveal which images they trained on?" in answer
    assert ("Yes: the membership attack (lira-offline), pooled over the 4 shadow models (each the target in turn), "
            "tells their training images from images they never saw (AUC 0.729") in answer
    assert "picks out 18.2% of their training images" in answer and "the model never saw" not in answer
    card = visible_text(html.split('<div class="cards">')[1].split("</nav>")[0])
    assert "pooled over the 4 shadow models, each the target in turn: the counts below are of (model, image) pairs" in card


def test_pooled_results_beside_one_models_result_name_both(tmp_path):
    """Pooled attacks and an inpainting of model-00: the note says which result is of which, the header claims
    no one model, and the summary's model (model-00's record) says it is the inpainting's only."""
    root = tmp_path / "rel"
    shadows = _shadows(root)
    _mia(root / "mia-lira-offline", shadows, LOO)
    write_json_atomic(root / "inpaint" / "result.json", _envelope(
        "inpaint", {"model": str(shadows / "model-00"), "shadows": str(shadows), "data": {k: DATA[k] for k in ("spec", "options")},
                    "digests": {"data": DATA["digest"]}}, {"seed": 0}, auc=0.75, targets=[]))
    summary = build_summary(root)
    assert summary["mixed_inputs"] == {"model": [{"input": str(shadows / "model-00"), "stages": ["inpaint"]},
                                                 {"input": str(shadows), "pooled": 4, "stages": ["mia-lira-offline"]}]}
    assert summary["model"]["path"] == str(shadows / "model-00") and summary["model"]["stages"] == ["inpaint"]
    assert summary["dataset"]["n_train"] is None  # model-00's 96 are not the pooled attack's
    html = render_html(root)
    header = _header(html)
    assert "results of several models (listed below)" in header and "model-00" not in header
    assert "audit of 3 result folders" in header  # inpaint, mia, shadows: model-00's run is no result folder
    assert (f"models {shadows / 'model-00'} (inpaint); the 4 shadow models of {shadows}, each the target in turn and "
            "their rows pooled (mia-lira-offline).") in _answer(html)
    assert "the membership attack (lira-offline), pooled over the 4 shadow models" in _answer(html)


def test_the_model_a_target_index_attacked_is_named_and_attack_names_stay(tmp_path):
    """`mia --target-index 1` and `mia --target shadows/model-01` attack model-01, an inpainting model-00: the
    note names model-01 for both attacks, the answer says which model it speaks of, and the attack is called
    by its name (with its folder, as two folders ran it), not by the folder's alone."""
    root = tmp_path / "rel"
    shadows = _shadows(root)
    one = str(shadows / "model-01")
    _mia(root / "mia-target", shadows, {"mode": "model", "index": None, "run": one}, attack="loss", auc=0.7, n=98)
    _mia(root / "mia-tidx1", shadows, {"mode": "shadow", "index": 1, "run": None}, attack="loss", auc=0.8, n=98)
    write_json_atomic(root / "inpaint" / "result.json", _envelope(
        "inpaint", {"model": str(shadows / "model-00"), "data": {k: DATA[k] for k in ("spec", "options")}}, {"seed": 0},
        auc=0.75, targets=[]))
    summary = build_summary(root)
    assert summary["mixed_inputs"]["model"] == [{"input": str(shadows / "model-00"), "stages": ["inpaint"]},
                                                {"input": one, "stages": ["mia-target", "mia-tidx1"]}]
    assert summary["mia"]["mia-tidx1"]["model"] == one and summary["mia"]["mia-tidx1"]["label"] == "loss in mia-tidx1"
    html = render_html(root)
    answer = _answer(html)
    assert f"models {shadows / 'model-00'} (inpaint); {one} (mia-target, mia-tidx1)." in answer
    assert f"Yes: the membership attack (loss in mia-tidx1) on the model {one} tells the training images" in answer
    assert "model-00" not in _header(html)
    text = visible_text(html)
    assert "attack loss in mia-tidx1 · AUC" in text and "attack mia-tidx1" not in text
    rows = visible_text(html.split('<section id="mia">')[1].split("</table>")[0])
    assert "loss in mia-target" in rows and "loss in mia-tidx1" in rows
    # one folder alone: the model --target-index attacked is the report's model
    alone = build_summary(root / "mia-tidx1")
    assert alone["model"]["path"] == one and alone["mia"]["loss"]["label"] == "loss"


def test_the_glossary_says_what_strong_lira_did_with_its_queries(tmp_path):
    """Strong LiRA's default sums per-query log-likelihood ratios (sum-llr); the glossary said it averages the
    loss. It now says the aggregate the run recorded, as the Settings table does."""
    root = tmp_path / "strong"
    shadows = _shadows(tmp_path)
    _mia(root, shadows, LOO, attack="strong-lira", n_draws=4, flips=True, strong_aggregate="sum-llr")
    text = visible_text(render_html(root))
    assert ("Strong LiRA queries each image with 4 noise draws and their horizontal flips, and here scores each query on "
            "its own (one likelihood ratio per noise draw and flip) and sums their log ratios (--strong-aggregate sum-llr).") in text
    assert "averages the loss over several noise draws" not in text
    _mia(root, shadows, LOO, attack="strong-lira", n_draws=4, flips=True, strong_aggregate="mean-loss")
    assert "and here averages the loss over the queries first" in visible_text(render_html(root))
    # run with --no-flips, it queried no flipped image: the term said "noise draws and flips" all the same
    _mia(root, shadows, LOO, attack="strong-lira", n_draws=8, flips=False, strong_aggregate="sum-llr")
    assert "queries each image with 8 noise draws (here not flipped: --no-flips)" in visible_text(render_html(root))


def test_the_mean_loss_of_flipped_queries_is_said_to_sit_apart(tmp_path):
    """Strong LiRA's mean loss averages over flipped images too (0.544 beside 0.488 of the loss attack at the same
    timestep, on the walk): the note under the table says so where a row flipped, and not otherwise."""
    shadows = _shadows(tmp_path)
    loss = {"members": 0.48, "nonmembers": 0.52, "gap": 0.04}
    for flips, said in ((True, True), (False, False)):
        root = tmp_path / f"flips-{flips}"
        _mia(root, shadows, LOO, attack="strong-lira", n_draws=4, flips=flips, strong_aggregate="sum-llr", mean_loss=loss)
        text = visible_text(render_html(root))
        assert "Mean loss: the attacked model's denoising error" in text
        assert ("averages over the flipped images too" in text) is said


def test_a_shadows_folder_lists_its_models(tmp_path):
    """`diffaudit report SHADOWS`: the models its result.json lists, with their training images and final losses."""
    shadows = _shadows(tmp_path)
    html = render_html(shadows)
    assert '<section id="shadows">' in html and '<a href="#shadows">Shadow models</a>' in html
    summary = build_summary(shadows)
    assert summary["shadows"]["n_models"] == 4 and [m["n_train"] for m in summary["shadows"]["models"]] == list(TRAIN_SIZES)
    section = visible_text(html.split('<section id="shadows">')[1].split("</section>")[0])
    assert section.startswith("Shadow models 4 models trained by diffaudit shadows")
    assert "(200 in all)" in section and "they trained on 96 to 110 images" in section
    assert '<tr><th scope="row">model-03</th><td>110</td><td>0.123</td></tr>' in html


def test_an_audit_without_shadows_has_no_shadows_section(tmp_path):
    """An audit trains its target with `diffaudit shadows` (column 0 of its target split) into models/: that is
    no shadow model, so its report has no Shadow models section; one with --shadows 4 lists them."""
    for shadows, listed in ((0, False), (4, True)):
        root = tmp_path / f"audit-{shadows}"
        folder = _shadows(root)
        folder.rename(root / "models")
        write_json_atomic(root / "result.json", _envelope("audit", {"data": "digits", "shadows": shadows}, {"seed": 0}))
        html = render_html(root)
        assert ('<section id="shadows">' in html) is listed and (build_summary(root)["shadows"] is not None) is listed
