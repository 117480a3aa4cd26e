"""Training inputs: the training-index check shared by plain and DP-SGD runs, repeat files, --log-every,
--grad-clip, and torch's global RNG left alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from diffaudit.cli.main import main
from diffaudit.cli.train import read_repeats
from diffaudit.core.errors import DiffauditError
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.training import TrainConfig, check_train_indices, plan_run, train


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (10, 8, 8, 1), dtype=np.uint8), [f"k{i}" for i in range(10)], source="syn")


def _cfg(**kw):
    base = dict(preset="tiny", steps=1, batch_size=4, warmup_steps=0, seed=1, checkpoint_every=1, log_every=1)
    base.update(kw)
    return TrainConfig(**base)


def test_boolean_mask_is_refused_by_plain_and_dp_training_alike(data, tmp_path):
    """A membership column (bool) passed as indices was read as the indices 0 and 1 (plain run) or
    refused as 'not distinct' (DP run): both now give the same message, naming the fix."""
    from diffaudit.defenses.dp_training import DPConfig, train_dp

    mask = np.array([1, 0, 1, 1, 0, 1, 0, 1, 1, 0], dtype=bool)
    with pytest.raises(DiffauditError, match="boolean mask") as plain:
        plan_run(data, _cfg(), train_indices=mask)
    with pytest.raises(DiffauditError, match="boolean mask") as dp:
        train_dp(data, _cfg(), DPConfig(noise_multiplier=1.0), tmp_path / "dp", train_indices=mask)
    assert str(plain.value) == str(dp.value) and "np.flatnonzero(mask)" in str(plain.value)
    with pytest.raises(DiffauditError, match="boolean mask"):
        train(data, _cfg(), tmp_path / "plain", train_indices=list(mask))  # a list of bools too
    assert not (tmp_path / "plain").exists() and not (tmp_path / "dp").exists()
    assert check_train_indices(np.flatnonzero(mask), 10).tolist() == [0, 2, 3, 5, 7, 8]


def test_repeated_or_odd_training_indices_are_refused(data):
    with pytest.raises(DiffauditError, match=r"must be distinct: 1 example\(s\) listed more than once \(3\).*repeats="):
        plan_run(data, _cfg(), train_indices=[3, 3, 4])
    with pytest.raises(DiffauditError, match="must be integers"):
        plan_run(data, _cfg(), train_indices=np.array([1.0, 2.5]))
    with pytest.raises(DiffauditError, match=r"must lie in \[0, 9\]"):
        plan_run(data, _cfg(), train_indices=[1, 10])
    with pytest.raises(DiffauditError, match="empty"):
        plan_run(data, _cfg(), train_indices=[])
    assert plan_run(data, _cfg(), train_indices=[5, 1, 3]).indices.tolist() == [1, 3, 5]


@pytest.mark.parametrize("text, match", [
    ("k1 x3\n", r":1: TIMES must be a positive integer; got 'x3'"),
    ("k1 0\n", "must be a positive integer; got 0"),
    ("k1 3 4\n", r":1: expected `KEY TIMES`"),
    ('["k1", 3]', "must be an object"),
    ('{"k1": 2.9}', "positive integer; got 2.9"),
    ('{"k1": true}', "positive integer; got True"),
    ('{"k1": "3"}', "positive integer; got '3'"),
    ('{"k1": -2}', "positive integer; got -2"),
    ('{"nope": 2}', "neither a key nor an index"),
    ("k1 2\n1 3\n", "named twice"),
])
def test_bad_repeat_files_are_clear_errors(data, tmp_path, text, match):
    path = tmp_path / "rep.txt"
    path.write_text(text)
    with pytest.raises(DiffauditError, match=match):
        read_repeats(str(path), data)


def test_good_repeat_files_are_read(data, tmp_path):
    path = tmp_path / "rep.txt"
    path.write_text('{"k1": 3, "4": 2}')
    assert read_repeats(str(path), data) == {1: 3, 4: 2}
    path.write_text("# key times\nk1 3\n  # indented comment\n4 2\n")
    assert read_repeats(str(path), data) == {1: 3, 4: 2}



def test_a_key_outside_the_subset_names_the_data_as_loaded(tmp_path, capsys):
    from diffaudit.cli.main import main

    path = tmp_path / "rep.json"
    path.write_text('{"digits:1500": 4}')  # a digits key, but not one of the 64 the subset keeps
    assert main(["--quiet", "train", "--data", "digits", "--subset", "64", "--steps", "1", "--repeat", str(path),
                 "--device", "cpu", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "'digits:1500' is neither a key nor an index of --data digits --subset 64 (64 examples as loaded" in err


def test_log_every_zero_is_an_error_not_the_default(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--data", "digits", "--subset", "16", "--steps", "1", "--batch-size", "4",
            "--checkpoint-every", "1", "--device", "cpu", "--out", str(out)]
    capsys.readouterr()
    assert main([*argv, "--log-every", "0"]) == 2
    assert "--log-every must be at least 1" in capsys.readouterr().err
    assert not (out / "result.json").exists()


@pytest.mark.parametrize("clip, dp", [("inf", True), ("nan", False), ("inf", False), ("0", False), ("-1", True)])
def test_grad_clip_must_be_finite_positive_before_any_folder(tmp_path, capsys, clip, dp):
    """inf / nan used to pass validation and crash writing the settings (strict JSON) after the folder existed."""
    out = tmp_path / "run"
    argv = ["--quiet", "train", "--data", "digits", "--subset", "16", "--steps", "1", "--batch-size", "4",
            "--device", "cpu", "--out", str(out), "--grad-clip", clip, *(["--dp-noise", "1.0"] if dp else [])]
    capsys.readouterr()
    assert main(argv) == 2
    assert "--grad-clip must be a finite positive" in capsys.readouterr().err
    assert not out.exists()


def test_train_config_refuses_non_finite_grad_clip():
    for clip in (math.inf, math.nan, 0.0):
        with pytest.raises(DiffauditError, match="--grad-clip"):
            TrainConfig(grad_clip=clip).validate()
    TrainConfig(grad_clip=1e9).validate()


def test_train_leaves_the_global_rng_untouched(data, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(data, _cfg(), tmp_path / "run")
    torch.testing.assert_close(torch.rand(3), expected, atol=0, rtol=0)


def test_a_warmup_longer_than_the_run_is_said(tmp_path, capsys):
    from diffaudit.cli.main import main

    argv = ["train", "--data", "digits", "--subset", "16", "--steps", "2", "--batch-size", "4", "--lr", "1e-3",
            "--checkpoint-every", "2", "--device", "cpu"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0  # the default --warmup-steps 100
    assert ("--warmup-steps 100 is not below --steps 2: the learning rate rises to 2e-05 at most and never reaches "
            "--lr 0.001") in capsys.readouterr().err
    assert main(["--quiet", *argv, "--out", str(tmp_path / "q")]) == 0  # --quiet silences progress, not warnings
    assert capsys.readouterr().err.startswith("diffaudit train: warning: --warmup-steps 100 is not below --steps 2")
    assert main([*argv, "--warmup-steps", "1", "--out", str(tmp_path / "b")]) == 0
    assert "--warmup-steps" not in capsys.readouterr().err
    # as long as the run: the last step is at --lr (not "rises to 0.001 at most and never reaches --lr 0.001")
    assert main([*argv, "--warmup-steps", "2", "--out", str(tmp_path / "c")]) == 0
    err = capsys.readouterr().err
    assert "rises through the whole run and reaches --lr 0.001 only at its last step" in err and "never" not in err


def test_a_refused_input_comes_alone_before_any_warning(tmp_path, capsys):
    """A bad --data is the one thing said: the warm-up warning waits until the inputs have loaded, and an
    audit (whose shadows stage trains) says it once."""
    from diffaudit.cli.main import main

    assert main(["train", "--data", str(tmp_path / "gone"), "--steps", "2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "--warmup-steps" not in err
    assert main(["audit", "--train-size", "4", "--steps", "2", "--batch-size", "4", "--n-samples", "8", "--sample-steps", "2",
                 "--sweep", "", "--device", "cpu", "--out", str(tmp_path / "audit")]) == 0
    err = capsys.readouterr().err  # said once, by the stage that trains, in the audit's name
    assert err.count("--warmup-steps 50 is not below --steps 2") == 1  # the audit's default
    assert "diffaudit audit (stage train): warning: --warmup-steps 50" in err


def test_the_warmup_warning_is_said_only_for_a_run_that_will_train(tmp_path, capsys):
    """Not before a refusal of the options, and not for a finished run that has nothing to do."""
    from diffaudit.cli.main import main

    argv = ["train", "--data", "digits", "--subset", "16", "--steps", "2", "--batch-size", "4",
            "--checkpoint-every", "2", "--device", "cpu", "--out", str(tmp_path / "a")]
    assert main([*argv, "--dp-noise", "1.0", "--grad-clip", "1.0"]) == 2
    err = capsys.readouterr().err
    assert "--grad-clip does nothing under DP-SGD" in err and "drop it" in err and "--warmup-steps" not in err
    assert main(argv) == 0
    assert "--warmup-steps 100 is not below --steps 2" in capsys.readouterr().err
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "already finished" in err and "--warmup-steps" not in err


def test_a_class_conditional_model_has_every_class_of_its_data(tmp_path):
    """A subset that misses a class still gives the model all of --data's classes (digits: 10). It took
    the largest label seen + 1: on 4 digits labelled 8, 8, 7, 8 a model of 9 classes, so `sample --classes`
    drew classes it never saw and could not draw 9."""
    from diffaudit.cli.main import main
    from diffaudit.data import load_dataset

    assert int(load_dataset("digits", subset=4).labels.max()) < 9  # the subset lacks class 9
    assert main(["train", "--data", "digits", "--subset", "4", "--class-conditional", "--steps", "2", "--batch-size", "4",
                 "--checkpoint-every", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path / "cc")]) == 0
    assert json.loads((tmp_path / "cc" / "unet" / "config.json").read_text())["num_class_embeds"] == 10


def test_compile_off_cuda_is_said_where_the_run_trains(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--subset", "16", "--steps", "2", "--batch-size", "4", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--device", "cpu", "--out", str(tmp_path / "a")]
    assert main([*argv, "--compile"]) == 0
    assert "train: --compile applies on CUDA only; the UNet trains eagerly on cpu" in capsys.readouterr().err
    assert main([*argv, "--compile"]) == 0  # finished: nothing trains, nothing to say
    assert "--compile" not in capsys.readouterr().err
    assert main([*argv[:-1], str(tmp_path / "b")]) == 0
    assert "--compile" not in capsys.readouterr().err


def test_a_switch_changed_on_a_finished_run_is_named_by_its_flag_and_said_on_or_off(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--subset", "16", "--steps", "2", "--batch-size", "4", "--warmup-steps", "1",
            "--checkpoint-every", "2", "--device", "cpu", "--out", str(tmp_path / "a")]
    assert main(argv) == 0
    capsys.readouterr()
    assert main([*argv, "--skip-bad"]) == 2
    err = capsys.readouterr().err
    assert "--skip-bad (was off, now on)" in err and "--no-skip-bad" not in err


def test_class_conditional_without_labels_says_where_labels_come_from(tmp_path, capsys):
    """A flat folder has no labels: `train` and `audit` with --class-conditional say so and where labels come from
    (a sub-folder per class, shards' .cls, an npz's labels, a built-in dataset), where they said only "needs labels"."""
    from PIL import Image

    flat = tmp_path / "scans"
    flat.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(flat / f"s{i:02d}.png")
    for argv in (["train", "--steps", "2"], ["audit", "--train-size", "6"]):
        assert main([*argv, "--data", str(flat), "--class-conditional", "--out", str(tmp_path / argv[0]), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--class-conditional needs labels" in err and "one sub-folder per class in a folder (DATA/CLASS/*.png)" in err, err


def test_a_pixel_model_trains_and_is_attacked_on_a_folder_where_some_images_have_no_caption(tmp_path, capsys):
    """A .txt beside some scans (reports, not captions): `train` refused the folder ("no caption file"), or with
    --skip-bad dropped the scans without one. A pixel model reads no captions: every image trains, the captions
    are left out (said once), and `mia` on the run reads the same images. With every caption there, the run's
    training digest is the one of the folder with its captions, as before."""
    from PIL import Image

    from diffaudit.core.io import read_json
    from diffaudit.data import load_dataset
    from diffaudit.data.digest import dataset_digest

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8), i * 20, np.uint8)).save(scans / f"s{i:02d}.png")
        if i < 10:
            (scans / f"s{i:02d}.txt").write_text(f"report {i}")
    train = ["--quiet", "train", "--steps", "2", "--warmup-steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main([*train, "--data", str(scans), "--out", str(tmp_path / "all")]) == 0
    assert read_json(tmp_path / "all" / "result.json")["n_train"] == 12
    assert "2 images have no caption" in capsys.readouterr().err
    # trained on a seeded 8 of them, attacked on all 12: its 8 members against the 4 others
    assert main([*train, "--data", str(scans), "--subset", "8", "--out", str(tmp_path / "run")]) == 0
    assert main(["--quiet", "mia", "--data", str(scans), "--target", str(tmp_path / "run"), "--attack", "loss",
                 "--timesteps", "100", "--bootstrap", "0", "--device", "cpu", "--out", str(tmp_path / "mia")]) == 0
    r = read_json(tmp_path / "mia" / "result.json")
    assert (r["n_members"], r["n_nonmembers"]) == (8, 4)
    for i in (10, 11):
        (scans / f"s{i:02d}.txt").write_text(f"report {i}")
    assert main([*train, "--data", str(scans), "--out", str(tmp_path / "captioned")]) == 0
    with_captions = load_dataset(str(scans))
    assert with_captions.captions is not None
    recorded = read_json(tmp_path / "captioned" / "settings.json")["settings"]["training_pixels_digest"]
    assert recorded == dataset_digest(with_captions)
