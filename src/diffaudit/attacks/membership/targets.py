"""Who is attacked: a separate target model, or each model in turn (leave-one-out).

Losses of all models: float (N, M, Q) for N examples, M models, Q queries; ``membership`` bool
(N, M), True where example n trained model m (the membership matrix's columns).

- :func:`leave_one_out_scores`: for each model k as the target, the shadows are the other M − 1
  models; the N scores of every target are pooled into one set of N·M (score, label) pairs, model k's
  labels being column k (issue 4: "when the target is one of the shadows, evaluation is
  leave-one-out over all models").
- :func:`target_scores`: one target model (its losses (N, Q) and membership (N,)) against all M
  shadows.
Scores keep the attack's direction: larger = more likely a member.

When the target is one of the models (leave-one-out, ``shadow`` mode), the other models' IN and
OUT counts give its label away: with every example IN for exactly half of the M models
(:func:`~diffaudit.data.membership.make_membership`), a member of the target is IN for M/2 − 1 of
the others and OUT for M/2, a non-member the reverse. LiRA's fits, its fallbacks for small counts
and Strong LiRA's per-query sums all move with those counts, so scores would separate members from
non-members even for losses that carry no signal. :func:`equal_in_out` therefore reads, per
example, as many IN as OUT shadows (a seeded draw of each side's), as LiRA's reference code does when
it truncates every example to the smallest count.

A separate target (``model`` mode) is read the same way: it may be another column of the same
matrix (``mia --models m --target SHADOWS/model-k`` with k ≥ m trains on one of its columns), and
then the m shadows' counts follow its labels just as above (signal-free losses scored AUC 0.14 for
Strong LiRA with 5 of 6 columns). Where the shadows' counts are balanced already, nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffaudit.attacks.membership.inputs import AttackInput
from diffaudit.attacks.membership.registry import MembershipAttack
from diffaudit.core.errors import DiffauditError
from diffaudit.core.seeds import derive_seed, numpy_rng


@dataclass
class PooledScores:
    """Scores of one attack, one row per (target model, example).

    Attributes:
        scores: float64 (R,), larger = more likely a member.
        labels: bool (R,), True when the example trained that target.
        example_index: int64 (R,), the example's index in the dataset.
        model_index: int64 (R,), the target's column (-1 for a separate target model).
        loss: float64 (R,), the target's own denoising loss on the example (mean over its queries), or
            None where not known: what the target model makes of the example, before any attack.
    """

    scores: np.ndarray
    labels: np.ndarray
    example_index: np.ndarray
    model_index: np.ndarray
    loss: np.ndarray | None = None


def without_nonmember_rows(pooled: PooledScores, rows_by_model: dict[int, np.ndarray]) -> PooledScores:
    """``pooled`` without the non-member rows of model m for the examples ``rows_by_model[m]`` (dataset
    indices; m is a column, or -1 for a separate target model)."""
    drop = np.zeros(len(pooled.scores), dtype=bool)
    for m, rows in rows_by_model.items():
        drop |= (pooled.model_index == m) & ~pooled.labels & np.isin(pooled.example_index, rows)
    keep = ~drop
    return PooledScores(pooled.scores[keep], pooled.labels[keep], pooled.example_index[keep], pooled.model_index[keep],
                        None if pooled.loss is None else pooled.loss[keep])


def mean_losses(pooled: PooledScores) -> dict[str, float] | None:
    """The targets' mean denoising loss on their members and on their non-members, over the rows of
    ``pooled`` (one per (target, example)): {``members``, ``nonmembers``, ``gap``}, gap = non-members −
    members. None without losses or without rows on both sides.

    ``nonmembers`` is a held-out loss: how well the model denoises images it never saw at the attack's
    timesteps, a measure of its quality that a defence (DP-SGD) may raise. ``gap`` is what the loss
    attack reads: 0 when the model fits its members no better than other images.
    """
    if pooled.loss is None or pooled.labels.all() or not pooled.labels.any():
        return None
    members, nonmembers = (float(np.mean(pooled.loss[side])) for side in (pooled.labels, ~pooled.labels))
    return {"members": members, "nonmembers": nonmembers, "gap": nonmembers - members}


def _check(losses: np.ndarray, membership: np.ndarray) -> None:
    if losses.ndim != 3:
        raise DiffauditError(f"losses must have shape (n_examples, n_models, n_queries); got {losses.shape}")
    if membership.shape != losses.shape[:2]:
        raise DiffauditError(f"membership matrix has shape {membership.shape} but the losses are for "
                             f"{losses.shape[:2]} (n_examples, n_models)")


def equal_in_out(shadow_in: np.ndarray, *, target: int = -1) -> np.ndarray:
    """Per example, c = min(#IN, #OUT) of its IN and c of its OUT shadows, drawn at random.

    Args:
        shadow_in: bool (N, S), the shadows' membership (the target's column left out).
        target: the target's column in the membership matrix (-1 for a separate model); with the
            example's row it keys the draw (seeded, the same in every run).

    Returns:
        bool (N, S), the shadows an attack may read. Every example gets as many IN as OUT shadows, so
        the counts no longer depend on the target's label (see the module docstring). Which surplus
        shadows are left out is drawn per example and target, not taken by index: by index, a
        member of the target lost its last OUT shadow and a non-member its last IN one, nearly always
        the same model, so a model whose losses run high or low moved the OUT (or IN) mean with the
        label, and offline LiRA scored AUC 0.45 on signal-free losses of 4 models with rising
        offsets (``tests/test_lira.py::test_which_shadows_are_left_out_carries_no_label``). An
        example with no shadow on one side reads none (c = 0): any use of its one-sided shadows
        would follow the label, so LiRA scores it against the population's IN and OUT Gaussians
        instead. With the full balanced matrix and M ≥ 4 models that never happens; with a few
        columns of a larger matrix (``mia --models`` below its count) it can
        (``tests/test_lira.py::test_examples_with_shadows_on_one_side_only_carry_no_label``).
    """
    shadow_in = np.asarray(shadow_in, dtype=bool)
    keys = numpy_rng(derive_seed("equal-in-out", int(target))).random(shadow_in.shape)
    c = np.minimum(shadow_in.sum(1), (~shadow_in).sum(1))[:, None]  # (N, 1)
    used = np.zeros_like(shadow_in)
    for side in (shadow_in, ~shadow_in):
        order = np.argsort(np.where(side, keys, np.inf), axis=1, kind="stable")  # the side's shadows first, shuffled
        used |= side & (np.argsort(order, axis=1) < c)  # each shadow's place in that order
    return used


def shadows_per_side_range(membership: np.ndarray, *, mode: str = "leave-one-out",
                           index: int | None = None) -> tuple[int, int]:
    """(fewest, most) IN (= OUT) shadows an example is scored with after :func:`equal_in_out`: the range of
    c = min(#IN, #OUT) over examples (and, in leave-one-out, over targets). ``membership`` bool (N, M);
    ``mode`` as :func:`score_models` (``model``: all M columns are shadows). A matrix where every example
    is IN for half of the M models gives every example M/2 - 1 a side in leave-one-out."""
    member = np.asarray(membership, dtype=bool)
    n_in = member.sum(1)  # (N,)
    if mode == "model":
        c = np.minimum(n_in, member.shape[1] - n_in)
    else:
        others_in = n_in[:, None] - member  # (N, M): IN among the others when column k is the target
        if mode == "shadow":
            others_in = others_in[:, [int(index)]]
        c = np.minimum(others_in, member.shape[1] - 1 - others_in)
    return int(c.min()), int(c.max())


def shadows_per_side(membership: np.ndarray, *, mode: str = "leave-one-out", index: int | None = None) -> int:
    """The fewest IN (= OUT) shadows any example is scored with (:func:`shadows_per_side_range`)."""
    return shadows_per_side_range(membership, mode=mode, index=index)[0]


def scores_for_target(attack: MembershipAttack, target: np.ndarray, shadows: np.ndarray | None,
                      shadow_in: np.ndarray | None, *, target_column: int = -1) -> np.ndarray:
    """Score one target's losses (N, Q) with ``attack`` given shadows (N, S, Q) and their membership (N, S),
    read through :func:`equal_in_out` (keyed by ``target_column``, the target's column in the membership
    matrix, -1 for a separate model; see the module docstring)."""
    if not attack.needs_shadows:
        shadows = shadow_in = None
    used = equal_in_out(shadow_in, target=target_column) if shadow_in is not None else None
    inp = AttackInput(target=target, shadows=shadows, shadow_in=shadow_in, shadow_used=used)
    return np.asarray(attack.score(inp), dtype=np.float64)


def leave_one_out_scores(attack: MembershipAttack, losses: np.ndarray, membership: np.ndarray) -> PooledScores:
    """Each model in turn is the target, the others its shadows; pooled (M·N rows, model-major)."""
    losses = np.asarray(losses, dtype=np.float64)
    membership = np.asarray(membership, dtype=bool)
    _check(losses, membership)
    n, m, _ = losses.shape
    if attack.needs_shadows and m < 2:
        raise DiffauditError(f"leave-one-out {attack.name} needs at least 2 models; got {m}")
    out = []
    for k in range(m):
        others = np.r_[0:k, k + 1:m]
        out.append(scores_for_target(attack, losses[:, k], losses[:, others], membership[:, others], target_column=k))
    return PooledScores(
        scores=np.concatenate(out),
        labels=membership.T.reshape(-1).copy(),
        example_index=np.tile(np.arange(n, dtype=np.int64), m),
        model_index=np.repeat(np.arange(m, dtype=np.int64), n),
        loss=losses.mean(axis=2).T.reshape(-1).copy(),
    )


def target_scores(attack: MembershipAttack, target: np.ndarray, target_in: np.ndarray, shadows: np.ndarray,
                  membership: np.ndarray, *, model_index: int = -1) -> PooledScores:
    """A single target (losses (N, Q), membership (N,)) attacked with shadows (N, M, Q) / (N, M);
    ``model_index`` ≥ 0 when the target is that model of the matrix (it keys which surplus shadows
    :func:`equal_in_out` leaves out)."""
    target = np.asarray(target, dtype=np.float64)
    target_in = np.asarray(target_in, dtype=bool)
    shadows = np.asarray(shadows, dtype=np.float64)
    membership = np.asarray(membership, dtype=bool)
    _check(shadows, membership)
    if target_in.shape != (target.shape[0],):
        raise DiffauditError(f"target membership has shape {target_in.shape}; expected ({target.shape[0]},)")
    n = target.shape[0]
    return PooledScores(
        scores=scores_for_target(attack, target, shadows, membership, target_column=model_index),
        labels=target_in.copy(),
        example_index=np.arange(n, dtype=np.int64),
        model_index=np.full(n, model_index, dtype=np.int64),
        loss=target.mean(axis=1),
    )


def score_models(
    attack: MembershipAttack,
    losses: np.ndarray,
    membership: np.ndarray,
    *,
    mode: str = "leave-one-out",
    index: int | None = None,
    target_losses: np.ndarray | None = None,
    target_in: np.ndarray | None = None,
) -> PooledScores:
    """Score by target mode: ``leave-one-out`` (all models in turn), ``shadow`` (model ``index``
    against the others) or ``model`` (``target_losses`` (N, Q) with ``target_in`` (N,) against all).

    ``losses`` float (N, M, Q), ``membership`` bool (N, M). Columns of models a mode does not use
    (e.g. the shadows of the ``loss`` attack) are never read.
    """
    if mode == "leave-one-out":
        return leave_one_out_scores(attack, losses, membership)
    if mode == "shadow":
        m = losses.shape[1]
        if index is None or not 0 <= index < m:
            raise DiffauditError(f"target index must lie in [0, {m - 1}]; got {index}")
        others = np.r_[0:index, index + 1:m]
        return target_scores(attack, losses[:, index], np.asarray(membership)[:, index], losses[:, others],
                             np.asarray(membership)[:, others], model_index=int(index))
    if mode == "model":
        if target_losses is None or target_in is None:
            raise DiffauditError("a separate target needs its losses and its membership")
        return target_scores(attack, target_losses, target_in, losses, membership)
    raise DiffauditError(f"unknown target mode {mode!r}; choose leave-one-out, shadow or model")
