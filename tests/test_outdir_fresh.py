"""``--fresh`` killed while deleting, and settings that differ in one of many values.

A deletion interrupted part-way must leave the old output folder whole or gone, never some of its
files without the ``settings.json`` that says how they were made (a later run with other settings
would take them for its own work). A changed entry of a long list must be named in a short message.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError, SettingsMismatchError
from diffaudit.core.outdir import diff_settings, prepare_out_dir
from diffaudit.store import SampleStore


def _old_store(root):
    """A finished two-shard store made with ``seed 0, steps 3``; returns its files (relative names)."""
    old = SampleStore.create(root, settings={"seed": 0, "steps": 3}, prompts=[None], per_prompt=32,
                             image_shape=(8, 8, 1), shard_size=16)
    for k in range(2):
        old.write_shard(k, np.full((16, 8, 8, 1), 7, np.uint8))
    return _files(root)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _interrupt_unlink_after(monkeypatch, n_ok, exc):
    """Make ``os.unlink`` (what ``shutil.rmtree`` deletes files with) raise ``exc`` after ``n_ok`` calls."""
    real, calls = os.unlink, [0]

    def unlink(*args, **kwargs):
        calls[0] += 1
        if calls[0] > n_ok:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)


@pytest.mark.parametrize("n_ok", [0, 1, 2, 4])
def test_fresh_killed_while_deleting_leaves_the_old_folder_whole_or_gone(tmp_path, monkeypatch, n_ok):
    out = tmp_path / "s"
    before = _old_store(out)
    _interrupt_unlink_after(monkeypatch, n_ok, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        SampleStore.create(out, settings={"seed": 1, "steps": 5}, prompts=[None], per_prompt=32,
                           image_shape=(8, 8, 1), shard_size=16, fresh=True)
    monkeypatch.undo()
    assert not out.exists() or _files(out) == before  # never shards without their settings
    new = SampleStore.create(out, settings={"seed": 1, "steps": 5}, prompts=[None], per_prompt=32,
                             image_shape=(8, 8, 1), shard_size=16)
    assert new.completed() == [] and new.pending() == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # the hidden leftover is gone too


def test_fresh_whose_deletion_fails_still_starts_over_and_the_leftover_goes_later(tmp_path, monkeypatch):
    out = tmp_path / "o"
    prepare_out_dir(out, "extract", {"a": 1})
    (out / "work.npy").write_bytes(b"old")
    _interrupt_unlink_after(monkeypatch, 1, PermissionError(13, "Permission denied"))
    assert prepare_out_dir(out, "extract", {"a": 2}, fresh=True) == (out, False)
    monkeypatch.undo()
    assert _files(out) == ["settings.json"]
    prepare_out_dir(out, "extract", {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_fresh_that_cannot_move_the_folder_aside_deletes_nothing(tmp_path, monkeypatch):
    out = tmp_path / "o"
    prepare_out_dir(out, "extract", {"a": 1})
    (out / "work.npy").write_bytes(b"old")

    def busy(*args, **kwargs):
        raise OSError(16, "Device or resource busy")

    monkeypatch.setattr(os, "rename", busy)
    with pytest.raises(DiffauditError, match="could not move .* aside.*nothing was deleted.*another --out"):
        prepare_out_dir(out, "extract", {"a": 2}, fresh=True)
    assert (out / "work.npy").read_bytes() == b"old" and (out / "settings.json").is_file()


def test_only_this_folders_deletion_leftovers_are_removed(tmp_path):
    mine = tmp_path / "keep"
    mine.mkdir()
    (mine / "photo.png").write_bytes(b"precious")
    leftover = tmp_path / ".o.deleting-123-0a1b2c3d"
    (leftover / "shards").mkdir(parents=True)
    (leftover / "shards" / "shard-000000.npy").write_bytes(b"x")
    kept = [tmp_path / ".other.deleting-123-0a1b2c3d", tmp_path / ".o.deleting-x", tmp_path / ".o.deleting-1-zz",
            tmp_path / ".o.deleting-1-ab-c"]
    for k in kept:
        k.mkdir()
    (tmp_path / ".o.deleting-7-ab").symlink_to(mine, target_is_directory=True)
    (tmp_path / ".o.deleting-8-ab").write_bytes(b"a file")
    prepare_out_dir(tmp_path / "o", "extract", {})
    assert not leftover.exists() and all(k.is_dir() for k in kept)
    assert (mine / "photo.png").read_bytes() == b"precious" and (tmp_path / ".o.deleting-8-ab").is_file()


def test_fresh_still_refuses_a_folder_diffaudit_did_not_make_and_leaves_no_trace(tmp_path):
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.png").write_bytes(b"precious")
    with pytest.raises(DiffauditError, match="deletes only folders diffaudit made"):
        prepare_out_dir(mine, "extract", {}, fresh=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"] and _files(mine) == ["holiday.png"]


def test_fresh_refuses_the_output_of_another_command(tmp_path):
    """`compare A B --out A --fresh` deleted audit A (models, samples, results): --fresh starts over only
    this command's output, and the refusal no longer suggests it."""
    audit = tmp_path / "audit-a"
    prepare_out_dir(audit, "audit", {"steps": 3})
    (audit / "models").mkdir()
    (audit / "models" / "weights.safetensors").write_bytes(b"w")
    with pytest.raises(SettingsMismatchError, match=r"holds the output of `diffaudit audit`, not `compare`; choose another --out$"):
        prepare_out_dir(audit, "compare", {})
    with pytest.raises(DiffauditError, match=r"--fresh starts over the output of `diffaudit compare`, and .*audit-a holds that "
                                             r"of `diffaudit audit`; choose another --out, or delete it yourself"):
        prepare_out_dir(audit, "compare", {}, fresh=True)
    assert _files(audit) == ["models", "models/weights.safetensors", "settings.json"]
    assert prepare_out_dir(audit, "audit", {"steps": 4}, fresh=True) == (audit, False)  # its own command's: as before


