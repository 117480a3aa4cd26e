"""The denoiser returns ε̂ whatever its UNet predicts, and refuses models it cannot read correctly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, UNet2DModel

from diffaudit.core.errors import DiffauditError
from diffaudit.models.denoiser import check_model_input, load_denoiser
from diffaudit.models.scheduler import make_scheduler
from diffaudit.models.unets import build_unet, unet_config
from diffaudit.sampling.generate import generate_images


def _model_dir(root, *, scheduler=None, **unet_overrides):
    cfg = {**unet_config("tiny", image_size=8, in_channels=1), **unet_overrides}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(**cfg) if unet_overrides else build_unet(cfg)
    unet.save_pretrained(root / "unet")
    (scheduler or make_scheduler()).save_pretrained(root / "scheduler")
    return root


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 8, 8, generator=g), torch.tensor([10, 400, 990])


def test_epsilon_models_pass_the_unet_output_through(tmp_path):
    den = load_denoiser(_model_dir(tmp_path))
    x, t = _inputs()
    assert den.prediction_type == "epsilon" and not den.learned_variance
    torch.testing.assert_close(den(x, t), den.unet(x, t).sample)


@pytest.mark.parametrize("kind", ["v_prediction", "sample"])
def test_other_prediction_types_are_converted_to_epsilon(tmp_path, kind):
    sched = DDPMScheduler_with(prediction_type=kind)
    den = load_denoiser(_model_dir(tmp_path, scheduler=sched))
    x, t = _inputs()
    raw = den.unet(x, t).sample.double()
    ab = den.alphas_cumprod[t].view(-1, 1, 1, 1)
    if kind == "v_prediction":  # v = sqrt(ab) eps - sqrt(1 - ab) x0 and x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
        expected = ab.sqrt() * raw + (1 - ab).sqrt() * x.double()
    else:  # the UNet gives x0
        expected = (x.double() - ab.sqrt() * raw) / (1 - ab).sqrt()
    torch.testing.assert_close(den(x, t).double(), expected, rtol=1e-5, atol=1e-5)
    # the conversion is right: from a known (x0, eps), the exact target of each kind maps back to eps
    x0, eps = torch.rand(3, 1, 8, 8).double() * 2 - 1, torch.randn(3, 1, 8, 8).double()
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    target = ab.sqrt() * eps - (1 - ab).sqrt() * x0 if kind == "v_prediction" else x0

    class Exact(torch.nn.Module):  # a UNet that predicts its target exactly
        config = den.unet.config

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, xx, tt, class_labels=None):
            return type("Out", (), {"sample": target.float()})()

    den.unet = Exact()
    den.dtype = torch.float32
    torch.testing.assert_close(den(x_t.float(), t).double(), eps, rtol=1e-4, atol=1e-4)


def DDPMScheduler_with(**kw):
    """The paper's schedule with other settings (from_config would drop keys it recorded as defaults)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
                         clip_sample=True, **kw)


def test_learned_variance_output_gives_its_first_channels(tmp_path):
    den = load_denoiser(_model_dir(tmp_path, scheduler=DDPMScheduler_with(variance_type="learned_range"), out_channels=2))
    x, t = _inputs()
    assert den.learned_variance
    torch.testing.assert_close(den(x, t), den.unet(x, t).sample[:, :1])


