"""End to end on digits: 4 tiny shadow models that memorize 20 images each, then `diffaudit mia`.

One module-scoped fixture trains the shadows through the CLI (in-process, ~25 s CPU); the tests
attack them with several attacks and target modes, sharing one loss cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.core.io import load_npy, read_json
from diffaudit.data import load_dataset, make_membership, save_membership

N, M, STEPS = 40, 4, 120
DATA = ["--data", "digits", "--subset", str(N)]


@pytest.fixture(scope="module")
def shadows(tmp_path_factory):
    root = tmp_path_factory.mktemp("mia")
    ds = load_dataset("digits", subset=N)
    matrix = make_membership(N, M, seed=3)
    save_membership(root / "membership.npz", matrix, ds.keys, 3)
    rc = main(["--quiet", "shadows", *DATA, "--membership", str(root / "membership.npz"), "--out", str(root / "shadows"),
               "--steps", str(STEPS), "--batch-size", "20", "--lr", "3e-3", "--warmup-steps", "10", "--ema-decay", "0.99",
               "--checkpoint-every", "100000", "--device", "cpu"])
    assert rc == 0
    yield root, matrix, ds


def mia(root: Path, out: str, *extra: str) -> tuple[int, Path]:
    dest = root / out
    rc = main(["--quiet", "mia", *DATA, "--shadows", str(root / "shadows"), "--out", str(dest), "--device", "cpu",
               "--loss-cache", str(root / "cache"), "--bootstrap", "30", *extra])
    return rc, dest


def test_shadows_folder(shadows):
    root, matrix, _ = shadows
    r = read_json(root / "shadows" / "result.json")
    assert r["command"] == "shadows" and r["n_models"] == M and r["n_columns"] == M
    for k in range(M):
        ids = read_json(root / "shadows" / f"model-{k:02d}" / "train_ids.json")
        assert ids["indices"] == np.flatnonzero(matrix[:, k]).tolist()
    seeds = {m["seed"] for m in r["models"]}
    assert len(seeds) == M  # every shadow has its own training seed
    assert (root / "shadows" / "membership.npz").exists()


def test_fixed_variance_lira_detects_members(shadows):
    root, matrix, _ = shadows
    rc, out = mia(root, "lira-fixed", "--attack", "lira-fixed", "--sweep", "10,100,1000")
    assert rc == 0
    r = read_json(out / "result.json")
    assert r["attack"] == "lira-fixed" and r["timesteps"] == [100]
    assert r["auc"] > 0.7  # leave-one-out over 4 models: 80 members, 80 non-members
    assert r["n_members"] == int(matrix.sum()) and r["n_nonmembers"] == matrix.size - int(matrix.sum())
    assert r["n_examples"] == N and r["rows"].startswith("one per (target model, example) pair")
    assert r["shadows_per_side"] == r["shadows_per_side_max"] == M // 2 - 1  # leave-one-out over 4 balanced models
    # 80 non-members cannot resolve an FPR of 1% or 0.1%: null, not 0
    assert r["tpr_at_fpr"] == {"0.01": None, "0.001": None}
    assert r["ci"]["auc"]["low"] <= r["auc"] <= r["ci"]["auc"]["high"]
    assert r["sweep"]["timesteps"] == [10, 100, 999]  # t = 1000 is the last step, 999
    assert r["balanced_accuracy"] >= 0.5
    assert "NaN" not in (out / "result.json").read_text()
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        assert z["score"].shape == (N * M,)
        np.testing.assert_array_equal(z["member"], matrix.T.reshape(-1))
        assert z["id"][0] == "digits:" + z["id"][0].split(":")[1]
        assert z["sweep_scores"].shape == (3, N * M)
    for png in ("roc.png", "sweep.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_sweep_scores_the_attacks_own_timestep_too(shadows):
    """--timesteps 100 --sweep 10,500: the sweep also holds t = 100 (its losses are computed anyway), scored as the
    attack itself, so the sweep's best t is one among every t measured (it was 10 or 500 whatever t = 100 gave)."""
    root, _, _ = shadows
    rc, out = mia(root, "loss-sweep", "--attack", "loss", "--sweep", "10,500")
    assert rc == 0
    r = read_json(out / "result.json")
    assert r["sweep"]["timesteps"] == [10, 100, 500] and r["settings"]["attack"]["sweep"] == [10, 500]
    assert r["sweep"]["auc"][1] == pytest.approx(r["auc"])
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["sweep_scores"][1], z["score"])


