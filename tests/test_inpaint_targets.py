"""`diffaudit inpaint` target selection: random targets come only from examples a shadow did not
train on (one --shadow, or --shadows with a membership matrix), seeded; an empty --target-keys is
refused. Models are untrained tiny UNets with a recorded training set: the choice of targets does
not depend on the weights."""

import argparse
import json
import shutil

import numpy as np
import pytest

from diffaudit.cli.inpaint import assign_shadows, select_targets, shadow_candidates
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import make_membership, save_membership
from tests.helpers import make_tiny_model_dir


def _run(root, digits, indices):
    """A tiny untrained model folder recording ``indices`` of the digits as its training set."""
    make_tiny_model_dir(root)
    indices = [int(i) for i in indices]
    (root / "train_ids.json").write_text(json.dumps({"keys": [digits.keys[i] for i in indices], "indices": indices}))
    return root


@pytest.fixture(scope="module")
def disjoint(tmp_path_factory, digits):
    """The paper's setting: the target trained on digits 0..99, the shadow on other digits, 100..899."""
    root = tmp_path_factory.mktemp("disjoint")
    model = root / "target"
    _run(model, digits, range(100))
    shadow = root / "shadow"
    shutil.copytree(model, shadow)
    (shadow / "train_ids.json").write_text(json.dumps({"keys": [digits.keys[i] for i in range(100, 900)],
                                                       "indices": list(range(100, 900))}))
    return model, shadow


def _inpaint(model, out, *extra):
    return main(["--quiet", "inpaint", "--model", str(model), "--data", "digits", "--n-inpaint", "2", "--top-k", "1",
                 "--steps", "2", "--jump-length", "1", "--batch-size", "64", "--device", "cpu", "--out", str(out), *extra])


def test_random_targets_avoid_what_a_single_shadow_trained_on(disjoint, tmp_path):
    """Non-members are drawn from the 897 examples neither model saw, never from the shadow's 800."""
    model, shadow = disjoint
    for seed in (0, 1, 2):
        out = tmp_path / f"s{seed}"
        assert _inpaint(model, out, "--shadow", str(shadow), "--targets", "4,4", "--seed", str(seed)) == 0, seed
        r = json.loads((out / "result.json").read_text())
        idx = [t["index"] for t in r["targets"]]
        assert sum(t["member"] for t in r["targets"]) == 4 and len(idx) == 8
        assert not any(100 <= i < 900 for i in idx), idx


def test_random_targets_are_seeded_and_limited_to_the_usable_pool(disjoint, digits):
    model, shadow = disjoint
    args = argparse.Namespace(model=str(model), shadow=str(shadow), shadows=None, membership=None)
    runs, out = shadow_candidates(args, digits)
    assert runs == [shadow] and out.shape == (len(digits), 1)
    assert not out[100:900].any() and out[:100].all() and out[900:].all()
    members = {digits.keys[i] for i in range(100)}
    a = select_targets(digits, members, targets="5,20", target_keys=None, seed=3, usable=out.any(1))
    assert a == select_targets(digits, members, targets="5,20", target_keys=None, seed=3, usable=out.any(1))
    assert a != select_targets(digits, members, targets="5,20", target_keys=None, seed=4, usable=out.any(1))
    assert not any(100 <= i < 900 for i in a) and sum(i < 100 for i in a) == 5
    assert set(assign_shadows(args, digits, a, candidates=(runs, out)).values()) == {shadow}
    # every example usable: the same draws as before pools were limited
    everything = np.ones(len(digits), dtype=bool)
    assert select_targets(digits, members, targets="5,20", target_keys=None, seed=3, usable=everything) == \
        select_targets(digits, members, targets="5,20", target_keys=None, seed=3)


def test_too_few_usable_targets_is_an_error_naming_the_counts(tmp_path, digits, capsys):
    """A shadow that saw half the target's members leaves 50 usable members: 60 cannot be drawn."""
    model = _run(tmp_path / "target", digits, range(100))
    shadow = _run(tmp_path / "shadow", digits, range(50, 900))
    capsys.readouterr()
    assert _inpaint(model, tmp_path / "out", "--shadow", str(shadow), "--targets", "60,4") == 2
    err = capsys.readouterr().err
    assert "--targets 60,4" in err and "50 members and 897 non-members" in err and "did not train on" in err
    assert "100 members and 1697 non-members in all" in err
    assert not (tmp_path / "out").exists()


def test_random_targets_with_shadows_have_an_out_shadow_each(tmp_path, digits):
    """--shadows: the target is model-00 of the folder and the only other run there, model-01, is OUT
    for half the examples (models 02 and 03 of the membership file are not in the folder): targets
    come from that half, members and non-members alike."""
    matrix = make_membership(len(digits), 4, seed=5)
    save_membership(tmp_path / "shadows" / "membership.npz", matrix, digits.keys, 5)
    for k in range(2):
        _run(tmp_path / "shadows" / f"model-{k:02d}", digits, np.flatnonzero(matrix[:, k]))
    model = tmp_path / "shadows" / "model-00"
    args = argparse.Namespace(model=str(model), shadow=None, shadows=str(tmp_path / "shadows"), membership=None)
    runs, out = shadow_candidates(args, digits)
    assert [r.name for r in runs] == ["model-01"] and np.array_equal(out[:, 0], ~matrix[:, 1])
    for seed in (0, 1):
        dest = tmp_path / f"s{seed}"
        assert _inpaint(model, dest, "--shadows", str(tmp_path / "shadows"), "--targets", "3,3", "--seed", str(seed)) == 0
        r = json.loads((dest / "result.json").read_text())
        assert all(not matrix[t["index"], 1] and t["shadow"].endswith("model-01") for t in r["targets"])
        assert [t["member"] for t in r["targets"]].count(True) == 3


@pytest.mark.parametrize("keys", [" , ", "", ",,"])
def test_target_keys_naming_no_example_is_an_error(disjoint, digits, tmp_path, capsys, keys):
    model, shadow = disjoint
    capsys.readouterr()
    assert _inpaint(model, tmp_path / "out", "--shadow", str(shadow), "--target-keys", keys) == 2
    assert "--target-keys names no example" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(DiffauditError, match="--target-keys names no example"):
        select_targets(digits, set(), targets="1,1", target_keys=keys, seed=0)
