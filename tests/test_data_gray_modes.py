"""Grayscale scans stored in colour modes, and 12-bit scans stored in 16 bits.

- A folder of grayscale images (L, 16-bit) with one palette or RGBA file whose colours are all gray
  (R = G = B) loads as C = 1 when C is inferred; one truly coloured file still makes it RGB. A
  dataset stored in colour modes only keeps C = 3. In memory and from a --data-cache decode alike.
- 16-bit images that all fit in 12 bits (values <= 4095) read at value/257, nearly black: one
  warning per load says so; full-range 16-bit images get none.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffaudit.data import load_dataset
from diffaudit.data.decoded import load_dataset_to_disk

RNG = np.random.default_rng(77)


def gray_images(n: int = 6, side: int = 8) -> dict[str, np.ndarray]:
    """``n`` grayscale (mode L) images, uint8 (side, side)."""
    return {f"scan{i:02d}.png": RNG.integers(0, 256, (side, side), dtype=np.uint8) for i in range(n)}


def gray_palette(side: int = 8) -> tuple[Image.Image, np.ndarray]:
    """A palette (mode P) image whose colours are all gray, and its pixels uint8 (side, side)."""
    levels = np.array([0, 40, 90, 130, 200, 255], np.uint8)
    gray = levels[RNG.integers(0, len(levels), (side, side))]
    pal = Image.fromarray(np.dstack([gray] * 3)).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    assert pal.mode == "P"
    rgb = np.asarray(pal.convert("RGB"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()
    return pal, rgb[..., 0]


def assert_cached_equal(root, tmp_path, **options):
    """The in-memory load and a --data-cache decode (in parts of 2 images) give identical arrays."""
    want = load_dataset(root, **options)
    got = load_dataset_to_disk(root, tmp_path / "cache", part_bytes=8 * 8 * 3 * 2, **options)
    assert want.keys == got.keys
    np.testing.assert_array_equal(want.images, np.asarray(got.images))
    return want


def test_gray_folder_with_one_gray_palette_image_stays_one_channel(write_images, tmp_path):
    files = gray_images()
    pal, pal_gray = gray_palette()
    root = write_images({**files, "scan03b.png": pal})  # among the others, not first or last
    ds = assert_cached_equal(root, tmp_path)
    assert ds.images.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(ds.images[ds.keys.index("scan03b.png"), :, :, 0], pal_gray)
    np.testing.assert_array_equal(ds.images[ds.keys.index("scan00.png"), :, :, 0], files["scan00.png"])
    # a mode given converts as before: RGB copies the gray values, L keeps them
    assert load_dataset(root, mode="RGB").images.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(load_dataset(root, mode="L").images, ds.images)


@pytest.mark.parametrize("alpha", [255, "varied"])
def test_gray_folder_with_one_gray_rgba_image_stays_one_channel(write_images, tmp_path, alpha):
    """An opaque alpha carries nothing; a non-opaque one is dropped as before (not composited), so the
    stored gray decides."""
    files = gray_images()
    g = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    a = np.full((8, 8), 255, np.uint8) if alpha == 255 else RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    root = write_images({**files, "scan99.png": Image.fromarray(np.dstack([g, g, g, a]), "RGBA")})
    ds = assert_cached_equal(root, tmp_path)
    assert ds.images.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(ds.images[-1, :, :, 0], g)


def test_gray_16bit_folder_with_one_gray_palette_image_stays_one_channel(write_images, tmp_path):
    files = {f"d{i}.png": Image.fromarray(RNG.integers(0, 65536, (8, 8), dtype=np.uint16)) for i in range(4)}
    pal, _ = gray_palette()
    ds = assert_cached_equal(write_images({**files, "d9.png": pal}), tmp_path)
    assert ds.images.shape == (5, 8, 8, 1)


def test_one_truly_coloured_image_still_makes_the_folder_rgb(write_images, tmp_path):
    files = gray_images()
    pal, pal_gray = gray_palette()
    colour = RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    root = write_images({**files, "scan03b.png": pal, "zz.png": colour})
    ds = assert_cached_equal(root, tmp_path)
    assert ds.images.shape == (8, 8, 8, 3)
    np.testing.assert_array_equal(ds.images[-1], colour)
    np.testing.assert_array_equal(ds.images[ds.keys.index("scan03b.png")], np.repeat(pal_gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(ds.images[0], np.repeat(files["scan00.png"][:, :, None], 3, axis=2))
    # a coloured palette image too
    rgb_pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    root = write_images({**files, "p.png": rgb_pal}, root=tmp_path / "pal")
    assert load_dataset(root).images.shape == (7, 8, 8, 3)


def test_a_folder_stored_in_colour_modes_only_keeps_three_channels(write_images, tmp_path):
    """Gray-looking RGB files with no grayscale file beside them stay C = 3, as stored."""
    root = write_images({f"{i}.png": np.full((8, 8, 3), 20 * i, np.uint8) for i in range(4)})
    assert assert_cached_equal(root, tmp_path).images.shape == (4, 8, 8, 3)


def test_cached_parts_written_as_rgb_before_a_grayscale_image_become_gray(write_images, tmp_path):
    """Gray RGB files sorted first fill RGB parts until a grayscale file comes: rewritten as C = 1,
    equal to the in-memory load (also after resuming from those parts)."""
    files = {f"a{i}.png": np.dstack([g] * 3) for i, g in enumerate(gray_images(4).values())}
    files.update({f"b{i}.png": g for i, g in enumerate(gray_images(3).values())})
    root = write_images(files)
    ds = assert_cached_equal(root, tmp_path)
    assert ds.images.shape == (7, 8, 8, 1)
    np.testing.assert_array_equal(ds.images[0, :, :, 0], files["a0.png"][..., 0])


def test_gray_palette_member_beside_gray_shard_members_stays_one_channel(write_tar, encode_image, tmp_path):
    pal, pal_gray = gray_palette()
    members = [(f"k{i}.png", encode_image(g)) for i, g in enumerate(gray_images(3).values())]
    members.append(("k9.png", encode_image(pal)))
    ds = load_dataset(write_tar(tmp_path / "s.tar", members))
    assert ds.images.shape == (4, 8, 8, 1)
    np.testing.assert_array_equal(ds.images[-1, :, :, 0], pal_gray)


def twelve_bit(n: int, top: int = 4095) -> dict[str, Image.Image]:
    """``n`` 16-bit grayscale images (mode I;16) with values in [0, top], ``top`` reached."""
    out = {}
    for i in range(n):
        v = RNG.integers(0, top + 1, (8, 8), dtype=np.uint16)
        v[0, 0] = top
        out[f"s{i}.png"] = Image.fromarray(v)
        assert out[f"s{i}.png"].mode.startswith("I;16")
    return out


def test_12_bit_scans_in_16_bit_pngs_are_warned_of_once(write_images, tmp_path, capsys):
    root = write_images(twelve_bit(5))
    capsys.readouterr()
    ds = load_dataset(root)
    assert ds.images.max() == 16  # the scale stays round(v / 257)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    line = err.strip()
    assert "5 16-bit images" in line and "at most 12 bits" in line and "largest value 4095" in line
    assert "value/257" in line and "16/255" in line and "rescale them to the full 16-bit range" in line
    # from a --data-cache decode: when decoding, and again when reusing the finished decode
    for _ in range(2):
        got = load_dataset_to_disk(root, tmp_path / "cache", part_bytes=8 * 8 * 3 * 2)
        np.testing.assert_array_equal(np.asarray(got.images), ds.images)
        again = capsys.readouterr().err
        assert again.count("warning:") == 1 and "5 16-bit images" in again and "largest value 4095" in again, again
    # with a mode given too (the pixels are as dark), and beside 8-bit images
    root = write_images({**twelve_bit(2, top=3000), **gray_images(2)}, root=tmp_path / "mixed")
    load_dataset(root, mode="RGB")
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 16-bit images" in err and "largest value 3000" in err, err


def test_full_range_16_bit_images_are_not_warned_of(write_images, tmp_path, capsys):
    files = twelve_bit(3)
    files["wide.png"] = Image.fromarray(np.full((8, 8), 60000, np.uint16))
    root = write_images(files)
    capsys.readouterr()
    load_dataset(root)
    load_dataset_to_disk(root, tmp_path / "cache")
    load_dataset(write_images(gray_images(3), root=tmp_path / "eight"))
    assert "warning" not in capsys.readouterr().err


def test_12_bit_scans_in_a_uint16_npz_are_warned_of_once(tmp_path, capsys):
    """The same dark-scan mistake stored as a uint16 `.npz` (a common export of DICOM pixel arrays) was
    read at value/257 without a word; full-range uint16 stays silent."""
    scans = RNG.integers(0, 4096, (6, 8, 8), dtype=np.uint16)
    scans[0, 0, 0] = 4095
    np.savez(tmp_path / "scans.npz", images=scans)
    capsys.readouterr()
    ds = load_dataset(str(tmp_path / "scans.npz"))
    assert ds.images.max() == 16
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "6 16-bit images" in err and "largest value 4095" in err, err
    load_dataset_to_disk(str(tmp_path / "scans.npz"), tmp_path / "cache")
    assert capsys.readouterr().err.count("warning:") == 1
    np.savez(tmp_path / "wide.npz", images=np.full((2, 8, 8), 60000, np.uint16))
    load_dataset(str(tmp_path / "wide.npz"))
    assert "warning" not in capsys.readouterr().err


def _png16(pixels: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG of ``pixels`` uint16 (H, W, C): Pillow reads such files but cannot write them."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    h, w = pixels.shape[:2]
    rows = b"".join(b"\0" + pixels[y].astype(">u2").tobytes() for y in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (4, 2)])  # RGB, grey + alpha
def test_12_bit_colour_and_grey_alpha_pngs_are_warned_of(tmp_path, capsys, colour_type, channels):
    """Pillow reads a 16-bit colour (or grey + alpha) PNG at 8 bits, its high bytes, so the 12-bit warning
    never saw one: its IHDR says 16 bits, and the high bytes bound its largest value."""
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(3):
        v = RNG.integers(0, 4096, (8, 8, channels), dtype=np.uint16)
        v[..., -1] = 65535 if channels == 2 else v[..., -1]  # an opaque alpha never counts as the white level
        v[0, 0, 0] = 4095
        (root / f"s{i}.png").write_bytes(_png16(v, colour_type))
    capsys.readouterr()
    ds = load_dataset(root)
    assert ds.images.max() <= 16
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "3 16-bit images" in err and "at most 12 bits" in err, err
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "w.png").write_bytes(_png16(np.full((8, 8, channels), 60000, np.uint16), colour_type))
    load_dataset(wide)
    assert "warning" not in capsys.readouterr().err


def test_a_data_warning_names_the_command_that_loaded_the_data(tmp_path, capsys):
    """The 12-bit warning comes from the data layer, which names no command: run by `diffaudit train` it reads
    `diffaudit train: warning:`, as README says every warning does (it read `diffaudit: warning:`)."""
    from diffaudit.cli.main import main

    root = tmp_path / "scans"
    root.mkdir()
    for i in range(4):
        v = RNG.integers(0, 4096, (8, 8), dtype=np.uint16)
        v[0, 0] = 4095
        Image.fromarray(v).save(root / f"s{i}.png")
    assert main(["train", "--data", str(root), "--steps", "1", "--warmup-steps", "0", "--batch-size", "4",
                 "--device", "cpu", "--quiet", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert "diffaudit train: warning: " in err and "at most 12 bits" in err and "diffaudit: warning" not in err, err


def test_a_few_colour_images_that_make_a_grey_folder_rgb_are_warned_of(tmp_path, capsys):
    """55 grey scans and 5 coloured files load as RGB (documented), which trains a colour model without a word:
    now said once, with --mode L and --mode RGB; a folder mostly in colour, or one loaded --mode L, is not."""
    root = tmp_path / "scans"
    root.mkdir()
    for i in range(8):
        Image.fromarray(RNG.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / f"g{i}.png")
    for i in range(2):
        Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"c{i}.png")
    capsys.readouterr()
    assert load_dataset(root).images.shape[-1] == 3
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "2 of its 10 images are in colour and the other 8 grey" in err
    assert "--mode L loads them all grey" in err
    assert load_dataset(root, mode="L").images.shape[-1] == 1 and "in colour" not in capsys.readouterr().err
    for i in range(2, 12):
        Image.fromarray(RNG.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"c{i}.png")
    load_dataset(root)
    assert "in colour" not in capsys.readouterr().err
