"""Sampling beyond unconditional pixel models: a Stable Diffusion pipeline folder with a prompt file,
and a class-conditional model whose classes are the prompts."""

import json

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.models.sd_configs import build_stable_diffusion
from diffaudit.store import SampleStore, read_samples


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    build_stable_diffusion(tiny=True, size=32).save_pretrained(root, safe_serialization=True)
    return root


def test_stable_diffusion_round_trip_and_prompted_sampling(sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, local_files_only=True, use_safetensors=True)
    ids = pipe.tokenizer("w1 w2").input_ids
    assert pipe.unet.config.cross_attention_dim == 32 and ids[1:3] == [pipe.tokenizer.get_vocab()["w</w>"], pipe.tokenizer.get_vocab()["1</w>"]]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("w1 w2 w3\nw4 w5\n")
    args = ["sample", "--model", str(sd_dir), "--prompts", str(prompts), "--per-prompt", "2", "--steps", "2",
            "--guidance-scale", "3", "--out", str(tmp_path / "s"), "--device", "cpu", "--quiet"]
    assert main(args) == 0
    ds = read_samples(str(tmp_path / "s"))
    assert ds.images.shape == (4, 32, 32, 3) and ds.keys == ["p0-i0", "p0-i1", "p1-i0", "p1-i1"]
    assert ds.captions == ["w1 w2 w3", "w1 w2 w3", "w4 w5", "w4 w5"]
    assert SampleStore.open(tmp_path / "s").manifest["per_prompt"] == 2
    # Pixels do not depend on how many images go to the pipeline per call.
    again = ["sample", "--model", str(sd_dir), "--prompts", str(prompts), "--per-prompt", "2", "--steps", "2",
             "--guidance-scale", "3", "--out", str(tmp_path / "s2"), "--device", "cpu", "--quiet", "--batch-size", "1"]
    assert main(again) == 0
    assert np.array_equal(read_samples(str(tmp_path / "s2")).images, ds.images)


