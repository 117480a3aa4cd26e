"""Per-example loss of a Stable Diffusion pipeline in latent space, with a caption per image."""

import numpy as np
import pytest

from diffaudit.attacks.membership.loss_cache import cached_model_losses
from diffaudit.core.errors import DiffauditError
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.latent_loss import load_sd_pipeline, per_example_latent_loss
from diffaudit.models.sd_configs import build_stable_diffusion


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    build_stable_diffusion(tiny=True, size=32).save_pretrained(root, safe_serialization=True)
    return root


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_latent_loss_shape_determinism_and_caption_dependence(sd_dir):
    pipe = load_sd_pipeline(sd_dir)
    x = images(5)
    caps = ["a cat", "a dog", "w1", "w2 w3", "a ship"]
    a = per_example_latent_loss(pipe, x, caps, timesteps=[100, 500], n_draws=2, flips=True, batch_size=2)
    assert a.shape == (5, 2, 4) and np.isfinite(a).all() and (a > 0).all()
    b = per_example_latent_loss(pipe, x[::-1], caps[::-1], timesteps=[100, 500], n_draws=2, flips=True,
                                batch_size=3, indices=[4, 3, 2, 1, 0])
    np.testing.assert_allclose(a, b[::-1], rtol=1e-4, atol=1e-6)  # same ε per (example, draw) whatever the batch
    c = per_example_latent_loss(pipe, x, ["zzz"] * 5, timesteps=[100, 500], n_draws=2, flips=True, batch_size=2)
    assert not np.allclose(a, c)  # the caption conditions the model
    with pytest.raises(DiffauditError, match="caption"):
        per_example_latent_loss(pipe, x, caps[:2])
    with pytest.raises(DiffauditError, match="32x32"):
        per_example_latent_loss(pipe, images(2)[:, :16, :16], caps[:2])


def test_mia_loss_cache_routes_pipelines_to_the_latent_loss(sd_dir, tmp_path):
    ds = ImageDataset(images(4, 1), [f"k{i}" for i in range(4)], captions=["a", "b", "c", "d"], source="test")
    losses = cached_model_losses(sd_dir, ds, timesteps=[100], n_draws=1, flips=False, noise_seed=0, cache_dir=tmp_path)
    assert losses.shape == (4, 1, 1) and np.isfinite(losses).all()
    no_caps = ImageDataset(ds.images, ds.keys, source="test")
    with pytest.raises(DiffauditError, match="caption"):
        cached_model_losses(sd_dir, no_caps, timesteps=[200], n_draws=1, flips=False, noise_seed=0, cache_dir=tmp_path)


def test_the_loss_target_is_what_the_scheduler_says_the_unet_predicts(sd_dir):
    import torch

    from diffaudit.models.latent_loss import latent_target

    g = torch.Generator().manual_seed(0)
    z, eps, ab = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 4, 4, 4, generator=g), 0.7
    z_t = ab ** 0.5 * z + (1 - ab) ** 0.5 * eps
    assert torch.equal(latent_target("epsilon", z, eps, ab), eps)
    assert torch.equal(latent_target("sample", z, eps, ab), z)  # was scored against ε before
    v = latent_target("v_prediction", z, eps, ab)
    torch.testing.assert_close(ab ** 0.5 * v + (1 - ab) ** 0.5 * z_t, eps)  # v = sqrt(ᾱ)ε − sqrt(1−ᾱ)z
    pipe = load_sd_pipeline(sd_dir)
    x, caps = images(2), ["a", "b"]
    eps_loss = per_example_latent_loss(pipe, x, caps, timesteps=[100])
    pipe.scheduler.register_to_config(prediction_type="sample")
    assert not np.allclose(per_example_latent_loss(pipe, x, caps, timesteps=[100]), eps_loss)
    pipe.scheduler.register_to_config(prediction_type="flow")
    with pytest.raises(DiffauditError, match="predicts 'flow'"):
        per_example_latent_loss(pipe, x, caps, timesteps=[100])


