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
    # a full disk: the record cannot be written, and the audit's error is still that its stage failed
    (tmp_path / "stage_stopped.json").unlink()
    monkeypatch.setenv("DIFFAUDIT_STORAGE_FAULT", "ENOSPC")
    with pytest.raises(DiffauditError, match=r"^stage `train` failed \(exit 2\)"):
        stages.run("train", ["shadows", "--data", "digits", "--membership", "m.npz", "--out", str(tmp_path / "models")])
    monkeypatch.delenv("DIFFAUDIT_STORAGE_FAULT")
    assert not (tmp_path / "stage_stopped.json").exists()
    # --json: the audit's refusal names the stage and carries what its command said
    capsys.readouterr()
    assert cli_main.main(["--json", "audit", "--data", "digits", "--subset", "12", "--train-size", "6", "--steps", "2",
                          "--n-samples", "4", "--sample-steps", "2", "--sweep", "", "--device", "cpu",
                          "--out", str(tmp_path / "audit")]) == 2
    assert json.loads(capsys.readouterr().out) == {
        "command": "audit", "error": "stage `train` failed (exit 2); fix the cause and re-run: finished stages are kept",
        "exit_status": 2, "stage": "train", "stage_error": "no membership matrix"}


class _SwallowsCtrlC:
    """Ctrl-C pressed while the garbage collector runs this object's ``__del__``: Python prints
    "Exception ignored in ..." and drops the KeyboardInterrupt, as it does in any GC callback."""

    def __init__(self):
        self.cycle = self  # freed by the collector only

    def __del__(self):
        import signal

        signal.raise_signal(signal.SIGINT)


def _press_ctrl_c_while_collecting() -> list:
    """Python's own report of what it swallowed (``sys.unraisablehook``'s arguments)."""
    import gc
    import sys

    swallowed, hook = [], sys.unraisablehook
    sys.unraisablehook = swallowed.append
    try:
        _SwallowsCtrlC()
        gc.collect()
    finally:
        sys.unraisablehook = hook
    assert [type(u.exc_value) for u in swallowed] == [KeyboardInterrupt]
    return swallowed


def test_a_ctrl_c_swallowed_by_python_still_stops_the_work(tmp_path, monkeypatch, capsys):
    """The interrupt lost in a ``__del__`` stops training at its next step (status 130, one line, no
    result), where before the run went on to the end and exited 0; the re-run continues from the checkpoint."""
    import diffaudit.models.training as training

    run = tmp_path / "run"
    argv = ["--quiet", "train", "--data", "digits", "--subset", "16", "--steps", "30", "--checkpoint-every", "10",
            "--batch-size", "8", "--warmup-steps", "2", "--device", "cpu", "--out", str(run)]
    real_fault_point = training.fault_point
    pressed = []

    def ctrl_c_at_first_checkpoint(name):
        if name == "train.checkpoint" and not pressed:
            pressed.append(name)
            _press_ctrl_c_while_collecting()
        real_fault_point(name)

    monkeypatch.setattr(training, "fault_point", ctrl_c_at_first_checkpoint)
    assert cli_main.main(argv) == 130
    err = capsys.readouterr().err  # Python swallowed it (asserted there), the command did not:
    assert err == "diffaudit train: interrupted; finished work is kept, re-run to continue\n"
    assert pressed and not (run / "result.json").exists()
    assert (run / "checkpoints" / "step-00000010").is_dir()
    monkeypatch.undo()
    assert cli_main.main(argv) == 0 and (run / "result.json").exists()


def test_a_ctrl_c_swallowed_after_the_last_check_is_still_status_130(monkeypatch, capsys):
    import diffaudit.cli.membership as membership_cli

    def swallowed_then_done(args):
        _press_ctrl_c_while_collecting()
        return 0

    monkeypatch.setattr(membership_cli, "run", swallowed_then_done)
    assert cli_main.main(["membership", "--data", "digits", "--out", "m.npz"]) == 130
    assert capsys.readouterr().err.endswith("diffaudit membership: interrupted; finished work is kept, re-run to continue\n")
    capsys.readouterr()
    monkeypatch.setattr(membership_cli, "run", lambda args: 0)  # the flag does not outlive its command
    assert cli_main.main(["membership", "--data", "digits", "--out", "m.npz"]) == 0


def test_a_pending_interrupt_does_not_cut_clean_up_short_and_ends_with_its_scope():
    import signal

    from diffaudit.core import interrupt
    from diffaudit.core.progress import progress_bar

    with interrupt.catching_ctrl_c():
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        _press_ctrl_c_while_collecting()
        assert interrupt.pending()
        with pytest.raises(KeyboardInterrupt):
            with progress_bar("work", 3) as bar:
                bar.advance()
        try:
            raise KeyboardInterrupt  # the interruption on its way up: clean-up in its handlers runs whole
        except KeyboardInterrupt:
            with progress_bar("clean-up", 1) as bar:
                bar.advance()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and not interrupt.pending()
    interrupt.raise_if_interrupted()  # outside: nothing pending


