"""Bad input not covered elsewhere (issue 9, item 3): each is a clear error naming the thing, or exact.

Already tested in other files (see docs/reliability.md): corrupt, truncated and unsafe image files and
tar shards, mixed sizes and modes, empty folders and prompt files, 16-bit decoding, NaN in sampling,
inpainting, ROC and LiRA inputs, thresholds of extract/verify/dedup, pathological clique graphs.
Here: NaN and infinite model outputs in the per-example loss, in training and in `mia`; membership
matrices that do not match the dataset given to `train` and `mia`; out-of-range sampling settings,
refused before any output folder exists; 16-bit images end to end through `train`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from diffaudit.cli.main import main
from diffaudit.core.errors import NonFiniteError
from diffaudit.data import load_dataset, make_membership, save_membership
from diffaudit.models.denoiser import load_denoiser
from diffaudit.models.loss import per_example_loss
from diffaudit.models.scheduler import make_scheduler
from diffaudit.models.unets import build_unet, unet_config


def save_tiny_model(root: Path, poison: float | None = None, seed: int = 0) -> Path:
    """An untrained tiny 8x8 gray UNet as a run-directory-like folder; ``poison`` fills the output bias."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet = build_unet(unet_config("tiny", image_size=8, in_channels=1))
    if poison is not None:
        with torch.no_grad():
            unet.conv_out.bias.fill_(poison)
    unet.save_pretrained(root / "unet")
    make_scheduler().save_pretrained(root / "scheduler")
    return root


def strict_json_files(root: Path) -> list[Path]:
    """All JSON files under ``root``, each parsed strictly (NaN/Infinity are failures)."""
    files = list(root.rglob("*.json")) + list(root.rglob("*.jsonl"))
    for p in files:
        for line in (p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]):
            json.loads(line, parse_constant=lambda c: pytest.fail(f"{p} holds {c}"))
    return files


# --------------------------------------------------------------------------- NaN / inf model outputs

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_per_example_loss_refuses_non_finite_model_outputs(tmp_path, digits, value):
    den = load_denoiser(save_tiny_model(tmp_path / "m", poison=value))
    with pytest.raises(NonFiniteError, match=r"non-finite values at t=100 for examples 0\.\.5"):
        per_example_loss(den, digits.images[:6], timesteps=[100])


def test_per_example_loss_refuses_one_bad_example_in_a_later_batch(tmp_path, digits):
    den = load_denoiser(save_tiny_model(tmp_path / "m"))

    class OneBadRow:
        """The real model, except that example 5 (second batch of 4) comes back NaN at t = 200."""

        def __getattr__(self, name):
            return getattr(den, name)

        def __call__(self, x, t, labels=None):
            out = den(x, t, labels)
            if int(t[0]) == 200 and out.shape[0] == 2:  # the second batch: examples 4 and 5
                out[1] = float("nan")
            return out

    good = per_example_loss(den, digits.images[:6], timesteps=[100, 200], batch_size=4)
    assert np.isfinite(good).all()
    with pytest.raises(NonFiniteError, match=r"t=200 for examples 4\.\.5"):
        per_example_loss(OneBadRow(), digits.images[:6], timesteps=[100, 200], batch_size=4)


def test_training_that_diverges_to_nan_stops_without_writing_nan(tmp_path, monkeypatch, capsys):
    """A run whose weights become NaN (here: a checkpoint poisoned between two sessions) stops at the
    next loss check with NonFiniteError: exit 2, no result.json, no NaN checkpoint, no NaN in any JSON."""
    import diffaudit.models.training as training

    run = tmp_path / "run"
    argv = ["--quiet", "train", "--data", "digits", "--subset", "16", "--steps", "30", "--checkpoint-every", "10",
            "--batch-size", "8", "--warmup-steps", "2", "--device", "cpu", "--out", str(run)]

    def stop_after_first_checkpoint(name):
        if name == "train.checkpoint":
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "fault_point", stop_after_first_checkpoint)
    assert main(argv) == 130
    monkeypatch.undo()
    ck = run / "checkpoints" / "step-00000010"
    weights = load_file(ck / "model.safetensors")
    save_file({k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in weights.items()},
              ck / "model.safetensors")
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "training loss became nan by step 20" in err and "Traceback" not in err
    assert not (run / "result.json").exists() and not (run / "unet").exists()
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000010"]  # no NaN checkpoint saved
    assert strict_json_files(run)


