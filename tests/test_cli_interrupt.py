"""Ctrl-C ends any command with status 130 and one line, never a traceback: also while its modules
are still being imported, and in an audit whose stage was interrupted (not a "stage failed" error)."""

from __future__ import annotations

import json

import pytest

import diffaudit.cli.main as cli_main
from diffaudit.cli.audit import _Stages
from diffaudit.core.errors import DiffauditError


def test_ctrl_c_while_the_command_is_imported_is_one_line(monkeypatch, capsys):
    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert cli_main.main(["train", "--data", "digits", "--out", "x"]) == 130
    err = capsys.readouterr().err
    assert err == "diffaudit train: interrupted; finished work is kept, re-run to continue\n"


def test_an_interrupted_audit_stage_interrupts_the_audit(monkeypatch, tmp_path, capsys):
    real_main = cli_main.main
    monkeypatch.setattr(cli_main, "main", lambda argv: 130)  # the stage printed its own "interrupted" line
    stages = _Stages(tmp_path, [])
    with pytest.raises(KeyboardInterrupt):
        stages.run("train", ["train"])
    # and the audit says nothing more: the stage's own line is the one line
    monkeypatch.setattr(cli_main, "_parse_and_run", lambda *a: stages.run("train", ["train"]))
    capsys.readouterr()
    assert real_main(["audit"]) == 130 and capsys.readouterr().err == ""
    monkeypatch.setattr(cli_main, "main", lambda argv: 2)  # a failed stage stays an error
    with pytest.raises(DiffauditError, match=r"stage `train` failed \(exit 2\)"):
        stages.run("train", ["train"])


def test_a_stage_speaks_as_the_audit_stage(monkeypatch, tmp_path, capsys):
    """An audit trains its target through `shadows` even without shadow models: interrupted, erring or resuming,
    that command names itself as the audit's stage, not as `diffaudit shadows` the user never ran."""
    import diffaudit.cli.shadows as shadows_cli
    from diffaudit.cli.common import speaking_as

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(shadows_cli, "run", interrupted)
    stages = _Stages(tmp_path, [])
    with pytest.raises(KeyboardInterrupt):
        stages.run("train", ["shadows", "--data", "digits", "--membership", "m.npz", "--out", str(tmp_path / "models")])
    assert capsys.readouterr().err == "diffaudit audit (stage train): interrupted; finished work is kept, re-run to continue\n"
    assert speaking_as("shadows") == "shadows"  # outside the stage again
    assert cli_main.main(["shadows", "--data", "digits", "--membership", "m.npz", "--out", str(tmp_path / "m")]) == 130
    assert capsys.readouterr().err.startswith("diffaudit shadows: interrupted")

    def failing(args):
        raise DiffauditError("no membership matrix")

    monkeypatch.setattr(shadows_cli, "run", failing)
    with pytest.raises(DiffauditError, match="stage `train` failed"):
        stages.run("train", ["shadows", "--data", "digits", "--membership", "m.npz", "--out", str(tmp_path / "models")])
    assert capsys.readouterr().err == "diffaudit audit (stage train): error: no membership matrix\n"
    # what the report names: the stage that stopped the audit, and what its command said
    assert json.loads((tmp_path / "stage_stopped.json").read_text()) == {"stage": "train", "exit": 2, "error": "no membership matrix"}
