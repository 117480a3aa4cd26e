"""Render the report in headless Chromium and check the screenshot (issue 7, part 4; slow).

Run with ``pytest -m slow tests/test_report_browser.py``. Set ``DIFFAUDIT_SCREENSHOT_DIR`` to keep
the PNGs (report.png, report-redacted.png) for a person to look at.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffaudit.report import render_report

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 1280, 2400
VERDICT_BG = (253, 236, 234)  # --yes-bg in report.css
HEADER_BG = (29, 35, 48)  # .top background


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path) -> np.ndarray:
    exe = _chromium()
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}",
               f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert png.exists(), f"chromium wrote no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    keep = os.environ.get("DIFFAUDIT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(png, Path(keep) / png.name)
    return np.asarray(Image.open(png).convert("RGB"))


def _share(img: np.ndarray, colour: tuple[int, int, int], rows: slice = slice(None)) -> float:
    return float(np.mean(np.all(np.abs(img[rows].astype(int) - colour) <= 2, axis=-1)))


def test_report_renders_in_chromium(tmp_path):
    from test_report import make_audit

    audit = make_audit(tmp_path)
    img = screenshot(render_report(audit), tmp_path / "report.png")
    assert img.shape == (HEIGHT, WIDTH, 3)
    # The inline stylesheet applied under the CSP: dark header band, red "yes" verdict box near the top.
    assert _share(img, HEADER_BG, slice(0, 60)) > 0.8
    assert _share(img, VERDICT_BG, slice(0, 400)) > 0.03
    # The extracted training images are on screen pixel for pixel (image-rendering: pixelated keeps
    # their exact colours); a training image that was not extracted is not.
    train = np.load(audit.parent / "data" / "train.npz")["images"]
    assert [round(_colours_shown(img, train[i]), 2) for i in (2, 5, 7, 0)] == [1.0, 1.0, 1.0, 0.0]

    redacted = screenshot(render_report(audit, tmp_path / "report-redacted.html", redact=True), tmp_path / "report-redacted.png")
    assert redacted.shape == img.shape
    assert max(_colours_shown(redacted, train[i]) for i in (2, 5, 7)) < 0.1
    assert _share(redacted, VERDICT_BG, slice(0, 400)) > 0.03


def _colours_shown(screen: np.ndarray, image: np.ndarray) -> float:
    """Fraction of ``image``'s distinct colours that occur exactly somewhere on ``screen``."""
    shown = set(map(tuple, screen.reshape(-1, 3)))
    wanted = set(map(tuple, image.reshape(-1, 3)))
    return len(wanted & shown) / len(wanted)
