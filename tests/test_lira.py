"""Known-answer tests of the membership attacks' math (issue 4).

Synthetic losses with a known law, generated in log space: example n has a difficulty d_n (spread
widely across examples, as real images are), a model that trained on it lowers its log-loss by Δ,
and every model adds Gaussian noise σ. For a test that knows d_n the optimal score is −(ℓ − d_n)
with AUC Φ(Δ / (σ√2)) and TPR at FPR α of Φ(Δ/σ − z_{1−α}); LiRA estimates d_n from shadows and
should come close, while the global loss threshold cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import norm

from diffaudit.attacks.membership import (
    ATTACK_NAMES,
    AttackInput,
    gaussian_fit,
    get_attack,
    leave_one_out_scores,
    lira_offline_scores,
    lira_online_scores,
    loss_threshold_scores,
    target_scores,
)
from diffaudit.attacks.membership.sweep import sweep_scores
from diffaudit.attacks.membership.targets import PooledScores, mean_losses, without_nonmember_rows
from diffaudit.core.errors import DiffauditError, NonFiniteError
from diffaudit.evaluation import auc, tpr_at_fpr


def synthetic(n=4000, m=64, q=1, delta=1.0, sigma=1.0, spread=3.0, query_spread=0.0, seed=0):
    """Losses (N, M+1, Q): columns 0..M-1 shadows, column M the target; membership (N, M+1)."""
    rng = np.random.default_rng(seed)
    d = rng.normal(0.0, spread, (n, 1, 1)) + rng.normal(0.0, query_spread, (n, 1, q))
    member = np.zeros((n, m + 1), bool)
    for i in range(n):  # each example IN for exactly half of the shadows
        member[i, rng.permutation(m)[: m // 2]] = True
    member[:, m] = rng.random(n) < 0.5
    log_loss = d - delta * member[:, :, None] + sigma * rng.normal(size=(n, m + 1, q))
    return np.exp(log_loss), member


def split(losses, member):
    return losses[:, -1], member[:, -1], losses[:, :-1], member[:, :-1]


def analytic_auc(delta, sigma):
    return norm.cdf(delta / (sigma * np.sqrt(2)))


@pytest.mark.parametrize("name", ["lira", "lira-fixed", "lira-offline", "lira-offline-fixed"])
def test_lira_variants_reach_the_analytical_auc(name):
    losses, member = synthetic(delta=1.0)
    tgt, tin, sh, shin = split(losses, member)
    scores = target_scores(get_attack(name), tgt, tin, sh, shin).scores
    assert auc(scores, tin) == pytest.approx(analytic_auc(1.0, 1.0), abs=0.025)
    # the global threshold is blind to per-example difficulty (spread 3 >> Δ = 1)
    loss_auc = auc(loss_threshold_scores(AttackInput(tgt)), tin)
    assert loss_auc < 0.65 and auc(scores, tin) > loss_auc + 0.1


def test_lira_tpr_at_low_fpr_matches_analytical():
    losses, member = synthetic(n=20_000, m=32, delta=2.0)
    tgt, tin, sh, shin = split(losses, member)
    scores = target_scores(get_attack("lira-fixed"), tgt, tin, sh, shin).scores
    expected = norm.cdf(2.0 - norm.ppf(0.99))  # ≈ 0.37
    assert tpr_at_fpr(scores, tin, 0.01) == pytest.approx(expected, abs=0.06)


def test_strong_lira_adds_up_queries():
    # Q = 8 queries with a per-(example, query) offset shared by all models (same ε in every model):
    # summing 8 independent log-ratios multiplies the separation by sqrt(8).
    # The per-example weight μ̂_in − μ̂_out of each log-ratio is estimated from m/2 + m/2 shadows,
    # so it is noisy (variance 4σ²/m around −Δ); that costs a factor 1/sqrt(1 + 4σ²/(mΔ²)) in
    # separation, about 0.92 here.
    delta, q, m = 0.4, 8, 128
    losses, member = synthetic(n=3000, m=m, q=q, delta=delta, query_spread=1.0, seed=1)
    tgt, tin, sh, shin = split(losses, member)
    factor = 1 / np.sqrt(1 + 4 / (m * delta**2))
    single = auc(target_scores(get_attack("lira-fixed"), tgt[:, :1], tin, sh[:, :, :1], shin).scores, tin)
    strong = auc(target_scores(get_attack("strong-lira-fixed"), tgt, tin, sh, shin).scores, tin)
    assert single == pytest.approx(analytic_auc(delta * factor, 1.0), abs=0.03)
    assert strong == pytest.approx(analytic_auc(delta * np.sqrt(q) * factor, 1.0), abs=0.03)
    per_example = auc(target_scores(get_attack("strong-lira"), tgt, tin, sh, shin).scores, tin)
    assert per_example > single + 0.1
    mean_first = get_attack("strong-lira-fixed", strong_aggregate="mean-loss")
    assert auc(target_scores(mean_first, tgt, tin, sh, shin).scores, tin) > single + 0.1


def test_score_directions():
    # one example, 4 IN shadows around log-loss -1, 4 OUT around 0
    sh = np.exp(np.array([[-1.1, -0.9, -1.0, -1.0, 0.1, -0.1, 0.0, 0.0]]))[:, :, None]
    shin = np.array([[True] * 4 + [False] * 4])
    low = AttackInput(np.exp([[-1.0]]), sh, shin)
    high = AttackInput(np.exp([[0.0]]), sh, shin)
    assert lira_online_scores(low)[0] > 0 > lira_online_scores(high)[0]
    assert lira_offline_scores(low)[0] > lira_offline_scores(high)[0] >= 0
    assert loss_threshold_scores(low)[0] > loss_threshold_scores(high)[0]  # lower loss, larger score
    assert loss_threshold_scores(AttackInput(np.array([[0.3, 0.5]])))[0] == pytest.approx(-0.4)


def test_offline_is_one_sided():
    # a target loss far ABOVE the OUT losses is not evidence of membership
    sh = np.exp(np.array([[0.1, -0.1, 0.05, -0.05]]))[:, :, None]
    shin = np.zeros((1, 4), bool)
    very_high = lira_offline_scores(AttackInput(np.exp([[5.0]]), sh, shin))[0]
    typical = lira_offline_scores(AttackInput(np.exp([[0.0]]), sh, shin))[0]
    assert 0 <= very_high < typical < 1.0


def test_gaussian_fit_per_example_and_fixed():
    rng = np.random.default_rng(3)
    n, s = 2000, 40
    mu_true = rng.normal(0, 5, (n, 1))
    sd_true = rng.uniform(0.5, 2.0, (n, 1))
    x = (mu_true + sd_true * rng.normal(size=(n, s)))[:, :, None]
    mask = np.ones((n, s), bool)
    mu, sd, count = gaussian_fit(x, mask)
    assert (count == s).all()
    assert np.abs(mu - mu_true).mean() < 0.3
    assert np.median(np.abs(sd / sd_true - 1)) < 0.1  # 40 samples: ~11% relative error per σ
    assert np.corrcoef(sd[:, 0], sd_true[:, 0])[0, 1] > 0.9
    _, sd_fixed, _ = gaussian_fit(x, mask, variance="fixed")
    assert np.ptp(sd_fixed) == 0
    assert sd_fixed[0, 0] == pytest.approx(np.sqrt((sd_true**2).mean()), rel=0.03)


def test_examples_without_in_or_with_one_value_still_score():
    losses, member = synthetic(n=300, m=4, delta=1.0, seed=5)
    tgt, tin, sh, shin = split(losses, member)
    shin = shin.copy()
    shin[:10] = False  # ten examples with no IN shadow at all
    for name in ("lira", "lira-fixed", "lira-offline", "strong-lira"):
        s = target_scores(get_attack(name), tgt, tin, sh, shin).scores
        assert np.isfinite(s).all()
    with pytest.raises(DiffauditError, match="IN"):
        target_scores(get_attack("lira"), tgt, tin, sh, np.zeros_like(shin))
    # two shadows, one IN and one OUT per example: no within-example spread anywhere
    losses, member = synthetic(n=2000, m=4, delta=1.0, seed=5)
    tgt, tin, sh, shin = split(losses, member)
    rows = np.arange(2000)
    one_each = np.stack([sh[rows, shin.argmax(1)], sh[rows, (~shin).argmax(1)]], axis=1)  # (N, 2, Q): IN, OUT
    mask = np.tile([True, False], (2000, 1))
    for name in ("lira", "lira-fixed", "lira-offline"):
        s = target_scores(get_attack(name), tgt, tin, one_each, mask).scores
        assert np.isfinite(s).all() and auc(s, tin) > 0.55  # 0.59-0.67 here: one value per side is weak


def test_transform_none_fits_raw_losses():
    losses, member = synthetic(n=2000, m=16, delta=1.0, spread=0.3, seed=6)
    tgt, tin, sh, shin = split(losses, member)
    raw = get_attack("lira-fixed", transform="none")
    logged = get_attack("lira-fixed", transform="log")
    a_raw = auc(target_scores(raw, tgt, tin, sh, shin).scores, tin)
    a_log = auc(target_scores(logged, tgt, tin, sh, shin).scores, tin)
    assert a_raw > 0.6 and a_log > 0.7
    assert a_log > a_raw  # the data are log-normal: Gaussians fit the log-losses better
    assert not np.allclose(target_scores(raw, tgt, tin, sh, shin).scores, target_scores(logged, tgt, tin, sh, shin).scores)
    with pytest.raises(DiffauditError, match="transform"):
        target_scores(get_attack("lira", transform="sqrt"), tgt, tin, sh, shin)


def test_leave_one_out_pools_every_model():
    losses, member = synthetic(n=500, m=8, delta=1.5, seed=7)
    losses, member = losses[:, :8], member[:, :8]
    attack = get_attack("lira-fixed")
    pooled = leave_one_out_scores(attack, losses, member)
    assert pooled.scores.shape == (8 * 500,)
    np.testing.assert_array_equal(pooled.labels, member.T.reshape(-1))
    np.testing.assert_array_equal(pooled.model_index[:500], 0)
    np.testing.assert_array_equal(pooled.example_index[500:1000], np.arange(500))
    k = 3
    others = [i for i in range(8) if i != k]
    alone = target_scores(attack, losses[:, k], member[:, k], losses[:, others], member[:, others], model_index=k).scores
    np.testing.assert_allclose(pooled.scores[k * 500:(k + 1) * 500], alone)
    assert auc(pooled.scores, pooled.labels) > 0.75
    # the threshold attack in leave-one-out is -loss of each model, pooled
    thr = leave_one_out_scores(get_attack("loss"), losses, member)
    np.testing.assert_allclose(thr.scores, -losses[:, :, 0].T.reshape(-1))
    # each row carries its target's own loss, whatever the attack: the held-out loss is the non-members' mean
    np.testing.assert_allclose(pooled.loss, losses.mean(axis=2).T.reshape(-1))
    alone_loss = target_scores(attack, losses[:, k], member[:, k], losses[:, others], member[:, others]).loss
    np.testing.assert_allclose(alone_loss, losses[:, k].mean(axis=1))
    means = mean_losses(pooled)
    assert means["nonmembers"] == pytest.approx(losses.mean(axis=2).T[~member.T].mean())
    assert means["members"] == pytest.approx(losses.mean(axis=2).T[member.T].mean())
    assert means["gap"] == pytest.approx(means["nonmembers"] - means["members"]) and means["gap"] > 0
    # rows left out leave the losses aligned with their rows; one side missing: no means
    kept = without_nonmember_rows(pooled, {0: np.arange(500)})
    np.testing.assert_allclose(kept.loss, pooled.loss[(pooled.model_index != 0) | pooled.labels])
    members_only = PooledScores(pooled.scores[pooled.labels], pooled.labels[pooled.labels],
                                pooled.example_index[pooled.labels], pooled.model_index[pooled.labels], pooled.loss[pooled.labels])
    assert mean_losses(members_only) is None
    assert mean_losses(PooledScores(pooled.scores, pooled.labels, pooled.example_index, pooled.model_index)) is None


@pytest.mark.parametrize("m", [4, 8])
@pytest.mark.parametrize("name,q", [("lira", 1), ("lira-offline", 1), ("lira-fixed", 1), ("strong-lira", 4)])
def test_leave_one_out_learns_nothing_from_losses_without_signal(name, q, m):
    """Losses independent of membership, the balanced matrix of `diffaudit membership`: with the
    target among the models, a member is IN for M/2 − 1 of the others and a non-member for M/2, so
    scores that read those counts separate them (before equalising: AUC 0.66 for lira and 0.85 for
    strong-lira at M = 4). Reading as many IN as OUT shadows per example leaves chance."""
    from diffaudit.attacks.membership.targets import equal_in_out, score_models
    from diffaudit.data import make_membership

    n = 3000
    rng = np.random.default_rng(m * 10 + q)
    member = make_membership(n, m, seed=1)
    losses = np.exp(rng.normal(0.0, 1.0, (n, 1, 1)) + 0.3 * rng.normal(size=(n, m, q)))
    pooled = leave_one_out_scores(get_attack(name), losses, member)
    assert abs(auc(pooled.scores, pooled.labels) - 0.5) < 0.02
    one = score_models(get_attack(name), losses, member, mode="shadow", index=1)
    assert abs(auc(one.scores, one.labels) - 0.5) < 0.04
    used = equal_in_out(member[:, 1:])
    assert ((member[:, 1:] & used).sum(1) == m // 2 - 1).all() and ((~member[:, 1:] & used).sum(1) == m // 2 - 1).all()


@pytest.mark.parametrize("name,q", [("lira", 1), ("strong-lira", 4)])
@pytest.mark.parametrize("m", [6, 8])
def test_a_separate_target_from_the_same_matrix_learns_nothing_from_losses_without_signal(name, q, m):
    """``mia --models m-1 --target SHADOWS/model-(m-1)``: the target trained on the last column of the
    balanced matrix and the shadows are the others, so their IN/OUT counts follow its labels just as
    in leave-one-out (before equalising in ``model`` mode too: strong-lira AUC 0.14 at m = 6)."""
    from diffaudit.attacks.membership.targets import score_models
    from diffaudit.data import make_membership

    n = 3000
    rng = np.random.default_rng(m + q)
    member = make_membership(n, m, seed=3)
    losses = np.exp(rng.normal(0.0, 1.0, (n, 1, 1)) + 0.3 * rng.normal(size=(n, m, q)))
    pooled = score_models(get_attack(name), losses[:, :-1], member[:, :-1], mode="model",
                          target_losses=losses[:, -1], target_in=member[:, -1])
    assert abs(auc(pooled.scores, pooled.labels) - 0.5) < 0.04


def test_equal_in_out_draws_c_of_each_side_per_example_and_target():
    from diffaudit.attacks.membership.targets import equal_in_out

    s = np.array([[1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], bool)
    used = equal_in_out(s, target=3)
    np.testing.assert_array_equal((used & s).sum(1), [2, 2, 0, 1])  # c = min(#IN, #OUT)
    np.testing.assert_array_equal((used & ~s).sum(1), [2, 2, 0, 1])  # all IN: no OUT to match, so none read
    assert ((used & s)[0] == s[0]).all() and ((used & ~s)[1] == ~s[1]).all()  # the smaller side read whole
    np.testing.assert_array_equal(equal_in_out(s, target=3), used)  # seeded: the same in every run
    big = np.tile([True, True, True, False], (400, 1))  # 3 IN, 1 OUT: which IN is read is drawn
    kept = equal_in_out(big, target=0)[:, :3]
    assert (kept.sum(1) == 1).all() and (kept.sum(0) > 100).all()  # every IN shadow read for some examples
    assert not np.array_equal(kept, equal_in_out(big, target=1)[:, :3])  # and differently for another target


def test_which_shadows_are_left_out_carries_no_label():
    """Signal-free losses of models whose loss level rises with their index: dropping the surplus
    shadow by index dropped the highest OUT model for members and the highest IN one for non-members,
    and offline LiRA read the label from it (AUC 0.45 with 4 models); a seeded draw per example leaves
    chance."""
    from diffaudit.data import make_membership

    aucs = []
    for rep in range(3):
        rng = np.random.default_rng(rep)
        n, m = 2000, 4
        member = make_membership(n, m, seed=rep)
        offset = np.linspace(0.9, 1.1, m)[None, :, None]
        losses = rng.gamma(2, 0.02, size=(n, 1, 1)) * offset * rng.lognormal(0, 0.2, size=(n, m, 1))
        pooled = leave_one_out_scores(get_attack("lira-offline"), losses, member)
        aucs.append(auc(pooled.scores, pooled.labels))
    assert abs(np.mean(aucs) - 0.5) < 0.015, aucs


@pytest.mark.parametrize("name", ["lira", "lira-fixed", "lira-offline", "strong-lira", "strong-lira-fixed"])
@pytest.mark.parametrize("cols", [3, 4])
def test_examples_with_shadows_on_one_side_only_carry_no_label(name, cols):
    """A few columns of a 16-model balanced matrix (``mia --models 3``): some examples are IN (or OUT)
    for every other model, and which side they lack follows the target's label. Reading their
    one-sided shadows gave strong-lira AUC 0.52–0.55 here on losses without signal; they are now
    scored against the population's Gaussians, and leave-one-out stays at chance."""
    from diffaudit.data import make_membership

    n, q = 4000, 4 if name.startswith("strong") else 1
    rng = np.random.default_rng(cols)
    member = make_membership(n, 16, seed=2)[:, :cols]
    losses = np.exp(rng.normal(0.0, 1.0, (n, 1, 1)) + 0.3 * rng.normal(size=(n, cols, q)))
    pooled = leave_one_out_scores(get_attack(name), losses, member)
    assert np.isfinite(pooled.scores).all()
    assert abs(auc(pooled.scores, pooled.labels) - 0.5) < 0.015


