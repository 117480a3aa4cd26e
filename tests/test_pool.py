"""``diffaudit pool``: several models' sample stores read as one set of generations, and verify's unique
count over all of them (paper §5.1: each training image once, at its first generation)."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from diffaudit.attacks.extraction.verification import VerifySettings, by_member, verify
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data.sharded import ShardedImages
from diffaudit.store import SampleStore, read_samples, samples_identity
from diffaudit.store.pool import SamplePool, split_pooled_id
from helpers import cifar_images, finished_store, noisy_copies, strict_json


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Three models' stores: A copies training images 5 and 42, B copies 5 and 77, C copies none."""
    d = tmp_path_factory.mktemp("pool")
    train = cifar_images(200, "train")
    test = cifar_images(120, "test")
    np.savez(d / "train.npz", images=train)
    a = np.concatenate([noisy_copies(train[5], 6, 1), test[:20], noisy_copies(train[42], 6, 2)])
    b = np.concatenate([test[20:40], noisy_copies(train[77], 6, 3), noisy_copies(train[5], 6, 4)])
    c = test[40:72]
    for name, images, seed in (("a", a, 1), ("b", b, 2), ("c", c, 3)):
        finished_store(d / name, images, seed=seed)
    np.savez(d / "all.npz", images=np.concatenate([a, b, c]))
    return d


def test_a_pool_reads_as_its_members_one_after_another(models, tmp_path, capsys):
    assert run("pool", "--samples", models / "a", models / "b", models / "c", "--out", tmp_path / "p") == 0
    assert main(["pool", "--samples", *(str(models / m) for m in "abc"), "--out", str(tmp_path / "p")]) == 0
    again = capsys.readouterr().out.strip().splitlines()[-1]  # said once, not in a second pair of brackets
    assert again.endswith(f"over all of them (already finished in {tmp_path / 'p'})") and "))" not in again
    r = strict_json(tmp_path / "p" / "result.json")
    assert r["command"] == "pool" and r["n_members"] == 3 and r["n_generations"] == 96
    assert [m["n_generations"] for m in r["members"]] == [32, 32, 32] and [m["seed"] for m in r["members"]] == [1, 2, 3]
    lazy, eager = read_samples(str(tmp_path / "p"), lazy=True), read_samples(str(tmp_path / "p"))
    assert isinstance(lazy.images, ShardedImages)
    with np.load(models / "all.npz") as z:
        assert np.array_equal(np.asarray(lazy.images), z["images"]) and np.array_equal(eager.images, z["images"])
    assert lazy.keys[:2] == ["m0:p0-i0", "m0:p0-i1"] and lazy.keys[32] == "m1:p0-i0" and lazy.keys[-1] == "m2:p0-i31"
    assert split_pooled_id("m2:p0-i31") == (2, "p0-i31") and split_pooled_id("p0-i31") is None
    assert r["samples_identity"] == samples_identity(str(tmp_path / "p")) != samples_identity(str(models / "a"))
    assert r["samples_identity"].startswith("pool:")


def test_verify_of_a_pool_counts_each_training_image_once_over_all_models(models, tmp_path, capsys):
    """The pooled count equals verifying the concatenation of every model's generations, each image credited to
    the first model that extracted it; each model's own count is listed beside it."""
    run("pool", "--samples", models / "a", models / "b", models / "c", "--out", tmp_path / "p")
    assert main(["verify", "--samples", str(tmp_path / "p"), "--data", str(models / "train.npz"), "--out",
                 str(tmp_path / "v"), "--device", "cpu"]) == 0
    pooled = strict_json(tmp_path / "v" / "result.json")
    run("verify", "--samples", models / "all.npz", "--data", models / "train.npz", "--out", tmp_path / "w", "--device", "cpu")
    joined = strict_json(tmp_path / "w" / "result.json")
    assert pooled["unique_extracted"] == joined["unique_extracted"] == 3
    assert [e["train_id"] for e in pooled["extracted"]] == [e["train_id"] for e in joined["extracted"]] == [5, 42, 77]
    assert [e["sample"] for e in pooled["extracted"]] == ["m0:p0-i0", "m0:p0-i26", "m1:p0-i20"]
    assert [e["sample_index"] for e in pooled["extracted"]] == [e["sample_index"] for e in joined["extracted"]]
    members = pooled["pool"]["members"]
    assert [m["samples"] for m in members] == [str(models / n) for n in "abc"]
    assert [m["unique_extracted"] for m in members] == [2, 2, 0]  # each model alone: B's copy of 5 counts for B
    assert [m["first_credited"] for m in members] == [2, 1, 0]  # pooled: 5 is A's, first
    assert sum(m["first_credited"] for m in members) == pooled["unique_extracted"]
    assert [m["n_samples"] for m in members] == [32, 32, 32]
    assert [m["n_extracting_samples"] for m in members] == [12, 12, 0] and pooled["n_extracting_samples"] == 24
    err = capsys.readouterr().err
    assert "pooled over 3 stores: each alone extracts 2, 2, 0 unique images; first extracted by each: 2, 1, 0" in err


