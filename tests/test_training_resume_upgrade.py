"""Training run folders record their data canonical, and read an earlier version's record through an
``upgrade`` hook.

A run an earlier version started recorded the paths of its data (``--data``, ``--membership``) as typed.
Re-run from the directory it was started in, such a run resumes (from its checkpoint, to the weights of
an uninterrupted run) and its settings are recorded canonical from then on; from another directory the
same relative spelling names another file, and the run is refused with its record left as it was.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

import diffaudit.models.training as training
from diffaudit.cli.main import main
from diffaudit.data import load_dataset, make_membership, save_membership

TRAIN = ["--preset", "tiny", "--batch-size", "8", "--warmup-steps", "1", "--steps", "4", "--checkpoint-every", "2",
         "--device", "cpu"]


@pytest.fixture
def here(tmp_path, monkeypatch):
    """``tmp_path`` as the working directory, holding ``digits.npz`` and its membership matrix ``m.npz``."""
    monkeypatch.chdir(tmp_path)
    ds = load_dataset("digits", subset=24)
    np.savez(tmp_path / "digits.npz", images=ds.images)
    save_membership(tmp_path / "m.npz", make_membership(24, 2, seed=1), load_dataset(str(tmp_path / "digits.npz")).keys, 1)
    return tmp_path


def _train(data: str, membership: str, out: str, *extra: str) -> list[str]:
    return ["train", "--data", data, "--membership", membership, "--model-index", "0", "--out", out, *TRAIN, *extra]


def _shadows(data: str, membership: str, out: str) -> list[str]:
    return ["shadows", "--data", data, "--membership", membership, "--models", "2", "--out", out, *TRAIN]


def _settings(run) -> dict:
    return json.loads((run / "settings.json").read_text())["settings"]


def _record_as_typed(run, **paths: str) -> None:
    """Rewrite ``run``'s settings.json as an earlier version wrote it: the data record's ``paths`` as typed."""
    record = json.loads((run / "settings.json").read_text())
    for key, value in paths.items():
        assert record["settings"]["data"][key] != value  # recorded canonical today
        record["settings"]["data"][key] = value
    (run / "settings.json").write_text(json.dumps(record))


def _interrupt_at_checkpoint(monkeypatch, nth: int) -> None:
    """Ctrl-C right after the ``nth`` training checkpoint of this process."""
    seen = {"n": 0}

    def fault(name: str) -> None:
        if name == "train.checkpoint":
            seen["n"] += 1
            if seen["n"] == nth:
                raise KeyboardInterrupt

    monkeypatch.setattr(training, "fault_point", fault)


def _weights(run) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((run / "unet").glob("*.safetensors")))


def test_a_fresh_run_records_its_data_canonical(here):
    assert main(["--quiet", *_train("digits.npz", "./m.npz", "run")]) == 0
    for record in (_settings(here / "run")["data"], json.loads((here / "run" / "train_config.json").read_text())["data"]):
        assert record["spec"] == str(here / "digits.npz") and record["membership"] == str(here / "m.npz")
    assert main(["--quiet", *_shadows("./digits.npz", "m.npz", "sh")]) == 0
    for k in range(2):
        assert _settings(here / "sh" / f"model-{k:02d}")["data"]["spec"] == str(here / "digits.npz")


def test_an_earlier_versions_run_resumes_from_where_it_was_started(here, monkeypatch, capsys):
    assert main(["--quiet", *_train("digits.npz", "m.npz", "whole")]) == 0
    _interrupt_at_checkpoint(monkeypatch, 1)
    assert main(["--quiet", *_train("digits.npz", "m.npz", "run")]) == 130
    monkeypatch.undo()
    monkeypatch.chdir(here)
    run = here / "run"
    assert not (run / "result.json").exists() and training.checkpoint_dirs(run)
    _record_as_typed(run, spec="digits.npz", membership="m.npz")

    (here / "elsewhere").mkdir()
    monkeypatch.chdir(here / "elsewhere")  # there `digits.npz` is no file: the record names another input
    capsys.readouterr()
    assert main(["--quiet", *_train("../digits.npz", "../m.npz", "../run")]) == 2
    err = capsys.readouterr().err
    assert f"--data (was 'digits.npz', now {str(here / 'digits.npz')!r})" in err, err
    assert _settings(run)["data"]["spec"] == "digits.npz"  # refused: the record is left as it was

    monkeypatch.chdir(here)
    assert main(_train("./digits.npz", "m.npz", "run")) == 0
    assert "resuming" in capsys.readouterr().err  # from its checkpoint, not from scratch
    assert _settings(run)["data"]["spec"] == str(here / "digits.npz")  # recorded canonical from now on
    assert _settings(run)["data"]["membership"] == str(here / "m.npz")
    assert _weights(run) == _weights(here / "whole")


def test_an_earlier_versions_dp_run_resumes(here):
    dp = ["--dp-noise", "0.5"]
    assert main(["--quiet", *_train("digits.npz", "m.npz", "dp", *dp)]) == 0
    run = here / "dp"
    _record_as_typed(run, spec="digits.npz")
    (run / "result.json").unlink()  # an unfinished run
    assert main(["--quiet", *_train("digits.npz", "m.npz", "dp", *dp)]) == 0
    assert (run / "result.json").exists()
    assert _settings(run)["data"]["spec"] == str(here / "digits.npz")
    assert "dp" in _settings(run)


def test_an_earlier_versions_shadow_runs_resume(here, monkeypatch):
    assert main(["--quiet", *_shadows("digits.npz", "m.npz", "whole")]) == 0
    _interrupt_at_checkpoint(monkeypatch, 2)  # model 0 finished, model 1 at its checkpoint
    assert main(["--quiet", *_shadows("digits.npz", "m.npz", "sh")]) == 130
    monkeypatch.undo()
    monkeypatch.chdir(here)
    out = here / "sh"
    assert (out / "model-00" / "result.json").exists() and not (out / "model-01" / "result.json").exists()
    for folder in (out, out / "model-00", out / "model-01"):
        _record_as_typed(folder, spec="digits.npz")

    assert main(["--quiet", *_shadows("digits.npz", "m.npz", "sh")]) == 0
    assert _settings(out)["data"]["spec"] == str(here / "digits.npz")
    assert _settings(out / "model-01")["data"]["spec"] == str(here / "digits.npz")
    assert json.loads((out / "result.json").read_text())["n_models"] == 2
    for k in range(2):
        assert _weights(out / f"model-{k:02d}") == _weights(here / "whole" / f"model-{k:02d}")


def test_the_run_upgrade_hook_pickles_and_reads_paths_canonical(here):
    """Shadow runs train in worker processes: the hook travels there pickled."""
    from diffaudit.cli.train import upgrading_run_paths

    hook = pickle.loads(pickle.dumps(upgrading_run_paths()))
    old = {"train": {"steps": 4}, "data": {"spec": "digits.npz", "options": {"cifar_root": None}, "membership": "./m.npz",
                                           "model_index": 0}}
    assert hook(old) == {"train": {"steps": 4}, "data": {"spec": str(here / "digits.npz"), "options": {"cifar_root": None},
                                                         "membership": str(here / "m.npz"), "model_index": 0}}
    assert old["data"]["spec"] == "digits.npz"  # the record read is left as it was


def test_an_earlier_versions_shadow_runs_resume_in_workers(here, monkeypatch):
    assert main(["--quiet", *_shadows("digits.npz", "m.npz", "sh")]) == 0
    out = here / "sh"
    for k in range(2):
        _record_as_typed(out / f"model-{k:02d}", spec="digits.npz")
        (out / f"model-{k:02d}" / "result.json").unlink()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert main(["--quiet", *_shadows("digits.npz", "m.npz", "sh"), "--workers", "2"]) == 0
    for k in range(2):
        assert _settings(out / f"model-{k:02d}")["data"]["spec"] == str(here / "digits.npz")
