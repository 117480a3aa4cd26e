"""The inpainting attack: loss-ratio scoring (known answers with stub models), top-k selection, a tiny
model that memorized one digit, and the `diffaudit inpaint` command (result, resume, errors)."""

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from diffaudit.attacks.inpainting import (
    InpaintAttackConfig, denoising_loss, inpaint_targets, loss_ratio, rms_l2, score_inpaintings, score_noise,
    score_target, summarize,
)
from diffaudit.cli.common import audit_stage
from diffaudit.cli.inpaint import assign_shadows, select_targets
from diffaudit.cli.main import main
from diffaudit.core.errors import DiffauditError
from diffaudit.data import make_membership, save_membership
from diffaudit.data.dataset import ImageDataset
from diffaudit.models.denoiser import load_denoiser
from diffaudit.models.scheduler import alphas_cumprod_of, make_scheduler
from diffaudit.models.training import TrainConfig, train
from diffaudit.sampling.masks import make_mask

AB = alphas_cumprod_of(make_scheduler())



# ---------------------------------------------------------------- scoring with stub models

def test_loss_ratio_divides_per_example_with_identical_noise():
    images = torch.linspace(-1, 1, 3 * 2 * 4 * 4).reshape(3, 2, 4, 4)
    noise = score_noise(0, 9, 4, (2, 4, 4))
    seen = {"target": [], "shadow": []}

    def target(x_t, t, labels=None):  # ε̂ = 0.5 x_t
        seen["target"].append(x_t.clone())
        return 0.5 * x_t

    def shadow(x_t, t, labels=None):  # ε̂ = −x_t + 0.1
        seen["shadow"].append(x_t.clone())
        return -x_t + 0.1

    s = score_inpaintings(target, shadow, images, alphas_cumprod=AB, noise=noise, timestep=100, micro_batch=5)
    ab = float(AB[100])
    x_t = ab ** 0.5 * images[:, None] + (1 - ab) ** 0.5 * noise[None]  # (B, D, C, H, W)
    lt = ((noise[None] - 0.5 * x_t) ** 2).flatten(2).mean(2).mean(1).double().numpy()
    ls = ((noise[None] - (-x_t + 0.1)) ** 2).flatten(2).mean(2).mean(1).double().numpy()
    np.testing.assert_allclose(s.target_loss, lt, rtol=1e-5)
    np.testing.assert_allclose(s.shadow_loss, ls, rtol=1e-5)
    np.testing.assert_allclose(s.ratio, lt / ls, rtol=1e-5)  # per example, not a ratio of means
    assert len(set(np.round(s.ratio, 6))) == 3
    assert torch.equal(torch.cat(seen["target"]), torch.cat(seen["shadow"]))  # both models saw the same x_t


def test_score_noise_is_seeded_per_target():
    a = score_noise(0, 1, 4, (1, 8, 8))
    assert a.shape == (4, 1, 8, 8) and torch.equal(a, score_noise(0, 1, 4, (1, 8, 8)))
    assert not torch.equal(a, score_noise(0, 2, 4, (1, 8, 8))) and not torch.equal(a, score_noise(1, 1, 4, (1, 8, 8)))
    assert torch.equal(score_noise(0, 1, 2, (1, 8, 8)), a[:2])  # more draws extend, never change, the first ones
    with pytest.raises(DiffauditError, match="--n-draws"):
        score_noise(0, 1, 0, (1, 8, 8))


def test_loss_ratio_and_loss_errors():
    np.testing.assert_allclose(loss_ratio([1.0, 2.0, 3.0], [2.0, 4.0, 1.0]), [0.5, 0.5, 3.0])
    with pytest.raises(DiffauditError, match="zero or negative"):
        loss_ratio([1.0], [0.0])
    with pytest.raises(DiffauditError, match="--timestep"):
        denoising_loss(lambda x, t, l=None: x, torch.zeros(1, 1, 4, 4), alphas_cumprod=AB, timestep=1000,
                       noise=torch.zeros(1, 1, 4, 4))
    # micro_batch 0 (or None) means every row at once, as in the sampler: never an unfilled buffer
    x = torch.linspace(-1, 1, 3 * 16).reshape(3, 1, 4, 4)
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    kw = dict(alphas_cumprod=AB, timestep=100, noise=noise)
    ref = denoising_loss(lambda x, t, l=None: 0.5 * x, x, micro_batch=1, **kw)
    for mb in (0, None, 4, 1024):
        np.testing.assert_allclose(denoising_loss(lambda x, t, l=None: 0.5 * x, x, micro_batch=mb, **kw), ref)