def test_models_that_cannot_be_read_are_refused_at_load(tmp_path):
    with pytest.raises(DiffauditError, match="takes 1 channels but gives 2"):  # no learned variance declared
        load_denoiser(_model_dir(tmp_path / "a", out_channels=2))
    with pytest.raises(DiffauditError, match="non-square"):
        load_denoiser(_model_dir(tmp_path / "b", sample_size=[8, 16]))
    with pytest.raises(DiffauditError, match="prediction_type 'flow'"):
        load_denoiser(_model_dir(tmp_path / "c", scheduler=DDPMScheduler_with(prediction_type="flow")))
    ve = _model_dir(tmp_path / "d")
    (ve / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "ScoreSdeVeScheduler", "num_train_timesteps": 2000, "sigma_min": 0.01, "sigma_max": 1348.0}))
    with pytest.raises(DiffauditError, match="ScoreSdeVeScheduler is not a discrete-time"):
        load_denoiser(ve)
    with pytest.raises(DiffauditError, match="zero terminal SNR"):  # ᾱ_T = 0: ε̂ and x̂_0 divide by zero
        load_denoiser(_model_dir(tmp_path / "g", scheduler=DDPMScheduler_with(rescale_betas_zero_snr=True)))
    # dynamic thresholding: a sampler diffaudit does not implement, refused where the model is sampled
    # (generation, and the inpainting target); its membership losses read ᾱ alone and are computed
    thresholded = load_denoiser(_model_dir(tmp_path / "h", scheduler=DDPMScheduler_with(thresholding=True)))
    with pytest.raises(DiffauditError, match="dynamic thresholding"):
        generate_images(thresholded, [1], steps=2, micro_batch=1)
    from diffaudit.models.loss import per_example_loss

    assert np.isfinite(per_example_loss(thresholded, np.zeros((1, 8, 8, 1), np.uint8), timesteps=[10])).all()
    # a DDIM schedule is the same discrete-time schedule: read as is
    ddim = load_denoiser(_model_dir(tmp_path / "e", scheduler=DDIMScheduler.from_config(make_scheduler().config)))
    torch.testing.assert_close(ddim.alphas_cumprod, load_denoiser(_model_dir(tmp_path / "f")).alphas_cumprod)
    assert ddim.schedule.is_default()  # and sampled as the paper's models (DDIM's set_alpha_to_one is True)


def test_the_sampling_schedule_is_read_from_the_models_own_config(tmp_path):
    from diffusers import DDIMScheduler

    from diffaudit.sampling.sources import PixelSource

    config = {k: v for k, v in make_scheduler().config.items() if k != "_use_default_values"}
    sched = DDIMScheduler.from_config({**config, "timestep_spacing": "trailing", "set_alpha_to_one": False,
                                       "clip_sample": False})
    den = load_denoiser(_model_dir(tmp_path / "m", scheduler=sched))
    assert (den.schedule.timestep_spacing, den.schedule.set_alpha_to_one, den.schedule.clip_sample) == ("trailing", False, False)
    # a store records a schedule other than the default, so its pixels are never mixed with the default's
    recorded = PixelSource(den).settings()["schedule"]
    assert recorded["timestep_spacing"] == "trailing" and "thresholding" not in recorded  # as stores recorded it
    assert "schedule" not in PixelSource(load_denoiser(_model_dir(tmp_path / "d"))).settings()


def test_check_model_input_names_what_does_not_fit():
    cfg = unet_config("tiny", image_size=8, in_channels=1, num_classes=3)
    check_model_input(cfg, (8, 8, 1), labels=np.array([0, 2]), what="m")
    with pytest.raises(DiffauditError, match="m takes 8x8 images with 1 channel.*gives 8x16 with 1"):
        check_model_input(cfg, (8, 16, 1), labels=np.array([0]), what="m")
    with pytest.raises(DiffauditError, match="class-conditional, but the data has no class labels"):
        check_model_input(cfg, (8, 8, 1), labels=None, what="m")
    with pytest.raises(DiffauditError, match="knows classes 0..2, but the data has labels 0..7"):
        check_model_input(cfg, (8, 8, 1), labels=np.array([0, 7]), what="m")


def test_a_model_folder_without_its_scheduler_is_said_to_take_the_ddpm_defaults(tmp_path, capsys):
    """A lab that copied only unet/ of a model trained with a cosine schedule got the linear defaults in
    silence: samples and losses of another schedule. The assumption is said, once per model."""
    import shutil

    from diffaudit.core import progress

    run = tmp_path / "run"
    build_unet(unet_config("tiny", image_size=8, in_channels=1)).save_pretrained(run / "unet")
    bare = tmp_path / "bare"
    shutil.copytree(run / "unet", bare)
    capsys.readouterr()
    progress._SAID_ONCE.clear()
    for _ in range(2):
        load_denoiser(run)
    err = capsys.readouterr().err
    assert err.count("warning:") == 1, err
    assert f"--model {run}: no scheduler/scheduler_config.json beside the UNet, so the DDPM defaults" in err
    assert "linear β from 1e-4 to 0.02, T = 1000" in err
    load_denoiser(bare, flag="--shadow")
    assert f"--shadow {bare}: no scheduler_config.json beside the UNet" in capsys.readouterr().err
    make_scheduler().save_pretrained(run / "scheduler")
    load_denoiser(run)
    assert "warning" not in capsys.readouterr().err
