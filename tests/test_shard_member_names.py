"""Shard members as WebDataset groups them, said when they mislead; cut .tar.gz shards; mode I images;
size flags named by their flag (user walkthrough fixes).

- Image files named with a dot before the extension (``a.b.k0.png`` ... ``a.b.k7.png``) are all one
  sample (``a``) to WebDataset: loading kept one image and dropped seven, silently. Now an error
  naming the shard and the sample; an image beside other members (``.cls``, ``.txt``, ``.json``, a
  ``.seg.png`` mask) still loads.
- A sample's files apart in the tar (every ``.png``, then every ``.cls``) were said as a duplicate key.
- A brace pattern naming one shard twice was said as a duplicate key.
- A cut ``.tar.gz`` kept none of its complete samples with ``skip_bad`` (a 64 KiB read cut by the
  damage was dropped whole).
- A 32-bit integer TIFF of 8-bit values was divided by 257 (almost black).
- ``--image-size 0`` was said as ``image_size``.
"""

import gzip
import io
import lzma
import tarfile

import numpy as np
import pytest
from PIL import Image

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.images import BadImageError, decode_image, image_to_array
from diffaudit.data.transforms import check_size_option

RNG = np.random.default_rng(3)


def png(encode_image, value=0, noisy=False, side=4):
    image = RNG.integers(0, 256, (side, side, 3), dtype=np.uint8) if noisy else np.full((side, side, 3), value, np.uint8)
    return encode_image(image)


# --- several image members in one sample --------------------------------------------------------

@pytest.mark.parametrize("skip_bad", [False, True])
def test_dotted_image_names_are_one_sample_and_refused_naming_shard_and_sample(tmp_path, write_tar, encode_image,
                                                                               skip_bad):
    """a.b.k0.png ... a.b.k7.png are WebDataset sample 'a' with extensions b.k0.png ...: 8 images read as 1."""
    shard = write_tar(tmp_path / "dotkey.tar", [(f"a.b.k{i}.png", png(encode_image, i)) for i in range(8)])
    with pytest.raises(DiffauditError, match=r"sample 'a' in .*dotkey\.tar has several image members \(a\.b\.k0\.png, "
                                             r"a\.b\.k1\.png, a\.b\.k2\.png, a\.b\.k3\.png, \.\.\. \(8 in all\)\): "
                                             r"WebDataset names a sample by its file name up to the first dot.*rename "
                                             r"the files without a dot before the extension \(a\.b\.k0\.png as "
                                             r"a_b_k0\.png\)"):
        load_dataset(shard, skip_bad=skip_bad)


def test_numbered_dotted_names_in_a_folder_are_refused(tmp_path, write_tar, encode_image):
    members = [("imgs/img.001.png", png(encode_image, 1)), ("imgs/img.001.cls", b"1"),
               ("imgs/img.002.png", png(encode_image, 2)), ("imgs/img.002.cls", b"2")]
    shard = write_tar(tmp_path / "num.tar", members)
    with pytest.raises(DiffauditError, match=r"sample 'imgs/img' in .*num\.tar has several image members "
                                             r"\(imgs/img\.001\.png, imgs/img\.002\.png\).*\(imgs/img\.001\.png as "
                                             r"imgs/img_001\.png\)"):
        load_dataset(shard)


def test_two_plain_image_members_in_one_sample_are_refused(tmp_path, write_tar, encode_image):
    """k0.png beside k0.jpg: which one is the image? (webdataset's "jpg;png" picks the jpg, diffaudit read the png)."""
    members = [("k0.png", png(encode_image, 1)), ("k0.jpg", encode_image(np.zeros((4, 4, 3), np.uint8), "JPEG")),
               ("k1.png", png(encode_image, 2))]
    shard = write_tar(tmp_path / "two.tar", members)
    for skip_bad in (False, True):
        with pytest.raises(DiffauditError, match=r"sample 'k0' in .*two\.tar has several image members \(k0\.jpg, "
                                                 r"k0\.png\): diffaudit reads one image per sample"):
            load_dataset(shard, skip_bad=skip_bad)


def test_an_image_beside_other_members_and_a_dotted_mask_still_loads(tmp_path, write_tar, encode_image):
    """An image with its label, caption, JSON and a .seg.png mask is one sample whose image is the .png; a
    sample whose one image is dotted (c.seg.png) is read by that member, as webdataset decodes it."""
    members = [("k.png", png(encode_image, 10)), ("k.seg.png", png(encode_image, 200)), ("k.json", b"{}"),
               ("k.cls", b"1"), ("k.txt", b"a cat"),
               ("c.seg.png", png(encode_image, 30)), ("c.cls", b"2"), ("c.txt", b"a dog")]
    ds = load_dataset(write_tar(tmp_path / "ok.tar", members))
    assert ds.keys == ["k", "c"] and ds.labels.tolist() == [1, 2] and ds.captions == ["a cat", "a dog"]
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [10, 30])


