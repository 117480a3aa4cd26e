"""Output folders: resume on equal settings, and ``--fresh`` deletes only what diffaudit made."""

from __future__ import annotations

import os

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.core.outdir import prepare_out_dir


def test_resume_and_mismatch(tmp_path):
    out, resumed = prepare_out_dir(tmp_path / "o", "extract", {"a": 1})
    assert not resumed and (out / "settings.json").is_file()
    (out / "work.npy").write_bytes(b"kept")
    assert prepare_out_dir(tmp_path / "o", "extract", {"a": 1}) == (out, True)
    with pytest.raises(SettingsMismatchError, match="a \\(was 1, now 2\\)"):
        prepare_out_dir(tmp_path / "o", "extract", {"a": 2})
    with pytest.raises(SettingsMismatchError, match="diffaudit extract"):
        prepare_out_dir(tmp_path / "o", "verify", {"a": 1})
    assert (out / "work.npy").read_bytes() == b"kept"


def test_fresh_empties_a_diffaudit_folder_or_an_empty_one(tmp_path):
    out, _ = prepare_out_dir(tmp_path / "o", "extract", {"a": 1})
    (out / "work.npy").write_bytes(b"old")
    out, resumed = prepare_out_dir(tmp_path / "o", "verify", {"b": 2}, fresh=True)
    assert not resumed and sorted(p.name for p in out.iterdir()) == ["settings.json"]
    (tmp_path / "empty").mkdir()
    assert prepare_out_dir(tmp_path / "empty", "extract", {}, fresh=True)[1] is False
    assert prepare_out_dir(tmp_path / "new", "extract", {}, fresh=True)[1] is False


@pytest.mark.parametrize("settings_text", [None, "{not json", '{"theirs": true}'])
def test_fresh_refuses_a_folder_diffaudit_did_not_make(tmp_path, settings_text):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"precious")
    if settings_text is not None:
        (mine / "settings.json").write_text(settings_text)
    with pytest.raises(DiffauditError, match="deletes only folders diffaudit made"):
        prepare_out_dir(mine, "extract", {}, fresh=True)
    assert (mine / "holiday.png").read_bytes() == b"precious"


def test_fresh_refuses_a_file_and_the_working_directory(tmp_path, monkeypatch):
    f = tmp_path / "result.txt"
    f.write_text("x")
    with pytest.raises(DiffauditError, match="a file or a link"):
        prepare_out_dir(f, "extract", {}, fresh=True)
    made, _ = prepare_out_dir(tmp_path / "made", "extract", {})
    (tmp_path / "link").symlink_to(made)
    with pytest.raises(DiffauditError, match="a file or a link"):
        prepare_out_dir(tmp_path / "link", "extract", {}, fresh=True)
    assert (made / "settings.json").is_file()
    out, _ = prepare_out_dir(tmp_path / "o", "extract", {})
    (out / "sub").mkdir()
    monkeypatch.chdir(out / "sub")
    for target in (out, out / "sub", "."):
        with pytest.raises(DiffauditError, match="holds the current directory"):
            prepare_out_dir(target, "extract", {}, fresh=True)
    assert out.is_dir() and (out / "sub").is_dir()


def test_cli_fresh_on_a_user_folder_is_a_clear_error(tmp_path, capsys):
    mine = tmp_path / "thesis"
    mine.mkdir()
    (mine / "chapter1.tex").write_text("text")
    from test_compare import _audit

    a, b = _audit(tmp_path / "a", 3, 0.5, 0.9), _audit(tmp_path / "b", 1, 0.1, 0.6)
    code = main(["compare", str(a), str(b), "--out", str(mine), "--fresh"])
    assert code == 2
    assert "deletes only folders diffaudit made" in capsys.readouterr().err
    assert os.listdir(mine) == ["chapter1.tex"]
