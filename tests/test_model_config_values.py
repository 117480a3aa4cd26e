"""Odd values in a model folder's ``unet/config.json`` or ``scheduler/scheduler_config.json`` are one-line
errors naming the folder, the file, the key and the value, before anything is built from them
(``models/config_values.py``); before, they ended in a traceback from deep inside diffusers or torch, an
allocation of terabytes, or a UNet build that never finished."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.models.config_values import MAX_BLOCK_WIDTH, MAX_LAYERS_PER_BLOCK, MAX_SAMPLE_SIZE, MAX_TRAIN_TIMESTEPS, check_unet_values
from diffaudit.models.denoiser import load_denoiser, read_schedule
from diffaudit.models.scheduler import num_train_timesteps
from helpers import make_tiny_model_dir

UNET, SCHED = "unet/config.json", "scheduler/scheduler_config.json"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "run")


def _edited(tiny, tmp_path, file: str, **values):
    """A copy of the tiny model folder with ``values`` set in its ``file``."""
    model = tmp_path / "m"
    shutil.copytree(tiny, model)
    config = json.loads((model / file).read_text())
    config.update(values)
    (model / file).write_text(json.dumps(config))
    return model


def _sample(model, tmp_path) -> int:
    return main(["--quiet", "sample", "--model", str(model), "--out", str(tmp_path / "s"), "--n", "2", "--steps", "2",
                 "--device", "cpu"])


def _one_line(err: str, *needles: str) -> None:
    assert "Traceback" not in err and err.count("\n") == 1 and "error: " in err, err
    for needle in needles:
        assert needle in err, (needle, err)


SIZE = f"sample_size must be a positive integer (or a pair of them) up to {MAX_SAMPLE_SIZE}"
T = f"num_train_timesteps must be a positive integer up to {MAX_TRAIN_TIMESTEPS:,}"

# (file, key, value, what the error says is allowed): the cases of the security review
REVIEWED = [
    (UNET, "sample_size", -8, SIZE),  # ValueError: negative dimensions (sampling/generate.py)
    (UNET, "sample_size", 0, SIZE),  # conv2d RuntimeError
    (UNET, "sample_size", 8.5, SIZE),  # TypeError in Denoiser.image_size
    (UNET, "sample_size", 100000, SIZE),  # the allocator asked for 1.28 TB
    (UNET, "in_channels", "1", "in_channels must be a positive integer"),  # TypeError inside torch's conv
    pytest.param(UNET, "layers_per_block", 100000, f"layers_per_block must be a positive integer up to {MAX_LAYERS_PER_BLOCK}",
                 marks=pytest.mark.timeout(120), id="layers_per_block-100000"),  # built for hours
    (SCHED, "num_train_timesteps", -5, T),  # RuntimeError in torch.linspace
    (SCHED, "num_train_timesteps", 0, T),  # RuntimeError: min() of nothing
    (SCHED, "beta_schedule", "evil", "is not a β schedule diffusers' DDPMScheduler builds"),  # NotImplementedError
    (SCHED, "trained_betas", "x", "trained_betas must be null or a list of num_train_timesteps (1,000) numbers"),
]


@pytest.mark.parametrize("file, key, value, allowed", REVIEWED)
def test_an_odd_config_value_is_one_line_naming_the_folder_file_key_and_value(tiny, tmp_path, capsys, file, key, value,
                                                                             allowed):
    model = _edited(tiny, tmp_path, file, **{key: value})
    assert _sample(model, tmp_path) == 2
    _one_line(capsys.readouterr().err, f"--model {model}: {model / file}: {key}", allowed, json.dumps(value))
    assert not (tmp_path / "s").exists()  # refused before the output folder is made


# values beside the reviewed ones that failed alike (a traceback from diffusers, torch or diffaudit's own int())
FURTHER = [
    (UNET, "sample_size", 7, "sample_size must be a multiple of 2"),  # halved to 4, up to 8: skip connections differ
    (UNET, "out_channels", "x", "out_channels must be a positive integer"),
    (UNET, "num_class_embeds", "x", "num_class_embeds must be null (no classes) or a whole number"),
    (UNET, "block_out_channels", [16, "x"], "block_out_channels must be a list of positive integers"),
    (UNET, "norm_num_groups", 0, "norm_num_groups must be a positive integer"),  # ZeroDivisionError
    (UNET, "attention_head_dim", "x", "attention_head_dim must be null or a positive integer"),
    # widths past any published UNet, refused by value even where the weights file is as large as the config
    (UNET, "block_out_channels", [16, 10 ** 6], f"block_out_channels must be a list of positive integers up to "
                                               f"{MAX_BLOCK_WIDTH:,}"),
    (UNET, "time_embedding_dim", 10 ** 6, f"time_embedding_dim must be null or a positive integer up to {MAX_BLOCK_WIDTH:,}"),
    (UNET, "norm_eps", "x", "norm_eps must be a finite number"),  # failed mid-sampling, inside group_norm
    (SCHED, "beta_end", "x", "beta_end must be a finite number"),
    (SCHED, "beta_start", -0.5, "beta_start and beta_end must give βs in [0, 1]"),  # ᾱ > 1: complex clamp
    (SCHED, "steps_offset", "x", "steps_offset must be a whole number"),
    (SCHED, "clip_sample_range", "x", "clip_sample_range must be a positive number"),
]


@pytest.mark.parametrize("file, key, value, allowed", FURTHER)
def test_other_values_no_model_can_be_built_from_are_one_line_too(tiny, tmp_path, capsys, file, key, value, allowed):
    model = _edited(tiny, tmp_path, file, **{key: value})
    assert _sample(model, tmp_path) == 2
    _one_line(capsys.readouterr().err, f"{model / file}: ", allowed, key)


def test_a_unet_value_diffusers_fails_on_deep_inside_is_one_line_naming_the_folder(tiny, tmp_path, capsys):
    """A value no check names (a time embedding type diffusers has no branch for: UnboundLocalError) is
    still diffusers' refusal in one line, as a wrong block count was."""
    model = _edited(tiny, tmp_path, UNET, time_embedding_type="x")
    assert _sample(model, tmp_path) == 2
    _one_line(capsys.readouterr().err, f"--model {model}: the UNet in {model / 'unet'} cannot be loaded")


