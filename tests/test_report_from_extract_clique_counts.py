"""After `verify --from-extract` only the flagged cliques' medoids were verified: the report says so and
counts the generations in their cliques (from the extract result verify names), not "copied by N
generations" with N a number of medoids.

Real result folders: `extract` and `verify --from-extract` run in-process on 8x8 digits, with 12 noisy
copies of training image 5, 11 of image 42, and 11 more copies of image 5 with one corner brightened
(a clique of their own: tiled ℓ2 takes the worst tile), among 60 unrelated digits.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.report import build_summary, render_html
from helpers import extract_then_verify_medoids, noisy_copies
from test_report import Page, visible_text


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from diffaudit.data import load_dataset

    d = tmp_path_factory.mktemp("from-extract")
    images = load_dataset("digits").images
    train = images[:200]
    np.savez(d / "train.npz", images=train)
    corner = noisy_copies(train[5], 11, 3).astype(int)
    corner[:, :2, :2] = np.clip(corner[:, :2, :2] + 90, 0, 255)
    samples = np.concatenate([noisy_copies(train[5], 12, 1), images[300:360], noisy_copies(train[42], 11, 2),
                              corner.astype(np.uint8)])
    np.savez(d / "samples.npz", images=samples)
    extract_then_verify_medoids(d, d / "samples.npz", d / "train.npz")
    return d


def test_the_folders_are_what_the_finding_is_about(folder):
    v = json.loads((folder / "verify" / "result.json").read_text())
    assert v["n_samples"] == 3 and v["n_samples_total"] == 94 and v["n_extracting_samples"] == 3
    assert sorted(e["n_matching_samples"] for e in v["extracted"]) == [1, 2]  # medoids, not generations
    groups = json.loads((folder / "extract" / "result.json").read_text())["groups"]
    assert sorted(len(g["members"]) for g in groups) == [11, 11, 12]


def test_the_card_counts_medoids_and_the_generations_of_their_cliques(folder):
    ex = build_summary(folder)["extraction"]
    assert ex["from_extract"] is True and ex["n_clique_generations"] == 34
    text = visible_text(render_html(folder))
    assert ("unique, copied by 3 of the 3 clique medoids verified (--from-extract, of 94 generations); the cliques of "
            "the copying medoids hold 34 generations, near-identical to them but not each verified") in text
    assert "copied by 3 of 3 generations" not in text


def test_each_pair_names_its_medoids_and_their_cliques(folder):
    html = render_html(folder / "verify")  # the verify folder alone: the extract result it names is read
    page = Page(html)
    badges = {a["title"] for t, a in page.tags if a.get("data-kind") == "clique-generations"}
    assert badges == {
        "2 verified clique medoids copy this training image; their cliques hold 23 generations, near-identical to them "
        "but not each verified",
        "1 verified clique medoid copies this training image; its clique holds 11 generations, near-identical to it but "
        "not each verified"}
    text = visible_text(html)
    assert "2 medoids, cliques of 23 generations" in text and "1 medoid, clique of 11 generations" in text
    assert "copied by 2 generations" not in text and "“copied by N generations”" not in text
    assert "verify checked only the medoid of each flagged clique (--from-extract)" in text


def test_without_the_extract_result_the_counts_stay_medoids(folder, tmp_path):
    """The extract result moved away: the report says the medoids copy, and that the cliques' size is unknown."""
    moved = tmp_path / "verify"
    shutil.copytree(folder / "verify", moved)
    settings_file = moved / "result.json"
    r = json.loads(settings_file.read_text())
    r["settings"]["from_extract"] = str(tmp_path / "gone" / "result.json")
    settings_file.write_text(json.dumps(r))
    ex = build_summary(moved)["extraction"]
    assert ex["from_extract"] is True and ex["n_clique_generations"] is None
    text = visible_text(render_html(moved))
    assert "copied by 3 of the 3 clique medoids verified" in text and "is not known here" in text
    assert "copied by 2 clique medoids" in text and "copied by 2 generations" not in text


def test_a_verify_of_every_generation_is_unchanged(folder, tmp_path):
    out = tmp_path / "all"
    assert main(["--quiet", "verify", "--samples", str(folder / "samples.npz"), "--data", str(folder / "train.npz"),
                 "--out", str(out), "--device", "cpu"]) == 0
    ex = build_summary(out)["extraction"]
    assert "from_extract" not in ex
    text = visible_text(render_html(out))
    assert f"copied by {ex['n_extracting_samples']} of 94 generations" in text and "clique medoids verified" not in text


def test_an_extract_result_that_flagged_nothing_verifies_nothing_and_says_so(tmp_path, capsys):
    """60 unrelated digits form no clique: verify --from-extract checks 0 generations. That bounds nothing, so the
    command warns, its line says nothing was measured and the report's verdict is "not measured", not "no training
    image was extracted"; the baseline still records its size."""
    from diffaudit.data import load_dataset

    images = load_dataset("digits").images
    np.savez(tmp_path / "train.npz", images=images[:200])
    np.savez(tmp_path / "unseen.npz", images=images[400:450])
    np.savez(tmp_path / "samples.npz", images=images[300:360])
    assert main(["--quiet", "extract", "--samples", str(tmp_path / "samples.npz"), "--out", str(tmp_path / "extract"),
                 "--device", "cpu", "--k-neighbors", "16"]) == 0
    assert main(["verify", "--samples", str(tmp_path / "samples.npz"), "--data", str(tmp_path / "train.npz"),
                 "--baseline", str(tmp_path / "unseen.npz"), "--from-extract", str(tmp_path / "extract"),
                 "--out", str(tmp_path / "verify"), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "flags no clique among its 60 generations: no generation is verified" in err
    assert "no generation verified (the extract result flagged none): nothing measured" in out
    r = json.loads((tmp_path / "verify" / "result.json").read_text())
    assert r["n_samples"] == 0 and r["baseline"]["n_images"] == 50 and r["baseline_unique_extracted"] == 0
    text = visible_text(render_html(tmp_path / "verify"))
    assert "Not measured: no generation was verified (the extract result flagged no clique among its 60 generations)" in text
    assert "No training image was extracted" not in text and "0 of 50 never-seen images matched" in text
