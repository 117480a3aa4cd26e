"""Output folders: resume on equal settings, and ``--fresh`` deletes only what diffaudit made."""

from __future__ import annotations

import json
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
    out, resumed = prepare_out_dir(tmp_path / "o", "extract", {"b": 2}, fresh=True)  # another command's: refused
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


def test_an_earlier_versions_settings_resume_through_the_commands_upgrade(tmp_path):
    """A folder whose recorded settings differ only as an earlier version recorded the same work resumes
    (and its settings file is rewritten); any other difference is still refused."""
    from diffaudit.cli.audit import upgrade_settings as audit_upgrade, training_options
    from diffaudit.cli.sample import upgrade_settings as sample_upgrade
    from diffaudit.core.outdir import SettingsMismatchError

    out = tmp_path / "a"
    now = {"model": "run", "shadows": 0, "n_samples": 512}
    earlier = {**now, "steps": 3000, "lr": 0.001, "train_size": 32}  # training options a --model audit never used
    prepare_out_dir(out, "audit", earlier)
    (out / "config.toml").write_text("")  # work of those settings
    with pytest.raises(SettingsMismatchError, match="steps"):
        prepare_out_dir(out, "audit", now)
    assert prepare_out_dir(out, "audit", now, upgrade=audit_upgrade) == (out, True)
    assert json.loads((out / "settings.json").read_text())["settings"] == now
    with pytest.raises(SettingsMismatchError, match="n_samples"):
        prepare_out_dir(out, "audit", {**now, "n_samples": 256}, upgrade=audit_upgrade)
    with_shadows = {**earlier, "shadows": 4}  # shadows trained with them: kept, but for --train-size, which they never used
    assert audit_upgrade(with_shadows) == {k: v for k, v in with_shadows.items() if k != "train_size"}
    assert {"steps", "lr", "train_size"} <= training_options()
    assert sample_upgrade({"device_type": "cpu", "fast": True, "compile": True})["fast"] is False
    assert sample_upgrade({"device_type": "cuda", "fast": True, "compile": False})["fast"] is True


def test_a_folder_without_work_takes_new_settings(tmp_path, capsys):
    """A run refused after writing its settings (before any result) does not lock its --out: another
    command's folder, or one with any file of work, is still refused."""
    out, _ = prepare_out_dir(tmp_path / "o", "mia", {"bootstrap": -3})
    (out / "losses").mkdir()  # an empty cache folder is no work
    assert prepare_out_dir(tmp_path / "o", "mia", {"bootstrap": 20}) == (out, False)
    assert "held no work yet, only the settings of an earlier run (bootstrap (was -3, now 20))" in capsys.readouterr().err
    assert json.loads((out / "settings.json").read_text())["settings"] == {"bootstrap": 20}
    assert prepare_out_dir(tmp_path / "o", "mia", {"bootstrap": 20}) == (out, True)
    with pytest.raises(SettingsMismatchError, match="diffaudit mia"):
        prepare_out_dir(tmp_path / "o", "verify", {"bootstrap": 20})
    (out / "losses" / "model-00.npy").write_bytes(b"work")
    with pytest.raises(SettingsMismatchError, match="bootstrap \\(was 20, now 30\\)"):
        prepare_out_dir(tmp_path / "o", "mia", {"bootstrap": 30})
    # a user's own files, there before diffaudit first wrote, are not diffaudit's work
    user = tmp_path / "u"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    prepare_out_dir(user, "mia", {"seed": 0})
    assert prepare_out_dir(user, "mia", {"seed": 1}) == (user, False)
    assert json.loads((user / "settings.json").read_text())["kept_on_fresh"] == ["notes.txt"]


def test_a_nested_digest_of_an_input_is_named_as_its_contents():
    """The data record a training run keeps (``data.digest``) differs when --data changed in place: named as
    such, not by the key (an audit's stage said `data.digest (was …)`)."""
    from diffaudit.core.outdir import diff_settings

    said = diff_settings({"data": {"spec": "d.npz", "digest": "a"}}, {"data": {"spec": "d.npz", "digest": "b"}},
                         names={"data": "--data"})
    assert said == ["the contents of --data (was 'a', now 'b')"]


