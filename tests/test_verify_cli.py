"""``diffaudit verify`` in-process: result fields, baseline, --from-extract, train map, resume, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from diffaudit.cli.main import main
from helpers import cifar_images, noisy_copies, strict_json

EXTRACTED_FIELDS = {"sample", "train_id", "train_key", "l2", "ratio", "eidetic_k"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("verify")
    train = cifar_images(200, "train")
    train[150] = train[5]  # a duplicated training image
    test = cifar_images(500, "test")
    np.savez(d / "train.npz", images=train)
    np.savez(d / "unseen.npz", images=test[200:500])  # 300 >= 200: subset to an equal size
    unc = np.concatenate([noisy_copies(train[5], 12, 1), test[:60], noisy_copies(train[42], 11, 2)])
    np.savez(d / "unc.npz", images=unc)
    cond = np.concatenate([noisy_copies(train[17], 12, 3), test[60:72]])
    np.savez(d / "cond.npz", images=cond, prompts=np.array(["memorized"] * 12 + ["fresh"] * 12))
    (d / "map.json").write_text(json.dumps({"memorized": ["npz:17"], "fresh": [60]}))
    np.savez(d / "small.npz", images=cifar_images(10, "train")[:, :16, :16])
    return d


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


def test_unconditional_ratio_rule_with_baseline(files, tmp_path, capsys):
    out = tmp_path / "v"
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline",
               files / "unseen.npz", "--out", out, "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert r["command"] == "verify" and r["rule"] == "ratio" and r["n_samples"] == 83 and r["n_train"] == 200
    assert r["unique_extracted"] == 2 and r["n_extracting_samples"] == 23
    for e in r["extracted"]:
        assert EXTRACTED_FIELDS <= e.keys()
    first, second = r["extracted"]
    assert first["sample"] == "npz:0" and first["train_id"] in (5, 150) and first["eidetic_k"] == 2
    assert second["train_id"] == 42 and second["train_key"] == "npz:42"
    assert r["baseline"]["n_images"] == 200 and r["baseline"]["equal_size"]
    # the false-positive baseline: unseen images "extracted" by chance (here at most one CIFAR-10 test image
    # with a close look-alike among the other test images, never a near-copy)
    assert r["baseline_unique_extracted"] <= 1 < r["unique_extracted"]
    assert all(e["l2"] > 0.05 for e in r["baseline"]["extracted"])
    assert r["fid"] == "not computed"
    with np.load(out / "per_sample.npz", allow_pickle=False) as z:
        assert z["extracted"].sum() == 23 and len(z["sample"]) == 83
    # resume: finished work is reported, not redone
    before = (out / "result.json").read_bytes()
    assert main(["verify", "--samples", str(files / "unc.npz"), "--data", str(files / "train.npz"), "--baseline",
                 str(files / "unseen.npz"), "--out", str(out), "--device", "cpu"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "result.json").read_bytes() == before
    # --delta changes nothing under the ratio rule (no --train-map): the same run, also where an earlier version
    # recorded it (was refused: "--delta (was 0.15, now 0.2)")
    again = ["verify", "--samples", str(files / "unc.npz"), "--data", str(files / "train.npz"), "--baseline",
             str(files / "unseen.npz"), "--out", str(out), "--device", "cpu", "--delta", "0.2"]
    assert main(again) == 0 and (out / "result.json").read_bytes() == before
    record = strict_json(out / "settings.json")
    assert record["settings"]["delta"] is None
    record["settings"]["delta"] = 0.15
    (out / "settings.json").write_text(json.dumps(record))
    assert main(again) == 0 and (out / "result.json").read_bytes() == before


def test_cached_neighbours_reused_after_interruption(files, tmp_path):
    out = tmp_path / "v"
    argv = ["verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--out", out, "--device", "cpu"]
    assert run(*argv) == 0
    first = strict_json(out / "result.json")
    (out / "result.json").unlink()  # as if killed after the neighbour search
    chunk = next((out / "knn").iterdir())
    stamp = chunk.stat().st_mtime_ns
    assert run(*argv) == 0
    assert chunk.stat().st_mtime_ns == stamp  # loaded, not recomputed
    assert strict_json(out / "result.json")["extracted"] == first["extracted"]


def test_resume_refuses_another_baseline_seed_or_other_medoids(files, tmp_path, capsys):
    """A folder's cached neighbours belong to its baseline pick and its medoids: resuming it with
    another --seed (another equal-size pick) or an extract result rewritten with other medoids is a
    settings mismatch, not a silent reuse."""
    out = tmp_path / "v"
    base = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", files / "unseen.npz",
            "--out", out, "--device", "cpu")
    assert run(*base) == 0
    (out / "result.json").unlink()  # as if killed after the neighbour searches
    capsys.readouterr()
    assert run(*base, "--seed", "1") == 2
    assert "--seed, which picks the equal-size --baseline (was 0, now 1)" in capsys.readouterr().err
    assert run(*base) == 0  # the same seed resumes

    ex = tmp_path / "ex"
    assert run("extract", "--samples", files / "unc.npz", "--out", ex, "--device", "cpu", "--k-neighbors", "16") == 0
    vargs = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--from-extract", ex / "result.json",
             "--out", tmp_path / "vx", "--device", "cpu")
    assert run(*vargs) == 0
    r = json.loads((ex / "result.json").read_text())
    r["groups"][0]["medoid"] = "npz:30"  # the extract result rewritten in place: another medoid
    (ex / "result.json").write_text(json.dumps(r))
    capsys.readouterr()
    assert run(*vargs) == 2
    assert "the medoids --from-extract flags (was " in capsys.readouterr().err


def test_from_extract_verifies_flagged_medoids(files, tmp_path):
    ex = tmp_path / "ex"
    assert run("extract", "--samples", files / "unc.npz", "--out", ex, "--device", "cpu", "--k-neighbors", "16") == 0
    out = tmp_path / "v"
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--from-extract",
               ex / "result.json", "--out", out, "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert r["n_samples"] == 2 and r["n_samples_total"] == 83 and len(r["verified_medoids"]) == 2
    assert sorted(e["train_id"] for e in r["extracted"]) in ([5, 42], [42, 150])
    for e in r["extracted"]:  # positions in --samples, not among the two medoids verified
        assert e["sample"] == f"npz:{e['sample_index']}"
    assert max(e["sample_index"] for e in r["extracted"]) > 1


def test_conditional_l2_rule_and_prompt_map(files, tmp_path):
    out = tmp_path / "v"
    assert run("verify", "--samples", files / "cond.npz", "--data", files / "train.npz", "--train-map",
               files / "map.json", "--out", out, "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert r["rule"] == "l2" and r["rule_reason"] == "--rule auto: generations with text prompts"
    assert r["unique_extracted"] >= 1 and r["extracted"][0]["train_id"] == 17
    checks = r["prompt_checks"]
    assert len(checks) == 24 and r["prompt_checks_extracted"] == 12
    assert all(c["extracted"] == (c["prompt"] == "memorized") for c in checks)


@pytest.mark.parametrize("kind, rule, why", [("pixel", "ratio", "pixel-space model"),
                                             ("stable-diffusion", "l2", "Stable Diffusion pipeline")])
def test_auto_rule_follows_the_model_kind_a_store_records(files, tmp_path, kind, rule, why):
    from diffaudit.store import SampleStore, fill_store

    with np.load(files / "cond.npz", allow_pickle=False) as z:
        images = z["images"]
    store = SampleStore.create(tmp_path / "s", settings={"seed": 0, "kind": kind}, prompts=["0", "1"], per_prompt=12,
                               image_shape=images.shape[1:], shard_size=24)
    fill_store(store, lambda seeds, prompts: images[:len(seeds)])
    out = tmp_path / "v"
    assert run("verify", "--samples", store.path, "--data", files / "train.npz", "--out", out, "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert r["rule"] == rule and r["rule_reason"] == f"--rule auto: generations of a {why}"


def test_auto_rule_takes_the_ratio_rule_for_class_index_prompts(files, tmp_path):
    with np.load(files / "cond.npz", allow_pickle=False) as z:
        np.savez(tmp_path / "classes.npz", images=z["images"], prompts=np.array(["3"] * 12 + ["7"] * 12))
    out = tmp_path / "v"
    assert run("verify", "--samples", tmp_path / "classes.npz", "--data", files / "train.npz", "--out", out,
               "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert r["rule"] == "ratio" and r["rule_reason"] == "--rule auto: generations whose prompts are class indices"


@pytest.mark.parametrize("argv,message", [
    (["--delta", "0"], "--delta must be in (0, 1]"),
    (["--eidetic-delta", "3"], "--eidetic-delta must be in (0, 1]"),
    (["--n-neighbors", "0"], "--n-neighbors must be in [1, 1000]"),
])
def test_threshold_errors(files, tmp_path, capsys, argv, message):
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--out", tmp_path / "x", *argv) == 2
    assert message in capsys.readouterr().err


def test_shape_and_input_errors(files, tmp_path, capsys):
    assert run("verify", "--samples", files / "small.npz", "--data", files / "train.npz", "--out", tmp_path / "a") == 2
    assert "--samples images are (16, 16, 3)" in capsys.readouterr().err
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--out", tmp_path / "b",
               "--from-extract", files / "map.json") == 2
    assert "not a result.json of `diffaudit extract`" in capsys.readouterr().err
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--out", tmp_path / "c",
               "--train-map", files / "map.json") == 2
    assert "needs samples with prompts" in capsys.readouterr().err


def test_data_cache_gives_the_same_result_without_reading_the_training_set_whole(files, tmp_path, monkeypatch):
    """--data-cache decodes --data and --baseline into .npy parts; with the device cache budget at 0
    the training set is streamed part by part (never read whole), and the answer is the in-memory one."""
    import diffaudit.data.decoded as decoded
    import diffaudit.distances.knn as knn
    from diffaudit.data import ShardedImages

    common = ("--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", files / "unseen.npz",
              "--device", "cpu")
    assert run("verify", *common, "--out", tmp_path / "mem") == 0
    monkeypatch.setattr(knn, "default_cache_bytes", lambda device: 0)

    def refuse(self, *a, **k):
        raise AssertionError("the whole training set was read into memory")

    monkeypatch.setattr(ShardedImages, "__array__", refuse)
    cache = tmp_path / "cache"
    assert run("verify", *common, "--data-cache", cache, "--out", tmp_path / "disk") == 0
    mem, disk = (json.loads((tmp_path / d / "result.json").read_text()) for d in ("mem", "disk"))
    for field in ("n_train", "unique_extracted", "n_extracting_samples", "extracted", "baseline_unique_extracted"):
        assert disk[field] == mem[field], field
    assert disk["unique_extracted"] == 2 and "data_cache" not in disk["settings"]
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 2  # --data and --baseline
    monkeypatch.setattr(decoded, "iter_decoded", lambda *a, **k: pytest.fail("the cache was decoded again"))
    assert run("verify", *common, "--data-cache", cache, "--out", tmp_path / "again") == 0


def test_resume_refuses_samples_regenerated_in_place(files, tmp_path, capsys):
    """The neighbours cached in --out belong to the generations: an .npz rewritten at the same path,
    or a sample store made again with another seed, is a settings mismatch, never a silent reuse;
    the same generations (even a store reopened unchanged) resume."""
    from helpers import make_tiny_model_dir

    samples = tmp_path / "gen.npz"
    unc = np.load(files / "unc.npz")["images"]
    np.savez(samples, images=unc)
    out = tmp_path / "v"
    args = ("verify", "--samples", samples, "--data", files / "train.npz", "--out", out, "--device", "cpu")
    assert run(*args) == 0
    (out / "result.json").unlink()
    np.savez(samples, images=unc)  # rewritten, same pixels: the same generations
    assert run(*args) == 0
    (out / "result.json").unlink()
    np.savez(samples, images=unc[::-1])
    capsys.readouterr()
    assert run(*args) == 2 and "the contents of --samples (was " in capsys.readouterr().err

    model = make_tiny_model_dir(tmp_path / "model", image_size=8, channels=3)
    store = tmp_path / "store"
    train8 = tmp_path / "train8.npz"
    np.savez(train8, images=np.load(files / "train.npz")["images"][:, :8, :8])
    for seed, want in (("0", 0), ("0", 0), ("1", 2)):
        assert run("sample", "--model", model, "--n", "12", "--steps", "2", "--out", store, "--seed", seed, "--device", "cpu",
                   *(("--fresh",) if seed == "1" else ())) == 0
        capsys.readouterr()
        vx = ("verify", "--samples", store, "--data", train8, "--out", tmp_path / "vs", "--device", "cpu")
        assert run(*vx) == want
        if want:
            assert "the contents of --samples (was " in capsys.readouterr().err


def test_resume_refuses_data_or_baseline_rewritten_in_place(files, tmp_path, capsys):
    """--data and --baseline are recorded by their pixels as well as their paths: a training set or a
    baseline rewritten at the same path is a settings mismatch (the cached neighbours are of the old
    images); the same pixels written again resume."""
    train, unseen = tmp_path / "train.npz", tmp_path / "unseen.npz"
    images, other = np.load(files / "train.npz")["images"], np.load(files / "unseen.npz")["images"]
    np.savez(train, images=images)
    np.savez(unseen, images=other)
    out = tmp_path / "v"
    args = ("verify", "--samples", files / "unc.npz", "--data", train, "--baseline", unseen, "--out", out, "--device", "cpu")
    assert run(*args) == 0
    (out / "result.json").unlink()
    np.savez(train, images=images)
    assert run(*args) == 0
    for path, arr, field in ((train, images, "the contents of --data (was "), (unseen, other, "the contents of --baseline (was ")):
        changed = arr.copy()
        changed[0, 0, 0, 0] ^= 1  # one pixel of one image
        np.savez(path, images=changed)
        capsys.readouterr()
        assert run(*args) == 2
        assert field in capsys.readouterr().err
        np.savez(path, images=arr)
    assert run(*args) == 0


def test_from_extract_refuses_an_extract_made_from_other_samples(files, tmp_path, capsys):
    """Generation ids (npz:i, p0-iN) exist in every input of that size: an extract result of other
    generations must be refused, naming both samples identities, not verified in the wrong samples."""
    ex = tmp_path / "ex"
    assert run("extract", "--samples", files / "unc.npz", "--out", ex, "--device", "cpu", "--k-neighbors", "16") == 0
    recorded = strict_json(ex / "result.json")["settings"]["samples_identity"]
    other = tmp_path / "other.npz"
    with np.load(files / "unc.npz") as z:
        np.savez(other, images=z["images"][::-1].copy())  # same size, same ids, other generations
    out = tmp_path / "v"
    capsys.readouterr()
    assert run("verify", "--samples", other, "--data", files / "train.npz", "--from-extract", ex / "result.json",
               "--out", out, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert "--from-extract" in err and "other generations" in err and recorded in err
    assert str(files / "unc.npz") in err and str(other) in err
    assert not out.exists()  # refused before anything was recorded


def test_from_extract_without_a_recorded_identity_warns(files, tmp_path, capsys):
    """An extract result of an earlier version records no samples identity: used, with a warning."""
    ex = tmp_path / "ex"
    assert run("extract", "--samples", files / "unc.npz", "--out", ex, "--device", "cpu", "--k-neighbors", "16") == 0
    old = tmp_path / "old.json"
    r = json.loads((ex / "result.json").read_text())
    del r["settings"]["samples_identity"]
    old.write_text(json.dumps(r))
    capsys.readouterr()
    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--from-extract", old,
               "--out", tmp_path / "v", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "does not record which generations" in err
    assert strict_json(tmp_path / "v" / "result.json")["n_samples"] == 2


def test_missing_samples_names_the_flag_and_what_samples_are(files, tmp_path, capsys):
    assert run("verify", "--samples", "nope", "--data", files / "train.npz", "--out", tmp_path / "v") == 2
    err = capsys.readouterr().err
    assert "--samples nope" in err and "sample store" in err and ".npz" in err and "image folder" in err
    assert "built-in name" not in err
    assert run("verify", "--samples", tmp_path / "gone.npz", "--data", files / "train.npz", "--out", tmp_path / "w") == 2
    assert f"--samples {tmp_path / 'gone.npz'}" in capsys.readouterr().err


def test_auto_rule_keeps_the_rule_an_older_folder_recorded(files, tmp_path):
    """An earlier version's --rule auto chose l2 for class-index prompts; re-run as it was, that folder
    resumes with l2 instead of being refused for a flag the user did not change."""
    with np.load(files / "cond.npz", allow_pickle=False) as z:
        np.savez(tmp_path / "classes.npz", images=z["images"], prompts=np.array(["3"] * 12 + ["7"] * 12))
    argv = ["verify", "--samples", tmp_path / "classes.npz", "--data", files / "train.npz", "--out", tmp_path / "v",
            "--device", "cpu"]
    assert run(*argv, "--rule", "l2") == 0  # the rule an earlier version recorded for --rule auto
    (tmp_path / "v" / "result.json").unlink()  # unfinished: the resume goes through the whole command
    assert run(*argv) == 0
    r = strict_json(tmp_path / "v" / "result.json")
    assert r["rule"] == "l2" and r["rule_reason"] == "--rule auto: the rule this --out recorded when it was made"
    # a resume whose recorded rule is the one auto chooses now writes what an uninterrupted run writes
    plain = [a if a != tmp_path / "v" else tmp_path / "w" for a in argv]
    assert run(*plain) == 0
    first = strict_json(tmp_path / "w" / "result.json")
    (tmp_path / "w" / "result.json").unlink()
    assert run(*plain) == 0
    assert strict_json(tmp_path / "w" / "result.json")["rule_reason"] == first["rule_reason"] != r["rule_reason"]


def test_baseline_images_also_in_the_training_set_are_left_out(files, tmp_path, capsys):
    """A "never seen" baseline holding training images (here two the generations copy) would count them as
    false positives: they are left out, named in the result, and the equal-size pick is made from the rest."""
    with np.load(files / "train.npz", allow_pickle=False) as z:
        train = z["images"]
    unseen = cifar_images(500, "test")[200:400]
    np.savez(tmp_path / "mixed.npz", images=np.concatenate([unseen, train[[5, 42, 7]]]))  # 203 images
    out = tmp_path / "v"
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", tmp_path / "mixed.npz",
            "--out", out, "--device", "cpu")
    assert main(list(map(str, argv))) == 0
    assert "3 of the 203 images of --baseline are also in --data, pixel for pixel" in capsys.readouterr().err
    r = strict_json(out / "result.json")
    b = r["baseline"]
    assert b["n_left_out"] == 3 and b["n_images"] == 200 and b["equal_size"]
    assert b["left_out"] == [{"baseline_key": "npz:200", "train_key": "npz:5"},
                             {"baseline_key": "npz:201", "train_key": "npz:42"},
                             {"baseline_key": "npz:202", "train_key": "npz:7"}]
    assert r["baseline_unique_extracted"] <= 1 < r["unique_extracted"] == 2  # counted, 5 and 42 would make it >= 2
    assert all(not e["train_key"] in ("npz:200", "npz:201") for e in b["extracted"])
    assert strict_json(out / "settings.json")["settings"]["baseline_left_out"] == 3
    assert run("report", out) == 0
    assert strict_json(out / "summary.json")["extraction"]["baseline_n_left_out"] == 3
    page = re.sub(r"<[^>]+>", "", (out / "report.html").read_text())
    assert "3 --baseline images also in the training set, pixel for pixel, left out" in page

    assert run("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline",
               files / "train.npz", "--out", tmp_path / "same") == 2
    err = capsys.readouterr().err
    assert "every one of its 200 images is also in --data" in err and "never saw" in err
    assert not (tmp_path / "same").exists()


def test_an_older_folder_with_a_baseline_resumes(files, tmp_path):
    """Folders made before baseline images were checked against --data recorded no ``baseline_left_out``:
    one whose baseline shares no image with --data resumes as it was."""
    out = tmp_path / "v"
    argv = ("verify", "--samples", files / "unc.npz", "--data", files / "train.npz", "--baseline", files / "unseen.npz",
            "--out", out, "--device", "cpu")
    assert run(*argv) == 0
    first = strict_json(out / "result.json")
    record = json.loads((out / "settings.json").read_text())
    del record["settings"]["baseline_left_out"]
    (out / "settings.json").write_text(json.dumps(record))
    (out / "result.json").unlink()
    assert run(*argv) == 0
    assert strict_json(out / "result.json")["baseline"] == first["baseline"]


def test_a_baseline_smaller_than_the_training_set_is_said(files, tmp_path, capsys):
    np.savez(tmp_path / "few.npz", images=cifar_images(500, "test")[200:250])
    assert main(["verify", "--samples", str(files / "unc.npz"), "--data", str(files / "train.npz"), "--baseline",
                 str(tmp_path / "few.npz"), "--out", str(tmp_path / "v"), "--device", "cpu"]) == 0
    assert "the baseline (--baseline) is 50 images never seen against 200 training images" in capsys.readouterr().err
    assert strict_json(tmp_path / "v" / "result.json")["baseline"]["equal_size"] is False
