"""The largest batch that fits (``--micro-batch auto``, ``--batch-size auto``): the probe's choice
against a simulated allocator, its wiring into sample, mia and inpaint, and on a GPU the real one."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from diffaudit.core.batch_fit import AUTO, batch_option, largest_batch_that_fits, resolve_batch
from diffaudit.core.errors import DiffauditError


class FakeMemory:
    """An allocator of ``total`` bytes where a batch of b peaks at ``weights + per_image·b`` and runs out of
    memory from ``oom_from`` images on (a workspace spike the linear model does not predict)."""

    def __init__(self, total=1000, weights=100, per_image=10, oom_from=None):
        self.total_bytes, self.weights, self.per_image, self.oom_from = total, weights, per_image, oom_from
        self.resets, self._peak, self.runs = 0, 0, []

    def total(self):
        return self.total_bytes

    def reset(self):
        self.resets += 1
        self._peak = 0

    def peak(self):
        return self._peak

    def run(self, batch):
        self.runs.append(batch)
        if (self.oom_from is not None and batch >= self.oom_from) or self.weights + self.per_image * batch > self.total_bytes:
            raise torch.OutOfMemoryError(f"simulated: {batch}")
        self._peak = self.weights + self.per_image * batch


def test_doubles_while_the_peak_and_the_next_estimate_stay_within_the_fraction():
    mem = FakeMemory()  # limit 800 = 0.8 x 1000
    fit = largest_batch_that_fits(mem.run, start=4, cap=1024, memory=mem)
    # 64 peaks at 740; 128 would peak at about 740 + 10 x 64 = 1,380 > 800: not tried
    assert fit.batch == 64 and fit.limit_bytes == 800
    assert fit.tried == [(4, 140), (8, 180), (16, 260), (32, 420), (64, 740)] and mem.runs == [4, 8, 16, 32, 64]
    assert mem.resets == 5  # the allocator's peak is reset before each size
    assert json.loads(json.dumps(fit.to_dict()))["batch"] == 64 and "64: 0.0 GiB" in fit.describe()


def test_a_size_that_runs_out_of_memory_keeps_the_one_before_and_cap_bounds_the_search():
    mem = FakeMemory(total=10 ** 6, oom_from=64)
    fit = largest_batch_that_fits(mem.run, start=8, cap=4096, memory=mem)
    assert fit.batch == 32 and fit.tried[-1] == (64, None)
    assert largest_batch_that_fits(FakeMemory(total=10 ** 6).run, start=8, cap=16, memory=FakeMemory(total=10 ** 6)).batch == 16


def test_over_the_fraction_stops_and_start_is_the_floor():
    mem = FakeMemory(total=1000, weights=500, per_image=100)  # start 4 peaks at 900 > 800, and runs
    assert largest_batch_that_fits(mem.run, start=4, cap=64, memory=mem).batch == 4 and mem.runs == [4]
    mem = FakeMemory(total=1000, per_image=10)
    fit = largest_batch_that_fits(mem.run, start=1, cap=64, memory=mem, memory_fraction=0.5)  # limit 500: 32 peaks at 420
    assert fit.batch == 32
    with pytest.raises(DiffauditError, match="a batch of 8 does not fit in this GPU's memory"):
        largest_batch_that_fits(FakeMemory(oom_from=8).run, start=8, cap=64, memory=FakeMemory(oom_from=8))
    with pytest.raises(ValueError):
        largest_batch_that_fits(mem.run, start=0, cap=4, memory=mem)


def test_resolve_batch_probes_only_for_auto_on_cuda():
    calls = []
    probe = lambda b: calls.append(b)  # noqa: E731
    cpu = torch.device("cpu")
    assert resolve_batch(48, cpu, default=32, probe=probe, start=32, cap=4096, what="--x") == 48
    assert resolve_batch(None, cpu, default=32, probe=probe, start=32, cap=4096, what="--x") == 32
    assert resolve_batch(AUTO, cpu, default=32, probe=probe, start=32, cap=4096, what="--x") == 32 and calls == []
    mem = FakeMemory()
    assert resolve_batch(AUTO, torch.device("cuda"), default=32, probe=mem.run, start=4, cap=4096, what="--x", memory=mem) == 64
    assert batch_option("auto") == AUTO and batch_option("12") == 12
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer or 'auto'"):
        batch_option("big")


def test_the_denoiser_probe_runs_the_uncompiled_unet_in_its_dtype_and_layout():
    from diffaudit.models.denoiser import Denoiser
    from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    den = Denoiser(unet=build_unet(unet_config("tiny", image_size=8, in_channels=1, num_classes=3)).eval(),
                   alphas_cumprod=alphas_cumprod_of(make_scheduler()))
    seen = {}
    real = den.unet

    class Compiled(torch.nn.Module):  # stands for torch.compile's wrapper: calling it would recompile per size
        def __init__(self):
            super().__init__()
            self._orig_mod = real
            self.config = real.config  # as torch.compile's wrapper forwards it

        def forward(self, *a, **k):
            raise AssertionError("the probe must not call the compiled module")

    hook = real.register_forward_pre_hook(lambda m, args, kwargs: seen.update(x=args[0], labels=kwargs["class_labels"]),
                                          with_kwargs=True)
    den.unet = Compiled()
    den.channels_last = True
    den.forward_probe(5)
    hook.remove()
    assert tuple(seen["x"].shape) == (5, 1, 8, 8) and seen["x"].dtype == den.dtype
    assert seen["x"].is_contiguous(memory_format=torch.channels_last) and seen["labels"].tolist() == [0] * 5


def test_sample_auto_takes_the_cpu_default_and_a_store_keeps_its_recorded_micro_batch(tmp_path):
    from helpers import make_tiny_model_dir

    from diffaudit.cli.main import main
    from diffaudit.store import read_samples

    model = make_tiny_model_dir(tmp_path / "m")
    run = lambda out, n, mb: main(["sample", "--model", str(model), "--n", str(n), "--steps", "2", "--shard-size", "3",  # noqa: E731
                                   "--device", "cpu", "--quiet", "--out", str(tmp_path / out), "--micro-batch", mb])
    assert run("a", 6, "auto") == 0
    assert json.loads((tmp_path / "a" / "settings.json").read_text())["settings"]["micro_batch"] == 32
    # a store made with --micro-batch 4 is resumed by auto (which would choose 32 here), not refused
    assert run("b", 3, "4") == 0
    assert run("b", 6, "auto") == 2  # --n differs: other settings, refused (auto hides no other change)
    assert run("b", 3, "auto") == 0
    assert json.loads((tmp_path / "b" / "settings.json").read_text())["settings"]["micro_batch"] == 4
    assert len(read_samples(str(tmp_path / "b"))) == 3


def test_mia_and_inpaint_accept_auto(tmp_path):
    """``--batch-size auto`` parses for mia and inpaint, passes their checks, and on the CPU computes the
    same losses as the default batch (the batch never changes them)."""
    from helpers import make_tiny_model_dir

    from diffaudit.attacks.membership.loss_cache import cached_model_losses
    from diffaudit.attacks.membership.run import MiaConfig
    from diffaudit.cli import inpaint, mia
    from diffaudit.data.dataset import ImageDataset

    for module in (mia, inpaint):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        action = next(a for a in p._actions if "--batch-size" in a.option_strings)
        assert action.type("auto") == AUTO
    MiaConfig(batch_size=AUTO).validate()
    with pytest.raises(DiffauditError, match="--batch-size must be at least 1"):
        MiaConfig(batch_size=0).validate()
    model = make_tiny_model_dir(tmp_path / "m")
    rng = np.random.default_rng(0)
    ds = ImageDataset(images=rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8), keys=[f"k{i}" for i in range(6)])
    auto = cached_model_losses(model, ds, timesteps=[10], batch_size=AUTO, cache_dir=tmp_path / "c1")
    fixed = cached_model_losses(model, ds, timesteps=[10], batch_size=2, cache_dir=tmp_path / "c2")
    np.testing.assert_allclose(auto, fixed, rtol=1e-6)


@pytest.mark.gpu
def test_auto_on_a_gpu_chooses_a_batch_that_fits_and_samples_with_it(tmp_path):
    """On CUDA: the probe's choice is a power-of-two multiple of 32 within the cap, its recorded peak is
    within 80% of the GPU's memory, and sampling at that micro-batch stays within it too."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from helpers import make_tiny_model_dir

    from diffaudit.sampling.sources import open_source

    dev = torch.device("cuda")
    model = make_tiny_model_dir(tmp_path / "m", image_size=32, channels=3)
    source = open_source(model, device=dev, steps=2, fast=True, micro_batch=AUTO)
    mb = source.micro_batch
    assert 32 <= mb <= 4096 and mb & (mb - 1) == 0
    torch.cuda.reset_peak_memory_stats(dev)
    images = source(list(range(mb)), [None] * mb)
    assert images.shape == (mb, 32, 32, 3)
    assert torch.cuda.max_memory_allocated(dev) <= 0.8 * torch.cuda.get_device_properties(dev).total_memory


