"""Hostile and damaged inputs that used to end in a traceback or drive the terminal are clear errors:
JSON and TOML nested thousands deep, control characters in names printed on the terminal, damaged or
incomplete Stable Diffusion folders, absurd `train --repeat` counts, and keys that read as matplotlib
mathtext in the inpainting grids."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import read_json
from helpers import make_tiny_model_dir

DEEP = "[" * 200_000 + "]" * 200_000


def run(*argv) -> int:
    return main(["--quiet", *map(str, argv)])


def _one_line_error(err: str, *needles: str) -> None:
    assert "Traceback" not in err and err.count("\n") == 1 and "error: " in err, err
    for needle in needles:
        assert needle in err, (needle, err)


# ------------------------------------------------------------------ integers past Python's digit limit

def test_an_integer_of_thousands_of_digits_is_a_clear_error(tmp_path, capsys):
    """An integer of 5,001 digits in a result file, a model's config or an audit's TOML ended in Python's
    "Exceeds the limit (4300 digits)" ValueError traceback, in report, compare, sample and audit."""
    big = "1" + "0" * 5000
    model = make_tiny_model_dir(tmp_path / "m")
    config = model / "unet" / "config.json"
    config.write_text(config.read_text().replace('"sample_size": 8', f'"sample_size": {big}', 1))
    assert big in config.read_text()
    assert run("sample", "--model", model, "--n", "2", "--out", tmp_path / "s", "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, "config.json cannot be read as JSON", "more than 4,300 digits")

    result = tmp_path / "r"
    result.mkdir()
    (result / "result.json").write_text('{"command": "verify", "n_samples": ' + big + "}")
    assert run("report", result) == 2
    _one_line_error(capsys.readouterr().err, "result.json cannot be read as JSON", "was it edited?")
    assert main(["compare", str(result), str(result)]) == 2
    _one_line_error(capsys.readouterr().err, "more than 4,300 digits")

    toml = tmp_path / "big.toml"
    toml.write_text(f"steps = {big}\n")
    assert run("audit", "--config", toml, "--out", tmp_path / "a") == 2
    _one_line_error(capsys.readouterr().err, f"--config {toml} cannot be read as TOML", "more than 4,300 digits")
    assert not (tmp_path / "a").exists() and not (tmp_path / "s").exists()


# ------------------------------------------------------------------ JSON and TOML nested too deeply

def test_deeply_nested_json_and_toml_are_clear_errors(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(DiffauditError, match="deep.json is nested too deeply"):
        read_json(deep)

    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=images, prompts=np.array(["a", "a", "b", "b"]))
    np.savez(tmp_path / "d.npz", images=images)
    # extract --calibrate and verify --train-map read through read_json
    assert run("extract", "--samples", tmp_path / "s.npz", "--calibrate", deep, "--out", tmp_path / "e",
               "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, str(deep), "nested too deeply")
    assert run("verify", "--samples", tmp_path / "s.npz", "--data", tmp_path / "d.npz", "--train-map", deep,
               "--out", tmp_path / "v", "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, str(deep), "nested too deeply")
    assert not (tmp_path / "e").exists() and not (tmp_path / "v").exists()

    # audit --config: TOML arrays nested thousands deep (and a file that is not UTF-8)
    toml = tmp_path / "deep.toml"
    toml.write_text("steps = " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert run("audit", "--config", toml, "--out", tmp_path / "a") == 2
    _one_line_error(capsys.readouterr().err, f"--config {toml}", "nested too deeply", "TOML")
    toml.write_bytes(b"steps = \"\xff\"\n")
    assert run("audit", "--config", toml, "--out", tmp_path / "a") == 2
    _one_line_error(capsys.readouterr().err, f"--config {toml}", "not valid TOML")
    assert not (tmp_path / "a").exists()

    # train --repeat (a JSON object, else lines): nested too deeply is not read as lines
    assert run("train", "--data", "digits", "--subset", "8", "--repeat", deep, "--steps", "1",
               "--out", tmp_path / "t", "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, f"--repeat {deep}", "nested too deeply")

    # a pixel model's config.json or scheduler_config.json
    from diffaudit.models.denoiser import load_denoiser, read_unet_config

    model = make_tiny_model_dir(tmp_path / "m")
    (model / "scheduler" / "scheduler_config.json").write_text(DEEP)
    with pytest.raises(DiffauditError, match="scheduler_config.json is nested too deeply"):
        load_denoiser(model)
    (model / "unet" / "config.json").write_text("{\"a\": " + DEEP + "}")
    with pytest.raises(DiffauditError, match=r"--shadow .*config.json is nested too deeply"):
        read_unet_config(model, "--shadow")
    assert run("sample", "--model", model, "--n", "2", "--out", tmp_path / "s", "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, "--model", "config.json is nested too deeply")


# ------------------------------------------------------------------ control characters from data

HOSTILE = "x\x1b[2K\x1b[1A\x1b]52;c;ZWNobyBwd25lZA==\x07\x1b[31mFAKE OK\x1b[0m\x9b2J"


def test_names_from_data_are_printed_with_their_control_characters_escaped(tmp_path, capsys, monkeypatch):
    from diffaudit.core.progress import printable, stage_line

    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / f"{HOSTILE}.png").write_bytes(b"not an image")
    assert run("dedup", "--data", folder, "--embedder", "pixel", "--out", tmp_path / "d", "--device", "cpu") == 2
    err = capsys.readouterr().err
    _one_line_error(err, "x\\x1b[2K\\x1b[1A\\x1b]52;c;ZWNobyBwd25lZA==\\x07\\x1b[31mFAKE OK\\x1b[0m\\x9b2J.png")
    assert not any(c in err for c in "\x1b\x07\x9b")  # nothing left that a terminal would obey

    # stage lines (they name runs, stores and files) are escaped alike; newlines stay newlines
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    stage_line(f"sample: 3 images -> {HOSTILE}\nnext")
    err = capsys.readouterr().err
    assert err == f"sample: 3 images -> {printable(HOSTILE)}\nnext\n" and "\x1b" not in err
    # a byte of a name that is not UTF-8 (a lone surrogate) as its escape: a strict stream or a font refuses it
    assert printable("a\tb\rc\x00d\x7fe\nf é \udcff") == "a\\x09b\\x0dc\\x00d\\x7fe\nf é \\xff"
    # a bidirectional override reorders what the terminal shows ("ok<RLO>gnp.exe" reads as "okexe.png"): escaped
    assert printable("ok\u202egnp.exe \u2066x\u2069 \u200f") == "ok\\u202egnp.exe \\u2066x\\u2069 \\u200f"


# ------------------------------------------------------------------ damaged Stable Diffusion folders

@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    from diffaudit.models.sd_configs import build_stable_diffusion

    root = tmp_path_factory.mktemp("sd") / "pipe"
    build_stable_diffusion(tiny=True, size=32).save_pretrained(root, safe_serialization=True)
    return root


class _Planted:
    """A pickle that would leave a file behind if it were ever unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickled(folder, weights, pickled, marker):
    """``folder``'s safetensors ``weights`` replaced by the pickle ``pickled``, which would run code."""
    from safetensors.torch import load_file

    tensors = load_file(folder / weights)
    (folder / weights).unlink()
    torch.save({**tensors, "planted": _Planted(marker)}, folder / pickled)


