"""A compressed shard's decompressed temporary tar, left in the temporary directory by a process killed
outright, is removed by the next process that decompresses a shard; others' tars are kept."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import diffaudit.data.shards as shards
from diffaudit.core.io import host_tag
from diffaudit.data import load_dataset


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """A temporary directory of the test's own (TMPDIR), not yet swept by this process."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.setattr(shards, "_swept", set())
    return folder


@pytest.fixture
def gz_shard(tmp_path, write_tar, encode_image):
    plain = write_tar(tmp_path / "s.tar", [(f"k{i}.png", encode_image(np.full((4, 4, 3), i, np.uint8)))
                                          for i in range(3)])
    gz = tmp_path / "s.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()))
    return gz


def _tars(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith("diffaudit-shard-"))


def test_a_killed_process_leaves_its_tar_and_the_next_one_removes_it(temp_dir, gz_shard):
    code = ("import os, signal; from diffaudit.data.shards import list_shards; "
            "from pathlib import Path; "
            f"listing = list_shards([Path({str(gz_shard)!r})], source='s', skip_bad=False); "
            "os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "TMPDIR": str(temp_dir)})
    assert proc.wait() == -signal.SIGKILL
    left = _tars(temp_dir)
    assert len(left) == 1 and left[0].startswith(f"diffaudit-shard-{host_tag()}-{proc.pid}-")
    ds = load_dataset(gz_shard)  # decompresses the shard again: the dead process's tar goes first
    assert len(ds) == 3 and left[0] not in _tars(temp_dir)
    del ds
    assert _tars(temp_dir) == []


def test_tars_of_running_processes_other_hosts_and_other_pid_namespaces_are_kept(temp_dir, gz_shard):
    """A container of the same host name sharing the temporary directory has its own process ids: a pid
    that is not running here may be running there."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    hostname = host_tag().rsplit("_ns", 1)[0]
    assert host_tag() != hostname, "this Linux host has a PID namespace to name"
    kept = [f"diffaudit-shard-{host_tag()}-{os.getpid()}-live.tar",  # this process: running
            f"diffaudit-shard-{hostname}_ns1-{dead.pid}-x.tar",  # another PID namespace of this host name
            "diffaudit-shard-otherhost-1-x.tar", "diffaudit-shard-notours.tar"]
    for name in kept:
        (temp_dir / name).write_bytes(b"")
    assert shards.remove_stale_temp_tars() == 0
    assert len(load_dataset(gz_shard)) == 3
    assert _tars(temp_dir) == sorted(kept)
