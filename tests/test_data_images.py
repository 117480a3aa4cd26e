"""Image decoding through load_dataset: modes, 16-bit scaling, corrupt and truncated files, skip_bad."""

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.images import BadImageError, decode_image

RNG = np.random.default_rng(1234)
RGB = RNG.integers(0, 256, (6, 6, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, (6, 6), dtype=np.uint8)


def png16_rgb(values: np.ndarray, colour_type: int = 2) -> bytes:
    """A 16-bit-per-channel PNG written by hand (Pillow cannot write one). values: uint16 (H, W, C),
    C = 3 for colour type 2 (RGB), 2 for colour type 4 (grey + alpha)."""
    h, w, _ = values.shape
    raw = b"".join(b"\x00" + values[r].astype(">u2").tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_gray_and_rgb_modes(write_images):
    root = write_images({"g.png": GRAY})
    ds = load_dataset(root)
    assert ds.images.shape == (1, 6, 6, 1)
    np.testing.assert_array_equal(ds.images[0, :, :, 0], GRAY)
    root = write_images({"c.png": RGB}, root=root.parent / "rgb")
    np.testing.assert_array_equal(load_dataset(root).images[0], RGB)


def test_rgba_drops_alpha_and_palette_becomes_rgb(encode_image):
    rgba = np.dstack([RGB, np.zeros((6, 6), np.uint8)])  # fully transparent: colours kept as stored
    np.testing.assert_array_equal(decode_image(encode_image(rgba), "a.png"), RGB)
    pal = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    out = decode_image(encode_image(pal), "p.png")
    assert out.shape == (6, 6, 3)
    np.testing.assert_array_equal(out, np.asarray(pal.convert("RGB")))
    la = Image.fromarray(GRAY).convert("LA")
    np.testing.assert_array_equal(decode_image(encode_image(la), "la.png")[:, :, 0], GRAY)


def test_16bit_gray_png_scales_by_1_over_257_not_clipped(write_images):
    values = np.array([[65535, 257 * 100, 0], [257, 200, 65280]], dtype=np.uint16)
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    ds = load_dataset(write_images({"deep.png": img}))
    got = ds.images[0, :, :, 0]
    # 65535 -> 255 and 257*100 -> 100 (a clip would give 255); 200 -> 1 and 65280 -> 254 (v >> 8 gives 0, 255)
    np.testing.assert_array_equal(got, [[255, 100, 0], [1, 1, 254]])
    assert got[0, 0] == 255 and got[0, 1] == 100


def test_16bit_tiff_and_out_of_range_int32(encode_image):
    values = np.array([[65535, 25700]], dtype=np.uint16)
    np.testing.assert_array_equal(decode_image(encode_image(Image.fromarray(values), "TIFF"), "d.tif")[0, :, 0], [255, 100])
    bad = Image.fromarray(np.array([[70000, 1]], dtype=np.int32))
    assert bad.mode == "I"
    with pytest.raises(BadImageError, match=r"i32\.tif.*outside the 16-bit range"):
        decode_image(encode_image(bad, "TIFF"), "i32.tif")


def test_16bit_rgb_png_high_byte():
    values = np.zeros((2, 2, 3), np.uint16)
    values[0, 0] = [65535, 257 * 100, 0]
    out = decode_image(png16_rgb(values), "rgb16.png")
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, 0], [255, 100, 0])


def test_16bit_grey_alpha_png_stays_grayscale():
    values = np.zeros((2, 2, 2), np.uint16)
    values[..., 0] = [[65535, 257 * 100], [0, 257 * 7]]
    values[..., 1] = 65535  # alpha, dropped
    out = decode_image(png16_rgb(values, colour_type=4), "la16.png")
    assert out.shape == (2, 2, 1)  # Pillow opens it as RGBA; it is grey, C = 1
    np.testing.assert_array_equal(out[..., 0], [[255, 100], [0, 7]])