# ----------------------------------------------------------------------- messages of differing settings
def test_one_changed_prompt_of_ten_thousand_is_named_briefly(tmp_path):
    prompts = [f"a photo of item number {i}" for i in range(10_000)]
    changed = list(prompts)
    changed[9_999] = "changed"
    prepare_out_dir(tmp_path / "o", "sample", {"prompts": prompts, "seed": 0})
    (tmp_path / "o" / "manifest.json").write_text("{}")  # work of those settings
    with pytest.raises(SettingsMismatchError) as err:
        prepare_out_dir(tmp_path / "o", "sample", {"prompts": changed, "seed": 0})
    message = str(err.value)
    assert len(message) < 500
    assert "prompts (1 of 10000 entries differ; first at [9999]: was 'a photo of item number 9999', now 'changed')" in message


def test_long_lists_of_other_lengths_and_long_values_are_shortened():
    a = [f"prompt {i}" for i in range(1000)]
    (grown,) = diff_settings({"p": a}, {"p": a + ["one more"]})
    assert grown == "p (was 1000 entries, now 1001; the first 1000 are equal)"
    (other,) = diff_settings({"p": a}, {"p": ["x"] + a[1:500]})
    assert other == "p (was 1000 entries, now 500; first at [0]: was 'prompt 0', now 'x')"
    (text,) = diff_settings({"t": "a" * 5000}, {"t": "a" * 4000 + "b" * 1000})
    assert len(text) < 250 and " ... " in text and text.endswith("first differs at character 4000)")
    (nested,) = diff_settings({"m": {"w": {str(i): i for i in range(500)}}}, {"m": {"w": 3}})
    assert nested.startswith("m.w (was {'0': 0, ") and len(nested) < 200
    (entry,) = diff_settings({"p": a}, {"p": a[:7] + ["y" * 1000] + a[8:]})
    assert len(entry) < 250 and "first at [7]: was 'prompt 7', now 'yyyy" in entry


def test_short_values_are_shown_whole_as_before():
    assert diff_settings({"a": 1, "b": [1, 2]}, {"a": 2, "b": [1, 3], "c": "x"}) == [
        "a (was 1, now 2)", "b (was [1, 2], now [1, 3])", "c (was '<unset>', now 'x')"]


def _user_folder(root):
    """A folder of the user's own (a notes file, a data folder) that diffaudit is then pointed at."""
    (root / "data").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    (root / "data" / "x.csv").write_text("1,2")


