"""Ctrl-C ends any command with status 130 and one line, never a traceback: also while its modules
are still being imported, and in an audit whose stage was interrupted (not a "stage failed" error)."""

from __future__ import annotations

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
