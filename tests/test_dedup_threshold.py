"""``dedup --threshold`` is checked before the output folder records it: a NaN or an out-of-range value is a
clear error that leaves no settings behind, so the corrected command runs in the same folder."""

from __future__ import annotations

import math

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.defenses.dedup import check_threshold


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf", "1.5", "-1.01"])  # --threshold=-inf: argparse reads "-inf" as a flag
def test_bad_threshold_is_refused_before_the_folder_and_the_fix_then_runs(tmp_path, capsys, bad):
    out = tmp_path / "dd"
    argv = ["--quiet", "dedup", "--data", "digits", "--subset", "40", "--out", str(out)]
    assert main([*argv, f"--threshold={bad}"]) == 2
    assert "--threshold must be a finite similarity" in capsys.readouterr().err
    assert not (out / "settings.json").exists()
    assert main([*argv, "--threshold", "0.97"]) == 0  # not refused as "other settings"
    assert (out / "result.json").exists()


def test_threshold_range_follows_the_metric():
    assert check_threshold(-0.5, "cosine") == -0.5 and check_threshold(1, "hamming") == 1.0
    for value, metric in ((-0.5, "hamming"), (math.nan, "cosine"), (math.inf, "hamming"), (1.0001, "cosine")):
        with pytest.raises(DiffauditError, match="--threshold"):
            check_threshold(value, metric)


def test_a_low_threshold_that_removes_most_images_is_warned_of(tmp_path, capsys):
    """-1 (in range) joins every pair of digits into one group: said, naming the calibrated value; the
    default threshold on the same images says nothing."""
    argv = ["--quiet", "dedup", "--data", "digits", "--subset", "40"]
    assert main([*argv, "--out", str(tmp_path / "low"), "--threshold=-1"]) == 0
    err = capsys.readouterr().err
    assert "--threshold -1 removes 39 of 40 images as duplicates of another" in err
    assert "calibrated 0.97" in err
    assert main([*argv, "--out", str(tmp_path / "default")]) == 0
    assert "warning" not in capsys.readouterr().err
