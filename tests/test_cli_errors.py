"""A refusal from below the CLI names the option whose value it is about."""

import argparse
import json

from diffaudit.cli.main import main, naming_the_option


def test_a_missing_file_is_named_with_its_option(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "a")]) == 2
    assert f"error: --data {tmp_path / 'nope.npz'} does not exist" in capsys.readouterr().err
    assert main(["train", "--data", "digits", "--dedup", str(tmp_path / "keep.json"), "--out", str(tmp_path / "b")]) == 2
    assert f"error: --dedup {tmp_path / 'keep.json'} does not exist" in capsys.readouterr().err
    assert main(["--json", "train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "a")]) == 2
    assert json.loads(capsys.readouterr().out)["error"].startswith("--data ")


def test_only_a_message_led_by_one_options_value_is_changed(tmp_path, capsys):
    args = argparse.Namespace(command="train", data="x.npz", samples="x.npz", out="o", seed=0, folder="x.npz")
    flags = {"data": "--data", "samples": "--samples", "out": "--out", "seed": "--seed"}
    assert naming_the_option("x.npz does not exist", args, flags) == "x.npz does not exist"  # two options hold it
    args.samples = None
    assert naming_the_option("x.npz does not exist", args, flags) == "--data x.npz does not exist"
    assert naming_the_option("x.npz: bad image", args, flags) == "--data x.npz: bad image"
    assert naming_the_option("x.npzz does not exist", args, flags) == "x.npzz does not exist"  # another name
    assert naming_the_option("--data x.npz is empty", args, flags) == "--data x.npz is empty"  # names it already
    assert naming_the_option("steps must be positive", args, flags) == "steps must be positive"
    # a positional argument has no flag to name: `report FOLDER`'s refusal stays as it is
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert f"error: {tmp_path / 'nope'} is not a folder" in capsys.readouterr().err
