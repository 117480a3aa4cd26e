"""DP-SGD privacy accounting in a run: PRV failures fall back to RDP (recorded why), the per-log-line ε is
RDP's (PRV is computed once, for the final ε), and "not private" means σ = 0, not an infinite ε."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from diffaudit.core.errors import DiffauditError
from diffaudit.data.dataset import ImageDataset
from diffaudit.defenses import dp_training
from diffaudit.defenses.dp_training import DPConfig, accounted_epsilon, dp_note, epsilon_after, train_dp
from diffaudit.models.training import TrainConfig


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return ImageDataset(rng.integers(0, 256, (48, 8, 8, 1), dtype=np.uint8), [f"k{i}" for i in range(48)], source="test")


def _cfg(**kw):
    base = dict(preset="tiny", steps=4, batch_size=8, lr=1e-3, warmup_steps=0, ema_decay=0.0, seed=3, log_every=1,
                checkpoint_every=100)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def prv_calls(monkeypatch):
    """Counts the PRV accountant's calls; ``calls.fail`` (an exception or a float) replaces its answer."""
    real = dp_training.epsilon_after

    class Calls(list):
        fail = None

    calls = Calls()

    def spy(**kw):
        if kw.get("accountant") == "prv":
            calls.append(kw)
            if isinstance(calls.fail, BaseException):
                raise calls.fail
            if calls.fail is not None:
                return calls.fail
        return real(**kw)

    monkeypatch.setattr(dp_training, "epsilon_after", spy)
    return calls


def _records(run):
    log = [json.loads(line) for line in (run / "loss_log.jsonl").read_text().splitlines()]
    return log, json.loads((run / "dp.json").read_text())


def test_prv_is_computed_once_and_recorded_when_it_works(tmp_path, data, prv_calls):
    """Log lines carry RDP's cheap ε; the final one and dp.json the PRV ε, unchanged in meaning."""
    run = train_dp(data, _cfg(), DPConfig(noise_multiplier=1.0, accountant="prv"), tmp_path / "dp")
    log, rec = _records(run)
    assert len(prv_calls) == 1  # not once per log line
    rdp = [epsilon_after(noise_multiplier=1.0, sample_rate=8 / 48, steps=s, delta=1 / 480) for s in (1, 2, 3)]
    assert [r["epsilon"] for r in log[:3]] == pytest.approx(rdp) and {r["epsilon_accountant"] for r in log[:3]} == {"rdp"}
    prv = epsilon_after(noise_multiplier=1.0, sample_rate=8 / 48, steps=4, delta=1 / 480, accountant="prv")
    assert rec["epsilon"] == pytest.approx(prv) and log[-1]["epsilon"] == rec["epsilon"]
    assert log[-1]["epsilon_accountant"] == "prv"
    assert rec["accountant"] == rec["accountant_used"] == "prv" and rec["fallback_reason"] is None
    assert "not private" not in rec["note"]


@pytest.mark.parametrize("failure, reason", [(MemoryError("Unable to allocate 26.3 GiB"), "MemoryError"),
                                             (math.inf, "non-finite"), (FloatingPointError("overflow"), "FloatingPointError")])
def test_prv_failure_falls_back_to_rdp_and_says_why(tmp_path, data, prv_calls, failure, reason):
    """A MemoryError no longer crashes the run, nor an infinite PRV ε reads as "no noise": RDP's finite
    bound is recorded, with the accountant that produced it and why."""
    prv_calls.fail = failure
    run = train_dp(data, _cfg(), DPConfig(noise_multiplier=0.05, accountant="prv"), tmp_path / "dp")
    log, rec = _records(run)
    rdp = epsilon_after(noise_multiplier=0.05, sample_rate=8 / 48, steps=4, delta=1 / 480)
    assert math.isfinite(rdp) and rec["epsilon"] == pytest.approx(rdp) and log[-1]["epsilon"] == rec["epsilon"]
    assert rec["accountant"] == "prv" and rec["accountant_used"] == "rdp" and reason in rec["fallback_reason"]
    assert "not private" not in rec["note"] and rec["noise_multiplier"] == 0.05
    res = json.loads((run / "result.json").read_text())
    assert res["dp"]["epsilon"] == rec["epsilon"] and res["dp"]["accountant_used"] == "rdp"


def test_a_prv_mesh_too_large_to_allocate_is_not_attempted():
    """σ = 0.05, q = 1/6, 1,000 steps: opacus' mesh would need 26 GiB (MemoryError or the OOM killer);
    refused from its size, at once, for RDP's bound."""
    t0 = time.perf_counter()
    got = accounted_epsilon(noise_multiplier=0.05, sample_rate=1 / 6, steps=1000, delta=1 / 480, accountant="prv")
    assert time.perf_counter() - t0 < 5
    assert got.accountant == "rdp" and "mesh" in got.fallback_reason
    assert got.value == pytest.approx(epsilon_after(noise_multiplier=0.05, sample_rate=1 / 6, steps=1000, delta=1 / 480))


