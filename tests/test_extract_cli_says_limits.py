"""``diffaudit extract`` says what its result holds: the calibration sweep (line and report table), the
unconditional search's limits (components cut to --max-component, saturated generations), and refuses
options that cannot apply (--grid finer than the images, a sweep without --calibrate) before any work.
On 8x8 digits, as the user who found them did."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from helpers import noisy_copies, strict_json


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """cond.npz: two prompts of 12 copies of a digit, two of 12 distinct digits; unc.npz: 30 copies of a
    digit among 60 distinct ones; plain.npz: 60 distinct digits (no near-duplicate at all)."""
    from diffaudit.data import load_dataset

    d = tmp_path_factory.mktemp("digits")
    x = load_dataset("digits", subset=200).images
    cond = np.concatenate([noisy_copies(x[0], 12, 1), x[10:22], noisy_copies(x[3], 12, 2), x[30:42]])
    prompts = np.array(["memorized one"] * 12 + ["fresh one"] * 12 + ["memorized two"] * 12 + ["fresh two"] * 12)
    np.savez(d / "cond.npz", images=cond, prompts=prompts)
    np.savez(d / "unc.npz", images=np.concatenate([noisy_copies(x[5], 30, 4), x[100:160]]))
    np.savez(d / "plain.npz", images=x[100:160])
    (d / "truth.json").write_text(json.dumps(["memorized one", "memorized two", "not a sample prompt"]))
    (d / "elsewhere.json").write_text(json.dumps(["a prompt of another run", "and another"]))
    return d


def extract(*argv) -> int:
    return main(["extract", *map(str, argv), "--device", "cpu"])


def test_calibration_is_summarised_warned_and_tabled_in_the_report(digits, tmp_path, capsys):
    out = tmp_path / "cal"
    assert extract("--samples", digits / "cond.npz", "--out", out, "--calibrate", digits / "truth.json",
                   "--sweep-thresholds", "0.01,0.1", "--sweep-min-clique", "5,10") == 0
    err = capsys.readouterr().err
    assert ("extract: warning: 1 of the 3 --calibrate prompts is no prompt of --samples ('not a sample prompt'): "
            "the calibration leaves it out (recall counts the 2 that are)") in err
    assert ("extract: calibration against 2 memorized prompts: at edge threshold 0.1, min clique 5 -> precision 1.000, "
            "recall 1.000 (best F1); 10 -> precision 1.000, recall 1.000; all 4 sweep points in result.json") in err
    assert strict_json(out / "result.json")["calibration"]["unknown_prompts"] == 1
    assert main(["--quiet", "report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<table class="grid" data-kind="calibration">' in html
    assert '<th scope="col">min clique 5</th><th scope="col">min clique 10</th>' in html
    assert '<tr><th scope="row">0.01</th><td>– / 0.000</td><td>– / 0.000</td></tr>' in html  # nothing flagged: no precision
    assert '<tr><th scope="row">0.1</th><td><b>1.000 / 1.000</b></td><td>1.000 / 1.000 (this run)</td></tr>' in html
    assert 'data-kind="calibration-unknown">1 ground-truth prompt is no prompt of the samples' in html
    assert "2 of 4 prompts flagged." in html
    cal = strict_json(out / "summary.json")["extraction"]["calibration"]  # the sweep's numbers, for scripts
    assert cal["n_memorized"] == 2 and cal["unknown_prompts"] == 1 and len(cal["points"]) == 4
    assert cal["best"] == {"edge_threshold": 0.1, "min_clique": 5, "flagged": 2, "precision": 1.0, "recall": 1.0}
    assert {"edge_threshold": 0.01, "min_clique": 10, "flagged": 0, "precision": None, "recall": 0.0} in cal["points"]


def test_calibration_refuses_a_ground_truth_naming_no_sample_prompt(digits, tmp_path, capsys):
    out = tmp_path / "cal"
    assert extract("--samples", digits / "cond.npz", "--out", out, "--calibrate", digits / "elsewhere.json") == 2
    err = capsys.readouterr().err
    assert "elsewhere.json: none of its 2 prompts is a prompt of --samples ('a prompt of another run'" in err
    assert "would be meaningless" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("argv,message", [
    (["--sweep-min-clique", "5"], "--sweep-min-clique applies only with --calibrate"),
    (["--sweep-thresholds", "0.1"], "--sweep-thresholds applies only with --calibrate"),
    (["--sweep-min-clique", "0,a"], "--sweep-min-clique applies only with --calibrate"),
    (["--sweep-min-clique", "0,a", "--calibrate", "truth.json"], "--sweep-min-clique: expected comma-separated integers, got '0,a'"),
    (["--sweep-min-clique", "0,5", "--calibrate", "truth.json"], "--sweep-min-clique values must be at least 2"),
])
def test_sweeps_are_refused_without_calibrate_or_when_malformed(digits, tmp_path, capsys, argv, message):
    argv = [str(digits / a) if a.endswith(".json") else a for a in argv]
    assert extract("--samples", digits / "cond.npz", "--out", tmp_path / "e", *argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e").exists()


@pytest.mark.parametrize("store", ["plain.npz", "unc.npz", "cond.npz"])
def test_grid_finer_than_the_images_is_refused_whatever_the_data(digits, tmp_path, capsys, store):
    """plain.npz has no near-duplicate, so no tiled l2 is ever computed: --grid 100 passed there ("0 cliques")."""
    out = tmp_path / "g"
    assert extract("--samples", digits / store, "--out", out, "--grid", "100") == 2
    assert "--grid 100 is finer than the 8x8 generations: at most 8 tiles per side" in capsys.readouterr().err
    assert not out.exists()
    assert extract("--samples", digits / store, "--out", out, "--grid", "8") == 0  # a 1-pixel tile is allowed


def test_unconditional_limits_are_said_and_reported(digits, tmp_path, capsys):
    out = tmp_path / "unc"
    assert extract("--samples", digits / "unc.npz", "--out", out, "--k-neighbors", "5", "--max-component", "20",
                   "--min-clique", "5") == 0
    cap = capsys.readouterr()
    assert ("extract: 1 connected component larger than --max-component 20 was cut to its 20 best-connected "
            "generations, so cliques among the generations cut away may be missed: raise --max-component") in cap.err
    assert "extract: 30 generations are saturated (all 5 nearest neighbours within --edge-threshold)" in cap.err
    assert "raise --k-neighbors" in cap.err
    assert "extract: 1 clique of >= 5 in 1 component (" in cap.err
    assert "extract: 1 clique of near-identical generations (sizes 20) ->" in cap.out
    r = strict_json(out / "result.json")
    assert r["n_truncated_components"] == 1 and r["n_saturated"] == 30 and r["groups"][0]["truncated"]
    assert main(["--quiet", "report", str(out)]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert ("1 connected component larger than --max-component (20) was cut to its 20 best-connected generations: "
            "cliques among the generations cut away may be missed") in html
    assert "30 generations are saturated (all 5 nearest neighbours within the edge threshold)" in html
    assert 'data-kind="component-cut"' in html
    assert "1 clique.</p>" in html and "1 cliques" not in html
    assert "candidate memorized image" not in html and "several cliques can copy the same training image" in html
    ex = strict_json(out / "summary.json")["extraction"]
    assert ex["n_truncated_components"] == 1 and ex["n_saturated"] == 30
    # a whole component, k = n - 1: nothing said
    assert extract("--samples", digits / "unc.npz", "--out", tmp_path / "whole", "--k-neighbors", "89") == 0
    assert "cut to" not in capsys.readouterr().err
    assert main(["--quiet", "report", str(tmp_path / "whole")]) == 0
    assert "--max-component (" not in (tmp_path / "whole" / "report.html").read_text(encoding="utf-8")
    assert "n_truncated_components" not in strict_json(tmp_path / "whole" / "summary.json")["extraction"]


def test_many_clique_sizes_say_how_many_more_and_help_says_cliques_are_candidate_copies(tmp_path):
    import argparse

    from diffaudit.cli import extract as extract_cli

    groups = [{"size": 30 - i} for i in range(25)]
    line = extract_cli._summary({"mode": "unconditional", "n_groups": 25, "groups": groups}, tmp_path)
    assert "(sizes 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, ... and 15 more) ->" in line
    one = extract_cli._summary({"mode": "unconditional", "n_groups": 1, "groups": groups[:1]}, tmp_path)
    assert one.startswith("extract: 1 clique of near-identical generations (sizes 30) ->")
    p = argparse.ArgumentParser(description=extract_cli.DESCRIPTION)
    extract_cli.add_arguments(p)
    text = " ".join(p.format_help().split())
    assert "one per memorized image" not in text and "several cliques can copy the same training image" in text
    assert "reports precision/recall (a line here, a table in `diffaudit report`)" in text
