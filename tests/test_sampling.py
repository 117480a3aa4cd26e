"""Sampling: the pure DDIM sampler against diffusers' DDIMScheduler, seeds, micro-batch invariance."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffaudit.core.seeds import generation_seed, randn_per_seed
from diffaudit.models.denoiser import Denoiser
from diffaudit.models.scheduler import SamplingSchedule, alphas_cumprod_of, make_scheduler
from diffaudit.models.unets import build_unet, unet_config
from diffaudit.sampling.ddim import sample
from diffaudit.sampling.generate import generate_images
from diffaudit.sampling.schedules import ddim_previous, ddim_timesteps


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


def _diffusers_ddim(model, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """The stock DDIMPipeline loop: DDIMScheduler.step from x_T with ``model``, clipped to [-1, 1]."""
    sched = DDIMScheduler.from_config(make_scheduler().config)
    sched.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            eps = model(x, torch.full((x.shape[0],), int(t)), None)
            x = sched.step(eps, t, x, eta=0.0).prev_sample
    return x.clamp(-1, 1)


def test_pure_sampler_equals_diffusers_ddim_step_exactly():
    """An elementwise model gives the same ε̂ on every CPU, so the two update rules meet to float32 rounding."""

    def model(x, t, labels):
        return torch.tanh(0.7 * x) + t.float().view(-1, 1, 1, 1) / 2000

    x_T = randn_per_seed([1, 2, 3], (1, 8, 8))
    ours = sample(model, x_T, alphas_cumprod=alphas_cumprod_of(make_scheduler()), timesteps=ddim_timesteps(1000, 10))
    torch.testing.assert_close(ours, _diffusers_ddim(model, x_T, 10), atol=1e-5, rtol=1e-5)


def test_pure_sampler_follows_diffusers_ddim_with_a_unet(tiny_denoiser):
    """The UNet's convolutions sum in a CPU-dependent order (ε̂ differs in its last bits between machines) and
    x̂_0 = (x_t − sqrt(1 − ᾱ_t)·ε̂)/sqrt(ᾱ_t) multiplies that by up to 1/sqrt(ᾱ_901) ≈ 60 at the first step:
    ours and diffusers' meet to ~1e-4 over 10 steps (a wrong update rule is 1e-2 or more away)."""
    x_T = randn_per_seed([1, 2, 3], (1, 8, 8))
    ours = sample(tiny_denoiser, x_T, alphas_cumprod=tiny_denoiser.alphas_cumprod, timesteps=ddim_timesteps(1000, 10))
    torch.testing.assert_close(ours, _diffusers_ddim(tiny_denoiser, x_T, 10), atol=3e-4, rtol=0)


def _config() -> dict:
    """The paper's scheduler config as a saved file holds it (without diffusers' note of which keys took
    their defaults, which from_config would otherwise reset whatever they are changed to)."""
    return {k: v for k, v in make_scheduler().config.items() if k != "_use_default_values"}


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 3, 7, 20, 1000])
def test_every_timestep_spacing_matches_diffusers(spacing, steps):
    for offset in ([0, 1] if spacing == "leading" and steps < 1000 else [0]):
        s = DDIMScheduler.from_config({**_config(), "timestep_spacing": spacing, "steps_offset": offset})
        s.set_timesteps(steps)
        assert ddim_timesteps(1000, steps, spacing=spacing, offset=offset) == s.timesteps.tolist()


# Scheduler configs that change how a model is sampled: the pixel sampler follows each as DDIMPipeline does
# (before, it always sampled with the defaults: up to 2.0 apart in [-1, 1] for a trailing config).
CONFIGS = [{}, {"clip_sample": False}, {"clip_sample_range": 0.5}, {"steps_offset": 1, "set_alpha_to_one": False},
           {"timestep_spacing": "trailing"}, {"timestep_spacing": "linspace"}]


@pytest.mark.parametrize("change", CONFIGS)
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_sampler_follows_the_models_scheduler_config_as_diffusers_does(tiny_denoiser, change, eta):
    config = {**_config(), **change}
    schedule = SamplingSchedule.from_config(config)
    steps, seeds = 3, [1, 2, 3]
    x_T = randn_per_seed(seeds, (1, 8, 8))
    ts = ddim_timesteps(1000, steps, spacing=schedule.timestep_spacing, offset=schedule.steps_offset)
    final = 1.0 if schedule.set_alpha_to_one else float(tiny_denoiser.alphas_cumprod[0])
    noise = torch.stack([torch.stack([torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(100 * k + i))
                                      for i in range(3)]) for k in range(steps)])
    sched = DDIMScheduler.from_config(config)
    sched.set_timesteps(steps)
    x = x_T.clone()
    with torch.no_grad():
        for k, t in enumerate(sched.timesteps):
            eps = tiny_denoiser(x, torch.full((3,), int(t)), None)
            x = sched.step(eps, t, x, eta=eta, variance_noise=noise[k]).prev_sample

    import diffaudit.sampling.ddim as ddim

    with pytest.MonkeyPatch.context() as mp:  # the same per-step noise as diffusers was given
        mp.setattr(ddim, "counter_randn", lambda keys, k, shape: noise[k])
        ours = sample(tiny_denoiser, x_T, alphas_cumprod=tiny_denoiser.alphas_cumprod, timesteps=ts, eta=eta,
                      noise_seeds=seeds, clip_sample=schedule.clip_sample, clip_range=schedule.clip_sample_range,
                      prev_timesteps=ddim_previous(1000, ts), final_alpha=final)
    # UNet rounding differs between CPUs (see above); a config not followed is 6e-3 (the final ᾱ) to 2.0 away
    torch.testing.assert_close(ours, x.clamp(-1, 1), atol=1e-4, rtol=0)


def test_generate_images_samples_as_the_models_schedule_says(tiny_denoiser):
    seeds = [generation_seed(1, 0, i) for i in range(4)]
    default = generate_images(tiny_denoiser, seeds, steps=3, micro_batch=4)
    trailing = Denoiser(unet=tiny_denoiser.unet, alphas_cumprod=tiny_denoiser.alphas_cumprod,
                        schedule=SamplingSchedule(timestep_spacing="trailing"))
    assert not np.array_equal(generate_images(trailing, seeds, steps=3, micro_batch=4), default)


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