def test_accounted_epsilon_keeps_working_accountants_and_the_trivial_cases():
    kw = dict(sample_rate=0.01, steps=100, delta=1e-5)
    prv = accounted_epsilon(noise_multiplier=1.0, accountant="prv", **kw)
    assert prv.accountant == "prv" and prv.fallback_reason is None
    assert prv.value == pytest.approx(epsilon_after(noise_multiplier=1.0, accountant="prv", **kw))
    rdp = accounted_epsilon(noise_multiplier=1.0, accountant="rdp", **kw)
    assert rdp.accountant == "rdp" and rdp.value == epsilon_after(noise_multiplier=1.0, **kw)
    assert accounted_epsilon(noise_multiplier=0.0, accountant="prv", **kw).value == math.inf
    assert accounted_epsilon(noise_multiplier=1.0, accountant="prv", sample_rate=0.01, steps=0, delta=1e-5).value == 0.0


def test_not_private_note_depends_on_the_noise_not_on_epsilon():
    assert "not private" in dp_note(0.0, math.inf, True)
    assert "not private" not in dp_note(0.05, math.inf, True)
    assert "not formally covered" in dp_note(1.0, 3.0, False)


def test_the_note_at_sampling_rate_one_says_nothing_is_subsampled():
    """A batch as large as the training set (q = 1) subsamples nothing: the note says so, never "Poisson-subsampled"."""
    assert dp_note(1.0, 8.0, True, 0.32) == "(epsilon, delta)-DP per training example, Poisson-subsampled Gaussian mechanism"
    note = dp_note(1.0, 8.0, True, 1.0)
    assert "Poisson-subsampled" not in note and "sampling rate 1: no amplification by subsampling" in note


def test_a_prv_target_epsilon_is_solved_for_the_epsilon_a_run_records(monkeypatch):
    """--dp-epsilon with the PRV accountant where PRV cannot run (here every mesh counts as too large):
    σ is found by bisection on the recorded ε (RDP's, the fallback), reaching the target to about 1 %,
    instead of opacus' PRV search allocating a mesh of many GiB."""
    import diffaudit.defenses.dp_training as dpt

    monkeypatch.setattr(dpt, "PRV_MAX_POINTS", 10)
    kw = dict(sample_rate=0.02, steps=200, delta=1e-5)
    sigma = dpt.resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=8.0, accountant="prv"), **kw)
    recorded = accounted_epsilon(noise_multiplier=sigma, accountant="prv", **kw)
    assert recorded.accountant == "rdp" and recorded.fallback_reason is not None
    assert 8.0 * 0.95 < recorded.value <= 8.0
    assert accounted_epsilon(noise_multiplier=sigma * 0.98, accountant="prv", **kw).value > 8.0  # the smallest, to ~1 %
    # where PRV runs, opacus' own PRV search answers as before
    monkeypatch.setattr(dpt, "PRV_MAX_POINTS", 2**25)
    sigma_prv = dpt.resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=8.0, accountant="prv"), **kw)
    assert sigma_prv < sigma and accounted_epsilon(noise_multiplier=sigma_prv, accountant="prv", **kw).accountant == "prv"


def test_a_prv_target_below_rdps_floor_is_solved_by_prv(recwarn):
    """RDP's bound has a floor (its largest order binds) above small targets that PRV reaches: --dp-epsilon 0.02
    at q = 1/8, 10 steps was refused as unreachable "even at sigma = 1e6 (prv accountant)"; PRV is now searched
    from a PRV upper bound, and opacus' advice to widen RDP's orders (no option sets them) is not passed on."""
    from diffaudit.defenses.dp_training import resolve_noise

    kw = dict(sample_rate=1 / 8, steps=10, delta=1 / 640)
    with pytest.raises(DiffauditError, match="cannot be reached"):
        resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=0.02, accountant="rdp"), **kw)
    sigma = resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=0.02, accountant="prv"), **kw)
    recorded = accounted_epsilon(noise_multiplier=sigma, accountant="prv", **kw)
    assert recorded.accountant == "prv" and 0.01 < recorded.value <= 0.02
    assert not [w for w in recwarn if "Optimal order" in str(w.message)]


def test_opacus_advice_on_rdp_orders_is_not_shown_to_the_user():
    """Little noise (a large epsilon) makes opacus advise wider RDP orders ("Optimal order is the smallest
    alpha"), an option diffaudit does not offer: the bound stays valid, and the user sees no such warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eps = epsilon_after(noise_multiplier=0.3, sample_rate=0.5, steps=200, delta=1e-3)
        sigma = dp_training.resolve_noise(DPConfig(noise_multiplier=None, target_epsilon=50.0), sample_rate=0.03, steps=3000, delta=1e-4)
    assert eps > 50 and 0.3 < sigma < 0.7  # epsilon 360 at sigma 0.3, 25 at 0.7