def test_ranking_keeps_the_inpaintings_the_target_model_denoises_best():
    """Known answer: a target that is the exact denoiser of the original ranks inpaintings by distance."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    noise_levels = np.arange(12) * 6
    inps = np.clip(original[None].astype(int) + rng.choice([-1, 1], (12, 8, 8, 1)) * noise_levels[:, None, None, None], 0, 255).astype(np.uint8)
    inps = inps[rng.permutation(12)]
    x_star = torch.as_tensor(original).permute(2, 0, 1)[None].float() / 127.5 - 1

    def target(x_t, t, labels=None):
        ab = AB.float()[t][:, None, None, None]
        return (x_t - ab.sqrt() * x_star) / (1 - ab).sqrt()

    shadow = lambda x_t, t, labels=None: torch.zeros_like(x_t)  # noqa: E731  loss = mean(ε²): the same for all
    cfg = InpaintAttackConfig(n_inpaint=12, top_k=4)
    res, kept = score_target(target, shadow, original, inps, target_index=3, key="k3", member=True, mask_name="left",
                             shadow_name="s", config=cfg, alphas_cumprod=AB)
    d = rms_l2(inps, original)
    assert res.top_inpaintings == list(np.argsort(d)[:4])
    np.testing.assert_allclose(res.top_l2, np.sort(d)[:4])
    assert res.top1_l2 == res.best_l2 == res.oracle_best_l2 == pytest.approx(d.min())
    assert res.mean_topk_l2 == pytest.approx(np.sort(d)[:4].mean()) and res.mean_l2 == pytest.approx(d.mean())
    assert res.top_loss_ratios == sorted(res.top_loss_ratios)
    assert np.array_equal(kept, inps[res.top_inpaintings])


def test_config_validation():
    with pytest.raises(DiffauditError, match="--top-k"):
        InpaintAttackConfig(n_inpaint=5, top_k=10).validate()
    with pytest.raises(DiffauditError, match="--n-draws"):
        InpaintAttackConfig(n_draws=0).validate()
    with pytest.raises(DiffauditError, match="--jump-length"):
        InpaintAttackConfig(jump_length=0).validate()
    for eta in (-0.1, 1.5):
        with pytest.raises(DiffauditError, match="--eta must lie in"):
            InpaintAttackConfig(eta=eta).validate()


# ---------------------------------------------------------------- a tiny model that memorized one digit

MEMBER, UNSEEN_SAME_CLASS, UNSEEN_OTHER, SHADOW_IMAGE = 0, 10, 1, 2  # digits 0, 0, 1, 2


@pytest.fixture(scope="module")
def runs(tmp_path_factory, digits):
    """Target: the tiny preset trained 150 steps on digit 0 alone. Shadow: 60 steps on digit 2 alone."""
    root = tmp_path_factory.mktemp("inpaint-runs")
    common = dict(preset="tiny", batch_size=16, lr=2e-3, warmup_steps=20, ema_decay=0.99, checkpoint_every=10_000)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DIFFAUDIT_QUIET", "1")
        target = train(digits, TrainConfig(steps=150, seed=0, **common), root / "target", train_indices=[MEMBER])
        shadow = train(digits, TrainConfig(steps=60, seed=1, **common), root / "shadow", train_indices=[SHADOW_IMAGE])
    return target, shadow


def test_memorized_digit_is_reconstructed_closer_than_unseen_ones(runs, digits):
    target, shadow = (load_denoiser(r) for r in runs)
    cfg = InpaintAttackConfig(n_inpaint=12, top_k=4, steps=20, jump_length=5, jump_n_sample=2, seed=0)
    idx = [MEMBER, UNSEEN_SAME_CLASS, UNSEEN_OTHER]
    mask = make_mask("left", 8, 8)
    inps = inpaint_targets(target, digits.images[idx], mask, target_indices=idx, config=cfg, alphas_cumprod=target.alphas_cumprod)
    assert inps.shape == (3, 12, 8, 8, 1) and inps.dtype == np.uint8
    known = mask.astype(bool)
    assert (inps[:, :, known] == digits.images[idx][:, None][:, :, known]).all()  # known half kept exactly
    res = [score_target(target, shadow, digits.images[i], inps[n], target_index=i, key=digits.keys[i], member=i == MEMBER,
                        mask_name="left", shadow_name="shadow", config=cfg, alphas_cumprod=target.alphas_cumprod)[0]
           for n, i in enumerate(idx)]
    member, same_class, other = res
    assert member.mean_topk_l2 < 0.06  # a near-copy (paper: < 0.05 is near pixel-perfect)
    assert member.mean_topk_l2 < 0.5 * same_class.mean_topk_l2
    assert member.mean_topk_l2 < 0.5 * other.mean_topk_l2
    s = summarize(res)
    assert s["n_members"] == 1 and s["n_nonmembers"] == 2
    assert s["mean_topk_l2"]["members"]["mean"] < s["mean_topk_l2"]["nonmembers"]["median"]


# ---------------------------------------------------------------- the command

def _cli(runs, out, *extra):
    target, shadow = runs
    return main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits",
                 "--target-keys", "digits:0,digits:10,digits:1", "--n-inpaint", "8", "--top-k", "3", "--steps", "10",
                 "--jump-length", "5", "--batch-size", "16", "--device", "cpu", "--out", str(out), *extra])


def test_command_writes_results_grids_and_resumes_per_target(runs, tmp_path, monkeypatch):
    out = tmp_path / "inp"
    assert _cli(runs, out) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["command"] == "inpaint" and r["settings"]["mask"] == "left" and r["settings"]["n_inpaintings"] == 8
    assert {"schema_version", "seeds", "versions"} <= set(r)
    t = {x["id"]: x for x in r["targets"]}
    assert list(t) == ["digits:0", "digits:10", "digits:1"]  # the order given
    assert t["digits:0"]["member"] and not t["digits:10"]["member"]
    for x in r["targets"]:
        assert {"id", "member", "best_l2", "mean_topk_l2"} <= set(x) and len(x["top_l2"]) == 3
        assert (out / x["grid"]).stat().st_size > 0
        assert np.load(out / "targets" / f"{x['index']:06d}.npz")["kept"].shape == (3, 8, 8, 1)
    assert t["digits:0"]["mean_topk_l2"] < min(t["digits:1"]["mean_topk_l2"], t["digits:10"]["mean_topk_l2"])
    assert r["auc"] == 1.0 and r["summary"]["n_members"] == 1
    # --top-k 3: the mean is named for k, not for the paper's 10, and k is recorded beside it
    assert r["top_k"] == 3 and r["settings"]["top_k"] == 3 and "top10" not in json.dumps(r)
    assert r["score"].startswith("-mean_topk_l2")
    for x in r["targets"]:  # the left half hidden: the whole-image ℓ2 is the hidden region's times sqrt(1/2)
        assert x["hidden_fraction"] == 0.5
        assert x["mean_topk_l2"] == pytest.approx(x["mean_topk_l2_hidden"] * 0.5 ** 0.5, rel=1e-9)
    assert r["summary"]["mean_topk_l2_hidden"]["members"]["mean"] == pytest.approx(t["digits:0"]["mean_topk_l2_hidden"])
    assert "mask_digest" not in r["settings"]  # a built-in kind is fixed by its name and the seed

    # Re-run: every target is finished, nothing is inpainted again.
    import diffaudit.attacks.inpainting as attack
    from diffaudit.cli.inpaint import _anecdote

    # 1 member and 2 non-members: 3 orderings, so even this perfect AUC is an anecdote, and the line says so
    assert "anecdotal: with 1 member and 2 non-member targets even a perfect AUC could not reach p < 0.05" in _anecdote(1, 2)
    assert _anecdote(4, 4) == "" and _anecdote(3, 0) == ""  # 70 orderings: p can reach 1/70; one side only: no AUC

    monkeypatch.setattr(attack, "inpaint_targets", lambda *a, **k: pytest.fail("a finished target was redone"))
    assert _cli(runs, out) == 0
    # the same targets in another order, spaced: the same run (each is seeded by its index in --data), also
    # where an earlier version recorded them as typed (was refused: "--target-keys (was '...', now '...')")
    target, shadow = runs
    reordered = ["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits",
                 "--target-keys", "digits:1, digits:0,digits:10", "--n-inpaint", "8", "--top-k", "3", "--steps", "10",
                 "--jump-length", "5", "--batch-size", "16", "--device", "cpu", "--out", str(out)]
    assert main(reordered) == 0
    record = json.loads((out / "settings.json").read_text())
    assert record["settings"]["target_keys"] == "digits:0,digits:1,digits:10"
    record["settings"]["target_keys"] = "digits:0,digits:10,digits:1"
    (out / "settings.json").write_text(json.dumps(record))
    assert main(reordered) == 0
    monkeypatch.undo()
    # A lost target is redone, identically (seeded per target and inpainting).
    before = json.loads((out / "targets" / "000010.json").read_text())
    (out / "targets" / "000010.json").unlink()
    assert _cli(runs, out) == 0
    assert json.loads((out / "targets" / "000010.json").read_text()) == before
    # Other settings in the same folder: an error naming the setting.
    assert _cli(runs, out, "--n-inpaint", "9") == 2


def test_command_refuses_a_target_retrained_in_place(runs, tmp_path, capsys):
    """Finished targets were inpainted by the target's weights at the time: the same --model path with
    other weights is a settings mismatch, not a resume."""
    import shutil

    target, shadow = runs
    copy = tmp_path / "target"
    shutil.copytree(target, copy)
    out = tmp_path / "inp"
    args = ["--quiet", "inpaint", "--model", str(copy), "--shadow", str(shadow), "--data", "digits", "--target-keys",
            "digits:0", "--n-inpaint", "4", "--top-k", "2", "--steps", "5", "--jump-length", "5", "--device", "cpu",
            "--out", str(out)]
    assert main(args) == 0
    for w in sorted(copy.rglob("*.safetensors")):  # the target's weights replaced by the shadow's
        shutil.copyfile(shadow / w.relative_to(copy), w)
    capsys.readouterr()
    assert main(args) == 2
    assert "digests.model" in capsys.readouterr().err


def test_command_errors(runs, tmp_path, capsys):
    target, shadow = runs
    assert _cli(runs, tmp_path / "a", "--mask", "diagonal") == 2
    assert "unknown mask 'diagonal'" in capsys.readouterr().err
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(target), "--data", "digits",
                 "--target-keys", "digits:1", "--out", str(tmp_path / "b")]) == 2
    assert "is the target model itself" in capsys.readouterr().err
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits",
                 "--target-keys", "digits:2", "--out", str(tmp_path / "c")]) == 2
    assert "trained on target 'digits:2'" in capsys.readouterr().err
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadows", str(tmp_path), "--data", "digits",
                 "--out", str(tmp_path / "d")]) == 2
    assert "--shadows needs --membership" in capsys.readouterr().err
    assert _cli(runs, tmp_path / "e", "--targets", "2,2") == 2  # _cli names --target-keys: one of the two
    assert "give --targets N_IN,N_OUT (seeded random targets) or --target-keys IDS (these), not both" in capsys.readouterr().err


def test_targets_are_seeded_members_and_nonmembers(digits):
    members = {digits.keys[i] for i in (0, 5, 7)}
    a = select_targets(digits, members, targets="2,3", target_keys=None, seed=0)
    assert a == select_targets(digits, members, targets="2,3", target_keys=None, seed=0) and a == sorted(a)
    assert sum(digits.keys[i] in members for i in a) == 2 and len(a) == 5
    assert a != select_targets(digits, members, targets="2,3", target_keys=None, seed=1)
    with pytest.raises(DiffauditError, match="^--targets 4,1: .*holds 3 members"):
        select_targets(digits, members, targets="4,1", target_keys=None, seed=0)
    with audit_stage("inpaint"), pytest.raises(DiffauditError, match="^--inpaint-targets 4,1: "):  # the audit's flag
        select_targets(digits, members, targets="4,1", target_keys=None, seed=0)
    with pytest.raises(DiffauditError, match="N_IN,N_OUT"):
        select_targets(digits, members, targets="4", target_keys=None, seed=0)
    with pytest.raises(DiffauditError, match="'nope' is not an example"):
        select_targets(digits, members, targets="1,1", target_keys="digits:3,nope", seed=0)
    # near-duplicates a deduplicated target dropped are copies of members: never drawn as non-members
    copies = set(digits.keys[:40]) - members
    b = select_targets(digits, members, targets="3,30", target_keys=None, seed=0, not_nonmembers=copies)
    assert not copies & {digits.keys[i] for i in b} and len(b) == 33


def test_shadows_from_a_membership_matrix_are_out_for_their_target(runs, digits, tmp_path):
    _, shadow = runs
    matrix = make_membership(len(digits), 4, seed=3)
    save_membership(tmp_path / "m.npz", matrix, digits.keys, 3)
    folder = tmp_path / "shadows"
    for k in range(4):  # copies of one UNet, each with the training set of its column
        run = folder / f"model-{k:02d}"
        shutil.copytree(shadow, run)
        keys = [digits.keys[i] for i in np.flatnonzero(matrix[:, k])]
        (run / "train_ids.json").write_text(json.dumps({"keys": keys, "indices": np.flatnonzero(matrix[:, k]).tolist()}))
    args = argparse.Namespace(model=str(runs[0]), shadow=None, shadows=str(folder), membership=str(tmp_path / "m.npz"))
    targets = list(range(20))
    chosen = assign_shadows(args, digits, targets)
    for i in targets:
        k = int(chosen[i].name.removeprefix("model-"))
        assert not matrix[i, k]  # OUT
        assert k == int(np.flatnonzero(~matrix[i])[0])  # the first OUT model, deterministically


def test_command_checks_data_models_and_targets_before_any_inpainting(runs, tmp_path, capsys, monkeypatch, tmp_npz, digits):
    """Every input that cannot give a right answer is refused before the first inpainting."""
    import diffaudit.attacks.inpainting as attack

    target, shadow = runs
    monkeypatch.setattr(attack, "inpaint_targets", lambda *a, **k: pytest.fail("inpainted before refusing"))
    base = ["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--n-inpaint", "4", "--top-k", "2",
            "--steps", "5", "--device", "cpu"]
    cases = [
        # another size: an 8x8 UNet runs on 16x16 images (it is convolutional), which it never trained on
        (["--data", "digits", "--image-size", "16", "--target-keys", "digits:0"], "takes 8x8 images"),
        # the same keys at another channel count
        (["--data", "digits", "--mode", "RGB", "--target-keys", "digits:0"], "load it with --mode L"),
        # the same keys over other pixels
        (["--data", "digits", "--center-crop", "6", "--image-size", "8", "--target-keys", "digits:0"],
         "trained on other pixels"),
        (["--data", "digits", "--target-keys", "digits:0", "--timestep", "1000"], "--timestep must lie in [0, 999]"),
        (["--data", "digits", "--target-keys", "digits:0,digits:1,digits:0"], "'digits:0' is given twice"),
    ]
    for n, (extra, message) in enumerate(cases):
        capsys.readouterr()
        assert main([*base, *extra, "--out", str(tmp_path / f"o{n}")]) == 2, extra
        assert message in capsys.readouterr().err, extra
    # an npz with the digits' keys (npz:<row>) is not the data the target trained on: unknown keys
    other = tmp_npz(digits.images[::-1].copy(), name="reversed.npz")
    assert main([*base, "--data", str(other), "--target-keys", "npz:0", "--out", str(tmp_path / "npz")]) == 2
    assert "none of the 1 examples" in capsys.readouterr().err


def test_check_models_fit_compares_shapes_conditioning_and_timesteps(runs, digits, tmp_path):
    from diffaudit.cli.inpaint import check_models_fit
    from tests.helpers import make_tiny_model_dir

    target, shadow = runs
    check_models_fit(target, [shadow], digits, timestep=100)
    rgb = make_tiny_model_dir(tmp_path / "rgb", channels=3)
    with pytest.raises(DiffauditError, match="takes 8x8 images with 3 channel"):
        check_models_fit(target, [rgb], digits, timestep=100)
    cond = tmp_path / "cond"
    shutil.copytree(shadow, cond)
    cfg_path = cond / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_class_embeds"] = 10
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(DiffauditError, match="--shadow .* is class-conditional but --model .* is unconditional"):
        check_models_fit(target, [cond], digits, timestep=100)
    # another noise schedule or prediction target: the same x_t and loss mean something else to it
    for name, change, message in [("cosine", {"beta_schedule": "squaredcos_cap_v2"}, "another noise schedule"),
                                  ("v", {"prediction_type": "v_prediction"}, "predicts v_prediction but")]:
        other = tmp_path / name
        shutil.copytree(shadow, other)
        sched_path = other / "scheduler" / "scheduler_config.json"
        sched_path.write_text(json.dumps({**json.loads(sched_path.read_text()), **change}))
        with pytest.raises(DiffauditError, match=message):
            check_models_fit(target, [other], digits, timestep=100)
    # a target whose scheduler asks for a sampler diffaudit does not implement (its shadows are only scored)
    thresholded = tmp_path / "thresholded"
    shutil.copytree(target, thresholded)
    sched_path = thresholded / "scheduler" / "scheduler_config.json"
    sched_path.write_text(json.dumps({**json.loads(sched_path.read_text()), "thresholding": True}))
    with pytest.raises(DiffauditError, match="dynamic thresholding"):
        check_models_fit(thresholded, [shadow], digits, timestep=100)
    check_models_fit(target, [thresholded], digits, timestep=100)
    with pytest.raises(DiffauditError, match="is class-conditional, but the data has no class labels"):
        check_models_fit(cond, [cond], ImageDataset(images=digits.images[:20], keys=digits.keys[:20], source="no labels"),
                         timestep=100)


def test_hidden_region_l2_does_not_shrink_with_the_known_pixels():
    from diffaudit.attacks.inpainting.attack import hidden_l2, rms_l2
    from diffaudit.sampling.masks import make_mask

    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    for kind, hidden_share in (("left", 0.5), ("center", 0.25)):
        mask = make_mask(kind, 8, 8)
        assert (mask < 0.5).mean() == hidden_share
        guess = np.repeat(original[None], 2, axis=0)
        guess[:, mask < 0.5] = 0  # the hidden pixels all wrong; the known ones copied
        whole, hidden = rms_l2(guess, original), hidden_l2(guess, original, mask)
        np.testing.assert_allclose(whole, hidden * np.sqrt(hidden_share))
        expected = np.sqrt(((original[mask < 0.5] / 255.0) ** 2).mean())
        np.testing.assert_allclose(hidden, expected)
    assert np.isnan(hidden_l2(guess, original, np.ones((8, 8)))).all()  # nothing hidden


def test_top_k_defaults_to_at_most_n_inpaint(runs, tmp_path):
    out = tmp_path / "few"
    target, shadow = runs
    assert main(["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits", "--target-keys",
                 "digits:0", "--n-inpaint", "3", "--steps", "5", "--device", "cpu", "--out", str(out)]) == 0
    r = json.loads((out / "result.json").read_text())
    assert r["settings"]["top_k"] == 3 and len(r["targets"][0]["top_l2"]) == 3


def test_a_rewritten_mask_file_does_not_resume(runs, tmp_path, capsys):
    from PIL import Image

    mask = tmp_path / "mask.png"
    Image.fromarray(np.where(np.arange(8)[None, :] < 4, 0, 255).repeat(8, 0).astype(np.uint8)).save(mask)
    out = tmp_path / "inp"
    args = ["--target-keys", "digits:0", "--mask", str(mask)]
    assert _cli(runs, out, *args) == 0
    Image.fromarray(np.where(np.arange(8)[:, None] < 4, 0, 255).repeat(8, 1).astype(np.uint8)).save(mask)
    capsys.readouterr()
    assert _cli(runs, out, *args) == 2
    assert "the contents of --mask (was " in capsys.readouterr().err


def test_targets_of_a_run_with_examples_outside_the_data_are_the_ones_inside(runs, tmp_path):
    """A canary run trained on examples no dataset holds: its members are those --data does hold."""
    target, _ = runs
    copy = tmp_path / "target"
    shutil.copytree(target, copy)
    ids = json.loads((copy / "train_ids.json").read_text())
    ids["keys"].append("canary/noise/0000")
    (copy / "train_ids.json").write_text(json.dumps(ids))
    out = tmp_path / "inp"
    assert main(["--quiet", "inpaint", "--model", str(copy), "--shadow", str(runs[1]), "--data", "digits", "--target-keys",
                 "digits:0,digits:1", "--n-inpaint", "4", "--top-k", "2", "--steps", "5", "--device", "cpu",
                 "--out", str(out)]) == 0
    r = json.loads((out / "result.json").read_text())
    assert [x["member"] for x in r["targets"]] == [True, False]


def test_shadows_folder_membership_defaults_to_its_own_file(tmp_path):
    from diffaudit.cli.inpaint import check_shadow_args

    args = argparse.Namespace(shadow=None, shadows=str(tmp_path), membership=None)
    with pytest.raises(DiffauditError, match="--shadows needs --membership"):
        check_shadow_args(args)
    (tmp_path / "membership.npz").write_bytes(b"")  # as `diffaudit shadows` leaves it (read later)
    check_shadow_args(args)
    assert args.membership == str(tmp_path / "membership.npz")


def test_a_shadow_that_trained_on_a_targets_image_under_another_id_is_refused(runs, digits, tmp_path, capsys):
    """A shadow trained on a file of the same images (a `dedup --write-deduped` .npz names them npz:<i>) has no
    training key of --data, yet saw the targets: its recorded data is read and compared pixel for pixel."""
    target, _ = runs
    np.savez(tmp_path / "copy.npz", images=digits.images[[SHADOW_IMAGE, 5]])
    shadow = tmp_path / "shadow"
    assert main(["--quiet", "train", "--data", str(tmp_path / "copy.npz"), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "2", "--warmup-steps", "1", "--device", "cpu", "--out", str(shadow)]) == 0
    argv = ["--quiet", "inpaint", "--model", str(target), "--shadow", str(shadow), "--data", "digits", "--n-inpaint", "2",
            "--top-k", "1", "--steps", "2", "--jump-length", "1", "--device", "cpu"]
    assert main([*argv, "--target-keys", "digits:0,digits:2", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"shadow {shadow} trained on the image of target 'digits:2', pixel for pixel, as 'npz:0' of --data" in err
    assert "(1 of its 2 targets)" in err and not (tmp_path / "a").exists()
    assert main([*argv, "--target-keys", "digits:0,digits:1", "--out", str(tmp_path / "b")]) == 0  # it saw neither
    (tmp_path / "copy.npz").unlink()  # the data it trained on is gone: said aloud, not refused
    assert main([*argv[1:], "--target-keys", "digits:0", "--out", str(tmp_path / "c")]) == 0
    assert "whether it saw a target's image under another id is not checked" in capsys.readouterr().err


def test_target_counts_are_recorded_one_way():
    """`--targets "8, 8"` after `--targets 8,8` was refused as other settings."""
    from diffaudit.cli.inpaint import _canonical_keys, _canonical_targets

    assert _canonical_targets("8, 8") == _canonical_targets("8,8") == "8,8" and _canonical_targets(None) is None
    assert _canonical_keys(" b,a ,") == "a,b" and _canonical_keys(None) is None
