"""What an --out folder held before diffaudit, and a --model that changed under a finished audit:

- a user's file named as one diffaudit writes (an audit's ``config.toml``, any command's ``result.json``)
  was written over without a word, and a folder named as an audit's stage (``models``) was taken for the
  stage's finished work, also after ``--fresh`` or after the folder's ``settings.json`` was removed;
- an audit of ``--model RUN`` recorded RUN by path only: RUN retrained in place gave "already finished",
  or mixed the old model's generations with the new one's membership attack.
"""

from __future__ import annotations

import contextlib
import io
import json

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import prepare_out_dir

AUDIT = ["audit", "--data", "digits", "--n-samples", "16", "--sample-steps", "2", "--sweep", "", "--device", "cpu"]


def _main(argv: list) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, err.getvalue()


def test_a_users_file_of_a_name_a_command_writes_is_refused_not_written_over(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "result.json").write_text("my thesis")
    (home / "notes.txt").write_text("mine")
    with pytest.raises(DiffauditError, match=r"already holds result.json, which `diffaudit extract` writes"):
        prepare_out_dir(home, "extract", {"a": 1})
    assert (home / "result.json").read_text() == "my thesis" and not (home / "settings.json").exists()
    (home / "result.json").unlink()
    out, resumed = prepare_out_dir(home, "extract", {"a": 1})  # other files of the user's are kept, as before
    assert not resumed and json.loads((out / "settings.json").read_text())["kept_on_fresh"] == ["notes.txt"]


def test_a_run_whose_settings_file_was_removed_is_not_resumed_with_other_settings(tmp_path):
    out, _ = prepare_out_dir(tmp_path / "x", "extract", {"a": 1})
    (out / "result.json").write_text("{}")
    (out / "settings.json").unlink()
    with pytest.raises(DiffauditError, match="a run's whose settings.json was removed"):
        prepare_out_dir(out, "extract", {"a": 2})


def test_an_audit_refuses_a_users_config_toml_and_models_folder(tmp_path):
    own = tmp_path / "study"
    own.mkdir()
    (own / "config.toml").write_text("# my annotated study\nsteps = 20\n")
    code, err = _main(["audit", "--config", own / "config.toml", "--out", own])
    assert code == 2 and "already holds config.toml, which `diffaudit audit` writes" in err, err
    assert (own / "config.toml").read_text().startswith("# my annotated study")
    mine = tmp_path / "mine"
    (mine / "models").mkdir(parents=True)
    (mine / "models" / "notes.txt").write_text("mine")
    code, err = _main([*AUDIT, "--steps", "20", "--out", mine])
    assert code == 2 and "already holds models" in err, err
    assert sorted(p.name for p in (mine / "models").iterdir()) == ["notes.txt"]


def test_an_audit_of_a_model_retrained_in_place_is_refused(tmp_path):
    run = tmp_path / "run"
    train = ["train", "--data", "digits", "--subset", "48", "--steps", "10", "--batch-size", "8", "--out", run]
    assert _main(train)[0] == 0
    audit = [*AUDIT, "--model", run, "--out", tmp_path / "audit"]
    code, err = _main(audit)
    assert code == 0, err
    assert _main(audit)[0] == 0  # unchanged: already finished
    assert _main([*train, "--seed", "7", "--fresh"])[0] == 0
    code, err = _main(audit)
    assert code == 2 and "the contents of --model" in err, err


