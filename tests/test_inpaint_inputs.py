"""`diffaudit inpaint` input checks made before the output folder exists: --steps beyond the target's
timesteps, and errors about a shadow's path that name the flag it came from."""

import json
import shutil

import pytest

from diffaudit.attacks.inpainting import InpaintAttackConfig
from diffaudit.cli.inpaint import check_models_fit
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from tests.helpers import make_tiny_model_dir


@pytest.fixture(scope="module")
def models(tmp_path_factory, digits):
    """Untrained tiny target (trained on digits 0..9, as recorded) and shadow (on digits 10..19)."""
    root = tmp_path_factory.mktemp("inputs")
    out = []
    for name, indices in (("target", range(10)), ("shadow", range(10, 20))):
        run = make_tiny_model_dir(root / name)
        (run / "train_ids.json").write_text(json.dumps({"keys": [digits.keys[i] for i in indices], "indices": list(indices)}))
        out.append(run)
    return out


def _inpaint(target, out, *extra):
    return main(["--quiet", "inpaint", "--model", str(target), "--data", "digits", "--target-keys", "digits:1,digits:30",
                 "--n-inpaint", "2", "--top-k", "1", "--jump-length", "1", "--device", "cpu", "--out", str(out), *extra])


def test_steps_beyond_the_target_timesteps_are_refused_before_the_folder_is_made(models, tmp_path, capsys):
    target, shadow = models
    out = tmp_path / "inp"
    capsys.readouterr()
    assert _inpaint(target, out, "--shadow", str(shadow), "--steps", "5000") == 2
    assert "--steps must lie in [1, 1000]" in capsys.readouterr().err
    assert not out.exists()  # nothing recorded: the corrected command is not "other settings"
    assert _inpaint(target, out, "--shadow", str(shadow), "--steps", "3") == 0
    assert json.loads((out / "result.json").read_text())["settings"]["steps"] == 3


def test_config_checks_steps_against_the_timesteps_when_given():
    InpaintAttackConfig(steps=5000).validate()  # T unknown: nothing to compare with
    InpaintAttackConfig(steps=1000).validate(num_train_timesteps=1000)
    with pytest.raises(DiffauditError, match=r"--steps must lie in \[1, 1000\]"):
        InpaintAttackConfig(steps=1001).validate(num_train_timesteps=1000)


def test_a_missing_shadow_is_named_by_its_flag(models, tmp_path, capsys):
    target, _ = models
    missing = tmp_path / "no-such-shadow"
    capsys.readouterr()
    assert _inpaint(target, tmp_path / "inp", "--shadow", str(missing), "--steps", "2") == 2
    err = capsys.readouterr().err
    assert f"--shadow {missing} does not exist" in err and "--model" not in err
    # with the default --targets, which digits' 10 members cannot meet, the missing shadow is still what is said
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(missing), "--data", "digits", "--subset",
                 "16", "--device", "cpu", "--out", str(tmp_path / "inp")]) == 2
    assert f"--shadow {missing} does not exist" in capsys.readouterr().err


def test_check_models_fit_names_the_shadow_flag(models, digits, tmp_path):
    target, shadow = models
    with pytest.raises(DiffauditError, match=r"^--shadows \S*missing: not a directory"):
        check_models_fit(target, [tmp_path / "missing"], digits, timestep=100, shadow_flag="--shadows")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DiffauditError, match=r"^--shadow \S*empty: no UNet found"):
        check_models_fit(target, [empty], digits, timestep=100)
    with pytest.raises(DiffauditError, match=r"^--model \S*missing: not a directory"):  # the target keeps its flag
        check_models_fit(tmp_path / "missing", [shadow], digits, timestep=100)
    broken = tmp_path / "broken"
    shutil.copytree(shadow, broken)
    (broken / "unet" / "config.json").write_text("{")
    with pytest.raises(DiffauditError, match=r"^--shadows \S*broken: .* is not readable JSON"):
        check_models_fit(target, [broken], digits, timestep=100, shadow_flag="--shadows")
