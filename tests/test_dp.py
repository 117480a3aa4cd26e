"""DP-SGD training through opacus: accounting, per-sample gradients, equivalence with plain training, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses.dp_training import (
    DPConfig,
    average_grad_samples,
    check_grad_samples,
    epsilon_after,
    has_attention,
    resolve_noise,
    train_dp,
    wrap_model,
)
from diffaudit.models.training import TrainConfig, train


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), [f"k{i}" for i in range(48)], source="test")


def _cfg(**kw):
    base = dict(preset="tiny", steps=3, batch_size=8, lr=1e-3, warmup_steps=0, grad_clip=1e9, ema_decay=0.0, seed=3,
                log_every=1, checkpoint_every=100)
    base.update(kw)
    return TrainConfig(**base)


def _weights(run):
    return load_file(str(run / "unet" / "diffusion_pytorch_model.safetensors"))


def test_dp_config_validation():
    DPConfig().validate()
    with pytest.raises(DiffauditError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=8.0).validate()
    with pytest.raises(DiffauditError, match="exactly one"):
        DPConfig(noise_multiplier=None).validate()
    with pytest.raises(DiffauditError, match="no clipping"):
        DPConfig(noise_multiplier=1.0, max_grad_norm=math.inf).validate()
    with pytest.raises(DiffauditError, match="accountant"):
        DPConfig(accountant="gdp2").validate()
    with pytest.raises(DiffauditError, match="augmentations"):
        DPConfig(augmentations=0).validate()


def test_epsilon_grows_with_steps_and_falls_with_noise():
    eps = [epsilon_after(noise_multiplier=1.0, sample_rate=0.01, steps=s, delta=1e-5) for s in (1, 10, 100, 1000)]
    assert all(math.isfinite(e) and e > 0 for e in eps) and eps == sorted(eps) and eps[0] < eps[-1]
    assert epsilon_after(noise_multiplier=2.0, sample_rate=0.01, steps=100, delta=1e-5) < eps[2]
    assert epsilon_after(noise_multiplier=0.0, sample_rate=0.01, steps=5, delta=1e-5) == math.inf
    assert epsilon_after(noise_multiplier=1.0, sample_rate=0.01, steps=0, delta=1e-5) == 0.0
    prv = epsilon_after(noise_multiplier=1.0, sample_rate=0.01, steps=100, delta=1e-5, accountant="prv")
    assert 0 < prv <= eps[2] * 1.05  # PRV is tighter than RDP (up to its discretisation)


def test_target_epsilon_is_reached():
    sigma = resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=4.0), sample_rate=0.02, steps=200, delta=1e-5)
    got = epsilon_after(noise_multiplier=sigma, sample_rate=0.02, steps=200, delta=1e-5)
    assert got <= 4.0 and got > 3.9


def _attention_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    return UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=8)


def test_per_sample_gradients_are_exact_with_attention():
    model = _attention_unet()
    assert has_attention(model)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(3, 1, 8, 8, generator=g), torch.randint(0, 1000, (3,), generator=g)
    assert check_grad_samples(model, "functorch", x, t) < 1e-5
    gsm, mode = wrap_model(_attention_unet(), "auto")
    assert mode == "functorch"  # hook mode returns zero grads for convs fed by attention (opacus 1.6)
    gsm._close()
    with pytest.raises(DiffauditError, match="hooks gives wrong"):  # asked for explicitly: refused, not silently wrong
        wrap_model(_attention_unet(), "hooks")


def test_hooks_mode_is_refused_before_the_run_folder_exists(tmp_path, data):
    """Every diffusers UNet2DModel has a mid-block attention: hooks would train with wrong gradients.
    Refused before anything is recorded, so the corrected command (auto) is not a settings mismatch."""
    with pytest.raises(DiffauditError, match="hooks gives wrong"):
        train_dp(data, _cfg(), DPConfig(noise_multiplier=1.0, grad_sample_mode="hooks"), tmp_path / "dp")
    assert not (tmp_path / "dp").exists()


def test_repeated_training_indices_are_refused(tmp_path, data):
    """Poisson sampling would draw each copy on its own (sensitivity 2C) while the accountant assumes one."""
    with pytest.raises(DiffauditError, match="must be distinct"):
        train_dp(data, _cfg(), DPConfig(noise_multiplier=1.0), tmp_path / "dp", train_indices=[0, 1, 2, 3, 3, 4, 5, 6, 7, 8])


def test_each_copy_of_a_repeated_example_is_an_example_of_its_own(tmp_path, data):
    """repeats={i: k} under DP-SGD trains exactly as if the k - 1 extra copies were distinct examples of the
    dataset, placed after the original: sampled, clipped and accounted each on its own (N counts them)."""
    repeats = {2: 3, 5: 2}
    rows = np.repeat(np.arange(16), [repeats.get(i, 1) for i in range(16)])
    copies = ImageDataset(data.images[rows], [f"row{j}" for j in range(len(rows))], source="test")
    dp = DPConfig(noise_multiplier=1.0)
    a = train_dp(data, _cfg(), dp, tmp_path / "repeats", train_indices=list(range(16)), repeats=repeats)
    b = train_dp(copies, _cfg(), dp, tmp_path / "copies")
    wa, wb = (load_file(str(r / "unet" / "diffusion_pytorch_model.safetensors")) for r in (a, b))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    dp_a = json.loads((a / "dp.json").read_text())
    assert dp_a["n_train"] == 19 and dp_a["sample_rate"] == pytest.approx(8 / 19)
    assert dp_a["epsilon"] == json.loads((b / "dp.json").read_text())["epsilon"]
    result = json.loads((a / "result.json").read_text())
    assert (result["n_train"], result["n_stream"]) == (16, 19)  # distinct images, and with their copies
    assert json.loads((a / "train_ids.json").read_text())["repeats"] == {"k2": 3, "k5": 2}


def test_a_batch_of_the_whole_training_set_is_warned_about(tmp_path, data, capsys):
    """q = 1: Poisson subsampling amplifies nothing, which a user choosing the batch size should hear."""
    train_dp(data, _cfg(steps=1, batch_size=8), DPConfig(noise_multiplier=1.0), tmp_path / "dp",
             train_indices=list(range(8)))
    assert "sampling rate q = 1), so subsampling amplifies no privacy" in capsys.readouterr().err
    train_dp(data, _cfg(steps=1, batch_size=8), DPConfig(noise_multiplier=1.0), tmp_path / "dp2",
             train_indices=list(range(16)))
    assert "amplifies no privacy" not in capsys.readouterr().err


def test_a_delta_not_below_one_over_n_is_warned_about(tmp_path, data, capsys):
    """δ ≥ 1/N: publishing one training example whole at random meets (ε, δ), so the ε says little."""
    train_dp(data, _cfg(steps=1, batch_size=4), DPConfig(noise_multiplier=1.0, delta=0.5), tmp_path / "dp",
             train_indices=list(range(16)))
    err = capsys.readouterr().err
    assert "--dp-delta 0.5 is not below 1/N = 0.0625 for the 16 training examples" in err
    assert "leave --dp-delta out for 1/(10 N) = 0.00625" in err
    train_dp(data, _cfg(steps=1, batch_size=4), DPConfig(noise_multiplier=1.0), tmp_path / "dp2",
             train_indices=list(range(16)))
    assert "not below 1/N" not in capsys.readouterr().err  # the default, 1/(10 N)


def test_average_grad_samples_per_example():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad_sample = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0], [7.0, 7.0]])
    average_grad_samples([p], 2, 2)
    torch.testing.assert_close(p.grad_sample, torch.tensor([[2.0, 1.0], [6.0, 6.0]]))


def test_noise_free_unclipped_dp_matches_plain_training(tmp_path, data):
    cfg = _cfg()
    plain = _weights(train(data, cfg, tmp_path / "plain"))
    dp = _weights(train_dp(data, cfg, DPConfig(noise_multiplier=0.0, max_grad_norm=math.inf, poisson_sampling=False),
                           tmp_path / "dp"))
    assert plain.keys() == dp.keys()
    moved = max(float((plain[k] - load_init(cfg, data)[k]).abs().max()) for k in plain)
    assert moved > 1e-3  # training did change the weights
    for k in plain:
        # Adam divides by sqrt(v): where a true gradient is ~0 (exactly 0 for the attention key bias, softmax
        # being shift-invariant) summation-order rounding becomes an update of up to ~lr per step, and which
        # few weights that hits depends on the CPU's kernels (AVX2 vs AVX-512). So single weights may move by
        # up to lr·steps; a wrong batch, noise draw or gradient scale would move nearly every weight by ~lr
        # = 1e-3 instead, which the fractions below rule out.
        torch.testing.assert_close(dp[k], plain[k], atol=3 * cfg.lr * cfg.steps, rtol=0)
    diffs = torch.cat([(dp[k] - plain[k]).abs().flatten() for k in plain])
    assert float(diffs.median()) < 1e-8 and float((diffs > 1e-7).float().mean()) < 0.01
    assert float((diffs > 1e-5).float().mean()) < 1e-3
    record = json.loads((tmp_path / "dp" / "dp.json").read_text())
    assert record["epsilon"] is None and "not private" in record["note"]


def load_init(cfg, data):
    from diffaudit.core.seeds import derive_seed
    from diffaudit.models.unets import build_unet, unet_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "init") % (2**31))
        return build_unet(unet_config(cfg.preset, image_size=8, in_channels=1)).state_dict()


def test_dp_training_reports_finite_growing_epsilon(tmp_path, data):
    from diffaudit.models.denoiser import load_denoiser
    from diffaudit.models.loss import per_example_loss

    run = train_dp(data, _cfg(steps=4), DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, augmentations=2), tmp_path / "dp")
    log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    eps = [r["epsilon"] for r in log]
    assert len(eps) == 4 and all(math.isfinite(e) and e > 0 for e in eps)
    assert all(a < b for a, b in zip(eps, eps[1:]))
    record = json.loads((run / "dp.json").read_text())
    assert record["epsilon"] == pytest.approx(eps[-1]) and record["delta"] == pytest.approx(1 / (10 * 48))
    assert record["augmentations"] == 2 and record["grad_sample_mode"] == "functorch" and record["sample_rate"] == pytest.approx(8 / 48)
    assert "seed" in record["noise_secrecy"]  # the noise is reproducible from the folder: said so
    res = json.loads((run / "result.json").read_text())
    assert res["command"] == "train" and res["dp"]["epsilon"] == record["epsilon"]
    # the run directory loads like any other: sampling and attacks can use it
    den = load_denoiser(run)
    loss = per_example_loss(den, data.images[:4], timesteps=(100,))
    assert loss.shape == (4, 1, 1) and np.isfinite(loss).all()


@pytest.fixture
def adam_gradients():
    """The flattened gradient handed to Adam at each step, i.e. after opacus' per-example clipping, noise
    and division by the batch size: ``train_dp`` wraps a ``torch.optim.Adam`` in opacus' DPOptimizer,
    whose step calls the Adam's, so torch's public global step pre-hook sees it (Adam itself would hide
    the gradient's scale from any test of the weights)."""
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    seen: list[torch.Tensor] = []

    def record(optimizer, args, kwargs):
        if isinstance(optimizer, torch.optim.Adam):
            seen.append(torch.cat([p.grad.detach().flatten() for group in optimizer.param_groups
                                   for p in group["params"] if p.grad is not None]))

    handle = register_optimizer_step_pre_hook(record)
    yield seen
    handle.remove()


@pytest.mark.parametrize("k", [1, 3])
def test_privatized_gradient_is_the_clipped_mean_plus_sigma_c_over_b_noise(tmp_path, data, adam_gradients, k):
    """DP-SGD (Abadi et al. 2016): clip each example's gradient (the mean of its K draws) to C, sum, add
    N(0, σ²C²), divide by B. Fixed batches of B distinct examples; C far below every per-example norm."""
    C, B, steps = 1e-3, 8, 2
    cfg = _cfg(steps=steps, batch_size=B)

    def run(sigma: float, name: str) -> list[torch.Tensor]:
        adam_gradients.clear()
        train_dp(data, cfg, DPConfig(noise_multiplier=sigma, max_grad_norm=C, poisson_sampling=False, augmentations=k),
                 tmp_path / name)
        assert len(adam_gradients) == steps
        return list(adam_gradients)

    # σ = 0: a mean of B vectors of norm ≤ C has norm ≤ C (unclipped: ~3000 C; K draws clipped one by one: ~1.5 C)
    norms = [float(g.norm()) for g in run(0.0, "clip")]
    assert all(0 < n <= C * (1 + 1e-5) for n in norms), norms
    # σ = 1: per-coordinate noise std σC/B (σC, not divided by B, is 8x; divided by B·K rows is 1/K). The
    # ~1.6e5 coordinates estimate it within ~0.2%; the clipped signal (norm ≤ C) adds < 0.1%.
    grads = run(1.0, "noise")
    assert grads[0].numel() > 10_000
    ratios = [float(g.std()) / (C / B) for g in grads]
    assert all(abs(r - 1) < 0.02 for r in ratios), ratios


def test_dp_run_resumes_to_the_same_weights(tmp_path, data, monkeypatch):
    import diffaudit.defenses.dp_training as dpt

    cfg = _cfg(steps=4, checkpoint_every=2)
    dp = DPConfig(noise_multiplier=0.5, max_grad_norm=1.0)
    whole = _weights(train_dp(data, cfg, dp, tmp_path / "whole"))
    calls = {"n": 0}

    def crash(name):
        if name == "train.step":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt  # killed after the step-2 checkpoint
    monkeypatch.setattr(dpt, "fault_point", crash)
    with pytest.raises(KeyboardInterrupt):
        train_dp(data, cfg, dp, tmp_path / "killed")
    monkeypatch.undo()
    assert not (tmp_path / "killed" / "result.json").exists()
    resumed = _weights(train_dp(data, cfg, dp, tmp_path / "killed"))
    for k in whole:
        torch.testing.assert_close(resumed[k], whole[k], atol=0, rtol=0)


def test_dp_rejects_batchnorm_models():
    from diffaudit.defenses.dp_training import check_model

    with pytest.raises(DiffauditError, match="cannot be trained with DP-SGD"):
        check_model(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)))