def test_batch_size_auto_probes_the_pipelines_loss_parts_and_keeps_the_losses(sd_dir, tmp_path, monkeypatch):
    """mia --batch-size auto on a Stable Diffusion pipeline: the probe runs the text encoder, the VAE encoder
    and the UNet on a batch of the size tried (what the loss holds in memory at once); the size chosen
    (here by a stand-in for the GPU's allocator) is the batch the losses run in, and they equal a
    fixed batch's. An explicit size above 64 is taken down to 64, as before."""
    import diffaudit.attacks.membership.loss_cache as loss_cache
    from diffaudit.core.batch_fit import AUTO
    from diffaudit.models.latent_loss import latent_loss_probe

    pipe = load_sd_pipeline(sd_dir)
    seen = {}

    def record(part):
        def hook(module, args, kwargs):  # returns None: the call goes on unchanged
            seen.setdefault(part, tuple((args or tuple(kwargs.values()))[0].shape))
        return hook

    hooks = [module.register_forward_pre_hook(record(part), with_kwargs=True)
             for part, module in (("text_encoder", pipe.text_encoder), ("vae", pipe.vae.encoder), ("unet", pipe.unet))]
    latent_loss_probe(pipe, 3)
    for h in hooks:
        h.remove()
    lat = 32 // pipe.vae_scale_factor
    assert seen == {"text_encoder": (3, pipe.tokenizer.model_max_length), "vae": (3, 3, 32, 32),
                    "unet": (3, pipe.unet.config.in_channels, lat, lat)}

    asked, batches = [], []
    real_loss = loss_cache.per_example_latent_loss

    def resolve(requested, device, *, default, probe, start, cap, what):
        asked.append((requested, default, start, cap))
        probe(2)  # the probe the command would measure, on this pipeline
        return 2 if requested == AUTO else requested

    monkeypatch.setattr(loss_cache, "resolve_batch", resolve)
    monkeypatch.setattr(loss_cache, "per_example_latent_loss",
                        lambda *a, batch_size, **k: batches.append(batch_size) or real_loss(*a, batch_size=batch_size, **k))
    ds = ImageDataset(images=images(5), keys=[f"k{i}" for i in range(5)], captions=["a cat", "a dog", "w1", "w2", "w3"])
    auto = cached_model_losses(sd_dir, ds, timesteps=[100], batch_size=AUTO, cache_dir=tmp_path / "a")
    big = cached_model_losses(sd_dir, ds, timesteps=[100], batch_size=500, cache_dir=tmp_path / "b")
    assert asked == [(AUTO, 64, 4, 64), (64, 64, 4, 64)] and batches == [2, 64]
    np.testing.assert_allclose(auto, big, rtol=1e-4, atol=1e-6)


def test_a_pipeline_trained_elsewhere_is_audited_command_by_command(sd_dir, tmp_path, capsys):
    """`audit --model` of a Stable Diffusion folder is refused before anything is written, naming the commands
    that audit it; `mia --target` of one without train_ids.json says how to write that file, and with it runs."""
    import json

    from diffaudit.cli.main import main

    captions = [f"photo {i}" for i in range(6)]
    np.savez(tmp_path / "photos.npz", images=images(6), captions=np.array(captions))
    assert main(["audit", "--model", str(sd_dir), "--data", str(tmp_path / "photos.npz"), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "is a Stable Diffusion pipeline" in err and "`diffaudit sample --model M --prompts CAPTIONS" in err
    assert not (tmp_path / "a").exists()
    mia = ["mia", "--target", str(sd_dir), "--attack", "loss", "--data", str(tmp_path / "photos.npz"), "--timesteps", "100",
           "--bootstrap", "0", "--device", "cpu", "--quiet", "--out", str(tmp_path / "m")]
    assert main(mia) == 2
    err = capsys.readouterr().err
    assert f"write {sd_dir / 'train_ids.json'} yourself as {{\"keys\": [...]}}" in err and "`npz:ROW`" in err
    (sd_dir / "train_ids.json").write_text(json.dumps({"keys": ["npz:0", "npz:2", "npz:4"]}))
    try:
        assert main(mia) == 0
    finally:
        (sd_dir / "train_ids.json").unlink()
    result = json.loads((tmp_path / "m" / "result.json").read_text())
    assert (result["n_members"], result["n_nonmembers"]) == (3, 3)


def test_a_pipeline_where_a_pixel_space_model_is_needed_is_said_in_words(sd_dir, tmp_path, capsys):
    from diffaudit.cli.main import main

    assert main(["sample", "--model", str(sd_dir / "unet"), "--n", "2", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "its UNet is a UNet2DConditionModel, not a pixel-space UNet2DModel" in err
    assert f"{sd_dir} holds its pipeline (model_index.json): give that folder to sample or mia" in err
    assert "load_sd_pipeline" not in err and not (tmp_path / "g").exists()


def test_loading_a_pipeline_prints_nothing_and_keeps_the_libraries_settings(sd_dir, capfd):
    """No loading bars or deprecation notices of diffusers/transformers on a command's stderr; afterwards the
    libraries' own progress-bar and verbosity settings are as they were."""
    import warnings

    from diffusers.utils import logging as dl

    dl.enable_progress_bar()
    verbosity = dl.get_verbosity()
    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # what would be shown is shown
        load_sd_pipeline(sd_dir)
    err = capfd.readouterr().err
    assert "Loading" not in err and "FutureWarning" not in err and "deprecated" not in err, err
    assert dl.is_progress_bar_enabled() and dl.get_verbosity() == verbosity


def test_a_pipeline_folder_without_its_model_index_is_said_to_lack_it(sd_dir, tmp_path, capsys):
    import shutil

    from diffaudit.cli.main import main

    lost = tmp_path / "sd"
    shutil.copytree(sd_dir, lost)
    (lost / "model_index.json").unlink()
    assert main(["sample", "--model", str(lost), "--n", "2", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert f"{lost} looks like a pipeline's folder (unet/, vae/) without its model_index.json" in err
    assert not (tmp_path / "g").exists()
