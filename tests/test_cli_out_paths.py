"""``--out`` and the other path options are checked before any work: an object-store URL where the command
writes local files only (read as a path, ``s3://bkt/x`` became a folder ``./s3:/bkt/x`` and the command
said it had exported there), a ``file://`` URL taken as its path, and an empty value refused (read as a
path, "" was the current folder)."""

from __future__ import annotations

import numpy as np
import pytest

from diffaudit.cli.main import main


@pytest.mark.parametrize("argv", [
    ["export", "--samples", "store"],
    ["dedup", "--data", "digits", "--subset", "16"],
    ["prompts", "--data", "digits", "--subset", "16"],
    ["membership", "--data", "digits", "--subset", "16"],
    ["train", "--data", "digits", "--subset", "16", "--steps", "2"],
])
def test_an_object_store_out_is_refused_where_the_command_writes_local_files(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--out", "s3://bucket/result"]) == 2
    err = capsys.readouterr().err
    assert f"--out s3://bucket/result: `diffaudit {argv[0]}` writes to a local or mounted folder, not to an object store" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no ./s3:/bucket/result


def test_a_file_url_out_is_its_path(tmp_path, capsys):
    assert main(["--quiet", "membership", "--data", "digits", "--subset", "16", "--models", "2",
                 "--out", f"file://{tmp_path}/m.npz"]) == 0
    with np.load(tmp_path / "m.npz") as f:
        assert f["membership"].shape == (16, 2)
    assert main(["membership", "--data", "digits", "--out", "file://otherhost/m.npz"]) == 2
    assert "not a path of this machine" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [
    (["export", "--samples", "store", "--out", ""], "--out"),
    (["export", "--samples", "", "--out", "e"], "--samples"),
    (["dedup", "--data", " ", "--out", "d"], "--data"),
    (["dedup", "--data", "digits", "--data-cache", "", "--out", "d"], "--data-cache"),
    # the fuzzing walk's: `inpaint --mask ''` read the current folder as a mask image
    (["inpaint", "--model", "m", "--shadow", "s", "--data", "digits", "--mask", "", "--out", "i"], "--mask"),
    (["verify", "--samples", "s", "--data", "digits", "--baseline", "", "--out", "v"], "--baseline"),
    (["train", "--data", "digits", "--repeat", "", "--out", "t"], "--repeat"),
])
def test_an_empty_path_is_refused_by_its_flag(argv, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert f"error: {flag} is empty: give a path" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_data_cache_that_is_a_file_is_named_not_the_out_folder(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    assert main(["dedup", "--data", "digits", "--subset", "16", "--data-cache", str(tmp_path / "afile"),
                 "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert f"--data-cache {tmp_path / 'afile'} is a file, not a folder for the decoded images" in err
    assert "--out" not in err


@pytest.mark.parametrize("command,out", [
    (["audit", "--data", "imgs", "--n-samples", "4"], "imgs/audit"),
    (["train", "--data", "imgs", "--steps", "2"], "imgs"),
    (["mia", "--data", "imgs", "--membership", "m.npz", "--shadows", "s"], "imgs/./sub/../mia"),
    (["audit", "--model", "run", "--data", "digits", "--heldout", "imgs"], "imgs/audit"),
])
def test_an_out_inside_a_data_folder_is_refused(command, out, tmp_path, monkeypatch, capsys, write_images):
    # the audit's plots written into --data would be read as its images by the next run (a resume refused
    # for changed data, or with --image-size, the plots trained on)
    rng = np.random.default_rng(0)
    write_images({f"{i}.png": rng.integers(0, 256, (8, 8), dtype=np.uint8) for i in range(6)}, tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", out]) == 2
    err = capsys.readouterr().err
    flag = "--heldout" if "--heldout" in command else "--data"
    assert f"--out {out} lies inside {flag} imgs: what this command writes there" in err
    assert "choose an --out outside imgs" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == [f"{i}.png" for i in range(6)]


def test_an_out_beside_a_data_folder_whose_name_it_begins_with_is_not_inside_it(tmp_path, monkeypatch, write_images):
    rng = np.random.default_rng(0)
    write_images({f"{i}.png": rng.integers(0, 256, (8, 8), dtype=np.uint8) for i in range(6)}, tmp_path / "imgs")
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "membership", "--data", "imgs", "--models", "2", "--out", "imgs-split.npz"]) == 0


def test_an_audit_folder_given_as_a_sample_store_points_at_its_samples(tmp_path, capsys):
    (tmp_path / "audit" / "samples").mkdir(parents=True)
    (tmp_path / "audit" / "samples" / "manifest.json").write_text("{}")
    assert main(["export", "--samples", str(tmp_path / "audit"), "--out", str(tmp_path / "png")]) == 2
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'audit'} is not a sample store (no manifest.json); {tmp_path / 'audit' / 'samples'} is one "
            "(an audit's generations)") in err


def test_another_commands_folder_given_to_export_is_said_as_such(tmp_path, capsys):
    """A training run given as --samples: export says whose folder it is, as verify and extract do, not only
    that it lacks a manifest."""
    from tests.helpers import make_tiny_model_dir
    from diffaudit.core.outdir import prepare_out_dir

    prepare_out_dir(tmp_path / "run", "train", {"steps": 2})
    make_tiny_model_dir(tmp_path / "run")
    assert main(["export", "--samples", str(tmp_path / "run"), "--out", str(tmp_path / "png")]) == 2
    assert (f"{tmp_path / 'run'} is the output folder of `diffaudit train`, not a sample store; pass the sample store "
            "`diffaudit sample` wrote") in capsys.readouterr().err


def test_an_out_inside_another_commands_folder_is_refused(tmp_path, capsys):
    """`export --out STORE/png`, `train --out RUN/unet` and `membership --out RUN/m.npz` filled other commands'
    folders with unrelated files (and a store holding exported PNGs then read as a dataset); another result's
    report written into a verify folder replaced that folder's own report.html and summary.json. An audit's
    and `shadows`' folders hold the folders of the commands they run, so an --out inside those stays allowed,
    and so does a report's --out inside the folder it renders, where its default puts it."""
    from diffaudit.core.io import write_json_atomic
    from diffaudit.core.outdir import SETTINGS_FILE, settings_record

    run = tmp_path / "run"
    assert main(["--quiet", "train", "--data", "digits", "--subset", "16", "--image-size", "8", "--steps", "2",
                 "--warmup-steps", "0", "--device", "cpu", "--out", str(run)]) == 0
    store = tmp_path / "store"
    assert main(["--quiet", "sample", "--model", str(run), "--n", "2", "--steps", "2", "--device", "cpu",
                 "--out", str(store)]) == 0
    for argv, inside in ((["export", "--samples", str(store), "--out", str(store / "png")], f"{store}, a sample store"),
                         (["membership", "--data", "digits", "--subset", "16", "--models", "2", "--out",
                           str(run / "m.npz")], f"{run}, the folder of a `diffaudit train` run")):
        assert main(argv) == 2
        assert f"lies inside {inside}" in capsys.readouterr().err
    assert not (store / "png").exists() and not (run / "m.npz").exists()
    verify = tmp_path / "verify"
    verify.mkdir()
    write_json_atomic(verify / SETTINGS_FILE, settings_record("verify", {}))
    for argv in (["membership", "--data", "digits", "--subset", "16", "--models", "2", "--out", str(verify / "m.npz")],
                 ["report", str(run), "--out", str(verify / "report.html")]):
        assert main(argv) == 2
        assert f"lies inside {verify}, the result folder of `diffaudit verify`" in capsys.readouterr().err
    assert sorted(p.name for p in verify.iterdir()) == [SETTINGS_FILE]
    assert main(["--quiet", "report", str(run), "--out", str(run / "report.html")]) == 0  # where its default puts it
    assert (run / "report.html").is_file()
    audit_like = tmp_path / "audit"
    (audit_like / "models").mkdir(parents=True)
    write_json_atomic(audit_like / SETTINGS_FILE, settings_record("audit", {}))
    assert main(["--quiet", "membership", "--data", "digits", "--subset", "16", "--models", "2", "--out",
                 str(audit_like / "models" / "m.npz")]) == 0
