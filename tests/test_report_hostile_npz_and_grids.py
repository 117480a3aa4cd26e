"""Files of a received result folder that the report decodes: ``.npz`` arrays and inpainting grids.

An ``.npz`` array is read only after the size its header declares is checked against the data the file
holds (:func:`diffaudit.core.npz_arrays.read_npz_array`): a few bytes declaring terabytes leave the file
out like an unreadable one (a membership scores file, an ``.npz`` of generations), never a MemoryError
traceback. An inpainting grid is decoded as :func:`diffaudit.data.images.decode_image` decodes any image
(PNG, JPEG, BMP, WebP, TIFF only, its pixel cap checked from the header): a GIF or an EPS under a
``.png`` name, or a small file declaring more pixels than the cap, shows as its name.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from diffaudit.cli.main import main
from diffaudit.core.io import write_json_atomic
from diffaudit.report import render_html
from test_report import Page, _envelope, visible_text


def _kinds(html: str) -> list[str]:
    return [a.get("data-kind") for _, a in Page(html).tags if a.get("data-kind")]


def _npz_declaring_terabytes(path: Path, arrays: dict[str, np.ndarray], huge: str, descr: str = "<f8") -> Path:
    """An .npz of ``arrays`` plus array ``huge``, whose header declares 10^13 values over 8 bytes of data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=False)
            z.writestr(name + ".npy", buf.getvalue())
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": (10**13,)})
        z.writestr(huge + ".npy", buf.getvalue() + b"\0" * 8)
    return path


def _reports(folder: Path, out: Path, capsys) -> str:
    """``diffaudit report folder`` ends normally (status 0, no traceback); the report's HTML."""
    assert main(["report", str(folder), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "MemoryError" not in err, err
    return out.read_text(encoding="utf-8")


def test_a_scores_file_declaring_terabytes_is_left_out(tmp_path, capsys):
    res = tmp_path / "mia"
    write_json_atomic(res / "result.json", _envelope("mia", {"attack": "loss"}, {}, attack="loss", auc=0.6,
                                                     tpr_at_fpr={"0.01": 0.02}, n_members=10, n_nonmembers=10))
    _npz_declaring_terabytes(res / "scores.npz", {"member": np.r_[np.ones(10, bool), np.zeros(10, bool)]}, "scores")
    html = _reports(res, tmp_path / "report.html", capsys)
    assert "No ROC points or scores file recorded for: loss" in visible_text(html)


def test_generations_in_an_npz_declaring_terabytes_show_by_id(tmp_path, capsys):
    """A verify result whose --samples is an .npz in its folder, its ``images`` declaring terabytes: the
    loader refuses it and the report's own .npz reader leaves it out too, so the pair shows by id."""
    res = tmp_path / "verify"
    write_json_atomic(res / "result.json", _envelope(
        "verify", {"rule": "l2", "delta": 0.15, "samples": "samples.npz"}, {"seed": 0}, n_samples=2, n_train=1,
        rule="l2", unique_extracted=1,
        extracted=[{"sample": "npz:0", "train_id": 0, "train_key": "k", "l2": 0.003, "ratio": 0.01, "eidetic_k": 1}]))
    _npz_declaring_terabytes(res / "samples.npz", {}, "images", descr="|u1")
    html = _reports(res, tmp_path / "report.html", capsys)
    assert "generation-missing" in _kinds(html) and "generation" not in _kinds(html)


def _inpaint(folder: Path, grids: dict[str, bytes]) -> Path:
    """An inpaint result with one target per grid file (``grids/<id>.png``, holding the given bytes)."""
    (folder / "grids").mkdir(parents=True)
    targets = []
    for i, (tid, data) in enumerate(grids.items()):
        (folder / "grids" / f"{tid}.png").write_bytes(data)
        targets.append({"id": tid, "member": i % 2 == 0, "best_l2": 0.1, "mean_topk_l2": 0.1, "grid": f"grids/{tid}.png"})
    write_json_atomic(folder / "result.json", _envelope("inpaint", {"mask": "left", "top_k": 1}, {"seed": 0},
                                                        targets=targets, top_k=1))
    return folder


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def test_grids_only_in_the_formats_images_are_decoded_in_are_embedded(tmp_path):
    """A PNG grid is embedded; a GIF and an EPS named .png (Pillow would open both, the EPS through
    Ghostscript where installed) show as their names."""
    pixels = np.arange(8 * 24 * 3, dtype=np.uint8).reshape(8, 24, 3)
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    res = _inpaint(tmp_path / "inpaint", {"png": _encoded(Image.fromarray(pixels), "PNG"),
                                          "gif": _encoded(Image.fromarray(pixels), "GIF"), "eps": eps})
    html = render_html(res)
    shown = {a["alt"] for a in Page(html).images("inpaint")}
    assert shown == {"inpainting grid png"}
    assert _kinds(html).count("inpaint-missing") == 2


def test_a_grid_declaring_more_pixels_than_the_cap_is_not_decoded(tmp_path):
    """8200 x 8200 flat pixels in a small PNG (past decode_image's cap for a file compressed this far)."""
    from diffaudit.data.images import MAX_IMAGE_PIXELS

    assert 8200 * 8200 > MAX_IMAGE_PIXELS
    big = _encoded(Image.new("L", (8200, 8200)), "PNG")
    res = _inpaint(tmp_path / "inpaint", {"big": big, "small": _encoded(Image.new("L", (24, 8), 90), "PNG")})
    html = render_html(res)
    assert {a["alt"] for a in Page(html).images("inpaint")} == {"inpainting grid small"}
    assert "inpaint-missing" in _kinds(html)