def test_only_the_listed_formats_are_decoded():
    """A file named .png holding PostScript must not reach Pillow's EPS plugin (which runs Ghostscript)."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 2 2\nshowpage\n"
    with pytest.raises(BadImageError, match="not a recognised image format"):
        decode_image(eps, "x.png")
    gif = io.BytesIO()
    Image.fromarray(RGB).save(gif, format="GIF")
    with pytest.raises(BadImageError, match="not a recognised image format"):
        decode_image(gif.getvalue(), "y.png")


def test_float_mode_refused(encode_image):
    img = Image.fromarray(np.ones((3, 3), np.float32))
    with pytest.raises(BadImageError, match=r"f\.tif.*unsupported image mode 'F'"):
        decode_image(encode_image(img, "TIFF"), "f.tif")


def test_mixed_channels_become_rgb_unless_mode(write_images):
    root = write_images({"a.png": GRAY, "b.png": RGB})
    ds = load_dataset(root)
    assert ds.images.shape == (2, 6, 6, 3)
    np.testing.assert_array_equal(ds.images[0], np.repeat(GRAY[:, :, None], 3, axis=2))
    gray = load_dataset(root, mode="L")
    assert gray.images.shape == (2, 6, 6, 1)
    # RGB -> L is bit-identical to Pillow's convert("L")
    np.testing.assert_array_equal(gray.images[1, :, :, 0], np.asarray(Image.fromarray(RGB).convert("L")))
    assert load_dataset(root, mode="RGB").images.shape == (2, 6, 6, 3)
    with pytest.raises(DiffauditError, match="mode must be one of"):
        load_dataset(root, mode="CMYK")


@pytest.mark.parametrize("fmt,ext", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_image_names_the_file(write_images, encode_image, fmt, ext):
    data = encode_image(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8), fmt)
    root = write_images({f"ok.{ext}": RGB, f"cut.{ext}": data[: len(data) // 2]})
    with pytest.raises(DiffauditError, match=rf"cut\.{ext}.*(truncated|corrupt).*--skip-bad"):
        load_dataset(root)


def test_corrupt_files_error_or_counted_skips(write_images, capsys):
    root = write_images({"a.png": RGB, "b.png": b"not an image at all", "c.jpg": b"\xff\xd8\xff garbage", "d.png": RGB})
    with pytest.raises(DiffauditError, match=r"b\.png: not a recognised image format"):
        load_dataset(root)
    capsys.readouterr()
    ds = load_dataset(root, skip_bad=True)
    assert ds.keys == ["a.png", "d.png"]
    assert [name.rsplit("/", 1)[-1] for name, _ in ds.skipped] == ["b.png", "c.jpg"]
    assert all(reason for _, reason in ds.skipped)
    err = capsys.readouterr().err  # said, not only recorded: once per process
    assert ": --skip-bad skipped 2 bad inputs (first: " in err and "b.png: not a recognised image format" in err
    assert err.rstrip().endswith("; 2 images loaded")
    load_dataset(root, skip_bad=True)
    assert "skipped" not in capsys.readouterr().err


def test_all_bad_is_an_error_even_with_skip_bad(write_images):
    root = write_images({"x.png": b"junk"})
    with pytest.raises(DiffauditError, match=r"no readable images \(1 skipped, first: .*x\.png"):
        load_dataset(root, skip_bad=True)


def test_the_skipped_inputs_are_listed_in_the_results_and_the_report(write_images, tmp_path, capsys):
    """Which images a result never looked at is part of the result: `verify --skip-bad` lists them in its
    result.json, the report names them (and only counts them when redacted)."""
    from diffaudit.cli.main import main

    rgb = [RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(6)]
    root = write_images({**{f"{i}.png": img for i, img in enumerate(rgb)}, "bad <b>.png": b"junk"})
    np.savez(tmp_path / "gens.npz", images=np.stack(rgb[:3]))
    assert main(["--quiet", "verify", "--samples", str(tmp_path / "gens.npz"), "--data", str(root), "--skip-bad",
                 "--out", str(tmp_path / "v")]) == 0
    result = json.loads((tmp_path / "v" / "result.json").read_text())
    assert result["skipped_inputs_total"] == 1
    [entry] = result["skipped_inputs"]
    assert entry["name"].endswith("bad <b>.png") and "not a recognised image format" in entry["reason"]
    assert main(["--quiet", "report", str(tmp_path / "v")]) == 0
    html = (tmp_path / "v" / "report.html").read_text()
    assert "--skip-bad skipped 1 bad input (unreadable, or missing a part such as its caption), which no result here looked at: <code>" in html
    assert "bad &lt;b&gt;.png</code>" in html
    # summary.json counts them and names none: it holds no file name of the data (README), the result files do
    summary_text = (tmp_path / "v" / "summary.json").read_text()
    assert json.loads(summary_text)["skipped_inputs"] == {"n": 1} and "bad <b>" not in summary_text
    assert main(["--quiet", "report", str(tmp_path / "v"), "--redact", "--out", str(tmp_path / "r.html")]) == 0
    redacted = (tmp_path / "r.html").read_text()
    assert "1 bad input (unreadable, or missing a part such as its caption), which no result here looked at (named in the stages' result.json files)" in redacted
    assert "bad &lt;b&gt;" not in redacted
    # nothing skipped: nothing listed
    assert main(["--quiet", "verify", "--samples", str(tmp_path / "gens.npz"), "--data", str(tmp_path / "gens.npz"),
                 "--out", str(tmp_path / "v2")]) == 0
    assert "skipped_inputs" not in json.loads((tmp_path / "v2" / "result.json").read_text())


def test_a_text_file_beside_each_image_is_its_caption(write_images, tmp_path):
    """beach.png + beach.txt: the folder form of a WebDataset sample's caption. Once one image has a caption,
    one without is a bad input (an error, or skipped with --skip-bad); other .txt files stay ignored."""
    root = write_images({"beach.png": RGB, "Zoë café.png": RGB, "sub/x.png": RGB}, tmp_path / "flat")
    (root / "sub" / "x.png").unlink()
    (root / "sub").rmdir()
    assert load_dataset(root).captions is None  # no caption file: none
    (root / "beach.txt").write_text("  a photo at the <b>beach</b> & sea\n", encoding="utf-8")
    (root / "notes.txt").write_text("not a caption: no image named notes", encoding="utf-8")
    with pytest.raises(DiffauditError, match=r"Zoë café\.png: no caption file Zoë café\.txt beside it, while other images"):
        load_dataset(root)
    (root / "Zoë café.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DiffauditError, match=r"its caption file Zoë café\.txt is not UTF-8"):
        load_dataset(root)
    ds = load_dataset(root, skip_bad=True)
    assert ds.keys == ["beach.png"] and ds.captions == ["a photo at the <b>beach</b> & sea"]
    (root / "Zoë café.txt").write_text("un café", encoding="utf-8")
    ds = load_dataset(root)
    assert ds.keys == ["Zoë café.png", "beach.png"] and ds.captions == ["un café", "a photo at the <b>beach</b> & sea"]


def test_an_input_skipped_by_two_stages_that_spelled_the_data_differently_is_counted_once():
    """An audit's train stage loads `--data corrupt`, its verify stage the recorded `/home/u/corrupt`: the same
    3 skipped files are 3, not 6 (the report said "skipped 6 bad inputs")."""
    from pathlib import Path

    from diffaudit.report.results import ResultSet, Stage
    from diffaudit.report.summary import _skipped_inputs

    def skipped(source):
        entries = [{"source": source, "name": f"{source}/{n}", "reason": "bad"} for n in ("a.png", "b.png", "sub/c.png")]
        return {"skipped_inputs": entries, "skipped_inputs_total": 3}

    rs = ResultSet(root=Path("/x"), command="audit", stages=[Stage("train", "train", Path("/x/train"), skipped("corrupt")),
                                                            Stage("verify", "verify", Path("/x/verify"), skipped("/home/u/corrupt"))])
    found = _skipped_inputs(rs)
    assert found["n"] == 3 and [e["name"] for e in found["listed"]] == ["corrupt/a.png", "corrupt/b.png", "corrupt/sub/c.png"]
    other = ResultSet(root=Path("/x"), command="audit", stages=[Stage("t", "train", Path("/x/t"), skipped("corrupt")),
                                                               Stage("h", "verify", Path("/x/h"), skipped("/data/heldout"))])
    assert _skipped_inputs(other)["n"] == 6  # two datasets' files stay apart


def test_skipped_inputs_are_said_once_however_the_folder_is_named(write_images, capsys, monkeypatch):
    # an audit loads --data as given, and its stages load it by its absolute path: one line, not two
    root = write_images({"a.png": RGB, "bad.png": b"not an image", "d.png": RGB}, None)
    monkeypatch.chdir(root.parent)
    load_dataset(root.name, skip_bad=True)
    assert "--skip-bad skipped 1 bad input" in capsys.readouterr().err
    load_dataset(str(root.resolve()), skip_bad=True)
    assert "skipped" not in capsys.readouterr().err


def test_a_subset_that_meets_bad_inputs_says_it_holds_fewer_than_asked(write_images, capsys):
    """--subset 4 of a folder with a corrupt file among those chosen loaded 3 images, saying only "3 images loaded":
    it now says they are of the 4 --subset chose, and that the subset is not topped up."""
    root = write_images({"a.png": RGB, "b.png": b"not an image at all", "c.png": RGB, "d.png": RGB})
    capsys.readouterr()
    ds = load_dataset(root, skip_bad=True, subset=4)
    assert len(ds) == 3
    assert capsys.readouterr().err.rstrip().endswith("; 3 images loaded of the 4 --subset chose (not topped up, so the "
                                                     "seed's choice stays the same)")