# --- a sample's files apart; one shard twice ----------------------------------------------------

def test_a_samples_files_apart_in_the_tar_are_said_as_such(tmp_path, write_tar, encode_image):
    members = [(f"k{i}.png", png(encode_image, i)) for i in range(8)] + [(f"k{i}.cls", b"1") for i in range(8)]
    shard = write_tar(tmp_path / "badcls.tar", members)
    for skip_bad in (False, True):
        with pytest.raises(DiffauditError, match=r"sample key 'k0' appears again in .*badcls\.tar after other samples' "
                                                 r"members \(its \.png first, its \.cls later\); WebDataset groups "
                                                 r"consecutive members into a sample, so a sample's files must lie next "
                                                 r"to each other in the tar: .*tar --sort=name.*ShardWriter") as exc:
            load_dataset(shard, skip_bad=skip_bad)
        assert "keys must be unique" not in str(exc.value)


def test_a_real_duplicate_key_is_still_said_as_one(tmp_path, write_tar, encode_image):
    members = [(f"k{i}.png", png(encode_image, i)) for i in range(3)] + [("k0.png", png(encode_image, 9))]
    shard = write_tar(tmp_path / "dup.tar", members)
    with pytest.raises(DiffauditError, match=r"sample key 'k0' appears twice in .*dup\.tar .*keys must be unique"):
        load_dataset(shard)


def test_a_sample_split_between_shards_is_said_as_such(tmp_path, write_tar, encode_image):
    write_tar(tmp_path / "s-0.tar", [("a.png", png(encode_image, 1)), ("b.png", png(encode_image, 2))])
    write_tar(tmp_path / "s-1.tar", [("a.cls", b"1"), ("b.cls", b"2")])
    with pytest.raises(DiffauditError, match=r"sample key 'a' appears in .*s-0\.tar \(its \.png\) and again in "
                                             r".*s-1\.tar \(its \.cls\); WebDataset groups consecutive members"):
        load_dataset(str(tmp_path / "s-{0..1}.tar"))


def test_a_pattern_naming_one_shard_twice_is_refused(tmp_path, write_tar, encode_image):
    write_tar(tmp_path / "shard-000000.tar", [("a.png", png(encode_image, 1))])
    (tmp_path / "sub").mkdir()
    with pytest.raises(DiffauditError, match=r"shard-\{000000,000000\}\.tar names shard .*shard-000000\.tar twice; "
                                             r"name each shard once"):
        load_dataset(str(tmp_path / "shard-{000000,000000}.tar"))
    with pytest.raises(DiffauditError, match=r"names shard .*shard-000000\.tar twice \(as .*/shard-000000\.tar and as "
                                             r".*/sub/\.\./shard-000000\.tar\)"):
        load_dataset(str(tmp_path / "{,sub/../}shard-000000.tar"))


def test_a_glob_names_the_shards_it_matches_in_sorted_order(tmp_path, write_tar, encode_image):
    """`--data 'shards/train-*.tar'` (quoted, as one argument): the files it matches, sorted, read as the brace
    range naming them would be; a glob that matches nothing, and one that repeats a shard the pattern
    already names, are refused naming it. A file whose own name holds a glob character is itself."""
    for i in (2, 0, 1):
        write_tar(tmp_path / f"train-00000{i}.tar", [(f"k{i}{j}.png", png(encode_image, 10 * i + j)) for j in range(2)])
    by_glob, by_range = load_dataset(str(tmp_path / "train-*.tar")), load_dataset(str(tmp_path / "train-{000000..000002}.tar"))
    assert by_glob.keys == by_range.keys == ["k00", "k01", "k10", "k11", "k20", "k21"]
    assert np.array_equal(by_glob.images, by_range.images)
    assert load_dataset(str(tmp_path / "train-00000[12].tar")).keys == ["k10", "k11", "k20", "k21"]
    with pytest.raises(DiffauditError, match=r"no shard matches .*/test-\*\.tar"):
        load_dataset(str(tmp_path / "test-*.tar"))
    with pytest.raises(DiffauditError, match=r"names shard .*train-000000\.tar twice"):
        load_dataset(str(tmp_path / "train-{000000,*}.tar"))
    write_tar(tmp_path / "odd[1].tar", [("z.png", png(encode_image, 3))])
    assert load_dataset(str(tmp_path / "odd[1].tar")).keys == ["z"]