def test_the_digest_of_one_of_several_models_is_named_as_that_models_contents():
    """mia records each shadow model's digest: a retrained one was named by the key `shadow_digests.model-00`."""
    from diffaudit.core.outdir import diff_settings

    said = diff_settings({"shadow_digests": {"model-00": "a", "model-01": "c"}},
                         {"shadow_digests": {"model-00": "b", "model-01": "c"}}, names={"shadows": "--shadows"})
    assert said == ["the contents of --shadows (model-00) (was 'a', now 'b')"]


def test_the_by_products_of_an_input_given_on_one_side_only_are_not_listed_again():
    """``baseline`` dropped: its seed, digest and count, unset with it, are its by-products; a by-product that
    differs while the input stays given (another seed), or one set on the side where the input is unset,
    is listed."""
    from diffaudit.core.outdir import diff_settings

    given = {"baseline": "digits", "baseline_seed": 0, "baseline_digest": "ab", "baseline_left_out": 3, "seed": 0}
    dropped = {"baseline": None, "baseline_seed": None, "baseline_digest": None, "baseline_left_out": None, "seed": 0}
    assert diff_settings(given, dropped) == ["baseline (was 'digits', now None)"]
    assert diff_settings(dropped, given) == ["baseline (was None, now 'digits')"]
    assert diff_settings(given, {**given, "baseline_seed": 1}) == ["baseline_seed (was 0, now 1)"]
    odd = {**dropped, "baseline_left_out": 5}  # set on both sides, and unlike: said
    assert diff_settings(given, odd) == ["baseline (was 'digits', now None)", "baseline_left_out (was 3, now 5)"]
    assert diff_settings({"data": "a", "data_digest": None}, {"data": None, "data_digest": "x"}) == [
        "data (was 'a', now None)", "data_digest (was None, now 'x')"]


def test_a_nested_record_of_another_kind_lists_what_both_kinds_set():
    """``--embedder pixel``, then ``phash``: the kind, and a setting both have (max_shift) where it differs;
    never the settings one kind alone has, as '<unset>'."""
    from diffaudit.core.outdir import diff_settings

    pixel = {"embedder": {"name": "pixel", "size": 8, "color": "ycc", "max_shift": 0}}
    phash = {"embedder": {"name": "phash", "hash_size": 8, "highfreq_factor": 4, "max_shift": 0}}
    assert diff_settings(pixel, phash) == ["embedder.name (was 'pixel', now 'phash')"]
    shifted = {"embedder": {**phash["embedder"], "max_shift": 2}}
    assert diff_settings(pixel, shifted) == ["embedder.max_shift (was 0, now 2)", "embedder.name (was 'pixel', now 'phash')"]
    sized = {"embedder": {**pixel["embedder"], "size": 4}}  # the same kind: every setting
    assert diff_settings(pixel, sized) == ["embedder.size (was 8, now 4)"]


def test_the_same_data_named_another_way_is_the_same_work():
    """`cifar10-test` and the glob of its shard load the same images (one digest): their spec and options differ,
    the work does not; another digest is another dataset, listed."""
    from diffaudit.core.outdir import diff_settings

    builtin = {"data": {"spec": "cifar10-test", "options": {"subset": 20}, "digest": "ab12"}, "seed": 0}
    shards = {"data": {"spec": "/d/cifar10-test-*.tar", "options": {"subset": 20, "cifar_root": None}, "digest": "ab12"},
              "seed": 0}
    assert diff_settings(builtin, shards) == []
    flat_a = {"data": "cifar10-test", "data_options": {}, "data_digest": "ab12"}
    assert diff_settings(flat_a, {**flat_a, "data": "/d/cifar10-test-*.tar"}) == []
    other = {"data": {**shards["data"], "digest": "cd34"}, "seed": 0}
    assert diff_settings(builtin, other) == ["data.digest (was 'ab12', now 'cd34')", "data.options.cifar_root (was "
                                             "'<unset>', now None)", "data.spec (was 'cifar10-test', now '/d/cifar10-test-*.tar')"]
    assert diff_settings({**builtin, "data": {**builtin["data"], "digest": None}},
                         {**shards, "data": {**shards["data"], "digest": None}}) != []  # no digest: the spec decides
