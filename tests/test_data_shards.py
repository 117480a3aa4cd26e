"""WebDataset shards: keys as webdataset gives them, labels/captions, damaged and hostile tar files."""

import gzip
import io
import tarfile

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.shards import unsafe_member_reason

RNG = np.random.default_rng(5)


def sample_members(encode_image, keys, start=0, fmt="PNG", ext="png", cls=True, txt=True):
    members = []
    for i, key in enumerate(keys):
        image = np.full((4, 4, 3), (start + i) * 10, np.uint8)
        members.append((f"{key}.{ext}", encode_image(image, fmt)))
        if cls:
            members.append((f"{key}.cls", str((start + i) % 3).encode()))
        if txt:
            members.append((f"{key}.txt", f"caption {key}\n".encode()))
    return members


@pytest.fixture
def two_shards(tmp_path, write_tar, encode_image):
    write_tar(tmp_path / "s-000000.tar", sample_members(encode_image, ["k0", "k1", "sub/k2"]))
    write_tar(tmp_path / "s-000001.tar", sample_members(encode_image, ["k3", "k4"], start=3))
    return str(tmp_path / "s-{000000..000001}.tar")


def test_brace_pattern_keys_labels_captions(two_shards):
    ds = load_dataset(two_shards)
    assert ds.keys == ["k0", "k1", "sub/k2", "k3", "k4"]
    np.testing.assert_array_equal(ds.labels, [0, 1, 2, 0, 1])
    assert ds.captions == ["caption k0", "caption k1", "caption sub/k2", "caption k3", "caption k4"]
    np.testing.assert_array_equal(ds.images[:, 0, 0, 0], [0, 10, 20, 30, 40])
    assert ds.source == two_shards


def test_keys_and_pixels_match_webdataset(tmp_path, write_tar, encode_image):
    wds = pytest.importorskip("webdataset")
    members = sample_members(encode_image, ["a", "dir/b", "c.seg"], cls=False, txt=False)
    members += [("__meta__", b"ignored"), ("noext", b"ignored"), ("d.seg.PNG", encode_image(np.ones((4, 4, 3), np.uint8)))]
    shard = write_tar(tmp_path / "w-0.tar", members)
    ref = list(wds.WebDataset(str(shard), shardshuffle=False).decode("rgb8"))
    ds = load_dataset(shard)
    assert ds.keys == [s["__key__"] for s in ref] == ["a", "dir/b", "c", "d"]
    images = [next(v for k, v in s.items() if k.endswith("png")) for s in ref]
    np.testing.assert_array_equal(ds.images, np.stack(images))


def test_gzip_shard_and_jpeg(tmp_path, write_tar, encode_image):
    plain = write_tar(tmp_path / "p.tar", sample_members(encode_image, ["a", "b"], fmt="JPEG", ext="jpg", txt=False))
    gz = tmp_path / "p.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    ds = load_dataset(gz)
    assert ds.keys == ["a", "b"] and ds.captions is None and ds.images.shape == (2, 4, 4, 3)