# --- a cut compressed shard keeps what was decompressed before the cut ---------------------------

@pytest.mark.parametrize("codec", ["gz", "xz"])
def test_a_cut_compressed_shard_keeps_the_complete_samples_decompressed_before_the_cut(tmp_path, write_tar,
                                                                                     encode_image, codec):
    """gzip -c shard.tar | head -c N: every sample that the compressor can still decompress completely is
    kept with ``skip_bad`` (the last, being read at the cut, may be dropped); none were."""
    keys = [f"k{i:02d}" for i in range(40)]
    members = [(f"{k}.png", png(encode_image, noisy=True, side=28)) for k in keys]  # ~2.5 KB each, incompressible
    plain = write_tar(tmp_path / "full.tar", members)
    compress, decompressor = {"gz": (gzip.compress, lambda: __import__("zlib").decompressobj(31)),
                              "xz": (lzma.compress, lzma.LZMADecompressor)}[codec]
    packed = compress(plain.read_bytes())
    ends = [m.offset_data + m.size for m in tarfile.open(plain)]
    for fraction in (0.3, 0.9):  # within the first 64 KiB of tar, and past it
        cut = packed[:int(len(packed) * fraction)]
        recoverable = len(decompressor().decompress(cut))
        complete = sum(end <= recoverable for end in ends)
        assert complete >= 10
        shard = tmp_path / f"cut.tar.{codec}"
        shard.write_bytes(cut)
        ds = load_dataset(shard, skip_bad=True)
        assert ds.keys == keys[:len(ds.keys)] and len(ds.keys) >= complete - 1, (fraction, len(ds.keys), complete)
        assert f"kept the {len(ds.keys)} samples before the damage" in ds.skipped[-1][1]


# --- mode I (32-bit integer) images -------------------------------------------------------------

def tiff(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="TIFF")
    return buf.getvalue()


def test_a_32bit_integer_tiff_of_8bit_values_keeps_them():
    gray = np.array([[0, 1, 128], [200, 254, 255]], np.uint8)
    i32 = Image.fromarray(gray).convert("I")
    assert i32.mode == "I"
    np.testing.assert_array_equal(decode_image(tiff(i32), "i32.tiff")[:, :, 0], gray)


def test_a_32bit_integer_tiff_of_16bit_values_scales_by_1_over_257():
    values = np.array([[65535, 257 * 100, 256, 0]], np.int32)
    np.testing.assert_array_equal(decode_image(tiff(Image.fromarray(values)), "i16.tiff")[0, :, 0], [255, 100, 1, 0])


@pytest.mark.parametrize("values", [[[-1, 5]], [[70000, 1]]])
def test_a_32bit_integer_tiff_outside_16_bits_is_refused(values):
    with pytest.raises(BadImageError, match=r"neg\.tif: mode I \(32-bit integer\) values span .*outside the 16-bit "
                                            r"range \[0, 65535\].*save it as 8- or 16-bit grayscale"):
        decode_image(tiff(Image.fromarray(np.array(values, np.int32))), "neg.tif")


def test_a_png_opened_as_mode_i_is_16bit_whatever_its_values():
    """Older Pillow opened 16-bit grey PNGs as mode I: their values are 16-bit even when all are under 256."""
    im = Image.fromarray(np.array([[255, 0]], np.int32))
    im.format = "PNG"
    np.testing.assert_array_equal(image_to_array(im, "dark16.png")[0, :, 0], [1, 0])
    im.format = "TIFF"
    np.testing.assert_array_equal(image_to_array(im, "i32.tif")[0, :, 0], [255, 0])


# --- size options named by their flags ----------------------------------------------------------

def test_size_options_are_named_by_their_flags(tmp_path, capsys):
    with pytest.raises(DiffauditError, match=r"^--image-size must be a number of pixels in \[1, 4096\]; got 0$"):
        check_size_option("image_size", 0)
    with pytest.raises(DiffauditError, match=r"^--center-crop must be a number of pixels in \[1, 4096\]; got -2$"):
        check_size_option("center_crop", -2)
    assert main(["train", "--data", "digits", "--image-size", "0", "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    assert "error: --image-size must be a number of pixels in [1, 4096]; got 0" in err and "image_size" not in err
    assert not (tmp_path / "t").exists()
