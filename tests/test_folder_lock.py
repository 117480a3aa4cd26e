"""One process at a time per output folder: a second command on the same --out is refused naming
the first's process, nothing is written into the folder for the lock, and a killed holder never
blocks a re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from diffaudit.cli.main import main
from diffaudit.core import folder_lock
from diffaudit.core.errors import DiffauditError
from diffaudit.core.outdir import prepare_out_dir

HOLDER = """
import sys, time
from diffaudit.core.outdir import prepare_out_dir
prepare_out_dir(sys.argv[1], "extract", {"a": 1})
print("held", flush=True)
time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path):
    """A child process that prepared (and so locked) tmp_path / "out" and waits."""
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "held"
    yield out, child
    child.kill()
    child.wait()


def test_a_second_process_on_the_same_folder_is_refused_naming_the_first(holder):
    out, child = holder
    with pytest.raises(DiffauditError, match=rf"is in use by another diffaudit process \(pid {child.pid}\)"):
        prepare_out_dir(out, "extract", {"a": 1})
    with pytest.raises(DiffauditError, match="in use"):  # --fresh never deletes a folder in use
        prepare_out_dir(out, "extract", {"a": 1}, fresh=True)
    assert sorted(p.name for p in out.iterdir()) == ["settings.json"]  # no lock file inside the folder


def test_a_killed_holder_does_not_block_a_re_run(holder):
    out, child = holder
    assert folder_lock.writer(out) == child.pid  # a reader finding the folder unfinished names who writes it
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert folder_lock.writer(out) is None  # its lock file is stale: nobody writes it
    assert prepare_out_dir(out, "extract", {"a": 1})[1] is True
    assert folder_lock.writer(out) is None  # held by this process: not another's
    folder_lock.release_folder(out)


def test_the_cli_releases_its_folders_and_keeps_an_enclosing_commands(tmp_path, capsys):
    before = folder_lock.held()  # folders that tests calling prepare_out_dir directly still hold
    outer = tmp_path / "audit"
    outer.mkdir()
    folder_lock.hold(outer)  # as an audit holds its folder while a stage runs in-process
    try:
        out = tmp_path / "v"
        assert main(["--quiet", "verify", "--samples", str(tmp_path / "none.npz"), "--data", "digits", "--out", str(out)]) == 2
        assert main(["--quiet", "extract", "--samples", "digits", "--out", str(out), "--device", "cpu"]) == 0
        assert (out / "result.json").exists()
        assert str(outer.resolve()) in folder_lock.held() and str(out.resolve()) not in folder_lock.held()
        assert not folder_lock.lock_path(out).exists()  # released lock files are deleted
    finally:
        folder_lock.release_folder(outer)
    assert folder_lock.held() == before


def test_a_lock_file_deleted_between_open_and_lock_is_not_trusted(tmp_path, monkeypatch):
    """A holder deletes its lock file on release: whoever opened it just before locks the new one."""
    out = tmp_path / "o"
    real_flock = folder_lock.fcntl.flock
    calls = []

    def flock_after_a_release(fd, flags):
        if not calls:  # the first file this process opened is released (deleted) by its holder now
            os.unlink(folder_lock.lock_path(out))
        calls.append(fd)
        return real_flock(fd, flags)

    monkeypatch.setattr(folder_lock.fcntl, "flock", flock_after_a_release)
    folder_lock.hold(out)
    try:
        assert len(calls) == 2 and folder_lock.lock_path(out).exists()
        held_fd, path = folder_lock._HELD[str(out.resolve())]
        assert os.fstat(held_fd).st_ino == os.stat(path).st_ino
    finally:
        folder_lock.release_folder(out)


def test_a_lock_directory_name_taken_by_someone_else_does_not_switch_locking_off(tmp_path, monkeypatch, capsys):
    """Another local user (here: a link planted at the name, which no one may follow) who takes
    $TMPDIR/diffaudit-locks-<uid> first must not make every folder unlocked: the next candidate
    directory is used by every process alike, and a second process is still refused."""
    tmp, run = tmp_path / "tmp", tmp_path / "run"
    tmp.mkdir()
    run.mkdir()
    (tmp / f"diffaudit-locks-{os.getuid()}").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    monkeypatch.setattr(folder_lock.tempfile, "tempdir", None)  # re-read TMPDIR
    assert folder_lock.lock_dir() == run / "diffaudit-locks"
    out = tmp_path / "out"
    env = {**os.environ, "TMPDIR": str(tmp), "XDG_RUNTIME_DIR": str(run)}
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(DiffauditError, match=rf"in use by another diffaudit process \(pid {child.pid}\)"):
            prepare_out_dir(out, "extract", {"a": 1})
    finally:
        child.kill()
        child.wait()
    assert not (tmp_path / "elsewhere").exists()  # nothing was made through the planted link


def test_where_no_lock_directory_can_be_made_a_warning_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(folder_lock, "lock_dir", lambda: None)
    monkeypatch.setattr(folder_lock, "_WARNED", [])
    prepare_out_dir(tmp_path / "out", "extract", {"a": 1})
    assert "is not locked: do not run two commands on one --out at once" in capsys.readouterr().err
    folder_lock.release_folder(tmp_path / "out")
