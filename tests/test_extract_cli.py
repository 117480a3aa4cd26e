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
    assert "min_clique (was 10, now 5)" in capsys.readouterr().err


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
    assert run(*args) == 2 and "samples_identity" in capsys.readouterr().err
