"""Comma-separated option values: one parser, and a value lost between commas is refused, not dropped."""

import pytest

from diffaudit.cli.main import main
from diffaudit.core.comma_lists import comma_values
from diffaudit.core.errors import DiffauditError


def test_values_spaces_and_one_trailing_comma():
    assert comma_values("10, 100", int, "integers") == [10, 100]
    assert comma_values("10,100,", int, "integers") == [10, 100]
    assert comma_values(" 0.5 ", float, "numbers") == [0.5]
    assert comma_values("", int, "integers") == [] and comma_values("  ", int, "integers") == []


@pytest.mark.parametrize("text", ["1,,2", ",1", "1,,"])
def test_an_empty_value_between_commas_is_refused(text):
    with pytest.raises(DiffauditError, match=r"^--timesteps: expected comma-separated integers, got .*: a value is "
                                             r"missing between commas$"):
        comma_values(text, int, "integers", "--timesteps")


def test_a_value_that_does_not_convert_is_refused_naming_the_option_or_not():
    with pytest.raises(DiffauditError, match=r"^--repeats: expected comma-separated integers, got '1,x'$"):
        comma_values("1,x", int, "integers", "--repeats")
    with pytest.raises(DiffauditError, match=r"^expected comma-separated numbers, got '0.1,1e'$"):
        comma_values("0.1,1e", float, "numbers")


@pytest.mark.parametrize("argv", [["mia", "--timesteps", "100,,200"], ["audit", "--sweep", "10,,50"],
                                  ["extract", "--samples", "x", "--calibrate", "t.json", "--sweep-thresholds", "0.1,,0.2"],
                                  ["canaries", "--repeats", "1,,4"]])
def test_commands_refuse_a_lost_value_before_any_work(argv, tmp_path, capsys):
    out = tmp_path / "out"
    try:
        rc = main([*argv, "--out", str(out), "--device", "cpu", "--quiet"])
    except SystemExit as exc:  # argparse's own refusal (mia's --timesteps is parsed by its type)
        rc = exc.code
    assert rc == 2
    assert "a value is missing between commas" in capsys.readouterr().err and not out.exists()
