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
    with pytest.raises(DiffauditError, match=r"--target-index must lie in \[0, 3\]"):
        check_target(ds, matrix, TargetSpec(mode="shadow", index=4))


def test_a_model_target_trained_on_every_example_is_refused(ds, tmp_path, monkeypatch):
    import diffaudit.attacks.membership.run as run

    (tmp_path / "train_ids.json").write_text(json.dumps({"keys": ds.keys, "indices": list(range(len(ds)))}))
    monkeypatch.setattr(run, "check_trained_on", lambda r, d, what: list(range(len(d))))  # its pixels: not the point here
    with pytest.raises(DiffauditError, match=r"--target .* 6 members and 0 non-members of the 6 examples of --data digits"
                                             r".*examples it did not"):
        check_target(ds, _halves(), TargetSpec(mode="model", run=tmp_path))