def test_loss_attack_direction_and_cache_reuse(shadows, monkeypatch):
    root, matrix, _ = shadows
    rc, out = mia(root, "loss", "--attack", "loss")
    assert rc == 0
    r = read_json(out / "result.json")
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        score, member, ex, model = z["score"], z["member"], z["example_index"], z["model_index"]
    # score = -loss of the attacked model at t = 100 (larger = lower loss = more likely a member)
    cached = {}
    for folder in (root / "cache").glob("model-*"):
        cached[folder.name.split("-")[1]] = load_npy(next(folder.glob("t0100-d001-*.npy")))[:, 0]
    for k in range(M):
        rows = model == k
        np.testing.assert_allclose(score[rows], -cached[f"{k:02d}"][ex[rows]])
    assert score[member].mean() > score[~member].mean()
    assert r["auc"] > 0.6 and r["score_direction"].startswith("larger")
    # the targets' mean losses: members', non-members' (held out: the model's quality), and their gap
    loss = r["mean_loss"]
    assert loss["members"] == pytest.approx(-score[member].mean()) and loss["nonmembers"] == pytest.approx(-score[~member].mean())
    assert loss["gap"] == pytest.approx(loss["nonmembers"] - loss["members"]) and loss["gap"] > 0
    # another attack on the same models records the same targets' losses
    lira = read_json(mia(root, "lira-loss", "--attack", "lira-fixed")[1] / "result.json")["mean_loss"]
    assert lira == pytest.approx(loss)

    # another attack on the same models reads every loss from the shared cache
    def no_forward(*a, **k):
        raise AssertionError("losses should come from the cache")

    monkeypatch.setattr("diffaudit.attacks.membership.loss_cache.per_example_loss", no_forward)
    rc, out = mia(root, "cached", "--attack", "lira")
    assert rc == 0 and read_json(out / "result.json")["attack"] == "lira"


def test_losses_read_from_the_cache_are_said_to_be(shadows, capsys):
    """A second attack on the same models computes nothing: each model's line says its losses came from the cache
    (a resumed run read as one that did nothing before)."""
    root, _, _ = shadows
    assert mia(root, "first", "--attack", "lira-fixed")[0] == 0
    capsys.readouterr()
    assert main(["mia", *DATA, "--shadows", str(root / "shadows"), "--out", str(root / "said"), "--device", "cpu",
                 "--loss-cache", str(root / "cache"), "--bootstrap", "30", "--attack", "lira"]) == 0
    err = capsys.readouterr().err
    assert err.count("read from the cache") == M and "mia: losses of model-00 at t=[100] read from the cache" in err


