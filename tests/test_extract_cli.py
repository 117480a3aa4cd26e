"""``diffaudit extract`` in-process: result fields, resume, interruption, calibration, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

import diffaudit.cli.extract as extract_cli
from diffaudit.cli.main import main
from helpers import cifar_images, noisy_copies, strict_json

PROMPT_FIELDS = {"prompt", "n_generations", "largest_clique", "members", "medoid", "mean_distance", "flagged", "bound_hit"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("extract")
    train = cifar_images(60, "train")
    test = cifar_images(120, "test")
    cond = np.concatenate([noisy_copies(train[17], 12, 1), test[:12], noisy_copies(train[3], 12, 2), test[12:24]])
    prompts = np.array(["memorized one"] * 12 + ["fresh one"] * 12 + ["memorized two"] * 12 + ["fresh two"] * 12)
    np.savez(d / "cond.npz", images=cond, prompts=prompts)
    unc = np.concatenate([noisy_copies(train[5], 11, 3), test[24:120]])
    np.savez(d / "unc.npz", images=unc)
    (d / "truth.json").write_text(json.dumps(["memorized one", "memorized two"]))
    return d


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


def test_conditional_result_fields_and_resume(files, tmp_path, capsys):
    out = tmp_path / "ex"
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--device", "cpu") == 0
    r = strict_json(out / "result.json")
    assert {"schema_version", "command", "settings", "seeds", "versions"} <= r.keys()
    assert r["mode"] == "conditional" and r["n_prompts"] == 4 and r["n_flagged"] == 2 and r["bound_hit"] is False
    assert r["settings"]["edge_threshold"] == 0.1 and r["settings"]["min_clique"] == 10
    for p in r["prompts"]:
        assert PROMPT_FIELDS <= p.keys()
    flagged = {p["prompt"]: p for p in r["prompts"] if p["flagged"]}
    assert set(flagged) == {"memorized one", "memorized two"}
    assert flagged["memorized one"]["members"] == [f"npz:{i}" for i in range(12)]
    assert [p["rank"] for p in r["prompts"][:2]] == [1, 2]
    before = (out / "result.json").read_bytes()
    assert main(["extract", "--samples", str(files / "cond.npz"), "--out", str(out), "--device", "cpu"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert (out / "result.json").read_bytes() == before  # never rewritten


def test_interrupted_run_continues_from_finished_parts(files, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_cli, "PROMPTS_PER_PART", 1)
    calls = []

    def crash_after_first(name):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # stands in for a crash after two finished parts

    monkeypatch.setattr(extract_cli, "fault_point", crash_after_first)
    out = tmp_path / "ex"
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--device", "cpu") == 130
    assert sorted(p.name for p in (out / "parts").iterdir()) == ["part-000000.json", "part-000001.json"]
    assert not (out / "result.json").exists()
    monkeypatch.setattr(extract_cli, "fault_point", lambda name: calls.append(name))
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--device", "cpu") == 0
    assert len(calls) == 4  # parts 3 and 4 only
    fresh = tmp_path / "fresh"
    assert run("extract", "--samples", files / "cond.npz", "--out", fresh, "--device", "cpu") == 0
    a, b = strict_json(out / "result.json"), strict_json(fresh / "result.json")
    assert a["prompts"] == b["prompts"]


def test_unconditional_black_box_mode(files, tmp_path):
    out = tmp_path / "unc"
    assert run("extract", "--samples", files / "unc.npz", "--out", out, "--device", "cpu", "--k-neighbors", "16") == 0
    r = strict_json(out / "result.json")
    assert r["mode"] == "unconditional" and r["n_groups"] == 1
    g = r["groups"][0]
    assert g["size"] == 11 and g["members"] == [f"npz:{i}" for i in range(11)] and g["medoid"] in g["members"]
    assert any(p.name.startswith("knn-") for p in (out / "knn").iterdir())  # resumable kNN chunks
    again = tmp_path / "unc2"
    assert run("extract", "--samples", files / "unc.npz", "--out", again, "--device", "cpu", "--k-neighbors", "16") == 0
    assert (again / "result.json").read_bytes() == (out / "result.json").read_bytes()  # deterministic bytes


def test_calibration_mode(files, tmp_path):
    out = tmp_path / "cal"
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--calibrate", files / "truth.json",
               "--sweep-thresholds", "0.01,0.1", "--sweep-min-clique", "5,10", "--device", "cpu") == 0
    cal = strict_json(out / "result.json")["calibration"]
    pts = {(p["edge_threshold"], p["min_clique"]): p for p in cal["points"]}
    assert cal["n_memorized"] == 2 and len(pts) == 4
    assert pts[(0.1, 10)]["precision"] == 1.0 and pts[(0.1, 10)]["recall"] == 1.0
    assert pts[(0.01, 10)]["precision"] is None and pts[(0.01, 10)]["recall"] == 0.0
    # the sweeps in another order (or a value repeated) are the same sweep: found finished, also where an
    # earlier version recorded them as given (was refused: "--sweep-thresholds (was [0.01, 0.1], now [0.1, 0.01])")
    stamp = (out / "result.json").stat().st_mtime_ns
    again = ("extract", "--samples", files / "cond.npz", "--out", out, "--calibrate", files / "truth.json",
             "--sweep-thresholds", "0.1,0.01", "--sweep-min-clique", "10,5,5", "--device", "cpu")
    assert run(*again) == 0
    record = json.loads((out / "settings.json").read_text())
    record["settings"].update(sweep_thresholds=[0.1, 0.01], sweep_min_clique=[10, 5])
    (out / "settings.json").write_text(json.dumps(record))
    assert run(*again) == 0 and (out / "result.json").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("argv,message", [
    (["--edge-threshold", "0"], "--edge-threshold must be in (0, 1]"),
    (["--edge-threshold", "1.5"], "--edge-threshold must be in (0, 1]"),
    (["--min-clique", "1"], "--min-clique must be at least 2"),
    (["--sweep-thresholds", "0.1,x", "--calibrate", "truth.json"], "--sweep-thresholds"),
    (["--calibrate", "missing.json"], "missing.json: file does not exist"),
])
def test_clear_errors(files, tmp_path, capsys, argv, message):
    argv = [str(files / a) if a.endswith(".json") else a for a in argv]
    assert run("extract", "--samples", files / "cond.npz", "--out", tmp_path / "e", *argv) == 2
    assert message in capsys.readouterr().err


def test_mode_and_settings_errors(files, tmp_path, capsys):
    assert run("extract", "--samples", files / "unc.npz", "--out", tmp_path / "a", "--mode", "conditional") == 2
    assert "carries no prompts" in capsys.readouterr().err
    out = tmp_path / "b"
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--device", "cpu") == 0
    assert run("extract", "--samples", files / "cond.npz", "--out", out, "--min-clique", "5") == 2
    assert "--min-clique (was 10, now 5)" in capsys.readouterr().err


def test_calibration_distances_are_exact_on_every_device(files, tmp_path, monkeypatch):
    """The sweep compares each distance with several thresholds, so it asks for float64 (exact)
    distances: on CUDA the default GEMM is exact only near the graph's own threshold."""
    import diffaudit.cli.extract as extract_cli

    seen = []
    real = extract_cli.near_duplicate_graph

    def spy(images, **kw):
        seen.append(kw.get("compute", "auto"))
        return real(images, **kw)

    monkeypatch.setattr(extract_cli, "near_duplicate_graph", spy)
    assert run("extract", "--samples", files / "cond.npz", "--out", tmp_path / "cal", "--calibrate", files / "truth.json",
               "--device", "cpu") == 0
    assert seen and set(seen) == {"float64"}