def test_sweep_scores_per_timestep():
    losses, member = synthetic(n=200, m=4, delta=1.0, seed=8)
    stack = np.stack([losses, losses * 2], axis=2)  # (N, M, T=2, Q)
    out = sweep_scores(get_attack("loss"), stack, member, [50, 100])
    assert list(out) == [50, 100]
    np.testing.assert_allclose(out[100].scores, 2 * out[50].scores)
    one = sweep_scores(get_attack("lira-fixed"), stack[:, :4], member[:, :4], [50, 100], mode="shadow", index=2)
    assert (one[50].model_index == 2).all() and one[50].scores.shape == (200,)
    with pytest.raises(DiffauditError, match="sweep losses"):
        sweep_scores(get_attack("loss"), stack, member, [50])


def test_invalid_inputs_name_the_array():
    with pytest.raises(NonFiniteError, match="shadow losses"):
        AttackInput(np.ones((2, 1)), np.array([[[1.0], [np.nan]], [[1.0], [1.0]]]), np.array([[True, False]] * 2))
    with pytest.raises(DiffauditError, match="shadow membership has shape"):
        AttackInput(np.ones((2, 1)), np.ones((2, 3, 1)), np.ones((2, 2), bool))
    with pytest.raises(DiffauditError, match="target losses"):
        AttackInput(np.ones(3))
    # losses already logged: the log transform floored them to one value, and every LiRA score was 0
    with pytest.raises(DiffauditError, match="shadow losses holds 4 negative values .* not their logarithm"):
        AttackInput(np.ones((2, 1)), np.log(np.full((2, 2, 1), 0.5)), np.array([[True, False]] * 2))
    with pytest.raises(DiffauditError, match="target losses holds 1 negative value \\(smallest -0.1\\)"):
        AttackInput(np.array([[0.5], [-0.1]]))
    with pytest.raises(DiffauditError, match="unknown attack 'liras'"):
        get_attack("liras")
    with pytest.raises(DiffauditError, match="needs shadow models"):
        lira_online_scores(AttackInput(np.ones((2, 1))))
    assert "strong-lira" in ATTACK_NAMES


