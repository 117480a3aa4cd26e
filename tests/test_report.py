"""The HTML report and summary.json (issue 7, parts 2 and 4) on synthetic result folders.

``make_audit`` writes an audit folder the way the commands do (result.json envelopes with each
issue's fields, a real sample store, an .npz training set, a scores file, an inpainting grid), with
hostile captions and names in it. The tests parse the HTML (html.parser) rather than grepping it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import save_npy_atomic, write_json_atomic
from diffaudit.report import build_summary, render_report

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
EXTRACTED_TRAIN = (2, 5, 7)
VERSIONS = {"diffaudit": "0.1.0", "torch": "2.13.0", "diffusers": "0.42.1", "numpy": "2.4.6"}


def _envelope(command: str, settings: dict, seeds: dict | None = None, **fields) -> dict:
    return {"schema_version": 1, "command": command, "settings": settings, "seeds": seeds or {}, "versions": VERSIONS, **fields}


def _train_images(n: int = 12, size: int = 16) -> np.ndarray:
    """Distinct, structured RGB images: each a different gradient + stripe pattern."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for i in range(n):
        r = (xx * (8 + 5 * i)) % 256
        g = (yy * (3 + 7 * i)) % 256
        b = ((xx + yy) * (i + 1) * 4 + rng.integers(0, 40, (size, size))) % 256
        out.append(np.stack([r, g, b], -1))
    return np.asarray(out, dtype=np.uint8)


