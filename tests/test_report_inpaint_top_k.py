"""The inpainting result and report name the mean ℓ2 of the kept inpaintings for the k that was kept
(``mean_topk_l2`` with ``top_k`` beside it), not for the paper's 10: a run with ``--n-inpaint 8``
keeps 8, and the report says 8. Results written before the rename (``mean_top10_l2``, as the saved
``docs/results/*/inpaint.json``) still read and render."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from PIL import Image

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from diffaudit.report.results import Stage
from diffaudit.report.summary import inpainting_targets
from diffaudit.report.view_misc import top_k_words
from test_report import Page, _envelope

REPO = Path(__file__).resolve().parents[1]
SAVED = [p for p in sorted((REPO / "docs" / "results").glob("*/inpaint.json"))
         if json.loads(p.read_text()).get("command") == "inpaint"]  # not the benchmark's inpaint.json


def _inpaint_folder(root: Path, top_k: int) -> Path:
    """An inpaint result folder as `diffaudit inpaint --n-inpaint 8 --top-k <top_k>` writes it."""
    targets = [{"id": "digits:0", "member": True, "best_l2": 0.1, "mean_topk_l2": 0.15, "top_l2": [0.1] * top_k},
               {"id": "digits:5", "member": True, "best_l2": 0.15, "mean_topk_l2": 0.2, "top_l2": [0.15] * top_k},
               {"id": "digits:9", "member": False, "best_l2": 0.3, "mean_topk_l2": 0.35, "top_l2": [0.3] * top_k}]
    out = root / "inpaint"
    (out / "grids").mkdir(parents=True)
    Image.new("L", (40, 8)).save(out / "grids" / "000000.png")
    targets[0]["grid"] = "grids/000000.png"
    write_json_atomic(out / "result.json", _envelope(
        "inpaint", {"mask": "left", "n_inpaintings": 8, "top_k": top_k}, {"seed": 0}, targets=targets, top_k=top_k,
        auc=1.0, score="-mean_topk_l2 (larger = more likely a member)"))
    return out


def _text(html: str) -> str:
    return " ".join(unescape("".join(Page(html).text)).split())


def test_report_names_the_kept_k(tmp_path):
    folder = _inpaint_folder(tmp_path, top_k=8)
    s = build_summary(folder)["inpainting"]
    assert s["top_k"] == 8 and s["mean_topk_l2"]["members"] == pytest.approx(0.175)
    assert "mean_top10_l2" not in s
    html = render_html(folder)
    text = _text(html)
    assert "the 8 best inpaintings" in text and "mean top-8 ℓ2" in text and "top-8 ℓ2 0.150" in text
    assert "top-10" not in text and "10 best" not in text
    metrics = {m[0]: m[1] for m in Page(html).metrics}
    assert json.loads(metrics["inpainting.mean_topk_l2.members"]) == pytest.approx(0.175)


def test_words_for_k():
    assert top_k_words(8) == ("top-8", "8 best inpaintings")
    assert top_k_words(1) == ("top-1", "best inpainting")
    assert top_k_words(None) == ("top-k", "best inpaintings")  # unknown k: no number is made up


def test_top_k_from_the_kept_lists_when_not_recorded(tmp_path):
    folder = _inpaint_folder(tmp_path, top_k=3)
    r = json.loads((folder / "result.json").read_text())
    del r["top_k"], r["settings"]["top_k"]
    (folder / "result.json").write_text(json.dumps(r))
    assert build_summary(folder)["inpainting"]["top_k"] == 3
    assert "mean top-3 ℓ2" in _text(render_html(folder))


@pytest.mark.parametrize("saved", SAVED, ids=lambda p: p.parent.name)
def test_saved_results_with_the_old_name_still_render(saved, tmp_path):
    """docs/results keep the field's old name, ``mean_top10_l2``; the report reads it as ``mean_topk_l2``."""
    old = json.loads(saved.read_text())
    assert "mean_top10_l2" in old["targets"][0] and "top_k" not in old  # the old format
    folder = tmp_path / "inpaint"
    folder.mkdir()
    shutil.copyfile(saved, folder / "result.json")
    s = build_summary(folder)["inpainting"]
    members = [t["mean_top10_l2"] for t in old["targets"] if t["member"]]
    assert s["mean_topk_l2"]["members"] == pytest.approx(sum(members) / len(members))
    assert s["top_k"] == old["settings"]["top_k"]
    text = _text(render_html(folder))
    assert re.search(rf"mean top-{old['settings']['top_k']} ℓ2", text)


def test_old_inpainting_field_names_read_the_same_in_the_attack_and_the_report():
    from diffaudit.attacks.inpainting.attack import TargetResult

    record = {"index": 3, "id": "digits:3", "member": True, "mask": "center", "shadow": "s", "best_l2": 0.1,
              "mean_top10_l2": 0.2, "top1_l2": 0.1, "oracle_best_l2": 0.1, "mean_l2": 0.3, "top_l2": [0.1, 0.3],
              "top_scores": [0.5, 0.9]}
    target = TargetResult.from_dict(record)
    assert target.mean_topk_l2 == 0.2 and target.top_loss_ratios == [0.5, 0.9]
    stage = Stage(name="inpaint", command="inpaint", path=Path("."), result={"targets": [record]})
    (read,) = inpainting_targets(stage)
    assert read["mean_topk_l2"] == 0.2 and read["top_loss_ratios"] == [0.5, 0.9]


def test_the_hidden_part_l2_is_shown_beside_the_whole_image_l2(tmp_path):
    """The whole image's ℓ2 counts the known half, given back unchanged (0.177 where the hidden half is at
    0.251): the report says so and shows the hidden part's mean where the result records it."""
    folder = _inpaint_folder(tmp_path, top_k=8)
    assert "hidden part" not in _text(render_html(folder))
    assert "ℓ2 is over the whole image, whose known part the model is given back unchanged." in _text(render_html(folder))
    record = json.loads((folder / "result.json").read_text())
    for t, hidden in zip(record["targets"], (0.2, 0.3, 0.5)):
        t.update(mean_topk_l2_hidden=hidden, hidden_fraction=0.5)
    write_json_atomic(folder / "result.json", record)
    text = _text(render_html(folder))
    assert "mean top-8 ℓ2, hidden part" in text and "0.250" in text and "0.500" in text
    assert "the last column measures the hidden part alone (for a half mask, √2 times the whole image's)" in text
