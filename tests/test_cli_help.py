"""`diffaudit COMMAND --help`: each option's default said once, and only where it tells something."""

from __future__ import annotations

import argparse
import re

import pytest

from diffaudit.cli.main import COMMANDS, HelpFormatter, build_parser


def _options(help_text: str) -> dict[str, str]:
    """{an entry's last option string (or positional name): its help on one line} of a formatted help."""
    entries: dict[str, str] = {}
    name = None
    for line in help_text.splitlines():  # usage and description lines never start with exactly two spaces
        m = re.match(r"^  (\S.*?)(?:\s{2,}(.*))?$", line)  # invocation, two spaces, help (or help below)
        if m:
            name = m[1].split(", ")[-1].split(" ")[0]
            entries[name] = m[2] or ""
        elif name is not None and line.startswith("   "):
            entries[name] += " " + line.strip()
        else:
            name = None  # a group's title or a blank line ends the entry
    return {k: re.sub(r"\s+", " ", v).strip() for k, v in entries.items()}


def _command_help(name: str) -> str:
    parser = build_parser(only=name)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].format_help()


@pytest.fixture(scope="module")
def helps() -> dict[str, dict[str, str]]:
    return {name: _options(_command_help(name)) for name in COMMANDS}


def test_no_option_says_its_default_twice_or_says_none_or_false(helps):
    for command, options in helps.items():
        assert options, command
        for flag, text in options.items():
            where = f"diffaudit {command} {flag}: {text!r}"
            added = re.fullmatch(r"(.*) \(default: [^()]*\)", text)  # what a defaults formatter appends
            assert not added or not re.search(r"default|None:", added[1], re.I), where
            assert "(default: None)" not in text and "(default: False)" not in text, where
            assert "(default: (" not in text and "(default: [" not in text, where  # never a Python tuple or list


def test_plain_defaults_still_show_and_read_as_typed(helps):
    assert helps["train"]["--steps"].endswith("(default: 1000)")
    assert helps["extract"]["--min-clique"].endswith("(default: 10)")
    assert helps["extract"]["--seed"] == "seed of every random draw (default: 0)"
    assert helps["extract"]["--device"] == "cpu, cuda, cuda:N or auto (default: auto)"
    assert helps["extract"]["--sweep-min-clique"] == "clique sizes (>= 2) to sweep, with --calibrate only (default: 2,3,5,10,20,50)"
    assert helps["mia"]["--timesteps"].endswith("(default: 100)")
    assert "default" not in helps["mia"]["--sweep"].split("clipped")[-1]  # empty: no sweep, nothing to show
    assert helps["extract"]["--fresh"] == "delete what --out holds and start over"
    assert helps["compare"]["--labels"].endswith("(default: the two folders' names)")


def test_formatter_rules_on_a_small_parser():
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--seed", type=int, default=0, help="seed (Default 0)")
    p.add_argument("--named", default="a", help="kept at %(default)s")
    p.add_argument("--size", type=int, default=None, help="resize; None: keep the size")
    p.add_argument("--limit", type=int, default=None, help="a bound")
    p.add_argument("--flag", action="store_true", help="turn it on")
    p.add_argument("--no-x", action="store_false", help="turn it off")
    p.add_argument("--ts", default=(1, 10, 100), help="timesteps")
    p.add_argument("--pct", default="5%", help="a share")
    p.add_argument("--steps", type=int, default=5, help="steps")
    p.add_argument("where", help="a folder")
    options = _options(p.format_help())
    assert options["--seed"] == "seed (Default 0)" and options["--named"] == "kept at a"
    assert options["--size"] == "resize; None: keep the size" and options["--limit"] == "a bound"
    assert options["--flag"] == "turn it on" and options["--no-x"] == "turn it off"
    assert options["--ts"] == "timesteps (default: 1,10,100)" and options["--pct"] == "a share (default: 5%)"
    assert options["--steps"] == "steps (default: 5)" and options["where"] == "a folder"


