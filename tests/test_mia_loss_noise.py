"""The loss noise ε is per (example, draw), identical in every model, whatever the batch (issue 4),
and the loss cache reuses arrays with more draws than asked for."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffaudit.attacks.membership.loss_cache import cached_model_losses
from diffaudit.data.digest import dataset_digest
from diffaudit.models.digest import model_digest
from diffaudit.data import load_dataset
from diffaudit.models.loss import per_example_loss
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.unets import build_unet, unet_config


class Recorder:
    """A stand-in ε-predictor that returns a constant and records every x_t it sees, per example."""

    def __init__(self, value: float):
        self.value = value
        self.alphas_cumprod = alphas_cumprod_of(make_scheduler())
        self.num_train_timesteps = int(self.alphas_cumprod.shape[0])
        self.num_classes = None
        self.device = torch.device("cpu")
        self.seen: list[torch.Tensor] = []

    def __call__(self, x_t, t, labels=None):
        self.seen.append(x_t.clone())
        return torch.full_like(x_t, self.value)


@pytest.fixture(scope="module")
def images():
    return load_dataset("digits", subset=12).images


def test_noise_identical_across_models_and_batches(images):
    a, b = Recorder(0.0), Recorder(0.7)
    la = per_example_loss(a, images, timesteps=[100], n_draws=2, batch_size=5, noise_seed=3)
    per_example_loss(b, images, timesteps=[100], n_draws=2, batch_size=12, noise_seed=3)  # records model b's inputs
    assert la.shape == (12, 1, 2)
    # zero predictor: L = mean(ε²); constant c: L = mean((ε − c)²) = mean(ε²) − 2c·mean(ε) + c²
    eps_sq = la[:, 0, :]
    assert np.all(eps_sq > 0.2) and np.all(eps_sq < 3.0)
    # model a saw batches of 5, 5, 2 (draw 0, then draw 1, per batch); model b one batch of 12
    torch.testing.assert_close(torch.cat([a.seen[0], a.seen[2], a.seen[4]]), b.seen[0])  # same x_t in both models
    torch.testing.assert_close(torch.cat([a.seen[1], a.seen[3], a.seen[5]]), b.seen[1])
    assert not torch.allclose(b.seen[0], b.seen[1])  # two draws differ
    # the same noise whatever the order: examples reversed, indices reversed
    c = Recorder(0.0)
    rev = per_example_loss(c, np.ascontiguousarray(images[::-1]), timesteps=[100], n_draws=2, noise_seed=3, indices=np.arange(12)[::-1].copy())
    np.testing.assert_allclose(rev[::-1], la)
    # another seed, other noise
    d = Recorder(0.0)
    other = per_example_loss(d, images, timesteps=[100], n_draws=2, noise_seed=4)
    assert not np.allclose(other, la)


def test_losses_report_progress_off_a_terminal_and_keep_their_values(images, monkeypatch, capsys):
    """The longest stage of a membership audit shows it is alive in a log (timed plain lines); the
    progress bar changes no value."""
    plain = per_example_loss(Recorder(0.3), images, timesteps=[100], n_draws=2, batch_size=5, noise_seed=3)
    monkeypatch.delenv("DIFFAUDIT_QUIET", raising=False)
    monkeypatch.setenv("DIFFAUDIT_PROGRESS_INTERVAL", "1e-9")
    shown = per_example_loss(Recorder(0.3), images, timesteps=[100], n_draws=2, batch_size=5, noise_seed=3,
                             progress="mia: losses of model-00")
    np.testing.assert_array_equal(shown, plain)
    assert "mia: losses of model-00: 12/12 (100%)" in capsys.readouterr().err


def test_flip_query_reuses_the_draws_noise(images):
    r = Recorder(0.0)
    loss = per_example_loss(r, images, timesteps=[50, 300], n_draws=2, flips=True, noise_seed=0)
    assert loss.shape == (12, 2, 4)  # query q = draw * 2 + flip
    # with a zero predictor the loss is mean(ε²): the flipped query sees the same ε
    np.testing.assert_allclose(loss[:, :, 0], loss[:, :, 1])
    np.testing.assert_allclose(loss[:, :, 2], loss[:, :, 3])
    np.testing.assert_allclose(loss[:, 0], loss[:, 1])  # and so does every timestep
    assert not np.allclose(loss[:, :, 0], loss[:, :, 2])


def _run_dir(path, seed: int):
    cfg = unet_config("tiny", image_size=8, in_channels=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = build_unet(cfg)
    unet.save_pretrained(path / "unet", safe_serialization=True)
    make_scheduler().save_pretrained(path / "scheduler")
    return path


def test_cache_reuses_more_draws_and_separates_models(tmp_path, monkeypatch):
    ds = load_dataset("digits", subset=12)
    m0, m1 = _run_dir(tmp_path / "m0", 0), _run_dir(tmp_path / "m1", 1)
    assert model_digest(m0) != model_digest(m1)
    kw = dict(n_draws=3, flips=False, noise_seed=0, cache_dir=tmp_path / "cache")
    full = cached_model_losses(m0, ds, timesteps=[100, 200], name="model-00", **kw)
    other = cached_model_losses(m1, ds, timesteps=[100], name="model-01", **kw)
    assert full.shape == (12, 2, 3) and other.shape == (12, 1, 3)
    assert not np.allclose(full[:, :1], other)  # a different model, different losses

    def no_forward(*a, **k):
        raise AssertionError("should be cached")

    monkeypatch.setattr("diffaudit.attacks.membership.loss_cache.per_example_loss", no_forward)
    fewer = cached_model_losses(m0, ds, timesteps=[200], name="model-00", **dict(kw, n_draws=2))
    np.testing.assert_array_equal(fewer[:, 0], full[:, 1, :2])
    assert len(dataset_digest(ds)) == 16
    with pytest.raises(AssertionError, match="cached"):  # a new timestep has to be computed
        cached_model_losses(m0, ds, timesteps=[300], name="model-00", **kw)
    # today's noise (version 1) keeps the caches' names; another version is never served them
    folders = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert folders == sorted([f"model-00-{model_digest(m0)}-{dataset_digest(ds)}", f"model-01-{model_digest(m1)}-{dataset_digest(ds)}"])
    monkeypatch.setattr("diffaudit.attacks.membership.loss_cache.NOISE_SCHEME", 2)
    with pytest.raises(AssertionError, match="cached"):
        cached_model_losses(m0, ds, timesteps=[200], name="model-00", **kw)


def test_loss_refuses_images_the_model_was_not_built_for(tmp_path):
    from diffaudit.core.errors import DiffauditError
    from diffaudit.models.denoiser import load_denoiser

    den = load_denoiser(_run_dir(tmp_path / "m", 0))
    digits = load_dataset("digits", subset=4)
    assert per_example_loss(den, digits.images).shape == (4, 1, 1)
    bigger = load_dataset("digits", subset=4, image_size=16)  # a convolutional UNet would run on these
    with pytest.raises(DiffauditError, match="takes 8x8 images with 1 channel.*gives 16x16 with 1"):
        per_example_loss(den, bigger.images)
    with pytest.raises(DiffauditError, match="gives 8x8 with 3"):
        per_example_loss(den, np.repeat(digits.images, 3, axis=-1))
    with pytest.raises(DiffauditError, match="batch_size must be at least 1"):
        per_example_loss(den, digits.images, batch_size=0)
