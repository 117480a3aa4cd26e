"""An audit resumed with another spelling of the same settings is the same audit: values the stages
resolve (`--grid`, `--rule auto`, `--log-every`, `--draws`) are recorded as they resolve them, and lists
whose order means nothing (`--timesteps`, `--sweep`) are recorded sorted (a repeated value is still refused). Before, each of these was
refused as "other settings", and the advice, `--redo`, deleted finished stages."""

from __future__ import annotations

import json

from diffaudit.cli.main import main

TINY = ["audit", "--data", "digits", "--subset", "40", "--train-size", "16", "--steps", "4", "--batch-size", "8",
        "--warmup-steps", "1", "--checkpoint-every", "4", "--n-samples", "8", "--sample-steps", "2",
        "--timesteps", "10,100", "--sweep", "50,200", "--device", "cpu", "--quiet"]


def _with(argv: list[str], **flags: str) -> list[str]:
    out = list(argv)
    for flag, value in flags.items():
        name = "--" + flag.replace("_", "-")
        if name in out:
            out[out.index(name) + 1] = value
        else:
            out += [name, value]
    return out


def test_an_audit_resumes_under_every_spelling_of_its_settings(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(TINY + ["--out", str(out)]) == 0
    stamp = (out / "result.json").stat().st_mtime_ns
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert (settings["grid"], settings["rule"], settings["log_every"], settings["draws"]) == (2, "ratio", 2, 1)  # log_every: gcd(50, 4)
    assert (settings["timesteps"], settings["sweep"]) == ("10,100", "50,200")
    for spelling in ({"timesteps": "100, 10,"}, {"sweep": "200, 50"}, {"grid": "2"}, {"rule": "ratio"},
                     {"log_every": "2"}, {"draws": "1"}):
        capsys.readouterr()
        assert main(_with(TINY, **spelling) + ["--out", str(out)]) == 0, (spelling, capsys.readouterr().err)
        assert (out / "result.json").stat().st_mtime_ns == stamp, spelling  # found finished, nothing redone
    # another value is still another audit
    assert main(_with(TINY, grid="4") + ["--out", str(out)]) == 2
    assert "--grid (was 2, now 4)" in capsys.readouterr().err


def test_an_audit_recorded_before_the_values_were_resolved_resumes(tmp_path, capsys):
    """A folder an earlier version wrote recorded the values as typed (grid and log_every null, rule auto,
    the timesteps in the order given): it resumes, and is found finished."""
    out = tmp_path / "a"
    assert main(TINY + ["--out", str(out)]) == 0
    stamp = (out / "result.json").stat().st_mtime_ns
    record = json.loads((out / "settings.json").read_text())
    record["settings"].update(grid=None, rule="auto", log_every=None, draws=None, timesteps="100,10", sweep="200, 50")
    (out / "settings.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert main(TINY + ["--out", str(out)]) == 0, capsys.readouterr().err
    assert (out / "result.json").stat().st_mtime_ns == stamp
