"""`diffaudit audit --model RUN` reads RUN's record of its dropped near-duplicates once.

The check that --data holds images the model never saw and the exclusion of the dropped
near-duplicates from the non-members use the same record: read twice, a file changed in between
would make them disagree (and it is read for nothing).
"""

from __future__ import annotations

import json

import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError

TRAIN = ["train", "--data", "digits", "--subset", "24", "--preset", "tiny", "--batch-size", "8", "--steps", "2",
         "--checkpoint-every", "2", "--warmup-steps", "1", "--quiet", "--device", "cpu"]


@pytest.fixture
def dedup_run(tmp_path):
    """A run trained on 20 of 24 digits, the other 4 dropped as near-duplicates (its dropped_duplicates.json)."""
    from diffaudit.data import load_dataset

    ds = load_dataset("digits", subset=24)
    keep = tmp_path / "keep.json"
    keep.write_text(json.dumps({"keys": ds.keys[:20], "removed_keys": ds.keys[20:]}))
    run = tmp_path / "run"
    assert main(TRAIN + ["--dedup", str(keep), "--out", str(run)]) == 0
    assert sorted(json.loads((run / "dropped_duplicates.json").read_text())["keys"]) == sorted(ds.keys[20:])
    return run, ds.keys[20:]


def test_the_dropped_duplicates_of_model_are_read_once(tmp_path, dedup_run, monkeypatch, capsys):
    import diffaudit.cli.audit as audit
    import diffaudit.models.run_files as run_files

    run, dropped = dedup_run
    reads = []
    real = run_files.read_dropped_duplicates

    def counted(run_dir):
        reads.append(str(run_dir))
        return real(run_dir)

    def stop(self, name, argv, folder=None):  # every read happens before the first stage: stop there
        raise DiffauditError(f"stopped by the test before stage {name}")

    monkeypatch.setattr(run_files, "read_dropped_duplicates", counted)
    monkeypatch.setattr(audit._Stages, "run", stop)
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    capsys.readouterr()
    assert main(["audit", "--data", "digits", "--model", str(run), "--n-samples", "16", "--sample-steps", "3",
                 "--sweep", "", "--device", "cpu", "--out", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert "stopped by the test before stage sample" in err
    assert reads == [str(run)]
    # the one record read serves the exclusion too, with the message as before
    assert f"{len(dropped)} near-duplicates that run dropped from training are left out of the non-members" in err
    nonmembers = set(json.loads((tmp_path / "audit" / "nonmembers.view.json").read_text())["keys"])
    assert not nonmembers & set(dropped)