def test_a_unet_without_sample_size_scores_but_is_refused_where_sampled(tiny, tmp_path, capsys):
    model = _edited(tiny, tmp_path, UNET, sample_size=None)  # diffusers' default: any size
    den = load_denoiser(model)
    from diffaudit.models.loss import per_example_loss

    assert np.isfinite(per_example_loss(den, np.zeros((1, 8, 8, 1), np.uint8), timesteps=[10])).all()
    assert _sample(model, tmp_path) == 2
    _one_line(capsys.readouterr().err, f"--model {model}", "gives no sample_size")


@pytest.mark.parametrize("damage", [{"num_train_timesteps": -5}, {"beta_schedule": "evil"}])
def test_every_reader_of_the_schedule_refuses_it_alike(tiny, tmp_path, damage):
    """mia, inpaint and audit read T and ᾱ without loading the weights (models/scheduler.py, alike.py)."""
    model = _edited(tiny, tmp_path, SCHED, **damage)
    key = next(iter(damage))
    with pytest.raises(DiffauditError, match=f"scheduler_config.json: {key}"):
        read_schedule(model, "--shadow")
    if key == "num_train_timesteps":
        with pytest.raises(DiffauditError, match=f"{model / SCHED}: num_train_timesteps must be"):
            num_train_timesteps(model)


@pytest.mark.parametrize("file, values, needle", [
    (UNET, {"block_out_channels": "x"}, "block_out_channels"),
    (UNET, {"down_block_types": "os.system"}, "cannot be loaded"),
    (UNET, {"in_channels": -1}, "in_channels"),
    (SCHED, {"prediction_type": "foo"}, "prediction_type 'foo' is not supported"),
])
def test_values_refused_before_stay_one_line(tiny, tmp_path, capsys, file, values, needle):
    model = _edited(tiny, tmp_path, file, **values)
    assert _sample(model, tmp_path) == 2
    _one_line(capsys.readouterr().err, f"--model {model}", needle)


def test_valid_configs_load_and_sample_as_before(tiny, tmp_path):
    """The bounds leave every published model inside them; a pair of equal sides is the square size."""
    check_unet_values({"sample_size": MAX_SAMPLE_SIZE, "layers_per_block": MAX_LAYERS_PER_BLOCK, "in_channels": 3,
                       "down_block_types": ["DownBlock2D"] * 4, "norm_num_groups": 32, "attention_head_dim": None,
                       "num_class_embeds": None, "norm_eps": 1e-6, "freq_shift": 1, "downsample_padding": 0}, "m")
    from diffaudit.sampling.generate import generate_images

    square = _edited(tiny, tmp_path / "pair", UNET, sample_size=[8, 8])
    assert np.array_equal(generate_images(load_denoiser(square), [1, 2], steps=2),
                          generate_images(load_denoiser(tiny), [1, 2], steps=2))
    long = _edited(tiny, tmp_path / "long", SCHED, num_train_timesteps=MAX_TRAIN_TIMESTEPS, beta_start=1e-6, beta_end=2e-5)
    assert load_denoiser(long).num_train_timesteps == num_train_timesteps(long) == MAX_TRAIN_TIMESTEPS


def test_a_config_wider_than_its_weights_is_refused_before_anything_is_allocated(tiny, tmp_path):
    """diffusers builds a UNet (randomly initialised) before it compares it with the weights: block_out_channels
    [8000, 8000] beside a tiny model's 164k weights first took tens of GB. The parameters the config describes are
    counted on the meta device against the tensors the safetensors headers list, and refused by count."""
    import resource

    model = _edited(tiny, tmp_path, UNET, block_out_channels=[2048, 2048])  # 1.0e9 parameters: 4 GB of float32
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DiffauditError, match=r"config.json describes a UNet of [\d,]+ parameters, but its weights hold "
                                             r"[\d,]+: the config and the weights are not of one model"):
        load_denoiser(model)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 1_000_000  # KiB: nothing near 4 GB taken
    assert load_denoiser(tiny).image_size == 8  # a model whose config and weights agree loads as before
