"""A class-conditional model's prompts are its class indices: extract records so, and the report calls them
classes ("3 of 10 classes flagged", "class 3"), not prompts with a caption “3”."""

from __future__ import annotations

import json

from test_report import visible_text

from diffaudit.cli.main import main
from diffaudit.report import build_summary, render_html
from diffaudit.report.view_extraction import unverified_verdict


def test_a_class_conditional_extraction_speaks_of_classes(tmp_path):
    run, store, ext = tmp_path / "run", tmp_path / "s", tmp_path / "ext"
    assert main(["train", "--data", "digits", "--subset", "40", "--class-conditional", "--steps", "4", "--batch-size", "8",
                 "--checkpoint-every", "2", "--warmup-steps", "1", "--out", str(run), "--device", "cpu", "--quiet"]) == 0
    assert main(["sample", "--model", str(run), "--classes", "--per-prompt", "3", "--steps", "2", "--out", str(store),
                 "--device", "cpu", "--quiet"]) == 0
    # an edge threshold every pair passes: each class's 3 generations are one clique, flagged at 2
    assert main(["extract", "--samples", str(store), "--min-clique", "2", "--edge-threshold", "1", "--out", str(ext),
                 "--device", "cpu", "--quiet"]) == 0
    result = json.loads((ext / "result.json").read_text())
    assert result["prompt_kind"] == "class" and result["n_flagged"] == 10
    assert build_summary(ext)["extraction"]["prompt_kind"] == "class"
    for redact in (False, True):  # a class index is no caption: shown redacted too
        text = visible_text(render_html(ext, redact=redact))
        assert "10 of 10 classes flagged." in text and "Flagged classes and their cliques" in text
        assert "class 0 clique of 3 of the class's 3 generations" in text
        body = text[text.index("Was training data extracted?"):text.index("Terms used here")]  # not the style sheet
        assert "prompt" not in body.lower()
    assert "Extraction found 10 of 10 classes flagged" in unverified_verdict(build_summary(ext)["extraction"])["text"]


def test_a_text_extraction_still_speaks_of_prompts():
    ex = {"n_flagged": 1, "n_prompts": 4, "rule": None, "prompt_kind": "text"}
    assert unverified_verdict(ex)["text"].startswith("Extraction found 1 of 4 prompts flagged")
    assert unverified_verdict({**ex, "prompt_kind": None})["text"] == unverified_verdict(ex)["text"]  # older results


def test_a_class_is_shown_with_its_name_where_the_training_folder_names_it(tmp_path):
    """A hospital's folder of `normal/` and `pneumonia/` scans trains a model whose prompts are 0 and 1:
    the report said "class 1" only, leaving the reader to know the sorted folder order. verify records
    the class names of --data, and the report shows "class 1 (pneumonia)" (not when redacted: a folder
    name is the data's)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    data = tmp_path / "scans"
    for label, name in enumerate(("normal", "pneumonia")):
        (data / name).mkdir(parents=True)
        for i in np.flatnonzero(digits.target == label)[:10]:
            Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), "L").save(data / name / f"{i}.png")
    run, store, ext, ver = tmp_path / "run", tmp_path / "s", tmp_path / "ext", tmp_path / "ver"
    common = ["--device", "cpu", "--quiet"]
    assert main(["train", "--data", str(data), "--class-conditional", "--steps", "4", "--batch-size", "8",
                 "--checkpoint-every", "2", "--warmup-steps", "1", "--out", str(run), *common]) == 0
    assert main(["sample", "--model", str(run), "--classes", "--per-prompt", "3", "--steps", "2", "--out", str(store),
                 *common]) == 0
    assert main(["extract", "--samples", str(store), "--min-clique", "2", "--edge-threshold", "1", "--out", str(ext),
                 *common]) == 0
    # every medoid within delta of some training image: a pair per class
    assert main(["verify", "--samples", str(store), "--data", str(data), "--from-extract", str(ext), "--rule", "l2",
                 "--delta", "1", "--out", str(ver), *common]) == 0
    assert json.loads((ver / "result.json").read_text())["class_names"] == ["normal", "pneumonia"]
    text = visible_text(render_html(ver))
    assert "class 1 (pneumonia)" in text and "class 0 (normal)" in text
    redacted = visible_text(render_html(ver, redact=True))
    body = redacted[redacted.index("Was training data extracted?"):]  # not the style sheet
    assert "pneumonia" not in body and "(normal)" not in body
