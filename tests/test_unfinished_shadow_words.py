"""A model folder that is not what a flag expects is said as what it is, and what to run is the command that
makes it: a --target that does not exist, a shadows folder given as one model, and a shadow model that
`diffaudit shadows` has not finished (re-run `shadows`, never a `train` command the user did not run)."""

from __future__ import annotations

import shutil

import pytest

from diffaudit.cli.main import main

DATA = ["--data", "digits", "--image-size", "8", "--subset", "40"]


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory):
    """A shadows folder of 2 tiny models whose model-01 is as a kill leaves it: checkpointed, no UNet or result."""
    root = tmp_path_factory.mktemp("unfinished")
    assert main(["--quiet", "membership", *DATA, "--models", "2", "--out", str(root / "sh" / "membership.npz")]) == 0
    assert main(["--quiet", "shadows", *DATA, "--membership", str(root / "sh" / "membership.npz"), "--out", str(root / "sh"),
                 "--preset", "tiny", "--steps", "4", "--batch-size", "8", "--warmup-steps", "1", "--checkpoint-every", "2",
                 "--device", "cpu"]) == 0
    run = root / "sh" / "model-01"
    for part in ("unet", "result.json"):
        shutil.rmtree(run / part) if (run / part).is_dir() else (run / part).unlink()
    return root / "sh"


def test_a_missing_target_is_said_to_be_missing(tmp_path, capsys):
    assert main(["mia", *DATA, "--target", str(tmp_path / "nope"), "--attack", "loss", "--out", str(tmp_path / "m")]) == 2
    assert capsys.readouterr().err.endswith(f"error: --target {tmp_path / 'nope'} does not exist\n")


def test_a_shadows_folder_given_as_one_model_names_its_models(unfinished, tmp_path, capsys):
    for argv in (["mia", *DATA, "--target", str(unfinished), "--attack", "loss"],
                 ["inpaint", "--model", str(unfinished), "--shadows", str(unfinished), *DATA, "--targets", "1,1"]):
        assert main(argv + ["--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert f"{unfinished}: the folder of `diffaudit shadows`, not one model; pass one of its models: " in err, err
        assert "train_ids.json" not in err


def test_an_unfinished_shadow_is_finished_by_the_shadows_command(unfinished, tmp_path, capsys):
    run = unfinished / "model-01"
    assert main(["inpaint", "--model", str(unfinished / "model-00"), "--shadows", str(unfinished), *DATA, "--targets", "1,1",
                 "--n-inpaint", "2", "--steps", "2", "--device", "cpu", "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert (f"shadow model 1 ({run}) is unfinished; re-run the `diffaudit shadows` command that made {unfinished}" in err
            and "diffaudit train" not in err), err
    assert main(["mia", *DATA, "--target", str(run), "--attack", "loss", "--device", "cpu", "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert (f"--target {run}: a model that `diffaudit shadows` has not finished (it has no checkpoint yet, of 4 steps; "
            f"its UNet is written when it finishes). Re-run the `diffaudit shadows` command that made {unfinished}") in err, err
