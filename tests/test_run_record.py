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


def test_training_keys_not_in_the_data_say_when_skip_bad_skipped_them_or_they_are_absolute_paths(tmp_path):
    """A train_ids.json naming an image --skip-bad skipped, or naming images by absolute path, said only "1 of the
    7 examples it trained on are not among ...": now it says which of the two it is."""
    from PIL import Image

    from diffaudit.data import load_dataset
    from tests.helpers import make_tiny_model_dir

    scans = tmp_path / "scans"
    scans.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 30, np.uint8)).save(scans / f"s{i}.png")
    (scans / "trunc.png").write_bytes((scans / "s0.png").read_bytes()[:40])
    ds = load_dataset(str(scans), skip_bad=True)
    run = make_tiny_model_dir(tmp_path / "run")
    (run / "train_ids.json").write_text(json.dumps({"keys": ["s0.png", "trunc.png"]}))
    with pytest.raises(DiffauditError, match=r"'trunc.png' is an image --skip-bad skipped as bad \(.*trunc.png: "):
        check_trained_on(run, ds)
    (run / "train_ids.json").write_text(json.dumps({"keys": [str(scans / "s1.png"), str(scans / "s2.png")]}))
    with pytest.raises(DiffauditError, match=r"its keys are absolute paths, where an image's id is its path inside the "
                                             r"folder \(.*s1.png' is 's1.png'\): write them so"):
        check_trained_on(run, ds)
    (run / "train_ids.json").write_text(json.dumps({"keys": ["nowhere.png"]}))
    with pytest.raises(DiffauditError) as refused:
        check_trained_on(run, ds)
    assert "skip-bad" not in str(refused.value) and "absolute" not in str(refused.value)