def test_fresh_in_a_folder_that_held_the_users_files_deletes_only_diffaudits(tmp_path):
    """Writing settings into a user's folder used to make the whole folder deletable by --fresh."""
    out = tmp_path / "work"
    _user_folder(out)
    prepare_out_dir(out, "sample", {"steps": 3})
    (out / "shards").mkdir()
    (out / "shards" / "shard-000000.npy").write_bytes(b"\0")
    (out / "result.json").write_text("{}")
    path, resumed = prepare_out_dir(out, "sample", {"steps": 5}, fresh=True)
    assert not resumed and _files(out) == ["data", "data/x.csv", "notes.txt", "settings.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "x.csv").read_text() == "1,2"
    assert not list(tmp_path.glob(".work.deleting-*"))
    # the kept names stay recorded, so a second --fresh keeps them too
    prepare_out_dir(out, "sample", {"steps": 6}, fresh=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_fresh_in_a_users_folder_interrupted_keeps_the_settings(tmp_path, monkeypatch):
    """Moving diffaudit's files aside stops part-way: settings.json moves last, so the folder stays
    diffaudit's (a re-run refuses or resumes it) and the user's files are untouched."""
    out = tmp_path / "work"
    _user_folder(out)
    prepare_out_dir(out, "sample", {"steps": 3})
    (out / "result.json").write_text("{}")
    (out / "shards").mkdir()
    real, calls = os.rename, [0]

    def rename(src, dst):
        calls[0] += 1
        if calls[0] > 1:
            raise OSError(5, "Input/output error")
        return real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(DiffauditError, match="could not move diffaudit's files"):
        prepare_out_dir(out, "sample", {"steps": 5}, fresh=True)
    monkeypatch.setattr(os, "rename", real)
    assert (out / "settings.json").exists() and (out / "notes.txt").read_text() == "mine"
    assert _files(out) == ["data", "data/x.csv", "notes.txt", "settings.json", "shards"]  # result.json moved aside
    # nothing of the old settings' work is left in it (an empty folder): the re-run takes the new settings
    assert prepare_out_dir(out, "sample", {"steps": 5}) == (out, False)
    assert (out / "notes.txt").read_text() == "mine" and (out / "data" / "x.csv").read_text() == "1,2"


def test_a_settings_file_that_names_no_command_is_said_so(tmp_path):
    """A settings.json without "command" (hand-made, or another tool's) was refused as "the output of
    `diffaudit None`"."""
    out = tmp_path / "o"
    out.mkdir()
    (out / "settings.json").write_text(json.dumps({"settings": {}}))
    with pytest.raises(SettingsMismatchError, match=r"holds a settings.json that names no command \(not the output of "
                                                    r"`diffaudit extract`\); choose another --out$"):
        prepare_out_dir(out, "extract", {})


def test_a_switch_reads_on_or_off_and_a_group_of_settings_set_or_not():
    assert diff_settings({"skip_bad": False}, {"skip_bad": True}) == ["skip_bad (was off, now on)"]
    # a group one side lacks (a DP-SGD run's record) is not dumped as a dict
    assert diff_settings({"a": 1}, {"a": 1, "dp": {"target_epsilon": 8.0, "delta": 1e-5}}) == ["dp (was not set, now set)"]
    assert diff_settings({"dp": {"target_epsilon": 8.0}}, {}) == ["dp (was set, now not set)"]


def test_long_out_names_are_refused_clearly_and_fresh_works_on_the_longest_legal_one(tmp_path):
    """A 300-character --out was an OSError traceback; a legal 240-character one could not be --fresh'ed,
    its hidden deletion name passing 255 bytes."""
    from diffaudit.core.errors import DiffauditError

    with pytest.raises(DiffauditError, match="is 300 bytes long; file systems allow at most 255"):
        prepare_out_dir(tmp_path / ("x" * 300), "extract", {"a": 1})
    long = tmp_path / ("z" * 240)
    out, _ = prepare_out_dir(long, "extract", {"a": 1})
    (out / "result.json").write_text("{}")
    out, resumed = prepare_out_dir(long, "extract", {"a": 2}, fresh=True)
    assert not resumed and not (out / "result.json").exists() and sorted(p.name for p in tmp_path.iterdir()) == [long.name]
