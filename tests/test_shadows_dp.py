"""LiRA shadows of a DP-SGD target train with DP-SGD: `shadows --dp-noise/--dp-epsilon` trains every model as
`train --dp-*` would, and `audit --model` passes a DP-SGD target's own noise multiplier, clipping and batching
to its shadows (LiRA reads the target's losses against theirs, and a DP model's losses sit apart from a plain
model's)."""

from __future__ import annotations

import json
import pickle

import pytest

import diffaudit.cli.audit as audit_cli
from diffaudit.attacks.membership.shadows import shadow_seed
from diffaudit.cli.main import main
from diffaudit.core.io import read_json
from diffaudit.core.outdir import settings_record
from diffaudit.data import load_dataset
from diffaudit.defenses.dp_training import DPConfig, dp_flags_like, dp_trainer
from diffaudit.report import render_html
from tests.helpers import digits_membership, make_tiny_model_dir
from tests.test_report import visible_text

N = 24
TRAIN = ["--steps", "4", "--batch-size", "6", "--warmup-steps", "1", "--checkpoint-every", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def matrix_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("dp_shadows")
    digits_membership(root / "m.npz", N, 2, seed=3)
    return root / "m.npz"


def shadows(matrix_file, out, *extra: str) -> list[str]:
    return ["--quiet", "shadows", "--data", "digits", "--subset", str(N), "--membership", str(matrix_file),
            "--out", str(out), *TRAIN, *extra]


def weights(run) -> bytes:
    return b"".join(p.read_bytes() for p in sorted((run / "unet").glob("*.safetensors")))


def test_dp_shadows_train_as_train_does_under_dp_sgd(matrix_file, tmp_path, capsys):
    """Each shadow is a DP-SGD run (its record holds the noise and its epsilon, listed in the shadows'
    result) with the weights `train --dp-noise` gives its column under its seed; a re-run with other noise
    is refused by the flag's name, and re-running the same command trains nothing."""
    out = tmp_path / "s"
    assert main(shadows(matrix_file, out, "--dp-noise", "0.8", "--dp-no-poisson")) == 0
    result = read_json(out / "result.json")
    for k in range(2):
        dp = read_json(out / f"model-{k:02d}" / "result.json")["dp"]
        assert dp["noise_multiplier"] == 0.8 and dp["poisson_sampling"] is False and dp["epsilon"] > 0
        assert result["models"][k]["epsilon"] == dp["epsilon"]
    alone = tmp_path / "alone"
    assert main(["--quiet", "train", "--data", "digits", "--subset", str(N), "--membership", str(matrix_file),
                 "--model-index", "1", "--out", str(alone), *TRAIN, "--seed", str(shadow_seed(0, 1)),
                 "--dp-noise", "0.8", "--dp-no-poisson"]) == 0
    assert weights(alone) == weights(out / "model-01")
    assert weights(out / "model-00") != weights(out / "model-01")
    capsys.readouterr()
    assert main(shadows(matrix_file, out, "--dp-noise", "0.5", "--dp-no-poisson")) == 2
    assert "--dp-noise" in capsys.readouterr().err
    assert main(shadows(matrix_file, out, "--dp-noise", "0.8")) == 2  # Poisson batches: another training
    first = (out / "model-00" / "result.json").stat().st_mtime_ns
    assert main(shadows(matrix_file, out, "--dp-noise", "0.8", "--dp-no-poisson")) == 0
    assert (out / "model-00" / "result.json").stat().st_mtime_ns == first
    # the report's shadows section says how they trained, with each one's epsilon
    section = visible_text(render_html(out).split('<section id="shadows">')[1].split("</section>")[0])
    assert "They trained with DP-SGD, at noise multiplier 0.8: the epsilon of each depends on how many images" in section
    eps = [f"{m['epsilon']:.4g}" for m in result["models"]]
    assert "noise multiplierepsilon" in section and all(e in section for e in eps), (eps, section)
    assert all(m["noise_multiplier"] == 0.8 for m in result["models"])


@pytest.mark.parametrize("extra, said", [
    (["--dp-noise", "1", "--grad-clip", "2"], "--grad-clip does nothing under DP-SGD"),
    (["--dp-noise", "1", "--batch-size", "8"], "--batch-size 8 exceeds the 7 examples shadow model 1 trains on"),
    (["--dp-max-grad-norm", "2"], "--dp-max-grad-norm given without --dp-noise or --dp-epsilon"),
])
def test_dp_shadows_refuse_what_cannot_train_before_any_model(matrix_file, tmp_path, capsys, extra, said):
    out = tmp_path / "s"
    assert main(shadows(matrix_file, out, *extra)) == 2
    assert said in capsys.readouterr().err
    assert not (out / "model-00").exists()


def test_the_dp_trainer_pickles_for_shadow_workers():
    dp = DPConfig(noise_multiplier=0.5, max_grad_norm=2.0, poisson_sampling=False)
    trainer = pickle.loads(pickle.dumps(dp_trainer(dp)))
    assert trainer.keywords == {"dp": dp} and trainer.func.__name__ == "_train_dp_with"


def test_dp_flags_like_a_recorded_run():
    """The noise multiplier the run trained with (solved for its --dp-epsilon), not its epsilon; defaults
    left out; a recorded clipping norm None is no clipping; no usable noise: None."""
    record = {"noise_multiplier": None, "target_epsilon": 8.0, "noise_multiplier_used": 1.25, "max_grad_norm": 0.5,
              "poisson_sampling": False, "accountant": "prv", "augmentations": 1, "grad_sample_mode": "functorch",
              "delta": 1e-5}
    assert dp_flags_like(record) == ["--dp-noise", "1.25", "--dp-max-grad-norm", "0.5", "--dp-no-poisson",
                                     "--dp-grad-sample-mode", "functorch", "--dp-accountant", "prv"]
    assert dp_flags_like({"noise_multiplier": 0.0, "max_grad_norm": None}) == ["--dp-noise", "0.0", "--dp-max-grad-norm", "inf"]
    for unusable in (None, [], {}, {"noise_multiplier_used": "1"}, {"noise_multiplier_used": True}, {"noise_multiplier": -1}):
        assert dp_flags_like(unusable) is None, unusable


class _Stopped(Exception):
    pass


def _stop_at_a_stage(self, name, argv, folder=None):
    """An audit's ``_Stages.run`` that stops it at its first stage, once every check has run."""
    raise _Stopped


@pytest.fixture
def dp_target(tmp_path):
    """A DP-SGD --model as `train --dp-epsilon` records it (σ solved: 0.9, C 1.5, fixed-size batches)."""
    keys = load_dataset("digits", subset=N).keys[:12]
    run = make_tiny_model_dir(tmp_path / "target")
    (run / "train_ids.json").write_text(json.dumps({"keys": keys}))
    dp = {"noise_multiplier": None, "target_epsilon": 50.0, "noise_multiplier_used": 0.9, "max_grad_norm": 1.5,
          "poisson_sampling": False, "accountant": "rdp", "augmentations": 1, "grad_sample_mode": "auto", "delta": 1e-3}
    (run / "train_config.json").write_text(json.dumps({"preset": "tiny", "steps": 4, "batch_size": 6, "lr": 2e-4,
                                                       "warmup_steps": 1, "grad_clip": 1.0, "ema_decay": 0.999,
                                                       "flip": True, "dp": dp}))
    return run


AUDIT = ["audit", "--data", "digits", "--subset", str(N), "--n-samples", "8", "--sweep", "", "--mia", "lira-fixed",
         "--shadows", "2", "--checkpoint-every", "2"]


def test_audit_trains_the_shadows_of_a_dp_target_with_its_dp_sgd(dp_target, tmp_path, capsys, monkeypatch):
    """The train stage gets the target's --dp-* flags (no --grad-clip, which DP-SGD does not use), says so,
    warns of nothing, and `shadows` trains with them."""
    stages = []

    def stop_at_train(self, name, argv, folder=None):
        stages.append(argv)
        raise _Stopped

    monkeypatch.setattr(audit_cli._Stages, "run", stop_at_train)
    with pytest.raises(_Stopped):
        main(AUDIT + ["--model", str(dp_target), "--device", "cpu", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    argv = stages[0]
    assert argv[0] == "shadows" and "--grad-clip" not in argv
    assert argv[argv.index("--dp-noise") + 1] == "0.9" and argv[argv.index("--dp-max-grad-norm") + 1] == "1.5"
    assert "--dp-no-poisson" in argv
    assert "DP-SGD: --dp-noise 0.9 --dp-max-grad-norm 1.5 --dp-no-poisson" in err and "do not copy" not in err
    assert "--flip" in argv and "--flip, " in err and "--flip True" not in err  # a switch said as it is written
    monkeypatch.undo()
    assert main(argv + ["--quiet"]) == 0
    dp = read_json(tmp_path / "a" / "models" / "model-01" / "result.json")["dp"]
    assert dp["noise_multiplier"] == 0.9 and dp["max_grad_norm"] == 1.5 and dp["poisson_sampling"] is False
    capsys.readouterr()  # resumed over these shadows (the unknown --device stops it after the checks): no warning
    main(AUDIT + ["--model", str(dp_target), "--device", "tpu9", "--out", str(tmp_path / "a")])
    assert "trained without DP-SGD" not in capsys.readouterr().err


def test_audit_refuses_training_flags_dp_sgd_does_not_use_for_its_shadows(dp_target, tmp_path, capsys):
    assert main(AUDIT + ["--model", str(dp_target), "--grad-clip", "2", "--device", "cpu", "--out", str(tmp_path / "a")]) == 2
    assert "--grad-clip: --model" in capsys.readouterr().err and not (tmp_path / "a").exists()


def test_shadows_an_earlier_version_trained_plainly_are_warned_of(dp_target, tmp_path, capsys):
    """An audit whose shadows of a DP-SGD --model were trained plainly (before this version) keeps them:
    said, with --fresh to train them again. (The unknown --device stops the audit before it trains.)"""
    out = tmp_path / "a"
    (out / "models").mkdir(parents=True)
    (out / "models" / "settings.json").write_text(json.dumps(settings_record("shadows", {"train": {"grad_clip": 1.0}})))
    main(AUDIT + ["--model", str(dp_target), "--device", "tpu9", "--out", str(out)])
    assert "trained without DP-SGD" in capsys.readouterr().err


def test_mia_of_a_target_trained_otherwise_than_its_shadows_says_so(matrix_file, tmp_path, capsys):
    """`mia --target` over shadows trained by hand: a plain target against DP-SGD shadows is warned of, recorded
    and said in the report; a target trained like them (the same DP-SGD, another seed) is not."""
    shadows_dir = tmp_path / "s"
    assert main(shadows(matrix_file, shadows_dir, "--dp-noise", "0.8", "--dp-no-poisson")) == 0
    common = ["--quiet", "train", "--data", "digits", "--subset", str(N), "--membership", str(matrix_file),
              "--model-index", "0", *TRAIN, "--seed", "7"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "alike"), "--dp-noise", "0.8", "--dp-no-poisson"]) == 0
    capsys.readouterr()
    for target, unlike in (("plain", ["DP-SGD: the shadows trained with it, the target without"]), ("alike", None)):
        out = tmp_path / f"mia-{target}"
        assert main(["--quiet", "mia", "--data", "digits", "--subset", str(N), "--shadows", str(shadows_dir), "--target",
                     str(tmp_path / target), "--attack", "lira-fixed", "--timesteps", "100", "--bootstrap", "0",
                     "--device", "cpu", "--out", str(out)]) == 0
        err = capsys.readouterr().err
        assert read_json(out / "result.json").get("unlike_shadows") == unlike
        assert ("trained otherwise than the shadows (DP-SGD: the shadows trained with it" in err) is bool(unlike), err
        text = visible_text(render_html(out))
        assert ("read the attacked model's losses against shadow models that trained otherwise" in text) is bool(unlike)
        assert "--flips queries each image flipped too" not in err
    # Strong LiRA flips its queries by default; these models trained without flips: said, and not with --no-flips
    strong = ["--quiet", "mia", "--data", "digits", "--subset", str(N), "--shadows", str(shadows_dir), "--target",
              str(tmp_path / "alike"), "--attack", "strong-lira-fixed", "--draws", "2", "--timesteps", "100",
              "--bootstrap", "0", "--device", "cpu"]
    assert main([*strong, "--out", str(tmp_path / "strong")]) == 0
    assert "--flips queries each image flipped too, but the models trained without flips" in capsys.readouterr().err
    assert main([*strong, "--no-flips", "--out", str(tmp_path / "strong-no-flips")]) == 0
    assert "--flips queries" not in capsys.readouterr().err
    # the same folder asked for a shadow as the target: refused by the flags, not as target.mode / target.index
    loss = ["--quiet", "mia", "--data", "digits", "--subset", str(N), "--shadows", str(shadows_dir), "--attack", "loss",
            "--timesteps", "100", "--bootstrap", "0", "--device", "cpu", "--out", str(tmp_path / "loss")]
    assert main([*loss[1:], "--target", str(tmp_path / "alike")]) == 0  # not quiet: one target scores one row an example
    assert f"mia: loss scored {N} examples in " in capsys.readouterr().err
    assert main([*loss, "--target-index", "0"]) == 2
    err = capsys.readouterr().err
    assert "--target-index (was None, now 0)" in err and "whom it attacks (--target, --target-index" in err
    assert "target.mode" not in err and "target.index" not in err
    from diffaudit.cli.mia import setting_flags  # the target's flags beside the others mia names, none hidden

    assert {"attack.n_draws", "attack.noise_seed", "membership.models", "target.index"} <= set(setting_flags(None))


def test_recipe_differences_name_each_flag_the_shadows_trained_otherwise_with(tmp_path):
    from diffaudit.models.recipe import recipe_differences, training_recipe

    plain = {"preset": "tiny", "steps": 150, "lr": 1e-3, "grad_clip": 1.0, "dp": None}
    dp = {**plain, "dp": {"noise_multiplier_used": 1.288, "max_grad_norm": 1.0, "poisson_sampling": True}}
    assert recipe_differences(plain, plain) == [] and recipe_differences(dp, dp) == []
    assert recipe_differences(plain, {**plain, "steps": 40, "lr": 2e-4}) == ["--steps 150 against 40", "--lr 0.001 against 0.0002"]
    assert recipe_differences(dp, plain) == ["DP-SGD: the target trained with it, the shadows without"]
    other = {**dp, "grad_clip": 5.0, "dp": {**dp["dp"], "noise_multiplier_used": 0.85}}  # --grad-clip: unused by DP-SGD
    assert recipe_differences(dp, other) == ["--dp-noise 1.288 against 0.85"]
    assert recipe_differences({"steps": 5, "dp": None}, {"lr": 1.0, "dp": None}) == []  # what one side records only
    assert training_recipe(tmp_path) is None  # a model trained elsewhere records none
    (tmp_path / "train_config.json").write_text(json.dumps({"steps": 3, "seed": 9, "dp": {"noise_multiplier_used": 0.5}}))
    assert training_recipe(tmp_path) == {"steps": 3, "dp": {"noise_multiplier_used": 0.5}}


def test_audit_refuses_a_dp_batch_above_a_shadows_images_before_recording(dp_target, tmp_path, capsys, monkeypatch):
    """The target's --batch-size, adopted, above the images the smallest shadow trains on: refused before the
    folder exists (the train stage refused it after recording, and the corrected re-run was then refused too),
    naming more images as the remedy; the pool advice names a pool that holds the target's training set."""
    config = json.loads((dp_target / "train_config.json").read_text())
    (dp_target / "train_config.json").write_text(json.dumps({**config, "batch_size": 20}))
    out = tmp_path / "a"
    assert main(AUDIT + ["--model", str(dp_target), "--device", "cpu", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--batch-size 20 (the one --model {dp_target} trained with) exceeds the" in err
    assert "give --data more images, about twice the target's training set" in err and not out.exists()
    (dp_target / "train_ids.json").write_text(json.dumps({"keys": load_dataset("digits", subset=N).keys[:4]}))
    monkeypatch.setattr(audit_cli._Stages, "run", _stop_at_a_stage)  # the checks done, before training
    with pytest.raises(_Stopped):
        main(AUDIT + ["--model", str(dp_target), "--batch-size", "4", "--device", "cpu", "--out", str(out)])
    assert "a pool about twice the target's training set that holds it" in capsys.readouterr().err


def test_the_epsilon_of_a_noise_free_shadow_reads_infinite(tmp_path):
    """--dp-noise 0 records no finite epsilon: the shadows table said "-" (not measured), where it is infinite."""
    from tests.test_report import _envelope

    models = [{"index": 0, "run": "model-00", "n_train": 12, "final_loss": 0.3, "seed": 1, "epsilon": None,
               "noise_multiplier": 0.0}]
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "result.json").write_text(json.dumps(_envelope(
        "shadows", {"data": {"spec": "digits"}, "dp": {"noise_multiplier": 0.0}}, {"seed": 0}, n_models=1, n_columns=2,
        n_examples=24, models=models)))
    section = visible_text(render_html(tmp_path / "s").split('<section id="shadows">')[1].split("</section>")[0])
    assert "infinite (no noise)" in section


def test_a_noise_free_setting_is_warned_of_once_for_all_the_shadows(matrix_file, tmp_path, capsys):
    """`shadows --dp-noise 0` printed "--dp-noise 0 adds no noise" once per shadow model; it is one setting of
    the command, said once."""
    assert main(shadows(matrix_file, tmp_path / "s", "--dp-noise", "0", "--dp-no-poisson")) == 0
    assert capsys.readouterr().err.count("--dp-noise 0 adds no noise") == 1