def test_resume_refuses_samples_rewritten_in_place(files, tmp_path, capsys):
    samples = tmp_path / "unc.npz"
    images = np.load(files / "unc.npz")["images"]
    np.savez(samples, images=images)
    out = tmp_path / "x"
    args = ("extract", "--samples", samples, "--out", out, "--device", "cpu", "--k-neighbors", "16")
    assert run(*args) == 0
    (out / "result.json").unlink()  # as if killed after the cached neighbour search
    np.savez(samples, images=images[::-1])
    capsys.readouterr()
    assert run(*args) == 2 and "the contents of --samples (was " in capsys.readouterr().err


def test_default_grid_is_the_audits_rule():
    """One rule for `extract` and the audit: 4 tiles per side, fewer under 16 px so tiles keep >= 4 px."""
    from diffaudit.attacks.extraction.grid import default_grid, resolve_grid

    assert [default_grid((s, s, 1)) for s in (1, 3, 4, 8, 12, 15, 16, 32, 512)] == [1, 1, 1, 2, 3, 3, 4, 4, 4]
    assert default_grid((8, 32, 3)) == 2  # the shorter side decides
    assert resolve_grid(None, (8, 8, 1)) == 2 and resolve_grid(4, (8, 8, 1)) == 4  # an explicit --grid is kept


