"""``sample`` checks its prompts against the model before it creates its store: prompts a model cannot
take (text for a class-conditional model, a class out of range, any prompt for an unconditional one)
are refused with no folder left behind, so the corrected command is not turned away as "other settings"."""

from __future__ import annotations

import pytest

from diffaudit.cli.main import main
from helpers import make_tiny_model_dir


def _make_class_conditional_dir(root, *, num_classes: int = 3):
    """An untrained tiny class-conditional UNet saved like a run directory (faster than ``train``)."""
    import torch

    from diffaudit.models.scheduler import make_scheduler
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng():
        torch.manual_seed(0)
        cfg = unet_config("tiny", image_size=8, in_channels=1, num_classes=num_classes)
        build_unet(cfg).save_pretrained(root / "unet")
    make_scheduler().save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="module")
def runc(tmp_path_factory):
    return _make_class_conditional_dir(tmp_path_factory.mktemp("runc"))


@pytest.fixture(scope="module")
def uncond(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("uncond"))


def _sample(model, out, *extra):
    return main(["sample", "--model", str(model), "--out", str(out), "--steps", "2", "--micro-batch", "4",
                 "--device", "cpu", "--quiet", *extra])


def test_text_prompts_on_a_class_conditional_model_leave_no_store(runc, tmp_path, capsys):
    text, classes = tmp_path / "prompts.txt", tmp_path / "classes.txt"
    text.write_text("a cat\na dog\n")
    classes.write_text("0\n2\n")
    out = tmp_path / "g"
    assert _sample(runc, out, "--prompts", str(text), "--per-prompt", "2") == 2
    assert "prompts must be class indices" in capsys.readouterr().err
    assert not out.exists()
    # the corrected command runs in the same --out
    assert _sample(runc, out, "--prompts", str(classes), "--per-prompt", "2") == 0
    from diffaudit.store import read_samples

    assert read_samples(str(out)).captions == ["0", "0", "2", "2"]


def test_class_prompts_out_of_range_leave_no_store(runc, tmp_path, capsys):
    bad = tmp_path / "classes.txt"
    bad.write_text("0\n3\n")
    out = tmp_path / "g"
    assert _sample(runc, out, "--prompts", str(bad)) == 2
    assert "[0, 2]" in capsys.readouterr().err
    assert not out.exists()


def test_prompts_on_an_unconditional_model_are_refused(uncond, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "g"
    assert _sample(uncond, out, "--prompts", str(prompts), "--per-prompt", "2") == 2
    err = capsys.readouterr().err
    assert "unconditional" in err and "--n" in err and "class-conditional" in err
    assert not out.exists()
    # the plain unconditional request still works
    assert _sample(uncond, out, "--n", "3") == 0


def test_source_check_prompts_directly(runc, uncond):
    """``PixelSource.check_prompts`` is the check ``sample`` runs before creating its store."""
    import torch

    from diffaudit.core.errors import DiffauditError
    from diffaudit.sampling.sources import open_source

    cpu = torch.device("cpu")
    cond = open_source(runc, device=cpu, steps=2, micro_batch=4)
    cond.check_prompts(["0", "1", "2"])
    for bad in (["x"], [None], ["-1"], ["3"]):
        with pytest.raises(DiffauditError):
            cond.check_prompts(bad)
    plain = open_source(uncond, device=cpu, steps=2, micro_batch=4)
    plain.check_prompts([None])
    with pytest.raises(DiffauditError, match="unconditional"):
        plain.check_prompts(["0"])


@pytest.mark.parametrize("extra, message", [
    (["--n", "4", "--scheduler", "dpm"], "--scheduler applies to a Stable Diffusion pipeline; --model"),
    (["--n", "4", "--guidance-scale", "3"], "--guidance-scale applies to a Stable Diffusion pipeline"),
    (["--n", "4", "--per-prompt", "2"], "give --n (images of an unconditional model) or --per-prompt"),
    (["--n", "-5"], "--n must lie in [1, 4,294,967,296] (images to generate); got -5"),
    (["--per-prompt", "0"], "--per-prompt must lie in [1, 4,294,967,296] (images to generate); got 0"),  # was taken as 1
    (["--n", "4", "--scheduler", "dpm", "--guidance-scale", "3"], "--guidance-scale and --scheduler apply to a Stable"),
    (["--n", "5", "--batch-size", "-3"], "--batch-size must be at least 1 (images per source call); got -3"),  # a traceback
    (["--n", "5", "--batch-size", "0"], "--batch-size must be at least 1 (images per source call); got 0"),  # a whole shard
    (["--prompts", "PROMPTS", "--classes"], "give --prompts FILE (its lines, class indices for a class-conditional model) "
                                            "or --classes (every class), not both"),  # --classes was ignored
])
def test_options_a_pixel_model_would_ignore_leave_no_store(uncond, tmp_path, capsys, extra, message):
    """Stable Diffusion's --scheduler and --guidance-scale, and --per-prompt beside --n, would change nothing
    (the store recorded none of them): refused, as --prompts on an unconditional model is; so is a --batch-size
    below 1 (a negative one was a traceback, 0 was taken as a whole shard)."""
    out = tmp_path / "g"
    (tmp_path / "prompts.txt").write_text("1\n4\n")
    assert _sample(uncond, out, *[str(tmp_path / "prompts.txt") if a == "PROMPTS" else a for a in extra]) == 2
    assert message in capsys.readouterr().err and not out.exists()
    with pytest.raises(SystemExit):  # not a sampler at all: argparse's choices
        _sample(uncond, out, "--n", "4", "--scheduler", "foo")
    assert "invalid choice: 'foo'" in capsys.readouterr().err