@pytest.mark.parametrize("damage,component,message", [
    ("no tokenizer", "tokenizer", "is missing"),
    ("empty vae", "vae", "is empty"),
    ("pickled text encoder", "text_encoder", "only pickled weights"),
    ("pickled unet", "unet", "only pickled weights"),
    ("cut vae weights", "vae", "damaged or cut safetensors"),
    ("deep unet config", "unet", "nested too deeply"),
    ("no unet weights", "unet", "cannot be loaded"),  # without diffusers' own line before ours
])
def test_damaged_stable_diffusion_folders_are_refused_before_any_output(sd_dir, tmp_path, capsys, caplog, damage,
                                                                         component, message):
    """Each damage is one line of error, and the libraries log nothing of it beside (caplog: their loggers
    write to the stream they found at import, which capsys does not see)."""
    from diffaudit.models.latent_loss import load_sd_pipeline

    pipe = tmp_path / "pipe"
    shutil.copytree(sd_dir, pipe)
    marker = tmp_path / "unpickled"
    if damage == "no tokenizer":
        shutil.rmtree(pipe / "tokenizer")
    elif damage == "empty vae":
        shutil.rmtree(pipe / "vae")
        (pipe / "vae").mkdir()
    elif damage == "pickled text encoder":
        _pickled(pipe / "text_encoder", "model.safetensors", "pytorch_model.bin", marker)
    elif damage == "pickled unet":
        _pickled(pipe / "unet", "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", marker)
    elif damage == "cut vae weights":
        weights = pipe / "vae" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "deep unet config":
        (pipe / "unet" / "config.json").write_text(DEEP)
    elif damage == "no unet weights":
        (pipe / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2\n")
    out = tmp_path / "s"
    assert run("sample", "--model", pipe, "--prompts", prompts, "--per-prompt", "1", "--steps", "2", "--out", out,
               "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, f"--model {pipe}", f"the {component}", message)
    assert not [r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("diffusers", "transformers")]
    assert not out.exists()  # refused before the store was made
    with pytest.raises(DiffauditError, match=f"the {component}"):
        load_sd_pipeline(pipe)  # the membership losses' loader too
    assert not marker.exists()  # the pickles were never loaded


def test_a_whole_stable_diffusion_folder_still_loads_and_a_stripped_safety_checker_is_no_component(sd_dir, tmp_path):
    from diffaudit.models.latent_loss import load_sd_pipeline, sd_components

    assert set(sd_components(sd_dir)) == {"scheduler", "text_encoder", "tokenizer", "unet", "vae"}
    pipe = tmp_path / "pipe"
    shutil.copytree(sd_dir, pipe)
    index = json.loads((pipe / "model_index.json").read_text())
    index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]  # listed, not shipped, never loaded
    (pipe / "model_index.json").write_text(json.dumps(index))
    loaded = load_sd_pipeline(pipe)
    assert loaded.tokenizer.model_max_length == 77 and loaded.safety_checker is None


def test_a_damaged_pipeline_given_to_mia_is_named_by_the_flag_that_gave_it(sd_dir, tmp_path, capsys):
    """`mia --target PIPE` whose vae/ is gone said "--model PIPE: ...", a flag mia does not have."""
    pipe = tmp_path / "pipe"
    shutil.copytree(sd_dir, pipe)
    shutil.rmtree(pipe / "vae")
    data = tmp_path / "cap.npz"
    rng = np.random.default_rng(0)
    np.savez(data, images=rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8), captions=np.array(["a", "b", "c", "d"]))
    (pipe / "train_ids.json").write_text(json.dumps({"keys": ["npz:0", "npz:1"]}))
    assert main(["mia", "--target", str(pipe), "--attack", "loss", "--data", str(data),
                 "--out", str(tmp_path / "m"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--target {pipe}: " in err and "--model" not in err, err


# ------------------------------------------------------------------ train --repeat counts

def test_absurd_repeat_counts_are_refused_before_any_memory_is_taken(tmp_path, capsys):
    from diffaudit.models.training import MAX_STREAM, expand_repeats

    repeat = tmp_path / "repeat.json"
    repeat.write_text(json.dumps({"digits:0": 100_000_000_000}))
    out = tmp_path / "t"
    assert run("train", "--data", "digits", "--subset", "8", "--repeat", repeat, "--steps", "1", "--out", out,
               "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, str(repeat), "'digits:0'", "100,000,000,000", f"{MAX_STREAM:,}")
    assert not out.exists()
    repeat.write_text("digits:0 100000000000\n")  # the line format alike
    assert run("train", "--data", "digits", "--subset", "8", "--repeat", repeat, "--steps", "1", "--out", out,
               "--device", "cpu") == 2
    _one_line_error(capsys.readouterr().err, f"{repeat}:1", "100,000,000,000")

    # each count allowed, together too many: refused by the stream's size, before it is built
    idx = np.arange(1000)
    with pytest.raises(DiffauditError, match="training stream of 200,000,000 entries"):
        expand_repeats(idx, {i: 200_000 for i in range(1000)})
    # within the bound: the stream as before (each index repeated in place, in order)
    assert expand_repeats(np.array([3, 5, 7]), {5: 3}).tolist() == [3, 5, 5, 5, 7]
    assert expand_repeats(np.array([3, 5, 7]), None).tolist() == [3, 5, 7]


# ------------------------------------------------------------------ keys drawn in the inpainting grids

def test_inpainting_grid_draws_any_key_as_text(tmp_path):
    """A key is drawn as it reads: not as mathtext (an unknown macro failed the target on every re-run),
    not as LaTeX, and a name that is not UTF-8 or holds control characters is drawn with escapes."""
    from PIL import Image

    from diffaudit.attacks.inpainting.figures import save_grid

    original = np.random.default_rng(0).integers(0, 256, (8, 8, 1), dtype=np.uint8)
    mask = np.zeros((8, 8))
    mask[:, 4:] = 1
    kept = np.stack([original] * 2)
    for n, key in enumerate(["$\\undefinedmacro$.png", "$x^2$ and $", "caf\udcff.png", "\\input{/etc/passwd}", "a\x1b[2Kb"]):
        path = save_grid(tmp_path / f"{n}.png", original, mask, kept, [0.1, 0.2], title=f"{key} (member)")
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 0, key


def test_inpainting_grid_title_is_literal_text(monkeypatch):
    """The title is drawn with mathtext and LaTeX off, whatever matplotlib's rc says."""
    import matplotlib
    from matplotlib.figure import Figure

    from diffaudit.attacks.inpainting.figures import grid_png

    seen = []
    real = Figure.suptitle
    monkeypatch.setattr(Figure, "suptitle", lambda self, t, **kw: seen.append(real(self, t, **kw)) or seen[-1])
    image = np.zeros((8, 8, 1), dtype=np.uint8)
    with matplotlib.rc_context({"text.usetex": True}):
        grid_png(image, np.ones((8, 8)), image[None], [0.0], title="$\\alpha$ key")
    (title,) = seen
    assert title.get_text() == "$\\alpha$ key" and title.get_usetex() is False and title.get_parse_math() is False


def test_the_human_result_line_escapes_control_characters(capsys):
    """The line a command prints on stdout holds names from data (a prompt, a path): escaped like errors."""
    import argparse

    from diffaudit.cli.common import emit

    emit(argparse.Namespace(json=False, quiet=False), {}, "top: 'a\x1b]52;c;AAAA\x07' -> out")
    assert capsys.readouterr().out == "top: 'a\\x1b]52;c;AAAA\\x07' -> out\n"


@pytest.mark.parametrize("make, needle", [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is a folder without prompts.txt: give that file, or the output folder of the command"),
    (lambda p: p.write_bytes("café\n".encode("latin-1")), "is not UTF-8 text (byte 3); save it as UTF-8"),
])
def test_a_prompt_file_that_cannot_be_read_is_one_line_before_the_model_loads(tmp_path, capsys, make, needle):
    """A missing prompt file, a folder, a Latin-1 file: one line naming --prompts and the file, also as JSON,
    and nothing written (the model, which does not exist either, is never opened)."""
    prompts = tmp_path / "prompts.txt"
    make(prompts)
    assert run("sample", "--model", tmp_path / "no-model", "--prompts", prompts, "--out", tmp_path / "g") == 2
    _one_line_error(capsys.readouterr().err, f"--prompts {prompts} {needle}")
    assert main(["--json", "sample", "--model", str(tmp_path / "no-model"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "g")]) == 2
    assert needle in json.loads(capsys.readouterr().out)["error"]
    assert not (tmp_path / "g").exists()
