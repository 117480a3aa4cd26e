"""`diffaudit train --dedup KEEP` and `--dp-noise`: the defences reached from the train command."""

import json

from diffaudit.cli.main import main

BASE = ["train", "--data", "digits", "--subset", "24", "--preset", "tiny", "--batch-size", "8", "--steps", "4",
        "--checkpoint-every", "2", "--warmup-steps", "1", "--quiet", "--device", "cpu"]


def test_dedup_keep_list_restricts_the_training_set(tmp_path):
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    keep = tmp_path / "keep.json"
    # the `keys` and `removed_keys` of `diffaudit dedup`'s keep.json
    keep.write_text(json.dumps({"keys": ds.keys[:20], "removed_keys": ds.keys[20:]}))
    assert main(BASE + ["--dedup", str(keep), "--out", str(tmp_path / "run")]) == 0
    ids = json.loads((tmp_path / "run" / "train_ids.json").read_text())
    assert sorted(ids["keys"]) == sorted(ds.keys[:20])
    cfg = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert cfg["data"]["n_dropped_duplicates"] == 4


def test_dedup_keep_list_of_other_data_is_refused(tmp_path, capsys):
    """A keep list made on --subset 24 does not cover the full digits: refused, nothing silently dropped."""
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"source": "digits", "n_dataset": 24, "keys": ds.keys[:20], "removed_keys": ds.keys[20:]}))
    argv = [a for a in BASE if a not in ("--subset", "24")]
    assert main(argv + ["--dedup", str(keep), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "1773 of the 1797 examples" in err and "not in its kept or removed keys" in err and "diffaudit dedup" in err
    assert not (tmp_path / "run" / "train_config.json").exists()


def test_keep_list_of_the_full_data_with_subset_names_the_options(tmp_path, capsys):
    """A keep list made on all digits, used with --subset 64: its keys are digits, the mismatch is the
    subset. The error says the list was made on other data than --data with its options, gives both
    counts, and the dedup command to run (it used to say "'digits:0' is not in digits")."""
    assert main(["--quiet", "dedup", "--data", "digits", "--out", str(tmp_path / "dedup")]) == 0
    capsys.readouterr()
    argv = [a for a in BASE if a not in ("--subset", "24")] + ["--subset", "64"]
    assert main(argv + ["--dedup", str(tmp_path / "dedup" / "keep.json"), "--out", str(tmp_path / "run")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was made on other data than --data digits --subset 64" in err
    assert "names 1797 examples" in err and "of --data digits (no data options)" in err
    assert "--data digits --subset 64 holds 64" in err
    assert "`diffaudit dedup --data digits --subset 64 --out DIR`" in err
    assert "kept keys are not in digits" not in err and not (tmp_path / "run").exists()


def test_dp_sgd_run_reports_epsilon(tmp_path):
    assert main(BASE + ["--dp-noise", "1.0", "--out", str(tmp_path / "dp")]) == 0
    dp = json.loads((tmp_path / "dp" / "dp.json").read_text())
    assert dp["epsilon"] is not None and 0 < dp["epsilon"] < float("inf")
    assert (tmp_path / "dp" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_dp_settings_without_noise_or_epsilon_are_an_error_not_a_plain_run(tmp_path, capsys):
    """These flags used to be dropped silently: the command trained a non-private model."""
    out = tmp_path / "dp"
    capsys.readouterr()
    assert main(BASE + ["--dp-max-grad-norm", "0.5", "--dp-delta", "1e-5", "--dp-augmentations", "4", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--dp-delta, --dp-max-grad-norm, --dp-augmentations given without --dp-noise or --dp-epsilon" in err
    assert "Traceback" not in err and not out.exists()


def test_malformed_repeat_file_is_a_clear_error(tmp_path, capsys):
    rep = tmp_path / "rep.txt"
    rep.write_text("digits:20 x3\n")
    capsys.readouterr()
    assert main(BASE + ["--repeat", str(rep), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{rep}:1: TIMES must be a positive integer; got 'x3'" in err and "Traceback" not in err


def test_input_folders_and_a_lone_model_index(tmp_path, capsys):
    """--dedup and --membership take the folder of the command that wrote the file (a dedup folder's keep.json; it
    used to end in an IsADirectoryError traceback), a folder without it is a one-line error, and --model-index
    without --membership is refused (it used to train on all of --data)."""
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    folder = tmp_path / "dedup"
    folder.mkdir()
    (folder / "keep.json").write_text(json.dumps({"keys": ds.keys[:20], "removed_keys": ds.keys[20:]}))
    assert main(BASE + ["--dedup", str(folder), "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["data"]["dedup"] == str(folder / "keep.json")
    assert main(["--quiet", "membership", "--data", "digits", "--subset", "24", "--models", "2", "--out",
                 str(tmp_path / "mem") + "/"]) == 0
    assert main(BASE + ["--membership", str(tmp_path / "mem"), "--model-index", "1", "--out", str(tmp_path / "col")]) == 0
    capsys.readouterr()
    for flag, name in (("--dedup", "is a folder without keep.json: give that file, or the output folder of the command"),
                       ("--membership", "is a folder without membership.npz")):
        extra = ["--model-index", "0"] if flag == "--membership" else []
        assert main(BASE + [flag, str(tmp_path / "run" / "unet"), *extra, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'run' / 'unet'} is a folder" in err and name in err and "Traceback" not in err
    assert main(BASE + ["--model-index", "2", "--out", str(tmp_path / "y")]) == 2
    assert "--model-index needs --membership" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_training_options_dp_sgd_does_not_use_are_refused(tmp_path, capsys):
    """--grad-clip, --no-bf16 and --compile would be recorded under DP-SGD yet change nothing (a resume with
    another --grad-clip was then refused for a value that did nothing)."""
    assert main(BASE + ["--dp-noise", "1.0", "--grad-clip=0.5", "--no-bf16", "--out", str(tmp_path / "dp")]) == 2
    err = capsys.readouterr().err
    assert ("--grad-clip, --no-bf16 do nothing under DP-SGD (per-example clipping to --dp-max-grad-norm replaces it; "
            "DP-SGD trains in float32): drop them") in err
    assert not (tmp_path / "dp").exists()
    assert main(BASE + ["--grad-clip", "0.5", "--out", str(tmp_path / "plain")]) == 0  # without DP-SGD it clips


def test_an_infinite_target_epsilon_says_what_to_do(tmp_path, capsys):
    assert main(BASE + ["--dp-epsilon", "inf", "--out", str(tmp_path / "dp")]) == 2
    assert "--dp-epsilon must lie in (0, 1e4) (a finite privacy budget; without DP-SGD leave out" in capsys.readouterr().err


def test_a_repeat_of_an_example_the_keep_list_drops_is_named_by_key(tmp_path, capsys):
    """The run does not train on a dropped copy: repeating it is refused by its key and the flag that
    dropped it (it used to say "repeat given for example 21", a position the user never wrote)."""
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"keys": ds.keys[:20], "removed_keys": ds.keys[20:]}))
    rep = tmp_path / "rep.txt"
    rep.write_text(f"{ds.keys[3]} 2\n{ds.keys[21]} 3\n")
    capsys.readouterr()
    assert main(BASE + ["--dedup", str(keep), "--repeat", str(rep), "--out", str(tmp_path / "run")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"names 1 example this run does not train on ('{ds.keys[21]}'): --dedup's keep list leaves it out; drop it" in err
    assert "example 21" not in err and not (tmp_path / "run").exists()
