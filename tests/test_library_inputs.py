"""diffaudit used as a library, from a researcher's notebook: the public functions refuse what would give a
silently wrong answer (float or channels-first pixels, losses already logged, an all-known mask, fewer
inpaintings than top-k) and take the defaults the commands take (the tile grid of small images)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from diffaudit.attacks.extraction import FilterSettings, extract_unconditional
from diffaudit.attacks.inpainting import InpaintAttackConfig, inpaint_targets, score_target
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import randn_per_seed
from diffaudit.data import from_model_space, load_dataset, to_model_space, to_unit
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.sampling.ddim import sample
from helpers import noisy_copies

AB = alphas_cumprod_of(make_scheduler())


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").images[:4]


def test_pixels_in_another_dtype_or_layout_are_refused(digits):
    """[0, 1] floats became almost all -1 in model space (the inpainting attack then ran on near-black
    images), channels-first arrays were permuted into nonsense, and uint8 given back to from_model_space
    became all 255, each without an error."""
    assert to_model_space(digits).shape == (4, 1, 8, 8) and float(to_model_space(digits).max()) <= 1.0
    for bad, said in ((digits / 255.0, "got float64 of shape (4, 8, 8, 1)"),
                      (digits.transpose(0, 3, 1, 2), "got uint8 of shape (4, 1, 8, 8)"),
                      (digits[0], "got uint8 of shape (8, 8, 1)")):
        for convert in (to_model_space, to_unit):
            with pytest.raises(DiffauditError, match=rf"takes uint8 images of shape \(N, H, W, C\).*{re.escape(said)}"):
                convert(bad)
    np.testing.assert_array_equal(from_model_space(to_model_space(digits)), digits)  # the round trip is exact
    with pytest.raises(DiffauditError, match="from_model_space takes float model-space images"):
        from_model_space(torch.as_tensor(digits).permute(0, 3, 1, 2))


def test_the_filter_takes_the_grid_the_commands_take_on_small_images():
    """FilterSettings' grid was a fixed 4: on 8x8 digits, tiles of 2 x 2 pixels, where `extract` and the
    audit take 2 (default_grid); a notebook found other cliques than the command on the same images."""
    images = load_dataset("digits").images
    gens = np.concatenate([noisy_copies(images[0], 12, 0, 0.04), noisy_copies(images[5], 12, 1, 0.04), images[100:140]])
    ids = [f"s{i}" for i in range(len(gens))]
    found = {}
    for grid in (None, 2, 4):
        result = extract_unconditional(gens, ids, settings=FilterSettings(edge_threshold=0.1, min_clique=10, grid=grid),
                                       device="cpu")
        found[grid] = sorted(g.size for g in result.groups)
    assert found[None] == found[2] == [12, 12] and found[4] != found[2]


def _identity_model(x_t, t, labels=None):
    return torch.zeros_like(x_t)


def test_the_inpainting_attack_refuses_a_mask_with_nothing_to_inpaint_and_a_short_top_k(digits):
    cfg = InpaintAttackConfig(n_inpaint=2, top_k=1, steps=2, jump_length=1, jump_n_sample=1)
    left = np.zeros((8, 8), np.float32)
    left[:, :4] = 1
    out = inpaint_targets(_identity_model, digits[:1], left[..., None], target_indices=[0], config=cfg,
                          alphas_cumprod=AB)  # (H, W, 1), as an image's channel axis, is the same mask
    assert out.shape == (1, 2, 8, 8, 1) and np.array_equal(out[0, :, :, :4], np.repeat(digits[:1, :, :4], 2, 0))
    with pytest.raises(DiffauditError, match="marks every pixel as known"):
        inpaint_targets(_identity_model, digits[:1], np.ones((8, 8)), target_indices=[0], config=cfg, alphas_cumprod=AB)
    with pytest.raises(DiffauditError, match="mask 1 marks no pixel as known"):
        inpaint_targets(_identity_model, digits[:2], np.stack([left, np.zeros((8, 8))]), target_indices=[0, 1],
                        config=cfg, alphas_cumprod=AB)
    with pytest.raises(DiffauditError, match=r"--top-k must lie in \[1, --n-inpaint = 2\]"):
        inpaint_targets(_identity_model, digits[:1], left, target_indices=[0],
                        config=InpaintAttackConfig(n_inpaint=2, top_k=5), alphas_cumprod=AB)
    with pytest.raises(DiffauditError, match="2 inpaintings to rank, fewer than top_k = 3"):
        score_target(_identity_model, _identity_model, digits[0], out[0], target_index=0, key="k", member=True,
                     mask_name="left", shadow_name="s", config=InpaintAttackConfig(n_inpaint=4, top_k=3),
                     alphas_cumprod=AB)


def test_sampling_refuses_a_seed_past_torchs_range_and_ascending_timesteps():
    with pytest.raises(DiffauditError, match=r"a seed must be an integer in \[0, 2\^64\); got 1180591620717411303424"):
        randn_per_seed([2 ** 70], (1, 2, 2))
    x_T = randn_per_seed([0, 1], (1, 4, 4))
    assert sample(_identity_model, x_T, alphas_cumprod=AB, timesteps=[999, 500, 0]).shape == (2, 1, 4, 4)
    for steps in ([0, 500, 999], [500, 500], [1000, 10], []):
        with pytest.raises(DiffauditError, match=r"timesteps must be distinct, descending and in \[0, 999\]"):
            sample(_identity_model, x_T, alphas_cumprod=AB, timesteps=steps)


def test_verification_and_unconditional_results_serialise_to_strict_json():
    """Verification and UnconditionalResult had no to_dict (asdict of a Verification failed on its arrays): a
    notebook had to copy the command's field assembly to keep a result."""
    import json

    from diffaudit.attacks.extraction import verify

    images = load_dataset("digits").images
    gens = np.concatenate([noisy_copies(images[3], 2, 0), images[200:206]])
    result = verify(gens, [f"g{i}" for i in range(len(gens))], images[:50], [f"t{i}" for i in range(50)])
    whole = json.loads(json.dumps(result.to_dict(per_sample=True), allow_nan=False))
    assert whole["unique_extracted"] == result.unique_extracted >= 1 and whole["extracted"][0]["train_key"] == "t3"
    assert len(whole["l2"]) == len(whole["ratio"]) == len(whole["is_extracted"]) == 8
    assert "l2" not in result.to_dict()  # the per-sample arrays only when asked
    found = extract_unconditional(np.concatenate([noisy_copies(images[1], 12, 0), images[100:140]]),
                                  [f"s{i}" for i in range(52)], settings=FilterSettings(min_clique=10), device="cpu")
    groups = json.loads(json.dumps(found.to_dict(), allow_nan=False))["groups"]
    assert [g["size"] for g in groups] == [12]


def test_the_denoiser_refuses_another_layout_or_float_timesteps(tmp_path):
    """Channels-last x_t gave a torch error from inside the UNet about channels, and float timesteps were
    taken: the layout and dtypes are now checked (the values are not, which would wait for the device)."""
    from diffaudit.models.denoiser import load_denoiser
    from helpers import make_tiny_model_dir

    den = load_denoiser(make_tiny_model_dir(tmp_path / "m"))
    x = torch.zeros(2, 1, 8, 8)
    t = torch.tensor([10, 20])
    assert den(x, t).shape == (2, 1, 8, 8) and den(x, torch.tensor(5)).shape == (2, 1, 8, 8)
    with pytest.raises(DiffauditError, match=r"float x_t of shape \(B, 1, H, W\).*got float32 of shape \(2, 8, 8, 1\)"):
        den(x.permute(0, 2, 3, 1), t)
    with pytest.raises(DiffauditError, match=r"float x_t .* got uint8"):
        den(x.to(torch.uint8), t)
    with pytest.raises(DiffauditError, match=r"integer timesteps t of shape \(2,\) or \(\); got float32 of shape \(2,\)"):
        den(x, t.float())