def test_help_of_grid_is_the_same_in_extract_and_audit():
    import argparse

    from diffaudit.attacks.extraction.grid import GRID_HELP
    from diffaudit.cli import audit, extract

    def grid_help(module) -> str:
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        return next(a for a in p._actions if a.dest == "grid").help

    assert grid_help(audit) == GRID_HELP and grid_help(extract).startswith(GRID_HELP)
    assert "fewer for images under 16 px" in GRID_HELP


def test_small_images_get_the_audits_grid_unless_one_is_given(tmp_path):
    """8x8 generations: grid 2 (4-pixel tiles) as the audit's extract stage uses, not 4 (2-pixel tiles)."""
    from diffaudit.data import load_dataset

    digits = load_dataset("digits", subset=60).images
    samples = tmp_path / "small.npz"
    np.savez(samples, images=np.concatenate([noisy_copies(digits[0], 12, 1), digits[1:]]))
    assert run("extract", "--samples", samples, "--out", tmp_path / "a", "--device", "cpu", "--k-neighbors", "16") == 0
    assert strict_json(tmp_path / "a" / "result.json")["settings"]["grid"] == 2
    assert run("extract", "--samples", samples, "--out", tmp_path / "b", "--device", "cpu", "--k-neighbors", "16",
               "--grid", "4") == 0
    assert strict_json(tmp_path / "b" / "result.json")["settings"]["grid"] == 4
    big = tmp_path / "a32.npz"  # 32x32: the paper's 4x4
    np.savez(big, images=np.load(tmp_path / "small.npz")["images"].repeat(4, axis=1).repeat(4, axis=2))
    assert run("extract", "--samples", big, "--out", tmp_path / "c", "--device", "cpu", "--k-neighbors", "16") == 0
    assert strict_json(tmp_path / "c" / "result.json")["settings"]["grid"] == 4
    # a folder that recorded grid 4 for 8x8 images (the default before) resumes without --grid, as made
    assert run("extract", "--samples", samples, "--out", tmp_path / "b", "--device", "cpu", "--k-neighbors", "16") == 0
    assert strict_json(tmp_path / "b" / "result.json")["settings"]["grid"] == 4
    assert run("extract", "--samples", samples, "--out", tmp_path / "b", "--device", "cpu", "--k-neighbors", "16",
               "--fresh") == 0
    assert strict_json(tmp_path / "b" / "result.json")["settings"]["grid"] == 2


