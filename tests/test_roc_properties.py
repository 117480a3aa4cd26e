"""Property tests (hypothesis) of the ROC metrics (issue 9, part 6)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from diffaudit.evaluation import auc, balanced_accuracy, roc_curve, tpr_at_fpr
from diffaudit.evaluation.roc import auc_from_curve


@st.composite
def scored(draw):
    """Integer-valued scores (ties likely) with both classes present."""
    n = draw(st.integers(2, 60))
    s = np.array(draw(st.lists(st.integers(-50, 50), min_size=n, max_size=n)), dtype=float)
    y = np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    y[0], y[1] = True, False
    return s, y


@settings(deadline=None, max_examples=150)
@given(scored())
def test_auc_in_unit_interval_and_antisymmetric(data):
    s, y = data
    a = auc(s, y)
    assert 0.0 <= a <= 1.0
    assert abs(auc(-s, y) - (1.0 - a)) < 1e-12
    assert abs(auc_from_curve(roc_curve(s, y)) - a) < 1e-12
    assert 0.5 <= balanced_accuracy(s, y) <= 1.0


@settings(deadline=None, max_examples=150)
@given(scored())
def test_invariant_to_strictly_increasing_transforms(data):
    s, y = data
    for f in (lambda x: np.exp(x / 10.0), lambda x: 3 * x**3 + x - 7, lambda x: np.arctan(x / 7.0)):
        t = f(s)
        assert abs(auc(t, y) - auc(s, y)) < 1e-12
        assert balanced_accuracy(t, y) == balanced_accuracy(s, y)
        for fpr in (0.01, 0.1, 0.3, 1.0):
            assert tpr_at_fpr(t, y, fpr) == tpr_at_fpr(s, y, fpr)


@settings(deadline=None, max_examples=150)
@given(scored(), st.lists(st.floats(1e-4, 1.0), min_size=2, max_size=6))
def test_tpr_monotone_in_fpr_target(data, targets):
    s, y = data
    n_neg = int((~y).sum())
    prev = None
    for t in sorted(targets):
        v = tpr_at_fpr(s, y, t)
        assert (v is None) == (t < 1.0 / n_neg)
        if v is not None:
            assert 0.0 <= v <= 1.0
            if prev is not None:
                assert v >= prev
            prev = v
    assert tpr_at_fpr(s, y, 1.0) == 1.0


@settings(deadline=None, max_examples=100)
@given(scored())
def test_curve_is_monotone_from_origin_to_corner(data):
    s, y = data
    c = roc_curve(s, y)
    assert c.fpr[0] == 0 and c.tpr[0] == 0 and c.fpr[-1] == 1 and c.tpr[-1] == 1
    assert (np.diff(c.fpr) >= 0).all() and (np.diff(c.tpr) >= 0).all()
    assert (np.diff(c.thresholds) < 0).all()
