"""``diffaudit dedup`` in-process: result.json fields, keep list, deduplicated npz, resume, settings mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.defenses.calibration import brightness, jpeg_reencode, shift


def _planted_npz(tmp_npz, digits):
    """40 distinct digits + a JPEG copy of #3, a shifted copy of #7 and two exact copies of #11."""
    base = np.repeat(np.repeat(digits.images[:40], 4, axis=1), 4, axis=2)  # 32x32 gray
    base = np.repeat(base, 3, axis=-1)
    extra = [jpeg_reencode(base[3], 50), shift(base[7], 1, 0), base[11].copy(), brightness(base[11], 1.1)]
    images = np.concatenate([base, np.stack(extra)])
    labels = np.concatenate([digits.labels[:40], digits.labels[[3, 7, 11, 11]]])
    return tmp_npz(images, labels=labels), images


def test_dedup_cli_writes_groups_keep_list_and_deduped_npz(tmp_path, tmp_npz, digits, capsys):
    from diffaudit.data import load_dataset

    data, images = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    deduped = tmp_path / "kept.npz"
    rc = main(["--json", "dedup", "--data", str(data), "--out", str(out), "--write-deduped", str(deduped), "--batch-size", "16"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)
    assert r["command"] == "dedup" and r["schema_version"] == 1 and "versions" in r and r["seeds"] == {"seed": 0}
    members = [g["members"] for g in r["groups"]]
    for group in ([3, 40], [7, 41], [11, 42, 43]):
        assert any(set(group) <= set(m) for m in members), f"{group} not grouped: {members}"
    assert r["groups"][0]["keys"] == [f"npz:{i}" for i in r["groups"][0]["members"]]
    assert len(r["duplicate_count"]) == 44 and r["duplicate_count"][42] >= 2 and r["duplicate_count"][0] == 0
    keep = json.loads((out / "keep.json").read_text())
    assert 40 not in keep["indices"] and 3 in keep["indices"] and "npz:42" in keep["removed_keys"]
    ds = load_dataset(str(deduped))
    assert len(ds) == len(keep["indices"]) == 44 - r["n_removed"]
    with np.load(deduped) as z:
        assert list(z["keys"]) == keep["keys"]
        np.testing.assert_array_equal(z["images"], images[keep["indices"]])
        np.testing.assert_array_equal(z["labels"], np.asarray(load_dataset(str(data)).labels)[keep["indices"]])



def test_write_deduped_never_replaces_a_users_file_and_takes_a_folder(tmp_path, tmp_npz, digits, capsys):
    data, _ = _planted_npz(tmp_npz, digits)
    mine = tmp_path / "mine.npz"
    mine.write_text("my notes")
    argv = ["--quiet", "dedup", "--data", str(data), "--batch-size", "16"]
    assert main([*argv, "--out", str(tmp_path / "a"), "--write-deduped", str(mine)]) == 2
    assert "mine.npz exists and is not a deduplicated .npz that `diffaudit dedup` wrote" in capsys.readouterr().err
    assert mine.read_text() == "my notes" and not (tmp_path / "a").exists()  # refused before any work
    np.savez(mine, images=digits.images[:3])  # an .npz of the user's, without the `keys` a deduplicated one holds
    assert main([*argv, "--out", str(tmp_path / "a"), "--write-deduped", str(mine)]) == 2
    (tmp_path / "folder").mkdir()
    for spec in (str(tmp_path / "folder"), f"{tmp_path / 'new'}/"):
        assert main([*argv, "--out", str(tmp_path / "b"), "--write-deduped", spec]) == 0
        with np.load(f"{spec.rstrip('/')}/deduped.npz") as z:
            assert {"images", "keys"} <= set(z.files)
    # its own file is replaced by a later run (here the finished run, asked again)
    assert main([*argv, "--out", str(tmp_path / "b"), "--write-deduped", str(tmp_path / "folder")]) == 0


def test_dedup_cli_resumes_and_refuses_other_settings(tmp_path, tmp_npz, digits, capsys):
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 0
    before = (out / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "result.json").stat().st_mtime_ns == before
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash", "--threshold", "0.8"]) == 2
    assert "threshold" in capsys.readouterr().err
    assert main(["dedup", "--data", str(data), "--out", str(out), "--pixel-size", "4"]) == 2  # named by flag, not key
    err = capsys.readouterr().err
    assert "--embedder (was 'phash', now 'pixel')" in err and "embedder.name" not in err
    # the settings of one embedder only (phash's hash size, pixel's size) come with the kind: not listed
    assert "<unset>" not in err and "hash_size" not in err and "--pixel-size" not in err


def test_a_keep_list_of_the_earlier_rule_is_rebuilt_on_resume(tmp_path, tmp_npz, digits, capsys):
    """A finished folder whose result.json predates the greedy keep rule (no ``keep_rule``) is not
    answered from: its keep list is rebuilt from the cached embeddings, and says which rule made it."""
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 0
    good = json.loads((out / "keep.json").read_text())
    record = json.loads((out / "result.json").read_text())
    del record["keep_rule"]
    (out / "result.json").write_text(json.dumps(record))
    (out / "keep.json").write_text(json.dumps({**good, "keys": good["keys"][:1]}))  # what an old rule kept
    capsys.readouterr()
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 0
    assert "made by an earlier rule; rebuilding it (greedy)" in capsys.readouterr().err
    assert json.loads((out / "keep.json").read_text()) == good
    assert json.loads((out / "result.json").read_text())["keep_rule"] == "greedy"


def test_dedup_cli_refuses_data_rewritten_in_place(tmp_path, tmp_npz, digits, capsys):
    """Cached embeddings and groups belong to the pixels, not the path."""
    data, images = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 0
    with np.load(data) as z:
        labels = z["labels"]
    np.savez(data, images=images[::-1], labels=labels[::-1])
    capsys.readouterr()
    assert main(["dedup", "--data", str(data), "--out", str(out), "--embedder", "phash"]) == 2
    err = capsys.readouterr().err
    assert "the contents of --data (was " in err and "data_digest" not in err


def test_dedup_cli_resumes_from_embedding_chunks(tmp_path, tmp_npz, digits):
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out), "--batch-size", "16"]) == 0
    chunks = sorted((out / "embeddings").glob("chunk-*.npy"))
    assert len(chunks) == 3
    first = json.loads((out / "result.json").read_text())
    # a run killed after embedding: result gone, chunks kept -> the re-run reuses them and agrees
    (out / "result.json").unlink()
    stamp = [c.stat().st_mtime_ns for c in chunks]
    assert main(["dedup", "--data", str(data), "--out", str(out), "--batch-size", "16"]) == 0
    assert [c.stat().st_mtime_ns for c in chunks] == stamp
    assert json.loads((out / "result.json").read_text())["groups"] == first["groups"]