def test_an_unknown_flag_is_named_by_its_command(capsys):
    """argparse said "diffaudit: error: unrecognized arguments" with the top level's usage, naming no command."""
    from diffaudit.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["shadows", "--data", "digits", "--membership", "m.npz", "--out", "x", "--attack", "loss"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "usage: diffaudit shadows" in err
    assert err.rstrip().endswith("diffaudit shadows: error: unrecognized arguments: --attack loss")
    with pytest.raises(SystemExit):
        main(["--bogus"])
    assert "diffaudit: error: unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_error_with_json_is_json_on_stdout(tmp_path, capsys):
    """A script reading --json's stdout gets a JSON document on failure too (and the one line on stderr)."""
    import json

    from diffaudit.cli.main import main

    assert main(["--json", "verify", "--samples", str(tmp_path / "nope"), "--data", "digits", "--out", str(tmp_path / "v")]) == 2
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["command"] == "verify" and doc["exit_status"] == 2 and "no such file or folder" in doc["error"]
    assert captured.err.startswith("diffaudit verify: error: --samples")


def test_a_command_line_refused_by_argparse_is_json_too_with_json(capsys):
    """An unknown flag, a value of the wrong type, an unknown command: with --json, a JSON document on
    stdout as for any other refusal; a mistyped flag is named with the one meant, and a value that begins
    with a dash is shown written as --flag=VALUE."""
    import json

    from diffaudit.cli.main import main

    for argv, command, said in (
        (["--json", "train", "--data", "digits", "--stpes", "3", "--out", "x"], "train",
         "unrecognized arguments: --stpes 3 (did you mean --steps?)"),
        (["mia", "--attack", "LiRA", "--out", "x", "--json"], "mia", "argument --attack: invalid choice: 'LiRA'"),
        (["--json", "mia", "--timesteps", "abc", "--out", "x"], "mia", "expected comma-separated integers, got 'abc'"),
        (["--json", "trian"], None, "argument COMMAND: invalid choice: 'trian'"),
        # a mistyped required flag is first said as missing: the mistyped one is named beside it
        (["--json", "extract", "--sample", "gens", "--out", "x"], "extract",
         "the following arguments are required: --samples (--sample is not an option here; did you mean --samples?)"),
        # a value that begins with a dash reads as a flag: how to write it is said
        (["--json", "inpaint", "--targets", "-1,2", "--out", "x"], "inpaint",
         "argument --targets: expected one argument (a value that begins with a dash is written --targets=-1,2)"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        captured = capsys.readouterr()
        doc = json.loads(captured.out)
        assert exit_.value.code == 2 and doc["command"] == command and doc["exit_status"] == 2, argv
        assert said in doc["error"] and said in captured.err, (argv, doc)
    with pytest.raises(SystemExit):  # without --json, stdout stays empty
        main(["train", "--stpes", "3", "--out", "x"])
    assert capsys.readouterr().out == ""


def test_json_without_a_command_is_a_json_refusal_not_the_help(capsys):
    import json

    from diffaudit.cli.main import main

    assert main(["--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"command": None, "error": "no command given", "exit_status": 2}
    assert captured.err == "diffaudit: error: no command given (`diffaudit --help` lists them)\n"
    assert main([]) == 2 and "usage: diffaudit" in capsys.readouterr().out  # without --json: the overview


def test_inpaint_help_says_up_front_that_it_takes_pixel_space_models_only():
    """A Stable Diffusion user learnt that inpaint does not take their pipeline only from its refusal."""
    text = re.sub(r"\s+", " ", _command_help("inpaint"))
    assert "Pixel-space diffusion models only" in text and "a Stable Diffusion pipeline is refused" in text


def test_a_pattern_the_shell_expanded_is_said_as_such(tmp_path, capsys):
    """`--data shards-*.tar` unquoted: the shell passes every match, --data takes the first and the rest are
    unrecognised; the refusal says what happened and to quote the pattern. Stray words that are no files
    get no such words."""
    from diffaudit.cli.main import main

    shards = [tmp_path / f"shards-00000{i}.tar" for i in range(3)]
    for s in shards:
        s.write_bytes(b"")
    with pytest.raises(SystemExit):
        main(["dedup", "--data", *map(str, shards), "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert (f"(the shell expanded a pattern into 3 files after --data, which takes one: quote it, e.g. --data "
            f"'shards-*.tar' or --data 'shards-{{000000..000004}}.tar', for diffaudit to expand; --data took {shards[0]})") in err
    with pytest.raises(SystemExit):
        main(["dedup", "--data", str(shards[0]), "stray", "--out", str(tmp_path / "d")])
    assert "shell expanded" not in capsys.readouterr().err


def test_a_dp_flag_given_to_audit_says_how_a_dp_model_is_audited(tmp_path, capsys):
    """`audit --dp-noise` (or dp_noise in --config) was a bare "unrecognized arguments": audit trains no DP-SGD
    model, and the refusal now says to train one with `train --dp-*` and audit it with --model."""
    from diffaudit.cli.main import main

    with pytest.raises(SystemExit):
        main(["audit", "--data", "digits", "--dp-noise", "1", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --dp-noise 1; audit trains no DP-SGD model of its own" in err
    assert "audit it with --model, whose shadows then train with its DP-SGD" in err
    config = tmp_path / "c.toml"
    config.write_text("dp_epsilon = 8.0\n")
    assert main(["audit", "--data", "digits", "--config", str(config), "--out", str(tmp_path / "a")]) == 2
    assert "unknown option(s) dp-epsilon; audit trains no DP-SGD model of its own" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # another command's unknown flag: no such hint
        main(["train", "--data", "digits", "--mia", "loss", "--out", str(tmp_path / "t")])
    assert "DP-SGD" not in capsys.readouterr().err