def test_a_member_sampled_again_or_moved_is_refused_saying_to_pool_again(models, tmp_path, capsys):
    """A pool lists its stores by path: a store sampled again after pooling (other generations under the same
    name) or moved away is refused when the pool is read, with the command that pools them again; a pool made
    again is other generations to a resumed verify. A relative member written by hand is read from the pool."""
    for name in "ab":
        finished_store(tmp_path / name, np.asarray(read_samples(str(models / name)).images), seed=ord(name))
    run("pool", "--samples", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "p")
    argv = ["verify", "--samples", str(tmp_path / "p"), "--data", str(models / "train.npz"), "--out", str(tmp_path / "v"),
            "--device", "cpu"]
    assert main(["--quiet", *argv]) == 0
    shutil.rmtree(tmp_path / "b")
    finished_store(tmp_path / "b", cifar_images(32, "test"), seed=7)
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "member 1 (" in err and "holds other generations than when it was pooled" in err
    assert f"pool the stores again: diffaudit pool --samples {tmp_path / 'a'} {tmp_path / 'b'} --out" in err
    assert run("pool", "--samples", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "p", "--fresh") == 0
    assert main(argv) == 2 and "--samples" in capsys.readouterr().err  # the finished verify read other generations
    shutil.move(tmp_path / "a", tmp_path / "moved")
    with pytest.raises(DiffauditError, match=r"member 0 \(.*\) cannot be read: .* does not exist .*; a pool reads its "
                                             r"stores where they were pooled: pool them again where they are now"):
        read_samples(str(tmp_path / "p"))
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "pool.json").write_text(json.dumps({"members": ["../moved", "../b"]}))
    assert len(read_samples(str(tmp_path / "q")).keys) == 64


def test_pool_refuses_what_cannot_be_read_as_one_set(models, tmp_path, capsys):
    def refused(*samples) -> str:
        capsys.readouterr()
        assert main(["pool", "--samples", *map(str, samples), "--out", str(tmp_path / "p")]) == 2
        return capsys.readouterr().err

    assert "at least 2 stores" in refused(models / "a")
    assert "nothere-* does not exist" in refused(tmp_path / "nothere-*", models / "a")  # a pattern that matched nothing
    assert "is given twice" in refused(models / "a", models / "b", models / "a")
    small = finished_store(tmp_path / "small", cifar_images(8, "test")[:, :16, :16], seed=5)
    assert "(16, 16, 3) (H, W, C) generations" in refused(models / "a", small.path)
    cond = finished_store(tmp_path / "cond", cifar_images(8, "test"), seed=6, prompts=["a cat", "a dog"])
    assert "all conditional or all unconditional" in refused(models / "a", cond.path)
    half = SampleStore.create(tmp_path / "half", settings={"seed": 8}, prompts=[None], per_prompt=32,
                              image_shape=(32, 32, 3), shard_size=16)
    half.write_shard(0, cifar_images(16, "test"))
    assert "1 of 2 shards are not finished" in refused(models / "a", half.path)
    assert "not a sample store" in refused(models / "a", models / "train.npz")
    assert not (tmp_path / "p").exists()
    run("pool", "--samples", models / "a", models / "b", "--out", tmp_path / "ab")
    assert "is a pool itself; pool its stores instead" in refused(tmp_path / "ab", models / "c")
    assert main(["export", "--samples", str(tmp_path / "ab"), "--out", str(tmp_path / "png")]) == 2
    assert f"is a pool of 2 stores (`diffaudit pool`); export each store to its own folder: {models / 'a'}, " \
           f"{models / 'b'}" in capsys.readouterr().err


