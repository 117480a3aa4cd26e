"""The report names the dedup embedder in words, not as a raw Python dict
(``embedder {'name': 'pixel', 'size': 8, ...}``), for any embedder's recorded settings."""

from __future__ import annotations

from html import unescape

import pytest

from diffaudit.core.io import write_json_atomic
from diffaudit.report import build_summary, render_html
from diffaudit.report.summary import describe_embedder
from test_report import Page, _envelope

PIXEL = {"name": "pixel", "size": 8, "color": "ycc", "max_shift": 2}


@pytest.mark.parametrize("settings, words", [
    (PIXEL, "pixel (8 px, ycc, shifts up to 2)"),
    ({"name": "phash", "hash_size": 8, "highfreq_factor": 4, "max_shift": 0}, "phash (8x8 hash, highfreq factor 4, no shifts)"),
    ({"name": "clip", "model": "/models/clip", "dim": 512}, "clip (model /models/clip, 512-d)"),
    ({"name": "future", "patch_grid": 3}, "future (patch grid 3)"),  # a setting with no phrase of its own
    ({"name": "pixel"}, "pixel"),
    ("pixel", "pixel"),  # older results recorded the name alone
    (None, None),
])
def test_embedder_settings_in_words(settings, words):
    assert describe_embedder(settings) == words


def test_report_shows_the_embedder_in_words(tmp_path):
    folder = tmp_path / "dedup"
    write_json_atomic(folder / "result.json", _envelope(
        "dedup", {"data": "digits", "embedder": PIXEL}, {"seed": 0}, embedder=PIXEL,
        groups=[{"members": [2, 3], "keys": ["digits:2", "digits:3"]}]))
    s = build_summary(folder)["dedup"]
    assert s["embedder"] == PIXEL and s["embedder_text"] == "pixel (8 px, ycc, shifts up to 2)"
    page = Page(render_html(folder))
    text = " ".join(unescape("".join(page.text)).split())
    assert "(embedder pixel (8 px, ycc, shifts up to 2))" in text
    assert "{'name'" not in text


def test_report_shows_the_threshold_and_the_images_searched(tmp_path):
    """The section says at which similarity two images were joined and among how many: a group count
    means nothing without them (at 0.9 far more pairs join than at 0.99)."""
    folder = tmp_path / "dedup"
    write_json_atomic(folder / "result.json", _envelope(
        "dedup", {"data": "digits", "embedder": PIXEL, "threshold": 0.97}, {"seed": 0}, embedder=PIXEL, threshold=0.97,
        n_images=1797, groups=[{"members": [2, 3], "keys": ["digits:2", "digits:3"]}]))
    s = build_summary(folder)["dedup"]
    assert s["threshold"] == 0.97 and s["n_images"] == 1797
    text = " ".join(unescape("".join(Page(render_html(folder)).text)).split())
    assert ("Near-duplicate groups among the 1,797 training images (embedder pixel (8 px, ycc, shifts up to 2), pairs at "
            "similarity 0.97 or more joined, 1 = identical): duplicated images") in text
