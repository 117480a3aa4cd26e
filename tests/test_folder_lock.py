"""One process at a time per output folder: a second command on the same --out is refused naming
the first's process, nothing is written into the folder for the lock, and a killed holder never
blocks a re-run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

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
    monkeypatch.setattr(folder_lock, "_SWEPT", [True])  # no sweep of the lock directory in this count
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


def _lock_file(path, *, age: float, pid: str = "999999999") -> None:
    """A lock file at ``path`` recording ``pid`` (by default none that can exist: above the kernel's pid_max),
    last written ``age`` seconds ago."""
    path.write_text(f"{pid}\n/some/folder\n")
    t = time.time() - age
    os.utime(path, (t, t))


def test_a_sweep_deletes_only_the_lock_files_no_one_holds(tmp_path):
    """Lock files of killed processes piled up (thousands under /tmp): a sweep deletes those no process holds
    that were not locked for an hour, at most its limit, and never a held, recent or other file."""
    base = tmp_path / "locks"
    base.mkdir()
    for k in range(5):
        _lock_file(base / f"stale{k}.lock", age=7200)
    _lock_file(base / "recent.lock", age=60)
    _lock_file(base / "held.lock", age=7200, pid=str(os.getpid()))
    _lock_file(base / "notes.txt", age=7200)
    fd = os.open(base / "held.lock", os.O_RDWR)
    try:
        folder_lock.fcntl.flock(fd, folder_lock.fcntl.LOCK_EX | folder_lock.fcntl.LOCK_NB)
        assert folder_lock.sweep(base, limit=3) == 3
        assert folder_lock.sweep(base) == 2
        assert sorted(p.name for p in base.iterdir()) == ["held.lock", "notes.txt", "recent.lock"]
        assert folder_lock.sweep(base, min_age=0) == 1  # the recent one, once old enough; never the held one
    finally:
        os.close(fd)
    assert sorted(p.name for p in base.iterdir()) == ["held.lock", "notes.txt"]


def test_the_first_lock_a_process_takes_sweeps_the_lock_directory(tmp_path, monkeypatch):
    base = tmp_path / "locks"
    monkeypatch.setattr(folder_lock, "_lock_dirs", lambda uid: [base])
    monkeypatch.setattr(folder_lock, "_SWEPT", [])
    base.mkdir(mode=0o700)
    _lock_file(base / "stale.lock", age=7200)
    folder_lock.hold(tmp_path / "out")
    try:
        assert [p.name for p in base.iterdir()] == [folder_lock.lock_path(tmp_path / "out").name]
        _lock_file(base / "later.lock", age=7200)
        folder_lock.hold(tmp_path / "other")  # once per process
        assert (base / "later.lock").exists()
    finally:
        folder_lock.release_folder(tmp_path / "out")
        folder_lock.release_folder(tmp_path / "other")


def test_a_lock_a_sweep_holds_for_a_moment_is_waited_for_not_refused(tmp_path):
    """A sweep locks a dead process's file before it deletes it: a command starting on that folder meanwhile
    waits for it (the holder its file records is gone) and locks a new file; a live holder is refused at once."""
    out = tmp_path / "out"
    path = folder_lock.lock_path(out)
    _lock_file(path, age=7200)
    fd = os.open(path, os.O_RDWR)
    folder_lock.fcntl.flock(fd, folder_lock.fcntl.LOCK_EX | folder_lock.fcntl.LOCK_NB)

    def swept():
        os.unlink(path)
        os.close(fd)

    timer = threading.Timer(0.1, swept)
    timer.start()
    try:
        folder_lock.hold(out)
        held_fd, _ = folder_lock._HELD[str(out.resolve())]
        assert os.fstat(held_fd).st_ino == os.stat(path).st_ino  # the new file
    finally:
        timer.join()
        folder_lock.release_folder(out)
    _lock_file(path, age=0, pid=str(os.getpid()))  # a live holder's file, locked
    fd = os.open(path, os.O_RDWR)
    folder_lock.fcntl.flock(fd, folder_lock.fcntl.LOCK_EX | folder_lock.fcntl.LOCK_NB)
    started = time.monotonic()
    try:
        with pytest.raises(DiffauditError, match=f"in use by another diffaudit process \\(pid {os.getpid()}\\)"):
            folder_lock.hold(out)
        assert time.monotonic() - started < folder_lock.STALE_WAIT
    finally:
        os.close(fd)
        path.unlink()