def test_ctrl_c_is_one_line_not_pythons_report_and_a_second_press_lets_clean_up_finish(monkeypatch):
    """Python's "Exception ignored ... KeyboardInterrupt" report of the swallowed key would stand, with its
    traceback, before the command's one line; other unraisable errors are still reported. A key pressed
    again while the first interruption unwinds does not cut its clean-up short."""
    import signal
    import sys

    from diffaudit.core import interrupt

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    with interrupt.catching_ctrl_c():
        _SwallowsCtrlC()
        import gc

        gc.collect()
        assert interrupt.pending() and reported == []

        class Broken:
            def __del__(self):
                raise ValueError("not ours to hide")

        Broken()
        assert [type(u.exc_value) for u in reported] == [ValueError]
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            signal.raise_signal(signal.SIGINT)  # pressed again during the clean-up: not raised there
            cleaned_up = True
        assert cleaned_up
    assert sys.unraisablehook == reported.append  # restored


def test_the_process_ignores_ctrl_c_once_its_command_has_ended(monkeypatch, tmp_path):
    """`diffaudit ...` as a process: a key pressed while Python shuts down (an exit hook of torch) neither
    prints a traceback nor turns a finished command's status 0 into 130."""
    import signal
    import sys

    monkeypatch.setattr(sys, "argv", ["diffaudit", "--quiet", "membership", "--data", "digits", "--subset", "8",
                                      "--models", "2", "--out", str(tmp_path / "m.npz")])
    try:
        assert cli_main.main() == 0
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    assert cli_main.main(["--quiet", "membership", "--data", "digits", "--subset", "8", "--models", "2",
                          "--out", str(tmp_path / "m2.npz")]) == 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a call from Python changes nothing


def test_an_interrupted_command_with_json_answers_json_on_stdout(monkeypatch, tmp_path, capsys):
    """--json promises JSON on stdout for every ending: an interruption printed nothing there."""
    def interrupted(**_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert cli_main.main(["train", "--data", "digits", "--out", "x", "--json"]) == 130
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"command": "train", "error": "interrupted", "signal": "SIGINT", "exit_status": 130}
    assert captured.err == "diffaudit train: interrupted; finished work is kept, re-run to continue\n"
    monkeypatch.undo()
    # an audit whose stage was interrupted: one JSON document, the audit's (the stage in-process says none)
    monkeypatch.setattr(cli_main, "main", lambda argv: 130)
    stages = _Stages(tmp_path, [])
    monkeypatch.setattr(cli_main, "_parse_and_run", lambda *a: stages.run("train", ["train"]))
    assert cli_main._main(["audit", "--json"]) == 130
    assert json.loads(capsys.readouterr().out) == {"command": "audit", "error": "interrupted", "signal": "SIGINT",
                                                   "exit_status": 130}


@pytest.mark.parametrize("name, status", [("SIGTERM", 143), ("SIGHUP", 129)])
def test_sigterm_and_sighup_stop_a_command_as_ctrl_c_does(monkeypatch, capsys, name, status):
    """What `timeout`, `kill` and batch schedulers send ended a command silently (no line, no JSON under
    --json, status 143): it now stops as Ctrl-C does, finished work kept, with the signal named and its
    own status; the handlers are given back after."""
    import signal

    stop = getattr(signal, name)
    assert signal.getsignal(stop) is signal.SIG_DFL  # else raising it below would end the test process

    def stopped(**_):
        signal.raise_signal(stop)

    monkeypatch.setattr(cli_main, "build_parser", stopped)
    assert cli_main.main(["train", "--data", "digits", "--out", "x", "--json"]) == status
    captured = capsys.readouterr()
    assert captured.err == f"diffaudit train: stopped by {name}; finished work is kept, re-run to continue\n"
    assert json.loads(captured.out) == {"command": "train", "error": "interrupted", "signal": name, "exit_status": status}
    assert signal.getsignal(stop) is signal.SIG_DFL


def test_an_audit_stage_stopped_by_sigterm_stops_the_audit_as_interrupted(monkeypatch, tmp_path, capsys):
    """A stage ended by SIGTERM (status 143) was taken for a failed stage: the audit printed a "stage failed"
    JSON document and then the interruption's, which no parser reads, and its report said "failed (exit 143)".
    It is now one interruption, with the stage's status, recorded as interrupted."""
    from diffaudit.core.io import read_json
    from diffaudit.report.results import STAGE_STOPPED, stopped_words

    monkeypatch.setattr(cli_main, "main", lambda argv: 143)  # the stage said "stopped by SIGTERM" itself
    stages = _Stages(tmp_path, [])
    monkeypatch.setattr(cli_main, "_parse_and_run", lambda *a: stages.run("sample", ["sample"]))
    assert cli_main._main(["audit", "--json"]) == 143
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {"command": "audit", "error": "interrupted", "signal": "SIGTERM",
                                        "exit_status": 143}
    assert captured.err == ""  # the stage's own line is the one line
    assert stopped_words(read_json(tmp_path / STAGE_STOPPED)) == "its sample stage was interrupted"


def test_sigterm_is_taken_where_ctrl_c_is_ignored(monkeypatch, capsys):
    """A shell's background job (and nohup) ignores SIGINT: no handler was taken at all then, and SIGTERM ended
    the command with no line and no JSON. SIGTERM is now taken whatever SIGINT's handler; SIGINT stays ignored."""
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.setattr(cli_main, "build_parser", lambda **_: signal.raise_signal(signal.SIGTERM))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        assert cli_main.main(["train", "--data", "digits", "--out", "x", "--json"]) == 143
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert json.loads(capsys.readouterr().out)["signal"] == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