def test_dedup_cli_unknown_clip_model_is_a_user_error(tmp_path, tmp_npz, digits, capsys):
    data, _ = _planted_npz(tmp_npz, digits)
    rc = main(["dedup", "--data", str(data), "--out", str(tmp_path / "o"), "--embedder", "clip", "--clip-model", str(tmp_path / "none")])
    assert rc == 2
    assert "not available locally" in capsys.readouterr().err


@pytest.mark.parametrize("color,dim", [("gray", 65), ("rgb", 193), ("ycc", 97)])
def test_pixel_colour_options(color, dim, digits):
    from diffaudit.defenses.embedders import get_embedder

    e = get_embedder("pixel", color=color)
    assert e.embed(digits.images[:3]).shape == (3, dim) == (3, e.dim)


def test_dedup_cli_data_cache_streams_the_dataset_and_agrees(tmp_path, tmp_npz, digits, monkeypatch):
    """--data-cache: the images are decoded once into .npy parts and embedded batch by batch from
    there (never read whole); groups, keep list and the deduplicated npz equal the in-memory run."""
    from diffaudit.data import ShardedImages

    data, images = _planted_npz(tmp_npz, digits)
    assert main(["dedup", "--data", str(data), "--out", str(tmp_path / "mem"), "--batch-size", "16"]) == 0

    def refuse(self, *a, **k):
        raise AssertionError("the whole dataset was read into memory")

    with monkeypatch.context() as m:
        m.setattr(ShardedImages, "__array__", refuse)
        assert main(["dedup", "--data", str(data), "--out", str(tmp_path / "disk"), "--batch-size", "16",
                     "--data-cache", str(tmp_path / "cache")]) == 0
    assert len(list((tmp_path / "cache").iterdir())) == 1
    mem, disk = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("mem", "disk"))
    assert disk["groups"] == mem["groups"] and disk["duplicate_count"] == mem["duplicate_count"]
    assert disk["settings"] == mem["settings"]  # where the pixels were decoded is not a setting
    assert (tmp_path / "disk" / "keep.json").read_text() == (tmp_path / "mem" / "keep.json").read_text()
    kept = tmp_path / "kept.npz"  # the resumed run writes the kept images from the cache
    assert main(["dedup", "--data", str(data), "--out", str(tmp_path / "disk"), "--batch-size", "16",
                 "--data-cache", str(tmp_path / "cache"), "--write-deduped", str(kept)]) == 0
    with np.load(kept) as z:
        np.testing.assert_array_equal(z["images"], images[json.loads((tmp_path / "mem" / "keep.json").read_text())["indices"]])