def test_dropped_duplicates_leave_only_their_own_models_nonmember_rows():
    from diffaudit.attacks.membership.targets import PooledScores, without_nonmember_rows

    pooled = PooledScores(np.arange(8.0), np.array([1, 0, 0, 0, 1, 0, 0, 0], bool),
                          np.array([0, 1, 2, 3, 0, 1, 2, 3]), np.array([0, 0, 0, 0, 1, 1, 1, 1]))
    # model 0 dropped examples 1 and 2; model 1 dropped example 0, a member of it (never removed: members stay)
    kept = without_nonmember_rows(pooled, {0: np.array([1, 2]), 1: np.array([0])})
    assert kept.scores.tolist() == [0.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert kept.model_index.tolist() == [0, 0, 1, 1, 1, 1] and kept.labels.tolist() == [1, 0, 1, 0, 0, 0]


def test_shadows_per_side_is_what_equal_in_out_leaves():
    from diffaudit.attacks.membership.targets import equal_in_out, shadows_per_side
    from diffaudit.data import make_membership

    member = make_membership(300, 8, seed=0)
    assert shadows_per_side(member) == 3  # leave-one-out: 4 IN of 8, the target's own column left out
    assert shadows_per_side(member, mode="shadow", index=2) == 3
    assert shadows_per_side(member, mode="model") == 4
    few = member[:, :3]  # a few columns of a larger matrix: some examples are IN (or OUT) for all three
    assert shadows_per_side(few, mode="model") == 0
    from diffaudit.attacks.membership.targets import shadows_per_side_range

    assert shadows_per_side_range(member) == (3, 3)  # balanced: every example alike
    assert shadows_per_side_range(few, mode="model")[0] == 0 < shadows_per_side_range(few, mode="model")[1]
    for k in range(8):
        others = member[:, np.r_[0:k, k + 1:8]]
        assert (others & equal_in_out(others, target=k)).sum(1).min() == 3
