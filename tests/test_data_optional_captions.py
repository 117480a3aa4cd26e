"""A load that never uses captions (``need_captions=False``: verify, its report, dedup) keeps an image
whose caption is missing or unreadable, and leaves out the dataset's captions instead.

A user's walkthrough: a folder of captioned photos (``img.png`` + ``img.txt``) with one caption missing
was refused by ``verify --data``, which compares pixels only; the advice (--skip-bad) dropped that image
from the search, so a memorized copy of it went undetected (9 extracted became 8). With every caption
there, the load is exactly the one that needs captions (same captions, same dataset digest), so the digests
recorded in existing result folders stay valid. Image problems (an undecodable file, a missing .cls) are
bad entries either way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset
from diffaudit.data.decoded import load_dataset_to_disk
from diffaudit.data.digest import dataset_digest
from diffaudit.data.native import NativeImages
from diffaudit.data.view import save_view

N = 9
MISSING = "img006"  # the image whose caption is missing


def digit_images(n: int = N) -> list[np.ndarray]:
    """``n`` distinct 8x8 digits, uint8 (8, 8)."""
    d = load_digits()
    return [(d.images[i] * 255 / 16).astype(np.uint8) for i in range(n)]


@pytest.fixture
def folder(tmp_path):
    """A flat folder of ``img000.png`` .. ``img008.png``, each with its ``.txt`` caption."""
    root = tmp_path / "photos"
    root.mkdir()
    for i, img in enumerate(digit_images()):
        Image.fromarray(img, "L").save(root / f"img{i:03d}.png")
        (root / f"img{i:03d}.txt").write_text(f"a photo of digit {i}\n", encoding="utf-8")
    return root


def warnings_in(err: str) -> list[str]:
    return [line for line in err.splitlines() if "warning:" in line and "no caption" in line]


def test_without_needing_captions_every_image_is_kept_and_the_captions_left_out(folder, capsys):
    (folder / f"{MISSING}.txt").unlink()
    # by default a missing caption is refused as before (the message unchanged), or the image skipped
    with pytest.raises(DiffauditError, match=rf"{MISSING}\.png: no caption file {MISSING}\.txt beside it, while other "
                                             r"images have one\. Fix or remove it, or pass --skip-bad"):
        load_dataset(folder)
    assert len(load_dataset(folder, skip_bad=True)) == N - 1
    capsys.readouterr()
    ds = load_dataset(folder, need_captions=False)
    assert ds.keys == [f"img{i:03d}.png" for i in range(N)] and ds.captions is None and not ds.skipped
    np.testing.assert_array_equal(ds.images[6, :, :, 0], digit_images()[6])
    said = warnings_in(capsys.readouterr().err)
    assert len(said) == 1 and f"1 image has no caption ({MISSING}.png: no caption file {MISSING}.txt" in said[0]
    assert "no image is dropped for lacking one" in said[0]
    # the same with --skip-bad (nothing to skip), and through a --data-cache decode
    assert load_dataset(folder, need_captions=False, skip_bad=True).keys == ds.keys
    got = load_dataset_to_disk(folder, folder.parent / "cache", need_captions=False)
    assert got.keys == ds.keys and got.captions is None
    np.testing.assert_array_equal(np.asarray(got.images), ds.images)
    assert dataset_digest(got) == dataset_digest(ds)
    assert warnings_in(capsys.readouterr().err) == []  # said once per source and process


def test_an_unreadable_caption_is_left_out_too_but_a_bad_image_is_still_bad(folder):
    (folder / "img002.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    ds = load_dataset(folder, need_captions=False)
    assert len(ds) == N and ds.captions is None
    (folder / "img004.png").write_bytes(b"not a png")
    with pytest.raises(DiffauditError, match=r"img004\.png"):
        load_dataset(folder, need_captions=False)
    ds = load_dataset(folder, need_captions=False, skip_bad=True)
    assert len(ds) == N - 1 and [name for name, _ in ds.skipped] == [str(folder / "img004.png")]


def test_with_every_caption_there_the_load_is_the_one_that_needs_them(folder, tmp_path):
    want = load_dataset(folder)
    assert want.captions == [f"a photo of digit {i}" for i in range(N)]
    for got in (load_dataset(folder, need_captions=False),
                load_dataset_to_disk(folder, tmp_path / "cache", need_captions=False),
                load_dataset_to_disk(folder, tmp_path / "cache")):  # the same decode, shared
        assert got.keys == want.keys and got.captions == want.captions
        assert dataset_digest(got) == dataset_digest(want)
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1


def test_a_subset_whose_captions_are_all_there_keeps_them(folder):
    (folder / f"{MISSING}.txt").unlink()
    full = load_dataset(folder, need_captions=False)
    for seed in range(20):  # a subset of 3 without img006 keeps its captions, exactly as the load that needs them
        sub = load_dataset(folder, subset=3, subset_seed=seed, need_captions=False)
        if f"{MISSING}.png" not in sub.keys:
            break
    assert sub.captions is not None
    assert dataset_digest(sub) == dataset_digest(load_dataset(folder, subset=3, subset_seed=seed))
    assert full.captions is None


def test_a_cached_decode_that_skipped_the_image_is_never_reused_without_needing_captions(folder, tmp_path):
    """--skip-bad's decode (img006 skipped) and a decode with the captions left out share their options
    but not their entries: each has its own folder."""
    (folder / f"{MISSING}.txt").unlink()
    cache = tmp_path / "cache"
    assert len(load_dataset_to_disk(folder, cache, skip_bad=True)) == N - 1
    kept = load_dataset_to_disk(folder, cache, skip_bad=True, need_captions=False)
    assert len(kept) == N and kept.captions is None
    assert len(load_dataset_to_disk(folder, cache, skip_bad=True)) == N - 1  # and the other way round


def test_through_a_view(folder, tmp_path, capsys):
    keys = [f"img{i:03d}.png" for i in (8, 6, 1)]
    view = save_view(tmp_path / "sel.view.json", str(folder), {}, keys)
    assert load_dataset(view).captions == ["a photo of digit 8", "a photo of digit 6", "a photo of digit 1"]
    digests = {dataset_digest(load_dataset(view)), dataset_digest(load_dataset(view, need_captions=False)),
               dataset_digest(load_dataset_to_disk(view, tmp_path / "cache", need_captions=False))}
    assert len(digests) == 1
    (folder / f"{MISSING}.txt").unlink()
    with pytest.raises(DiffauditError, match="no caption file"):
        load_dataset(view)
    capsys.readouterr()
    for ds in (load_dataset(view, need_captions=False),
               load_dataset_to_disk(view, tmp_path / "cache", need_captions=False)):
        assert ds.keys == keys and ds.captions is None
    assert len(warnings_in(capsys.readouterr().err)) == 1
    assert "need_captions" not in json.loads(view.read_text())["options"]  # never a view's option


def test_read_image_by_image_a_missing_caption_is_not_bad(folder):
    """verify --train-map reads --data of mixed sizes image by image (NativeImages), which has no captions."""
    (folder / f"{MISSING}.txt").unlink()
    native = NativeImages(folder)
    np.testing.assert_array_equal(native[6][:, :, 0], digit_images()[6])
    assert not native.skipped


def shard_members(encode_image, *, missing: str | None = None, cls: bool = False):
    members = []
    for i, img in enumerate(digit_images()):
        key = f"img{i:03d}"
        members.append((f"{key}.png", encode_image(img)))
        if cls and key != "img003":
            members.append((f"{key}.cls", str(i % 3).encode()))
        if key != missing:
            members.append((f"{key}.txt", f"a photo of digit {i}".encode()))
    return members


def test_webdataset_shards(tmp_path, write_tar, encode_image, capsys):
    full = write_tar(tmp_path / "full.tar", shard_members(encode_image))
    want = load_dataset(full)
    got = load_dataset(full, need_captions=False)
    assert got.captions == want.captions and dataset_digest(got) == dataset_digest(want)
    assert dataset_digest(load_dataset_to_disk(full, tmp_path / "cache", need_captions=False)) == dataset_digest(want)

    shard = write_tar(tmp_path / "gap.tar", shard_members(encode_image, missing=MISSING))
    with pytest.raises(DiffauditError, match=rf"{MISSING}\.png: no \.txt caption while other samples have one"):
        load_dataset(shard)
    capsys.readouterr()
    ds = load_dataset(shard, need_captions=False)
    assert ds.keys == [f"img{i:03d}" for i in range(N)] and ds.captions is None
    said = warnings_in(capsys.readouterr().err)
    assert len(said) == 1 and f"({MISSING}: no .txt caption" in said[0]
    cached = load_dataset_to_disk(shard, tmp_path / "cache", need_captions=False)
    assert cached.keys == ds.keys and cached.captions is None and dataset_digest(cached) == dataset_digest(ds)

    # a missing label is an image problem: still bad, whatever the captions
    labelled = write_tar(tmp_path / "cls.tar", shard_members(encode_image, missing=MISSING, cls=True))
    with pytest.raises(DiffauditError, match=r"img003\.png: no \.cls label while other samples have one\. Fix"):
        load_dataset(labelled, need_captions=False)
    ds = load_dataset(labelled, need_captions=False, skip_bad=True)
    assert len(ds) == N - 1 and "img003" not in ds.keys and ds.captions is None


def test_verify_counts_every_image_whose_caption_is_missing(folder, tmp_path, capsys):
    """The walkthrough's case: generations that copy each of the 9 training images, one of them the image
    without its caption. Every copy is extracted (9, not the 8 --skip-bad would have left)."""
    from diffaudit.cli.main import main

    images = np.stack(digit_images())[..., None]
    np.savez(tmp_path / "gens.npz", images=images)
    (folder / f"{MISSING}.txt").unlink()
    unseen = tmp_path / "unseen"  # other digits, also with a caption missing
    unseen.mkdir()
    for i, img in enumerate(np.stack([(d * 255 / 16).astype(np.uint8) for d in load_digits().images[100:100 + N]])):
        Image.fromarray(img, "L").save(unseen / f"u{i}.png")
        if i != 2:
            (unseen / f"u{i}.txt").write_text("an unseen digit", encoding="utf-8")
    out = tmp_path / "ver"
    assert main(["verify", "--samples", str(tmp_path / "gens.npz"), "--data", str(folder), "--baseline", str(unseen),
                 "--rule", "l2", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["n_train"] == N and result["unique_extracted"] == N
    assert f"{MISSING}.png" in {e["train_key"] for e in result["extracted"]}
    assert result["baseline"]["n_images"] == N
    assert len(warnings_in(capsys.readouterr().err)) == 2  # one for --data, one for --baseline


def test_verify_and_its_report_on_a_folder_with_one_caption_missing(folder, tmp_path):
    from test_report import visible_text

    from diffaudit.cli.main import main
    from diffaudit.report import render_html
    from diffaudit.report.images import image_uri
    from diffaudit.report.view_extraction import PAIR_SIDE

    run, store, ver = tmp_path / "run", tmp_path / "s", tmp_path / "ver"
    common = ["--device", "cpu", "--quiet"]
    assert main(["train", "--data", str(folder), "--steps", "4", "--batch-size", "8", "--checkpoint-every", "2",
                 "--warmup-steps", "1", "--out", str(run), *common]) == 0
    assert main(["sample", "--model", str(run), "--n", "4", "--steps", "2", "--out", str(store), *common]) == 0
    (folder / f"{MISSING}.txt").unlink()
    # every generation within delta of some training image: a pair each, shown with its training image
    assert main(["verify", "--samples", str(store), "--data", str(folder), "--rule", "l2", "--delta", "1",
                 "--out", str(ver), *common]) == 0
    result = json.loads((ver / "result.json").read_text())
    assert result["n_train"] == N and result["unique_extracted"] >= 1
    html = render_html(ver)
    assert "Training images are shown by id" not in visible_text(html)
    train = load_dataset(folder, need_captions=False)
    key = result["extracted"][0]["train_key"]
    assert image_uri(train.images[train.keys.index(key)], max_side=PAIR_SIDE) in html  # the training image itself


def test_dedup_keeps_an_image_without_its_caption_unless_it_writes_captions(folder, tmp_path):
    """dedup compares images; its captions only go into --write-deduped's .npz, which still needs them all."""
    from diffaudit.cli.main import main

    Image.fromarray(digit_images()[4], "L").save(folder / "copy.png")  # a duplicate of img004, its caption missing
    for i in range(N):
        (folder / f"img{i:03d}.txt").write_text(f"a photo of digit {i}", encoding="utf-8")
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(folder), "--out", str(out), "--quiet"]) == 0
    keep = json.loads((out / "keep.json").read_text())
    assert len(keep["keys"]) + len(keep["removed_keys"]) == N + 1  # every image searched
    assert {"copy.png", "img004.png"} & set(keep["removed_keys"])  # the copy found
    assert main(["dedup", "--data", str(folder), "--out", str(tmp_path / "dd2"), "--write-deduped",
                 str(tmp_path / "kept.npz"), "--quiet"]) == 2  # its captions would be lost: refused, as before