def test_dedup_cli_keep_list_names_the_kept_duplicate_of_each_removed_image(tmp_path, tmp_npz, digits, capsys):
    """keep.json, result.json and the deduplicated npz agree: every removed key has a kept near-duplicate."""
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["--json", "dedup", "--data", str(data), "--out", str(out)]) == 0
    r = json.loads(capsys.readouterr().out)
    keep = json.loads((out / "keep.json").read_text())
    assert len(keep["removed_duplicate_of"]) == len(keep["removed_keys"]) == r["n_removed"] > 0
    assert set(keep["removed_duplicate_of"]) <= set(keep["keys"])
    assert dict(zip(keep["removed_keys"], keep["removed_duplicate_of"]))["npz:40"] == "npz:3"
    assert sorted(i for g in r["groups"] for i in g["kept"]) == sorted(
        i for i in keep["indices"] if any(i in g["members"] for g in r["groups"]))
    with np.load(out / "edges.npz") as z:
        edges = {tuple(p) for p in z["pairs"].tolist()}
    index = {f"npz:{i}": i for i in range(44)}
    for a, b in zip(keep["removed_keys"], keep["removed_duplicate_of"]):
        assert tuple(sorted((index[a], index[b]))) in edges


def test_dedup_cli_seed_is_a_setting_of_ivf_only(tmp_path, tmp_npz, digits, capsys):
    """Reviewer: --seed (the IVF k-means) was not recorded, so a resume with another seed returned the old run."""
    data, _ = _planted_npz(tmp_npz, digits)
    ivf = ["dedup", "--data", str(data), "--out", str(tmp_path / "ivf"), "--index", "ivf", "--nlist", "4", "--nprobe", "1"]
    assert main(ivf + ["--seed", "0"]) == 0
    assert json.loads((tmp_path / "ivf" / "result.json").read_text())["ivf_cells"] == 4  # the cells it used
    capsys.readouterr()
    assert main(ivf + ["--seed", "7"]) == 2
    assert "seed (was 0, now 7)" in capsys.readouterr().err
    assert main(ivf + ["--seed", "0"]) == 0 and "already finished" in capsys.readouterr().out
    flat = ["dedup", "--data", str(data), "--out", str(tmp_path / "flat")]  # exact: the seed changes nothing
    assert main(flat + ["--seed", "0"]) == 0
    capsys.readouterr()
    assert main(flat + ["--seed", "7"]) == 0 and "already finished" in capsys.readouterr().out
    assert "seed" not in json.loads((tmp_path / "flat" / "settings.json").read_text())["settings"]
    # an IVF folder finished before the seed was recorded: its result's seeds say which seed it ran with
    record = json.loads((tmp_path / "ivf" / "settings.json").read_text())
    del record["settings"]["seed"]
    (tmp_path / "ivf" / "settings.json").write_text(json.dumps(record))
    assert main(ivf + ["--seed", "7"]) == 2
    assert main(ivf + ["--seed", "0"]) == 0 and "already finished" in capsys.readouterr().out


@pytest.mark.parametrize("argv,says", [
    (["--k", "5"], "--k is for --index hnsw, and --index is flat: drop --k or pass --index hnsw"),
    (["--index", "hnsw", "--nprobe", "4"], "--nprobe is for --index ivf, and --index is hnsw"),
    (["--embedder", "phash", "--pixel-size", "4"], "--pixel-size is for --embedder pixel, and --embedder is phash: drop --pixel-size"),
    (["--embedder", "phash", "--pixel-color", "rgb"], "--pixel-color is for --embedder pixel"),
    (["--clip-model", "x"], "--clip-model is for --embedder clip, and --embedder is pixel"),
])
def test_dedup_cli_refuses_options_the_chosen_index_or_embedder_does_not_read(tmp_path, tmp_npz, digits, capsys, argv, says):
    """They ran as if not given (`--k 5` with the exact flat search exited 0 with no notice)."""
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out)] + argv) == 2
    assert says in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("argv,flag", [
    (["--index", "hnsw", "--k", "0"], "--k"),
    (["--index", "ivf", "--nprobe", "0"], "--nprobe"),
    (["--index", "ivf", "--nlist", "0"], "--nlist"),
    (["--nprobe", "-2"], "--nprobe"),
])
def test_dedup_cli_refuses_non_positive_search_options(tmp_path, tmp_npz, digits, capsys, argv, flag):
    """Reviewer: --k 0 ended in an AssertionError, --nprobe 0 in a faiss RuntimeError (and --nlist 0 was
    silently the default): a clear error now, before any output folder is made."""
    data, _ = _planted_npz(tmp_npz, digits)
    out = tmp_path / "dd"
    assert main(["dedup", "--data", str(data), "--out", str(out)] + argv) == 2
    assert f"{flag} must be a whole number of at least 1" in capsys.readouterr().err
    assert not out.exists()
    if flag == "--k":  # one neighbour is the image itself: "0 near-duplicate groups" whatever the data
        assert main(["dedup", "--data", str(data), "--out", str(out), "--index", "hnsw", "--k", "1"]) == 2
        assert "--k must be at least 2: each image is its own nearest neighbour" in capsys.readouterr().err
        assert not out.exists()