def test_stores_sampled_with_one_seed_are_warned_of(models, tmp_path, capsys):
    images = cifar_images(32, "test")
    finished_store(tmp_path / "x", images[:16], seed=4)
    finished_store(tmp_path / "y", images[16:], seed=4)
    assert main(["pool", "--samples", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr()
    assert "2 stores" in out.err and "--seed 4" in out.err and "same noise" in out.err
    assert "pool: 32 generations of 2 stores" in out.out
    # resumed: finished, not written again
    before = (tmp_path / "p" / "result.json").read_bytes()
    assert main(["pool", "--samples", str(tmp_path / "x"), str(tmp_path / "y"), "--out", str(tmp_path / "p")]) == 0
    assert "already finished" in capsys.readouterr().out and (tmp_path / "p" / "result.json").read_bytes() == before
    # other stores into the same folder: refused, naming the flag
    assert main(["pool", "--samples", str(tmp_path / "y"), str(tmp_path / "x"), "--out", str(tmp_path / "p")]) == 2
    assert "--samples" in capsys.readouterr().err


def test_extract_and_a_redacted_report_of_a_pooled_verify(models, tmp_path):
    """extract reads a pool like a store; a report shows its generations (the pool outside the reported folder is
    the one verify recorded), and in a redacted report pooled ids stay as they are: positions, no names."""
    run("pool", "--samples", models / "a", models / "b", models / "c", "--out", tmp_path / "p")
    assert run("extract", "--samples", tmp_path / "p", "--out", tmp_path / "e", "--device", "cpu") == 0
    medoids = [g["medoid"] for g in strict_json(tmp_path / "e" / "result.json").get("groups", [])]
    assert medoids and all(split_pooled_id(m) is not None for m in medoids)
    run("verify", "--samples", tmp_path / "p", "--data", models / "train.npz", "--out", tmp_path / "v", "--device", "cpu")
    assert run("report", tmp_path / "v", "--redact") == 0
    html = (tmp_path / "v" / "report.html").read_text()
    assert re.search(r'data-sample="m[01]:p0-i\d+"', html) and "generation 1" not in html
    assert re.search(r'data-kind="pooled-models">over the generations of 3 models.*each model alone: 2, 2, 0 \(first '
                     r'copied by each: 2, 1, 0\)', html)
    pool = json.loads((tmp_path / "v" / "summary.json").read_text())["extraction"]["pool"]
    assert pool["n_members"] == 3 and [m["first_credited"] for m in pool["members"]] == [2, 1, 0]
    assert str(models) not in html and all(m["samples"].startswith("(path ") for m in pool["members"])
    # not redacted: the pool lies outside the reported folder, and it is the one verify recorded, so its
    # generations are shown beside the training images they copy
    assert run("report", tmp_path / "v", "--no-redact", "--out", tmp_path / "shown.html") == 0
    assert (tmp_path / "shown.html").read_text().count("data:image/png") >= 6
    assert f"name the store: m0 <code>{models / 'a'}</code>, m1 <code>{models / 'b'}</code>" in \
        (tmp_path / "shown.html").read_text()


def test_by_member_checks_its_member_array():
    imgs = cifar_images(8, "train")
    v = verify(imgs[:4], [f"g{i}" for i in range(4)], imgs, [f"t{i}" for i in range(8)], settings=VerifySettings("l2"),
               device="cpu")
    rows = by_member(v, np.array([0, 0, 1, 1]), 2, [f"g{i}" for i in range(4)], imgs, [f"t{i}" for i in range(8)],
                     device="cpu")
    assert [r["unique_extracted"] for r in rows] == [2, 2] and [r["first_credited"] for r in rows] == [2, 2]
    with pytest.raises(DiffauditError, match=r"\(4,\) integers in \[0, 2\)"):
        by_member(v, np.array([0, 0, 2, 1]), 2, [f"g{i}" for i in range(4)], imgs, [f"t{i}" for i in range(8)])
    assert SamplePool.is_pool("s3://bucket/pool") is False


def test_verify_of_a_pool_checks_data_against_every_model_s_training_set(tmp_path, capsys):
    """--data is compared with the union of the pool's models' training sets (each on its own 16 digits): the
    examples none of them trained on are warned of and recorded, as for one model's store."""
    train = ["train", "--data", "digits", "--subset", "16", "--preset", "tiny", "--batch-size", "8", "--steps", "2",
             "--checkpoint-every", "2", "--warmup-steps", "1", "--device", "cpu"]
    for k in range(2):
        assert run(*train, "--subset-seed", k, "--out", tmp_path / f"run{k}") == 0
        assert run("sample", "--model", tmp_path / f"run{k}", "--n", "4", "--steps", "2", "--seed", k,
                   "--out", tmp_path / f"gens{k}", "--device", "cpu") == 0
    keys = [set(json.loads((tmp_path / f"run{k}" / "train_ids.json").read_text())["keys"]) for k in range(2)]
    union = len(keys[0] | keys[1])
    assert run("pool", "--samples", tmp_path / "gens0", tmp_path / "gens1", "--out", tmp_path / "p") == 0
    capsys.readouterr()
    assert main(["verify", "--samples", str(tmp_path / "p"), "--data", "digits", "--out", str(tmp_path / "v"),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"{1797 - union:,} of the 1,797 examples of --data were never trained on by the 2 models that made" in err
    assert "give a --data that holds every pooled model's training images" in err and "it was trained on" not in err
    r = strict_json(tmp_path / "v" / "result.json")
    assert r["data_vs_model"] == {"n_data": 1797, "n_trained": union, "n_not_trained": 1797 - union,
                                  "n_trained_missing": 0}
    assert [m["n_samples"] for m in r["pool"]["members"]] == [4, 4]


def test_compare_of_a_pooled_count_and_one_store_s_says_the_models_differ(models, tmp_path, capsys):
    run("pool", "--samples", models / "a", models / "b", "--out", tmp_path / "p")
    for name, samples in (("pooled", tmp_path / "p"), ("one", models / "a")):
        run("verify", "--samples", samples, "--data", models / "train.npz", "--out", tmp_path / name, "--device", "cpu")
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "pooled"), str(tmp_path / "one"), "--labels", "pooled,one"]) == 0
    err = capsys.readouterr().err
    assert ("pooled and one counted extracted images over the generations of different numbers of models (pooled 2 "
            "models pooled and one one model)") in err
    assert "compare runs that generated as many (audit --n-samples, sample --n or --per-prompt)" in err