def test_target_modes(shadows):
    root, matrix, _ = shadows
    rc, out = mia(root, "idx", "--attack", "lira-fixed", "--target-index", "1")
    assert rc == 0
    r = read_json(out / "result.json")
    assert r["n_members"] + r["n_nonmembers"] == N and r["target"]["mode"] == "shadow"
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["member"], matrix[:, 1])
        idx_scores = z["score"]
    # a separate target run (here the folder of model 1 itself): members from its train_ids.json
    rc, out = mia(root, "sep", "--attack", "loss", "--target", str(root / "shadows" / "model-01"))
    assert rc == 0
    with np.load(out / "scores.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["member"], matrix[:, 1])
        assert (z["model_index"] == -1).all()
    assert np.isfinite(idx_scores).all()


def test_resume_and_settings_mismatch(shadows, capsys):
    root, _, _ = shadows
    rc, out = mia(root, "resume", "--attack", "lira-offline-fixed")
    assert rc == 0
    before = (out / "result.json").stat().st_mtime_ns
    rc, _ = mia(root, "resume", "--attack", "lira-offline-fixed")
    assert rc == 0 and (out / "result.json").stat().st_mtime_ns == before  # finished work is not redone
    capsys.readouterr()
    rc, _ = mia(root, "resume", "--attack", "lira")
    assert rc == 2
    err = capsys.readouterr().err
    assert "--attack (was 'lira-offline-fixed', now 'lira')" in err and "attack.attack" not in err  # named by its flag
    rc, _ = mia(root, "resume", "--attack", "lira-offline-fixed", "--timesteps", "50")
    assert rc == 2 and "--timesteps (was" in capsys.readouterr().err
    # pooled timesteps in another order are the same attack (was refused: "was [10, 100], now [100, 10]"), also in
    # a folder an earlier version wrote, which kept the order given
    rc, two = mia(root, "two", "--attack", "lira-offline-fixed", "--timesteps", "100,10")
    assert rc == 0 and read_json(two / "settings.json")["settings"]["attack"]["timesteps"] == [10, 100]
    stamp = (two / "result.json").stat().st_mtime_ns
    assert mia(root, "two", "--attack", "lira-offline-fixed", "--timesteps", "10,100")[0] == 0
    record = read_json(two / "settings.json")
    record["settings"]["attack"]["timesteps"] = [100, 10]
    (two / "settings.json").write_text(json.dumps(record))
    assert mia(root, "two", "--attack", "lira-offline-fixed", "--timesteps", "10,100")[0] == 0
    assert (two / "result.json").stat().st_mtime_ns == stamp


def test_resume_refuses_shadows_retrained_in_place(shadows, tmp_path, capsys):
    """A finished mia folder records its shadows' weights: a shadow retrained (or replaced) at the same
    path is a settings mismatch, not a stale result reported as finished."""
    import shutil

    root, _, _ = shadows
    copy = tmp_path / "shadows"
    shutil.copytree(root / "shadows", copy)
    args = ["--quiet", "mia", *DATA, "--shadows", str(copy), "--out", str(tmp_path / "m"), "--device", "cpu",
            "--loss-cache", str(root / "cache"), "--attack", "loss", "--bootstrap", "20"]
    assert main(args) == 0
    assert main(args) == 0  # unchanged: finished
    weights = sorted((copy / "model-01").rglob("*.safetensors"))
    assert weights
    for w in weights:  # model 1's weights now those of model 2
        shutil.copyfile(copy / "model-02" / w.relative_to(copy / "model-01"), w)
    capsys.readouterr()
    assert main(args) == 2
    assert "the contents of --shadows (model-01)" in capsys.readouterr().err  # named by its flag, not its key


def test_user_errors_name_the_thing(shadows, capsys, tmp_path):
    root, _, _ = shadows
    rc, _ = mia(root, "err1", "--models", "9")
    assert rc == 2 and "--models" in capsys.readouterr().err
    rc = main(["--quiet", "mia", *DATA, "--shadows", str(tmp_path / "none"), "--membership", str(root / "membership.npz"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and f"--shadows {tmp_path / 'none'} does not exist" in capsys.readouterr().err
    (tmp_path / "none").mkdir()
    rc = main(["--quiet", "mia", *DATA, "--shadows", str(tmp_path / "none"), "--membership", str(root / "membership.npz"),
               "--out", str(tmp_path / "o")])
    assert rc == 2 and "shadow model 0 (" in capsys.readouterr().err  # an empty folder: not yet trained
    rc, _ = mia(root, "err3", "--timesteps", "1000")
    assert rc == 2 and "--timesteps" in capsys.readouterr().err
    rc, _ = mia(root, "err3b", "--sweep", "100,5000")  # was: taken as 999 without a word
    assert rc == 2 and "--sweep 5000: beyond the model's 1000 timesteps (T = 1000 itself means the last one, 999)" \
        in capsys.readouterr().err
    rc, _ = mia(root, "err4", "--timesteps", ",")
    assert rc == 2 and "at least one timestep" in capsys.readouterr().err
    rc, _ = mia(root, "err5", "--attack", "lira", "--draws", "4")  # was: silently Strong LiRA on averaged losses
    assert rc == 2 and "one query per example" in capsys.readouterr().err
    rc, _ = mia(root, "err6", "--attack", "lira-fixed", "--flips")
    assert rc == 2 and "strong-lira" in capsys.readouterr().err
    rc, _ = mia(root, "err7", "--attack", "lira", "--models", "2")  # the target and one shadow: never IN and OUT
    assert rc == 2 and "at least 2 shadow models" in capsys.readouterr().err
    rc, _ = mia(root, "err8", "--attack", "lira", "--target", str(root / "shadows" / "model-01"))
    assert rc == 2 and "is one of the shadows" in capsys.readouterr().err


def test_inputs_the_shadows_were_not_trained_on_are_refused(shadows, capsys, tmp_path):
    """Members are labelled by key: another matrix, other pixels under the same keys, or a copy of a
    shadow as the target would each give a wrong AUC without an error."""
    import shutil

    root, matrix, ds = shadows
    other = make_membership(N, M, seed=4)
    assert (other != matrix).any()
    save_membership(tmp_path / "other.npz", other, ds.keys, 4)
    capsys.readouterr()
    rc, _ = mia(root, "wrong-matrix", "--attack", "loss", "--membership", str(tmp_path / "other.npz"))
    assert rc == 2 and "column 0 of the membership matrix" in capsys.readouterr().err
    # the same keys over other pixels: digits scaled to 16x16 are not even the shadows' size, and the
    # centre 6x6 scaled back to 8x8 is their size but not what they saw
    for name, options, message in [("wrong-size", ["--image-size", "16"], "takes 8x8 images with 1 channel(s)"),
                                   ("wrong-pixels", ["--center-crop", "6", "--image-size", "8"], "trained on other pixels")]:
        rc = main(["--quiet", "mia", *DATA, *options, "--shadows", str(root / "shadows"), "--attack", "loss",
                   "--out", str(tmp_path / name), "--device", "cpu", "--loss-cache", str(tmp_path / "cache")])
        assert rc == 2 and message in capsys.readouterr().err
    copy = tmp_path / "copy-of-model-01"
    shutil.copytree(root / "shadows" / "model-01", copy)
    rc, _ = mia(root, "copy", "--attack", "lira", "--target", str(copy))
    assert rc == 2 and "has the same weights as the shadow" in capsys.readouterr().err
    assert not list((tmp_path / "cache").glob("*/*.npy"))  # refused before any loss was computed
    # a --target whose recorded training pixels differ from --data's: refused before any shadow's loss
    other_target = tmp_path / "other-target"
    shutil.copytree(root / "shadows" / "model-01", other_target)
    (other_target / "unet" / "config.json").write_text((other_target / "unet" / "config.json").read_text() + "\n")  # other digest
    result = json.loads((other_target / "result.json").read_text())
    result["training_digests"]["images"] = "0" * 16
    (other_target / "result.json").write_text(json.dumps(result))
    rc = main(["--quiet", "mia", *DATA, "--shadows", str(root / "shadows"), "--attack", "lira", "--target", str(other_target),
               "--out", str(tmp_path / "other-target-out"), "--device", "cpu", "--loss-cache", str(tmp_path / "cache2")])
    assert rc == 2 and "trained on other pixels" in capsys.readouterr().err
    assert not list((tmp_path / "cache2").glob("*/*.npy"))


def test_result_is_valid_json_without_nan(shadows):
    root, _, _ = shadows
    rc, out = mia(root, "strong", "--attack", "strong-lira-fixed", "--draws", "3", "--flips")
    assert rc == 0
    r = json.loads((out / "result.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in result.json"))
    assert r["n_draws"] == 3 and r["flips"] and r["queries_per_timestep"] == 6
    assert r["strong_aggregate"] == "sum-llr"
    assert r["auc"] > 0.6


def test_strong_lira_defaults_use_draws_and_flips(shadows):
    """strong-lira with no flags: 20 draws and their flips (40 queries), per-query log-ratios summed;
    --strong-aggregate mean-loss is another score."""
    root, _, _ = shadows
    rc, out = mia(root, "strong-default", "--attack", "strong-lira")
    assert rc == 0
    r = read_json(out / "result.json")
    assert (r["n_draws"], r["flips"], r["queries_per_timestep"], r["strong_aggregate"]) == (20, True, 40, "sum-llr")
    rc, out_mean = mia(root, "strong-mean", "--attack", "strong-lira", "--strong-aggregate", "mean-loss", "--no-flips")
    assert rc == 0
    r = read_json(out_mean / "result.json")
    assert (r["flips"], r["queries_per_timestep"], r["strong_aggregate"]) == (False, 20, "mean-loss")


def test_killed_mia_resumes_to_the_same_scores(shadows):
    import os
    import signal
    import subprocess
    import sys

    root, _, _ = shadows
    common = ["mia", *DATA, "--shadows", str(root / "shadows"), "--device", "cpu", "--attack", "lira-fixed", "--bootstrap", "20"]
    assert main(["--quiet", *common, "--out", str(root / "straight")]) == 0
    env = dict(os.environ, DIFFAUDIT_KILL_AT="mia.model_losses:2", OMP_NUM_THREADS="1", DIFFAUDIT_QUIET="1")
    proc = subprocess.run([sys.executable, "-m", "diffaudit.cli.main", *common, "--out", str(root / "killed")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (root / "killed" / "result.json").exists()
    assert len(list((root / "killed" / "losses").glob("model-*/*.npy"))) == 2  # two models' losses kept
    assert main(["--quiet", *common, "--out", str(root / "killed")]) == 0
    a, b = read_json(root / "straight" / "result.json"), read_json(root / "killed" / "result.json")
    for key in ("auc", "tpr_at_fpr", "balanced_accuracy", "ci", "n_members"):
        assert a[key] == b[key]
    with np.load(root / "straight" / "scores.npz") as za, np.load(root / "killed" / "scores.npz") as zb:
        np.testing.assert_array_equal(za["score"], zb["score"])


def test_full_disk_is_a_clear_error(shadows, monkeypatch, capsys):
    root, _, _ = shadows
    monkeypatch.setenv("DIFFAUDIT_STORAGE_FAULT", "ENOSPC")
    rc, out = mia(root, "full", "--attack", "loss")
    assert rc == 2
    err = capsys.readouterr().err
    assert "could not write" in err and "No space left" in err and "Free space" in err
    assert not (out / "result.json").exists()


def test_target_trained_on_every_example_is_refused_before_any_loss(shadows, tmp_path, capsys):
    """A --target whose train_ids.json covers every example of --data leaves no non-members: refused
    before any model's loss is computed and before the output folder is made (it used to fail in the
    evaluation, after every loss, with settings.json left behind)."""
    root, _, _ = shadows
    target = tmp_path / "target-all"
    assert main(["--quiet", "train", *DATA, "--preset", "tiny", "--batch-size", "8", "--steps", "2", "--warmup-steps", "1",
                 "--checkpoint-every", "2", "--device", "cpu", "--out", str(target)]) == 0
    out, cache = tmp_path / "out", tmp_path / "cache"
    capsys.readouterr()
    rc = main(["--quiet", "mia", *DATA, "--shadows", str(root / "shadows"), "--attack", "lira", "--target", str(target),
               "--out", str(out), "--device", "cpu", "--loss-cache", str(cache)])
    err = capsys.readouterr().err
    assert rc == 2 and f"--target {target}" in err and f"{N} members and 0 non-members" in err
    assert "examples it did not" in err and "Traceback" not in err
    assert not out.exists() and not list(cache.rglob("*.npy"))


def test_a_target_built_unlike_the_shadows_is_refused_before_any_loss(shadows, capsys, tmp_path):
    """LiRA compares the target's loss with the shadows' on the same x_t: a class-conditional target
    (its loss taken with labels) or one with another noise schedule gave an AUC of another question."""
    import json
    import shutil

    root, _, _ = shadows
    for name, folder, change, message in [
        ("conditional", "unet/config.json", {"num_class_embeds": 10}, "is unconditional but --target"),
        ("cosine", "scheduler/scheduler_config.json", {"beta_schedule": "squaredcos_cap_v2"}, "another noise schedule"),
    ]:
        target = tmp_path / name
        shutil.copytree(root / "shadows" / "model-01", target)
        path = target / folder
        path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
        capsys.readouterr()
        rc = main(["--quiet", "mia", *DATA, "--shadows", str(root / "shadows"), "--models", "2", "--attack", "lira-fixed",
                   "--target", str(target), "--out", str(tmp_path / f"out-{name}"), "--device", "cpu",
                   "--loss-cache", str(tmp_path / "cache")])
        assert rc == 2 and message in capsys.readouterr().err
        assert not (tmp_path / f"out-{name}").exists()  # refused before the output folder
    assert not list((tmp_path / "cache").glob("*/*.npy"))


def test_per_example_variance_from_few_shadows_is_warned_about(shadows, capsys):
    root, _, _ = shadows
    capsys.readouterr()
    rc, out = mia(root, "lira-few", "--attack", "lira")
    assert rc == 0 and read_json(out / "result.json")["shadows_per_side"] == 1
    err = capsys.readouterr().err
    assert "lira fits a variance per example only from 2 or more IN and OUT shadows" in err
    assert "here as few as 1 a side) take the pooled variance of lira-fixed" in err
    rc, fixed = mia(root, "lira-fixed-few", "--attack", "lira-fixed")
    assert rc == 0 and "warning" not in capsys.readouterr().err  # one variance for all examples
    with np.load(out / "scores.npz") as a, np.load(fixed / "scores.npz") as b:  # as the warning says
        np.testing.assert_array_equal(a["score"], b["score"])


def test_the_loss_attack_on_one_target_needs_no_shadows(shadows, tmp_path, capsys):
    root, matrix, _ = shadows
    target = root / "shadows" / "model-00"
    args = ["--quiet", "mia", *DATA, "--target", str(target), "--device", "cpu", "--bootstrap", "0"]
    assert main([*args, "--attack", "loss", "--out", str(tmp_path / "alone")]) == 0
    r = read_json(tmp_path / "alone" / "result.json")
    assert r["n_models"] == 0 and r["settings"]["shadows"] is None and r["settings"]["membership"] is None
    assert (r["n_members"], r["n_nonmembers"]) == (int(matrix[:, 0].sum()), N - int(matrix[:, 0].sum()))
    # the same scores as the loss attack on that model as shadow 0 of its folder: -loss, shadows unread
    rc, beside = mia(root, "loss-index-0", "--attack", "loss", "--target-index", "0")
    assert rc == 0
    with np.load(tmp_path / "alone" / "scores.npz") as a, np.load(beside / "scores.npz") as b:
        np.testing.assert_array_equal(a["member"], matrix[:, 0])
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6)
    assert main(["--quiet", "report", str(tmp_path / "alone")]) == 0  # no shadows in its settings: still rendered
    assert "AUC" in (tmp_path / "alone" / "report.html").read_text(encoding="utf-8")
    capsys.readouterr()
    for extra, message in ((["--attack", "lira"], "--shadows is required for --attack lira"),
                           (["--attack", "loss", "--models", "2"], "--models names the shadow models of --shadows"),
                           (["--attack", "loss", "--membership", str(root / "membership.npz")], "--membership names")):
        assert main([*args, *extra, "--out", str(tmp_path / "refused")]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "refused").exists()
    assert main(["--quiet", "mia", *DATA, "--out", str(tmp_path / "refused")]) == 2
    assert "`diffaudit mia --target RUN --attack loss`" in capsys.readouterr().err


def test_refusals_come_before_any_work_and_name_the_cause(shadows, tmp_path, capsys):
    root, matrix, ds = shadows
    base = ["--quiet", "mia", *DATA, "--device", "cpu", "--out", str(tmp_path / "m")]
    capsys.readouterr()
    assert main([*base, "--shadows", str(tmp_path / "nonexist")]) == 2
    assert f"--shadows {tmp_path / 'nonexist'} does not exist (expected the folder of `diffaudit shadows`" in capsys.readouterr().err
    # fewer than 2 shadows besides each target: refused before the few-shadows warning and the folder
    assert main([*base, "--shadows", str(root / "shadows"), "--models", "2", "--attack", "lira-offline"]) == 2
    err = capsys.readouterr().err
    assert "needs at least 2 shadow models besides the target; got 1 (2 models, the target among them)" in err
    assert "warning" not in err and not (tmp_path / "m").exists()
    for few in ("1", "2", "19"):  # read with the command line, before any loss: too few to place a 95% interval
        with pytest.raises(SystemExit):
            main([*base, "--shadows", str(root / "shadows"), "--bootstrap", few])
        assert "--bootstrap: must be 0 (no intervals) or in [20, 100,000] (the default is 200" in capsys.readouterr().err
    # a matrix of more columns than the folder's models
    wide = make_membership(N, 6, seed=3)
    save_membership(tmp_path / "wide.npz", wide, ds.keys, 3)
    assert main([*base, "--shadows", str(root / "shadows"), "--membership", str(tmp_path / "wide.npz")]) == 2
    err = capsys.readouterr().err
    assert f"the membership matrix has 6 columns, but {root / 'shadows'} holds 4 shadow models: pass --models 4" in err
    # options the attack has no use for would run as if not given: refused
    for attack, flag, says in (("loss", ["--transform", "none"], "--transform is for the LiRA attacks"),
                               ("lira", ["--strong-aggregate", "mean-loss"], "--attack lira uses one query per example")):
        assert main([*base, "--shadows", str(root / "shadows"), "--attack", attack, *flag]) == 2
        assert says in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_the_result_line_says_when_the_attack_is_indistinguishable_from_guessing():
    from diffaudit.cli.mia import _summary

    r = {"attack": "loss", "auc": 0.6944, "tpr_at_fpr": {"0.01": None, "0.001": None}, "n_members": 3, "n_nonmembers": 3,
         "ci": {"auc": {"low": 0.333, "high": 1.0, "level": 0.95}}}
    assert _summary(r).endswith("; indistinguishable from guessing: the AUC's interval [0.333, 1.000] holds 0.5")
    r["ci"]["auc"] = {"low": 0.71, "high": 0.8, "level": 0.95}
    assert "guessing" not in _summary(r)
    del r["ci"]
    assert "guessing" not in _summary(r)  # --bootstrap 0: no interval, nothing claimed
    r["mean_loss"] = {"members": 0.03125, "nonmembers": 0.046875, "gap": 0.015625}  # the targets' losses, when recorded
    assert _summary(r).endswith("non-members); mean loss 0.03125 on members, 0.04688 held out")


def test_a_folder_of_models_or_results_given_as_a_model_says_what_it_is(shadows):
    """Not "no UNet found": the folder of `shadows` names its models, another command's folder says it holds none."""
    from diffaudit.models.denoiser import read_unet_config

    root, _, _ = shadows
    with pytest.raises(DiffauditError, match=r"the folder of `diffaudit shadows`, not one model; pass one of its models: "
                                             r".*model-00, .*model-01, .*model-02, \.\.\."):
        read_unet_config(root / "shadows")
    rc, out = mia(root, "named", "--attack", "loss")
    assert rc == 0
    with pytest.raises(DiffauditError, match=r"named: the output folder of `diffaudit mia`, which holds no model"):
        read_unet_config(out, flag="--target")


def test_a_model_killed_part_way_through_its_losses_resumes_from_its_last_part(shadows, tmp_path, monkeypatch):
    """One model's losses are saved in parts as they are computed: a run killed after the first part
    computes only the rest when resumed, and ends with the losses of an uninterrupted run, bit for bit."""
    from diffaudit.attacks.membership import loss_cache

    root, _, ds = shadows
    model = root / "shadows" / "model-01"
    kw = dict(timesteps=[50, 100], n_draws=2, flips=True, noise_seed=3, batch_size=4, device="cpu", name="model-01")
    monkeypatch.setattr(loss_cache, "PART_ROWS", 6)  # whole batches: parts of 8 examples
    straight = loss_cache.cached_model_losses(model, ds, cache_dir=tmp_path / "straight", **kw)

    def killed(name):
        if name == "mia.loss_part":
            raise KeyboardInterrupt

    monkeypatch.setattr(loss_cache, "fault_point", killed)
    with pytest.raises(KeyboardInterrupt):
        loss_cache.cached_model_losses(model, ds, cache_dir=tmp_path / "killed", **kw)
    parts = list((tmp_path / "killed").glob("model-01-*/parts-t50_100-d2-f1-s3-fp32/rows-*.npy"))
    assert [p.name for p in parts] == ["rows-000000000-000000008.npy"]
    monkeypatch.setattr(loss_cache, "fault_point", lambda name: None)
    computed = []
    real = loss_cache.per_example_loss

    def counting(den, images, **k):
        computed.append(len(images))
        return real(den, images, **k)

    monkeypatch.setattr(loss_cache, "per_example_loss", counting)
    resumed = loss_cache.cached_model_losses(model, ds, cache_dir=tmp_path / "killed", **kw)
    assert sum(computed) == len(ds) - 8  # the first part was read, not computed again
    np.testing.assert_array_equal(resumed, straight)
    assert resumed.shape == (len(ds), 2, 4)
    assert not list((tmp_path / "killed").glob("model-01-*/parts-*"))  # parts go once the arrays are written


def test_the_loss_line_counts_every_timestep_as_queries(shadows, tmp_path, capsys):
    """Two timesteps of 4 queries each (2 noise draws, flipped too) are 8 forward passes per example: the line
    says both factors, as the forward passes per second it reports count them."""
    root, _, _ = shadows
    capsys.readouterr()
    assert main(["mia", *DATA, "--shadows", str(root / "shadows"), "--models", "4", "--attack", "strong-lira-fixed",
                 "--draws", "2", "--timesteps", "10,50", "--device", "cpu", "--bootstrap", "0",
                 "--loss-cache", str(tmp_path / "cache"), "--out", str(tmp_path / "m")]) == 0
    assert f"at t=[10, 50] ({N} examples x 2 timesteps x 4 queries each)" in capsys.readouterr().err


def test_the_result_line_prints_rates_as_the_report_does():
    """73 of 400 members at 1% FPR: the line and the report both say 18.2% (the line said 18.25%), and a rate
    below 1% keeps two significant digits in both."""
    from diffaudit.cli.mia import _summary
    from diffaudit.report.fmt import fmt_pct

    line = _summary({"attack": "lira", "auc": 0.729, "tpr_at_fpr": {"0.01": 73 / 400, "0.001": 0.0025},
                     "n_members": 400, "n_nonmembers": 400})
    assert "TPR 18.2% at 1% FPR, 0.25% at 0.1% FPR" in line and fmt_pct(73 / 400) == "18.2%"