def test_a_membership_column_trained_with_dedup_records_only_copies_of_its_own_images(tmp_path, tmp_npz, digits):
    """A shadow trains on its column of the keep list; the dropped near-duplicates it holds copies of are
    those whose kept near-duplicate it trained on, not every image the keep list removed."""
    from diffaudit.data import load_dataset
    from diffaudit.data.membership import save_membership

    data, _ = _planted_npz(tmp_npz, digits)
    assert main(["--quiet", "dedup", "--data", str(data), "--out", str(tmp_path / "dd")]) == 0
    keep = json.loads((tmp_path / "dd" / "keep.json").read_text())
    partner = dict(zip(keep["removed_keys"], keep["removed_duplicate_of"]))
    assert partner["npz:40"] == "npz:3" and partner["npz:41"] == "npz:7"
    keys = load_dataset(str(data)).keys
    column = np.zeros((len(keys), 2), bool)
    column[:, 0] = [k not in ("npz:7", "npz:11") for k in keys]  # trains on #3, not on #7 or #11
    column[:, 1] = ~column[:, 0]
    save_membership(tmp_path / "m.npz", column, keys, 0)
    assert main(["--quiet", "train", "--data", str(data), "--membership", str(tmp_path / "m.npz"), "--model-index", "0",
                 "--dedup", str(tmp_path / "dd" / "keep.json"), "--steps", "2", "--batch-size", "8",
                 "--checkpoint-every", "2", "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    copies = json.loads((tmp_path / "run" / "dropped_duplicates.json").read_text())["keys"]
    assert set(copies) == {k for k, p in partner.items() if p not in ("npz:7", "npz:11")} and "npz:40" in copies


def test_a_model_trained_on_a_deduped_npz_audited_against_the_original_data_says_how(tmp_path, capsys):
    """Its examples are npz:<row>, not the original keys: the refusal names both ways out."""
    deduped = tmp_path / "kept.npz"
    assert main(["--quiet", "dedup", "--data", "digits", "--subset", "40", "--out", str(tmp_path / "dd"),
                 "--write-deduped", str(deduped)]) == 0
    assert main(["--quiet", "train", "--data", str(deduped), "--preset", "tiny", "--steps", "2", "--batch-size", "8",
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["mia", "--target", str(tmp_path / "run"), "--attack", "loss", "--data", "digits", "--subset", "40",
                 "--device", "cpu", "--out", str(tmp_path / "mia")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "(first: 'npz:0')" in err and f"(it was trained on --data {deduped}" in err
    assert "is a deduplicated .npz (`dedup --write-deduped`)" in err and "`train --dedup KEEP.json`" in err


def test_a_pixel_size_beyond_the_images_is_said(tmp_path, capsys):
    """--pixel-size 16 on 8x8 digits upsampled them without a word: now a warning naming a size that fits;
    none at a size that does."""
    assert main(["--quiet", "dedup", "--data", "digits", "--subset", "40", "--pixel-size", "16",
                 "--out", str(tmp_path / "a")]) == 0
    assert capsys.readouterr().err == ("diffaudit dedup: warning: --pixel-size 16 exceeds the 8x8 images of --data: they "
                                       "are upsampled, which adds no detail; --pixel-size 8 or less compares them at "
                                       "their own size\n")
    assert main(["--quiet", "dedup", "--data", "digits", "--subset", "40", "--pixel-size", "8",
                 "--out", str(tmp_path / "b")]) == 0
    assert capsys.readouterr().err == ""


def test_the_same_data_named_as_its_shards_resumes(cifar10_root, tmp_path, capsys):
    """`--data cifar10-test`, then the quoted glob of its shard: the same images (one digest), so the finished
    run answers as finished, where it was refused as other settings (--data)."""
    out = tmp_path / "dd"
    argv = ["dedup", "--subset", "30", "--embedder", "pixel", "--out", str(out)]
    assert main([*argv, "--data", "cifar10-test"]) == 0
    before = (out / "result.json").stat().st_mtime_ns
    capsys.readouterr()
    assert main([*argv, "--data", str(cifar10_root / "cifar10-test-*.tar")]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "result.json").stat().st_mtime_ns == before