@pytest.mark.gpu
def test_auto_on_a_gpu_probes_a_stable_diffusion_pipelines_losses(tmp_path):
    """On CUDA: mia's auto batch for a Stable Diffusion pipeline is a power of two in [4, 64], and the
    losses at the size chosen stay within 80% of the GPU's memory."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from diffaudit.models.latent_loss import latent_loss_probe, load_sd_pipeline, per_example_latent_loss
    from diffaudit.models.sd_configs import build_stable_diffusion

    dev = torch.device("cuda")
    build_stable_diffusion(tiny=True, size=64).save_pretrained(tmp_path / "sd", safe_serialization=True)
    pipe = load_sd_pipeline(tmp_path / "sd", device=dev, dtype=torch.bfloat16)
    batch = resolve_batch(AUTO, dev, default=64, probe=lambda b: latent_loss_probe(pipe, b), start=4, cap=64, what="--x")
    assert 4 <= batch <= 64 and batch & (batch - 1) == 0
    torch.cuda.reset_peak_memory_stats(dev)
    images = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    losses = per_example_latent_loss(pipe, images, ["a cat"] * batch, batch_size=batch)
    assert losses.shape == (batch, 1, 1) and np.isfinite(losses).all()
    assert torch.cuda.max_memory_allocated(dev) <= 0.8 * torch.cuda.get_device_properties(dev).total_memory