def test_listing_keeps_where_images_lie_not_their_bytes(tmp_path, write_tar, encode_image):
    """An uncompressed shard's images are listed as spans and read when decoded (a dataset's encoded
    bytes are never all in memory); a compressed shard's are spans into its temporary tar, and no
    descriptor of that file stays open."""
    import os

    from diffaudit.data.shards import Span, list_shards, read_shard

    plain = write_tar(tmp_path / "p.tar", sample_members(encode_image, ["a", "b"]))
    samples, _ = read_shard(plain, skip_bad=False)
    assert all(isinstance(parts["png"], Span) and parts["cls"] == b"%d" % i for i, (_, parts) in enumerate(samples))
    assert samples[1][1]["png"].read() == encode_image(np.full((4, 4, 3), 10, np.uint8))
    gz = tmp_path / "p.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    samples, _ = read_shard(gz, skip_bad=False)
    assert all(isinstance(parts["png"], Span) for _, parts in samples)
    assert load_dataset(gz).images.shape == (2, 4, 4, 3)
    open_files = [os.path.realpath(f"/proc/self/fd/{f}") for f in os.listdir("/proc/self/fd")]
    assert not [f for f in open_files if "diffaudit-shard-" in f]
    # a shard replaced at its path (a new file, as an atomic rewrite makes it): a new listing reads the new
    # pixels, never the old file through a kept descriptor; the old listing reads what it listed (through
    # the descriptor it kept open) or, that one closed, is a bad image: never the new file's bytes
    old = list_shards([plain], source="p.tar", skip_bad=False).entries
    assert old[1].pixels().max() == 10
    replacement = write_tar(tmp_path / "q.tar", sample_members(encode_image, ["a", "b"], start=20))
    os.replace(replacement, plain)
    assert list_shards([plain], source="p.tar", skip_bad=False).entries[1].pixels().max() == 210
    try:
        assert old[1].pixels().max() == 10
    except DiffauditError as exc:
        assert "has changed since it was listed" in str(exc)
    os.replace(write_tar(tmp_path / "r.tar", sample_members(encode_image, ["a", "b"], start=5)), plain)
    listed = list_shards([plain], source="p.tar", skip_bad=False).entries  # never read before the next replace
    os.replace(write_tar(tmp_path / "s.tar", sample_members(encode_image, ["a", "b"], start=7)), plain)
    with pytest.raises(DiffauditError, match="has changed since it was listed"):
        listed[1].pixels()
    # a shard cut after it was listed: reading the image is a bad image that names it (skipped with skip_bad)
    entries = list_shards([plain], source="p.tar", skip_bad=False).entries
    plain.write_bytes(plain.read_bytes()[:600])
    with pytest.raises(DiffauditError, match=r"p\.tar:b\.png: cannot read it from its shard .*changed or removed"):
        entries[1].pixels()


def test_missing_shard_named(tmp_path, write_tar, encode_image):
    write_tar(tmp_path / "m-0.tar", sample_members(encode_image, ["a"]))
    with pytest.raises(DiffauditError, match=r"shard .*m-1\.tar does not exist \(1 of the 2 shards"):
        load_dataset(str(tmp_path / "m-{0..1}.tar"))


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary", "garbled-header"])
def test_truncated_shard_names_it_and_skip_bad_keeps_earlier_samples(tmp_path, write_tar, encode_image, cut):
    members = sample_members(encode_image, [f"k{i}" for i in range(6)], txt=False)
    full = write_tar(tmp_path / "full.tar", members).read_bytes()
    offsets = [m.offset for m in tarfile.open(tmp_path / "full.tar")]  # header offsets of the 12 members
    boundary = offsets[8]  # start of k4.png: k0..k3 are complete
    if cut == "mid-member":
        data = full[: boundary + 700]
    elif cut == "member-boundary":
        data = full[:boundary]
    else:
        data = full[:boundary] + b"\x07" * 512 + full[boundary + 512:]
    bad = tmp_path / "bad.tar"
    bad.write_bytes(data)
    with pytest.raises(DiffauditError, match=r"shard .*bad\.tar is truncated or unreadable"):
        load_dataset(bad)
    ds = load_dataset(bad, skip_bad=True)
    # complete samples before the damage are kept; the one being read when it was found may be dropped
    assert ds.keys[:3] == ["k0", "k1", "k2"] and set(ds.keys) <= {"k0", "k1", "k2", "k3"}
    assert len(ds.skipped) == 1 and ds.skipped[0][0].endswith("bad.tar") and "truncated" in ds.skipped[0][1]


