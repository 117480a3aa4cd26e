"""Sampling: the pure DDIM sampler against diffusers' DDIMScheduler, seeds, micro-batch invariance."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffaudit.core.seeds import generation_seed, randn_per_seed
from diffaudit.models.denoiser import Denoiser
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.unets import build_unet, unet_config
from diffaudit.sampling.ddim import sample
from diffaudit.sampling.generate import generate_images
from diffaudit.sampling.schedules import ddim_timesteps


@pytest.fixture(scope="module")
def tiny_denoiser():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(unet_config("tiny", image_size=8, in_channels=1)).eval()
    return Denoiser(unet=unet, alphas_cumprod=alphas_cumprod_of(make_scheduler()))


def test_ddim_timesteps_match_diffusers():
    s = DDIMScheduler.from_config(make_scheduler().config)
    s.set_timesteps(20)
    assert ddim_timesteps(1000, 20) == s.timesteps.tolist()


def test_pure_sampler_equals_diffusers_ddim_step(tiny_denoiser):
    x_T = randn_per_seed([1, 2, 3], (1, 8, 8))
    ours = sample(tiny_denoiser, x_T, alphas_cumprod=tiny_denoiser.alphas_cumprod, timesteps=ddim_timesteps(1000, 10))
    sched = DDIMScheduler.from_config(make_scheduler().config)
    sched.set_timesteps(10)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            eps = tiny_denoiser(x, torch.full((3,), int(t)), None)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_eta_needs_seeds(tiny_denoiser):
    with pytest.raises(ValueError):
        sample(tiny_denoiser, torch.zeros(2, 1, 8, 8), alphas_cumprod=tiny_denoiser.alphas_cumprod, timesteps=[500, 0], eta=1.0)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_images_do_not_depend_on_batching(tiny_denoiser, eta):
    seeds = [generation_seed(7, 0, i) for i in range(10)]
    whole = generate_images(tiny_denoiser, seeds, steps=4, eta=eta, micro_batch=4)
    # The same images requested one by one, or in another order, are bitwise equal.
    alone = np.concatenate([generate_images(tiny_denoiser, [s], steps=4, eta=eta, micro_batch=4) for s in seeds])
    assert np.array_equal(whole, alone)
    rev = generate_images(tiny_denoiser, seeds[::-1], steps=4, eta=eta, micro_batch=4)
    assert np.array_equal(whole, rev[::-1])
    other = generate_images(tiny_denoiser, [generation_seed(8, 0, i) for i in range(10)], steps=4, eta=eta, micro_batch=4)
    assert not np.array_equal(whole, other)
    assert whole.dtype == np.uint8 and whole.shape == (10, 8, 8, 1)


def test_non_finite_model_output_stops_sampling(tiny_denoiser):
    from diffaudit.core.errors import NonFiniteError

    def bad(x, t, labels):
        return torch.full_like(x, float("nan"))

    with pytest.raises(NonFiniteError):
        sample(bad, torch.zeros(2, 1, 8, 8), alphas_cumprod=tiny_denoiser.alphas_cumprod, timesteps=[500, 0])