def test_class_conditional_model_samples_each_class(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--subset", "40", "--class-conditional", "--steps", "4", "--batch-size", "8",
                 "--checkpoint-every", "2", "--warmup-steps", "1", "--out", str(run), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((run / "unet" / "config.json").read_text())["num_class_embeds"] == 10
    assert main(["sample", "--model", str(run), "--classes", "--per-prompt", "2", "--steps", "2",
                 "--out", str(tmp_path / "s"), "--device", "cpu", "--quiet"]) == 0
    ds = read_samples(str(tmp_path / "s"))
    assert len(ds) == 20 and ds.captions[:4] == ["0", "0", "1", "1"]
    # A class-conditional model without prompts is a clear error.
    assert main(["sample", "--model", str(run), "--n", "4", "--out", str(tmp_path / "x"), "--device", "cpu", "--quiet"]) == 2
    # exported, each file is traced to its prompt: p<P>-i<I>.png is image I of prompts[P]
    assert main(["export", "--samples", str(tmp_path / "s"), "--out", str(tmp_path / "png"), "--quiet"]) == 0
    assert json.loads((tmp_path / "png" / "result.json").read_text())["prompts"] == [str(c) for c in range(10)]


def test_n_with_classes_or_prompts_is_refused_not_ignored(tmp_path, capsys):
    """`--n N` with --classes/--prompts used to be ignored (1 image per prompt): refused, before the model loads."""
    import argparse

    from diffaudit.cli.sample import add_arguments, plan_prompts

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\na dog\n")
    for extra in (["--classes"], ["--prompts", str(prompts)]):
        assert main(["sample", "--model", str(tmp_path / "no-model"), *extra, "--n", "100", "--out", str(tmp_path / "s"),
                     "--device", "cpu", "--quiet"]) == 2
        err = capsys.readouterr().err
        assert "--per-prompt" in err and extra[0] in err and "no-model" not in err
        assert not (tmp_path / "s").exists()
    p = argparse.ArgumentParser()
    add_arguments(p)

    class Source:  # stands in for a class-conditional source
        num_classes = 10

    class TextSource:  # a Stable Diffusion source
        num_classes = None

    # the plain uses still work: --classes alone (1 per class), --classes --per-prompt, --prompts --per-prompt
    assert plan_prompts(p.parse_args(["--model", "m", "--out", "o", "--classes"]), Source()) == ([str(c) for c in range(10)], 1)
    assert plan_prompts(p.parse_args(["--model", "m", "--out", "o", "--classes", "--per-prompt", "10"]), Source())[1] == 10
    assert plan_prompts(p.parse_args(["--model", "m", "--out", "o", "--prompts", str(prompts), "--per-prompt", "3"]),
                        TextSource()) == (["a cat", "a dog"], 3)


def test_stable_diffusion_source_fast_path_is_honoured(sd_dir, monkeypatch):
    """The SD source's fast-path options: channels-last UNet and VAE where asked (the CPU too), images
    within rounding of the default layout; torch.compile refused on the CPU with a clear message; and
    open_source asks for bf16 (+ channels-last and compile with --compile) on CUDA only."""
    import torch

    from diffaudit.core.errors import DiffauditError
    from diffaudit.sampling import sources
    from diffaudit.sampling.sources import StableDiffusionSource, open_source

    fmt = torch.channels_last
    plain = StableDiffusionSource(str(sd_dir), steps=2, guidance_scale=3, micro_batch=2)
    fast = StableDiffusionSource(str(sd_dir), steps=2, guidance_scale=3, micro_batch=2, channels_last=True)
    for module in (fast.pipe.unet.conv_in, fast.pipe.vae.decoder.conv_in, fast.pipe.vae.encoder.conv_in):
        assert module.weight.is_contiguous(memory_format=fmt)
    assert not plain.pipe.unet.conv_in.weight.is_contiguous(memory_format=fmt)
    seeds, prompts = [3, 4, 5], ["w1 w2", "w3", "a b"]
    a, b = plain(seeds, prompts), fast(seeds, prompts)
    diff = np.abs(a.astype(np.int16) - b)
    assert a.shape == b.shape == (3, 32, 32, 3)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # only the rounding of reordered float sums
    with pytest.raises(DiffauditError, match="CUDA only"):
        StableDiffusionSource(str(sd_dir), steps=2, compile=True)
    # an in-memory pipeline runs through the same code
    mem = StableDiffusionSource.from_pipeline(plain.pipe, steps=2, guidance_scale=3, micro_batch=2)
    assert np.array_equal(mem(seeds, prompts), a)
    # open_source: --fast (--compile) is honoured on CUDA, ignored elsewhere (no compile on the CPU)
    cpu = open_source(sd_dir, device=torch.device("cpu"), steps=2, fast=True, compile=True)
    assert (cpu.dtype, cpu.channels_last, cpu.compile) == (torch.float32, False, False)
    seen = {}
    monkeypatch.setattr(sources, "StableDiffusionSource", lambda path, **kw: seen.update(kw) or "source")
    assert open_source(sd_dir, device=torch.device("cuda"), steps=2, fast=True, compile=True) == "source"
    assert (seen["dtype"], seen["channels_last"], seen["compile"]) == (torch.bfloat16, True, True)
    # uncompiled, the pipeline keeps its default layout (eager channels-last measured slower than stock)
    assert open_source(sd_dir, device=torch.device("cuda"), steps=2, fast=True) == "source"
    assert (seen["dtype"], seen["channels_last"], seen["compile"]) == (torch.bfloat16, False, False)


def test_stable_diffusion_auto_micro_batch(sd_dir):
    """``micro_batch="auto"``: 8 off CUDA; the probe (the UNet on the guided batch, the VAE decoder) runs at
    each size asked, under any scheduler (PNDM takes no one-step pipeline call)."""
    from diffaudit.core.batch_fit import largest_batch_that_fits
    from diffaudit.sampling.sources import StableDiffusionSource

    source = StableDiffusionSource(str(sd_dir), steps=2, guidance_scale=3, micro_batch="auto")
    assert source.micro_batch == 8 and source.settings()["micro_batch"] == 8

    class Roomy:  # an allocator with room for any size
        total, reset, peak = (lambda self: 100), (lambda self: None), (lambda self: 1)

    calls = []
    fit = largest_batch_that_fits(lambda b: (source._probe(b), calls.append(b)), start=1, cap=4, memory=Roomy())
    assert fit.batch == 4 and calls == [1, 2, 4]
    seen = []
    hook = source.pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    pndm = StableDiffusionSource.from_pipeline(source.pipe, steps=4, guidance_scale=3, scheduler="pndm")
    pndm._probe(3)
    hook.remove()
    assert seen == [6]  # the guided batch: 2 x 3


def test_stable_diffusion_without_prompts_leaves_no_store(sd_dir, tmp_path, capsys):
    """A prompt for every image is checked before the store is created (a corrected re-run is not refused)."""
    out = tmp_path / "s"
    assert main(["sample", "--model", str(sd_dir), "--n", "2", "--steps", "2", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 2
    assert "needs a prompt for every image" in capsys.readouterr().err
    assert not out.exists()


def test_stable_diffusion_progress_per_micro_batch(sd_dir):
    """The SD source tells ``on_images`` after every micro-batch (the padded last one counts its real images)."""
    from diffaudit.sampling.sources import StableDiffusionSource

    source = StableDiffusionSource(str(sd_dir), steps=2, guidance_scale=3, micro_batch=2)
    told = []
    images = source([1, 2, 3], ["a", "b", "c"], on_images=told.append)
    assert told == [2, 1] and images.shape == (3, 32, 32, 3)


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be at least 1; got 0"),  # a ZeroDivisionError in diffusers
    (["--steps", "-1"], "--steps must be at least 1; got -1"),  # undenoised latents stored as generations
    (["--steps", "3", "--scheduler", "pndm"], "--scheduler pndm needs --steps 4 or more"),  # a broadcast ValueError
    (["--steps", "2", "--eta", "1"], "--eta applies to a pixel UNet's DDIM"),  # silently ignored
])
def test_stable_diffusion_sampler_values_that_cannot_work_leave_no_store(sd_dir, tmp_path, capsys, extra, message):
    """Each was a traceback, or work that did not do what it said, with a store left whose settings refused
    the corrected command."""
    (tmp_path / "p.txt").write_text("a cat\n")
    out = tmp_path / "s"
    assert main(["sample", "--model", str(sd_dir), "--prompts", str(tmp_path / "p.txt"), "--per-prompt", "1", *extra,
                 "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()