@pytest.mark.parametrize("codec", ["gz", "bz2", "xz"])
def test_cut_compressed_shard_is_never_read_as_sound(tmp_path, write_tar, encode_image, codec):
    """tarfile's stream reader stops silently where a compressed stream is cut at a header boundary
    (a 4-sample .tar.gz cut short read as 3, 2 or 1 samples); every cut point must be an error, and
    ``skip_bad`` keeps only complete samples from before it."""
    import bz2
    import lzma

    compress = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[codec]
    keys = [f"k{i}" for i in range(4)]
    # noisy images, so the compressed stream is long enough to cut in many places
    members = [(f"{k}.png", encode_image(RNG.integers(0, 256, (24, 24, 3), dtype=np.uint8))) for k in keys]
    packed = compress(write_tar(tmp_path / "full.tar", members).read_bytes())
    whole = tmp_path / f"whole.tar.{codec}"
    whole.write_bytes(packed)
    sound = load_dataset(whole)
    assert sound.keys == keys
    bad = tmp_path / f"cut.tar.{codec}"
    for cut in range(1, len(packed), max(1, len(packed) // 40)):
        bad.write_bytes(packed[:cut])
        with pytest.raises(DiffauditError, match=r"cut\.tar\.\w+ is truncated or unreadable"):
            load_dataset(bad)
        try:
            ds = load_dataset(bad, skip_bad=True)
        except DiffauditError as exc:  # nothing readable before the cut
            assert "empty" in str(exc), exc
            continue
        # a cut past the tar's last member (in the zero padding, or the stream's checksum) leaves every sample
        # complete: all are kept, and the shard is still recorded as damaged
        assert ds.keys == keys[:len(ds.keys)] and "truncated" in ds.skipped[-1][1]
        np.testing.assert_array_equal(ds.images, sound.images[:len(ds.keys)])


@pytest.mark.parametrize("name", ["../../x.png", "/abs/x.png", "a/../../x.png", "C:evil.png"])
def test_unsafe_member_names_refused(tmp_path, write_tar, encode_image, name):
    members = sample_members(encode_image, ["ok"]) + [(name, encode_image(np.zeros((4, 4, 3), np.uint8)))]
    shard = write_tar(tmp_path / "evil.tar", members)
    assert tarfile.open(shard).getnames()[-1] == name  # the hostile name really is in the archive
    for skip_bad in (False, True):
        with pytest.raises(DiffauditError, match=rf"evil\.tar: member '{name}' .*refused"):
            load_dataset(shard, skip_bad=skip_bad)
    assert not (tmp_path.parent / "x.png").exists()


def test_unsafe_name_rules():
    assert unsafe_member_reason("a/b.c.png") is None
    assert unsafe_member_reason("..hidden.png") is None  # a dot prefix is not a '..' component
    assert "absolute" in unsafe_member_reason("/x")
    assert ".." in unsafe_member_reason("a\\..\\x")


def test_link_member_refused(tmp_path):
    shard = tmp_path / "link.tar"
    with tarfile.open(shard, "w") as tf:
        info = tarfile.TarInfo("a.png")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(DiffauditError, match=r"link\.tar: member 'a\.png' is a link"):
        load_dataset(shard)


def test_duplicate_keys_across_shards(tmp_path, write_tar, encode_image):
    write_tar(tmp_path / "d-0.tar", sample_members(encode_image, ["same"]))
    write_tar(tmp_path / "d-1.tar", sample_members(encode_image, ["same"]))
    with pytest.raises(DiffauditError, match=r"key 'same' appears in .*d-0\.tar and in .*d-1\.tar"):
        load_dataset(str(tmp_path / "d-{0..1}.tar"))


def test_bad_samples_error_or_skip(tmp_path, write_tar, encode_image):
    members = sample_members(encode_image, ["a", "b"], txt=False)
    members += [("noimg.cls", b"1"), ("badcls.png", encode_image(np.zeros((4, 4, 3), np.uint8))), ("badcls.cls", b"cat"),
                ("nolabel.png", encode_image(np.zeros((4, 4, 3), np.uint8))), ("broken.png", b"\x89PNG broken"),
                ("broken.cls", b"2")]
    shard = write_tar(tmp_path / "mixed.tar", members)
    with pytest.raises(DiffauditError, match=r"mixed\.tar:noimg: sample has no image"):
        load_dataset(shard)
    ds = load_dataset(shard, skip_bad=True)
    assert ds.keys == ["a", "b"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {f"{shard}:noimg", f"{shard}:badcls.png", f"{shard}:nolabel.png", f"{shard}:broken.png"}
    assert "not an integer" in reasons[f"{shard}:badcls.png"]
    assert "no .cls label" in reasons[f"{shard}:nolabel.png"]


def test_a_dotted_file_name_is_said_as_webdatasets_naming_rule(tmp_path, write_tar, encode_image):
    """john.smith.png and john.smith.txt are sample 'john' with extensions smith.png and smith.txt: the caption
    is missing as WebDataset reads the shard, and the error says why and what to do."""
    img = encode_image(np.zeros((4, 4, 3), np.uint8))
    shard = write_tar(tmp_path / "dots.tar", [("alice.png", img), ("alice.txt", b"alice at the beach"),
                                              ("john.smith.png", img), ("john.smith.txt", b"john at work")])
    with pytest.raises(DiffauditError, match=r"no \.txt caption while other samples have one \(its \.smith\.txt is not "
                       r"one: WebDataset names a sample by its file name up to the first dot, so this is sample 'john' "
                       r"with extensions \.smith\.png, \.smith\.txt; rename the files without a dot"):
        load_dataset(shard)


def test_empty_shard(tmp_path, write_tar):
    shard = write_tar(tmp_path / "empty.tar", [("__meta__", b"x")])
    with pytest.raises(DiffauditError, match=r"empty\.tar: the dataset is empty"):
        load_dataset(shard)
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"definitely not a tar file" * 40)
    with pytest.raises(DiffauditError, match=r"junk\.tar is truncated or unreadable"):
        load_dataset(junk)


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_fast_reader_agrees_with_tarfile(tmp_path, encode_image, fmt):
    from diffaudit.data.shards import _plain_members, _tarfile_members, read_shard

    long_dir = "d" * 90 + "/" + "e" * 60  # > 100 characters: ustar prefix field, GNU 'L' or pax 'x' header
    shard = tmp_path / "f.tar"
    with tarfile.open(shard, "w", format=fmt) as tf:
        for name, data in [(f"{long_dir}/k.png", encode_image(np.zeros((4, 4, 3), np.uint8))),
                           (f"{long_dir}/k.cls", b"1"), ("ü/ñ.png", encode_image(np.ones((4, 4, 3), np.uint8))),
                           ("ü/ñ.cls", b"2")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        d = tarfile.TarInfo("adir")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
    reference = list(_tarfile_members(shard))
    try:
        fast = list(_plain_members(shard))
    except Exception as exc:  # the fast reader hands pax/GNU extension headers to tarfile
        assert type(exc).__name__ == "_NeedsTarfile" and fmt != tarfile.USTAR_FORMAT
    else:
        assert fast == reference
    samples, damage = read_shard(shard, skip_bad=False)
    assert damage is None and [k for k, _ in samples] == [f"{long_dir}/k", "ü/ñ"]
    assert load_dataset(shard).labels.tolist() == [1, 2]


@pytest.mark.parametrize("pattern", [
    "s-{000000..000004}.tar", "a{1..3}b{x,y}.tar", "{8..11}.tar", "{3..1}.tar", "{08..11}.tar", "plain.tar", "{a,b}-{0..1}", "lit{x}-{1..2}",
])
def test_fallback_brace_expansion_matches_braceexpand(pattern):
    braceexpand = pytest.importorskip("braceexpand")
    from diffaudit.data.shards import expand_braces

    assert expand_braces(pattern) == list(braceexpand.braceexpand(pattern))