def _noisy(img: np.ndarray, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def make_audit(root: Path) -> Path:
    """An audit folder with every stage; returns its path. The training set is root/data/train.npz."""
    train = _train_images()
    data = root / "data" / "train.npz"
    data.parent.mkdir(parents=True)
    np.savez(data, images=train)
    audit = root / "audit"
    # Sample store: prompt 0 is memorized (noisy copies of training image 2), prompt 1 is varied;
    # p1-i0 and p1-i1 copy training images 5 and 7.
    ids, gens, prompts = [], [], [SCRIPT, IMG]
    rng = np.random.default_rng(1)
    for p in range(2):
        for i in range(10):
            ids.append(f"p{p}-i{i}")
            if p == 0:
                gens.append(_noisy(train[2], 100 + i))
            elif i < 2:
                gens.append(_noisy(train[(5, 7)[i]], 200 + i))
            else:
                gens.append(rng.integers(0, 256, train.shape[1:], dtype=np.uint8))
    store = audit / "samples"
    write_json_atomic(store / "manifest.json", {"schema_version": 1, "n_total": 20, "per_prompt": 10, "shard_size": 20,
                                                "n_shards": 1, "image_shape": [16, 16, 3], "prompts": prompts})
    save_npy_atomic(store / "shards" / "shard-000000.npy", np.asarray(gens))
    write_json_atomic(store / "shards" / "shard-000000.json", {"ids": ids, "seeds": list(range(20)),
                                                              "prompts": [prompts[int(x[1])] for x in ids]})
    data_settings = {"data": str(data), "image_size": None, "center_crop": None, "subset": None, "subset_seed": 0, "mode": None}
    # What verify and extract record of their inputs: the report shows their images only when they match.
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest
    from diffaudit.store import samples_identity

    data_digest, store_identity = dataset_digest(load_dataset(str(data))), samples_identity(str(store))
    write_json_atomic(audit / "audit.json", {"settings": {**data_settings, "caption_note": SCRIPT, "mia": "loss"}, "seeds": {"seed": 0}})
    (audit / "train").mkdir()
    write_json_atomic(audit / "train" / "result.json", _envelope("train", {**data_settings, "preset": "tiny", "steps": 300},
                                                                 {"seed": 0}, n_train=12, final_loss=0.041))
    (audit / "train" / "loss_log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / (1 + s / 20)}) + "\n" for s in range(0, 300, 10)) + '{"step": 30')
    write_json_atomic(audit / "extract" / "result.json", _envelope(
        "extract", {"samples": str(store), "samples_identity": store_identity, "edge_threshold": 0.1, "min_clique": 10}, {"seed": 0},
        prompts=[
            {"prompt": SCRIPT, "prompt_index": 0, "n_generations": 10, "largest_clique": 10, "members": ids[:10], "medoid": "p0-i3",
             "mean_distance": 0.031, "flagged": True},
            {"prompt": IMG, "prompt_index": 1, "n_generations": 10, "largest_clique": 2, "members": ids[10:12], "medoid": "p1-i0",
             "mean_distance": 0.2, "flagged": False},
        ]))
    # The baseline: 1 false positive among 1,000 never-seen images against 3 matches among 12 training
    # images, far above the baseline's rate (one-sided Fisher exact test p ≈ 7e-6): the verdict is "yes".
    write_json_atomic(audit / "verify" / "result.json", _envelope(
        "verify", {**data_settings, "data_digest": data_digest, "samples": "samples", "samples_identity": store_identity,
                   "rule": "ratio"}, {"seed": 0},
        n_samples=20, n_train=12, rule="ratio", unique_extracted=3, baseline_unique_extracted=1,
        baseline={"source": "holdout.npz", "n_images": 1000, "equal_size": False, "extracted": []},
        extracted=[
            {"sample": "p1-i0", "train_id": 5, "train_key": "npz:5", "l2": 0.021, "ratio": 0.12, "eidetic_k": 1},
            {"sample": "p0-i0", "train_id": 2, "train_key": "npz:2", "l2": 0.019, "ratio": 0.1, "eidetic_k": 2,
             "n_matching_samples": 10, "duplicates": [3]},
            {"sample": "p1-i1", "train_id": 7, "train_key": "npz:7", "l2": 0.024, "ratio": 0.15, "eidetic_k": 1},
        ]))
    # mia-loss: a scores file next to it; mia-lira: ROC points inline.
    srng = np.random.default_rng(3)
    member = np.r_[np.ones(200, bool), np.zeros(200, bool)]
    scores = np.r_[srng.normal(1.0, 1, 200), srng.normal(0, 1, 200)]
    (audit / "mia-loss").mkdir()
    # The layout `diffaudit mia` writes: id, score, member, example_index.
    np.savez(audit / "mia-loss" / "scores.npz", id=np.array([f"npz:{i}" for i in range(400)]), score=scores, member=member,
             example_index=np.arange(400))
    write_json_atomic(audit / "mia-loss" / "result.json", _envelope(
        "mia", {**data_settings, "attack": "loss", "model": "train"}, {"seed": 0, "noise_seed": 0},
        attack="loss", timesteps=[100], auc=0.7612, scores_file="scores.npz", tpr_at_fpr={"0.01": 0.055, "0.001": None}, balanced_accuracy=0.69,
        n_members=200, n_nonmembers=200, mean_loss={"members": 0.03125, "nonmembers": 0.04687, "gap": 0.01562},
        ci={"auc": {"low": 0.71, "high": 0.80, "level": 0.95}, "tpr_at_fpr": {"0.01": {"low": 0.02, "high": 0.11, "level": 0.95}, "0.001": None}},
        sweep={"attack": "loss", "timesteps": [10, 50, 100, 300, 600], "auc": [0.6, 0.72, 0.76, 0.74, 0.61],
               "tpr_at_fpr": {"0.01": [0.01, 0.04, 0.055, 0.05, 0.012]}}))
    fpr = [0.0, 0.001, 0.01, 0.1, 0.5, 1.0]
    write_json_atomic(audit / "mia-lira" / "result.json", _envelope(
        "mia", {**data_settings, "attack": "lira"}, {"seed": 0}, attack="lira", timesteps=[100], auc=0.934,
        tpr_at_fpr={"0.01": 0.31, "0.001": 0.12}, n_members=1000, n_nonmembers=1000,
        roc={"fpr": fpr, "tpr": [0.0, 0.12, 0.31, 0.7, 0.95, 1.0]}))
    # Inpainting: a grid per target; the member's grid holds its training image.
    targets = [{"index": 2, "id": "npz:2", "member": True, "best_l2": 0.04, "mean_topk_l2": 0.06},
               {"index": 9, "id": "npz:9", "member": True, "best_l2": 0.07, "mean_topk_l2": 0.09},
               {"index": 11, "id": "npz:11", "member": False, "best_l2": 0.2, "mean_topk_l2": 0.25}]
    (audit / "inpaint" / "grids").mkdir(parents=True)
    grid = np.concatenate([train[2], np.zeros_like(train[2]), _noisy(train[2], 7)], axis=1)
    Image.fromarray(grid).save(audit / "inpaint" / "grids" / "grid-npz_2.png")
    Image.fromarray(grid[::-1]).save(audit / "inpaint" / "grids" / f"grid-npz_9{IMG}.png")
    write_json_atomic(audit / "inpaint" / "result.json", _envelope("inpaint", {**data_settings, "mask": "left", "n_inpaintings": 64, "top_k": 10},
                                                                   {"seed": 0}, targets=targets, top_k=10, auc=0.875))
    canaries = [{"key": f"canary:{r}:{j}", "kind": "noise", "repeats": r, "exposure": float(np.log2(r) + j * 0.5),
                 "extracted": r >= 16} for r in (1, 4, 16, 64) for j in range(3)]
    write_json_atomic(audit / "canaries" / "result.json", _envelope("canaries", {"repeats": [1, 4, 16, 64]}, {"seed": 0}, canaries=canaries))
    write_json_atomic(audit / "dedup" / "result.json", _envelope("dedup", {**data_settings, "embedder": "pixel"}, {},
                                                                 groups=[{"members": [2, 3], "keys": ["npz:2", "npz:3"]}]))
    return audit


class Page(HTMLParser):
    """Tags, attributes, metric spans and text of an HTML page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.metrics: list[tuple[str, str, str]] = []
        self._metric: list | None = None
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if "data-metric" in a:
            self._metric = [a["data-metric"], a.get("data-value"), ""]

    def handle_endtag(self, tag):
        if tag == "span" and self._metric is not None:
            self.metrics.append(tuple(self._metric))
            self._metric = None

    def handle_data(self, data):
        self.text.append(data)
        if self._metric is not None:
            self._metric[2] += data

    def ids(self) -> set[str]:
        return {a["id"] for _, a in self.tags if a.get("id")}

    def images(self, kind: str | None = None) -> list[dict]:
        return [a for t, a in self.tags if t == "img" and (kind is None or a.get("data-kind") == kind)]


def visible_text(html: str) -> str:
    """The text of ``html`` as a reader sees it: tags dropped, whitespace runs as one space."""
    return " ".join("".join(Page(html).text).split())


def lookup(d, path: str):
    """Value at a dotted ``path`` in ``d``, where keys may themselves contain dots (``0.01``)."""
    parts = path.split(".")
    cur = d
    i = 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(cur, dict) and key in cur:
                cur, i = cur[key], j
                break
        else:
            raise KeyError(path)
    return cur


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Path:
    return make_audit(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def rendered(audit):
    path = render_report(audit)
    return path, path.read_text(encoding="utf-8"), build_summary(audit)


@pytest.fixture(scope="module")
def redacted(audit, tmp_path_factory):
    out = tmp_path_factory.mktemp("redacted") / "new" / "folder" / "r.html"
    path = render_report(audit, out, redact=True)
    return path, path.read_text(encoding="utf-8")


def test_summary_holds_every_section(audit):
    s = build_summary(audit)
    for key in ("schema_version", "command", "dataset", "model", "extraction", "mia", "inpainting", "canaries", "settings", "seeds", "versions"):
        assert key in s, key
    assert s["command"] == "audit" and s["schema_version"] == 1
    assert s["extraction"]["unique_extracted"] == 3 and s["extraction"]["n_samples"] == 20
    assert s["extraction"]["rule"] == "ratio" and s["extraction"]["baseline_unique_extracted"] == 1
    assert s["extraction"]["n_flagged"] == 1 and s["extraction"]["n_prompts"] == 2
    assert set(s["mia"]) == {"loss", "lira"}
    assert s["mia"]["loss"]["tpr_at_fpr"] == {"0.01": 0.055, "0.001": None}
    assert s["mia"]["loss"]["ci"]["tpr_at_fpr"]["0.01"] == {"low": 0.02, "high": 0.11, "level": 0.95}
    assert s["mia"]["lira"]["auc"] == 0.934
    assert s["inpainting"]["auc"] == 0.875 and s["inpainting"]["n_members"] == 2
    assert s["inpainting"]["mean_topk_l2"]["members"] == pytest.approx(0.075) and s["inpainting"]["top_k"] == 10
    assert [r["repeats"] for r in s["canaries"]["by_repeats"]] == [1, 4, 16, 64]
    assert s["canaries"]["n_extracted"] == 6
    assert s["dataset"]["spec"].endswith("train.npz") and s["dataset"]["n_train"] == 12
    assert s["settings"]["verify"]["rule"] == "ratio" and s["settings"]["audit"]["mia"] == "loss"
    assert s["seeds"]["mia-loss"] == {"seed": 0, "noise_seed": 0}
    assert s["versions"] == VERSIONS
    json.dumps(s, allow_nan=False)  # summary.json must be strict JSON


def test_sections_exist(rendered):
    page = Page(rendered[1])
    assert {"answer", "extracted", "cliques", "mia", "inpainting", "canaries", "duplicates", "training", "reproduce"} <= page.ids()
    assert len(page.images("generation")) >= 3 + 10  # three pairs and the flagged clique
    assert len(page.images("train")) == 3
    assert len(page.images("plot")) >= 4  # ROC, sweep, inpainting histogram, canaries, loss
    assert len(page.images("inpaint")) == 2


def test_numbers_match_summary(rendered):
    _, html, summary = rendered
    page = Page(html)
    seen = {m[0] for m in page.metrics}
    assert {"extraction.unique_extracted", "extraction.baseline_unique_extracted", "extraction.n_samples",
            "mia.lira.tpr_at_fpr.0.01", "mia.loss.auc", "inpainting.auc", "canaries.n_extracted",
            "mia.loss.mean_loss.members", "mia.loss.mean_loss.nonmembers"} <= seen
    assert summary["mia"]["lira"]["mean_loss"] is None  # a result without losses (an older mia) shows "-"
    assert 'data-kind="mia-mean-loss"' in html and "held-out loss" in html
    for path, raw, text in page.metrics:
        value = lookup(summary, path)
        assert json.loads(raw) == value, path
        shown = text.strip().replace(",", "")
        if value is None:
            assert shown in ("–", "n/a"), (path, shown)
        elif shown.endswith("%"):
            assert float(shown[:-1]) / 100 == pytest.approx(value, rel=0.02, abs=1e-4), path
        elif path.endswith("pvalue"):  # two significant digits
            assert float(shown) == pytest.approx(value, rel=0.05), path
        else:
            assert float(shown) == pytest.approx(value, abs=5e-4), path
    # The headline names the best attack at 1% FPR (LiRA), with the loss attack's CI in its row.
    assert next(m[0] for m in page.metrics if m[0].startswith("mia.")) == "mia.lira.tpr_at_fpr.0.01"
    assert "95% CI [2.0%, 11.0%]" in html
    assert "verdict-yes" in html


def test_hostile_text_is_escaped(rendered):
    html = rendered[1]
    assert SCRIPT not in html and IMG not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    page = Page(html)
    assert not [t for t, _ in page.tags if t in ("script", "iframe", "object", "embed", "link", "base", "form")]
    assert not [(t, k) for t, a in page.tags for k in a if k.startswith("on")]
    assert any(SCRIPT in chunk for chunk in page.text)  # shown to the reader, as text


def test_csp_and_no_external_resources(rendered):
    html = rendered[1]
    page = Page(html)
    metas = [a for t, a in page.tags if t == "meta" and (a.get("http-equiv") or "").lower() == "content-security-policy"]
    assert len(metas) == 1 and metas[0]["content"] == CSP
    for tag, a in page.tags:
        for attr in ("src", "href", "srcset", "action", "poster", "data"):
            if attr in a:
                v = a[attr] or ""
                assert v.startswith("data:image/png;base64,") or v.startswith("#"), (tag, attr, v[:60])
    lowered = html.lower()
    assert "http://" not in lowered and "https://" not in lowered
    assert "url(" not in lowered and "@import" not in lowered


def test_gallery_shows_the_training_images(rendered, audit):
    page = Page(rendered[1])
    train = np.load(audit.parent / "data" / "train.npz")["images"]
    decoded = [decode(a["src"]) for a in page.images("train")]
    for i in EXTRACTED_TRAIN:
        assert any(d.shape == train[i].shape and np.array_equal(d, train[i]) for d in decoded), i
    # Most exact first: p0-i0 (ℓ2 0.019) leads the gallery.
    pairs = [a["data-sample"] for t, a in page.tags if t == "figure" and "data-sample" in a]
    assert pairs == ["p0-i0", "p1-i0", "p1-i1"]
    # each pair names the prompt its generation came from (the store's prompts[P] of p<P>-i<I>), as text
    captions = CaptionPage(rendered[1]).captions
    assert captions[:3] == [SCRIPT, IMG, IMG]


def test_redact_removes_training_images(redacted, audit):
    path, html = redacted
    page = Page(html)
    assert page.images("train") == [] and page.images("inpaint") == []
    train = np.load(audit.parent / "data" / "train.npz")["images"]
    for a in page.images():
        img = decode(a["src"])
        for i in range(len(train)):
            assert not (img.shape == train[i].shape and np.array_equal(img, train[i])), i
    text = "".join(page.text)
    # training examples by their position, never by their key (a file name may name a person)
    for i in EXTRACTED_TRAIN:
        assert f"#{i}" in text and f"npz:{i}" not in html
    assert "#9" in text and "npz_9" not in html  # an inpainting grid, and its file name
    # prompts are captions of the training data: by their index
    assert CaptionPage(html).captions == [] and "prompt #0 (caption redacted)" in text
    assert "redacted" in text
    # the verified generations and clique members are copies (or candidates) of training images too
    assert page.images("generation") == [] and page.images() == page.images("plot")
    assert html.count('data-kind="generation-redacted"') >= 13
    for sample in ("p0-i0", "p1-i0", "p1-i1"):
        assert sample in text
    assert "no generation found to copy one" in text


def test_redact_hides_where_the_data_and_results_lie(redacted, rendered, audit):
    """A path names a ward, a cohort or a person: the redacted report shows none outside the audit folder
    (the data, here), and paths inside it within the folder, called AUDIT; the full report shows them."""
    html, full = redacted[1], rendered[1]
    data = str(audit.parent / "data" / "train.npz")
    assert data in full and str(audit.resolve()) in full
    assert str(audit.parent) not in html and str(audit.parent.resolve()) not in html
    text = visible_text(html)
    assert "dataset (path 1)" in text  # the header: the same label wherever that file is named
    assert text.count("(path 1)") >= 3 and "(path 2)" not in text
    assert "AUDIT/samples" in text  # extract's store, inside the audit folder
    assert "or URL as “(path N)”" in text and "labels the paths alike" in text
    # the folder's own name is the choice of whoever ran the audit (a person's, a ward's): not shown either
    assert f">{audit.name}<" not in html and f"{audit.name}/" not in html and "<title>diffaudit report: redacted</title>" in html
    assert "<h1>AUDIT (folder name hidden)</h1>" in html  # the heading says why it reads AUDIT


def test_the_summary_beside_a_redacted_report_labels_its_paths_as_the_report_does(audit, tmp_path, capsys):
    """`report --redact --out shared/report.html` wrote shared/summary.json with the data's and the audit's full
    paths (a ward's, a person's): the summary beside a redacted report now labels them as the report does."""
    out = tmp_path / "shared" / "report.html"
    assert _cli([str(audit), "--out", str(out), "--redact"]) == 0
    text = (out.parent / "summary.json").read_text(encoding="utf-8")
    summary = json.loads(text)
    assert summary["paths_redacted"] is True
    assert str(audit.parent) not in text and str(audit.parent.resolve()) not in text
    assert summary["dataset"]["spec"] == "(path 1)" and "(path 1)" in visible_text(out.read_text(encoding="utf-8"))
    assert "AUDIT/samples" in text  # inside the audit folder: shown within it, as in the report
    # the numbers are those of the full summary
    full = build_summary(audit)
    assert summary["extraction"]["unique_extracted"] == full["extraction"]["unique_extracted"]
    assert summary["mia"].keys() == full["mia"].keys()
    assert _cli([str(audit), "--out", str(out), "--no-redact"]) == 0
    summary = json.loads((out.parent / "summary.json").read_text(encoding="utf-8"))
    assert summary["paths_redacted"] is False and summary["dataset"]["spec"] == full["dataset"]["spec"]


def test_every_table_has_a_caption_and_scoped_headers(rendered):
    """A screen reader announces a table by its caption and reads each cell with its column's and row's
    headers: every table of a full report has one, and every header says what it heads."""
    page = Page(rendered[1])
    tags = [t for t, _ in page.tags]
    assert tags.count("table") >= 8 and tags.count("table") == tags.count("caption")
    headers = [a for t, a in page.tags if t == "th"]
    assert headers and all(a.get("scope") in ("col", "row") for a in headers)


def test_files_are_owner_only(rendered, redacted):
    assert stat.S_IMODE(os.stat(rendered[0]).st_mode) == 0o600
    assert rendered[0].name == "report.html" and rendered[0].parent.name == "audit"
    assert stat.S_IMODE(os.stat(redacted[0]).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(redacted[0].parent).st_mode) == 0o700


def test_single_command_folders(audit):
    html = render_report(audit / "verify", audit.parent / "v.html").read_text(encoding="utf-8")
    page = Page(html)
    assert "extracted" in page.ids() and "mia" not in page.ids() and "cliques" not in page.ids()
    assert len(page.images("train")) == 3 and len(page.images("generation")) == 3
    # a pair's alt texts say which image copies which and how closely (they named the image's id alone)
    for pair_gen, pair_train in zip(page.images("generation"), page.images("train")):
        gen_id, train_key = pair_gen["alt"].split()[1].rstrip(","), pair_train["alt"].split(",")[0].split()[-1]
        assert pair_gen["alt"].startswith(f"generation {gen_id}, which reproduces training image {train_key} at ℓ2 0.")
        assert pair_train["alt"] == f"training image {train_key}, reproduced by generation {gen_id}"
    s = build_summary(audit / "mia-lira")
    assert s["command"] == "mia" and s["extraction"] is None and set(s["mia"]) == {"lira"}
    page = Page(render_report(audit / "mia-loss", audit.parent / "m.html").read_text(encoding="utf-8"))
    assert "mia" in page.ids() and "extracted" not in page.ids()
    assert len(page.images("plot")) == 2  # ROC recomputed from scores.npz, and the sweep


def test_pair_caption_carries_duplicates(rendered):
    page = Page(rendered[1])
    text = " ".join("".join(page.text).split())
    assert "duplicated ×2 · copied by 10 generations" in text


def test_unconditional_cliques(audit, tmp_path):
    res = tmp_path / "extract-bb"
    groups = [{"group": 1, "component": 0, "component_size": 12, "size": 10, "members": [f"p0-i{i}" for i in range(10)],
               "member_indices": list(range(10)), "medoid": "p0-i4", "mean_distance": 0.02, "bound_hit": True, "truncated": False}]
    from diffaudit.store import samples_identity

    write_json_atomic(res / "result.json", _envelope("extract", {"samples": str(audit / "samples"), "mode": "unconditional",
                                                                 "samples_identity": samples_identity(str(audit / "samples")),
                                                                 "edge_threshold": 0.1, "min_clique": 10}, {"seed": 0},
                                                     mode="unconditional", n_samples=20, n_groups=1, groups=groups))
    html = render_report(res).read_text(encoding="utf-8")
    page = Page(html)
    assert "Cliques of near-identical generations" in html and "search bound hit" in html
    thumbs = [a for a in page.images("generation") if "thumb" in a.get("class", "")]
    assert len(thumbs) == 10 and "medoid" in thumbs[0]["class"] and thumbs[0]["alt"] == "generation p0-i4, the medoid"
    assert thumbs[1]["alt"].startswith("generation p0-") and "medoid" not in thumbs[1]["alt"]  # not by an outline alone
    s = build_summary(res)["extraction"]
    assert s["n_cliques"] == 1 and s["n_samples"] == 20 and s["unique_extracted"] is None


class CaptionPage(Page):
    """Also collects the text inside ``<span class="caption">``."""

    def __init__(self, text: str):
        self.captions: list[str] = []
        self._in_caption = False
        super().__init__(text)

    def handle_starttag(self, tag, attrs):
        super().handle_starttag(tag, attrs)
        if tag == "span" and dict(attrs).get("class") == "caption":
            self._in_caption = True
            self.captions.append("")

    def handle_endtag(self, tag):
        super().handle_endtag(tag)
        if tag == "span":
            self._in_caption = False

    def handle_data(self, data):
        super().handle_data(data)
        if self._in_caption:
            self.captions[-1] += data


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
       | st.sampled_from([SCRIPT, IMG, "</span></div><script>x</script>", "\" onmouseover=\"alert(1)", "' onload='x", "{{ 7*7 }}", "&lt;b&gt;"]))
def test_any_caption_round_trips_as_text(tmp_path, prompt):
    """Whatever a caption holds, the browser's parser reads it back as the same text, never as markup."""
    from diffaudit.report import render_html

    res = tmp_path / "extract"
    write_json_atomic(res / "result.json", _envelope("extract", {"samples": "none", "note": prompt}, {}, prompts=[
        {"prompt": prompt, "n_generations": 10, "largest_clique": 10, "members": ["p0-i0"], "medoid": "p0-i0",
         "mean_distance": 0.1, "flagged": True}]))
    page = CaptionPage(render_html(res))
    assert page.captions == [prompt]
    assert {t for t, _ in page.tags} <= {"html", "head", "meta", "title", "style", "body", "header", "div", "span", "h1", "h2",
                                         "h3", "p", "code", "main", "section", "nav", "a", "b", "em", "table", "thead",
                                         "tbody", "tr", "th", "td", "details", "summary", "footer", "figure", "figcaption",
                                         "dl", "dt", "dd", "caption"}
    assert not [(t, k) for t, a in page.tags for k in a if k.startswith("on")]


def test_missing_images_show_ids(tmp_path):
    res = tmp_path / "verify"
    write_json_atomic(res / "result.json", _envelope(
        "verify", {"data": str(tmp_path / "gone.npz"), "samples": str(tmp_path / "no-store")}, {},
        n_samples=5, rule="l2", unique_extracted=1, extracted=[{"sample": "p0-i0", "train_id": 4, "train_key": "npz:4", "l2": 0.1, "ratio": None, "eidetic_k": 1}]))
    page = Page(render_report(res).read_text(encoding="utf-8"))
    kinds = [a.get("data-kind") for _, a in page.tags]
    assert "train-missing" in kinds and "generation-missing" in kinds
    text = "".join(page.text)
    assert "npz:4" in text and "p0-i0" in text and "no false-positive baseline was run" in text
    assert build_summary(res)["extraction"]["baseline_unique_extracted"] is None


def test_audit_result_json_marks_an_audit_folder(tmp_path):
    """An audit folder may carry its own result.json (command "audit") instead of audit.json."""
    write_json_atomic(tmp_path / "result.json", _envelope("audit", {"data": "digits", "mia": "lira"}, {"seed": 7}))
    write_json_atomic(tmp_path / "mia" / "result.json", _envelope("mia", {"data": "digits"}, {"seed": 7}, attack="lira", auc=0.9,
                                                                  tpr_at_fpr={"0.01": 0.4, "0.001": 0.1}, n_members=10, n_nonmembers=10))
    s = build_summary(tmp_path)
    assert s["command"] == "audit" and s["settings"]["audit"]["mia"] == "lira" and s["seeds"]["audit"] == {"seed": 7}
    assert s["mia"]["lira"]["tpr_at_fpr"]["0.01"] == 0.4 and s["dataset"]["spec"] == "digits"
    assert s["extraction"] is None and s["inpainting"] is None and s["canaries"] is None
    page = Page(render_report(tmp_path).read_text(encoding="utf-8"))
    assert "mia" in page.ids() and "extracted" not in page.ids()
    assert any(p == "mia.lira.tpr_at_fpr.0.01" for p, _, _ in page.metrics)


def test_empty_folder_is_a_user_error(tmp_path):
    with pytest.raises(DiffauditError, match="no result.json"):
        build_summary(tmp_path)
    with pytest.raises(DiffauditError, match="missing does not exist"):
        render_report(tmp_path / "missing")


def _cli(argv: list[str], *, json_out: bool = False) -> int:
    """Run ``diffaudit report`` in-process the way cli.main does (parser from the module, --json global).

    cli.main itself imports every command (torch, diffusers: seconds); its registration of
    ``report`` is checked by name.
    """
    import argparse

    from diffaudit.cli import main as cli_main
    from diffaudit.cli import report

    assert report.NAME in cli_main.COMMANDS
    parser = argparse.ArgumentParser(prog="diffaudit report", description=report.DESCRIPTION)
    report.add_arguments(parser)
    args = parser.parse_args(argv)
    args.json, args.quiet, args.command = json_out, False, report.NAME
    return report.run(args)


def test_cli_report(audit, tmp_path, capsys):
    out = tmp_path / "out" / "audit.html"
    assert _cli([str(audit), "--out", str(out), "--redact"], json_out=True) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(out) and Path(printed["summary_file"]) == tmp_path / "out" / "audit.summary.json"
    # the envelope every command's JSON starts with
    assert (printed["command"], printed["settings"]) == ("report", {"result_dir": str(audit), "out": str(out), "redact": True})
    assert printed["schema_version"] == printed["summary"]["schema_version"] and "versions" in printed
    written, full = json.loads((tmp_path / "out" / "audit.summary.json").read_text()), build_summary(audit)
    assert written.pop("paths_redacted") is True and written.keys() == full.keys()  # redacted: its paths labelled
    assert (written["extraction"], written["mia"]) == (full["extraction"], full["mia"]) and written != full
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "out" / "audit.summary.json").st_mode) == 0o600
    assert not Page(out.read_text(encoding="utf-8")).images("train")
    with pytest.raises(DiffauditError, match="nothing-here does not exist"):  # cli.main prints it and exits 2
        _cli([str(tmp_path / "nothing-here")])
    # Default: report.html and summary.json inside the result folder, and a human line.
    assert _cli([str(audit / "verify")]) == 0
    assert "3 training images extracted from 20 generations (false-positive baseline: 1 among 1,000 never-seen images, p = 5.1e-06)" in capsys.readouterr().out
    assert (audit / "verify" / "report.html").exists() and (audit / "verify" / "summary.json").exists()


