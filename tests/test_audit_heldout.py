"""`audit --model RUN --heldout DATA`: a model trained on all of --data, audited with images it never saw
from another dataset (CIFAR-10's test split for a model trained on all of its training split)."""

import argparse
import json

import numpy as np
import pytest

from diffaudit.cli.audit import add_arguments, audit_settings
from diffaudit.cli.main import main
from diffaudit.data import load_dataset

AUDIT = ["audit", "--n-samples", "16", "--sample-steps", "3", "--sweep", "", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained on every image of train.npz; held.npz: other digits, named alike (npz:0 ... npz:23)."""
    here = tmp_path_factory.mktemp("heldout")
    digits = load_dataset("digits", subset=48)
    np.savez(here / "train.npz", images=digits.images[:24], labels=digits.labels[:24])
    np.savez(here / "held.npz", images=digits.images[24:], labels=digits.labels[24:])
    assert main(["train", "--data", str(here / "train.npz"), "--steps", "30", "--batch-size", "8", "--device", "cpu",
                 "--quiet", "--no-keep-state", "--out", str(here / "run")]) == 0
    return here


def test_heldout_images_are_the_nonmembers(trained, tmp_path, capsys):
    here, out = trained, tmp_path / "audit"
    data = ["--model", str(here / "run"), "--data", str(here / "train.npz")]
    assert main(AUDIT + data + ["--out", str(out)]) == 2  # without --heldout: nothing it never saw, and what to do
    assert "give images it never saw with --heldout (e.g. `--heldout cifar10-test`" in capsys.readouterr().err
    # one never-seen image: a baseline the ratio rule cannot use, refused before any stage (not by verify's)
    assert main(AUDIT + data + ["--heldout", str(here / "held.npz"), "--heldout-subset", "1", "--out", str(out)]) == 2
    assert (f"only 1 image is one --model {here / 'run'} never trained on: the false-positive baseline"
            in capsys.readouterr().err) and not out.exists()
    assert main(AUDIT + data + ["--heldout", str(here / "held.npz"), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert (result["n_train"], result["n_nonmembers"]) == (24, 24)
    members = json.loads((out / "members.view.json").read_text())  # one dataset: the single-dataset form, as before
    assert members["spec"] == str(here / "train.npz") and sorted(members["keys"]) == sorted(f"npz:{i}" for i in range(24))
    nonmembers = json.loads((out / "nonmembers.view.json").read_text())["parts"]
    assert [(p["spec"], p["prefix"]) for p in nonmembers] == [(str(here / "held.npz"), "heldout:")]
    assert sorted(nonmembers[0]["keys"]) == sorted(f"heldout:npz:{i}" for i in range(24))
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"]) == (24, 24)
    scores = np.load(out / "mia" / "scores.npz")
    ids, member = scores["id"].tolist(), scores["member"]
    assert sorted(i for i, m in zip(ids, member) if not m) == sorted(f"heldout:npz:{i}" for i in range(24))
    verify = json.loads((out / "verify" / "result.json").read_text())
    assert verify["baseline_unique_extracted"] is not None  # against the held-out images
    # the stages read the view of both datasets: the held-out pixels are the other digits, not the training ones
    both = load_dataset(str(out / "data.view.json"))
    assert np.array_equal(both.images[24:], load_dataset(str(here / "held.npz")).images)
    html = (out / "report.html").read_text()
    assert html.count('data-kind="train-missing"') == 0
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["heldout"] == str(here / "held.npz")
    # resumed with the same options it is finished; an audit without --heldout records no such setting (as before)
    assert main(AUDIT + data + ["--heldout", str(here / "held.npz"), "--out", str(out)]) == 0
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "heldout" not in audit_settings(parser.parse_args([]))


def test_a_view_of_both_datasets_written_by_hand_is_audited_like_heldout(trained, tmp_path):
    """README: every --data takes a view. The audit's own views of members and non-members name the view's
    datasets (a view naming a view is refused), so verify reads them; before, it failed after sampling."""
    here, out = trained, tmp_path / "audit"
    view = tmp_path / "both.view.json"
    view.write_text(json.dumps({"view": 1, "parts": [{"spec": str(here / "train.npz")},
                                                    {"spec": str(here / "held.npz"), "prefix": "heldout:"}]}))
    assert main(AUDIT + ["--model", str(here / "run"), "--data", str(view), "--out", str(out)]) == 0
    members = json.loads((out / "members.view.json").read_text())
    assert members["spec"] == str(here / "train.npz") and len(members["keys"]) == 24
    nonmembers = json.loads((out / "nonmembers.view.json").read_text())["parts"]
    assert [(p["spec"], p["prefix"], len(p["keys"])) for p in nonmembers] == [(str(here / "held.npz"), "heldout:", 24)]
    assert json.loads((out / "verify" / "result.json").read_text())["baseline_unique_extracted"] is not None
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"]) == (24, 24)


def test_heldout_refusals(trained, tmp_path, capsys):
    here = trained
    assert main(AUDIT + ["--data", str(here / "train.npz"), "--heldout", str(here / "held.npz"),
                         "--out", str(tmp_path / "a")]) == 2
    assert "--heldout is for --model" in capsys.readouterr().err
    np.savez(tmp_path / "big.npz", images=np.zeros((4, 16, 16, 1), np.uint8))
    assert main(AUDIT + ["--model", str(here / "run"), "--data", str(here / "train.npz"), "--heldout",
                         str(tmp_path / "big.npz"), "--out", str(tmp_path / "b")]) == 2
    assert "differ in image shape" in capsys.readouterr().err and not (tmp_path / "b").exists()
    # held-out images that are the training images again: refused before any stage (verify refused them after sampling)
    assert main(AUDIT + ["--model", str(here / "run"), "--data", str(here / "train.npz"), "--heldout",
                         str(here / "train.npz"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "every one of the 24 images of --heldout" in err and "pixel for pixel, also an image it trained on" in err
    assert not (tmp_path / "c").exists()


def test_a_diffusers_folder_trained_on_all_of_its_data(trained, tmp_path):
    """README's flow for a model trained outside diffaudit: a diffusers folder (no run records) with the
    train_ids.json its user wrote. Its model-00 in the audit is that folder, complete without a result.json."""
    import shutil

    here, model = trained, tmp_path / "ddpm"
    for part in ("unet", "scheduler"):
        shutil.copytree(here / "run" / part, model / part)
    keys = load_dataset(str(here / "train.npz")).keys
    (model / "train_ids.json").write_text(json.dumps({"keys": keys}))
    out = tmp_path / "audit"
    assert main(AUDIT + ["--model", str(model), "--data", str(here / "train.npz"), "--heldout", str(here / "held.npz"),
                         "--out", str(out)]) == 0
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"]) == (24, 24)
    assert (out / "models" / "model-00").resolve() == model.resolve() and not (model / "result.json").exists()
    # a diffaudit run is still unfinished without its result.json, even once its UNet is written
    from diffaudit.attacks.membership.run import shadow_run_dirs

    (tmp_path / "shadows").mkdir()
    shutil.copytree(here / "run", tmp_path / "shadows" / "model-00")
    (tmp_path / "shadows" / "model-00" / "result.json").unlink()
    with pytest.raises(Exception, match=r"shadow model 0 .* is unfinished"):
        shadow_run_dirs(tmp_path / "shadows", 1)
    shutil.rmtree(tmp_path / "shadows" / "model-00")
    shutil.copytree(model, tmp_path / "shadows" / "model-00")
    assert shadow_run_dirs(tmp_path / "shadows", 1) == [tmp_path / "shadows" / "model-00"]


def test_a_model_without_train_ids_is_taken_to_have_trained_on_all_of_data_with_heldout(trained, tmp_path, capsys):
    """--heldout says the model trained on all of --data: a folder trained elsewhere needs no hand-written
    train_ids.json then. The audit links the model into models/target beside one of --data's keys (the user's
    folder is left as it was) and every stage reads it there; without --heldout the refusal says what to give."""
    import shutil

    here, model = trained, tmp_path / "ddpm"
    for part in ("unet", "scheduler"):
        shutil.copytree(here / "run" / part, model / part)
    before = sorted(p.relative_to(model) for p in model.rglob("*"))
    data = ["--model", str(model), "--data", str(here / "train.npz")]
    assert main(AUDIT + data + ["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "records no training set (train_ids.json). If it trained on all of --data, give images it never saw with --heldout" in err
    out = tmp_path / "audit"
    argv = [a for a in AUDIT if a != "--quiet"] + data + ["--heldout", str(here / "held.npz"), "--shadows", "2", "--inpaint", "--inpaint-targets", "2,2",
                           "--n-inpaint", "2", "--steps", "10", "--batch-size", "8", "--out", str(out)]
    assert main(argv) == 0
    assert "with --heldout it is taken to have trained on all 24 images of --data" in capsys.readouterr().err
    assert sorted(p.relative_to(model) for p in model.rglob("*")) == before  # nothing written into the user's folder
    linked = out / "models" / "target"
    assert json.loads((linked / "train_ids.json").read_text())["keys"] == load_dataset(str(here / "train.npz")).keys
    assert (linked / "unet").resolve() == (model / "unet").resolve()
    from diffaudit.models.digest import model_digest

    assert model_digest(linked, members=False) == model_digest(model, members=False)  # the same weights
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"]) == (24, 24)
    inpaint = json.loads((out / "inpaint" / "result.json").read_text())
    assert inpaint["settings"]["model"] == str(linked)
    assert sorted(t["member"] for t in inpaint["targets"]) == [False, False, True, True]
    # resumed, it is finished as it was (the links found as they were left)
    assert main(argv) == 0 and json.loads((out / "mia" / "result.json").read_text()) == mia


def test_heldout_subset_takes_a_seeded_part_of_the_heldout_images(trained, tmp_path, capsys):
    here, out = trained, tmp_path / "audit"
    data = ["--model", str(here / "run"), "--data", str(here / "train.npz"), "--heldout", str(here / "held.npz")]
    assert main(AUDIT + data + ["--heldout-subset", "10", "--subset-seed", "3", "--out", str(out)]) == 0
    chosen = sorted("heldout:" + k for k in load_dataset(str(here / "held.npz"), subset=10, subset_seed=3).keys)
    nonmembers = json.loads((out / "nonmembers.view.json").read_text())["parts"]
    assert len(chosen) == 10 and sorted(nonmembers[0]["keys"]) == chosen
    mia = json.loads((out / "mia" / "result.json").read_text())
    assert (mia["n_members"], mia["n_nonmembers"]) == (24, 10)
    assert json.loads((out / "settings.json").read_text())["settings"]["heldout_subset"] == 10
    # another subset is another audit: refused on resume, naming the option
    assert main(AUDIT + data + ["--heldout-subset", "12", "--subset-seed", "3", "--out", str(out)]) == 2
    assert "heldout" in capsys.readouterr().err
    # without --heldout there is nothing to choose from; and a subset larger than the held-out data is refused
    assert main(AUDIT + data[:4] + ["--heldout-subset", "10", "--out", str(tmp_path / "a")]) == 2
    assert "--heldout-subset chooses among the images of --heldout" in capsys.readouterr().err
    assert main(AUDIT + data + ["--heldout-subset", "99", "--out", str(tmp_path / "b")]) == 2
    assert "--heldout-subset 99 asks for more images than --heldout" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main(AUDIT + data + ["--heldout-subset", "0", "--out", str(tmp_path / "b")]) == 2
    assert "--heldout-subset must be a positive number" in capsys.readouterr().err
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert "heldout_subset" not in audit_settings(parser.parse_args([]))


def test_heldout_beside_images_of_data_the_model_never_saw_is_said(trained, tmp_path, capsys):
    """A model that records its training set, audited on --data that also holds images it never trained on and
    with --heldout: its non-members are of two kinds read together, and the audit says how many of each.
    With --data its training set alone (the test above) it says nothing of the kind."""
    here = trained
    train, held = load_dataset(str(here / "train.npz")), load_dataset("digits", subset=56)
    np.savez(tmp_path / "more.npz", images=np.concatenate([train.images, held.images[48:]]),
             labels=np.concatenate([train.labels, held.labels[48:]]))
    argv = ([a for a in AUDIT if a != "--quiet"] + ["--model", str(here / "run"), "--data", str(tmp_path / "more.npz"),
            "--heldout", str(here / "held.npz"), "--out", str(tmp_path / "audit")])
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert (f"non-members of --model {here / 'run'} are the 8 images of --data it never trained on and the 24 of "
            f"--heldout {here / 'held.npz'}, read together") in err
    assert json.loads((tmp_path / "audit" / "mia" / "result.json").read_text())["n_nonmembers"] == 32
