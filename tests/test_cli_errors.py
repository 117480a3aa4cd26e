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
    assert f"error: {tmp_path / 'nope'} does not exist; give the output folder" in capsys.readouterr().err


def test_an_option_with_choices_never_leads_a_message(tmp_path, capsys):
    """`--embedder clip` is a name, not a path: the loader's "clip embedder: ..." stays as it is (it read
    "--embedder clip embedder: ..."), while the path it is about is still named by its option."""
    assert main(["dedup", "--data", "digits", "--embedder", "clip", "--clip-model", str(tmp_path / "none"),
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "error: clip embedder: CLIP model not available locally" in err and "--embedder clip embedder" not in err


def test_a_file_given_for_a_folder_is_named_so(tmp_path, capsys):
    """mia --target RUN/train_ids.json read "write RUN/train_ids.json/train_ids.json yourself"; --loss-cache FILE
    blamed --out; train --extend RUN/train_config.json said "no such folder"."""
    f = tmp_path / "run" / "train_ids.json"
    f.parent.mkdir()
    f.write_text("{}")
    for flag in ("--target", "--loss-cache"):
        argv = ["mia", "--data", "digits", "--attack", "loss", "--out", str(tmp_path / "m"), flag, str(f)]
        assert main(argv + (["--target", str(tmp_path / "run")] if flag == "--loss-cache" else [])) == 2
        err = capsys.readouterr().err
        assert f"error: {flag} {f} is a file, not " in err and f"the folder holding it is {f.parent}" in err
    assert not (tmp_path / "m").exists()
    assert main(["train", "--data", "digits", "--steps", "4", "--extend", str(f), "--out", str(tmp_path / "t")]) == 2
    assert f"--extend {f} is a file, not a run folder" in capsys.readouterr().err


def test_an_unexpected_error_under_json_still_gives_json(tmp_path, capsys, monkeypatch):
    """A failure no check foresaw gave a traceback and no JSON, so a script reading stdout found nothing to
    parse: now the JSON of every other ending (status 1), the exception raised on as before (its traceback);
    an audit whose stage crashed gives one document, the audit's."""
    import pytest

    import diffaudit.cli.export as export
    import diffaudit.cli.shadows as shadows

    def crash(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(export, "run", crash)
    with pytest.raises(RuntimeError, match="boom"):
        main(["--json", "export", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "png")])
    assert json.loads(capsys.readouterr().out) == {"command": "export", "error": "unexpected error: RuntimeError: boom",
                                                   "exit_status": 1}
    with pytest.raises(RuntimeError, match="boom"):  # without --json: nothing on stdout
        main(["export", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "png")])
    assert capsys.readouterr().out == ""
    monkeypatch.setattr(shadows, "run", crash)  # the audit's first stage trains its models with `shadows`
    with pytest.raises(RuntimeError, match="boom"):
        main(["--json", "audit", "--data", "digits", "--out", str(tmp_path / "audit"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert json.loads(out) == {"command": "audit", "error": "unexpected error: RuntimeError: boom", "exit_status": 1}