@pytest.mark.parametrize("existing", [True, False])
def test_cli_report_into_a_folder(audit, tmp_path, capsys, existing):
    """--out naming a folder (an existing one, or a path ending in /) gets report.html and summary.json inside
    it, never a file named like the folder nor a "free space" error from writing onto a folder."""
    folder = tmp_path / "reports"
    if existing:
        folder.mkdir()
    assert _cli([str(audit / "verify"), "--out", str(folder) if existing else f"{folder}/"], json_out=True) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["report"] == str(folder / "report.html") and printed["summary_file"] == str(folder / "summary.json")
    assert folder.is_dir() and (folder / "report.html").is_file() and (folder / "summary.json").is_file()


def test_cli_report_never_replaces_a_users_file(audit, tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("important")
    with pytest.raises(DiffauditError, match="notes.txt exists and is not a file diffaudit wrote"):
        _cli([str(audit / "verify"), "--out", str(notes)])
    assert notes.read_text() == "important" and not (tmp_path / "notes.summary.json").exists()
    (tmp_path / "r.summary.json").write_text('{"mine": 1}')  # the summary's place is the user's file
    with pytest.raises(DiffauditError, match="r.summary.json exists and is not a file diffaudit wrote"):
        _cli([str(audit / "verify"), "--out", str(tmp_path / "r.html")])
    assert not (tmp_path / "r.html").exists()
    # its own report and summary are rewritten, as every re-run does
    assert _cli([str(audit / "verify"), "--out", str(tmp_path / "v.html")]) == 0
    assert _cli([str(audit / "verify"), "--out", str(tmp_path / "v.html")]) == 0
    # nor another command's output folder: its own report and summary.json would be replaced
    from diffaudit.core.outdir import prepare_out_dir

    other, _ = prepare_out_dir(tmp_path / "dedup-out", "dedup", {})
    (other / "summary.json").write_text('{"schema_version": 1, "command": "dedup"}')
    with pytest.raises(DiffauditError, match=r"--out .*dedup-out/report.html lies in .*dedup-out, the output of `diffaudit "
                                             r"dedup`, where it would replace that folder's own report and summary.json"):
        _cli([str(audit / "verify"), "--out", str(other / "report.html")])
    assert not (other / "report.html").exists() and "dedup" in (other / "summary.json").read_text()


def _train_map_only_verify(root: Path, hits: list[bool]) -> Path:
    """A verify result where samples and --data differ in size: only the --train-map check ran."""
    checks = [{"prompt": f"p{i}", "sample": f"p{i}-i0", "train_id": i % 2, "train_key": f"npz:{i % 2}", "l2": 0.01 if h else 0.4,
               "extracted": h} for i, h in enumerate(hits)]
    write_json_atomic(root / "result.json", _envelope(
        "verify", {"data": "x.npz", "rule": "l2", "train_map": "map.json"}, {"seed": 0}, n_samples=500, n_samples_total=500,
        n_train=20, rule="l2", extracted=None, unique_extracted=None, n_extracting_samples=None, baseline_unique_extracted=None,
        note="samples and --data differ in size: only the --train-map crop-alignment check was run",
        prompt_checks=checks, prompt_checks_extracted=sum(hits)))
    return root


def test_train_map_only_verify_is_unknown_not_zero(tmp_path):
    """Unverified counts stay null; the --train-map check's count is shown; the verdict never says "no extraction"."""
    from diffaudit.report.view_extraction import verdict

    root = _train_map_only_verify(tmp_path / "hits", [True, True, True, False])
    ex = build_summary(root)["extraction"]
    assert ex["unique_extracted"] is None and ex["n_extracting_samples"] is None
    assert (ex["prompt_checks_extracted"], ex["prompt_checks_n"], ex["prompt_checks_unique_extracted"]) == (3, 4, 2)
    v = verdict(ex)
    assert v["level"] == "yes" and "3 of 4" in v["text"] and "--train-map" in v["text"]
    html = render_report(root).read_text(encoding="utf-8")
    assert "No training image was extracted" not in html
    metrics = {p: (json.loads(raw), text.strip()) for p, raw, text in Page(html).metrics}
    # the card's number is the check's distinct training images, not a dash for the search that did not run
    assert "extraction.unique_extracted" not in metrics
    assert metrics["extraction.prompt_checks_unique_extracted"] == (2, "2")
    assert metrics["extraction.prompt_checks_extracted"] == (3, "3")

    none = verdict(build_summary(_train_map_only_verify(tmp_path / "none", [False, False]))["extraction"])
    assert none["level"] == "no" and "--train-map" in none["text"] and "No training image was extracted" not in none["text"]


def test_canaries_without_extraction_are_not_zero_extracted(tmp_path):
    """`canaries --n-samples 0` skips extraction: n_extracted null, shown as a dash, not "0 extracted"."""
    cans = [{"key": f"canary/noise/{j:04d}", "kind": "noise", "repeats": r, "exposure": 3.0, "extracted": None,
             "nearest_l2": None} for j, r in enumerate([1, 2, 4, 4])]
    write_json_atomic(tmp_path / "result.json", _envelope("canaries", {"evaluation": {"n_samples": 0}}, {"seed": 0},
                                                          n_canaries=4, n_extracted=None, canaries=cans, curve=[]))
    s = build_summary(tmp_path)
    assert s["canaries"]["n_extracted"] is None
    assert [r["n_extracted"] for r in s["canaries"]["by_repeats"]] == [None, None, None]
    html = render_report(tmp_path).read_text(encoding="utf-8")
    metrics = {p: (json.loads(raw), text.strip()) for p, raw, text in Page(html).metrics}
    assert metrics["canaries.n_extracted"] == (None, "–")
    rows = html[html.index('<section id="canaries">'):]
    assert "None" not in rows and "0 / " not in rows and "not tested" in rows


def test_verdict_names_medoids_and_an_unequal_baseline(tmp_path):
    """verify --from-extract checks the flagged medoids only, and a smaller baseline finds fewer chance
    matches: the verdict says both, instead of "from 3 generations" and a bare comparison. 3 matches
    among 400 training images against 1 among 100 never-seen ones is the baseline's rate: unsure."""
    from diffaudit.report.view_extraction import verdict

    rows = [{"sample": f"p{i}-i0", "train_id": i, "train_key": f"npz:{i}", "l2": 0.02, "ratio": 0.1, "eidetic_k": 1}
            for i in range(3)]
    write_json_atomic(tmp_path / "result.json", _envelope(
        "verify", {"data": "x.npz", "rule": "ratio"}, {"seed": 0}, n_samples=3, n_samples_total=512, n_train=400,
        rule="ratio", extracted=rows, unique_extracted=3, n_extracting_samples=3, baseline_unique_extracted=1,
        baseline={"source": "b.npz", "n_images": 100, "equal_size": False, "extracted": rows[:1]}))
    v = verdict(build_summary(tmp_path)["extraction"])
    text = v["text"]
    assert "from the 3 flagged clique medoids of 512 generations" in text
    assert "weighs the 100 never-seen images against the 400 training images" in text
    assert v["level"] == "unsure" and "p = 0.82" in text  # P(X ≥ 3), X ~ Binomial(4, 400/500)


def test_data_spec_reads_every_recorded_form():
    """The loader options of --data as each command records them (flat, under data_options, nested
    under data.options as mia, shadows and inpaint write them)."""
    from diffaudit.report.images import data_spec

    want = ("cifar10", {"subset": 200, "image_size": 16})
    assert data_spec({"data": "cifar10", "subset": 200, "image_size": 16, "seed": 0}) == want
    assert data_spec({"data": "cifar10", "data_options": {"subset": 200, "image_size": 16, "mode": None}}) == want
    assert data_spec({"data": {"spec": "cifar10", "subset": 200, "image_size": 16}}) == want
    assert data_spec({"data": {"spec": "cifar10", "options": {"subset": 200, "image_size": 16}, "digest": "ab"}}) == want


def test_footer_says_which_images_the_file_holds(rendered, audit, tmp_path):
    def footer(folder: Path) -> str:
        html = render_report(folder, tmp_path / f"{folder.name}.html").read_text(encoding="utf-8")
        return " ".join(visible_text(html.split("<footer", 1)[1]).split())

    assert "holds training images and generations that copy them" in " ".join(visible_text(rendered[1].split("<footer", 1)[1]).split())
    assert "holds training images and generations that copy them" in footer(audit / "verify")
    assert "candidate copies of training images" in footer(audit / "extract")  # clique thumbnails, no training image
    mia_html = (tmp_path / "mia-loss.html")
    mia = footer(audit / "mia-loss")
    assert "This folder holds no extraction result" in visible_text(mia_html.read_text(encoding="utf-8"))
    assert "shows no training image and no generation" in mia and "share it" not in mia


def test_a_pair_shows_the_closest_generation_counted_for_its_training_image(tmp_path):
    """verify credits a training image to its first generation; the report shows the closest one counted
    (a pixel-exact copy beats a loose first match), and the summary's ℓ2 figures are of the closest too."""
    from diffaudit.report import build_summary, render_html

    res = tmp_path / "verify"
    write_json_atomic(res / "result.json", _envelope(
        "verify", {"data": str(tmp_path / "gone.npz"), "samples": str(tmp_path / "no-store")}, {},
        n_samples=20, n_train=12, rule="ratio", unique_extracted=1, extracted=[
            {"sample": "p0-i2", "train_id": 4, "train_key": "npz:4", "l2": 0.146, "ratio": 0.9, "eidetic_k": 1,
             "n_matching_samples": 8, "closest_sample": "p7-i1", "closest_l2": 0.0, "closest_ratio": 0.0,
             "closest_train_id": 4, "closest_train_key": "npz:4"}]))
    page = Page(render_html(res))
    assert [a["data-sample"] for t, a in page.tags if t == "figure" and "data-sample" in a] == ["p7-i1"]
    assert "0.146" not in "".join(page.text)
    assert build_summary(res)["extraction"]["extracted_l2_max"] == 0.0
    assert "(≤ 1 is extracted; the rule above gives how many)" in visible_text(render_html(res))
    # under the l2 rule the gallery's legend says that rule, and that the ratio shown is for reference only
    record = json.loads((res / "result.json").read_text())
    record.update(rule="l2", delta=0.1)
    write_json_atomic(res / "result.json", record)
    text = visible_text(render_html(res))
    assert "this verification's rule extracts at ℓ2 ≤ δ = 0.1" in text and "≤ 1 is extracted" not in text
    assert "shown for reference: the ratio rule, not run here, extracts at ≤ 1" in text


def test_a_folder_of_results_made_on_other_inputs_says_so(tmp_path):
    """Separate commands' results gathered in one folder may be of several models or datasets: the report
    says which stage used which, instead of naming one in its headline as if all were of it."""
    from diffaudit.report import build_summary, render_html

    root = tmp_path / "gathered"
    write_json_atomic(root / "ver" / "result.json", _envelope(
        "verify", {"data": "photos-<b>.tar", "rule": "l2"}, {}, n_samples=4, n_train=2, rule="l2", unique_extracted=0, extracted=[]))
    write_json_atomic(root / "mia1" / "result.json", _envelope(
        "mia", {"data": {"spec": "photos-2.tar", "options": {}}, "target": {"mode": "model", "index": None, "run": "sd-a"}},
        {}, attack="loss", auc=0.5, tpr_at_fpr={}, n_members=2, n_nonmembers=2))
    write_json_atomic(root / "gens" / "result.json", _envelope("sample", {"model": "sd-b"}, {}))
    mixed = build_summary(root)["mixed_inputs"]
    assert mixed == {"data": [{"input": "photos-2.tar", "stages": ["mia1"]}, {"input": "photos-<b>.tar", "stages": ["ver"]}],
                     "model": [{"input": "sd-b", "stages": ["gens"]}, {"input": "sd-a", "stages": ["mia1"]}]}
    page = Page(render_html(root))
    text = "".join(page.text)
    assert "These results were not all made on the same inputs" in text and "photos-<b>.tar (ver)" in text
    (root / "mia1" / "result.json").unlink()
    write_json_atomic(root / "mia1" / "result.json", _envelope(
        "mia", {"data": {"spec": "photos-<b>.tar", "options": {}}, "target": {"run": "sd-b"}}, {}, attack="loss", auc=0.5,
        tpr_at_fpr={}, n_members=2, n_nonmembers=2))
    assert build_summary(root)["mixed_inputs"] is None  # one dataset, one model: nothing to say


def test_a_folder_of_whole_audits_or_of_one_command_twice_is_refused(tmp_path, capsys):
    """A report shows one result of each command (membership attacks side by side): a folder holding two
    audits, or two training runs, would be reported as one study, its headline speaking for results it
    left out. It is refused, saying what to do; two membership attacks are still one report."""
    from diffaudit.cli.main import main
    from diffaudit.report import build_summary

    root = tmp_path / "runs"
    for name in ("a1", "a2"):
        write_json_atomic(root / name / "result.json", _envelope("audit", {"data": "digits"}))
    assert main(["report", str(root)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 audit folder(s) (a1, a2): report each" in err and not (root / "report.html").exists()
    gathered = tmp_path / "gathered"
    for name, steps in (("run1", 100), ("run1long", 150)):
        write_json_atomic(gathered / name / "result.json", _envelope("train", {"train": {"steps": steps}}, steps=steps))
    assert main(["report", str(gathered)]) == 2
    err = capsys.readouterr().err
    assert "holds 2 results of `train` (run1, run1long)" in err
    assert "a report shows one result of each command but `mia` (whose results it shows side by side)" in err
    (gathered / "run1long" / "result.json").unlink()
    for name, attack in (("mia-loss", "loss"), ("mia-lira", "lira")):
        write_json_atomic(gathered / name / "result.json", _envelope(
            "mia", {"data": {"spec": "digits", "options": {}}}, {}, attack=attack, auc=0.6, tpr_at_fpr={}, n_members=2,
            n_nonmembers=2))
    assert set(build_summary(gathered)["mia"]) == {"loss", "lira"}


@pytest.mark.parametrize("command", ["sample", "export", "prompts", "membership"])
def test_a_folder_that_measures_nothing_is_refused_saying_what_it_holds(tmp_path, capsys, command):
    """A sample store, exported PNGs, a prompt list, a membership matrix: their report was a page of settings
    under a headline saying the folder's own results follow (and a sample store got report.html written into it)."""
    from diffaudit.cli.main import main

    folder = tmp_path / command
    write_json_atomic(folder / "result.json", _envelope(command, {}, {}))
    assert main(["report", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"holds the output of `diffaudit {command}`, which measures nothing for a report to show: " in err
    assert not (folder / "report.html").exists() and not (folder / "summary.json").exists()


def test_a_pooled_leave_one_out_attack_says_how_its_rows_were_made(tmp_path):
    """128 members / 128 non-members of 4 leave-one-out targets on 64 examples read as 256 examples, and lira with
    1 shadow a side silently took the pooled variance: the table says both."""
    from diffaudit.report import render_html

    write_json_atomic(tmp_path / "mia" / "result.json", _envelope(
        "mia", {"data": {"spec": "digits", "options": {}}}, {}, attack="lira", auc=0.74, tpr_at_fpr={"0.01": None},
        n_members=128, n_nonmembers=128, n_models=4, n_examples=64, shadows_per_side=1,
        target={"mode": "leave-one-out", "index": None, "run": None}))
    text = visible_text(render_html(tmp_path / "mia"))
    assert "(model, example) rows: 4 models each the target in turn (leave-one-out), 64 examples" in text
    assert "lira fits a variance per example only from 2 or more shadows a side; here some examples have as few " \
           "as 1 a side" in text
    record = json.loads((tmp_path / "mia" / "result.json").read_text())
    # 4 balanced models, leave-one-out: every example has 1 a side, and lira's scores are lira-fixed's
    write_json_atomic(tmp_path / "mia" / "result.json", {**record, "shadows_per_side_max": 1})
    text = visible_text(render_html(tmp_path / "mia"))
    assert ("here every example has 1 a side, so every one takes the pooled variance of the -fixed variant, and these "
            "are that variant's scores, not a per-example fit") in text and "some examples" not in text
    record.update(attack="lira-fixed", target={"mode": "model", "run": "run"}, shadows_per_side=None)
    write_json_atomic(tmp_path / "mia" / "result.json", record)
    text = visible_text(render_html(tmp_path / "mia"))
    assert "(model, example) rows" not in text and "fits a variance per example" not in text


def test_a_redacted_report_stays_redacted_unless_no_redact_is_asked(audit, tmp_path, capsys):
    """`diffaudit report DIR` over a redacted report wrote the training images back without a word: an
    unasked --redact now follows the report written over (and says so); --no-redact shows the images."""
    out = tmp_path / "shared" / "report.html"
    assert _cli([str(audit), "--out", str(out), "--redact"]) == 0
    assert _cli([str(audit), "--out", str(out)]) == 0
    assert "report: redacted, as the report it replaces" in capsys.readouterr().err
    page = out.read_text(encoding="utf-8")
    assert '<meta name="diffaudit-redacted" content="true">' in page and not Page(page).images("train")
    assert _cli([str(audit), "--out", str(out), "--no-redact"]) == 0
    page = out.read_text(encoding="utf-8")
    assert "diffaudit-redacted" not in page and Page(page).images("train")
    assert _cli([str(audit), "--out", str(out)]) == 0 and "redacted" not in capsys.readouterr().err


def test_non_members_from_another_folder_are_said_to_be_so(tmp_path):
    """With --heldout the non-members come from a set apart from the training data: an attack may tell the two
    sets apart (another scanner, another year) rather than members, and the report says so where it reads."""
    from diffaudit.report import render_html

    audit = make_audit(tmp_path)
    assert 'data-kind="mia-heldout"' not in render_html(audit)
    recorded = json.loads((audit / "audit.json").read_text())
    recorded["settings"]["heldout"] = str(tmp_path / "held")
    write_json_atomic(audit / "audit.json", recorded)
    text = visible_text(render_html(audit))
    assert ("The non-members are the images of --heldout, a set apart from the training data (the false-positive "
            "baseline's never-seen images too): if the two sets differ in how they were made") in text


def test_summary_json_carries_the_reports_two_verdicts(audit, rendered):
    """A release gate read the answer only from the HTML's data-verdict attributes, or derived it again from
    the numbers: summary.json now holds the report's two verdicts, level and sentence, as the page shows them."""
    verdicts = build_summary(audit)["verdicts"]
    page = Page(rendered[1])
    shown = {a["data-verdict"] for _, a in page.tags if "data-verdict" in a}
    membership = {a["data-membership-verdict"] for _, a in page.tags if "data-membership-verdict" in a}
    assert shown == {verdicts["extraction"]["level"]} == {"yes"}
    assert membership == {verdicts["membership"]["level"]}
    text = visible_text(rendered[1])
    assert verdicts["extraction"]["text"] in text and verdicts["membership"]["text"] in text
    json.dumps(verdicts, allow_nan=False)
