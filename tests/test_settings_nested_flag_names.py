"""A refusal to resume names a nested setting by the flag that sets it (``--subset``, not
``data.options.subset``), and by its recorded key only where no flag of the command sets it."""

from __future__ import annotations

import argparse
import importlib

import pytest

from diffaudit.cli.main import main, setting_names
from diffaudit.core.outdir import diff_settings


def _names(command: str) -> dict[str, str]:
    p = argparse.ArgumentParser()
    importlib.import_module(f"diffaudit.cli.{command}").add_arguments(p)
    return setting_names(p)


def _refusal(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other settings" in err, err
    return err


def test_nested_settings_are_named_by_the_commands_flags():
    shadows, canaries = _names("shadows"), _names("canaries")
    assert shadows["data.spec"] == "--data" and shadows["data.options.image_size"] == "--image-size"
    assert shadows["data.options.cifar_root"] == "--cifar-root" and shadows["train.lr"] == "--lr"
    assert canaries["data_options.subset"] == "--subset" and canaries["data_options.subset_seed"] == "--subset-seed"
    assert "membership.seed" not in shadows  # the matrix's own seed: no flag of `shadows` sets it
    assert "data.model_index" not in shadows and _names("train")["data.model_index"] == "--model-index"
    old = {"data": {"spec": "a.npz", "options": {"subset": 24}, "digest": "x"}, "membership": {"seed": 1}}
    new = {"data": {"spec": "b.npz", "options": {"subset": 20}, "digest": "y"}, "membership": {"seed": 2}}
    assert diff_settings(old, new, names=shadows) == [
        "the contents of --data (was 'x', now 'y')", "--subset (was 24, now 20)", "--data (was 'a.npz', now 'b.npz')",
        "membership.seed (was 1, now 2)"]


def test_the_commands_own_setting_names_are_their_flags():
    """``setting_flags(args)`` of train (DP-SGD) and canaries (the measurement) name options they have;
    train names ``dp.delta`` by ``--dp-delta`` only where it is given (else derived)."""
    for command, argv in (("train", ["--dp-noise", "1", "--dp-delta", "1e-5"]), ("canaries", [])):
        argv = ["--out", "o", *argv]
        module = importlib.import_module(f"diffaudit.cli.{command}")
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        flags = {s for a in p._actions for s in a.option_strings}
        names = module.setting_flags(p.parse_args(argv))
        # each a flag, or words naming the flags that set it (DP-SGD switched on: --dp-noise or --dp-epsilon)
        assert names and all(v in flags or any(f in v.replace("(", " ").replace(")", " ").replace(",", " ").split()
                                               for f in flags) for v in names.values()), names
        if command == "train":
            assert names["dp.delta"] == "--dp-delta" and names["dp.noise_multiplier"] == "--dp-noise"
            assert "dp.delta" not in module.setting_flags(p.parse_args(["--out", "o", "--dp-noise", "1"]))


def test_a_train_run_refuses_changed_data_options_by_their_flags(tmp_path, capsys):
    argv = ["train", "--data", "digits", "--subset", "24", "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--batch-size", "8", "--warmup-steps", "1", "--steps", "2", "--checkpoint-every", "2", "--device", "cpu",
            "--quiet"]
    assert main(argv) == 0
    err = _refusal([*argv, "--subset", "20"], capsys)
    assert "--subset (was 24, now 20)" in err and "data.options" not in err
    err = _refusal([*argv, "--image-size", "16"], capsys)
    assert "--image-size (was None, now 16)" in err and "data.options" not in err
    err = _refusal([*argv, "--steps", "3"], capsys)
    assert "--steps (was 2, now 3)" in err and "train.steps" not in err


def test_a_data_options_setting_is_refused_by_its_flag(tmp_path, capsys):
    argv = ["--quiet", "dedup", "--data", "digits", "--out", str(tmp_path / "dd")]
    assert main([*argv, "--subset", "40"]) == 0
    err = _refusal([*argv, "--subset", "30"], capsys)
    assert "--subset (was 40, now 30)" in err and "data_options.subset" not in err


def test_a_setting_two_places_record_alike_is_named_once(tmp_path):
    from diffaudit.core.errors import SettingsMismatchError
    from diffaudit.core.outdir import flag_names, prepare_out_dir

    prepare_out_dir(tmp_path / "o", "x", {"seed": 0, "evaluation": {"noise_seed": 0}})
    (tmp_path / "o" / "result.json").write_text("{}")  # work of those settings
    with flag_names({"seed": "--seed", "evaluation.noise_seed": "--seed"}):
        with pytest.raises(SettingsMismatchError) as err:
            prepare_out_dir(tmp_path / "o", "x", {"seed": 1, "evaluation": {"noise_seed": 1}})
    assert str(err.value).count("--seed (was 0, now 1)") == 1