def test_mia_on_models_with_non_finite_outputs_writes_no_result(tmp_path, capsys):
    n = 16
    ds = load_dataset("digits", subset=n)
    shadows = tmp_path / "shadows"
    for k in range(2):
        run = save_tiny_model(shadows / f"model-{k:02d}", poison=float("nan"), seed=k)
        (run / "result.json").write_text("{}")
    save_membership(shadows / "membership.npz", make_membership(n, 2, seed=0), ds.keys, 0)
    out = tmp_path / "mia"
    capsys.readouterr()
    assert main(["--quiet", "mia", "--data", "digits", "--subset", str(n), "--shadows", str(shadows), "--attack", "loss",
                 "--target-index", "0", "--bootstrap", "0", "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "non-finite" in err and "Traceback" not in err
    assert not (out / "result.json").exists() and not (out / "scores.npz").exists()
    assert not list(out.rglob("*.npy"))  # no NaN losses cached for a later run to reuse
    strict_json_files(out)


# --------------------------------------------------------------------------- membership vs dataset

@pytest.fixture
def membership_40(tmp_path):
    small = load_dataset("digits", subset=40, subset_seed=1)
    return save_membership(tmp_path / "m.npz", make_membership(40, 4, 3), small.keys, 3), small


def test_train_refuses_a_membership_matrix_of_another_dataset(membership_40, tmp_path, capsys):
    path, small = membership_40
    base = ["--quiet", "train", "--data", "digits", "--membership", str(path), "--model-index", "0", "--steps", "1",
            "--checkpoint-every", "1", "--device", "cpu"]
    capsys.readouterr()
    assert main([*base, "--subset", "48", "--subset-seed", "1", "--out", str(tmp_path / "a")]) == 2
    assert "has 40 examples but dataset digits has 48 (more by 8)" in capsys.readouterr().err
    other = load_dataset("digits", subset=40, subset_seed=2)
    first = next(i for i, (a, b) in enumerate(zip(small.keys, other.keys)) if a != b)
    assert main([*base, "--subset", "40", "--subset-seed", "2", "--out", str(tmp_path / "b")]) == 2
    assert f"example {first} is '{small.keys[first]}' in the matrix but '{other.keys[first]}'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # refused before any output
    assert main([*base, "--subset", "40", "--subset-seed", "1", "--model-index", "4", "--out", str(tmp_path / "c")]) == 2
    assert "--model-index must lie in [0, 3]" in capsys.readouterr().err


def test_mia_refuses_a_membership_matrix_of_another_dataset(membership_40, tmp_path, capsys):
    path, _ = membership_40
    (tmp_path / "no-shadows").mkdir()  # the matrix is read, and refused, before the shadow models
    base = ["--quiet", "mia", "--data", "digits", "--shadows", str(tmp_path / "no-shadows"), "--membership", str(path),
            "--device", "cpu", "--out", str(tmp_path / "mia")]
    capsys.readouterr()
    assert main([*base, "--subset", "41", "--subset-seed", "1"]) == 2
    assert "has 40 examples but dataset digits has 41 (more by 1)" in capsys.readouterr().err
    assert main([*base, "--subset", "40", "--subset-seed", "5"]) == 2
    assert "in the matrix but" in capsys.readouterr().err
    assert not (tmp_path / "mia").exists()


# --------------------------------------------------------------------------- sampling settings out of range

@pytest.mark.parametrize("flags,message", [
    (["--eta", "-0.5"], "--eta must lie in [0, 1]"),
    (["--eta", "1.5"], "--eta must lie in [0, 1]"),
    (["--steps", "0"], "--steps must lie in [1, 1000]; got 0"),
    (["--steps", "1001"], "--steps must lie in [1, 1000]; got 1001"),
    (["--micro-batch", "0"], "--micro-batch must be at least 1"),
    (["--n", "0"], "--n must lie in [1, 4,294,967,296]"),
    (["--shard-size", "0"], "--shard-size must be at least 1"),
])
def test_sample_settings_out_of_range_are_refused(tmp_path, capsys, flags, message):
    model = save_tiny_model(tmp_path / "m")
    out = tmp_path / "s"
    argv = ["--quiet", "sample", "--model", str(model), "--out", str(out), "--n", "4", "--steps", "2", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()  # refused before the store exists: a corrected re-run is not "other settings"
    assert main(argv) == 0


def test_sample_fast_off_cuda_says_so_and_records_what_ran(tmp_path, capsys):
    """--fast/--compile off CUDA change nothing: said on stderr, and the store records fast false, so the
    same store resumes with or without the flags and its settings never claim a bf16 run."""
    model = save_tiny_model(tmp_path / "m")
    out = tmp_path / "s"
    argv = ["sample", "--model", str(model), "--out", str(out), "--n", "4", "--steps", "2", "--device", "cpu"]
    capsys.readouterr()
    assert main([*argv, "--fast", "--compile"]) == 0
    assert "--fast and --compile apply on CUDA only" in capsys.readouterr().err
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["fast"] is False and settings["compile"] is False
    assert main(["--quiet", *argv]) == 0  # the plain run resumes the same store


# --------------------------------------------------------------------------- 16-bit images end to end

def test_16bit_pngs_train_exactly_like_their_8bit_equivalents(tmp_path):
    """A folder of 16-bit grayscale PNGs trains to the same weights, bit for bit, as the same images
    scaled by 1/257 (rounded) and stored as 8-bit: the scaling is exact and nothing is clipped."""
    rng = np.random.default_rng(0)
    deep = rng.integers(0, 65536, size=(12, 8, 8), dtype=np.uint16)
    deep[0, 0, 0], deep[1, 0, 0], deep[2, 0, 0] = 65535, 257 * 100, 200  # -> 255, 100 (a clip gives 255), 1
    shallow = np.rint(deep / 257.0).astype(np.uint8)
    for folder, images in (("deep", deep), ("shallow", shallow)):
        (tmp_path / folder).mkdir()
        for i, im in enumerate(images):
            Image.fromarray(im).save(tmp_path / folder / f"img{i:02d}.png")
    assert Image.open(tmp_path / "deep" / "img00.png").mode.startswith("I;16")
    loaded = load_dataset(str(tmp_path / "deep"))
    np.testing.assert_array_equal(loaded.images[..., 0], shallow)
    assert loaded.images[0, 0, 0, 0] == 255 and loaded.images[1, 0, 0, 0] == 100 and loaded.images[2, 0, 0, 0] == 1
    runs = {}
    for folder in ("deep", "shallow"):
        runs[folder] = tmp_path / f"run-{folder}"
        assert main(["--quiet", "train", "--data", str(tmp_path / folder), "--steps", "6", "--checkpoint-every", "6",
                     "--batch-size", "4", "--warmup-steps", "1", "--device", "cpu", "--out", str(runs[folder])]) == 0
    weights = [(r / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() for r in runs.values()]
    assert weights[0] == weights[1]
    ids = [json.loads((r / "train_ids.json").read_text())["keys"] for r in runs.values()]
    assert ids[0] == ids[1] == [f"img{i:02d}.png" for i in range(12)]


def test_file_names_that_are_not_utf8_work_end_to_end(tmp_path, capsys):
    """Linux file names are bytes; one that is not UTF-8 (Latin-1 'café.png') reaches the keys as a
    surrogate. Digests, the decode cache, results and the HTML report must all take it."""
    from diffaudit.data.decoded import load_dataset_to_disk
    from diffaudit.data.digest import dataset_digest

    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in (b"caf\xe9.png", b"ok.png"):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / name.decode("utf-8", "surrogateescape"))
    ds = load_dataset(folder)
    assert "caf\udce9.png" in ds.keys
    cached = load_dataset_to_disk(folder, tmp_path / "cache")
    assert dataset_digest(cached) == dataset_digest(ds)
    out = tmp_path / "verify"
    assert main(["verify", "--samples", str(folder), "--data", str(folder), "--rule", "l2", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert {e["train_key"] for e in result["extracted"]} >= {"caf\udce9.png"}
    assert main(["report", str(out), "--out", str(tmp_path / "r.html"), "--quiet"]) == 0
    assert "caf\\udce9.png" in (tmp_path / "r.html").read_text(encoding="utf-8")
