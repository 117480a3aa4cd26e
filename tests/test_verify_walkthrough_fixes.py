"""`diffaudit verify` as a user met it on 8x8 digits: --fid-features checked before the search, a --data that
is not what the model trained on said (and recorded, and reported), `report`'s line on a verify that verified
nothing, settings mismatches named by flag, plurals, and an extract whose sample store was made again.

A tiny model trained 2 steps on `digits --subset 32`, sampled 12 times in 2 steps, all in-process on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli.main import main
from test_report import visible_text

TRAIN = ["train", "--data", "digits", "--subset", "32", "--preset", "tiny", "--batch-size", "8", "--steps", "2",
         "--checkpoint-every", "2", "--warmup-steps", "1", "--device", "cpu"]


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> tuple[Path, Path]:
    """(a run trained on `digits --subset 32`, a sample store of 12 of its generations)."""
    d = tmp_path_factory.mktemp("walk")
    assert run("--quiet", *TRAIN, "--out", d / "run") == 0
    assert run("--quiet", "sample", "--model", d / "run", "--n", "12", "--steps", "2", "--out", d / "store",
               "--device", "cpu") == 0
    return d / "run", d / "store"


@pytest.fixture
def digits_npz(tmp_path) -> Path:
    from diffaudit.data import load_dataset

    np.savez(tmp_path / "gens.npz", images=load_dataset("digits").images[300:330])
    return tmp_path / "gens.npz"


def _bad_fid_files(tmp_path: Path) -> list[tuple[Path, str]]:
    """(--fid-features path, what its error says) for a missing file, a folder, a .json and npz without features."""
    (tmp_path / "feat").mkdir()
    (tmp_path / "feat.json").write_text("{}")
    np.savez(tmp_path / "other.npz", x=np.zeros((4, 2)))
    return [(tmp_path / "nope.npz", "file does not exist"), (tmp_path / "feat", "is a folder"),
            (tmp_path / "feat.json", "not an .npz (zip) archive"), (tmp_path / "other.npz", "expected arrays `samples`")]


def test_fid_features_are_checked_before_the_search(digits_npz, tmp_path, capsys, monkeypatch):
    """A missing or wrong --fid-features was a FileNotFoundError traceback, or refused only after the whole
    nearest-neighbour search: now one line naming the flag, before any search or --out."""
    import diffaudit.cli.verify as verify

    monkeypatch.setattr(verify, "iter_cached_knn", lambda *a, **k: pytest.fail("searched before --fid-features was read"))
    for path, why in _bad_fid_files(tmp_path):
        out = tmp_path / "v"
        assert run("verify", "--samples", digits_npz, "--data", "digits", "--fid-features", path, "--out", out,
                   "--device", "cpu") == 2
        err = capsys.readouterr().err
        assert f"error: --fid-features {path}" in err and why in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out.exists()


def test_data_the_model_never_trained_on_is_warned_recorded_and_reported(model_store, tmp_path, capsys):
    """`--data digits` against a model trained on `digits --subset 32` counted 1,765 never-trained images as
    "training images" silently: now a warning naming the --subset it trained on, counts in result.json and a
    sentence in the report; --data lacking most of the model's training keys is said too."""
    run_dir, store = model_store
    out = tmp_path / "all"
    assert run("verify", "--samples", store, "--data", "digits", "--out", out, "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "warning: 1,765 of the 1,797 examples of --data were never trained on" in err
    assert "(it was trained on --data digits --subset 32)" in err
    # the stage line too (it said "unique training images extracted" above a result line of matches)
    assert "verify: 0 unique --data images matched by 0 of 12 generations" in err and "training images extracted" not in err
    r = json.loads((out / "result.json").read_text())
    assert r["data_vs_model"] == {"n_data": 1797, "n_trained": 32, "n_not_trained": 1765, "n_trained_missing": 0}
    # the result lines call its matches matches, not training images extracted
    untrained = "the model never trained on 1,765 of --data's 1,797 images, so a match to one of them is not memorization"
    assert run("verify", "--samples", store, "--data", "digits", "--out", out, "--device", "cpu") == 0
    line = capsys.readouterr().out
    assert "verify: 0 unique images of --data matched from 12 generations by rule ratio" in line
    assert untrained in line and "training image" not in line
    assert run("report", out) == 0
    line = capsys.readouterr().out
    assert "0 images of --data matched from 12 generations" in line and untrained in line and "training image" not in line
    assert run("--quiet", "report", out) == 0
    assert json.loads((out / "summary.json").read_text())["extraction"]["data_vs_model"]["n_not_trained"] == 1765
    # --json (which implies --quiet) keeps the warning on stderr; stdout holds the JSON alone
    assert run("--json", "verify", "--samples", store, "--data", "digits", "--out", tmp_path / "json", "--device", "cpu") == 0
    std = capsys.readouterr()
    assert json.loads(std.out)["data_vs_model"]["n_not_trained"] == 1765
    assert std.err.startswith("diffaudit verify: warning: 1,765 of the 1,797 examples of --data were never trained on")
    page = visible_text((out / "report.html").read_text())
    assert "1,765 of the 1,797 images verify counted as training images were never trained on" in page
    assert "Images of --data matched" in page and "Training images extracted" not in page
    assert "dataset digits (1,797 images, 32 of them trained on)" in page  # the header called them training images
    assert "1,765 of the 1,797 images of --data were never trained on by the model: a match to one of them is not" in page

    assert run("verify", "--samples", store, "--data", "digits", "--subset", "32", "--out", tmp_path / "same",
               "--device", "cpu") == 0
    assert "warning" not in capsys.readouterr().err
    same = json.loads((tmp_path / "same" / "result.json").read_text())["data_vs_model"]
    assert same["n_not_trained"] == 0 and same["n_trained_missing"] == 0

    assert run("verify", "--samples", store, "--data", "digits", "--subset", "32", "--subset-seed", "1",
               "--out", tmp_path / "other", "--device", "cpu") == 0
    err = capsys.readouterr().err
    missing = json.loads((tmp_path / "other" / "result.json").read_text())["data_vs_model"]["n_trained_missing"]
    assert missing > 16 and f"--data lacks {missing} of the 32 examples" in err


def test_report_line_of_a_verify_that_verified_nothing_says_not_measured(tmp_path, capsys):
    """An extract that flagged no clique leaves verify 0 generations: `report` printed "(0 training images
    extracted from 0 generations)" while the page says not measured."""
    from diffaudit.data import load_dataset

    images = load_dataset("digits").images
    np.savez(tmp_path / "train.npz", images=images[:200])
    np.savez(tmp_path / "samples.npz", images=images[300:360])
    assert run("--quiet", "extract", "--samples", tmp_path / "samples.npz", "--out", tmp_path / "extract",
               "--device", "cpu", "--k-neighbors", "16") == 0
    assert run("--quiet", "verify", "--samples", tmp_path / "samples.npz", "--data", tmp_path / "train.npz",
               "--from-extract", tmp_path / "extract", "--out", tmp_path / "verify", "--device", "cpu") == 0
    capsys.readouterr()
    assert run("report", tmp_path / "verify") == 0
    out = capsys.readouterr().out
    assert "extraction not measured: no generation was verified" in out and "extracted from 0" not in out


def test_dropping_the_baseline_names_flags_not_keys(tmp_path, capsys):
    """Re-run without --baseline, the refusal listed `baseline_left_out` and `baseline_seed`; then the seed, the
    digest and the left-out count of a baseline no longer given, all by-products of --baseline."""
    from diffaudit.data import load_dataset

    images = load_dataset("digits").images
    np.savez(tmp_path / "gens.npz", images=images[300:312])
    argv = ["verify", "--samples", tmp_path / "gens.npz", "--data", "digits", "--subset", "32", "--out", tmp_path / "v",
            "--device", "cpu", "--quiet"]
    assert run(*argv, "--baseline", "digits") == 0
    capsys.readouterr()
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert "other settings: --baseline (was 'digits', now None). Use the same settings" in err
    assert "baseline_left_out" not in err and "baseline_seed" not in err and "--seed" not in err


def test_one_generation_is_singular(tmp_path, capsys):
    from diffaudit.data import load_dataset

    np.savez(tmp_path / "one.npz", images=load_dataset("digits").images[300:301])
    assert run("verify", "--samples", tmp_path / "one.npz", "--data", "digits", "--out", tmp_path / "v",
               "--device", "cpu") == 0
    out, err = capsys.readouterr()
    assert "extracted from 1 generation by rule" in out and "of 1 generation (" in err


def test_from_extract_after_the_store_was_made_again_says_extract_again(model_store, tmp_path, capsys):
    """`sample --fresh` into the store the extract ran on: verify advised passing that very path; now it says the
    store was made again and to run extract on it again."""
    run_dir, _ = model_store
    store = tmp_path / "store"
    sample = ["--quiet", "sample", "--model", run_dir, "--n", "12", "--steps", "2", "--out", store, "--device", "cpu"]
    assert run(*sample) == 0
    assert run("--quiet", "extract", "--samples", store, "--out", tmp_path / "ex", "--device", "cpu",
               "--k-neighbors", "4") == 0
    assert run(*sample, "--seed", "5", "--fresh") == 0
    capsys.readouterr()
    assert run("--quiet", "verify", "--samples", store, "--data", "digits", "--subset", "32", "--from-extract",
               tmp_path / "ex", "--out", tmp_path / "v", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert f"the sample store at {store} was made again since" in err
    assert f"run `diffaudit extract --samples {store}` again" in err and "pass the samples" not in err
    assert not (tmp_path / "v").exists()


def test_a_one_image_baseline_is_named_as_the_baseline(digits_npz, tmp_path, capsys):
    """The ratio rule over a --baseline of one unseen image was refused as "a training set of 1 image",
    while --data held many: the refusal now names the baseline."""
    from diffaudit.data import load_dataset

    one = load_dataset("digits", subset=40).images[39:]
    np.savez(tmp_path / "one.npz", images=one)
    out = tmp_path / "v"
    assert run("verify", "--samples", digits_npz, "--data", "digits", "--subset", "30", "--baseline",
               tmp_path / "one.npz", "--out", out, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert f"with n = 1 (--baseline {tmp_path / 'one.npz'} holds 1 image not in --data)" in err, err
    assert "training set" not in err and not out.exists()


@pytest.mark.parametrize("command", [
    ["mia", "--attack", "loss", "--target"], ["inpaint", "--model"], ["audit", "--heldout", "digits", "--model"]])
def test_a_sample_store_given_as_a_model_is_named_with_the_model_that_made_it(model_store, tmp_path, capsys, command):
    run_dir, store = model_store
    assert run(*command, store, "--data", "digits", "--out", tmp_path / "x", "--device", "cpu") == 2
    err = capsys.readouterr().err
    flag = command[-1]
    assert (f"{flag} {store} is a sample store written by `diffaudit sample`, not a model: give the model folder (it "
            f"records that model {run_dir} made it)") in err
    assert "train_ids.json" not in err and not (tmp_path / "x").exists()


def test_a_baseline_of_another_size_is_refused_before_the_search(model_store, tmp_path, capsys):
    """The shape of --baseline was checked after the whole search over --data, which then stood recorded with
    it: the corrected --baseline was refused as other settings."""
    _, store = model_store
    np.savez(tmp_path / "big.npz", images=np.zeros((20, 16, 16, 1), np.uint8))
    out = tmp_path / "v"
    assert run("verify", "--samples", store, "--data", "digits", "--subset", "32", "--baseline", tmp_path / "big.npz",
               "--out", out, "--device", "cpu") == 2
    assert "--baseline" in capsys.readouterr().err and not out.exists()
    assert run("verify", "--samples", store, "--data", "digits", "--subset", "32", "--baseline", "digits",
               "--out", out, "--device", "cpu") == 0


def test_the_training_names_under_other_pixels_are_said(model_store, tmp_path, capsys):
    """--data holding every training key, but prepared otherwise (a --center-crop the model never saw): the names
    match, the pixels do not, and the warning says so with the options it was trained with."""
    _, store = model_store
    assert run("verify", "--samples", store, "--data", "digits", "--subset", "32", "--center-crop", "6", "--image-size", "8",
               "--out", tmp_path / "crop", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert "(--data holds by name every example it trained on, but not as it trained on them)" in err
    assert err.count("the model that made --samples") == 1, err  # said once, where it said it twice
    assert "(it was trained on --data digits --subset 32)" in err


def test_names_another_builtin_split_shares_are_not_training_images(cifar10_root, tmp_path, capsys):
    """CIFAR-10's test split names images as the train split does (`dog_0865` is in both): a model trained on
    cifar10 verified against cifar10-test holds none of its training images, whatever the shared names say."""
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.outdir import SETTINGS_FILE, settings_record
    from tests.helpers import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "run", image_size=8, channels=3)
    assert run("--quiet", "sample", "--model", model, "--n", "4", "--steps", "2", "--out", tmp_path / "store",
               "--device", "cpu") == 0
    (model / "train_ids.json").write_text(json.dumps({"keys": ["dog_0865", "cat_4999"]}))  # cat_4999: train split only
    write_json_atomic(model / SETTINGS_FILE, settings_record("train", {"data": {"spec": "cifar10", "options": {}}}))
    assert run("verify", "--samples", tmp_path / "store", "--data", "cifar10-test", "--image-size", "8",
               "--out", tmp_path / "v", "--device", "cpu") == 0
    err = capsys.readouterr().err
    assert ("1 example of --data cifar10-test is named like images the model that made --samples" in err
            and "but it was trained on --data cifar10" in err)
    r = json.loads((tmp_path / "v" / "result.json").read_text())["data_vs_model"]
    assert r["n_not_trained"] == r["n_data"] == 10_000 and r["n_trained_missing"] == 2


def test_an_option_of_the_other_rule_is_warned_of(model_store, tmp_path, capsys):
    """--delta under the ratio rule (the default for these generations), and --alpha under --rule l2, change
    nothing: each run says so; --delta with --rule l2 is no warning."""
    _, store = model_store
    base = ["verify", "--samples", store, "--data", "digits", "--subset", "32", "--device", "cpu"]
    assert run(*base, "--delta", "0.05", "--out", tmp_path / "a") == 0
    assert "--delta is for --rule l2, and this run verifies by rule ratio: it changes nothing here; pass --rule l2" in (
        capsys.readouterr().err)
    assert run(*base, "--rule", "l2", "--alpha", "0.3", "--n-neighbors", "10", "--out", tmp_path / "b") == 0
    assert "--alpha and --n-neighbors are for --rule ratio, and this run verifies by rule l2" in capsys.readouterr().err
    assert run(*base, "--rule", "l2", "--delta", "0.05", "--out", tmp_path / "c") == 0
    assert "is for --rule" not in capsys.readouterr().err
    # --map-resize without --train-map was ignored in silence
    assert run(*base, "--map-resize", "none", "--out", tmp_path / "d") == 0
    assert "--map-resize says how --train-map's images were cropped, and this run has no --train-map" in (
        capsys.readouterr().err)


def test_a_sample_store_given_as_shadows_or_a_loss_cache_is_named_as_such(model_store, tmp_path, capsys):
    """`mia --shadows STORE` said "shadow model 0 (STORE/model-00) is missing; re-run the diffaudit shadows
    command that made STORE", and `--loss-cache STORE` wrote cache folders into the store."""
    _, store = model_store
    base = ["mia", "--data", "digits", "--subset", "16", "--out", tmp_path / "x", "--device", "cpu"]
    assert run(*base, "--shadows", store, "--membership", store) == 2
    assert (f"--shadows {store} is a sample store written by `diffaudit sample`, not the folder of `diffaudit shadows`"
            in capsys.readouterr().err)
    assert run(*base, "--target", store.parent / "run", "--attack", "loss", "--loss-cache", store) == 2
    assert f"--loss-cache {store} is a sample store written by `diffaudit sample`, not a folder of cached losses" in (
        capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