def test_missing_samples_names_the_flag(tmp_path, capsys):
    assert run("extract", "--samples", "nope", "--out", tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert "--samples nope" in err and "sample store" in err and "built-in name" not in err


def test_another_commands_output_folder_is_not_generations(tmp_path, capsys):
    """An audit folder holds plots and a report, which an image-folder read would take for generations (and
    then ask for a flag extract does not have): the error names the folder's command and its sample store."""
    from diffaudit.core.outdir import prepare_out_dir

    prepare_out_dir(tmp_path / "a", "audit", {"n_samples": 8})
    prepare_out_dir(tmp_path / "a" / "samples", "sample", {"n_samples": 8})
    assert run("extract", "--samples", tmp_path / "a", "--out", tmp_path / "e") == 2
    err = capsys.readouterr().err
    assert f"--samples {tmp_path / 'a'} is the output folder of `diffaudit audit`, not generations" in err
    assert f"pass --samples {tmp_path / 'a' / 'samples'}" in err and "--image-size" not in err
    prepare_out_dir(tmp_path / "m", "mia", {"attack": "loss"})
    assert run("verify", "--samples", tmp_path / "m", "--data", "digits", "--out", tmp_path / "v") == 2
    assert "output folder of `diffaudit mia`, not generations; pass the sample store" in capsys.readouterr().err


def test_prompts_too_few_to_flag_are_said_and_reported(files, tmp_path, capsys):
    """12 generations per prompt against --min-clique 20: no prompt can be flagged, so "0 flagged" is no finding.
    extract says so, records it, and the report's verdict says nothing was measured, not "0 flagged"."""
    out = tmp_path / "ex"
    assert main(["extract", "--samples", str(files / "cond.npz"), "--out", str(out), "--min-clique", "20",
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert ("4 of 4 prompts have fewer generations than --min-clique 20 (as few as 12), so none of them can be "
            "flagged") in err
    assert strict_json(out / "result.json")["n_prompts_below_min_clique"] == 4
    assert main(["--quiet", "extract", "--samples", str(files / "cond.npz"), "--out", str(tmp_path / "q"),
                 "--min-clique", "20", "--device", "cpu"]) == 0  # a warning, said under --quiet too
    assert capsys.readouterr().err.startswith("diffaudit extract: warning: 4 of 4 prompts have fewer generations")
    assert main(["--quiet", "report", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert "Extraction could flag no prompt: each of the 4 prompts has fewer generations than the minimum clique (20)" in html
    assert "4 of the 4 prompts have fewer generations than the minimum clique (20)" in html
    # enough generations: nothing said
    assert main(["extract", "--samples", str(files / "cond.npz"), "--out", str(tmp_path / "ok"), "--device", "cpu"]) == 0
    assert "fewer generations than --min-clique" not in capsys.readouterr().err
    assert strict_json(tmp_path / "ok" / "result.json")["n_prompts_below_min_clique"] == 0


def test_the_folder_export_wrote_is_generations(tmp_path, capsys):
    """`export` writes the generations of a store as one PNG each (named by id): that folder is generations, read
    as an image folder with the same pixels as the store, not refused as another command's output."""
    import numpy as np

    from diffaudit.store.read import read_samples
    from tests.helpers import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "run")
    assert run("--quiet", "sample", "--model", model, "--n", "6", "--steps", "2", "--out", tmp_path / "s", "--device", "cpu") == 0
    assert run("--quiet", "export", "--samples", tmp_path / "s", "--out", tmp_path / "x") == 0
    assert run("--quiet", "extract", "--samples", tmp_path / "x", "--out", tmp_path / "e", "--device", "cpu") == 0
    exported, stored = read_samples(str(tmp_path / "x")), read_samples(str(tmp_path / "s"))
    order = [stored.keys.index(k.removesuffix(".png")) for k in exported.keys]
    assert np.array_equal(exported.images, stored.images[order])


def test_ground_truth_class_indices_name_the_class_prompts(tmp_path):
    """A class-conditional model's prompts are "0".."9": `[1, 4]` names two of them, as `["1", "4"]` does; a bool or a
    float is still refused, naming what the list may hold."""
    from diffaudit.cli.extract import _load_ground_truth
    from diffaudit.core.errors import DiffauditError

    for name, text in (("ints.json", "[1, 4]"), ("strs.json", '["1", "4"]'), ("wrapped.json", '{"memorized": [1, "4"]}')):
        (tmp_path / name).write_text(text)
        assert _load_ground_truth(str(tmp_path / name)) == {"1", "4"}, name
    for bad in ("[true]", "[1.5]"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(DiffauditError, match="class indices"):
            _load_ground_truth(str(tmp_path / "bad.json"))
