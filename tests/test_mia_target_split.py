"""`mia` refuses a target whose labels hold no members or no non-members before any loss is computed
(the walkthrough's target trained on every example of --data computed every model's losses, then
failed in the evaluation with settings.json left behind)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.attacks.membership.run import TargetSpec, check_target
from diffaudit.core.errors import DiffauditError
from diffaudit.data import load_dataset


@pytest.fixture(scope="module")
def ds():
    return load_dataset("digits", subset=6)


def _halves(n: int = 6, m: int = 4) -> np.ndarray:
    return np.arange(n)[:, None] % 2 == np.arange(m)[None] % 2  # every column half IN


def test_a_split_target_passes(ds):
    matrix = _halves()
    assert check_target(ds, matrix, TargetSpec()) is None
    assert check_target(ds, matrix, TargetSpec(mode="shadow", index=2)) is None


def test_leave_one_out_with_no_out_entry_is_refused(ds):
    with pytest.raises(DiffauditError, match=r"membership matrix .* 24 members and 0 non-members among the \(model, example\) pairs of 4 models "
                                             r"and the 6 examples.*needs both"):
        check_target(ds, np.ones((6, 4), dtype=bool), TargetSpec())


def test_a_shadow_target_whose_column_is_all_in_or_all_out_is_refused(ds):
    matrix = _halves()
    matrix[:, 1] = True
    with pytest.raises(DiffauditError, match=r"--target-index 1 \(column 1 .* 6 members and 0 non-members"):
        check_target(ds, matrix, TargetSpec(mode="shadow", index=1))
    matrix[:, 1] = False
    with pytest.raises(DiffauditError, match=r"0 members and 6 non-members"):
        check_target(ds, matrix, TargetSpec(mode="shadow", index=1))
    with pytest.raises(DiffauditError, match=r"--target-index must lie in \[0, 3\] \(one of the 4 shadow models the attack reads: --models"):
        check_target(ds, matrix, TargetSpec(mode="shadow", index=4))


def test_a_model_target_trained_on_every_example_is_refused(ds, tmp_path, monkeypatch):
    import diffaudit.attacks.membership.run as run

    (tmp_path / "train_ids.json").write_text(json.dumps({"keys": ds.keys, "indices": list(range(len(ds)))}))
    monkeypatch.setattr(run, "check_trained_on", lambda r, d, what: list(range(len(d))))  # its pixels: not the point here
    with pytest.raises(DiffauditError, match=r"--target .* 6 members and 0 non-members of the 6 examples of --data digits"
                                             r".*examples it did not"):
        check_target(ds, _halves(), TargetSpec(mode="model", run=tmp_path))


@pytest.mark.parametrize("record", [["0.png"], {"keys": "0.png"}, {"indices": [0]}])
def test_a_train_ids_json_without_a_keys_list_is_a_clear_error(tmp_path, record):
    """A bare list (an easy hand-written mistake) was an AttributeError traceback; each such record is refused,
    saying the format to write."""
    from diffaudit.models.run_record import read_train_keys

    (tmp_path / "train_ids.json").write_text(json.dumps(record))
    with pytest.raises(DiffauditError, match=r"train_ids.json: no `keys` list; .* as \{\"keys\": \[\.\.\.\]\}"):
        read_train_keys(tmp_path)


def test_non_members_that_are_all_copies_of_members_are_refused_before_any_loss(tmp_path, monkeypatch):
    """A view whose held-out part holds the training images themselves: every non-member is a member pixel for
    pixel, left out after the losses, so the attack failed only then; it is refused before, saying why."""
    import dataclasses

    import diffaudit.attacks.membership.run as run

    doubled = load_dataset("digits", subset=3)
    doubled = dataclasses.replace(doubled, images=np.concatenate([doubled.images] * 2),
                                  keys=doubled.keys + [f"heldout:{k}" for k in doubled.keys],
                                  labels=None if doubled.labels is None else np.concatenate([doubled.labels] * 2))
    (tmp_path / "train_ids.json").write_text(json.dumps({"keys": doubled.keys[:3]}))
    monkeypatch.setattr(run, "check_trained_on", lambda r, d, what: [0, 1, 2])  # its pixels: not the point here
    with pytest.raises(DiffauditError, match=r"3 members and 3 non-members .* but every non-member is, pixel for pixel, "
                                             r"also a member under another key"):
        check_target(doubled, _halves(6), TargetSpec(mode="model", run=tmp_path))
    matrix = np.zeros((6, 2), bool)
    matrix[:3] = True  # each model trains on the first three; the last three are their copies
    with pytest.raises(DiffauditError, match="every non-member is, pixel for pixel"):
        check_target(doubled, matrix, TargetSpec())
    matrix[0, 1] = False  # model 1 leaves image 0 out, and so its copy 3 too: a true non-member remains
    check_target(doubled, matrix, TargetSpec())
