"""The RePaint sampler: schedule, counter-based noise, known region kept exactly, seeds, chunking."""

import math

import pytest
import torch
from diffusers import RePaintScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.models.denoiser import Denoiser
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.unets import build_unet, unet_config
from diffaudit.sampling.inpaint import (
    _mix32, counter_randn, inpaint, inpainting_seeds, model_evaluations, repaint_levels, respaced_timesteps,
)
from diffaudit.sampling.masks import make_mask

AB = alphas_cumprod_of(make_scheduler())



@pytest.fixture(scope="module")
def tiny():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(unet_config("tiny", image_size=8, in_channels=1)).eval()
    return Denoiser(unet=unet, alphas_cumprod=AB)


def _original(n=1, seed=3):
    return counter_randn(torch.tensor(inpainting_seeds(seed, 0, n)), 0, (1, 8, 8)).clamp(-1, 1)


def _oracle(x_star):
    """The ε-prediction of a model whose data distribution is the single image x*."""
    def model(x_t, t, labels=None):
        ab = AB.to(torch.float32)[t][:, None, None, None]
        return (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt()
    return model


# ---------------------------------------------------------------- schedule

@pytest.mark.parametrize("steps,j,r", [(10, 2, 2), (50, 5, 2), (20, 10, 10), (7, 3, 3), (5, 10, 2), (12, 1, 3), (9, 4, 1)])
def test_levels_equal_diffusers_repaint_scheduler(steps, j, r):
    s = RePaintScheduler(num_train_timesteps=1000)
    s.set_timesteps(steps, jump_length=j, jump_n_sample=r)
    assert repaint_levels(steps, jump_length=j, jump_n_sample=r) == [steps] + (s.timesteps // (1000 // steps)).tolist()


@settings(deadline=None, max_examples=50)
@given(steps=st.integers(1, 60), j=st.integers(1, 12), r=st.integers(1, 5))
def test_levels_walk_from_noise_to_clean_one_level_at_a_time(steps, j, r):
    lv = repaint_levels(steps, jump_length=j, jump_n_sample=r)
    assert lv[0] == steps and lv[-1] == 0 and min(lv) == 0 and max(lv) <= steps
    assert all(abs(a - b) == 1 for a, b in zip(lv, lv[1:]))
    n_jumps = len(range(0, steps - j, j))
    assert model_evaluations(steps, jump_length=j, jump_n_sample=r) == steps + n_jumps * (r - 1) * j


def test_respaced_timesteps():
    assert respaced_timesteps(1000, 4) == [0, 333, 666, 999]
    assert respaced_timesteps(1000, 1) == [999]
    assert respaced_timesteps(1000, 1000) == list(range(1000))
    ts = respaced_timesteps(1000, 37)
    assert ts[0] == 0 and ts[-1] == 999 and all(a < b for a, b in zip(ts, ts[1:]))
    for bad in (0, 1001):
        with pytest.raises(DiffauditError, match="--steps"):
            respaced_timesteps(1000, bad)
    with pytest.raises(DiffauditError, match="--jump-length"):
        repaint_levels(10, jump_length=0, jump_n_sample=2)


# ---------------------------------------------------------------- noise

@settings(deadline=None, max_examples=30)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=50))
def test_mix32_is_the_32_bit_hash(values):
    def ref(v):
        v ^= v >> 16
        v = (v * 0x7FEB352D) & 0xFFFFFFFF
        v ^= v >> 15
        v = (v * 0x846CA68B) & 0xFFFFFFFF
        return v ^ (v >> 16)
    assert _mix32(torch.tensor(values, dtype=torch.int64)).tolist() == [ref(v) for v in values]


def test_counter_noise_is_per_row_and_standard_normal():
    keys = torch.tensor(inpainting_seeds(0, 5, 64))
    z = counter_randn(keys, 7, (3, 16, 16))
    assert z.shape == (64, 3, 16, 16) and z.dtype == torch.float32
    assert torch.equal(counter_randn(keys[10:13], 7, (3, 16, 16)), z[10:13])  # a row does not depend on its batch
    assert torch.equal(counter_randn(keys.flip(0), 7, (3, 16, 16)), z.flip(0))
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert abs((z ** 4).mean().item() - 3) < 0.1  # Gaussian kurtosis, not uniform
    other = counter_randn(keys, 8, (3, 16, 16))
    assert abs(torch.corrcoef(torch.stack([z.flatten(), other.flatten()]))[0, 1].item()) < 0.02
    rows = z.flatten(1)
    assert abs(torch.corrcoef(rows[:2])[0, 1].item()) < 0.1


# ---------------------------------------------------------------- sampler

def test_known_region_is_kept_exactly_and_hidden_region_is_new(tiny):
    x0 = _original()
    mask = torch.tensor(make_mask("left", 8, 8))
    out = inpaint(tiny, x0, mask, alphas_cumprod=AB, seeds=inpainting_seeds(0, 0, 6), steps=8, jump_length=2, jump_n_sample=2)
    assert out.shape == (6, 1, 8, 8) and out.dtype == torch.float32
    known = mask.bool().expand_as(out)
    assert torch.equal(out[known], x0.expand_as(out)[known])  # bitwise
    assert out.min() >= -1 and out.max() <= 1
    assert not torch.allclose(out[~known], x0.expand_as(out)[~known], atol=0.05)
    assert not torch.equal(out[0], out[1])  # different seeds, different inpaintings


