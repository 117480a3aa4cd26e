"""Membership matrices: LiRA properties (hypothesis), file round trip, validation, the CLI command."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError
from diffaudit.data import Membership, load_dataset, load_membership, make_membership, save_membership

sizes = st.integers(min_value=1, max_value=300)
even_models = st.integers(min_value=1, max_value=20).map(lambda k: 2 * k)
seeds = st.integers(min_value=-(2**40), max_value=2**40)


@settings(deadline=None, max_examples=60)
@given(n=sizes, m=even_models, seed=seeds)
def test_rows_are_exactly_half_in_and_seeded(n, m, seed):
    a = make_membership(n, m, seed)
    assert a.shape == (n, m) and a.dtype == np.bool_
    assert np.all(a.sum(axis=1) == m // 2)
    np.testing.assert_array_equal(a, make_membership(n, m, seed))


@settings(deadline=None, max_examples=40)
@given(n=st.integers(min_value=20, max_value=300), m=even_models, seed=seeds)
def test_different_seeds_differ_and_prefix_is_stable(n, m, seed):
    a = make_membership(n, m, seed)
    assert not np.array_equal(a, make_membership(n, m, seed + 1))
    np.testing.assert_array_equal(make_membership(n // 2, m, seed), a[: n // 2])


def test_columns_about_half_and_every_pair_of_models_varies():
    a = make_membership(4000, 16, 0)
    cols = a.sum(axis=0)
    assert np.all(np.abs(cols - 2000) < 5 * np.sqrt(4000) / 2)  # binomial(4000, 1/2) within 5 sigma
    # no two models share the same training set, and model overlap is about a quarter of the data
    overlap = (a[:, :, None] & a[:, None, :]).sum(axis=0)
    off = overlap[~np.eye(16, dtype=bool)]
    assert np.all(np.abs(off - 4000 * 8 * 7 / (16 * 15)) < 150)


@pytest.mark.parametrize("n,m,match", [(0, 16, "at least one example"), (10, 15, "even"), (10, 0, "even"), (10, 2.0, "integer")])
def test_make_membership_bad_arguments(n, m, match):
    with pytest.raises(DiffauditError, match=match):
        make_membership(n, m)


@settings(deadline=None, max_examples=25)
@given(n=st.integers(min_value=1, max_value=50), m=even_models, seed=seeds,
       key_chars=st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=6))
def test_save_load_round_trip(tmp_path_factory, n, m, seed, key_chars):
    keys = [f"{key_chars}/{i}" for i in range(n)]
    matrix = make_membership(n, m, seed)
    path = tmp_path_factory.mktemp("m") / "membership.npz"
    save_membership(path, matrix, keys, seed)
    mem = load_membership(path)
    np.testing.assert_array_equal(mem.matrix, matrix)
    assert mem.keys == keys and mem.seed == seed and mem.n_models == m and mem.n_examples == n
    for k in range(m):
        np.testing.assert_array_equal(mem.column_indices(k), np.flatnonzero(matrix[:, k]))
    np.testing.assert_array_equal(mem.in_models(0), np.flatnonzero(matrix[0]))
    with np.load(path, allow_pickle=False) as z:  # readable with pickles refused: no object arrays
        assert z["keys"].dtype.kind == "U" and z["membership"].dtype == np.bool_


def test_load_against_dataset(tmp_path, digits):
    small = load_dataset("digits", subset=40, subset_seed=1)
    path = save_membership(tmp_path / "m.npz", make_membership(40, 4, 3), small.keys, 3)
    assert load_membership(path, dataset=small).keys == small.keys
    with pytest.raises(DiffauditError, match=r"m\.npz has 40 examples but dataset digits has 1797 \(more by 1757\)"):
        load_membership(path, dataset=digits)
    other = load_dataset("digits", subset=40, subset_seed=2)
    first = next(i for i, (a, b) in enumerate(zip(small.keys, other.keys)) if a != b)
    with pytest.raises(DiffauditError, match=rf"example {first} is '{small.keys[first]}' in the matrix but '{other.keys[first]}'"):
        load_membership(path, dataset=other)


def test_invalid_files_and_matrices(tmp_path):
    with pytest.raises(DiffauditError, match=r"membership file .*none\.npz does not exist"):
        load_membership(tmp_path / "none.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DiffauditError, match=r"junk\.npz: not a readable membership file"):
        load_membership(junk)
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, images=np.zeros(3))
    with pytest.raises(DiffauditError, match=r"wrong\.npz: not a membership file: no `membership` array"):
        load_membership(wrong)
    lopsided = make_membership(5, 4, 0)
    lopsided[2] = [True, True, True, False]
    bad = tmp_path / "bad.npz"
    np.savez(bad, membership=lopsided, keys=np.array(list("abcde")), seed=np.int64(0))
    with pytest.raises(DiffauditError, match=r"bad\.npz: example 'c' \(row 2\) is IN for 3 of 4 models"):
        load_membership(bad)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, membership=make_membership(2, 2, 0), keys=np.array(["a", "b"], dtype=object), seed=np.int64(0))
    with pytest.raises(DiffauditError, match=r"pickled\.npz: array `keys` cannot be read without unpickling"):
        load_membership(pickled)
    with pytest.raises(DiffauditError, match="3 keys for 2 rows"):
        save_membership(tmp_path / "x.npz", make_membership(2, 2, 0), ["a", "b", "c"], 0)
    with pytest.raises(DiffauditError, match="keys are not unique"):
        Membership(make_membership(2, 2, 0), ["a", "a"], 0)
    with pytest.raises(DiffauditError, match=r"model index 2 is out of range.*2 models"):
        Membership(make_membership(2, 2, 0), ["a", "b"], 0).column_indices(2)


def test_cli_membership_writes_then_keeps_then_refuses(tmp_path, capsys, monkeypatch):
    import diffaudit.cli.main as cli_main

    monkeypatch.setattr(cli_main, "COMMANDS", ["membership"])  # the real main(), without importing other commands
    out = tmp_path / "mem.npz"
    args = ["membership", "--data", "digits", "--subset", "64", "--models", "4", "--seed", "5", "--out", str(out)]
    main = cli_main.main
    assert main(args) == 0
    assert "wrote" in capsys.readouterr().out
    mem = load_membership(out, dataset=load_dataset("digits", subset=64))
    np.testing.assert_array_equal(mem.matrix, make_membership(64, 4, 5))
    before = out.stat().st_mtime_ns
    assert main(["--json", *args]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "unchanged" and result["n_examples"] == 64 and result["command"] == "membership"
    assert result["settings"]["subset"] == 64 and out.stat().st_mtime_ns == before
    assert main([*args[:-4], "--seed", "6", "--out", str(out)]) == 2
    assert "differs in seed (was 5, now 6)" in capsys.readouterr().err
    assert main([*args[:-4], "--seed", "6", "--out", str(out), "--fresh"]) == 0
    assert load_membership(out).seed == 6
    notes = tmp_path / "notes.txt"  # a mistyped --out naming a file of the user's: never replaced, --fresh or not
    notes.write_text("mine")
    for extra in ([], ["--fresh"]):
        assert main([*args[:-2], "--out", str(notes), *extra]) == 2
        assert "exists and is not a membership file" in capsys.readouterr().err and notes.read_text() == "mine"
    assert main(["membership", "--data", "digits", "--models", "3", "--out", str(tmp_path / "odd.npz")]) == 2
    assert "must be even" in capsys.readouterr().err
    # --out a folder (existing, ending in /, or a new path without a suffix, as every other --out): membership.npz inside it
    (tmp_path / "folder").mkdir()
    for folder in (str(tmp_path / "folder"), f"{tmp_path / 'new'}/", str(tmp_path / "shadow-split")):
        assert main([*args[:-2], "--out", folder]) == 0
        assert f"wrote {folder.rstrip('/')}/membership.npz" in capsys.readouterr().out
        assert load_membership(f"{folder.rstrip('/')}/membership.npz").seed == 5