def test_a_train_ids_json_corrected_in_place_is_another_training_set(tmp_path):
    """A lab that fixed the keys of its model's train_ids.json and re-ran got the old members' results:
    "already finished" from the audit, and from `mia --target`, with the weights unchanged. Both now
    refuse, naming the file; folders recorded before take today's file and resume."""
    import json
    import shutil

    trained = tmp_path / "trained"
    assert _main(["train", "--data", "digits", "--subset", "48", "--steps", "10", "--batch-size", "8", "--out", trained])[0] == 0
    run = tmp_path / "run"  # a model trained elsewhere: its folder and the train_ids.json written by hand
    for part in ("unet", "scheduler"):
        shutil.copytree(trained / part, run / part)
    shutil.copy(trained / "train_ids.json", run / "train_ids.json")
    audit = [*AUDIT, "--model", run, "--out", tmp_path / "audit"]
    mia = ["mia", "--target", run, "--attack", "loss", "--data", "digits", "--bootstrap", "0",
           "--device", "cpu", "--out", tmp_path / "mia"]
    for argv in (audit, mia):
        code, err = _main(argv)
        assert code == 0, err
    ids = json.loads((run / "train_ids.json").read_text())
    (run / "train_ids.json").write_text(json.dumps({"keys": ids["keys"][:-4]}))  # the lab's correction
    for argv, flag in ((audit, "--model"), (mia, "--target")):
        code, err = _main(argv)
        assert code == 2 and f"the training set {flag}'s train_ids.json names" in err, err
    # a folder an earlier version wrote records no such digest: it takes today's file, and resumes
    for folder, key in ((tmp_path / "audit", "model_members_digest"), (tmp_path / "mia", "target_members_digest")):
        record = json.loads((folder / "settings.json").read_text())
        del record["settings"][key]
        (folder / "settings.json").write_text(json.dumps(record))
    for argv in (audit, mia):
        code, err = _main(argv)
        assert code == 0, err


def test_data_loaded_at_another_channel_count_than_the_model_takes_is_said_so(tmp_path):
    """A gray model audited on the same images loaded as RGB (a gray folder with one colour-mode file
    does that): the refusal named "other pixels under the same keys" and advised repeating the
    training's --subset, which the audit then refused too."""
    run = tmp_path / "run"
    assert _main(["train", "--data", "digits", "--subset", "48", "--steps", "5", "--batch-size", "8", "--out", run])[0] == 0
    code, err = _main([*AUDIT, "--mode", "RGB", "--model", run, "--out", tmp_path / "audit"])
    assert code == 2 and "takes 8x8 images with 1 channel(s), but the data gives 8x8 with 3; load it with --mode L" in err, err
    code, err = _main([*AUDIT, "--image-size", "16", "--model", run, "--out", tmp_path / "audit"])
    assert code == 2 and "takes 8x8 images with 1 channel(s), but the data gives 16x16 with 1; load it with --image-size 8" in err, err


def test_a_moved_folder_resumes_with_the_paths_it_recorded_inside_the_moved_tree(tmp_path):
    """An interrupted audit renamed (mvA -> mvB) was refused on resume: its mia stage recorded
    ``--shadows mvA/models`` by absolute path ("--shadows (was .../mvA/models, now .../mvB/models)")."""
    from diffaudit.core.outdir import moved_roots

    assert moved_roots("/a/mvA/models", "/a/mvB/models") == ("/a/mvA", "/a/mvB")
    assert moved_roots("/a/mvA", "/b/c/mvA") == ("/a", "/b/c")
    assert moved_roots("/a/x", "/a/x") is None
    outside = str(tmp_path / "data.npz")
    settings = lambda root: {"shadows": str(root / "models"), "data": outside, "n": 1}  # noqa: E731
    a = tmp_path / "mvA"
    prepare_out_dir(a / "mia", "mia", settings(a))
    (a / "mia" / "losses.npy").write_bytes(b"work")  # work of these settings: a mismatch is refused, not replaced
    b = tmp_path / "mvB"
    a.rename(b)
    out, resumed = prepare_out_dir(b / "mia", "mia", settings(b))
    assert resumed and json.loads((out / "settings.json").read_text())["settings"]["shadows"] == str(b / "models")
    with pytest.raises(DiffauditError, match=r"--shadows|shadows"):  # a path inside it named elsewhere is still another
        prepare_out_dir(b / "mia", "mia", {**settings(b), "shadows": str(tmp_path / "other" / "models")})
    c = tmp_path / "mvC"
    c.mkdir()
    with pytest.raises(DiffauditError, match="shadows"):  # a tree that still exists where it was has not moved
        prepare_out_dir(b / "mia", "mia", {**settings(b), "shadows": str(c / "models")})
    with pytest.raises(DiffauditError, match="data"):  # and one outside the moved tree is compared as recorded
        prepare_out_dir(b / "mia", "mia", {**settings(b), "data": str(b / "data.npz")})