def test_known_region_is_the_forward_noised_original_at_every_step():
    """RePaint Eq. 8a: after the first step the known pixels fed to the model are sqrt(ᾱ)·x0 + sqrt(1 − ᾱ)·ε'."""
    x0 = _original(2)
    mask = torch.tensor(make_mask("top", 8, 8))
    seen = []

    def spy(x_t, t, labels=None):
        seen.append((x_t.clone(), t.clone()))
        return torch.zeros_like(x_t)

    keys = torch.tensor(inpainting_seeds(1, 0, 2))
    inpaint(spy, x0, mask, alphas_cumprod=AB, seeds=keys, steps=6, jump_length=2, jump_n_sample=1)
    taus = respaced_timesteps(1000, 6)
    x_t, t = seen[1]  # the second call: level 5, after move 1 (noise counter 2·1 + 1)
    assert int(t[0]) == taus[4]
    ab = float(AB[taus[4]])
    expect = math.sqrt(ab) * x0 + math.sqrt(1 - ab) * counter_randn(keys, 3, (1, 8, 8))
    k = mask.bool().expand_as(x_t)
    torch.testing.assert_close(x_t[k], expect[k], atol=1e-6, rtol=0)
    assert seen[0][0].std() > 0.9  # x_T is pure noise


@pytest.mark.parametrize("eta,r", [(1.0, 2), (0.0, 1), (1.0, 3)])
def test_a_model_of_one_image_fills_in_that_image(eta, r):
    """Known answer: with the exact ε of a single-image distribution, every inpainting is that image."""
    x_star = _original(seed=11)
    mask = torch.tensor(make_mask("center", 8, 8))
    start = torch.where(mask.bool(), x_star, -x_star)  # the hidden part of the input is wrong on purpose
    out = inpaint(_oracle(x_star), start, mask, alphas_cumprod=AB, seeds=inpainting_seeds(2, 0, 3), steps=10,
                  jump_length=3, jump_n_sample=r, eta=eta)
    torch.testing.assert_close(out, x_star.expand_as(out), atol=1e-4, rtol=0)


def test_same_seed_same_pixels_whatever_the_chunking(tiny):
    x0 = _original()
    mask = torch.tensor(make_mask("left", 8, 8))
    seeds = inpainting_seeds(5, 3, 10)
    kw = dict(alphas_cumprod=AB, steps=6, jump_length=2, jump_n_sample=2)
    whole = inpaint(tiny, x0, mask, seeds=seeds, **kw)
    again = inpaint(tiny, x0, mask, seeds=seeds, **kw)
    assert torch.equal(whole, again)
    chunked = inpaint(tiny, x0, mask, seeds=seeds, micro_batch=3, **kw)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)  # only the UNet's batch-size-dependent rounding
    alone = torch.cat([inpaint(tiny, x0, mask, seeds=[s], **kw) for s in seeds[:3]])
    torch.testing.assert_close(alone, whole[:3], atol=1e-5, rtol=0)
    other = inpaint(tiny, x0, mask, seeds=inpainting_seeds(6, 3, 10), **kw)
    assert (other - whole).abs().max() > 0.1


def test_chunking_is_bitwise_with_a_per_row_model():
    x0 = _original(4)
    mask = torch.tensor(make_mask("right", 8, 8))
    model = lambda x, t, labels=None: 0.3 * x + 0.001 * t[:, None, None, None].float()  # noqa: E731
    seeds = inpainting_seeds(0, 1, 4)
    a = inpaint(model, x0, mask, alphas_cumprod=AB, seeds=seeds, steps=5, jump_length=2, jump_n_sample=2)
    b = inpaint(model, x0, mask, alphas_cumprod=AB, seeds=seeds, steps=5, jump_length=2, jump_n_sample=2, micro_batch=1)
    assert torch.equal(a, b)


def test_labels_reach_the_model():
    got = []

    def model(x, t, labels):
        got.append(labels.clone())
        return torch.zeros_like(x)

    inpaint(model, _original(), torch.tensor(make_mask("left", 8, 8)), alphas_cumprod=AB, seeds=[1, 2, 3], steps=2,
            jump_length=1, jump_n_sample=1, labels=torch.tensor([7]), micro_batch=2)
    assert [g.tolist() for g in got] == [[7, 7], [7, 7], [7], [7]]


def test_bad_inputs_are_clear_errors():
    x0, mask = _original(), torch.tensor(make_mask("left", 8, 8))
    zero = lambda x, t, labels=None: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(DiffauditError, match="mask of shape"):
        inpaint(zero, x0, torch.ones(4, 4), alphas_cumprod=AB, seeds=[1])
    with pytest.raises(DiffauditError, match="original has 2 rows for 3"):
        inpaint(zero, x0.repeat(2, 1, 1, 1), mask, alphas_cumprod=AB, seeds=[1, 2, 3])
    with pytest.raises(DiffauditError, match="non-negative"):
        inpaint(zero, x0, mask, alphas_cumprod=AB, seeds=[-1])
    with pytest.raises(NonFiniteError):
        inpaint(lambda x, t, labels=None: x * float("nan"), x0, mask, alphas_cumprod=AB, seeds=[1], steps=3)
