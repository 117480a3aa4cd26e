"""A report of ``verify --from-extract`` whose ``--samples`` is an image folder outside the reported folder.

verify records the ``samples_identity`` of the medoids it selected from the extract result (an image
folder's identity is the digest of the images read, so of that subset), not of the whole folder: the
report checks the folder against the identity of the same medoids, and shows the generations.

verify's ``per_sample.npz`` (read to count the generations in the medoids' cliques) may come from
someone else: an array whose header declares far more data than the file holds is left out like a
missing file (the counts fall back), never a MemoryError traceback.

Real result folders: ``extract`` and ``verify --from-extract`` run in-process on PNG folders of 8x8
digits, with 12 noisy copies of training image 5 and 11 of image 42 among 30 unrelated digits.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.cli.main import main
from diffaudit.report import build_summary, render_html
from diffaudit.report.html import report_context
from helpers import extract_then_verify_medoids, noisy_copies
from test_report import Page, visible_text


def _png_folder(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img[..., 0] if img.ndim == 3 else img).save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    from diffaudit.data import load_dataset

    d = tmp_path_factory.mktemp("from-extract-folder")
    images = load_dataset("digits").images
    train = images[:100]
    _png_folder(d / "train", train)
    samples = np.concatenate([noisy_copies(train[5], 12, 1), images[300:330], noisy_copies(train[42], 11, 2)])
    _png_folder(d / "gens", samples)
    extract_then_verify_medoids(d, d / "gens", d / "train")
    return d


def test_the_folders_are_a_from_extract_verify_of_an_image_folder(folder):
    v = json.loads((folder / "verify" / "result.json").read_text())
    assert v["n_samples_total"] == 53 and v["n_samples"] == len(v["verified_medoids"]) == 2
    assert v["settings"]["samples_identity"].startswith("data:")  # the digest of the 2 medoids read
    assert len(v["extracted"]) == 2


def test_the_generations_of_an_image_folder_outside_the_verify_folder_are_shown(folder):
    """The report of the verify folder alone: --samples (gens/) lies outside it, and is the input whose
    medoids verify recorded, so each verified generation is embedded beside its training image."""
    gallery = report_context(folder / "verify")["gallery"]
    assert len(gallery["items"]) == 2
    assert all(item["gen_uri"] for item in gallery["items"])
    assert not any("is not the input the result records" in n for n in gallery["notes"])
    html = render_html(folder / "verify")
    assert len(Page(html).images("generation")) == 2 and not Page(html).images("generation-missing")
    assert "is not the input the result records" not in visible_text(html)


def test_another_folder_with_the_same_medoid_ids_is_still_refused(folder, tmp_path):
    """A folder of other pixels under the medoids' names is not the one verify recorded: by id, as before."""
    moved = tmp_path / "verify"
    shutil.copytree(folder / "verify", moved)
    other = _png_folder(tmp_path / "other", 255 - np.stack([np.asarray(Image.open(p)) for p in sorted((folder / "gens").iterdir())]))
    r = json.loads((moved / "result.json").read_text())
    r["settings"]["samples"] = str(other)
    (moved / "result.json").write_text(json.dumps(r))
    gallery = report_context(moved)["gallery"]
    assert not any(item["gen_uri"] for item in gallery["items"])
    assert any("is not the input the result records" in n for n in gallery["notes"])


def _npz_declaring(path: Path, arrays: dict[str, np.ndarray], huge: str) -> None:
    """An .npz of ``arrays`` whose ``huge`` member's header declares 10^13 bools over a few bytes of data."""
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            if name == huge:
                np.lib.format.write_array_header_1_0(buf, {"descr": "|b1", "fortran_order": False, "shape": (10**13,)})
                buf.write(b"\x01" * 8)
            else:
                np.save(buf, a, allow_pickle=False)
            z.writestr(name + ".npy", buf.getvalue())


def test_a_per_sample_file_declaring_terabytes_falls_back_like_a_missing_one(folder, tmp_path, capsys):
    moved = tmp_path / "verify"
    shutil.copytree(folder / "verify", moved)
    with np.load(folder / "verify" / "per_sample.npz") as z:
        arrays = {k: z[k] for k in z.files}
    _npz_declaring(moved / "per_sample.npz", arrays, "extracted")
    assert main(["report", str(moved), "--out", str(tmp_path / "report.html")]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MemoryError" not in err
    # each record was credited with one medoid: its own sample tells the counts, as without the file
    intact = build_summary(folder / "verify")["extraction"]
    assert build_summary(moved)["extraction"]["n_clique_generations"] == intact["n_clique_generations"] == 23


def test_the_clique_counts_are_computed_once_per_report(folder, monkeypatch):
    """The summary and the gallery both ask for them: the extract result verify names and verify's
    per_sample.npz are read on the first ask only."""
    import diffaudit.report.clique_counts as cc

    calls = {"named_extract": 0, "_extracting_medoids": 0}
    for name in calls:
        def counted(*args, _f=getattr(cc, name), _name=name):
            calls[_name] += 1
            return _f(*args)
        monkeypatch.setattr(cc, name, counted)
    context = report_context(folder / "verify")
    assert calls == {"named_extract": 1, "_extracting_medoids": 1}
    assert context["summary"]["extraction"]["n_clique_generations"] == 23
    assert sorted(item["clique_generations"] for item in context["gallery"]["items"]) == [11, 12]
