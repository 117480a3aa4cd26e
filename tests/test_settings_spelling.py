"""Spellings of one input are one setting; a refusal names the flag the user typed.

`extract`, `verify` and `train` record the paths of their inputs canonical (resolved), so a re-run
with ``./name`` or the absolute path resumes; a folder an earlier version made (the path recorded as
typed) resumes when re-run from where it was made; another file is still refused. A settings
mismatch names the flag (``--n``), not the recorded key (``per_prompt``).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from helpers import make_tiny_model_dir, noisy_copies


def _images(n: int, seed: int, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.fixture
def here(tmp_path, monkeypatch):
    """``tmp_path`` as the working directory, holding the inputs the commands read by relative path."""
    monkeypatch.chdir(tmp_path)
    base = _images(2, 0)
    cond = np.concatenate([noisy_copies(base[0], 10, 1), _images(10, 2)])
    np.savez(tmp_path / "cond.npz", images=cond, prompts=np.array(["copied"] * 10 + ["fresh"] * 10))
    np.savez(tmp_path / "other.npz", images=cond[::-1], prompts=np.array(["fresh"] * 10 + ["copied"] * 10))
    np.savez(tmp_path / "train.npz", images=np.concatenate([base, _images(40, 3)]))
    from diffaudit.data import load_dataset

    np.savez(tmp_path / "digits.npz", images=load_dataset("digits", subset=24).images)
    return tmp_path


def _resumes(argv: list[str], capsys) -> None:
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    assert "already finished" in capsys.readouterr().out


def _record_as_typed(out, key: str, value: str) -> None:
    """Rewrite ``out``'s settings.json as an earlier version wrote it: the path at dotted ``key`` as typed."""
    path = out / "settings.json"
    record = json.loads(path.read_text())
    *parents, name = key.split(".")
    holder = record["settings"]
    for p in parents:
        holder = holder[p]
    assert holder[name] != value  # recorded canonical today
    holder[name] = value
    path.write_text(json.dumps(record))


def _refused(argv: list[str], capsys, *words: str) -> None:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and all(w in err for w in words), err


def test_extract_resumes_under_any_spelling_of_its_samples(here, capsys, monkeypatch):
    argv = lambda samples: ["extract", "--samples", samples, "--out", "ex", "--device", "cpu", "--min-clique", "5"]  # noqa: E731
    assert main(argv("cond.npz") + ["--quiet"]) == 0
    for spelling in ("./cond.npz", str(here / "cond.npz"), "../" + here.name + "/cond.npz"):
        _resumes(argv(spelling), capsys)
    _record_as_typed(here / "ex", "samples", "cond.npz")  # an earlier version's folder
    monkeypatch.setenv("DIFFAUDIT_STORAGE_FAULT", "EROFS")  # on read-only storage: answered, the record kept
    _resumes(argv("./cond.npz"), capsys)
    assert json.loads((here / "ex" / "settings.json").read_text())["settings"]["samples"] == "cond.npz"
    monkeypatch.delenv("DIFFAUDIT_STORAGE_FAULT")
    _resumes(argv("cond.npz"), capsys)
    assert json.loads((here / "ex" / "settings.json").read_text())["settings"]["samples"] == str(here / "cond.npz")
    _refused(argv("other.npz"), capsys, "--samples (was", "other.npz")


def test_verify_resumes_under_any_spelling_of_its_inputs(here, capsys):
    argv = lambda samples, data: ["verify", "--samples", samples, "--data", data, "--out", "v", "--device", "cpu"]  # noqa: E731
    assert main(argv("cond.npz", "train.npz") + ["--quiet"]) == 0
    _resumes(argv("./cond.npz", str(here / "train.npz")), capsys)
    _resumes(argv(str(here / "cond.npz"), "./train.npz"), capsys)
    _record_as_typed(here / "v", "samples", "cond.npz")
    _record_as_typed(here / "v", "data", "train.npz")
    _resumes(argv("cond.npz", "train.npz"), capsys)
    _refused(argv("other.npz", "train.npz"), capsys, "--samples (was")


def test_train_resumes_under_any_spelling_of_its_data(here, capsys):
    argv = lambda data: ["train", "--data", data, "--out", "run", "--preset", "tiny", "--batch-size", "8",  # noqa: E731
                         "--warmup-steps", "1", "--steps", "2", "--checkpoint-every", "2", "--device", "cpu", "--quiet"]
    assert main(argv("digits.npz")) == 0
    settings = lambda: json.loads((here / "run" / "settings.json").read_text())["settings"]  # noqa: E731
    assert settings()["data"]["spec"] == str(here / "digits.npz")
    for spelling in ("./digits.npz", str(here / "digits.npz")):
        assert main(argv(spelling)) == 0, capsys.readouterr().err
    _record_as_typed(here / "run", "data.spec", "digits.npz")  # an earlier version's run, finished or not
    (here / "run" / "result.json").unlink()
    assert main(argv("./digits.npz")) == 0, capsys.readouterr().err
    assert settings()["data"]["spec"] == str(here / "digits.npz")  # resumed, and recorded canonical from now on
    assert main(argv("digits.npz")) == 0, capsys.readouterr().err
    np.savez(here / "more.npz", images=np.load(here / "digits.npz")["images"])
    capsys.readouterr()
    assert main(argv("more.npz")) == 2
    assert f"--data (was {str(here / 'digits.npz')!r}, now {str(here / 'more.npz')!r})" in capsys.readouterr().err


def test_builtin_names_and_brace_patterns_are_recorded_sensibly(here):
    from diffaudit.cli.common import canonical_path

    (here / "digits").mkdir()  # a folder named like a built-in dataset: the loader reads the name
    assert canonical_path("digits") == "digits" and canonical_path(None) is None
    assert canonical_path("./shards/x-{000..003}.tar") == "./shards/x-{000..003}.tar"  # no such folder: as typed
    (here / "shards").mkdir()
    assert canonical_path("./shards/x-{000..003}.tar") == str(here / "shards" / "x-{000..003}.tar")


def test_a_sample_refusal_names_the_flags_typed(tmp_path, capsys):
    model = make_tiny_model_dir(tmp_path / "model")
    argv = ["sample", "--model", str(model), "--out", str(tmp_path / "s"), "--steps", "2", "--micro-batch", "4",
            "--device", "cpu", "--quiet"]
    assert main(argv + ["--n", "4", "--shard-size", "4"]) == 0
    _refused(argv + ["--n", "6", "--shard-size", "4"], capsys, "--n (was 4, now 6)")
    _refused(argv + ["--n", "4", "--shard-size", "2"], capsys, "--shard-size (was 4, now 2)")
    _refused(argv + ["--per-prompt", "6", "--shard-size", "4"], capsys, "--per-prompt (was 4, now 6)")
