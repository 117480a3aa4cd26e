"""A run's recorded training set against a --data: pixels always, labels only where the model used them."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.models.run_record import check_trained_on, training_digests
from diffaudit.models.training import TrainConfig, train

TINY = dict(preset="tiny", steps=2, batch_size=4, warmup_steps=0, checkpoint_every=10_000, log_every=1)


@pytest.fixture(scope="module")
def data(digits):
    return dataclasses.replace(digits.subset(range(12)), captions=[f"digit {i}" for i in range(12)])


@pytest.fixture(scope="module")
def plain_and_conditional(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFAUDIT_QUIET", "1")
        plain = train(data, TrainConfig(**TINY), root / "plain", train_indices=[1, 3, 5])
        cond = train(data, TrainConfig(class_conditional=True, **TINY), root / "cond", train_indices=[1, 3, 5])
    return plain, cond


def test_same_data_in_another_order_or_subset_is_accepted(data, plain_and_conditional):
    plain, cond = plain_and_conditional
    for run in (plain, cond):
        assert check_trained_on(run, data) == [1, 3, 5]
        reordered = data.subset([5, 4, 3, 2, 1, 0])  # the training keys sit at other rows
        assert check_trained_on(run, reordered) == [4, 2, 0]


def test_labels_count_only_for_a_class_conditional_model(data, plain_and_conditional):
    plain, cond = plain_and_conditional
    relabelled = dataclasses.replace(data, labels=(np.asarray(data.labels) + 1) % 10)
    assert check_trained_on(plain, relabelled) == [1, 3, 5]  # it never saw a label
    with pytest.raises(DiffauditError, match="class-conditional and was trained with other labels"):
        check_trained_on(cond, relabelled)
    recaptioned = dataclasses.replace(data, captions=["other"] * len(data))
    for run in (plain, cond):  # a pixel model reads no caption
        assert check_trained_on(run, recaptioned) == [1, 3, 5]


def test_other_pixels_under_the_same_keys_are_refused(data, plain_and_conditional):
    plain, _ = plain_and_conditional
    images = np.array(data.images)
    images[3, 0, 0, 0] ^= 1  # one bit of one training image
    with pytest.raises(DiffauditError, match="trained on other pixels"):
        check_trained_on(plain, dataclasses.replace(data, images=images))
    images = np.array(data.images)
    images[0] ^= 255  # a non-member changed: not the training set's business
    assert check_trained_on(plain, dataclasses.replace(data, images=images)) == [1, 3, 5]
    # how many of its own training examples are missing, not a count that reads as the model's whole set
    with pytest.raises(DiffauditError, match="2 of the 3 examples it trained on are not among the 3 examples of digits as loaded"):
        check_trained_on(plain, data.subset([0, 1, 2]))
    assert check_trained_on(plain, data.subset([0, 1, 2]), allow_missing=True) == [1]


def test_a_hand_written_train_ids_json_is_checked_for_what_it_gets_wrong(data, plain_and_conditional, tmp_path):
    """A key listed twice was accepted, and refused after sampling as "keys are not unique" of --data; keys
    written with their file extension (automobile_1690.jpg) were told to give other --data."""
    import shutil

    from diffaudit.models.run_record import read_train_keys

    plain, _ = plain_and_conditional
    run = tmp_path / "run"
    shutil.copytree(plain, run)
    keys = read_train_keys(run)
    (run / "train_ids.json").write_text(json.dumps({"keys": keys + keys[:1]}))
    with pytest.raises(DiffauditError, match=f"the key '{keys[0]}' is listed 2 times; list each training example once"):
        read_train_keys(run)
    (run / "train_ids.json").write_text(json.dumps({"keys": []}))
    with pytest.raises(DiffauditError, match="train_ids.json: its `keys` list is empty"):
        read_train_keys(run)
    (run / "train_ids.json").write_text(json.dumps({"keys": [k + ".jpg" for k in keys]}))
    with pytest.raises(DiffauditError, match=f"its keys carry a file extension where .* have none \\('{keys[0]}' is one of them\\)"):
        check_trained_on(run, data)


def test_runs_recording_only_the_combined_digest_are_compared_on_it(data, plain_and_conditional, tmp_path):
    import shutil

    plain, _ = plain_and_conditional
    old = tmp_path / "old"
    shutil.copytree(plain, old)
    result = json.loads((old / "result.json").read_text())
    assert result["training_digests"] == training_digests(data, [1, 3, 5])
    del result["training_digests"]  # as a run made before they were recorded
    (old / "result.json").write_text(json.dumps(result))
    assert check_trained_on(old, data) == [1, 3, 5]
    with pytest.raises(DiffauditError, match="other pixels, labels or captions"):
        check_trained_on(old, dataclasses.replace(data, captions=["other"] * len(data)))