def test_dp_flags_build_a_config():
    import argparse

    from diffaudit.defenses.dp_training import add_dp_arguments, dp_config_from_args

    p = argparse.ArgumentParser()
    add_dp_arguments(p)
    assert dp_config_from_args(p.parse_args([])) is None
    cfg = dp_config_from_args(p.parse_args(["--dp-epsilon", "8", "--dp-augmentations", "4", "--dp-no-poisson"]))
    assert cfg == DPConfig(noise_multiplier=None, target_epsilon=8.0, augmentations=4, poisson_sampling=False)
    with pytest.raises(DiffauditError, match="exactly one"):
        dp_config_from_args(p.parse_args(["--dp-epsilon", "8", "--dp-noise", "1"]))


@pytest.mark.gpu
def test_dp_training_runs_on_cuda_with_noise(tmp_path, data):
    """opacus draws the noise on the gradients' device with the optimizer's generator, which must live
    there (a CPU generator is refused for CUDA draws)."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    run = train_dp(data, _cfg(steps=3), DPConfig(noise_multiplier=1.0, max_grad_norm=1.0), tmp_path / "dp", device="cuda")
    w = _weights(run)
    assert all(torch.isfinite(v).all() for v in w.values())
    again = _weights(train_dp(data, _cfg(steps=3), DPConfig(noise_multiplier=1.0, max_grad_norm=1.0), tmp_path / "dp2",
                              device="cuda"))
    assert max(float((w[k] - again[k]).abs().max()) for k in w) < 1e-4  # the seeded noise is drawn again


def _dp_parser():
    import argparse

    from diffaudit.defenses.dp_training import add_dp_arguments

    p = argparse.ArgumentParser()
    add_dp_arguments(p)
    return p


@pytest.mark.parametrize("argv", [
    ["--dp-max-grad-norm", "0.5", "--dp-delta", "1e-5", "--dp-augmentations", "4"],
    ["--dp-no-poisson"],
    ["--dp-accountant", "rdp"],  # the default value, but given: still an error
    ["--dp-grad-sample-mode", "auto"],
    ["--dp-augmentations", "0"],
])
def test_dp_settings_without_noise_or_epsilon_are_refused(argv):
    """They used to be ignored: the model was trained without privacy and nothing said so."""
    from diffaudit.defenses.dp_training import dp_config_from_args

    with pytest.raises(DiffauditError, match="without --dp-noise or --dp-epsilon") as err:
        dp_config_from_args(_dp_parser().parse_args(argv))
    assert all(flag in str(err.value) for flag in argv if flag.startswith("--"))


def test_dp_flags_left_out_take_the_dpconfig_defaults():
    from diffaudit.defenses.dp_training import dp_config_from_args

    assert dp_config_from_args(_dp_parser().parse_args(["--dp-noise", "0.7"])) == DPConfig(noise_multiplier=0.7)
    cfg = dp_config_from_args(_dp_parser().parse_args(["--dp-noise", "0.7", "--dp-max-grad-norm", "0.5", "--dp-accountant", "prv"]))
    assert cfg == DPConfig(noise_multiplier=0.7, max_grad_norm=0.5, accountant="prv")


def test_fixed_size_batches_hold_distinct_examples():
    """--dp-no-poisson reused the plain stream, whose batches span epochs: n=10, B=4 put example 102
    twice in batch 7 (sensitivity 2C). Now a batch never spans two epochs."""
    from diffaudit.defenses.dp_training import batch_rows
    from diffaudit.models.training import batch_positions, epoch_batch_positions

    cfg, dp = _cfg(batch_size=4, seed=0), DPConfig(noise_multiplier=1.0, poisson_sampling=False)
    batches = [batch_rows(s, cfg, dp, 10, 0.4) for s in range(60)]
    assert all(len(b) == 4 and len(set(b.tolist())) == 4 and b.min() >= 0 and b.max() < 10 for b in batches)
    for e in range(30):  # two whole batches per epoch, disjoint
        assert not set(batches[2 * e].tolist()) & set(batches[2 * e + 1].tolist())
    assert [b.tolist() for b in batches] == [batch_rows(s, cfg, dp, 10, 0.4).tolist() for s in range(60)]
    assert batch_rows(37, cfg, dp, 10, 0.4).tolist() == batches[37].tolist()  # a pure function of (seed, step)
    # B dividing n: the plain run's batches (what the no-noise equivalence test relies on)
    assert all(np.array_equal(epoch_batch_positions(s, 4, 12, 5), batch_positions(s, 4, 12, 5)) for s in range(9))
    with pytest.raises(DiffauditError, match="--batch-size 11"):
        epoch_batch_positions(0, 11, 10, 0)


def test_unreachable_target_epsilon_is_a_clear_error(tmp_path, data):
    with pytest.raises(DiffauditError, match=r"--dp-epsilon 0.001 cannot be reached at delta 1e-05 after 1000 steps") as err:
        resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=1e-3), sample_rate=0.2, steps=1000, delta=1e-5)
    assert "--steps" in str(err.value) and "--dp-delta" in str(err.value) and "more training data" in str(err.value)
    with pytest.raises(DiffauditError, match="cannot be reached"):
        train_dp(data, _cfg(steps=1000), DPConfig(noise_multiplier=None, target_epsilon=1e-4), tmp_path / "dp")
    assert not (tmp_path / "dp").exists()


def test_dp_converts_only_the_training_examples(tmp_path, data, monkeypatch):
    import diffaudit.defenses.dp_training as dpt

    shapes = []
    real = dpt.to_model_space

    def spy(images):
        shapes.append(tuple(images.shape))
        return real(images)

    monkeypatch.setattr(dpt, "to_model_space", spy)
    train_dp(data, _cfg(steps=1), DPConfig(noise_multiplier=1.0), tmp_path / "dp", train_indices=list(range(5, 21)))
    assert shapes == [(16, 8, 8, 1)]


def test_dp_log_is_the_mean_over_the_log_window(tmp_path, data):
    dp = DPConfig(noise_multiplier=0.5, poisson_sampling=False)
    every = train_dp(data, _cfg(steps=4, log_every=1), dp, tmp_path / "every")
    pairs = train_dp(data, _cfg(steps=4, log_every=2), dp, tmp_path / "pairs")
    one = [json.loads(line) for line in (every / "loss_log.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (pairs / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two] == [2, 4]
    assert two[0]["loss"] == pytest.approx((one[0]["loss"] + one[1]["loss"]) / 2, rel=1e-6)
    assert two[1]["loss"] == pytest.approx((one[2]["loss"] + one[3]["loss"]) / 2, rel=1e-6)
    assert two[1]["loss"] != pytest.approx(one[3]["loss"], rel=1e-6)  # not the logging step's loss alone
    assert not (every / "checkpoints").exists()  # checkpointed at step 2, dropped once finished


def test_dp_non_finite_weights_are_never_saved(tmp_path, data, monkeypatch):
    """The loss of a step is computed before its update: a step that makes the weights NaN still logs a
    finite loss. The weights themselves are checked before any checkpoint or final save."""
    import diffaudit.defenses.dp_training as dpt

    monkeypatch.setattr(dpt, "lr_at", lambda step, cfg: float("nan"))  # Adam with lr NaN: NaN weights
    with pytest.raises(NonFiniteError, match="weights became non-finite"):
        train_dp(data, _cfg(steps=1), DPConfig(noise_multiplier=1.0), tmp_path / "dp")
    assert not (tmp_path / "dp" / "result.json").exists() and not (tmp_path / "dp" / "unet").exists()
    assert not (tmp_path / "dp" / "checkpoints").exists()


def test_dp_training_leaves_the_global_rng_untouched(tmp_path, data):
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    train_dp(data, _cfg(steps=2), DPConfig(noise_multiplier=1.0), tmp_path / "dp")
    torch.testing.assert_close(torch.rand(3), expected, atol=0, rtol=0)


def test_train_repeat_under_dp_sgd_from_the_command_line(tmp_path, capsys):
    """`train --repeat FILE --dp-noise S`: the copies are examples of their own, and the run audits like any
    other (its train_ids.json lists each image once, with its repeat count)."""
    from diffaudit.cli.main import main
    from diffaudit.data import load_dataset

    key = load_dataset("digits", subset=24).keys[3]
    (tmp_path / "repeat.txt").write_text(f"{key} 5\n")
    assert main(["train", "--data", "digits", "--subset", "24", "--repeat", str(tmp_path / "repeat.txt"), "--dp-noise",
                 "1.0", "--steps", "2", "--batch-size", "8", "--warmup-steps", "0", "--device", "cpu",
                 "--out", str(tmp_path / "run")]) == 0
    assert "steps on 24 images (28 with copies, each an example)" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "dp.json").read_text())["n_train"] == 28
    ids = json.loads((tmp_path / "run" / "train_ids.json").read_text())
    assert len(ids["keys"]) == 24 and ids["repeats"] == {key: 5}


def test_weak_settings_are_not_warned_about_before_a_refusal_of_them(tmp_path, data, capsys):
    """A resume with other settings is refused; the warnings about q = 1 came before the refusal and
    read as if the run went on with them."""
    train_dp(data, _cfg(steps=1, batch_size=4), DPConfig(noise_multiplier=1.0), tmp_path / "dp",
             train_indices=list(range(16)))
    capsys.readouterr()
    with pytest.raises(DiffauditError, match="other settings|batch_size"):
        train_dp(data, _cfg(steps=1, batch_size=16), DPConfig(noise_multiplier=1.0, delta=0.5), tmp_path / "dp",
                 train_indices=list(range(16)))
    err = capsys.readouterr().err
    assert "amplifies no privacy" not in err and "not below 1/N" not in err


def test_no_noise_is_warned_about_as_no_guarantee(tmp_path, data, capsys):
    """--dp-noise 0 was accepted and printed "epsilon inf" with no word that the model has no guarantee. It is
    said once per command (`shadows` trains every model with it), and again by the next command of a process."""
    from diffaudit.core.progress import running_command

    for run in ("dp", "dp2"):  # two commands run in one process (as CLI tests do): each warns
        with running_command("train"):
            train_dp(data, _cfg(steps=1, batch_size=4), DPConfig(noise_multiplier=0.0), tmp_path / run,
                     train_indices=list(range(16)))
        assert capsys.readouterr().err.count("--dp-noise 0 adds no noise") == 1
